"""models.llm.max_reply_tokens bounds a text thread's model reply as it bounds a call's, through the
daemon's Messaging as built from config (the model is scripted: tests/unit/test_dialog.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

from test_dialog import CFG, ScriptedEngine

from channels.base import InboundMessage
from gateway.config import MessagingSettings
from gateway.daemon.messaging import Messaging
from gateway.services import Services
from llm.knowledge import Retriever
from models.store import Store


async def test_a_text_reply_is_bounded_by_the_configured_reply_tokens(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "t.db")
    try:
        await store.replace_admin_knowledge(CFG.knowledge)
        config = dataclasses.replace(
            CFG,
            models=CFG.models.model_copy(update={"llm": CFG.models.llm.model_copy(update={"max_reply_tokens": 120})}),
            messaging=MessagingSettings.model_validate({
                "email": {"smtp": {"host": "127.0.0.1", "port": 9, "security": "none",
                                   "from_address": "assistant@clinic.test"}},
                "conversations": {"buffer_s": 0}}))
        engine = ScriptedEngine({"action": "answer", "target": "", "reply": "Yes, we take Delta Dental."})
        services = Services(config, store, Retriever(store), None, None, engine)  # type: ignore[arg-type]
        messaging = Messaging(config.messaging, services, None)
        await messaging.conversations.on_inbound(InboundMessage(
            channel="email", sender="pat@example.test", body="Do you take Delta Dental?", at=time.time(),
            subject="Insurance"))
        for _ in range(100):
            if engine.schemas:
                break
            await asyncio.sleep(0.05)
        await messaging.conversations.close()
        # The reply field's bound is what max_reply_tokens sets (the default 256 gives 208).
        assert engine.schemas[0]["properties"]["reply"]["maxLength"] == 120 - 48
    finally:
        await store.close()
