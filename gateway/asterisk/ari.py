"""ARI mode: a Stasis app that bridges each caller to the gateway's AudioSocket server.

Design (facts: PROTOCOLS.md §2 and the Asterisk 22 captures in shared/fixtures/asterisk/):
- The dialplan hands the caller to `Stasis(<app>)` (etc/asterisk/extensions-ari.conf). On the caller's
  StasisStart we answer, create an externalMedia channel (encapsulation audiosocket over tcp, format
  slin/slin16) whose `data` is a fresh UUID, and put both channels in a mixing bridge named
  `<app>-<uuid>`. Asterisk dials the AudioSocket server and sends that UUID first, so the gateway's
  AudioSocket call and this controller's `AriCall` share one id: `call(uuid)` finds the caller's
  channel, number and dialled extension. The record exists from StasisStart on, i.e. before Asterisk
  connects the AudioSocket.
- The externalMedia channel emits its own StasisStart (before the REST response even arrives); it is
  recognised by its `AudioSocket/` name or by args == [uuid] and never treated as a caller.
- Every way out ends in one teardown per call that tolerates "already gone" (404/409/422):
  caller gone (hang-up or moved away) -> delete the media channel and the bridge;
  media gone (the gateway ended the call) or setup failed or controller stopping -> delete what
  exists, set SWITCHBOARD_END=ended|failed|stopped on the caller and `continue` it to the dialplan's
  next priority, as the AudioSocket() app returns when the gateway hangs up: the dialplan after
  Stasis() is the admin's one fallback (a person takes the call unless it ended normally).
  Transfer -> take the caller out of the bridge, `continue` it to <transfer_context>,<ext>,1 (or
  `redirect` it), then delete media channel and bridge. Bridge and media go *after* a redirect
  decision because an answered PJSIP redirect (SIP REFER) blocks the caller's control queue.
- A hang-up during setup only marks the call; the setup task notices after its current request and
  tears down what it created so far, so nothing created mid-setup leaks.
- Restart: before the first websocket connection, bridges named `<app>-<uuid>` and AudioSocket
  channels left in the app by a previous run are deleted and stranded callers are continued. It
  runs before connecting because without a connected websocket Stasis() fails, so no new caller can
  be mistaken for a leftover. After a reconnect, records whose channels vanished in the gap (events
  are not replayed) are torn down.
- The events websocket sends heartbeat pings, so a half-open connection is noticed; reconnects back
  off from 0.5 s to `reconnect_max_s`. Every REST call is bounded by `request_timeout_s` and fails
  with AriError carrying Asterisk's status and JSON message.
- DTMF needs nothing here: Asterisk forwards digits to the AudioSocket (0x03) too.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from gateway.config import ARI_RECONNECT_MIN_S, AriSettings
from gateway.tasks import TaskSet
from models.privacy import masked

log = logging.getLogger(__name__)

_GONE = {404, 409, 422}  # channel/bridge no longer exists or is no longer in our app
# Teardown reasons that hand a still-present caller back to the dialplan, and the SWITCHBOARD_END
# value it finds there (etc/asterisk/extensions-ari.conf routes on it).
_END_STATUS = {"media_gone": "ended", "setup_failed": "failed", "stop": "stopped"}


class AriError(Exception):
    """A failed REST call: status is None when Asterisk did not answer (timeout, connection)."""

    def __init__(self, method: str, path: str, status: int | None, message: str) -> None:
        self.status, self.message = status, message
        super().__init__(f"ARI {method} {path}: {status if status is not None else 'no response'} {message}")


@dataclass
class AriCall:
    call_id: str  # the AudioSocket UUID (externalMedia data)
    channel_id: str  # the caller's channel
    channel_name: str
    caller_number: str
    caller_name: str
    dialled: str  # the extension that reached Stasis()
    context: str
    media_channel_id: str | None = None
    bridge_id: str | None = None
    state: Literal["setup", "live", "leaving"] = "setup"
    end_reason: str | None = None  # set while in setup: the setup task tears down when it notices


class _Ended(Exception):
    pass


class AriController:
    """One events websocket and REST session per Asterisk; one AriCall per caller in the app.

    `on_call_started(call)` (plain or async) runs once caller and media channel are bridged. The
    gateway's AudioSocket connection arrives earlier, during externalMedia, so a session should look
    its caller up with `call(uuid)` when it starts rather than wait for this callback.
    """

    def __init__(self, settings: AriSettings, *,
                 on_call_started: Callable[[AriCall], Awaitable[None] | None] | None = None) -> None:
        self.settings = settings
        self.connected = asyncio.Event()
        self._on_call_started = on_call_started
        self._base = settings.url.rstrip("/") + "/ari"
        self._calls: dict[str, AriCall] = {}
        self._by_channel: dict[str, AriCall] = {}
        self._tasks = TaskSet("ari")
        self._http: aiohttp.ClientSession | None = None
        self._runner: asyncio.Task[None] | None = None
        self._stopping = False

    # --- integration points ---------------------------------------------------------

    def call(self, call_id: str) -> AriCall | None:
        """The caller behind an AudioSocket UUID, from the caller's StasisStart until teardown."""
        return self._calls.get(call_id)

    @property
    def calls(self) -> list[AriCall]:
        return list(self._calls.values())

    async def start(self) -> None:
        """Returns at once; connecting (and retrying while Asterisk is down) runs in the background."""
        # No session-wide total timeout: it would cut the long-lived websocket; REST calls bound their own.
        self._http = aiohttp.ClientSession(auth=aiohttp.BasicAuth(self.settings.username, self.settings.secret()),
                                           timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.settings.request_timeout_s))
        self._runner = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Tear down every call (callers continue in the dialplan), then close the connection."""
        self._stopping = True
        for call in list(self._calls.values()):
            self._end(call, "stop")
        await self._tasks.finish(4 * self.settings.request_timeout_s + 1)
        if self._runner:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        if self._http:
            await self._http.close()
        self.connected.clear()

    async def transfer(self, call_id: str, extension: str) -> bool:
        """Move the caller out of Stasis to a staff extension; False if the call is not live or
        Asterisk refused. Shielded: a cancelled caller (its session hanging up as the media
        channel goes) must not leave the caller half-moved."""
        call = self._calls.get(call_id)
        if call is None or call.state != "live":
            log.warning("ari transfer refused call=%s state=%s", call_id, call.state if call else "unknown")
            return False
        call.state = "leaving"
        return await asyncio.shield(self._tasks.spawn(self._transfer(call, extension)))

    # --- REST -------------------------------------------------------------------------

    async def _request(self, method: str, path: str, **params: str | int) -> Any:
        assert self._http is not None, "AriController.start() first"
        query = {k: str(v) for k, v in params.items()}
        try:
            async with self._http.request(method, self._base + path, params=query,
                                          timeout=aiohttp.ClientTimeout(total=self.settings.request_timeout_s)) as resp:
                body = await resp.read()
                data = _json(body)
                if resp.status >= 300:
                    message = data.get("message") if isinstance(data, dict) else None
                    raise AriError(method, path, resp.status, message or resp.reason or body[:200].decode(errors="replace"))
                return data
        except TimeoutError:
            raise AriError(method, path, None, f"timed out after {self.settings.request_timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            raise AriError(method, path, None, str(exc) or type(exc).__name__) from None

    async def _quiet(self, method: str, path: str, **params: str | int) -> bool:
        """A clean-up request: 'already gone' is success, anything else is logged, never raised."""
        try:
            await self._request(method, path, **params)
            return True
        except AriError as exc:
            if exc.status not in _GONE:
                log.warning("ari cleanup failed error=%s", exc)
            return exc.status in _GONE

    # --- events -----------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._http is not None
        delay, cleaned, reconnect = ARI_RECONNECT_MIN_S, False, False
        url = self._base + "/events"
        while True:
            try:
                if not cleaned:
                    await self._remove_leftovers()
                    cleaned = True
                async with asyncio.timeout(self.settings.request_timeout_s):
                    ws = await self._http.ws_connect(url, params={"app": self.settings.app, "subscribeAll": "false"},
                                                     heartbeat=self.settings.heartbeat_s)
                async with ws:
                    self.connected.set()
                    delay = ARI_RECONNECT_MIN_S
                    log.info("ari connected url=%s app=%s", self.settings.url, self.settings.app)
                    if reconnect:
                        self._tasks.spawn(self._reconcile())
                    reconnect = True
                    async for msg in ws:
                        if msg.type is aiohttp.WSMsgType.TEXT:
                            self._dispatch(msg.data)
                    reason = f"closed code={ws.close_code}"
            except aiohttp.WSServerHandshakeError as exc:
                reason = f"handshake {exc.status} {exc.message}"
            except (AriError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                reason = str(exc) or type(exc).__name__
            except Exception as exc:  # e.g. a malformed listing: keep the connection loop alive
                log.exception("ari connection loop error")
                reason = repr(exc)
            self.connected.clear()
            log.warning("ari disconnected reason=%s retry_s=%.1f", reason, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.reconnect_max_s)

    def _dispatch(self, text: str) -> None:
        event = _json(text.encode())
        if not isinstance(event, dict):
            log.warning("ari event not a JSON object text=%.80r", text)
            return
        kind = event.get("type")
        channel = event.get("channel") or {}
        if kind == "StasisStart":
            self._stasis_start(channel, event.get("args") or [])
        elif kind in ("StasisEnd", "ChannelHangupRequest", "ChannelDestroyed"):
            self._channel_gone(channel.get("id", ""), kind)
        elif kind == "ChannelDtmfReceived":  # also forwarded on the AudioSocket as 0x03
            call = self._by_channel.get(channel.get("id", ""))
            log.debug("ari dtmf call=%s digit=%s", call.call_id if call else "-", event.get("digit"))

    def _stasis_start(self, channel: dict[str, Any], args: list[str]) -> None:
        if channel.get("name", "").startswith("AudioSocket/") or (args and args[0] in self._calls):
            call = self._calls.get(args[0]) if args else None
            if call and call.media_channel_id is None:  # its StasisStart can beat the REST response
                call.media_channel_id = channel["id"]
                self._by_channel[channel["id"]] = call
            return
        dialplan, caller = channel.get("dialplan") or {}, channel.get("caller") or {}
        call = AriCall(str(uuid.uuid4()), channel["id"], channel.get("name", ""), caller.get("number", ""),
                       caller.get("name", ""), dialplan.get("exten", ""), dialplan.get("context", ""))
        log.info("ari caller entered call=%s channel=%s caller=%s exten=%s", call.call_id, call.channel_name,
                 masked(call.caller_number), call.dialled)
        if self._stopping:
            self._tasks.spawn(self._quiet("POST", f"/channels/{call.channel_id}/continue"))
            return
        self._calls[call.call_id] = call
        self._by_channel[call.channel_id] = call
        self._tasks.spawn(self._setup(call))

    def _channel_gone(self, channel_id: str, kind: str) -> None:
        call = self._by_channel.get(channel_id)
        if call is None:
            return
        if call.state == "leaving" or call.end_reason:  # already on its way out: one line per call
            return
        reason = "caller_gone" if channel_id == call.channel_id else "media_gone"
        log.info("ari channel gone call=%s side=%s event=%s", call.call_id, reason, kind)
        self._end(call, reason)

    def _end(self, call: AriCall, reason: str) -> None:
        if call.state == "setup":
            call.end_reason = call.end_reason or reason
        elif call.state == "live":
            call.state = "leaving"
            self._tasks.spawn(self._teardown(call, reason))

    # --- call lifecycle ---------------------------------------------------------------

    async def _setup(self, call: AriCall) -> None:
        s = self.settings
        try:
            await self._request("POST", f"/channels/{call.channel_id}/answer")
            self._check(call)
            media = await self._request("POST", "/channels/externalMedia", app=s.app, external_host=s.external_host,
                                        encapsulation="audiosocket", transport="tcp", format=s.format, data=call.call_id)
            call.media_channel_id = media["id"]
            self._by_channel[media["id"]] = call
            self._check(call)
            bridge = await self._request("POST", "/bridges", type="mixing", name=f"{s.app}-{call.call_id}")
            call.bridge_id = bridge["id"]
            self._check(call)
            await self._request("POST", f"/bridges/{call.bridge_id}/addChannel",
                                channel=f"{call.channel_id},{call.media_channel_id}")
            self._check(call)
        except _Ended:
            pass
        except (AriError, KeyError, TypeError) as exc:
            log.warning("ari setup failed call=%s channel=%s error=%s", call.call_id, call.channel_name, exc)
            call.end_reason = call.end_reason or "setup_failed"
        if call.end_reason:
            call.state = "leaving"
            await self._teardown(call, call.end_reason)
            return
        call.state = "live"
        log.info("ari call bridged call=%s bridge=%s media=%s", call.call_id, call.bridge_id, call.media_channel_id)
        if self._on_call_started:
            try:
                result = self._on_call_started(call)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("ari on_call_started failed call=%s", call.call_id)

    @staticmethod
    def _check(call: AriCall) -> None:
        if call.end_reason:
            raise _Ended

    async def _teardown(self, call: AriCall, reason: str) -> None:
        if call.media_channel_id and reason != "media_gone":
            await self._quiet("DELETE", f"/channels/{call.media_channel_id}")
        if call.bridge_id:
            await self._quiet("DELETE", f"/bridges/{call.bridge_id}")
        if status := _END_STATUS.get(reason):  # the dialplan after Stasis() decides what comes next
            await self._quiet("POST", f"/channels/{call.channel_id}/variable", variable="SWITCHBOARD_END", value=status)
            await self._quiet("POST", f"/channels/{call.channel_id}/continue")
        self._forget(call)
        log.info("ari call ended call=%s reason=%s", call.call_id, reason)

    async def _transfer(self, call: AriCall, extension: str) -> bool:
        s = self.settings
        if call.bridge_id:
            await self._quiet("POST", f"/bridges/{call.bridge_id}/removeChannel", channel=call.channel_id)
        try:
            if s.transfer_method == "continue":
                await self._request("POST", f"/channels/{call.channel_id}/continue",
                                    context=s.transfer_context, extension=extension, priority=1)
            else:
                await self._request("POST", f"/channels/{call.channel_id}/redirect",
                                    endpoint=s.redirect_endpoint.format(extension=extension))
            ok = True
        except AriError as exc:  # 409: the caller already left the app (hung up, moved)
            log.warning("ari transfer failed call=%s extension=%s error=%s", call.call_id, extension, exc)
            ok = False
        await self._teardown(call, "transferred")  # the caller is no longer ours either way
        log.info("ari transfer call=%s method=%s extension=%s ok=%s", call.call_id, s.transfer_method, extension, ok)
        return ok

    def _forget(self, call: AriCall) -> None:
        self._calls.pop(call.call_id, None)
        for channel_id in (call.channel_id, call.media_channel_id):
            if channel_id and self._by_channel.get(channel_id) is call:
                del self._by_channel[channel_id]

    async def _remove_leftovers(self) -> None:
        """What a previous run of this app left behind (see the module notes)."""
        prefix = f"{self.settings.app}-"
        for bridge in await self._request("GET", "/bridges"):
            name = bridge.get("name", "")
            if name.startswith(prefix) and name[len(prefix):] not in self._calls:
                log.info("ari leftover bridge deleted bridge=%s name=%s", bridge["id"], name)
                await self._quiet("DELETE", f"/bridges/{bridge['id']}")
        for channel in await self._request("GET", "/channels"):
            dialplan = channel.get("dialplan") or {}
            in_app = (dialplan.get("app_name") == "Stasis"
                      and dialplan.get("app_data", "").split(",")[0] == self.settings.app)
            if not in_app or channel["id"] in self._by_channel:
                continue
            log.info("ari leftover channel channel=%s name=%s", channel["id"], channel.get("name"))
            if channel.get("name", "").startswith("AudioSocket/"):
                await self._quiet("DELETE", f"/channels/{channel['id']}")
            else:
                await self._quiet("POST", f"/channels/{channel['id']}/continue")

    async def _reconcile(self) -> None:
        """After a reconnect: end calls whose channels went away while no events could arrive."""
        try:
            alive = {channel["id"] for channel in await self._request("GET", "/channels")}
        except AriError as exc:
            log.warning("ari reconcile failed error=%s", exc)
            return
        for call in list(self._calls.values()):
            for channel_id in (call.channel_id, call.media_channel_id):
                if call.state == "live" and channel_id and channel_id not in alive:
                    self._channel_gone(channel_id, "missed while disconnected")



def _json(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None


class AriTransferer:
    """gateway.sessions.call.Transferer for calls that came in through Stasis; other calls go to `fallback`."""

    def __init__(self, controller: AriController, fallback: Any) -> None:
        self.controller, self.fallback = controller, fallback

    async def transfer(self, call: Any, member: Any) -> bool:
        if self.controller.call(call.call_id) is not None:
            return await self.controller.transfer(call.call_id, member.extension)
        return await self.fallback.transfer(call, member)

    async def end_call(self, call: Any) -> None:
        if self.controller.call(call.call_id) is not None:
            await call.hangup()  # the controller marks SWITCHBOARD_END=ended when the media leg ends
        else:
            await self.fallback.end_call(call)
