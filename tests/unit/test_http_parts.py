"""The HTTP API's pieces below HTTP: keys, one-time codes and the outbox timeline, on a real SQLite store."""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from gateway.config import OtpSettings
from gateway.http.keys import hash_key, new_key, parse_duration, parse_rate
from gateway.http.otp import OneTimeCodes, Refused, load_hmac_key
from models.store import Store


def test_rates_durations_and_keys() -> None:
    assert parse_rate("20/s") == (20.0, 20) and parse_rate("120/m") == (2.0, 2) and parse_rate("1/h")[1] == 1
    assert parse_duration("90d") == 90 * 86400 and parse_duration("30m") == 1800
    for bad in ("0/s", "20", "x/s", "5/d"):
        with pytest.raises(ValueError):
            parse_rate(bad)
    with pytest.raises(ValueError):
        parse_duration("0d")
    key, record = new_key("shop", ["messages:send", "messages:send"], "5/s", "1d", now=1000.0)
    assert key.startswith("sb_") and len(key) > 40 and record.key_hash == hash_key(key) != key
    assert record.scopes == ("messages:send",) and record.expires_at == 1000.0 + 86400 and key.startswith(record.prefix)
    assert new_key("shop", ["messages:send"], "5/s", None)[0] != key  # random
    with pytest.raises(ValueError, match="unknown scope"):
        new_key("shop", ["root"], "5/s", None)
    with pytest.raises(ValueError, match="name"):
        new_key("a b", ["admin"], "5/s", None)


async def test_keys_in_the_store(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "sb.db")
    try:
        key, record = new_key("shop", ["otp:send"], "5/s", None)
        await store.api_key_create(record)
        with pytest.raises(ValueError, match="exists"):
            await store.api_key_create(new_key("shop", ["admin"], "5/s", None)[1])
        found = await store.api_key_by_hash(hash_key(key))
        assert found == record and found.usable(time.time())
        assert await store.api_key_revoke("shop") and not await store.api_key_revoke("shop")
        revoked = await store.api_key_by_hash(hash_key(key))
        assert revoked is not None and not revoked.usable(time.time())
        await store.api_audit_write([("shop", "POST", "/v1/otp", 202, 5.0), ("shop", "POST", "/v1/otp", 429, 6.0)])
        assert [r["status"] for r in await store.api_audit()] == [429, 202]
        assert (await store.api_keys())[0].last_used_at == 6.0
    finally:
        await store.close()


def test_hmac_key_is_made_once_private(tmp_path: Path) -> None:
    key = load_hmac_key(tmp_path / "data")
    path = tmp_path / "data" / "otp-hmac.key"
    assert len(key) == 32 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_hmac_key(tmp_path / "data") == key


async def test_codes_verify_once_and_limit(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "sb.db")
    codes = OneTimeCodes(store, OtpSettings(resend_cooldown_s=0, per_destination_hourly=2, max_attempts=3),
                         load_hmac_key(tmp_path))
    try:
        new = await codes.create("shop", "sms", "+15550100", "login")
        assert len(new.code) == 6 and new.code.isdigit() and new.code not in new.record.code_hmac
        wrong = "0000000"
        assert (await codes.verify(new.record.id, wrong)).attempts_left == 2
        verdict = await codes.verify(new.record.id, new.code)
        assert (verdict.outcome, verdict.attempts_left) == ("valid", 0)
        assert (await codes.verify(new.record.id, new.code)).outcome == "used"
        assert (await codes.verify("abc", new.code)).outcome == "unknown"
        other = await codes.create("shop", "sms", "+15550100", None)
        outcomes = [(await codes.verify(other.record.id, wrong)).outcome for _ in range(4)]
        assert outcomes == ["invalid", "invalid", "invalid", "exhausted"]
        assert (await codes.verify(other.record.id, other.code)).outcome == "exhausted"
        with pytest.raises(Refused, match="this hour") as refused:
            await codes.create("shop", "sms", "+15550100", None)
        assert 3590 < refused.value.retry_after_s <= 3600
        assert "{code}" not in codes.message("123456") and "123456" in codes.message("123456")
    finally:
        await store.close()


async def test_outbox_timeline_and_code_erasure(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "sb.db")
    try:
        row_id, _ = await store.outbox_enqueue("sms", "+15550100", "Your code is 123456", None, None, "otp:abc",
                                               owner="shop")
        later_id, _ = await store.outbox_enqueue("sms", "+15550100", "hello", None, None, "api:shop:1",
                                                 send_at=time.time() + 3600, owner="shop")
        claimed = await store.outbox_claim("sms")
        assert claimed is not None and claimed.id == row_id  # the scheduled one is not due
        await store.outbox_retry(row_id, "modem busy", 0.0)
        assert (await store.outbox_claim("sms")).id == row_id  # type: ignore[union-attr]
        await store.outbox_sent(row_id, "ref-1", delivered=False)
        await store.outbox_delivery("sms", "ref-1", True)
        events = await store.outbox_events(row_id)
        assert [(e["state"], e["attempts"]) for e in events] == [
            ("queued", 0), ("sending", 1), ("queued", 1), ("sending", 2), ("sent", 2), ("delivered", 2)]
        assert events[2]["error"] == "modem busy"
        row = await store.outbox_get(row_id)
        assert row is not None and "123456" not in row.body and row.owner == "shop"
        assert (await store.outbox_get(later_id)).body == "hello"  # type: ignore[union-attr]
        assert (await store.outbox_count_to("+15550100", 0))[0] == 1  # codes are counted by their own table
    finally:
        await store.close()


async def test_recovery_is_per_outbox(tmp_path: Path) -> None:
    """The daemon's voice outbox starts beside the text one: it must not requeue a text being sent."""
    store = await Store.open(tmp_path / "sb.db")
    try:
        await store.outbox_enqueue("email", "a@b.test", "hi", None, None, "k1")
        await store.outbox_enqueue("voice", "201", "hi", None, None, "k2")
        assert (await store.outbox_claim("email")) and (await store.outbox_claim("voice"))
        assert await store.outbox_recover(["voice"]) == 1
        assert [r.state for r in await store.outbox_rows()] == ["sending", "queued"]
    finally:
        await store.close()


def test_http_section_is_validated(tmp_path: Path) -> None:
    from gateway.config import ConfigError, HttpSettings, load_config
    assert HttpSettings().port == 8080 and HttpSettings().host == "127.0.0.1" and HttpSettings().enabled
    etc = Path(__file__).resolve().parents[2] / "etc"
    text = (etc / "switchboard.yaml").read_text().replace("directory.yaml", str(etc / "directory.yaml")).replace(
        "knowledge.yaml", str(etc / "knowledge.yaml"))
    for bad, where in (("  port: 8080", "http.port"), ("  enabled: true\n  host", "http.enabled")):
        (tmp_path / "switchboard.yaml").write_text(text.replace(bad, bad.replace("8080", "70000").replace(
            "true", "sometimes"), 1))
        with pytest.raises(ConfigError, match=where):
            load_config(tmp_path / "switchboard.yaml")
    for bad in ({"default_rate": "fast"}, {"otp": {"message": "no code here"}}, {"otp": {"digits": 3}}):
        with pytest.raises(ValueError):
            HttpSettings.model_validate(bad)


def test_webhook_settings_need_their_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    from channels.settings import WebhookSettings
    from channels.webhook import signature
    monkeypatch.delenv("HOOK_SECRET", raising=False)
    with pytest.raises(ValueError, match="HOOK_SECRET"):
        WebhookSettings(url="https://crm.example/hook", secret_env="HOOK_SECRET")
    monkeypatch.setenv("HOOK_SECRET", "s")
    hook = WebhookSettings(url="https://crm.example/hook", secret_env="HOOK_SECRET", events=("otp.verified",))
    assert hook.events == ("otp.verified",) and hook.secret() == b"s"
    assert signature(b"s", "100", b"{}") == "v1=" + hmac.new(b"s", b"100.{}", hashlib.sha256).hexdigest()
    with pytest.raises(ValueError):
        WebhookSettings(url="https://crm.example/hook", secret_env="HOOK_SECRET", events=("call.started",))


async def test_retention_deletes_old_audit_rows_and_settled_codes(tmp_path: Path) -> None:
    """With a clock of our own: audit rows older than audit_days go, codes expired more than otp_days ago go
    (used or not), the rest stay; a sweep with nothing to do deletes nothing."""
    from gateway.config import RetentionSettings
    from gateway.daemon.retention import DAY_S, Sweeper
    from models.records import OtpCode
    now = 1_900_000_000.0
    store = await Store.open(tmp_path / "sb.db")
    try:
        await store.api_audit_write([("shop", "GET", "/health", 200, now - age * DAY_S) for age in (200, 91, 89, 0)])
        for name, expired_days_ago in (("old", 8.0), ("recent", 6.0), ("live", -0.001)):
            await store.otp_create(OtpCode(id=name, key_name="shop", channel="sms", destination="+15550100",
                                           purpose=None, code_hmac="h", created_at=now - expired_days_ago * DAY_S - 300,
                                           expires_at=now - expired_days_ago * DAY_S))
        await store.otp_attempt("old", lambda h: True, 5, now - 8.5 * DAY_S)  # used, long ago
        sweeper = Sweeper(store, RetentionSettings(audit_days=90, otp_days=7), clock=lambda: now)
        assert (await sweeper.sweep()).items() >= {"audit_rows": 2, "otp_codes": 1}.items()
        assert sorted(round((now - r["at"]) / DAY_S) for r in await store.api_audit()) == [0, 89]
        with sqlite3.connect(tmp_path / "sb.db") as db:
            assert [row[0] for row in db.execute("SELECT id FROM otp_codes ORDER BY id")] == ["live", "recent"]
        assert not any((await sweeper.sweep()).values())
        later = Sweeper(store, RetentionSettings(audit_days=1, otp_days=1), clock=lambda: now + 2 * DAY_S)
        assert (await later.sweep()).items() >= {"audit_rows": 2, "otp_codes": 2}.items()
    finally:
        await store.close()


async def test_retention_deletes_in_batches(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "sb.db")
    try:
        await store.api_audit_write([("shop", "GET", "/health", 200, float(i)) for i in range(25)])
        assert await store.sweep_api_rows(audit_before=20.0, otp_before=0.0, batch=4) == (20, 0)
        assert len(await store.api_audit()) == 5
    finally:
        await store.close()


@pytest.mark.parametrize(("body", "key", "reason"), [
    ("  public_chat: {enabled: true}", "http.public_chat", "origins: list the sites"),
    ("  public_chat: {enabled: true, origins: ['https://clinic.test/chat']}", "http.public_chat", "no path"),
    ("  public_chat: {max_message_bytes: 10}", "http.public_chat.max_message_bytes", "greater than or equal"),
    ("  public_chat: {idle_timeout_s: 0}", "http.public_chat.idle_timeout_s", "greater than 0"),
    ("  public_chat: {max_connections: 3}", "http.public_chat.max_connections", "unknown key"),
    ("  retention: {otp_days: 7}", "http.retention", "unknown key"),  # moved to the top-level retention:
    ("retention: {transcripts_days: 0}", "retention.transcripts_days", "greater than 0"),
    ("retention: {messages_days: a month}", "retention.messages_days", "valid number"),
    ("retention: {otp_days: 0.5}", "retention.otp_days", "greater than or equal to 1"),
    ("retention: {calls_days: 3}", "retention.calls_days", "unknown key"),
])
def test_public_chat_and_retention_mistakes_name_file_key_and_reason(tmp_path: Path, body: str, key: str,
                                                                    reason: str) -> None:
    from gateway.config import ConfigError, HttpSettings, load_config
    assert not HttpSettings().public_chat.enabled
    etc = Path(__file__).resolve().parents[2] / "etc"
    text = (etc / "switchboard.yaml").read_text().replace("directory.yaml", str(etc / "directory.yaml")).replace(
        "knowledge.yaml", str(etc / "knowledge.yaml"))
    # An indented body goes into http:, another at the top level.
    text = text.replace("  port: 8080\n", f"  port: 8080\n{body}\n", 1) if body.startswith(" ") else f"{text}\n{body}\n"
    (tmp_path / "switchboard.yaml").write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "switchboard.yaml")
    assert (err.value.file, err.value.key) == (str(tmp_path / "switchboard.yaml"), key)
    assert reason in err.value.reason


def test_visitors_count_connections_and_messages_per_address() -> None:
    from gateway.config import PublicChatSettings
    from gateway.http.auth import RateLimited
    from gateway.http.public import Visitors
    now = [0.0]
    visitors = Visitors(PublicChatSettings(max_connections_per_ip=2, messages_per_minute_per_ip=2),
                        clock=lambda: now[0])
    assert visitors.admit("a") and visitors.admit("a") and not visitors.admit("a") and visitors.admit("b")
    visitors.leave("a")
    assert visitors.admit("a")
    visitors.take("a")
    visitors.take("a")
    with pytest.raises(RateLimited) as limited:
        visitors.take("a")
    assert limited.value.retry_after == 30  # one message back every 30 s
    visitors.take("b")
    now[0] += 30.0
    visitors.take("a")
