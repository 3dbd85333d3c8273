"""The gateway as the daemon builds it, in the test's own event loop, on a free loopback port."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator


@contextlib.asynccontextmanager
async def running_gateway(services) -> AsyncIterator:  # type: ignore[no-untyped-def]
    from gateway.daemon.app import Gateway

    gw = Gateway(services, host="127.0.0.1", port=0)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop(grace_s=2.0)
