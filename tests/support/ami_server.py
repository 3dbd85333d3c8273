"""A protocol-faithful AMI server on loopback, built from the real Asterisk 22.10.1 captures.

Replies and events are the captured blocks (../shared/fixtures/asterisk/ami_received.txt) with
only the fields a scenario needs replaced (ActionID, Channel, Uniqueid, ...), in the captured
header order. Behaviour follows main/manager.c as captured: banner first, a bad login answered
after ~1 s and then the connection closed, FullyBooted after login, Redirect of a channel that is
not up refused, Originate queued then answered by an OriginateResponse event carrying the
ActionID and a Reason code.

Knobs for the hard cases: `chunk` (every write split into tiny TCP writes), `silent` (actions
never answered), `garbage` (junk lines before replies), `interleave` (captured events written
before each reply), `drop()` (connections cut mid-call), `restart()`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "asterisk"
EOL = "\r\n"
Block = list[tuple[str, str]]


def parse_blocks(text: str) -> list[Block]:
    blocks = []
    for raw in text.split(EOL + EOL):
        lines = [line.split(": ", 1) if ": " in line else line.split(":", 1) for line in raw.split(EOL)]
        block = [(kv[0], kv[1] if len(kv) > 1 else "") for kv in lines if len(kv) == 2]
        if block:
            blocks.append(block)
    return blocks


def render(block: Block) -> str:
    return "".join(f"{k}: {v}{EOL}" for k, v in block) + EOL


def with_fields(block: Block, **values: str) -> Block:
    """The captured block with some values replaced (keys in capture order; new keys appended)."""
    out = [(k, values.pop(k, v)) for k, v in block]
    return out + list(values.items())


class Capture:
    """The main-connection capture, indexed by what scenarios need."""

    def __init__(self, path: Path = FIXTURES / "ami_received.txt") -> None:
        text = path.read_bytes().decode("utf-8")
        self.banner = text.split(EOL, 1)[0] + EOL
        self.blocks = parse_blocks(text.split(EOL, 1)[1])

    def find(self, **match: str) -> Block:
        for block in self.blocks:
            d = dict(block)
            if all(d.get(k) == v for k, v in match.items()):
                return block
        raise LookupError(f"no captured block with {match}")

    def response(self, action_id: str) -> Block:
        return self.find(ActionID=action_id)


CAPTURE = Capture()


@dataclass
class Action:
    fields: dict[str, str | list[str]]
    conn: int
    at: float

    @property
    def name(self) -> str:
        return str(self.fields.get("Action", ""))

    def __getitem__(self, key: str) -> str | list[str]:
        return self.fields[key]


@dataclass
class _Conn:
    n: int
    writer: asyncio.StreamWriter
    authed: bool = False


OriginateHook = Callable[[Action, int], Awaitable[None]]


@dataclass
class AmiTestServer:
    username: str = "gateway"
    secret: str = "secret"
    bad_login_delay_s: float = 1.0  # manager.c sleeps 1 s before refusing a login
    chunk: int | None = None
    silent: set[str] = field(default_factory=set)  # lower-case action names never answered
    garbage: bool = False
    interleave: int = 0
    channels_up: set[str] = field(default_factory=set)
    channels_hanging: set[str] = field(default_factory=set)
    originate_reasons: list[int] = field(default_factory=list)  # one per Originate; default 4 (answered)
    on_originate: OriginateHook | None = None  # runs after an answered OriginateResponse (the dialplan's part)
    actions: list[Action] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _conns: dict[int, _Conn] = field(default_factory=dict)
    _n: int = 0
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _tasks: set[asyncio.Task] = field(default_factory=set)
    logins: int = 0

    async def start(self) -> "AmiTestServer":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self.drop()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def restart(self, down_s: float = 0.5) -> None:
        """Asterisk restart: every connection cut, nothing listening for a while, then back on the same port."""
        await self.stop()
        await asyncio.sleep(down_s)
        await self.start()

    def drop(self) -> None:
        """Cut every connection at once (RST), as a crash or a network fault does."""
        for conn in list(self._conns.values()):
            conn.writer.transport.abort()
        self._conns.clear()

    @property
    def connections(self) -> int:
        return sum(1 for c in self._conns.values() if c.authed)

    # ---- what the client sent ---------------------------------------------------------------------
    def sent(self, name: str) -> list[Action]:
        return [a for a in self.actions if a.name.lower() == name.lower()]

    async def wait_for(self, name: str, count: int = 1, timeout: float = 10.0) -> list[Action]:
        async def enough() -> list[Action]:
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.sent(name)) >= count)
            return self.sent(name)
        return await asyncio.wait_for(enough(), timeout)

    async def wait_logins(self, count: int, timeout: float = 10.0) -> None:
        async def enough() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: self.logins >= count)
        await asyncio.wait_for(enough(), timeout)

    # ---- events -----------------------------------------------------------------------------------
    async def event(self, block: Block) -> None:
        """Send an event to every logged-in connection (read class 'all', as in the lab manager.conf)."""
        for conn in list(self._conns.values()):
            if conn.authed:
                await self._write(conn, render(block))

    async def call_events(self, *, channel: str, uniqueid: str, caller: str, exten: str,
                          variables: dict[str, str]) -> None:
        """A call entering the dialplan as captured: Newchannel, then a VarSet per variable, in order."""
        snapshot = dict(Channel=channel, Uniqueid=uniqueid, Linkedid=uniqueid, CallerIDNum=caller, Exten=exten)
        await self.event(with_fields(CAPTURE.find(Event="Newchannel"), **snapshot))
        varset = CAPTURE.find(Event="VarSet", Variable="AS_UUID")
        for name, value in variables.items():
            await self.event(with_fields(varset, **snapshot, Variable=name, Value=value))
        self.channels_up.add(channel)

    async def hangup_event(self, channel: str, uniqueid: str) -> None:
        self.channels_up.discard(channel)
        await self.event(with_fields(CAPTURE.find(Event="Hangup"), Channel=channel, Uniqueid=uniqueid,
                                     Linkedid=uniqueid))

    async def dial_end(self, channel: str, uniqueid: str, status: str) -> None:
        await self.event(with_fields(CAPTURE.find(Event="DialEnd"), Channel=channel, Uniqueid=uniqueid,
                                     DialStatus=status))

    # ---- the connection ----------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._n += 1
        conn = _Conn(self._n, writer)
        self._conns[conn.n] = conn
        try:
            await self._write(conn, CAPTURE.banner)
            while True:
                try:
                    raw = await reader.readuntil((EOL + EOL).encode())
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                fields: dict[str, str | list[str]] = {}
                blocks = parse_blocks(raw.decode("utf-8", "replace"))
                for key, value in blocks[0] if blocks else []:
                    old = fields.get(key)
                    fields[key] = value if old is None else [*(old if isinstance(old, list) else [old]), value]
                action = Action(fields, conn.n, time.monotonic())
                async with self._changed:
                    self.actions.append(action)
                    self._changed.notify_all()
                if not await self._answer(conn, action):
                    break
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._conns.pop(conn.n, None)
            writer.transport.abort()

    async def _write(self, conn: _Conn, text: str) -> None:
        data = text.encode("utf-8")
        step = self.chunk or len(data)
        try:
            for i in range(0, len(data), step):
                conn.writer.write(data[i:i + step])
                await conn.writer.drain()
                if self.chunk:
                    await asyncio.sleep(0)
        except (ConnectionError, RuntimeError):
            pass

    async def _reply(self, conn: _Conn, block: Block, action_id: str) -> None:
        if self.garbage:
            await self._write(conn, f"this is not a header{EOL}\x01\x02 nor this{EOL}{EOL}: {EOL}{EOL}")
        events = [b for b in CAPTURE.blocks if dict(b).get("Event") in ("Newexten", "RTCPReceived")]
        for block_ in events[:self.interleave]:
            await self._write(conn, render(block_))
        await self._write(conn, render(with_fields(block, ActionID=action_id)))

    async def _answer(self, conn: _Conn, action: Action) -> bool:
        """Reply as Asterisk would; False closes the connection."""
        name = action.name.lower()
        aid = str(action.fields.get("ActionID", ""))
        if name == "login":
            return await self._login(conn, action, aid)
        if not conn.authed:
            await self._reply(conn, [("Response", "Error"), ("Message", "Permission denied")], aid)
            return True
        if name in self.silent:
            return True
        if name == "ping":
            await self._reply(conn, with_fields(CAPTURE.response("ping-1"), Timestamp=f"{time.time():.6f}"), aid)
        elif name == "redirect":
            await self._redirect(conn, action, aid)
        elif name == "setvar":
            await self._reply(conn, [("Response", "Success"), ("Message", "Variable Set")], aid)
        elif name == "originate":
            await self._originate(conn, action, aid)
        elif name == "messagesend":
            await self._message_send(conn, action, aid)
        elif name == "logoff":
            await self._reply(conn, CAPTURE.response("logoff-1"), aid)
            return False
        else:
            await self._reply(conn, [("Response", "Error"), ("Message", f"Invalid/unknown command: {action.name}. "
                                      "Use Action: ListCommands to show available commands.")], aid)
        return True

    async def _login(self, conn: _Conn, action: Action, aid: str) -> bool:
        if action.fields.get("Username") != self.username or action.fields.get("Secret") != self.secret:
            await asyncio.sleep(self.bad_login_delay_s)
            await self._write(conn, (FIXTURES / "ami_badlogin_received.txt").read_bytes().decode()
                              .split(EOL, 1)[1].replace("bad-1", aid))
            return False
        conn.authed = True
        await self._reply(conn, CAPTURE.response("login-1"), aid)
        await self._write(conn, render(CAPTURE.find(Event="FullyBooted")) + render(CAPTURE.find(Event="SuccessfulAuth")))
        async with self._changed:
            self.logins += 1
            self._changed.notify_all()
        return True

    async def _redirect(self, conn: _Conn, action: Action, aid: str) -> None:
        channel = str(action.fields.get("Channel", ""))
        if channel in self.channels_hanging:
            block = [("Response", "Error"), ("Message", "Redirect failed, channel not up.")]
        elif channel not in self.channels_up:
            block = [("Response", "Error"), ("Message", f"Channel does not exist: {channel}")]
        else:
            block = CAPTURE.response("redirect-1")
        await self._reply(conn, block, aid)

    async def _originate(self, conn: _Conn, action: Action, aid: str) -> None:
        await self._reply(conn, [("Response", "Success"), ("Message", "Originate successfully queued")], aid)
        reason = self.originate_reasons.pop(0) if self.originate_reasons else 4
        task = asyncio.create_task(self._originate_response(conn, action, aid, reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _originate_response(self, conn: _Conn, action: Action, aid: str, reason: int) -> None:
        await asyncio.sleep(0.05)  # the far end rings
        channel = str(action.fields.get("Channel", ""))
        uniqueid = f"{time.time():.2f}"
        await self._write(conn, render([
            ("Event", "OriginateResponse"), ("Privilege", "call,all"), ("ActionID", aid),
            ("Response", "Success" if reason == 4 else "Failure"), ("Channel", channel),
            ("Context", str(action.fields.get("Context", ""))), ("Exten", str(action.fields.get("Exten", ""))),
            ("Application", ""), ("Data", ""), ("Reason", str(reason)),
            ("Uniqueid", uniqueid if reason == 4 else "<null>"),
            ("CallerIDNum", "<unknown>"), ("CallerIDName", "<unknown>")]))
        if reason == 4 and self.on_originate is not None:
            await self.on_originate(action, reason)

    async def _message_send(self, conn: _Conn, action: Action, aid: str) -> None:
        dest = str(action.fields.get("Destination") or action.fields.get("To") or "")
        b64 = action.fields.get("Base64Body")
        too_long = False
        if b64 is not None:
            try:
                too_long = len(base64.b64decode(str(b64), validate=True)) > 1300  # message.c: 1301-byte buffer
            except binascii.Error:
                too_long = True
        if ":" not in dest:
            block = [("Response", "Error"), ("Message", "Message technology not found.")]
        elif dest.endswith("nosuchendpoint") or too_long:
            block = CAPTURE.response("msg-3")
        else:
            block = CAPTURE.response("msg-1")
        await self._reply(conn, block, aid)
