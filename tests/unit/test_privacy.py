"""What logs may say about people: numbers and addresses masked, transcripts only with log_transcripts."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from models import privacy
from models.privacy import masked, said

ETC = Path(__file__).resolve().parents[2] / "etc"


@pytest.fixture
def transcripts() -> Iterator[None]:
    privacy.set_log_transcripts(True)
    yield
    privacy.set_log_transcripts(False)


@pytest.mark.parametrize("text, shown", [
    ("+15550102030", "***030"),
    ("0612345678", "***678"),
    ("+1 (555) 010-2030", "***030"),
    ("sip:+15550102030@sms-gw.example", "sip:***030@sms-gw.example"),
    ("PJSIP/0612345678", "PJSIP/***678"),
    ("ann.smith@clinic.example", "a***@clinic.example"),
    ("Ann Smith <ann@clinic.example>", "Ann Smith <a***@clinic.example>"),
    ("202", "202"),  # an extension is not a person's number
    ("anonymous", "anonymous"),
    (None, "-"),
    ("", "-"),
])
def test_numbers_and_addresses_are_masked(text: str | None, shown: str) -> None:
    assert masked(text) == shown


def test_transcripts_are_hidden_unless_asked_for(transcripts: None) -> None:
    assert said("my date of birth is May 3rd") == "'my date of birth is May 3rd'"
    privacy.set_log_transcripts(False)
    assert said("my date of birth is May 3rd") == "<hidden>"


def test_log_transcripts_is_validated_and_off_by_default(tmp_path: Path) -> None:
    for name in ("switchboard.yaml", "directory.yaml", "knowledge.yaml"):
        shutil.copy(ETC / name, tmp_path / name)
    config = tmp_path / "switchboard.yaml"
    assert load_config(config).log_transcripts is False
    config.write_text(config.read_text().replace("log_transcripts: false", "log_transcripts: true"))
    assert load_config(config).log_transcripts is True
    config.write_text(config.read_text().replace("log_transcripts: true", "log_transcripts: sometimes"))
    with pytest.raises(ConfigError, match="log_transcripts"):
        load_config(config)
