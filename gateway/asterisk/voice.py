"""The `voice` outbox channel: a message (or a one-time code) spoken in an outbound call over AMI.

The outbox makes it durable like a text: a 202 from the API means the call will be placed, also
after a restart. OutboundCalls already retries busy / no answer as `ami.outbound_retries` says, so
its final result is final here: answered is delivered, anything else fails the row.
"""

from __future__ import annotations

from collections.abc import Callable

from channels.base import DeliveryHandler, InboundHandler, OutgoingMessage, PermanentError, SendResult, \
    TemporaryError
from gateway.asterisk.ami import AmiError
from gateway.asterisk.originate import OutboundCalls
from gateway.config import AmiSettings

CODE_SUBJECT = "one-time code"  # a row whose text is a code: read digit by digit, twice
_SPOKEN_MAX_S = 120.0  # OutboundCalls waits this long for the spoken part of an answered call


class VoiceChannel:
    name = "voice"

    def __init__(self, outbound: Callable[[], OutboundCalls | None], settings: AmiSettings) -> None:
        self._outbound = outbound  # the daemon's, once its AudioSocket listener is up
        attempts = settings.outbound_retries + 1
        # Every attempt rings and may be spoken, with the retry delays between: past this, something hangs.
        self.send_timeout_s = (attempts * (settings.outbound_ring_s + settings.action_timeout_s + _SPOKEN_MAX_S)
                               + settings.outbound_retries * settings.outbound_retry_delay_s + 30)

    async def start(self, on_inbound: InboundHandler, on_delivery: DeliveryHandler) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def send(self, message: OutgoingMessage) -> SendResult:
        outbound = self._outbound()
        if outbound is None or not outbound.ami.connected:  # wait for AMI rather than fail the message
            raise TemporaryError("AMI not connected")
        code = message.body if message.subject == CODE_SUBJECT else None
        try:
            result = await outbound.call(message.to, "" if code else message.body, code=code)
        except ValueError as exc:  # not a dialable number
            raise PermanentError(str(exc)) from None
        except AmiError as exc:
            raise TemporaryError(str(exc)) from None
        if result.result != "answered":
            raise PermanentError(f"{result.result} after {result.attempts} attempt(s)"
                                 + (f": {result.error}" if result.error else ""))
        return SendResult(provider_ref=result.call_ids[-1], delivered=True)
