"""Load and validate etc/switchboard.yaml (+ the files it names) once, at start.

Any mistake is reported as `file: key.path: reason` and the daemon refuses to start: it never
runs half-configured. Relative paths in the YAML are relative to the file that names them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator, with_config

from channels.settings import (
    AmiMessageSettings, EmailSettings, ModemSettings, OutboxSettings, SipMessageSettings, WebhookSettings,
)
from llm.knowledge import load_knowledge_yaml
from llm.site import Directory, Site
from models.records import KnowledgeEntry
from speech.vad import EndpointerConfig

REPO_CONFIG = Path(__file__).resolve().parent.parent / "etc" / "switchboard.yaml"
SYSTEM_CONFIG = Path("/etc/switchboard/switchboard.yaml")
ARI_RECONNECT_MIN_S = 0.5  # the ARI client's first reconnection delay


def default_config() -> Path:
    """The installed service's config if there is one, else this checkout's: the daemon and every CLI
    command find the same file, so `switchboard questions list` reads the database the service writes.
    Installed from a checkout with `pip install .` (no checkout beside the code), it is the
    checkout's etc/ when run from there."""
    if SYSTEM_CONFIG.exists():
        return SYSTEM_CONFIG
    return REPO_CONFIG if REPO_CONFIG.exists() else Path.cwd() / "etc" / "switchboard.yaml"

# Forbid unknown keys in the speech package's own dataclass without making speech depend on pydantic.
with_config(ConfigDict(extra="forbid"))(EndpointerConfig)


class ConfigError(Exception):
    """A config problem, already phrased for the admin: file, key path, reason."""

    def __init__(self, file: Path | str, key: str, reason: str) -> None:
        self.file, self.key, self.reason = str(file), key, reason
        where = f"{self.file}: {key}: " if key else f"{self.file}: "
        super().__init__(where + reason)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AudioSocketSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(9092, ge=0, le=65535)
    uuid_timeout_s: float = Field(2.0, gt=0)
    # No frames is not a hang-up (DTX, hold, silence suppression): EOF is. This only reaps peers that
    # vanished without closing the connection.
    idle_timeout_s: float = Field(300.0, gt=0)
    max_calls: int = Field(250, ge=1)
    # What kind 0x10 carries: slin, as Asterisk defines it. ulaw/alaw only for Dial(AudioSocket/...)
    # without c(slin), which sends the caller's codec labelled 0x10 (better: add c(slin)). Replies stay
    # slin: res_audiosocket labels every 0x10 frame it receives as slin and transcodes it itself.
    codec_0x10: Literal["slin", "ulaw", "alaw"] = "slin"


class SttSettings(Section):
    path: Path | None = None  # None: the bundled faster-whisper tiny.en
    threads: int = Field(2, ge=1)
    workers: int = Field(1, ge=1)


class TtsSettings(Section):
    voice: Path | None = None  # None: the bundled Piper en_US-joe-medium
    workers: int = Field(1, ge=1)


class LlmSettings(Section):
    # None: no LLM; replies come from rules and the site's knowledge (bench/startup.py: the bundled base
    # model would cost ~350 MB and the longest load for nothing a caller hears). "bundled": the bundled
    # Gemma 3 270M base, loaded and health-checked only, never spoken (tests the llama.cpp engine).
    path: Literal["bundled"] | Path | None = None
    # llama.cpp chat format (e.g. "chatml", "llama-3") for an instruction-tuned GGUF without an
    # embedded chat template; setting it declares the model fit for dialog.
    chat_format: str | None = None
    threads: int = Field(2, ge=1)
    context: int = Field(4096, ge=512)
    max_reply_tokens: int = Field(256, ge=96)


class ModelSettings(Section):
    stt: SttSettings = SttSettings()
    tts: TtsSettings = TtsSettings()
    llm: LlmSettings = LlmSettings()


class CallSettings(Section):
    no_speech_timeout_s: float = Field(10.0, gt=0)
    no_speech_prompts: int = Field(1, ge=0)  # prompts before goodbye
    barge_in: bool = True
    max_call_s: float = Field(900.0, gt=0)


class CapacitySettings(Section):
    """AI work shared by all calls. Past any bound a caller hears `wording.busy` and is put through to
    the front desk (without AMI: the leg ends and the dialplan rings a person), never silence."""

    max_turns: int = Field(8, ge=1)  # caller turns in STT or dialog at once (a new call needs one free)
    stt_queue: int = Field(8, ge=1)  # utterances waiting for an STT worker
    llm_queue: int = Field(4, ge=1)  # generations waiting for the LLM (past it: answers from knowledge)
    tts_queue: int = Field(6, ge=1)  # clause renders in flight when a reply needs its first audio
    # Each stage's limit, counted from the end of the caller's turn (STT) or from the stage's start.
    stt_timeout_s: float = Field(1.5, gt=0)
    dialog_timeout_s: float = Field(6.0, gt=0)
    first_audio_timeout_s: float = Field(2.0, gt=0)


class AmiSettings(Section):
    """The AMI control plane (transfers, call correlation, outbound calls); off unless enabled."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(5038, ge=1, le=65535)
    username: str = "switchboard"
    secret: SecretStr | None = None  # SecretStr: never shown in logs, reprs or errors
    secret_env: str | None = None  # or: the name of an environment variable holding the secret
    connect_timeout_s: float = Field(3.0, gt=0)  # TCP connect + login (a bad login takes ~1 s)
    action_timeout_s: float = Field(5.0, gt=0)
    ping_interval_s: float = Field(5.0, gt=0)
    ping_timeout_s: float = Field(3.0, gt=0)
    reconnect_min_s: float = Field(0.25, gt=0)
    reconnect_max_s: float = Field(2.0, gt=0)  # keeps reconnection within ~2 s of Asterisk being back
    correlation_wait_ms: int = Field(300, ge=0)  # the VarSet event and the AudioSocket connection race
    transfer_context: str = "switchboard-transfer"
    transfer_ring_s: int = Field(20, ge=1)  # staff phone rings this long before the caller comes back
    # Warm transfer: the staff phone is called first and hears a short summary, then is bridged to the caller.
    warm_transfer: bool = False
    staff_channel: str = "PJSIP/{extension}"  # how a staff extension is dialled for a warm transfer
    warm_context: str = "switchboard-warm"
    return_context: str = "switchboard-return"  # back to the assistant when the staff phone did not take the call
    outbound_channel: str = "PJSIP/{number}"  # how a number or extension is dialled; {number} is replaced
    outbound_context: str = "switchboard-outbound"
    outbound_caller_id: str = '"Switchboard" <1000>'
    outbound_ring_s: int = Field(30, ge=1)
    outbound_retries: int = Field(1, ge=0)  # extra attempts after busy / no answer / failure
    outbound_retry_delay_s: float = Field(60.0, ge=0)
    # Where Asterisk reaches the AudioSocket listener of `switchboard call` (default: audiosocket.host).
    outbound_audiosocket_host: str | None = None

    @model_validator(mode="after")
    def _one_secret(self) -> "AmiSettings":
        if self.enabled and (self.secret is None) == (self.secret_env is None):
            raise ValueError("give exactly one of secret or secret_env when enabled")
        return self

    def resolved_secret(self) -> str:
        if self.secret is not None:
            return self.secret.get_secret_value()
        value = os.environ.get(self.secret_env or "")
        if not value:
            raise ValueError(f"ami.secret_env: environment variable {self.secret_env!r} is not set")
        return value


class ConversationSettings(Section):
    """The `conversations:` section of etc/switchboard.yaml."""

    buffer_s: float = Field(3.0, ge=0)  # messages closer together than this are answered once
    max_buffer_s: float = Field(15.0, gt=0)  # ... but a steady stream is answered after this at the latest
    operator_channel: str | None = None  # where escalations go, e.g. "email"
    operator_to: str | None = None
    staff_sms_channel: str = "sms"  # the channel for staff whose message_via is sms ("sip" for a SIP gateway)
    opted_out_reply: str = "You will get no more messages from us. Reply START to resume."
    opted_in_reply: str = "You will get our messages again. Reply STOP to opt out."
    # At most this many automatic replies to one sender per window: a loop with another robot ends here.
    reply_limit: int = Field(10, ge=1)
    reply_window_s: float = Field(3600.0, gt=0)

    @model_validator(mode="after")
    def _operator(self) -> "ConversationSettings":
        if (self.operator_channel is None) != (self.operator_to is None):
            raise ValueError("give both operator_channel and operator_to, or neither")
        return self


class MessagingSettings(Section):
    """The `messaging:` section; every channel is optional."""

    email: EmailSettings | None = None
    sms_modem: ModemSettings | None = None
    sip_message: SipMessageSettings | None = None  # direct RFC 3428 to a SIP SMS gateway
    sip_via_ami: AmiMessageSettings | None = None  # MessageSend through Asterisk (needs ami.enabled)
    outbox: OutboxSettings = OutboxSettings()
    conversations: ConversationSettings = ConversationSettings()
    confirm_to_caller: bool = False  # text the caller that their message was passed on

    @property
    def channels_configured(self) -> bool:
        return any(c is not None for c in (self.email, self.sms_modem, self.sip_message, self.sip_via_ami))

    def channel_name(self, kind: str) -> str | None:
        """The outbox channel serving `kind` (email, sms, sip), or None if none is configured."""
        if kind == "email":
            return "email" if self.email else None
        section = {"sms": self.sms_modem, "sip": self.sip_message or self.sip_via_ami}.get(kind)
        return section.name if section else None

    @model_validator(mode="after")
    def _unique_names(self) -> "MessagingSettings":
        names = [c.name for c in (self.sms_modem, self.sip_message, self.sip_via_ami) if c is not None]
        if len(names) != len(set(names)):
            raise ValueError(f"two channels share the name {names!r}: give each a distinct `name`")
        return self


class AriSettings(Section):
    """`ari:` in etc/switchboard.yaml: the Stasis control plane (gateway.asterisk.ari)."""

    url: str = Field("http://127.0.0.1:8088", pattern=r"^https?://[^/\s]+/?$")  # Asterisk's http.conf
    username: str = "switchboard"
    password: str | None = None
    password_env: str | None = None  # name of an environment variable holding the password
    app: str = Field("switchboard", pattern=r"^[A-Za-z0-9_.-]+$")  # Stasis(app) in the dialplan
    external_host: str = Field("127.0.0.1:9092", pattern=r"^[^\s:/]+:\d{1,5}$")  # the AudioSocket server as Asterisk reaches it
    format: Literal["slin", "slin16"] = "slin"
    transfer_method: Literal["continue", "redirect"] = "continue"
    transfer_context: str = "from-internal"  # continue: <context>,<extension>,1
    redirect_endpoint: str = Field("PJSIP/{extension}", pattern=r"\{extension\}")  # redirect: same tech as the caller
    request_timeout_s: float = Field(5.0, gt=0)
    heartbeat_s: float = Field(10.0, gt=0)
    reconnect_max_s: float = Field(5.0, ge=ARI_RECONNECT_MIN_S)

    @model_validator(mode="after")
    def _one_password(self) -> AriSettings:
        if (self.password is None) == (self.password_env is None):
            raise ValueError("give exactly one of password and password_env")
        if self.password_env is not None and self.password_env not in os.environ:
            raise ValueError(f"password_env: environment variable {self.password_env} is not set")
        return self

    def secret(self) -> str:
        return self.password if self.password is not None else os.environ[self.password_env or ""]


class SipSettings(Section):
    """`sip:` in etc/switchboard.yaml: direct SIP mode (gateway.media.sip), the gateway as a PBX extension.
    pyVoIP 1.6.8 speaks UDP only and sends every request and response to the registrar (server:port)."""

    enabled: bool = False
    server: str = ""  # the registrar / PBX, a host name or IPv4 address
    port: int = Field(5060, ge=1, le=65535)
    user: str = ""  # the extension's SIP user name (also its authentication name)
    password_env: str | None = None  # name of an environment variable holding the extension's password
    # pyVoIP binds its SIP socket to my_ip and puts it in Contact and SDP: the address the PBX reaches us at
    # (0.0.0.0 gives one-way or no audio). RTP sockets bind to bind_host (default: my_ip).
    my_ip: str = Field("", pattern=r"^(\d{1,3}\.){3}\d{1,3}$|^$")
    bind_host: str | None = None
    sip_port: int = Field(5060, ge=0, le=65535)
    rtp_port_low: int = Field(10000, ge=1024, le=65534)
    rtp_port_high: int = Field(20000, ge=1024, le=65535)
    codecs: list[Literal["PCMU", "PCMA"]] = Field(default_factory=lambda: ["PCMU", "PCMA"], min_length=1)
    register_expires_s: int = Field(120, ge=30, le=3600)  # REGISTER Expires; pyVoIP renews 5 s before
    register_timeout_s: float = Field(5.0, gt=0)  # a registrar silent this long is a failed attempt
    retry_s: float = Field(10.0, gt=0)  # after pyVoIP gives up registering, start again this much later
    max_calls: int = Field(50, ge=1)

    @model_validator(mode="after")
    def _complete(self) -> SipSettings:
        if not self.enabled:
            return self
        for key in ("server", "user", "my_ip"):
            if not getattr(self, key):
                raise ValueError(f"{key}: required when sip is enabled")
        if self.password_env is None:
            raise ValueError("password_env: required when sip is enabled (the password never goes in the file)")
        if self.password_env not in os.environ:
            raise ValueError(f"password_env: environment variable {self.password_env} is not set")
        if self.rtp_port_low > self.rtp_port_high:
            raise ValueError("rtp_port_low: must not be above rtp_port_high")
        return self

    def secret(self) -> str:
        return os.environ[self.password_env or ""]


class OtpSettings(Section):
    """One-time codes sent through the HTTP API (POST /v1/otp)."""

    digits: int = Field(6, ge=4, le=10)
    ttl_s: float = Field(300.0, gt=0)
    max_attempts: int = Field(5, ge=1)
    resend_cooldown_s: float = Field(30.0, ge=0)  # between two codes to one destination
    per_destination_hourly: int = Field(5, ge=1)  # codes to one destination per hour (SMS pumping)
    message: str = Field("Your code is {code}. It expires in {minutes} minutes.", pattern=r"\{code\}")


class PublicChatSettings(Section):
    """`http.public_chat:`: WS /v1/chat without a key, for a website's visitors (off unless enabled)."""

    enabled: bool = False
    origins: tuple[str, ...] = ()  # the pages allowed to open it: exact Origin values, "https://clinic.example"
    max_connections_per_ip: int = Field(3, ge=1)
    messages_per_minute_per_ip: int = Field(12, ge=1)
    max_message_bytes: int = Field(2000, ge=64, le=65536)  # a longer frame closes the chat (1009)
    idle_timeout_s: float = Field(300.0, gt=0)  # no message for this long closes the chat (1000)

    @model_validator(mode="after")
    def _origins(self) -> "PublicChatSettings":
        if self.enabled and not self.origins:
            raise ValueError("origins: list the sites allowed to open the public chat")
        for origin in self.origins:
            if not re.fullmatch(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?", origin):
                raise ValueError(f"origins: {origin!r} is not scheme://host[:port] (no path, no slash at the end)")
        return self


class HttpSettings(Section):
    """`http:`: the integrators' API inside the daemon (gateway.http); behind a TLS proxy if exposed."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)  # 0: any free port (tests)
    max_body_bytes: int = Field(65536, ge=1024)
    default_rate: str = Field("10/s", pattern=r"^\d+(\.\d+)?/[smh]$")  # for keys created without --rate
    messages_per_destination_hourly: int = Field(20, ge=1)  # API messages to one destination per hour
    templates: dict[str, str] = {}  # name -> text with $vars, for POST /v1/messages {template, vars}
    otp: OtpSettings = OtpSettings()
    webhooks: tuple[WebhookSettings, ...] = ()  # signed event deliveries, through a durable outbox
    public_chat: PublicChatSettings = PublicChatSettings()


class RetentionSettings(Section):
    """`retention:`: how long personal contents and the API's own records are kept. The daemon blanks or
    deletes what is older, at start and every sweep_interval_s; call rows, outcomes, timings and counts stay."""

    transcripts_days: float = Field(30.0, gt=0)  # what was said in a call (turn texts), from the call's end
    help_requests_days: float = Field(30.0, gt=0)  # question/answer of a closed help request, from its close
    messages_days: float = Field(30.0, gt=0)  # text bodies in threads, and settled outbox bodies
    audit_days: float = Field(90.0, gt=0)  # the API's audit of authenticated requests
    otp_days: float = Field(7.0, ge=1)  # one-time codes, counted from their expiry (used ones too)
    sweep_interval_s: float = Field(3600.0, ge=1)  # and once at start


_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class HelpRequestSettings(Section):
    """`help_requests:`: questions the assistant could not answer, for staff to answer (the dashboard)."""

    timeout: str = Field("24h", pattern=r"^\d+(\.\d+)?[smhd]$")  # unanswered this long: unresolved
    sweep_interval_s: float = Field(60.0, gt=0)  # how often open requests are checked against the timeout

    @property
    def timeout_s(self) -> float:
        return float(self.timeout[:-1]) * _UNIT_S[self.timeout[-1]]


class DashboardSettings(Section):
    """`dashboard:`: the staff pages under /dashboard on the HTTP server (needs http.enabled)."""

    enabled: bool = True
    session_hours: float = Field(12.0, gt=0)  # a sign-in lasts this long
    # Mark the session cookie Secure on plain-HTTP requests too: set it behind a TLS-terminating proxy
    # (a request that arrives over TLS always gets Secure).
    secure_cookie: bool = False
    # Behind a reverse proxy: the client's address is X-Forwarded-For's last entry (for the sign-in
    # throttle and the audit log; else every browser is the proxy) and X-Forwarded-Proto: https means TLS.
    behind_proxy: bool = False
    login_failures: int = Field(5, ge=1)  # failed sign-ins per user name, and per address, within the window
    login_window_s: float = Field(900.0, gt=0)
    # A taken-over conversation with no operator activity (taking it, a reply) for this long is handed
    # back to the assistant; checked every hold_sweep_interval_s.
    hold_timeout: str = Field("30m", pattern=r"^\d+(\.\d+)?[smhd]$")
    hold_sweep_interval_s: float = Field(60.0, gt=0)

    @model_validator(mode="after")
    def _hold_timeout_positive(self) -> DashboardSettings:
        if self.hold_timeout_s <= 0:
            raise ValueError("hold_timeout: must be more than 0 (e.g. 30m)")
        return self

    @property
    def hold_timeout_s(self) -> float:
        return float(self.hold_timeout[:-1]) * _UNIT_S[self.hold_timeout[-1]]


class FileConfig(Section):
    """The top-level keys of etc/switchboard.yaml."""

    site: dict[str, Any]
    directory: Path = Path("directory.yaml")
    knowledge: Path = Path("knowledge.yaml")
    data_dir: Path = Path("../var")
    database: Path | None = None  # default: <data_dir>/switchboard.db
    audiosocket: AudioSocketSettings = AudioSocketSettings()
    vad: EndpointerConfig = EndpointerConfig()
    models: ModelSettings = ModelSettings()
    calls: CallSettings = CallSettings()
    capacity: CapacitySettings = CapacitySettings()
    ami: AmiSettings = AmiSettings()
    ari: AriSettings | None = None  # Stasis mode, instead of the AudioSocket() dialplan line
    sip: SipSettings = SipSettings()  # direct SIP mode, beside AudioSocket
    messaging: MessagingSettings = MessagingSettings()
    http: HttpSettings = HttpSettings()
    help_requests: HelpRequestSettings = HelpRequestSettings()
    dashboard: DashboardSettings = DashboardSettings()
    retention: RetentionSettings = RetentionSettings()
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    # Debugging aid: what callers say, in the log. Off, the log has only lengths (and numbers are masked).
    log_transcripts: bool = False


@dataclass(frozen=True)
class Config:
    path: Path
    site: Site
    knowledge: list[KnowledgeEntry]
    data_dir: Path
    database: Path
    audiosocket: AudioSocketSettings
    vad: EndpointerConfig
    models: ModelSettings
    calls: CallSettings
    log_level: str
    log_transcripts: bool = False
    capacity: CapacitySettings = CapacitySettings()
    ami: AmiSettings = AmiSettings()
    ari: AriSettings | None = None
    sip: SipSettings = SipSettings()
    messaging: MessagingSettings = MessagingSettings()
    http: HttpSettings = HttpSettings()
    help_requests: HelpRequestSettings = HelpRequestSettings()
    dashboard: DashboardSettings = DashboardSettings()
    retention: RetentionSettings = RetentionSettings()

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, "", "file not found") from None
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(path, "", f"invalid YAML: {where}{getattr(exc, 'problem', exc)}") from None


def _validate(model: type[BaseModel], data: Any, path: Path, prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise ConfigError(path, prefix, f"expected a mapping, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in (*([prefix] if prefix else []), *first["loc"]))
        reason = first["msg"]
        if first["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            reason = "unknown key"
        raise ConfigError(path, key, reason) from None


def _resolve(base: Path, p: Path) -> Path:
    p = Path(os.path.expandvars(str(p))).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def load_config(path: Path | str | None = None, *, data_dir: Path | None = None) -> Config:
    path = Path(path or default_config()).resolve()
    top = _validate(FileConfig, _read_yaml(path), path)
    base = path.parent
    directory_file = _resolve(base, top.directory)
    directory = _validate(Directory, _read_yaml(directory_file), directory_file)
    site = _validate(Site, {**top.site, "directory": directory}, path, "site")
    knowledge_file = _resolve(base, top.knowledge)
    try:
        knowledge = load_knowledge_yaml(knowledge_file)
    except FileNotFoundError:
        raise ConfigError(knowledge_file, "", "file not found") from None
    except ValueError as exc:  # the loader already names entry and key
        raise ConfigError(knowledge_file, "", str(exc)) from None
    data = data_dir.resolve() if data_dir else _resolve(base, top.data_dir)
    models = top.models.model_copy(
        update={
            "stt": top.models.stt.model_copy(update={"path": top.models.stt.path and _resolve(base, top.models.stt.path)}),
            "tts": top.models.tts.model_copy(update={"voice": top.models.tts.voice and _resolve(base, top.models.tts.voice)}),
            "llm": top.models.llm.model_copy(update={"path": _resolve(base, top.models.llm.path)
                                                      if isinstance(top.models.llm.path, Path) else top.models.llm.path}),
        }
    )
    return Config(
        path=path,
        site=site,
        knowledge=knowledge,
        data_dir=data,
        database=_resolve(base, top.database) if top.database else data / "switchboard.db",
        audiosocket=top.audiosocket,
        vad=top.vad,
        models=models,
        calls=top.calls,
        capacity=top.capacity,
        log_level=top.log_level,
        log_transcripts=top.log_transcripts,
        ami=top.ami,
        ari=top.ari,
        sip=top.sip,
        messaging=top.messaging,
        http=top.http,
        help_requests=top.help_requests,
        dashboard=top.dashboard,
        retention=top.retention,
    )
