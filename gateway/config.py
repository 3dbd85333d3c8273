"""Load and validate etc/switchboard.yaml (+ the files it names) once, at start.

Any mistake is reported as `file: key.path: reason` and the daemon refuses to start: it never
runs half-configured. Relative paths in the YAML are relative to the file that names them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, with_config

from llm.knowledge import load_knowledge_yaml
from llm.site import Directory, Site
from models.records import KnowledgeEntry
from speech.vad import EndpointerConfig

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "etc" / "switchboard.yaml"

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
    idle_timeout_s: float = Field(5.0, gt=0)
    max_calls: int = Field(250, ge=1)


class SttSettings(Section):
    path: Path | None = None  # None: the bundled faster-whisper tiny.en
    threads: int = Field(2, ge=1)
    workers: int = Field(1, ge=1)


class TtsSettings(Section):
    voice: Path | None = None  # None: the bundled Piper en_US-joe-medium
    workers: int = Field(1, ge=1)


class LlmSettings(Section):
    path: Path | None = None  # None: the bundled Gemma 3 270M base (health-checked, never spoken)
    threads: int = Field(2, ge=1)
    context: int = Field(4096, ge=512)
    max_reply_tokens: int = Field(160, ge=16)


class ModelSettings(Section):
    stt: SttSettings = SttSettings()
    tts: TtsSettings = TtsSettings()
    llm: LlmSettings = LlmSettings()


class CallSettings(Section):
    no_speech_timeout_s: float = Field(10.0, gt=0)
    no_speech_prompts: int = Field(1, ge=0)  # prompts before goodbye
    barge_in: bool = True
    max_call_s: float = Field(900.0, gt=0)
    max_concurrent_dialogs: int = Field(40, ge=1)  # admission control on AI work


class AsteriskSettings(Section):
    """Used by `doctor` now; the AMI/ARI control plane comes with its own issue."""

    ami_host: str = "127.0.0.1"
    ami_port: int = Field(5038, ge=1, le=65535)


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
    asterisk: AsteriskSettings = AsteriskSettings()
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")


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
    asterisk: AsteriskSettings
    log_level: str

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


def load_config(path: Path | str = DEFAULT_CONFIG, *, data_dir: Path | None = None) -> Config:
    path = Path(path).resolve()
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
            "llm": top.models.llm.model_copy(update={"path": top.models.llm.path and _resolve(base, top.models.llm.path)}),
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
        asterisk=top.asterisk,
        log_level=top.log_level,
    )
