"""systemd's notify protocol (sd_notify(3)): one datagram to $NOTIFY_SOCKET; a no-op outside systemd."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

log = logging.getLogger(__name__)
_dropped = False  # the first dropped message is a warning, later ones are debug


def notify(message: str) -> bool:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address[0] == "@":  # abstract namespace
        address = "\0" + address[1:]
    try:
        # Non-blocking: this runs on the event loop, and a datagram socket whose reader fell behind
        # (max_dgram_qlen, 10 by default) would block the whole daemon in send(). A dropped
        # WATCHDOG=1 is harmless; the next one follows within half the watchdog interval.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as sock:
            sock.connect(address)
            sock.send(message.encode())
    except BlockingIOError:
        global _dropped
        (log.debug if _dropped else log.warning)("sd_notify dropped message=%s reason=receiver not reading",
                                                 message.split("=")[0])
        _dropped = True
        return False
    except OSError as exc:
        log.warning("sd_notify failed message=%s error=%s", message.split("=")[0], exc)
        return False
    return True


def watchdog_interval() -> float | None:
    """Half of WatchdogSec, or None when systemd does not watch this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 2_000_000


async def watchdog(interval: float) -> None:
    """Pinged from the event loop itself, so a blocked loop stops the pings and systemd restarts us."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)
