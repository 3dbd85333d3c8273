"""One config for the service and the CLI: both find /etc/switchboard/switchboard.yaml when it exists."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

import gateway.config
from gateway.cli.main import build_parser
from gateway.config import REPO_CONFIG, SYSTEM_CONFIG, default_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def system_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "etc-switchboard" / "switchboard.yaml"
    monkeypatch.setattr(gateway.config, "SYSTEM_CONFIG", path)
    monkeypatch.delenv("SWITCHBOARD_CONFIG", raising=False)
    return path


def test_cli_uses_the_installed_config_when_there_is_one(system_config: Path) -> None:
    assert default_config() == REPO_CONFIG
    assert build_parser().parse_args(["questions", "list"]).config == REPO_CONFIG
    system_config.parent.mkdir()
    system_config.write_text("site: {}\n")
    assert default_config() == system_config
    assert build_parser().parse_args(["questions", "list"]).config == system_config


def test_env_and_option_still_choose(system_config: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    system_config.parent.mkdir()
    system_config.write_text("site: {}\n")
    monkeypatch.setenv("SWITCHBOARD_CONFIG", str(tmp_path / "env.yaml"))
    assert build_parser().parse_args(["questions", "list"]).config == tmp_path / "env.yaml"
    args = build_parser().parse_args(["-c", str(tmp_path / "opt.yaml"), "questions", "list"])
    assert args.config == tmp_path / "opt.yaml"


def test_the_service_runs_on_the_cli_default_config_and_its_data_dir() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(ROOT / "systemd" / "switchboard.service")
    service = unit["Service"]
    env = dict(e.split("=", 1) for e in service.get("Environment", "").split("\n") if "=" in e)
    assert env.get("SWITCHBOARD_CONFIG", str(SYSTEM_CONFIG)) == str(SYSTEM_CONFIG)
    # No -c / --data-dir on the command line: the CLI, run without them, would read another database.
    assert service["ExecStart"].split()[1:] == ["run"]
    assert str(SYSTEM_CONFIG.parent) in service["ReadOnlyPaths"]


def test_installed_without_a_checkout_it_reads_the_etc_of_the_directory_it_runs_in(
        system_config: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`pip install .` puts the code in site-packages, where no etc/ lies beside it."""
    monkeypatch.setattr(gateway.config, "REPO_CONFIG", tmp_path / "site-packages" / "etc" / "switchboard.yaml")
    monkeypatch.chdir(tmp_path)
    assert default_config() == tmp_path / "etc" / "switchboard.yaml"
