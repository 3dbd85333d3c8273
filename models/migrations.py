"""Versioned schema: an ordered list of migrations, applied at open in one transaction.

Migration N (1-based) moves the schema from version N-1 to N. Never edit a released
migration; append a new one.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

from sqlite_utils import Database

log = logging.getLogger(__name__)


class SchemaVersionError(RuntimeError):
    """The database was written by a newer Switchboard than this one."""


def _v1_initial(db: Database) -> None:
    db["contacts"].create(
        {"id": int, "number": str, "name": str, "created_at": float},
        pk="id", not_null=["number", "created_at"],
    )
    db["contacts"].create_index(["number"], unique=True)
    db["threads"].create(
        {"id": int, "contact_id": int, "created_at": float},
        pk="id", not_null=["contact_id", "created_at"],
        foreign_keys=[("contact_id", "contacts", "id")],
    )
    db["threads"].create_index(["contact_id"], unique=True)
    # thread_id is NULL for a message from a caller whose number was withheld.
    db["messages"].create(
        {"id": int, "thread_id": int, "channel": str, "direction": str, "body": str,
         "status": str, "attempts": int, "at": float,
         "call_id": str, "for_staff": str, "caller_name": str},
        pk="id", not_null=["channel", "direction", "body", "status", "attempts", "at"],
        defaults={"attempts": 0},
        foreign_keys=[("thread_id", "threads", "id")],
    )
    db["messages"].create_index(["thread_id", "at"])
    db["messages"].create_index(["status"])
    db["calls"].create(
        {"call_id": str, "caller": str, "dialled": str, "site": str, "transport": str,
         "contact_id": int, "started_at": float, "ended_at": float, "end_reason": str},
        pk="call_id", not_null=["site", "transport", "started_at"],
        foreign_keys=[("contact_id", "contacts", "id")],
    )
    db["calls"].create_index(["started_at"])
    db["turns"].create(
        {"call_id": str, "seq": int, "speaker": str, "text": str, "at": float,
         "timings_ms": str, "action": str, "interrupted": int},
        pk=("call_id", "seq"), not_null=["speaker", "text", "at", "timings_ms", "interrupted"],
        foreign_keys=[("call_id", "calls", "call_id")],
    )
    db["call_events"].create(
        {"id": int, "call_id": str, "kind": str, "at": float, "data": str},
        pk="id", not_null=["call_id", "kind", "at", "data"],
        foreign_keys=[("call_id", "calls", "call_id")],
    )
    db["call_events"].create_index(["call_id", "at"])
    # No foreign key to calls: a help request may come from another channel.
    db["help_requests"].create(
        {"id": int, "call_id": str, "contact_number": str, "question": str,
         "status": str, "answer": str, "created_at": float, "answered_at": float},
        pk="id", not_null=["question", "status", "created_at"],
    )
    db["help_requests"].create_index(["status", "created_at"])
    # An explicit INTEGER PRIMARY KEY: the external-content FTS index joins on rowid,
    # and an implicit rowid may be renumbered by VACUUM.
    db["knowledge"].create(
        {"pk": int, "id": str, "question": str, "answer": str, "phrasings": str,
         "tags": str, "source": str, "updated_at": float},
        pk="pk", not_null=["id", "question", "answer", "phrasings", "tags", "source", "updated_at"],
    )
    db["knowledge"].create_index(["id"], unique=True)
    db["knowledge"].enable_fts(
        ["question", "phrasings", "answer"], fts_version="FTS5",
        create_triggers=True, tokenize="porter",
    )


def _v2_outbox(db: Database) -> None:
    # Every outgoing text is a row here before any channel sees it. The unique key makes
    # enqueueing idempotent; CHECK keeps a bug from inventing a state the worker ignores.
    db.execute("""
        CREATE TABLE outbox (
            id INTEGER PRIMARY KEY,
            idempotency_key TEXT NOT NULL UNIQUE,
            channel TEXT NOT NULL,
            recipient TEXT NOT NULL,
            subject TEXT,
            body TEXT NOT NULL,
            html TEXT,
            state TEXT NOT NULL DEFAULT 'queued'
                CHECK (state IN ('queued', 'sending', 'sent', 'delivered', 'failed')),
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            next_attempt_at REAL NOT NULL,
            provider_ref TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            sent_at REAL
        )""")
    db.execute("CREATE INDEX idx_outbox_due ON outbox (channel, state, next_attempt_at)")
    db.execute("CREATE INDEX idx_outbox_provider_ref ON outbox (channel, provider_ref)")
    # A reply in a text thread points at the outbox row that carries it.
    db.execute("ALTER TABLE messages ADD COLUMN outbox_id INTEGER REFERENCES outbox(id)")
    # contacts.number holds a normalised phone number or, for a contact known only by
    # email, a lower-cased email address. Opt-out (STOP) is per contact.
    db.execute("ALTER TABLE contacts ADD COLUMN opted_out_at REAL")


def _v3_durable_inbound(db: Database) -> None:
    # An inbound text is a `pending` row before its channel acknowledges it (SIP 200, SMTP 250, SIM
    # delete) and stays pending until answered, so a restart answers it. The channel's own reference
    # (SIP Call-ID and CSeq, Message-ID, SMS timestamp) is unique per channel: a re-delivery is dropped.
    db.execute("ALTER TABLE messages ADD COLUMN sender TEXT")
    db.execute("ALTER TABLE messages ADD COLUMN subject TEXT")
    db.execute("ALTER TABLE messages ADD COLUMN provider_ref TEXT")
    db.execute("CREATE UNIQUE INDEX idx_messages_provider_ref ON messages (channel, provider_ref)"
               " WHERE provider_ref IS NOT NULL")
    # The one text an opted-out contact still gets: the confirmation of their STOP.
    db.execute("ALTER TABLE outbox ADD COLUMN opt_notice INTEGER NOT NULL DEFAULT 0")
    # Parts of a long SMS, kept until all have arrived; the SIM copy is deleted once a part is here.
    # sent_at (the service centre's timestamp) tells a part read twice from one reused reference.
    # wire is the part's text as UTF-16: a part may end inside a surrogate pair.
    db.execute("""
        CREATE TABLE sms_parts (
            channel TEXT NOT NULL,
            sender TEXT NOT NULL,
            ref INTEGER NOT NULL,
            total INTEGER NOT NULL,
            part INTEGER NOT NULL,
            sent_at TEXT NOT NULL,
            wire BLOB NOT NULL,
            received_at REAL NOT NULL,
            assembled_at REAL,
            PRIMARY KEY (channel, sender, ref, total, part, sent_at)
        )""")


def _v4_http_api(db: Database) -> None:
    # API keys: only a SHA-256 of each key (a 256-bit random secret, so a fast hash cannot be
    # brute-forced) and a short prefix to tell keys apart in `keys list`.
    db.execute("""
        CREATE TABLE api_keys (
            name TEXT PRIMARY KEY,
            key_hash TEXT NOT NULL UNIQUE,
            prefix TEXT NOT NULL,
            scopes TEXT NOT NULL,
            rate_per_s REAL NOT NULL,
            burst INTEGER NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL,
            revoked_at REAL,
            last_used_at REAL
        )""")
    # Who called what, when, with which outcome: never bodies, numbers or codes.
    db.execute("""
        CREATE TABLE api_audit (
            id INTEGER PRIMARY KEY,
            key_name TEXT NOT NULL,
            method TEXT NOT NULL,
            route TEXT NOT NULL,
            status INTEGER NOT NULL,
            at REAL NOT NULL
        )""")
    db.execute("CREATE INDEX idx_api_audit_at ON api_audit (at)")
    # One-time codes: the code only as an HMAC under a key kept outside the database.
    db.execute("""
        CREATE TABLE otp_codes (
            id TEXT PRIMARY KEY,
            key_name TEXT NOT NULL,
            channel TEXT NOT NULL,
            destination TEXT NOT NULL,
            purpose TEXT,
            code_hmac TEXT NOT NULL,
            outbox_id INTEGER REFERENCES outbox(id),
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            verified_at REAL
        )""")
    db.execute("CREATE INDEX idx_otp_destination ON otp_codes (destination, created_at)")
    # Each outbox state change, for GET /v1/messages/{id}: recorded by triggers, so every writer
    # (the outbox, a CLI, a delivery report) leaves its step without knowing about the API.
    db.execute("""
        CREATE TABLE outbox_events (
            id INTEGER PRIMARY KEY,
            outbox_id INTEGER NOT NULL REFERENCES outbox(id),
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            error TEXT,
            at REAL NOT NULL
        )""")
    db.execute("CREATE INDEX idx_outbox_events ON outbox_events (outbox_id, id)")
    db.execute("""
        CREATE TRIGGER outbox_event_insert AFTER INSERT ON outbox BEGIN
            INSERT INTO outbox_events (outbox_id, state, attempts, error, at)
            VALUES (NEW.id, NEW.state, NEW.attempts, NEW.last_error, NEW.created_at);
        END""")
    db.execute("""
        CREATE TRIGGER outbox_event_update AFTER UPDATE OF state ON outbox
        WHEN NEW.state != OLD.state OR NEW.attempts != OLD.attempts BEGIN
            INSERT INTO outbox_events (outbox_id, state, attempts, error, at)
            VALUES (NEW.id, NEW.state, NEW.attempts, NEW.last_error, NEW.updated_at);
        END""")
    # A one-time code's text is in its outbox row only until the row is settled.
    db.execute("""
        CREATE TRIGGER outbox_erase_codes AFTER UPDATE OF state ON outbox
        WHEN NEW.idempotency_key LIKE 'otp:%' AND NEW.state IN ('sent', 'delivered', 'failed') BEGIN
            UPDATE outbox SET body = '(one-time code, erased once sent)', html = NULL WHERE id = NEW.id;
        END""")
    db.execute("CREATE INDEX idx_outbox_recipient ON outbox (recipient, created_at)")
    db.execute("ALTER TABLE outbox ADD COLUMN owner TEXT")  # the API key that queued it, if any


def _v5_staff(db: Database) -> None:
    # Dashboard staff: an argon2 hash of each password, never the password.
    db.execute("""
        CREATE TABLE staff_users (
            name TEXT PRIMARY KEY,
            role TEXT NOT NULL CHECK (role IN ('operator', 'supervisor', 'admin')),
            password_hash TEXT NOT NULL,
            created_at REAL NOT NULL
        )""")
    # A signed-in browser: only the SHA-256 of its cookie (a 256-bit random secret), so a copy of the
    # database signs nobody in; a row deleted is a session revoked, also across restarts.
    db.execute("""
        CREATE TABLE staff_sessions (
            token_hash TEXT PRIMARY KEY,
            user_name TEXT NOT NULL REFERENCES staff_users(name) ON DELETE CASCADE,
            csrf TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL
        )""")
    db.execute("CREATE INDEX idx_staff_sessions_user ON staff_sessions (user_name)")
    # What staff did (logins, answers, edits): no passwords, no message bodies.
    db.execute("""
        CREATE TABLE staff_audit (
            id INTEGER PRIMARY KEY,
            user_name TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT,
            outcome TEXT NOT NULL,
            remote TEXT,
            at REAL NOT NULL
        )""")
    db.execute("CREATE INDEX idx_staff_audit_at ON staff_audit (at)")
    # The learning loop's follow-up to the customer who asked: who answered, and the outbox row
    # carrying the answer (or why none could be sent). status gains 'unresolved' (timed out).
    db.execute("ALTER TABLE help_requests ADD COLUMN answered_by TEXT")
    db.execute("ALTER TABLE help_requests ADD COLUMN followup_channel TEXT")
    db.execute("ALTER TABLE help_requests ADD COLUMN followup_outbox_id INTEGER REFERENCES outbox(id)")
    db.execute("ALTER TABLE help_requests ADD COLUMN followup_note TEXT")
    # Learned entries staff disabled: kept aside, out of `knowledge` and its FTS index, so retrieval
    # needs no filter and a re-enabled entry is the same entry again.
    db.execute("CREATE TABLE knowledge_disabled AS SELECT * FROM knowledge WHERE 0")
    db.execute("CREATE UNIQUE INDEX idx_knowledge_disabled_id ON knowledge_disabled (id)")


def _v6_takeover(db: Database) -> None:
    # A text thread an operator took over from the assistant: who holds it and since when (NULL: the
    # assistant answers). Inbound texts on a held thread are settled as `held` (never answered by the
    # assistant, also after a restart) until the operator replies or hands back (-> `staff`).
    db.execute("ALTER TABLE threads ADD COLUMN held_by TEXT")
    db.execute("ALTER TABLE threads ADD COLUMN held_since REAL")
    # An outbound message an operator wrote (NULL: the assistant's or the system's).
    db.execute("ALTER TABLE messages ADD COLUMN sent_by TEXT")


def _v7_added_phrasings(db: Database) -> None:
    # Phrasings staff added from the dashboard to an entry of etc/knowledge.yaml: kept apart from the
    # admin's file and merged into the entry each time the file is loaded (so they survive restarts).
    db.execute("""
        CREATE TABLE knowledge_phrasings (
            entry_id TEXT NOT NULL,
            phrasing TEXT NOT NULL,
            help_request_id INTEGER,
            added_by TEXT,
            added_at REAL NOT NULL,
            PRIMARY KEY (entry_id, phrasing)
        )""")
    # The existing entry a help request was closed with (its question added as a phrasing of it).
    db.execute("ALTER TABLE help_requests ADD COLUMN answered_entry TEXT")


def _v8_outbox_dismissed(db: Database) -> None:
    # Staff dismissed a failed message from the dashboard's list: it stays failed (for the API and
    # its events), only the page stops showing it.
    db.execute("ALTER TABLE outbox ADD COLUMN dismissed_by TEXT")


MIGRATIONS: list[Callable[[Database], None]] = [_v1_initial, _v2_outbox, _v3_durable_inbound, _v4_http_api,
                                                _v5_staff, _v6_takeover, _v7_added_phrasings, _v8_outbox_dismissed]
LATEST_VERSION = len(MIGRATIONS)


@contextlib.contextmanager
def _immediate_transaction(db: Database) -> Iterator[None]:
    # IMMEDIATE takes the write lock up front, so two processes opening the same
    # file cannot both read version N and then race to migrate it.
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.conn.rollback()
        raise
    db.conn.commit()


def schema_version(db: Database) -> int:
    if not db["schema_version"].exists():
        return 0
    row = db.execute("SELECT version FROM schema_version WHERE id = 1").fetchone()
    return row[0] if row else 0


def migrate(db: Database, where: str) -> int:
    """Bring the schema up to LATEST_VERSION; return the version found before."""
    with _immediate_transaction(db):
        db.execute(
            "CREATE TABLE IF NOT EXISTS schema_version"
            " (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)"
        )
        found = schema_version(db)
        if found > LATEST_VERSION:
            raise SchemaVersionError(
                f"{where}: database schema version {found} is newer than this Switchboard "
                f"supports ({LATEST_VERSION}); upgrade Switchboard or point it at another database"
            )
        for version in range(found + 1, LATEST_VERSION + 1):
            MIGRATIONS[version - 1](db)
            log.info("schema migrated db=%s version=%d", where, version)
        db.execute(
            "INSERT INTO schema_version (id, version) VALUES (1, ?)"
            " ON CONFLICT(id) DO UPDATE SET version = excluded.version",
            [LATEST_VERSION],
        )
    return found
