"""The `ami:` config section and the etc/asterisk snippets the code depends on."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest
import yaml

from gateway.asterisk.transfer import RETURN_STATUSES
from gateway.config import AmiSettings, ConfigError, load_config

ETC = Path(__file__).resolve().parents[2] / "etc"


def dialplan(context: str) -> list[str]:
    """The application calls of one context, in order ('Set(AS_UUID=${UUID()})', ...)."""
    text = (ETC / "asterisk" / "extensions.conf").read_text()
    body = re.search(rf"^\[{context}\]\n(.*?)(?=^\[|\Z)", text, re.S | re.M)
    assert body, f"context {context} missing from etc/asterisk/extensions.conf"
    lines = [re.sub(r"\s*;.*$", "", line).strip() for line in body.group(1).splitlines()]
    return [re.split(r"^(?:exten\s*=>\s*[^,]+,\s*)?(?:same\s*=>\s*)?(?:\d+|n)(?:\([a-z]+\))?,", line)[-1]
            for line in lines if line.startswith(("exten", "same"))]


def test_transfer_context_sets_outcome_before_the_new_uuid() -> None:
    s = AmiSettings()
    apps = dialplan(s.transfer_context)
    target = apps.index("Set(SB_TRANSFER_TARGET=${EXTEN})")
    result = apps.index("Set(SB_TRANSFER_RESULT=${DIALSTATUS})")
    uuid = apps.index("Set(AS_UUID=${UUID()})")
    assert target < result < uuid < apps.index("AudioSocket(${AS_UUID},${SWITCHBOARD_AUDIOSOCKET})")
    assert any("SB_TRANSFER_RING" in a and a.startswith("Dial(") for a in apps)
    returned = {m for a in apps for m in re.findall(r'"\$\{DIALSTATUS\}" = "(\w+)"', a)}
    assert returned == set(RETURN_STATUSES)


def test_incoming_and_outbound_contexts_use_the_variables_the_gateway_reads() -> None:
    apps = dialplan("switchboard-incoming")
    assert apps.index("Answer()") < apps.index("Set(AS_UUID=${UUID()})") < apps.index(
        "AudioSocket(${AS_UUID},${SWITCHBOARD_AUDIOSOCKET})")
    assert "AudioSocket(${SB_UUID},${SB_AUDIOSOCKET})" in dialplan(AmiSettings().outbound_context)


def test_warm_and_return_contexts_match_what_the_transferer_sends() -> None:
    s = AmiSettings()
    warm = dialplan(s.warm_context)
    assert warm.index("AudioSocket(${SB_UUID},${SB_AUDIOSOCKET})") < warm.index("Bridge(${SB_CALLER})")
    back = dialplan(s.return_context)
    assert back.index("Set(AS_UUID=${UUID()})") < back.index("AudioSocket(${AS_UUID},${SWITCHBOARD_AUDIOSOCKET})")


def test_manager_conf_grants_what_the_actions_need() -> None:
    conf = configparser.ConfigParser(inline_comment_prefixes=(";",), strict=False)
    conf.read(ETC / "asterisk" / "manager.conf")
    account = conf["switchboard"]
    assert {"call", "originate", "message"} <= {c.strip() for c in account["write"].split(",")}
    assert {"call", "dialplan"} <= {c.strip() for c in account["read"].split(",")}
    assert account["permit"].startswith("127.0.0.1")


def test_commented_example_in_switchboard_yaml_is_valid() -> None:
    text = (ETC / "switchboard.yaml").read_text()
    block = re.search(r"^# ami:\n((?:#   .*\n)+)", text, re.M)
    assert block, "commented ami: example missing"
    example = yaml.safe_load("\n".join(line[2:] for line in ("# ami:\n" + block.group(1)).splitlines()))
    settings = AmiSettings.model_validate(example["ami"])
    assert settings.enabled and settings.secret_env == "SWITCHBOARD_AMI_SECRET"


def test_enabled_without_secret_names_the_key_and_secret_is_never_shown(tmp_path: Path) -> None:
    text = (ETC / "switchboard.yaml").read_text()
    for name in ("directory", "knowledge"):
        text = text.replace(f"{name}: {name}.yaml", f"{name}: {ETC}/{name}.yaml")
    path = tmp_path / "switchboard.yaml"
    path.write_text(text + "\nami: {enabled: true}\n")
    with pytest.raises(ConfigError, match=r"ami: .*exactly one of secret or secret_env"):
        load_config(path)
    path.write_text(text + "\nami: {enabled: true, secret: hunter2-secret}\n")
    config = load_config(path)
    assert config.ami.resolved_secret() == "hunter2-secret"
    assert "hunter2" not in repr(config.ami) and "hunter2" not in str(config)


@pytest.mark.parametrize("context", ["switchboard-incoming", "switchboard-transfer", "switchboard-return"])
def test_after_the_assistant_a_person_takes_the_call_unless_it_ended_normally(context: str) -> None:
    """The gateway's failed-transfer and emergency paths end the leg unmarked and rely on this."""
    apps = dialplan(context)
    for i, app in enumerate(apps):
        if app.startswith(("AudioSocket(${AS_UUID}", "Dial(AudioSocket/")):
            assert apps[i + 1] == 'GotoIf($["${SWITCHBOARD_END}" = "ended"]?done)', (context, apps)
            assert apps[i + 2].startswith("Dial(PJSIP/"), (context, apps)
