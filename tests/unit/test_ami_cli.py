"""`switchboard call` argument handling (the call itself is covered in tests/integration/test_ami_outbound.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli.main import main

ETC = Path(__file__).resolve().parents[2] / "etc"


def test_call_needs_ami_enabled(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-c", str(ETC / "switchboard.yaml"), "call", "201", "hello"]) == 2
    assert "ami.enabled" in capsys.readouterr().err


def _enabled_config(tmp_path: Path) -> Path:
    text = (ETC / "switchboard.yaml").read_text().replace("directory: directory.yaml", f"directory: {ETC}/directory.yaml")
    text = text.replace("knowledge: knowledge.yaml", f"knowledge: {ETC}/knowledge.yaml")
    path = tmp_path / "switchboard.yaml"
    path.write_text(text + "\nami: {enabled: true, secret_env: SB_NO_SUCH_VARIABLE_X}\n")
    return path


def test_call_checks_its_arguments_before_anything_else(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _enabled_config(tmp_path)
    assert main(["-c", str(config), "call", "201"]) == 2
    assert "TEXT" in capsys.readouterr().err
    assert main(["-c", str(config), "call", "201", "--code", "12a4"]) == 2
    assert "digits only" in capsys.readouterr().err
