"""The `capacity:` section: defaults load, and each mistake names file, key and reason."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config

ETC = Path(__file__).resolve().parents[2] / "etc"


@pytest.fixture
def yaml_file(tmp_path: Path) -> Path:
    for name in ("switchboard.yaml", "directory.yaml", "knowledge.yaml"):
        shutil.copy(ETC / name, tmp_path / name)
    return tmp_path / "switchboard.yaml"


def with_capacity(path: Path, body: str) -> None:
    path.write_text(path.read_text().replace("log_level: INFO", f"capacity:\n{body}\nlog_level: INFO", 1))


def test_capacity_keys_load(yaml_file: Path) -> None:
    with_capacity(yaml_file, "  max_turns: 3\n  stt_queue: 2\n  stt_timeout_s: 0.5")
    cap = load_config(yaml_file).capacity
    assert (cap.max_turns, cap.stt_queue, cap.stt_timeout_s) == (3, 2, 0.5)
    assert cap.dialog_timeout_s > 0 and cap.first_audio_timeout_s > 0 and cap.llm_queue >= 1


@pytest.mark.parametrize(
    ("body", "key", "reason"),
    [
        ("  max_turns: 0", "capacity.max_turns", "greater than or equal to 1"),
        ("  stt_queue: many", "capacity.stt_queue", "valid integer"),
        ("  tts_queue: -1", "capacity.tts_queue", "greater than or equal to 1"),
        ("  llm_queue: 0", "capacity.llm_queue", "greater than or equal to 1"),
        ("  stt_timeout_s: 0", "capacity.stt_timeout_s", "greater than 0"),
        ("  dialog_timeout_s: soon", "capacity.dialog_timeout_s", "valid number"),
        ("  first_audio_timeout_s: -2", "capacity.first_audio_timeout_s", "greater than 0"),
        ("  max_turn: 4", "capacity.max_turn", "unknown key"),
    ],
)
def test_capacity_mistakes_name_file_key_and_reason(yaml_file: Path, body: str, key: str, reason: str) -> None:
    with_capacity(yaml_file, body)
    with pytest.raises(ConfigError) as err:
        load_config(yaml_file)
    assert (err.value.file, err.value.key) == (str(yaml_file), key)
    assert reason in err.value.reason
