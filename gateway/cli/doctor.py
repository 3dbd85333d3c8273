"""`switchboard doctor`: check what the daemon needs and say how to fix what is wrong."""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from gateway.config import ConfigError, load_config


@dataclass
class Finding:
    ok: bool
    what: str
    fix: str = ""


def _print(f: Finding) -> None:
    print(f"[{'ok' if f.ok else 'FAIL'}] {f.what}")
    if f.fix:
        print(f"       fix: {f.fix}")


def _check_port(what: str, section: str, host: str, port: int) -> Finding:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return Finding(False, f"{what} port {host}:{port} is in use",
                               "another switchboard may be running (systemctl status switchboard); "
                               f"or change {section}.port")
            return Finding(False, f"cannot listen on {host}:{port}: {exc.strerror}", f"check {section}.host")
    return Finding(True, f"{what} port {host}:{port} is free")


async def _check_ami(host: str, port: int) -> Finding:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 3)
    except (OSError, TimeoutError) as exc:
        return Finding(False, f"Asterisk AMI at {host}:{port} unreachable ({exc.__class__.__name__})",
                       "is Asterisk running with manager.conf enabled=yes? (see README, 'Asterisk')")
    try:
        banner = (await asyncio.wait_for(reader.readline(), 3)).decode(errors="replace").strip()
    except TimeoutError:
        banner = ""
    finally:
        writer.close()
    if banner.startswith("Asterisk Call Manager"):
        return Finding(True, f"Asterisk AMI reachable at {host}:{port} ({banner})")
    return Finding(False, f"{host}:{port} answered but is not Asterisk AMI (banner {banner!r})",
                   "check ami.host / ami.port")


def _check_models(config) -> list[Finding]:  # type: ignore[no-untyped-def]
    from speech.models import ModelError, bundled_piper_voice, bundled_whisper_dir, check_piper_voice, check_whisper_dir

    findings = []
    for label, check, configured, bundled in (
        ("speech-to-text model", check_whisper_dir, config.models.stt.path, bundled_whisper_dir),
        ("text-to-speech voice", check_piper_voice, config.models.tts.voice, bundled_piper_voice),
    ):
        try:
            path = check(configured or bundled())
            findings.append(Finding(True, f"{label}: {path}"))
        except (ModelError, ModuleNotFoundError) as exc:
            findings.append(Finding(False, f"{label}: {exc}", "reinstall with `pip install -e .` or fix the path"))
    llm = config.models.llm.path
    if isinstance(llm, Path):
        ok = llm.is_file() and llm.stat().st_size > 1_000_000
        findings.append(Finding(ok, f"LLM model: {llm}" + ("" if ok else " is missing or truncated"),
                                "" if ok else "`switchboard models pull NAME` or fix models.llm.path"))
    elif llm == "bundled":
        findings.append(Finding(True, "LLM model: bundled Gemma 3 270M base (engine check only, never spoken; "
                                      "replies come from rules and knowledge)"))
    else:
        findings.append(Finding(True, "LLM model: none (replies come from rules and the site's knowledge). "
                                      "For understanding and phrasing see `switchboard models list`"))
    return findings


def _check_data_dir(path: Path) -> Finding:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return Finding(False, f"data directory {path}: {exc.strerror}", "create it and give the service user write access")
    if not os.access(path, os.W_OK):
        return Finding(False, f"data directory {path} is not writable", "chown it to the service user")
    return Finding(True, f"data directory {path} is writable")


async def run_doctor(config_path: Path, data_dir: Path | None) -> int:
    try:
        config = load_config(config_path, data_dir=data_dir)
    except ConfigError as exc:
        _print(Finding(False, f"configuration: {exc}", "edit the file at the key named above"))
        return 1
    findings = [Finding(True, f"configuration {config.path} is valid ({len(config.knowledge)} knowledge entries, "
                              f"{len(config.site.directory.staff)} staff)")]
    findings.append(_check_data_dir(config.data_dir))
    findings += _check_models(config)
    findings.append(_check_port("AudioSocket", "audiosocket", config.audiosocket.host, config.audiosocket.port))
    if config.http.enabled:
        findings.append(_check_port("HTTP API", "http", config.http.host, config.http.port))
    if config.ami.enabled:
        findings.append(await _check_ami(config.ami.host, config.ami.port))
    else:
        findings.append(Finding(True, "AMI control plane off (ami.enabled: false): a transfer ends the AudioSocket "
                                      "leg and the dialplan puts the caller through (see README, 'Connecting Asterisk')"))
    for f in findings:
        _print(f)
    failed = sum(not f.ok for f in findings)
    print(f"\n{failed} problem(s) found." if failed else "\nall checks passed.")
    return 1 if failed else 0


def command(args: argparse.Namespace) -> int:
    return asyncio.run(run_doctor(args.config, args.data_dir))
