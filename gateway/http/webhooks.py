"""Events for integrators (`http.webhooks`): each one a row of the webhook outbox per subscribed receiver."""

from __future__ import annotations

import json
import logging
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from channels.outbox import Outbox
from channels.settings import WebhookSettings

log = logging.getLogger(__name__)


class Webhooks:
    def __init__(self, hooks: tuple[WebhookSettings, ...], outbox: Outbox | None) -> None:
        self.hooks, self.outbox = hooks, outbox  # outbox: the one with the "webhook" channel

    async def emit(self, event: str, data: dict[str, Any]) -> None:
        """Queue `event` for every receiver that wants it; never raises (the action it reports is done)."""
        if self.outbox is None:
            return
        event_id = uuid.uuid4().hex
        body = json.dumps({"id": event_id, "type": event, "data": data,
                           "created_at": datetime.fromtimestamp(time.time(), timezone.utc).isoformat()})
        for n, hook in enumerate(self.hooks):
            if event in hook.events:
                try:
                    await self.outbox.enqueue("webhook", hook.url, body, idempotency_key=f"hook:{event_id}:{n}")
                except Exception as exc:
                    log.error("webhook not queued event=%s error=%s", event, exc)
