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


async def session_of(gateway, call_id: str):  # type: ignore[no-untyped-def]
    """The gateway's CallSession of call `call_id`, once it has one (bounded wait)."""
    import asyncio

    for _ in range(200):
        session = next((s for s in gateway.sessions if s.call.call_id == call_id), None)
        if session is not None:
            return session
        await asyncio.sleep(0.05)
    raise AssertionError("no session for the call")


async def own_store(services, directory, **config_changes):  # type: ignore[no-untyped-def]
    """The session's loaded models with a database of their own, holding the site's knowledge, and a
    knowledge index reading that database: nothing a test stores (a learned answer, an outbox row, a
    staff user) reaches another test. The caller closes `.store`."""
    import dataclasses

    from llm.knowledge import Retriever
    from models.store import Store

    store = await Store.open(directory / "switchboard.db")
    try:
        await store.replace_admin_knowledge(services.config.knowledge)
        retriever = Retriever(store)
        await retriever.prepare()
    except BaseException:
        await store.close()
        raise
    config = dataclasses.replace(services.config, data_dir=directory, database=directory / "switchboard.db",
                                 audiosocket=services.config.audiosocket.model_copy(update={"port": 0}),
                                 **config_changes)
    return dataclasses.replace(services, config=config, store=store, retriever=retriever)
