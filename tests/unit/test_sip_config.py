"""The `sip:` section: off by default; when on, every mistake names file, key and reason."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config

ETC = Path(__file__).resolve().parents[2] / "etc"
ON = ("sip:\n  enabled: true\n  server: 192.0.2.10\n  user: \"205\"\n  password_env: SB_UNIT_SIP_PW\n"
      "  my_ip: 192.0.2.20\n")


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    for name in ("switchboard.yaml", "directory.yaml", "knowledge.yaml"):
        shutil.copy(ETC / name, tmp_path / name)
    return tmp_path


def configure(etc: Path, section: str) -> Path:
    path = etc / "switchboard.yaml"
    text = path.read_text()
    start = text.index("\nsip:") + 1
    end = text.index("\nvad:")
    path.write_text(text[:start] + section + text[end:])
    return path


def test_off_by_default(etc: Path) -> None:
    assert not load_config(etc / "switchboard.yaml").sip.enabled


def test_enabled_section_loads_and_reads_the_password_from_the_environment(etc, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SB_UNIT_SIP_PW", "hunter2")
    sip = load_config(configure(etc, ON)).sip
    assert (sip.server, sip.user, sip.my_ip, sip.codecs) == ("192.0.2.10", "205", "192.0.2.20", ["PCMU", "PCMA"])
    assert sip.secret() == "hunter2" and "hunter2" not in repr(sip)


@pytest.mark.parametrize(("edit", "key", "reason"), [
    (ON.replace("  server: 192.0.2.10\n", ""), "sip", "server: required"),
    (ON.replace("  my_ip: 192.0.2.20\n", ""), "sip", "my_ip: required"),
    (ON.replace("SB_UNIT_SIP_PW", "SB_UNIT_UNSET"), "sip", "SB_UNIT_UNSET is not set"),
    (ON + "  password: hunter2\n", "sip.password", "unknown key"),
    (ON + "  codecs: [G722]\n", "sip.codecs.0", "'PCMU' or 'PCMA'"),
    (ON + "  rtp_port_low: 20000\n  rtp_port_high: 10000\n", "sip", "rtp_port_low"),
    (ON + "  my_ip: pbx.lan\n", "sip.my_ip", "pattern"),
])
def test_mistakes_name_file_key_and_reason(etc, monkeypatch, edit: str, key: str, reason: str) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SB_UNIT_SIP_PW", "hunter2")
    with pytest.raises(ConfigError) as err:
        load_config(configure(etc, edit))
    assert err.value.file == str(etc / "switchboard.yaml")
    assert err.value.key == key
    assert reason in err.value.reason
