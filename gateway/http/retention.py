"""The API's own records do not grow forever: audit rows and one-time codes past `http.retention`
are deleted at start and then periodically, by a task the daemon owns."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from gateway.config import RetentionSettings
from models.store import Store

log = logging.getLogger(__name__)
DAY_S = 86400.0


class Sweeper:
    def __init__(self, store: Store, settings: RetentionSettings, clock: Callable[[], float] = time.time) -> None:
        self.store, self.settings, self._clock = store, settings, clock

    async def sweep(self) -> tuple[int, int]:
        """Delete what is past its keep: (audit rows, codes) deleted."""
        now = self._clock()
        audit, codes = await self.store.sweep_api_rows(audit_before=now - self.settings.audit_days * DAY_S,
                                                       otp_before=now - self.settings.otp_days * DAY_S)
        if audit or codes:
            log.info("retention swept audit_rows=%d otp_codes=%d", audit, codes)
        return audit, codes

    async def run(self) -> None:
        """Sweep now, then every sweep_interval_s, until cancelled; a failed sweep is tried again next time."""
        while True:
            try:
                await self.sweep()
            except Exception as exc:
                log.error("retention sweep failed error=%s", exc)
            await asyncio.sleep(self.settings.sweep_interval_s)
