"""Sentence embeddings from the WordLlama model that ships inside its PyPI wheel.

The model is a static token-embedding table (32000 x 256) averaged over a sentence: no network,
no torch, well under a millisecond a sentence. WordLlama's own loader looks for the tokenizer
under `tokenizer/` while the wheel ships `tokenizers/`, so it would try to download it; its
inference module also configures root logging when imported. Both are avoided by reading the two
packaged files directly, without importing the package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from models.records import KnowledgeEntry

_WEIGHTS = Path("weights") / "l2_supercat_256.safetensors"
_TOKENIZER = Path("tokenizers") / "l2_supercat_tokenizer_config.json"


class EmbedderError(RuntimeError):
    pass


def packaged_files() -> tuple[Path, Path]:
    """The weights and tokenizer inside the installed wordllama wheel (the package is not imported)."""
    spec = importlib.util.find_spec("wordllama")
    if spec is None or not spec.submodule_search_locations:
        raise EmbedderError("the 'wordllama' package is not installed (pip install wordllama==0.4.0.post1)")
    root = Path(next(iter(spec.submodule_search_locations)))
    weights, tokenizer = root / _WEIGHTS, root / _TOKENIZER
    for path in (weights, tokenizer):
        if not path.is_file():
            raise EmbedderError(f"{path}: missing from the installed wordllama wheel")
    return weights, tokenizer


class Embedder:
    """Unit-length sentence vectors; cosine similarity is a dot product. Thread-safe for reading."""

    def __init__(self, weights: Path, tokenizer: Path) -> None:
        from safetensors.numpy import load_file  # wordllama's own dependencies, imported where used
        from tokenizers import Tokenizer

        self._table = load_file(str(weights))["embedding.weight"]  # float16, 16 MB; summed in float32
        self._tokenizer = Tokenizer.from_file(str(tokenizer))

    @classmethod
    def packaged(cls) -> "Embedder":
        return cls(*packaged_files())

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), 256) float32, each row of length 1 (zero for a text with no tokens)."""
        out = np.zeros((len(texts), self._table.shape[1]), dtype=np.float32)
        for row, encoding in enumerate(self._tokenizer.encode_batch(texts, add_special_tokens=False)):
            ids = np.clip(np.asarray(encoding.ids, dtype=np.int64), 0, self._table.shape[0] - 1)
            if ids.size:
                vector = self._table[ids].astype(np.float32).mean(axis=0)
                norm = float(np.linalg.norm(vector))
                out[row] = vector / norm if norm else vector
        return out


class SemanticIndex:
    """The knowledge entries' questions, phrasings and answers as vectors. Entries are re-read every turn
    (staff may have answered a help request meanwhile); only texts not seen before are embedded."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self._vectors: dict[str, np.ndarray] = {}
        self._key: tuple = ()
        self._owners: list[str] = []
        self._matrix = np.zeros((0, 0), dtype=np.float32)

    def update(self, entries: list[KnowledgeEntry]) -> None:
        key = tuple((e.id, e.question, e.answer, *e.phrasings) for e in entries)
        if key == self._key:
            return
        # The answer too: "what floor are you on" is answered by the address ("ground floor").
        texts = [(e.id, t) for e in entries for t in (e.question, *e.phrasings, e.answer)]
        new = list(dict.fromkeys(t for _, t in texts if t not in self._vectors))
        if new:
            self._vectors.update(zip(new, self.embedder.embed(new)))
        self._owners = [entry_id for entry_id, _ in texts]
        self._matrix = np.stack([self._vectors[t] for _, t in texts]) if texts else self._matrix
        self._key = key

    def similarities(self, text: str) -> dict[str, float]:
        """Each entry's best cosine similarity between `text` and its question, phrasings or answer."""
        if not self._owners:
            return {}
        sims = self._matrix @ self.embedder.embed([text])[0]
        best: dict[str, float] = {}
        for owner, sim in zip(self._owners, sims.tolist()):
            best[owner] = max(best.get(owner, -1.0), sim)
        return best
