"""Config validation: the shipped example loads; every mistake names file, key and reason."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config

ETC = Path(__file__).resolve().parents[2] / "etc"


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    for name in ("switchboard.yaml", "directory.yaml", "knowledge.yaml"):
        shutil.copy(ETC / name, tmp_path / name)
    return tmp_path


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def test_example_site_loads(etc: Path) -> None:
    cfg = load_config(etc / "switchboard.yaml")
    assert cfg.site.name == "Bright Smile Dental"
    assert cfg.site.hours.spans(5)[0].opens.hour == 9  # Saturday
    assert {m.extension for m in cfg.site.directory.everyone()} >= {"200", "201", "202"}
    assert len(cfg.knowledge) >= 15 and all(e.phrasings for e in cfg.knowledge)
    assert cfg.data_dir == (etc / ".." / "var").resolve()
    assert cfg.database == cfg.data_dir / "switchboard.db"


def test_without_a_timezone_the_site_is_in_the_servers_zone(etc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llm.site import server_zone

    edit(etc / "switchboard.yaml", "  timezone: America/New_York", "")
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")  # as a server set to that zone
    server_zone.cache_clear()
    try:
        assert load_config(etc / "switchboard.yaml").site.tz.key == "Pacific/Kiritimati"
    finally:
        monkeypatch.undo()
        server_zone.cache_clear()


@pytest.mark.parametrize(
    ("old", "new", "key", "reason"),
    [
        ("log_level: INFO", "log_level: INFO\nlogg_level: DEBUG", "logg_level", "unknown key"),
        ("  port: 9092", "  port: ninety", "audiosocket.port", "valid integer"),
        ("  port: 9092", "  port: 70000", "audiosocket.port", "less than or equal"),
        ('    saturday: "09:00-13:00"', '    saturday: "9 till 1"', "site.hours.saturday", "HH:MM-HH:MM"),
        ("timezone: America/New_York", "timezone: Mars/Olympus", "site.timezone", "unknown time zone"),
        ("  end_silence_ms: 500", "  end_silence_ms: 500\n  endsilence: 3", "vad.endsilence", "unknown key"),
        ("  end_silence_ms: 500", "  end_silence_ms: 500\n  end_of_turn: smart", "vad.end_of_turn", "'fixed' or 'adaptive'"),
        ("  end_silence_ms: 500", "  end_silence_ms: 500\n  end_of_turn: adaptive\n  complete_silence_ms: 100", "vad",
         "tentative_silence_ms <= complete_silence_ms"),
        ("  name: Bright Smile Dental\n", "", "site.name", "Field required"),
    ],
)
def test_mistakes_name_file_key_and_reason(etc: Path, old: str, new: str, key: str, reason: str) -> None:
    edit(etc / "switchboard.yaml", old, new)
    with pytest.raises(ConfigError) as err:
        load_config(etc / "switchboard.yaml")
    assert err.value.file == str(etc / "switchboard.yaml")
    assert err.value.key == key
    assert reason in err.value.reason


def test_directory_errors_name_the_directory_file(etc: Path) -> None:
    edit(etc / "directory.yaml", 'extension: "201"', "extension: two-oh-one")
    with pytest.raises(ConfigError) as err:
        load_config(etc / "switchboard.yaml")
    assert err.value.file == str(etc / "directory.yaml")
    assert err.value.key == "staff.0.extension"


def test_missing_file_and_bad_yaml(etc: Path) -> None:
    (etc / "knowledge.yaml").unlink()
    with pytest.raises(ConfigError, match="knowledge.yaml: file not found"):
        load_config(etc / "switchboard.yaml")
    (etc / "switchboard.yaml").write_text("site: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML: line"):
        load_config(etc / "switchboard.yaml")


def test_cli_prints_the_error_and_exits_non_zero(etc: Path) -> None:
    edit(etc / "switchboard.yaml", "  port: 9092", "  port: -1")
    proc = subprocess.run([sys.executable, "-m", "gateway.cli.main", "--config", str(etc / "switchboard.yaml"), "run"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"{etc / 'switchboard.yaml'}: audiosocket.port:" in proc.stderr


@pytest.mark.parametrize(("value", "expected"), [
    (None, None),
    ("bundled", "bundled"),
    ("models/qwen.gguf", "RELATIVE"),  # relative to the file that names it
])
def test_llm_path_none_bundled_or_a_file(etc: Path, value: str | None, expected: str | None) -> None:
    if value is not None:
        edit(etc / "switchboard.yaml", "llm: {threads: 2}", f"llm: {{threads: 2, path: {value}}}")
    path = load_config(etc / "switchboard.yaml").models.llm.path
    assert path == (etc / value if expected == "RELATIVE" else expected)
