"""The channels' sections of etc/switchboard.yaml, as plain schema classes.

Kept apart from the channel modules so that reading the config never imports a channel's
transport (aiosmtplib, aiosmtpd, python-gsmmodem): those load only when a channel is built.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from channels.base import Settings

MAX_UDP_REQUEST = 1300  # RFC 3428 §9: a MESSAGE outside a session must fit in 1300 bytes


class RateLimit(Settings):
    per_second: float = Field(gt=0)
    burst: int = Field(1, ge=1)



class RetryPolicy(Settings):
    base_s: float = Field(2.0, gt=0)
    cap_s: float = Field(600.0, gt=0)
    # With the defaults a channel may be down for about three hours before a message fails.
    max_attempts: int = Field(25, ge=1)



class OutboxSettings(Settings):
    """The `outbox:` section of etc/switchboard.yaml."""

    retry: RetryPolicy = RetryPolicy()
    rate_limits: dict[str, RateLimit] = {}
    send_timeout_s: float = Field(60.0, gt=0)
    channel_restart_s: float = Field(30.0, gt=0)  # a channel that failed to start is tried again



class SmtpSettings(Settings):
    host: str = "127.0.0.1"
    port: int = Field(25, ge=1, le=65535)
    security: Literal["none", "starttls", "tls"] = "starttls"
    username: str | None = None
    password_env: str | None = None  # the name of an environment variable holding the password
    from_address: str
    from_name: str = "Switchboard"
    ca_file: Path | None = None  # trust this CA, e.g. a relay with a self-signed certificate
    verify_tls: bool = True
    timeout_s: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _auth(self) -> "SmtpSettings":
        if (self.username is None) != (self.password_env is None):
            raise ValueError("give both username and password_env for SMTP AUTH, or neither")
        if "@" not in self.from_address:
            raise ValueError(f"from_address {self.from_address!r} is not an email address")
        return self

    def password(self) -> str | None:
        if self.password_env is None:
            return None
        value = os.environ.get(self.password_env)
        if not value:
            raise ValueError(f"email.smtp.password_env: environment variable {self.password_env!r} is not set")
        return value



class SmtpListenerSettings(Settings):
    enabled: bool = False
    host: str = "127.0.0.1"  # loopback: the local MTA relays to us
    port: int = Field(2525, ge=0, le=65535)
    recipients: tuple[str, ...] = ()  # the addresses we accept mail for (required when enabled)
    max_message_bytes: int = Field(1_000_000, ge=1024)

    @model_validator(mode="after")
    def _recipients(self) -> "SmtpListenerSettings":
        if self.enabled and not self.recipients:
            raise ValueError("listener.recipients: list the addresses to accept mail for (e.g. the from_address)")
        return self



class EmailSettings(Settings):
    """The `email:` section of etc/switchboard.yaml."""

    smtp: SmtpSettings
    listener: SmtpListenerSettings = SmtpListenerSettings()



class ModemSettings(Settings):
    """One GSM modem (the `sms:` channel)."""

    name: str = "sms"  # the channel name the outbox routes by
    port: str  # serial device; prefer a stable /dev/serial/by-id/... link
    baudrate: int = Field(115200, gt=0)
    pin_env: str | None = None  # name of the environment variable holding the SIM PIN, if any
    network_timeout_s: float = Field(60.0, gt=0)  # wait this long for network registration at connect
    reconnect_s: float = Field(30.0, gt=0)  # retry interval while the modem is unusable
    multipart_timeout_s: float = Field(600.0, gt=0)  # then deliver a long SMS with its missing parts marked
    max_parts: int = Field(6, ge=1, le=255)  # longer texts fail permanently instead of costing N SMS
    handler_timeout_s: float = Field(30.0, gt=0)  # a received SMS stays on the SIM if not handled by then



class AmiMessageSettings(Settings):
    name: str = "sip"
    destination: str = "pjsip:{to}"  # MessageSend Destination; {to} is the recipient (endpoint or number)
    sender: str = '"Switchboard" <sip:switchboard@localhost>'  # the From header
    max_body_bytes: int = Field(1300, ge=1, le=1300)  # Asterisk decodes Base64Body into 1301 bytes



class SipMessageSettings(Settings):
    name: str = "sip"
    gateway_host: str  # the SIP SMS gateway (or PBX) requests go to
    gateway_port: int = Field(5060, ge=1, le=65535)
    domain: str | None = None  # request-URI / From host; default gateway_host
    bind_host: str = "127.0.0.1"  # loopback: a gateway on this host; set an interface address for a remote one
    bind_port: int = Field(5070, ge=0, le=65535)  # 0: any free port
    advertised_host: str | None = None  # address in Via/From; default: the one routing to the gateway
    from_user: str = "switchboard"
    from_display: str | None = None
    username: str | None = None  # digest user; default from_user
    password_env: str | None = None  # name of the environment variable holding the digest password
    inbound_from: list[str] = []  # source IPs allowed to send MESSAGE (and OPTIONS) in; empty: no inbound
    inbound_username: str | None = None  # digest credentials inbound MESSAGE must carry, if the peer can
    inbound_password_env: str | None = None
    timer_t1_s: float = Field(0.5, gt=0)
    timer_t2_s: float = Field(4.0, gt=0)
    timer_f_s: float = Field(32.0, gt=0)  # give up on a transaction (64 * T1)
    max_request_bytes: int = Field(MAX_UDP_REQUEST, ge=200, le=65000)

    @model_validator(mode="after")
    def _inbound_auth(self) -> "SipMessageSettings":
        if (self.inbound_username is None) != (self.inbound_password_env is None):
            raise ValueError("give both inbound_username and inbound_password_env, or neither")
        return self


WEBHOOK_EVENTS = ("message.sent", "message.delivered", "message.failed", "otp.verified", "call.ended",
                  "help_request.created")


class WebhookSettings(Settings):
    """One receiver under `http.webhooks`: events POSTed as JSON, signed with HMAC-SHA256."""

    url: str = Field(pattern=r"^https?://[^\s]+$")
    secret_env: str  # the name of an environment variable holding the signing secret
    events: tuple[Literal[WEBHOOK_EVENTS], ...] = WEBHOOK_EVENTS  # type: ignore[valid-type]
    timeout_s: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _secret_set(self) -> "WebhookSettings":
        self.secret()  # at start, not at the first event
        return self

    def secret(self) -> bytes:
        value = os.environ.get(self.secret_env)
        if not value:
            raise ValueError(f"http.webhooks: environment variable {self.secret_env!r} is not set")
        return value.encode()

