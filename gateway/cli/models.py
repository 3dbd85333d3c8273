"""`switchboard models list|pull|verify`: the catalogue, downloads and integrity checks.

Downloaded models live in `<data_dir>/models/<name>/`; the bundled Gemma GGUF is
assembled into `<data_dir>/models/` by the daemon at first start.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from tqdm import tqdm

from gateway.modelhub import catalog as model_catalog
from gateway.cli.common import MIRROR_ENV
from gateway.config import ConfigError, load_config
from gateway.modelhub.downloads import DownloadError, download, hash_file, part_path
from gateway.modelhub.catalog import CatalogEntry, CatalogFile
from llm.bundled import GGUF_NAME, BundledModelError, verify_bundled_gguf

def _models_dir(args: argparse.Namespace) -> Path:
    """<data_dir>/models, with data_dir from --data-dir or else from the config (as the daemon uses it)."""
    if getattr(args, "data_dir", None):
        return Path(args.data_dir) / "models"
    try:
        return load_config(args.config).models_dir
    except ConfigError as exc:
        raise SystemExit(f"switchboard: configuration error: {exc}") from None


def _human(size: int) -> str:
    if size >= 10**9:
        return f"{size / 10**9:.2f} GB"
    if size >= 10**6:
        return f"{size / 10**6:.0f} MB"
    return f"{size / 10**3:.0f} kB"


def rebase_url(url: str, base: str) -> str:
    """Put `url`'s path (and query) under `base`'s scheme, host and optional path prefix."""
    b, u = urlsplit(base), urlsplit(url)
    if not (b.scheme and b.netloc):
        raise ValueError(f"mirror {base!r} must look like http://host[:port][/prefix]")
    return urlunsplit((b.scheme, b.netloc, b.path.rstrip("/") + u.path, u.query, ""))


def _install_status(entry: CatalogEntry, models_dir: Path) -> str:
    if entry.bundled:
        return "bundled"
    paths = [(models_dir / entry.name / f.filename, f.size) for f in entry.files]
    complete = sum(p.is_file() and p.stat().st_size == size for p, size in paths)
    if complete == len(paths):
        return "installed"
    if complete or any(part_path(p).exists() for p, _ in paths):
        return "partial"
    return "-"


def cmd_list(args: argparse.Namespace) -> int:
    models_dir = _models_dir(args)
    rows = [("NAME", "KIND", "SIZE", "STATUS", "LICENCE")] + [
        (e.name, e.kind, _human(e.size), _install_status(e, models_dir), e.licence)
        for e in model_catalog.CATALOGUE.values()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    descriptions = [""] + [e.description for e in model_catalog.CATALOGUE.values()]
    for row, description in zip(rows, descriptions):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[4])
        if description:
            print(f"    {description}")
    print(f"\nmodels directory: {models_dir.resolve()}")
    return 0


async def _pull_files(entry: CatalogEntry, model_dir: Path, mirror: str | None) -> None:
    async with aiohttp.ClientSession() as session:
        for f in entry.files:
            url = rebase_url(f.url, mirror) if mirror else f.url
            with tqdm(total=f.size, unit="B", unit_scale=True, unit_divisor=1024, desc=f.filename,
                      disable=None) as bar:
                await download(url, model_dir / f.filename, sha256=f.sha256, size=f.size, session=session,
                               progress=lambda done, _total, bar=bar: bar.update(done - bar.n))


def cmd_pull(args: argparse.Namespace) -> int:
    entry = model_catalog.CATALOGUE.get(args.name)
    if entry is None:
        print(f"error: no model {args.name!r} in the catalogue; known: {', '.join(model_catalog.CATALOGUE)}",
              file=sys.stderr)
        return 2
    if entry.bundled:
        print(f"{entry.name} is bundled: pip installs it with switchboard, there is nothing to download.\n"
              f"It is used when etc/switchboard.yaml selects no other {entry.kind} model:\n\n"
              f"{entry.config_lines(Path())}")
        return 0
    mirror = args.url_base or os.environ.get(MIRROR_ENV) or None
    if mirror:
        try:
            rebase_url(entry.files[0].url, mirror)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    model_dir = (_models_dir(args) / entry.name).resolve()
    try:
        asyncio.run(_pull_files(entry, model_dir, mirror))
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{entry.name} installed in {model_dir}\n"
          f"To use it, put these lines in etc/switchboard.yaml (merged into the existing `models:` section):\n\n"
          f"{entry.config_lines(model_dir)}")
    return 0


def _check_file(path: Path, expected: CatalogFile) -> tuple[str, str]:
    if not path.is_file():
        return "MISSING", ""
    size = path.stat().st_size
    if size != expected.size:
        return "CORRUPT", f"size {size}, expected {expected.size}"
    got = hash_file(path).hexdigest()
    if got != expected.sha256:
        return "CORRUPT", f"sha256 {got}, expected {expected.sha256}"
    return "OK", ""


# How the bundled GGUF's state reads in `verify`; only a corrupt file is a problem.
_GGUF_REPORT = {
    "OK": ("OK", ""),
    "CORRUPT": ("CORRUPT", "the daemon re-assembles it from the pip packages at next start"),
    "MISSING": ("-", "not assembled yet: the daemon does it at first start"),
}


def cmd_verify(args: argparse.Namespace) -> int:
    models_dir = _models_dir(args)
    problems = 0
    for entry in model_catalog.CATALOGUE.values():
        model_dir = models_dir / entry.name
        if entry.bundled or not model_dir.is_dir():
            continue  # never pulled: nothing to check
        for f in entry.files:
            status, detail = _check_file(model_dir / f.filename, f)
            problems += status != "OK"
            print(f"{status:<8} {model_dir / f.filename}" + (f"  ({detail})" if detail else ""))
    gguf = models_dir / GGUF_NAME
    try:
        status, detail = _GGUF_REPORT[verify_bundled_gguf(models_dir)]
    except BundledModelError as e:
        status, detail = "ERROR", str(e)
    problems += status in ("CORRUPT", "ERROR")
    print(f"{status:<8} {gguf}" + (f"  ({detail})" if detail else ""))
    print(f"{problems} problem(s)" if problems else "all model files OK")
    return 1 if problems else 0
