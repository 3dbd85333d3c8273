"""One shared AMI connection on panoramisk 1.4, with the library's traps worked around.

panoramisk parses the wire format and matches responses to ActionIDs; everything about the
connection's life is ours, because the library's own handling is unsafe for a telephone gateway
(see ../shared/PROTOCOLS.md §3):
- its reconnect loop retries at a fixed interval and its pinger never reads the Pong (issue #6),
  so a half-open TCP connection lives forever: we run a supervisor with capped exponential backoff
  and our own Ping-with-timeout that aborts the transport;
- actions pending at a disconnect are re-sent after the next FullyBooted: a Redirect or Originate
  could then act twice, so we fail them instead (the caller of the action decides);
- an action sent while disconnected goes to a dead transport and hangs: we refuse it at once, and
  every action is bounded by a timeout;
- a reply ending in "successfully queued" raises KeyError: 'async' inside data_received unless
  the action has an explicit as_list (bug #90/#97): we always pass one;
- coroutine event callbacks are ensure_future'd and their exceptions only show up as "never
  retrieved", and a plain callback raising inside data_received kills the connection: we wrap them;
- each chunk is decoded on its own with errors="ignore", so a UTF-8 character split across two TCP
  reads vanishes: we decode incrementally before the library sees the text.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from panoramisk import actions
from panoramisk.ami_protocol import AMIProtocol
from panoramisk.manager import Manager
from panoramisk.message import Message

from gateway.config import AmiSettings
from gateway.tasks import TaskSet
from models.privacy import masked

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 1300  # MessageSend's Base64Body is decoded into a 1301-byte buffer (main/message.c)
EventCallback = Callable[[Message], Awaitable[None] | None]


class AmiError(Exception):
    """An AMI action failed or could not be sent; the message says which action and why."""


class AmiLoginError(AmiError):
    pass


class AmiNotConnected(AmiError):
    pass


class _Protocol(AMIProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def data_received(self, data: bytes) -> None:
        # Whole characters only: the library decodes every chunk separately (see module doc).
        text = self._decoder.decode(data)
        if text:
            super().data_received(text.encode("utf-8"))

    def close(self) -> None:
        pending = list(self.responses.values())
        super().close()
        for action in pending:  # fail now instead of a silent re-send later (see module doc)
            # Login is skipped: panoramisk's own done callback would raise on its exception.
            if not action.future.done() and action["action"].lower() != "login":
                action.future.set_exception(AmiNotConnected(f"connection lost during {action['action']}"))


class _Manager(Manager):
    """panoramisk's Manager minus its reconnect loop and pinger; the AmiClient supervises."""

    def __init__(self, client: "AmiClient", **config: Any) -> None:
        super().__init__(protocol_factory=_Protocol, **config)
        self._client = client
        self.callbacks["FullyBooted"].remove(self.send_awaiting_actions)  # nothing is ever re-sent

    def ping(self) -> None:  # the library's Ping never checks the reply; ours does
        pass

    def connection_lost(self, exc: object) -> None:
        self._connected = False
        self.awaiting_actions.clear()  # already failed by _Protocol.close: never re-sent
        self._client._on_lost(exc)


def _masked(fields: dict[str, Any]) -> dict[str, Any]:
    """For the log: no secret, and no callee's full number in an Originate's dial string."""
    dials = fields.get("Action") == "Originate"
    return {k: "***" if k.lower() == "secret" else masked(v) if dials and k == "Channel" else v
            for k, v in fields.items()}


class AmiClient:
    """Login from config, one connection, reconnect with backoff, bounded actions, event callbacks."""

    def __init__(self, settings: AmiSettings) -> None:
        self.settings = settings
        self._secret = settings.resolved_secret()  # fails now, naming the variable, not in the background
        self._manager: _Manager | None = None
        self._callbacks: list[tuple[str, EventCallback]] = []
        self._connected = asyncio.Event()
        self._lost = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._tasks = TaskSet("ami")  # async event callbacks
        self.last_error: str | None = None
        self.connects = 0  # successful logins, for tests and `doctor`

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # ---- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start connecting in the background (calls keep working without AMI meanwhile)."""
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise(), name="ami-supervisor")

    async def wait_connected(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            raise AmiNotConnected(f"AMI {self.settings.host}:{self.settings.port} not connected after {timeout:g} s"
                                  f" ({self.last_error or 'no answer'})") from None

    async def close(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
            self._supervisor = None
        self._drop_connection()
        await self._tasks.finish()

    async def _supervise(self) -> None:
        s = self.settings
        delay = s.reconnect_min_s
        while True:
            try:
                await self._connect_once()
                delay = s.reconnect_min_s
                await self._watch()
            except AmiLoginError as exc:
                self.last_error = str(exc)
                log.error("ami login failed host=%s:%d user=%s reason=%s", s.host, s.port, s.username, exc)
                delay = s.reconnect_max_s  # wrong credentials: do not hammer Asterisk (it sleeps 1 s per try)
            except (OSError, TimeoutError, AmiError) as exc:
                self.last_error = str(exc) or type(exc).__name__
                log.warning("ami connection failed host=%s:%d error=%s retry_s=%.2f", s.host, s.port,
                            self.last_error, delay)
            finally:
                self._drop_connection()
            await asyncio.sleep(delay)
            delay = min(delay * 2, s.reconnect_max_s)

    async def _connect_once(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        manager = _Manager(self, host=s.host, port=s.port, username=s.username, secret=self._secret,
                           events="on", loop=loop, ping_delay=3600)
        for pattern, callback in self._callbacks:
            manager.register_event(pattern, self._guard(callback))
        self._lost.clear()
        transport, protocol = await asyncio.wait_for(
            loop.create_connection(manager.config["protocol_factory"], s.host, s.port), s.connect_timeout_s)
        self._manager = manager
        # Manager.connection_made wires the protocol and sends Login; it wants a finished future.
        done: asyncio.Future[tuple[Any, Any]] = loop.create_future()
        done.set_result((transport, protocol))
        manager.connection_made(done)
        if manager.pinger is not None:
            manager.pinger.cancel()
        login = manager.authenticated_future
        # asyncio.wait, not wait_for: cancelling the login future would make panoramisk's done
        # callback (Manager.login -> future.result()) raise CancelledError inside the event loop.
        lost = asyncio.ensure_future(self._lost.wait())
        finished, _ = await asyncio.wait([login, lost], timeout=s.connect_timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        lost.cancel()
        if login not in finished:
            raise TimeoutError("no answer to Login" if not self._lost.is_set() else "closed before Login reply")
        reply = login.result()
        if not reply.success:
            raise AmiLoginError(reply.message or "authentication failed")
        self.connects += 1
        self.last_error = None
        self._connected.set()
        log.info("ami connected host=%s:%d user=%s version=%s", s.host, s.port, s.username,
                 getattr(protocol, "version", None) or "?")

    async def _watch(self) -> None:
        """Ping every interval; no Pong within the timeout means a half-open connection: abort it."""
        s = self.settings
        while True:
            try:
                await asyncio.wait_for(self._lost.wait(), s.ping_interval_s)
                raise AmiNotConnected("connection closed by Asterisk")
            except TimeoutError:
                pass
            t0 = time.perf_counter()
            try:
                await self.action({"Action": "Ping"}, timeout=s.ping_timeout_s)
            except TimeoutError:
                log.warning("ami ping timeout after=%.1fs: aborting the connection", s.ping_timeout_s)
                raise AmiNotConnected("ping timeout (half-open connection)") from None
            log.debug("ami pong ms=%.0f", (time.perf_counter() - t0) * 1000)

    def _on_lost(self, exc: object) -> None:
        if self._connected.is_set():
            log.warning("ami connection lost error=%s", exc if isinstance(exc, Exception) else "closed")
        self._connected.clear()
        self._lost.set()

    def _drop_connection(self) -> None:
        self._connected.clear()
        manager, self._manager = self._manager, None
        if manager is not None and manager.pinger is not None:
            manager.pinger.cancel()
        if manager is not None and manager.protocol is not None:
            manager.protocol.transport.abort()  # abort, not close: a half-open peer never acks a FIN
            manager.protocol.connection_lost(None)  # fails pending actions now, not at the OS's leisure

    # ---- events -----------------------------------------------------------------------------------
    def on_event(self, pattern: str, callback: EventCallback) -> None:
        """Call `callback(message)` for events whose name matches the fnmatch pattern, on every connection."""
        self._callbacks.append((pattern, callback))
        if self._manager is not None:
            self._manager.register_event(pattern, self._guard(callback))

    def _guard(self, callback: EventCallback) -> Callable[[Manager, Message], None]:
        def run(_manager: Manager, message: Message) -> None:
            try:
                result = callback(message)
            except Exception:
                log.exception("ami event callback failed event=%s", message.event)
                return
            if asyncio.iscoroutine(result):
                self._tasks.spawn(result)
        return run

    # ---- actions ----------------------------------------------------------------------------------
    async def action(self, fields: dict[str, Any], *, timeout: float | None = None) -> Message:
        """Send one action and return its single response; raises TimeoutError, AmiNotConnected."""
        for key, value in fields.items():
            for v in value if isinstance(value, list) else [value]:
                if "\r" in str(v) or "\n" in str(v):  # would end the header and inject others
                    raise ValueError(f"AMI {fields.get('Action')}: {key} contains a line break")
        manager = self._manager
        if manager is None or not self._connected.is_set() or manager.protocol is None:
            raise AmiNotConnected(f"AMI not connected, {fields.get('Action')} not sent")
        # Built here, in the running loop: Action() creates its Future at construction. as_list is
        # explicit so that "successfully queued" replies cannot hit the KeyError: 'async' bug.
        act = actions.Action(fields, as_list=False)
        future = manager.send_action(act, as_list=False)
        try:
            return await asyncio.wait_for(future, timeout or self.settings.action_timeout_s)
        except TimeoutError:
            protocol = manager.protocol
            if protocol is not None:
                protocol.responses.pop(act.id, None)
            log.warning("ami action timeout action=%s id=%s", fields.get("Action"), act.id)
            raise

    async def checked(self, fields: dict[str, Any], *, timeout: float | None = None) -> Message:
        """`action`, raising AmiError with Asterisk's message unless the response is Success."""
        reply = await self.action(fields, timeout=timeout)
        if not reply.success:
            raise AmiError(f"{fields.get('Action')} failed: {reply.message or reply.response}")
        log.info("ami action ok action=%s %s", fields.get("Action"),
                 " ".join(f"{k}={v}" for k, v in _masked(fields).items() if k in ("Channel", "Exten", "Context")))
        return reply

    async def message_send(self, to: str, body: str, *, sender: str | None = None,
                           destination: str | None = None, content_type: str | None = None) -> Message:
        """SIP MESSAGE through Asterisk; success only means it was queued and sent, not delivered."""
        return await self.checked(message_send_action(to, body, sender=sender, destination=destination,
                                                      content_type=content_type))


def message_send_action(to: str, body: str, *, sender: str | None = None, destination: str | None = None,
                        content_type: str | None = None) -> dict[str, Any]:
    """A MessageSend action: `Body` must be one line, so text with line breaks goes as Base64Body."""
    data = body.encode("utf-8")
    if len(data) > MAX_MESSAGE_BYTES:
        raise ValueError(f"message body is {len(data)} bytes; Asterisk's MessageSend takes at most {MAX_MESSAGE_BYTES}")
    fields: dict[str, Any] = {"Action": "MessageSend", "To": to}
    if destination:
        fields["Destination"] = destination
    if sender:
        fields["From"] = sender
    if "\r" in body or "\n" in body:
        fields["Base64Body"] = base64.b64encode(data).decode("ascii")
    else:
        fields["Body"] = body
    if content_type:
        fields["Variable"] = f"Content-Type={content_type}"
    return fields
