"""Nothing personal is kept forever (`retention:`): call transcripts, help-request contents and text
bodies past their keep are blanked, and the API's audit rows and one-time codes deleted, at start and
then periodically, by a task the daemon owns. Rows with outcomes, timings and counts stay for statistics."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from gateway.config import RetentionSettings
from gateway.tasks import every
from models.store import Store

log = logging.getLogger(__name__)
DAY_S = 86400.0


class Sweeper:
    def __init__(self, store: Store, settings: RetentionSettings, clock: Callable[[], float] = time.time) -> None:
        self.store, self.settings, self._clock = store, settings, clock

    async def sweep(self) -> dict[str, int]:
        """Blank or delete what is past its keep: rows changed per kind."""
        now, keep = self._clock(), self.settings
        audit, codes = await self.store.sweep_api_rows(audit_before=now - keep.audit_days * DAY_S,
                                                       otp_before=now - keep.otp_days * DAY_S)
        swept = {"audit_rows": audit, "otp_codes": codes, **await self.store.sweep_contents(
            transcripts_before=now - keep.transcripts_days * DAY_S,
            help_before=now - keep.help_requests_days * DAY_S,
            messages_before=now - keep.messages_days * DAY_S)}
        if any(swept.values()):
            log.info("retention swept %s", " ".join(f"{kind}={count}" for kind, count in swept.items()))
        return swept

    async def run(self) -> None:
        """Sweep now, then every sweep_interval_s, until cancelled."""
        await every(self.settings.sweep_interval_s, self.sweep, "retention sweep")
