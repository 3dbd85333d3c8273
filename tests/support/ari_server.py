"""A stand-in for Asterisk 22's ARI (REST + events websocket) on loopback, for tests.

Every response and event is a real JSON document captured from Asterisk 22.10.1
(shared/fixtures/asterisk/ari_http.jsonl, ari_events.jsonl) with ids, names, states and timestamps
substituted, and the server keeps the channels and bridges it holds so a test can assert that a
client cleaned up. Behaviour follows the captures: the externalMedia channel's own StasisStart is
sent *before* the REST response; DELETE of a channel gives ChannelHangupRequest, ChannelLeftBridge,
StasisEnd, ChannelDestroyed; `continue` gives StasisEnd and a later one 409 "Channel not in Stasis
application"; externalMedia without data is 400 "data can not be empty". Stasis() fails (the
caller never enters) while no websocket is connected for the app, as in Asterisk.

With `audiosocket=True`, creating an externalMedia channel connects to its external_host with the
`data` UUID like chan_audiosocket (a gateway.media.caller.CallerClient plays the caller's side); deleting
the channel closes that socket (no 0x00, as Asterisk), and the gateway closing it hangs the channel up.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import itertools
import json
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from gateway.media.caller import CallerClient

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "asterisk"


def _load_jsonl(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines() if line.strip()]


_EVENTS = _load_jsonl("ari_events.jsonl")
_HTTP = {entry["label"]: entry for entry in _load_jsonl("ari_http.jsonl")}


def _captured_event(kind: str, *, media: bool = False) -> dict[str, Any]:
    """The first captured event of this kind, preferring one about the same side (caller or media)."""
    same_kind = [e for e in _EVENTS if e["type"] == kind]
    for event in same_kind:
        if (event.get("channel") or {}).get("name", "").startswith("AudioSocket/") == media:
            return event
    if not same_kind:
        raise LookupError(f"no captured {kind} event")
    return same_kind[0]


_CALLER_CHANNEL = _captured_event("StasisStart")["channel"]
_MEDIA_RESPONSE = _HTTP["externalMedia"]["response"]
_BRIDGE = _HTTP["bridge-create"]["response"]
ASTERISK_ID = _EVENTS[0]["asterisk_id"]
_BAD_DATA = _HTTP["externalMedia-missing-data"]
_BAD_TRANSPORT = _HTTP["externalMedia-udp-rejected"]
_NOT_IN_STASIS = _HTTP["continue-after-stasisend"]


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+0000"


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the /ari prefix
    params: dict[str, str]


class AriTestServer:
    def __init__(self, *, app: str = "gateway-app", username: str = "gateway", password: str = "secret",
                 audiosocket: bool = False) -> None:
        self.app, self.username, self.password = app, username, password
        self.audiosocket = audiosocket
        self.channels: dict[str, dict[str, Any]] = {}  # every live channel, as Asterisk would list it
        self.in_stasis: set[str] = set()  # channel ids currently in the app
        self.bridges: dict[str, dict[str, Any]] = {}
        self.requests: list[Request] = []
        self.continued: dict[str, dict[str, str]] = {}  # channel id -> the continue params
        self.redirected: dict[str, str] = {}  # channel id -> endpoint
        self.variables: dict[str, dict[str, str]] = {}  # channel id -> variables set over ARI
        self.media: dict[str, CallerClient] = {}  # AudioSocket connections by channel id
        self.ws_connections = 0
        self.accept_websockets = True
        self.answer_pings = True
        self._failures: dict[str, tuple[int, str]] = {}
        self._holds: dict[str, asyncio.Event] = {}
        self._sockets: set[web.WebSocketResponse] = set()
        self._ids = itertools.count(36)
        self._id_base = int(time.time())
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> AriTestServer:
        app = web.Application(middlewares=[self._auth])
        r = app.router
        r.add_get("/ari/events", self._events)
        r.add_get("/ari/asterisk/info", self._info)
        r.add_get("/ari/channels", self._list_channels)
        r.add_post("/ari/channels/externalMedia", self._external_media)
        r.add_get("/ari/channels/{id}", self._get_channel)
        r.add_delete("/ari/channels/{id}", self._delete_channel)
        r.add_post("/ari/channels/{id}/answer", self._answer)
        r.add_post("/ari/channels/{id}/continue", self._continue)
        r.add_post("/ari/channels/{id}/redirect", self._redirect)
        r.add_post("/ari/channels/{id}/variable", self._set_variable)
        r.add_get("/ari/bridges", self._list_bridges)
        r.add_post("/ari/bridges", self._create_bridge)
        r.add_get("/ari/bridges/{id}", self._get_bridge)
        r.add_delete("/ari/bridges/{id}", self._delete_bridge)
        r.add_post("/ari/bridges/{id}/addChannel", self._add_channel)
        r.add_post("/ari/bridges/{id}/removeChannel", self._remove_channel)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        for client in list(self.media.values()):
            await client.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.drop_websockets()
        if self._runner:
            await self._runner.cleanup()

    # --- test controls ----------------------------------------------------------------

    def fail_next(self, label: str, status: int, message: str) -> None:
        """Make the next request of `label` (answer, externalMedia, bridge-create, addChannel,
        continue, redirect) fail with Asterisk's JSON error shape."""
        self._failures[label] = (status, message)

    def hold(self, label: str) -> asyncio.Event:
        """Keep the next request of `label` waiting until the returned event is set."""
        self._holds[label] = asyncio.Event()
        return self._holds[label]

    async def caller_enters(self, exten: str = "101", number: str = "caller", name: str = "Test Caller",
                            context: str = "from-caller") -> str:
        """A PJSIP caller reaches Stasis(app): StasisStart with args [], state Ring."""
        if not self._sockets:
            raise RuntimeError(f"Stasis app '{self.app}' not registered: the caller stays in the dialplan")
        channel = copy.deepcopy(_CALLER_CHANNEL)
        seq = next(self._ids)
        channel.update(id=f"{self._id_base}.{seq}", name=f"PJSIP/{number}-{seq:08x}", state="Ring",
                       protocol_id=str(uuid.uuid4()), creationtime=_now(), caller={"name": name, "number": number})
        channel["dialplan"].update(context=context, exten=exten, priority=2, app_name="Stasis", app_data=self.app)
        self.channels[channel["id"]] = channel
        self.in_stasis.add(channel["id"])
        await self._emit("StasisStart", channel=channel, args=[])
        return channel["id"]

    async def hang_up(self, channel_id: str, *, cause: int = 16, notify: bool = True) -> None:
        """The far end hangs up (or, for a media channel, the AudioSocket closed). notify=False:
        the app's events are lost, as when no websocket is connected."""
        channel = self.channels.pop(channel_id)
        client = self.media.pop(channel_id, None)
        if client is not None:
            self._spawn(client.close())
        # Captured for a DELETE (cause 32, soft); a far-end hang-up is cause 16 and not soft.
        events: list[tuple[str, dict[str, Any]]] = [("ChannelHangupRequest", {"cause": cause, "soft": cause == 32})]
        for bridge in self.bridges.values():
            if channel_id in bridge["channels"]:
                bridge["channels"].remove(channel_id)
                events.append(("ChannelLeftBridge", {"bridge": copy.deepcopy(bridge)}))
        if channel_id in self.in_stasis:
            self.in_stasis.discard(channel_id)
            events.append(("StasisEnd", {}))
            events.append(("ChannelDestroyed", {"cause": 16, "cause_txt": "Normal Clearing"}))
        if notify:
            for kind, fields in events:
                await self._emit(kind, channel=channel, **fields)

    async def drop_websockets(self) -> None:
        for ws in list(self._sockets):
            await ws.close()
        self._sockets.clear()

    @property
    def websockets_open(self) -> int:
        return len(self._sockets)

    def stasis_state(self) -> tuple[set[str], dict[str, dict[str, Any]]]:
        """(channels still in the app, bridges): both empty once a client has cleaned up."""
        return set(self.in_stasis), dict(self.bridges)

    def calls_to(self, path_suffix: str, method: str = "POST") -> list[Request]:
        return [r for r in self.requests if r.method == method and r.path.endswith(path_suffix)]

    # --- websocket and events ---------------------------------------------------------

    async def _events(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("app") != self.app:
            return _error(400, "Invalid application provided in param [app].")  # not captured
        if not self.accept_websockets:
            return _error(503, "Service Unavailable")
        ws = web.WebSocketResponse(autoping=self.answer_pings)  # Asterisk answers pings; a half-open link does not
        await ws.prepare(request)
        self.ws_connections += 1
        self._sockets.add(ws)
        try:
            async for msg in ws:
                if msg.type is WSMsgType.ERROR:
                    break
        finally:
            self._sockets.discard(ws)
        return ws

    async def _emit(self, kind: str, *, channel: dict[str, Any] | None = None, **fields: Any) -> None:
        """A captured event of this kind, re-dated and pointed at `channel` (or `peer`)."""
        subject = channel or fields.get("peer")
        media = bool(subject and subject["name"].startswith("AudioSocket/"))
        captured = _captured_event(kind, media=media)
        # Only the captured event's own scalar fields carry over (e.g. cause_txt); ids come from here.
        event = {k: v for k, v in captured.items() if k not in ("channel", "bridge", "peer", "tech_cause")}
        event.update(timestamp=_now(), **fields)
        if event.get("soft") is False:
            del event["soft"]
        for key in ("channel", "peer"):
            snapshot = channel if key == "channel" else fields.get("peer")
            if snapshot is not None:
                event[key] = {k: v for k, v in copy.deepcopy(snapshot).items() if k != "channelvars"}
        event["asterisk_id"], event["application"] = ASTERISK_ID, self.app
        text = json.dumps(event)
        for ws in list(self._sockets):
            try:
                await ws.send_str(text)
            except ConnectionError:
                self._sockets.discard(ws)

    # --- REST ---------------------------------------------------------------------------

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        expected = "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        if header != expected and request.query.get("api_key") != f"{self.username}:{self.password}":
            return _error(401, "Authentication required")  # status as Asterisk; body not captured
        if request.path != "/ari/events":
            self.requests.append(Request(request.method, request.path.removeprefix("/ari"), dict(request.query)))
        return await handler(request)

    async def _failure(self, label: str) -> web.Response | None:
        held = self._holds.pop(label, None)
        if held is not None:
            await held.wait()
        failure = self._failures.pop(label, None)
        return _error(*failure) if failure else None

    def _channel(self, request: web.Request, *, stasis: bool = True) -> dict[str, Any] | web.Response:
        channel = self.channels.get(request.match_info["id"])
        if channel is None:
            return _error(404, "Channel not found")
        if stasis and channel["id"] not in self.in_stasis:
            return _captured_error(_NOT_IN_STASIS)
        return channel

    async def _info(self, request: web.Request) -> web.Response:
        return web.json_response(_HTTP["asterisk-info"]["response"])

    async def _list_channels(self, request: web.Request) -> web.Response:
        return web.json_response([{k: v for k, v in c.items() if k != "channelvars"} for c in self.channels.values()])

    async def _get_channel(self, request: web.Request) -> web.Response:
        channel = self._channel(request, stasis=False)
        return channel if isinstance(channel, web.Response) else web.json_response(channel)

    async def _answer(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        if isinstance(channel, web.Response):
            return channel
        if failed := await self._failure("answer"):
            return failed
        if channel["state"] != "Up":
            channel["state"] = "Up"
            await self._emit("ChannelStateChange", channel=channel)
        return web.Response(status=204)

    async def _external_media(self, request: web.Request) -> web.Response:
        q = request.query
        if not q.get("data"):
            return _captured_error(_BAD_DATA)
        if q.get("encapsulation") == "audiosocket" and q.get("transport", "udp") != "tcp":
            return _captured_error(_BAD_TRANSPORT)
        if failed := await self._failure("externalMedia"):
            return failed
        host, data = q["external_host"], q["data"]
        channel = copy.deepcopy(_MEDIA_RESPONSE)
        channel.update(id=f"{self._id_base}.{next(self._ids)}", name=f"AudioSocket/{host}-{data}", state="Down",
                       creationtime=_now())
        channel["channelvars"].update(AUDIOSOCKET_SERVICE=host, AUDIOSOCKET_UUID=data)
        response = copy.deepcopy(channel)
        if self.audiosocket:  # chan_audiosocket connects (and sends the UUID) while the request runs
            address, port = host.rsplit(":", 1)
            try:
                client = await CallerClient(address, int(port), call_id=data).connect()
            except OSError as exc:
                return _error(500, f"AudioSocket connect failed: {exc}")  # status/message not captured
            self.media[channel["id"]] = client
            self._spawn(self._watch_media(channel["id"], client))
        self.channels[channel["id"]] = channel
        self.in_stasis.add(channel["id"])
        await self._emit("Dial", peer=channel, dialstatus="", dialstring=f"{host}/{data}")
        channel["state"] = "Up"
        await self._emit("ChannelStateChange", channel=channel)
        await self._emit("Dial", peer=channel, dialstatus="ANSWER", dialstring=f"{host}/{data}")
        channel["dialplan"].update(app_name="Stasis", app_data=f"{q.get('app', '')},{data}")
        await self._emit("StasisStart", channel=channel, args=[data])
        return web.json_response(response)

    async def _watch_media(self, channel_id: str, client: CallerClient) -> None:
        """The gateway closing the AudioSocket hangs the media channel up (bridged peer stays)."""
        await client.hung_up.wait()
        if self.media.get(channel_id) is client:
            await self.hang_up(channel_id)

    async def _delete_channel(self, request: web.Request) -> web.Response:
        channel = self._channel(request, stasis=False)
        if isinstance(channel, web.Response):
            return channel
        await self.hang_up(channel["id"], cause=32)
        return web.Response(status=204)

    async def _continue(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        if isinstance(channel, web.Response):
            return channel
        if failed := await self._failure("continue"):
            return failed
        self._leave(channel)
        self.continued[channel["id"]] = dict(request.query)
        q = request.query
        if q.get("extension"):
            channel["dialplan"].update(context=q.get("context", channel["dialplan"]["context"]), exten=q["extension"],
                                       priority=int(q.get("priority", 1)), app_name="", app_data="")
        else:  # next priority of the same extension
            channel["dialplan"].update(priority=channel["dialplan"]["priority"] + 1, app_name="Hangup", app_data="")
        await self._emit("StasisEnd", channel=channel)
        return web.Response(status=204)

    async def _set_variable(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        if isinstance(channel, web.Response):
            return channel
        if not request.query.get("variable"):
            return _error(400, "Variable name is required")  # not captured
        self.variables.setdefault(channel["id"], {})[request.query["variable"]] = request.query.get("value", "")
        return web.Response(status=204)

    async def _redirect(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        if isinstance(channel, web.Response):
            return channel
        if failed := await self._failure("redirect"):
            return failed
        endpoint = request.query.get("endpoint", "")
        self.redirected[channel["id"]] = endpoint
        # Captured on an unanswered channel: SIP 302, then the caller's leg ends.
        self._leave(channel)
        self.channels.pop(channel["id"], None)
        await self._emit("ChannelHangupRequest", channel=channel, cause=23, tech_cause=302)
        await self._emit("StasisEnd", channel=channel)
        return web.Response(status=204)

    def _leave(self, channel: dict[str, Any]) -> None:
        """Leaving Stasis also leaves any bridge (events for it are not captured; not sent)."""
        self.in_stasis.discard(channel["id"])
        for bridge in self.bridges.values():
            if channel["id"] in bridge["channels"]:
                bridge["channels"].remove(channel["id"])

    async def _list_bridges(self, request: web.Request) -> web.Response:
        return web.json_response(list(self.bridges.values()))

    async def _create_bridge(self, request: web.Request) -> web.Response:
        if failed := await self._failure("bridge-create"):
            return failed
        bridge = copy.deepcopy(_BRIDGE)
        bridge.update(id=str(uuid.uuid4()), name=request.query.get("name", ""), channels=[], creationtime=_now(),
                      bridge_type=request.query.get("type", "mixing"))
        self.bridges[bridge["id"]] = bridge
        return web.json_response(bridge)

    def _bridge(self, request: web.Request) -> dict[str, Any] | web.Response:
        bridge = self.bridges.get(request.match_info["id"])
        return bridge if bridge is not None else _error(404, "Bridge not found")

    async def _get_bridge(self, request: web.Request) -> web.Response:
        bridge = self._bridge(request)
        return bridge if isinstance(bridge, web.Response) else web.json_response(bridge)

    async def _delete_bridge(self, request: web.Request) -> web.Response:
        bridge = self._bridge(request)
        if isinstance(bridge, web.Response):
            return bridge
        del self.bridges[bridge["id"]]
        for channel_id in list(bridge["channels"]):
            bridge["channels"].remove(channel_id)
            await self._emit("ChannelLeftBridge", channel=self.channels[channel_id], bridge=copy.deepcopy(bridge))
        await self._emit("BridgeDestroyed", bridge=copy.deepcopy(bridge))
        return web.Response(status=204)

    async def _add_channel(self, request: web.Request) -> web.Response:
        bridge = self._bridge(request)
        if isinstance(bridge, web.Response):
            return bridge
        if failed := await self._failure("addChannel"):
            return failed
        ids = [c for c in request.query.get("channel", "").split(",") if c]
        if not ids or any(c not in self.channels for c in ids):
            return _error(400, "Channel not found")
        if any(c not in self.in_stasis for c in ids):
            return _error(422, "Channel not in Stasis application")
        for channel_id in ids:
            bridge["channels"].append(channel_id)
            await self._emit("ChannelEnteredBridge", channel=self.channels[channel_id], bridge=copy.deepcopy(bridge))
        return web.Response(status=204)

    async def _remove_channel(self, request: web.Request) -> web.Response:
        bridge = self._bridge(request)
        if isinstance(bridge, web.Response):
            return bridge
        channel_id = request.query.get("channel", "")
        if channel_id not in bridge["channels"]:
            return _error(422, "Channel not in this bridge")
        bridge["channels"].remove(channel_id)
        await self._emit("ChannelLeftBridge", channel=self.channels[channel_id], bridge=copy.deepcopy(bridge))
        return web.Response(status=204)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)


def _captured_error(entry: dict[str, Any]) -> web.Response:
    return web.json_response(entry["response"], status=entry["status"])
