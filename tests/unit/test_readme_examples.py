"""The configuration examples an admin copies from the README are valid."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from gateway.config import AriSettings
from gateway.config import MessagingSettings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def _yaml_block(start: str) -> dict:
    block = README[README.index(start):]
    return yaml.safe_load(textwrap.dedent(block[:block.index("```")]))


def test_messaging_example_is_valid() -> None:
    settings = MessagingSettings.model_validate(_yaml_block("messaging:\n  email:")["messaging"])
    assert settings.channels_configured and settings.sms_modem and settings.sip_message


def test_ari_example_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHBOARD_ARI_PASSWORD", "x")
    settings = AriSettings.model_validate(_yaml_block("   ari:\n")["ari"])
    assert settings.format == "slin16" and settings.external_host == "127.0.0.1:9092"
