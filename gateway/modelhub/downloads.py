"""Resumable, checksum-verified HTTP downloads of model files.

Bytes stream into `<dest>.part`; an interrupted transfer is resumed with
`Range: bytes=N-`, and `<dest>` appears (atomic rename) only once size and sha256
match. Hashing runs as the bytes arrive, so nothing is read twice; the part left by
an earlier run is hashed in a worker thread before resuming. This is a CLI path
(`switchboard models pull`), never used by the call-handling daemon.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import aiohttp

log = logging.getLogger(__name__)

Progress = Callable[[int, int | None], None]
_BLOCK = 1 << 20


class DownloadError(Exception):
    def __init__(self, url: str, reason: str, dest: Path | None = None) -> None:
        self.url = url
        self.reason = reason
        self.dest = dest
        where = f" -> {dest}" if dest else ""
        super().__init__(f"download {url}{where}: {reason}")


class _Interrupted(Exception):
    """The connection broke or stalled mid-transfer: worth resuming."""


def hash_file(path: Path, digest: "hashlib._Hash | None" = None) -> "hashlib._Hash":
    """Feed a whole file into `digest` (a fresh sha256 by default). Blocking."""
    digest = digest or hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest


def part_path(dest: Path) -> Path:
    return dest.with_suffix(dest.suffix + ".part")


def _fsync(path: Path) -> None:
    with path.open("rb+") as f:
        os.fsync(f.fileno())


def _content_range_start(header: str | None) -> int | None:
    """`bytes 100-199/200` -> 100."""
    if not header or not header.startswith("bytes "):
        return None
    start, _, _ = header[6:].partition("-")
    return int(start) if start.isdigit() else None


async def _stream(resp: aiohttp.ClientResponse, part: Path, offset: int, digest: "hashlib._Hash",
                  size: int | None, total: int | None, progress: Progress | None) -> int:
    """Append the body to `part` (truncating it when offset is 0); return how many bytes it now holds,
    or more than `size` if the server overran it."""
    done = offset
    try:
        with part.open("ab" if offset else "wb") as out:
            async for block in resp.content.iter_chunked(_BLOCK):
                if size is not None and done + len(block) > size:
                    return done + len(block)  # too long: the caller's size check rejects it
                out.write(block)
                digest.update(block)
                done += len(block)
                if progress:
                    progress(done, total)
    except (aiohttp.ClientError, TimeoutError) as e:
        raise _Interrupted(f"transfer interrupted after {done} bytes ({type(e).__name__}: {e})") from e
    return done


async def _attempt(session: aiohttp.ClientSession, url: str, dest: Path, sha256: str, size: int | None,
                   progress: Progress | None, timeout: aiohttp.ClientTimeout) -> None:
    part = part_path(dest)
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        log.info("download discarding oversized part path=%s bytes=%d", part, offset)
        part.unlink()
        offset = 0
    digest = await asyncio.to_thread(hash_file, part) if offset else hashlib.sha256()
    headers = {"Accept-Encoding": "identity"} | ({"Range": f"bytes={offset}-"} if offset else {})
    log.info("download start url=%s dest=%s offset=%d", url, dest, offset)
    try:
        async with session.get(url, headers=headers, timeout=timeout) as resp:
            if resp.status == 416 and offset:
                done = offset  # nothing left to send: the part should already be whole
            elif resp.status == 206 and offset:
                start = _content_range_start(resp.headers.get("Content-Range"))
                if start != offset:
                    part.unlink()
                    raise DownloadError(url, f"asked for bytes from {offset}, server sent range "
                                             f"{resp.headers.get('Content-Range')!r}; partial file removed", dest)
                total = size if size is not None else (
                    offset + resp.content_length if resp.content_length is not None else None)
                done = await _stream(resp, part, offset, digest, size, total, progress)
            elif resp.status == 200:
                if offset:
                    log.info("download server ignored Range, restarting url=%s", url)
                    offset, digest = 0, hashlib.sha256()
                total = size if size is not None else resp.content_length
                done = await _stream(resp, part, 0, digest, size, total, progress)
            else:
                raise DownloadError(url, f"HTTP {resp.status} {resp.reason}", dest)
    except aiohttp.ClientConnectorError as e:
        why = "connection refused" if isinstance(e.os_error, ConnectionRefusedError) else str(e.os_error)
        raise DownloadError(url, f"cannot connect to {e.host}:{e.port} ({why})", dest) from None
    except TimeoutError:
        raise _Interrupted(f"no response within {timeout.sock_read}s") from None
    except aiohttp.ClientError as e:
        raise _Interrupted(f"{type(e).__name__}: {e}") from None

    if size is not None and done != size:
        part.unlink(missing_ok=True)
        raise DownloadError(url, f"got {done} bytes, expected {size}; partial file removed", dest)
    got = digest.hexdigest()
    if got != sha256.lower():
        part.unlink(missing_ok=True)
        raise DownloadError(url, f"sha256 mismatch: got {got}, expected {sha256}; partial file removed", dest)
    await asyncio.to_thread(_fsync, part)
    os.replace(part, dest)
    log.info("download done url=%s dest=%s bytes=%d", url, dest, done)


async def download(url: str, dest: Path, *, sha256: str, size: int | None = None,
                   progress: Progress | None = None, session: aiohttp.ClientSession | None = None,
                   timeout_s: float = 30.0, retries: int = 3, retry_delay_s: float = 1.0) -> Path:
    """Make `dest` hold the file at `url` with the given sha256 (and size, if known); return `dest`.

    An existing `dest` that already matches is kept without touching the network. A
    transfer that breaks or stalls for `timeout_s` is resumed up to `retries` times;
    the `.part` file stays for a later run if it still fails.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file():
        if (size is None or dest.stat().st_size == size) and \
                (await asyncio.to_thread(hash_file, dest)).hexdigest() == sha256.lower():
            log.info("download already present dest=%s", dest)
            if progress:
                progress(dest.stat().st_size, size)
            return dest
        log.warning("download replacing mismatched file dest=%s", dest)
        dest.unlink()
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s)
    own = session is None
    session = session or aiohttp.ClientSession()
    try:
        attempt = 0
        while True:
            try:
                await _attempt(session, url, dest, sha256, size, progress, timeout)
                return dest
            except _Interrupted as e:
                attempt += 1
                if attempt > retries:
                    raise DownloadError(url, f"{e}; run again to resume from {part_path(dest)}", dest) from None
                log.warning("download interrupted url=%s attempt=%d why=%r", url, attempt, str(e))
                await asyncio.sleep(retry_delay_s * attempt)
    finally:
        if own:
            await session.close()
