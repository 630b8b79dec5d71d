"""The fake AMI server against the real Asterisk 22 capture and against panoramisk.

1. Replay: the client's bytes from the capture are sent to the fake verbatim, the
   dialplan/phone side of the capture is re-enacted through the FakeChannel API, and every
   TCP write of the fake is compared with the capture's segment at the same position
   (message type, field names and order, values except a few clock/socket ones).
2. panoramisk (the library the adapter uses) logs in and drives a call.
3. Reconnection after an AMI drop and after an Asterisk restart.
4. Error paths and Asterisk behaviours the capture does not show, over a raw socket.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from panoramisk import Manager

from tests.asterisk.fake_ami import VERSION_LINE, AmiSession, FakeAmi, FakeChannel

T = TypeVar("T")

#: The real Asterisk 22 capture, kept with the tests (a copy of the shared fixture).
TRANSCRIPT = Path(__file__).parent / "asterisk-ami-transcript.txt"
_MARKER = re.compile(
    rb"^#### \+([0-9.]+)s (ASTERISK -> CLIENT|CLIENT -> ASTERISK) \((\d+) bytes\)\n", re.M
)
# Values that depend on the clock or the sockets, not on the protocol.
_VOLATILE = {"Uptime", "LastReload", "EventTV", "SessionID", "LocalAddress", "RemoteAddress"}
_VOLATILE |= {"SessionTV"}


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout)


# --- the capture ------------------------------------------------------------------------------
@dataclass
class Segment:
    at: float
    from_client: bool
    data: bytes

    @property
    def fields(self) -> list[tuple[str, str]]:
        return parse_fields(self.data)

    def get(self, key: str) -> str:
        return next((v for k, v in self.fields if k == key), "")


def parse_fields(data: bytes) -> list[tuple[str, str]]:
    """Every CRLF-terminated line as (key, value); a blank line is ('', '')."""
    text = data.decode()
    assert text.endswith("\r\n"), data
    out = []
    for line in text[:-2].split("\r\n"):
        key, _, value = line.partition(": ")
        out.append((key, value) if line else ("", ""))
    return out


def transcript_path() -> Path:
    assert TRANSCRIPT.is_file(), f"{TRANSCRIPT} is part of the repository"
    return TRANSCRIPT


def parse_transcript(path: Path) -> list[Segment]:
    data = path.read_bytes()
    marks = list(_MARKER.finditer(data))
    segments = []
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(data)
        payload = data[mark.end() : end]
        assert len(payload) == int(mark.group(3)), f"segment {i}: byte count"
        segments.append(Segment(float(mark.group(1)), mark.group(2).startswith(b"CLIENT"), payload))
    return segments


def shape(data: bytes) -> list[tuple[str, str]]:
    return [(k, "<volatile>" if k in _VOLATILE else v) for k, v in parse_fields(data)]


def test_transcript_parses() -> None:
    segments = parse_transcript(transcript_path())
    assert len(segments) == 123
    assert segments[0].data == b"Asterisk Call Manager/11.0.0\r\n"
    assert sum(s.from_client for s in segments) == 12
    # the capture's Getvar replies are two writes: Response+ActionID, then Variable/Value
    firsts = [s for s in segments if s.data.startswith(b"Variable: ")]
    assert len(firsts) == 7
    assert all(s.data.endswith(b"\r\n\r\n") for s in firsts)


class Replay:
    """Re-enacts the capture against the fake, one segment at a time."""

    def __init__(self, segments: list[Segment]) -> None:
        self.segments = segments
        self.ami = FakeAmi()
        self.chan: FakeChannel | None = None
        self.pending_setvars: list[str] = []
        # what chan_pjsip reported in the capture, so the fake can report the same
        self.getvar_values = {
            s.get("Variable"): s.get("Value")
            for s in segments
            if not s.from_client and s.data.startswith(b"Variable: ")
        }

    def _channel(self) -> FakeChannel:
        assert self.chan is not None
        return self.chan

    def _is_trigger(self, seg: Segment) -> bool:
        """Does this server segment come from the call (re-enact it) or from the fake itself?"""
        event = seg.get("Event")
        if event in ("Newchannel", "Newexten", "HangupRequest", "RTCPSent"):
            return True
        if event == "VarSet":
            var = seg.get("Variable")
            if var == "SIPDOMAIN":
                return False  # new_call() emits it, as chan_pjsip does
            if self.pending_setvars and self.pending_setvars[0] == var:
                self.pending_setvars.pop(0)
                return False  # the VarSet that follows the client's Setvar
            return True
        return False

    async def _trigger(self, seg: Segment, index: int) -> None:
        """Must not suspend: whatever the client sent before stays unread meanwhile."""
        event = seg.get("Event")
        if event == "Newchannel":
            name = seg.get("Channel")
            self.ami.next_channel_seq = int(name.rsplit("-", 1)[1], 16)
            src_ip, _, port = self.getvar_values["CHANNEL(rtp,src)"].rpartition(":")
            dest_ip = self.getvar_values["CHANNEL(rtp,dest)"].rpartition(":")[0]
            self.chan = self.ami.new_call(
                endpoint=seg.get("CallerIDNum"),
                exten=seg.get("Exten"),
                context=seg.get("Context"),
                rtp_port=int(port),
                rtp_src_ip=src_ip,
                remote_addr=self.getvar_values["CHANNEL(pjsip,remote_addr)"],
                uniqueid=seg.get("Uniqueid"),
                rtp_dest_ip=dest_ip,
                call_id=self.getvar_values["CHANNEL(pjsip,call-id)"],
                sip_domain=self.segments[index + 1].get("Value"),
            )
            assert self.chan.name == name
            return
        chan = self._channel()
        if event == "Newexten":
            chan.next_priority = int(seg.get("Priority"))
            app, data = seg.get("Application"), seg.get("AppData")
            if app == "Answer":
                await chan.answer()
            elif app == "UserEvent":
                name, *pairs = data.split(",")
                await chan.user_event(name, **dict(p.split(": ", 1) for p in pairs))
            else:
                await chan.exec_app(app, data)
        elif event == "VarSet":
            await chan.set_var(seg.get("Variable"), seg.get("Value"))
        elif event == "HangupRequest":
            await chan.hangup()
        else:  # an event the fake does not model (RTCPSent): passed through verbatim
            await self.ami.send_raw(seg.data)

    def _before_send(self, seg: Segment, index: int) -> None:
        if seg.get("Action") == "Setvar":
            self.pending_setvars.append(seg.get("Variable"))
        if seg.get("Variable") == "CHANNEL(rtcp,rxcount)":
            reply = next(
                s for s in self.segments[index:] if s.data.startswith(b"Variable: CHANNEL(rtcp")
            )
            self._channel().rtcp_rxcount = int(reply.get("Value"))

    async def run(self) -> AmiSession:
        port = await self.ami.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        received = bytearray()

        async def drain() -> None:
            while chunk := await reader.read(65536):
                received.extend(chunk)

        drainer = asyncio.create_task(drain())
        await wait_until(lambda: bool(self.ami.connections))
        session = self.ami.connections[0]
        k = 0
        try:
            for index, seg in enumerate(self.segments):
                if seg.from_client:
                    self._before_send(seg, index)
                    writer.write(seg.data)
                    continue
                if self._is_trigger(seg):
                    await self._trigger(seg, index)
                    assert len(session.sent) > k, f"segment {index}: trigger wrote nothing"
                else:
                    await wait_until(lambda: len(session.sent) > k)  # noqa: B023
                assert shape(session.sent[k]) == shape(seg.data), f"segment {index} (+{seg.at}s)"
                k += 1
            await asyncio.wait_for(drainer, 5)  # Logoff: the fake closes the connection
        finally:
            writer.close()
            await self.ami.close()
        assert len(session.sent) == k, session.sent[k:]
        assert bytes(received) == b"".join(session.sent)
        return session


def test_replay_matches_capture() -> None:
    segments = parse_transcript(transcript_path())
    replay = Replay(segments)
    session = run(replay.run())
    server_segments = [s for s in segments if not s.from_client]
    assert len(session.sent) == len(server_segments) == 111
    # beyond the field shapes: the writes are the same size except for the volatile fields
    # (timestamps, session id, client port) of FullyBooted/SuccessfulAuth
    differing = [
        i
        for i, (a, b) in enumerate(zip(session.sent, server_segments, strict=True))
        if len(a) != len(b.data)
    ]
    assert all(
        server_segments[i].get("Event") in ("FullyBooted", "SuccessfulAuth") for i in differing
    )
    chan = replay._channel()
    assert not chan.alive and chan.hangup_cause == 0
    assert chan.variables["ZRTP_SECURE"] == "1" and chan.variables["ZRTP_SAS"] == "b7k2"
    assert [a.get("Action") for a in replay.ami.actions] == [
        "Login",
        "Command",
        *["Getvar"] * 7,
        "Setvar",
        "Setvar",
        "Logoff",
    ]
    assert replay.ami.logins == 1


# --- panoramisk -------------------------------------------------------------------------------
class Events:
    """Events panoramisk dispatches, with a bounded wait for the next matching one."""

    def __init__(self, manager: Manager) -> None:
        self.seen: list[Any] = []
        self._changed = asyncio.Event()
        manager.register_event("*", self._on_event)

    def _on_event(self, _manager: Manager, event: Any) -> None:
        self.seen.append(event)
        self._changed.set()

    async def wait(self, predicate: Callable[[Any], bool], timeout: float = 5.0) -> Any:
        async def look() -> Any:
            start = 0
            while True:
                for event in self.seen[start:]:
                    if predicate(event):
                        return event
                start = len(self.seen)
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(look(), timeout)


def make_manager(port: int, logins: asyncio.Queue[None], **extra: Any) -> Manager:
    # connect() completes when TCP is up, before Login: on_login is the real "ready" signal.
    # on_login is called with loop.call_soon (a coroutine function would never be awaited).
    return Manager(
        host="127.0.0.1",
        port=port,
        username="ctl",
        secret="ctlpass",
        ping_delay=60,
        reconnect_timeout=1,  # panoramisk int()s it: 0.2 would become 0, a busy retry loop
        on_login=lambda _m: logins.put_nowait(None),
        **extra,
    )


async def action(manager: Manager, **fields: str) -> Any:
    future: Awaitable[Any] = manager.send_action(fields)
    return await asyncio.wait_for(future, 5)


def test_panoramisk_drives_a_call() -> None:
    async def scenario() -> None:
        ami = FakeAmi()
        port = await ami.start()
        logins: asyncio.Queue[None] = asyncio.Queue()
        manager = make_manager(port, logins)
        events = Events(manager)
        try:
            await asyncio.wait_for(manager.connect(), 5)
            await asyncio.wait_for(logins.get(), 5)
            assert ami.logins == 1 and manager.authenticated
            await events.wait(lambda e: e.event == "FullyBooted")

            chan = ami.new_call(rtp_port=20094)
            new = await events.wait(lambda e: e.event == "Newchannel")
            assert (new.Channel, new.Uniqueid, new.Linkedid) == (
                chan.name,
                chan.uniqueid,
                chan.linkedid,
            )
            assert (new.Exten, new.Context, new.ChannelState) == ("600", "from-phones", "4")

            # before Progress() chan_pjsip has no active media: an empty Value, which
            # panoramisk drops altogether (it strip()s the message, "Value: " loses its space)
            resp = await action(
                manager, Action="Getvar", Channel=chan.name, Variable="CHANNEL(rtp,src)"
            )
            assert resp.success and resp.get("Value", "") == ""
            await chan.progress()
            resp = await action(
                manager, Action="Getvar", Channel=chan.name, Variable="CHANNEL(rtp,src)"
            )
            assert resp.Value == "127.0.0.1:20094" and resp.Variable == "CHANNEL(rtp,src)"
            for var, want in [
                ("CHANNEL(rtp,dest)", "127.0.10.2:20094"),
                ("CHANNEL(endpoint)", "zalice"),
                ("CHANNEL(pjsip,remote_addr)", "127.0.10.3:5070"),
                ("CHANNEL(pjsip,call-id)", chan.call_id),
            ]:
                resp = await action(manager, Action="Getvar", Channel=chan.uniqueid, Variable=var)
                assert resp.Value == want, var
            resp = await action(manager, Action="Getvar", Channel="PJSIP/nobody", Variable="X")
            assert resp.response == "Error" and resp.Message == "No such channel"

            await chan.answer()
            await chan.user_event("ZrtpCallStart", Endpoint="zalice", RtpSrc="127.0.0.1:20094")
            ue = await events.wait(lambda e: e.event == "UserEvent")
            assert (ue.UserEvent, ue.Endpoint, ue.Uniqueid) == (
                "ZrtpCallStart",
                "zalice",
                chan.uniqueid,
            )

            # the dialplan holds the call until the adapter sets ZRTP_SECURE
            waiting = asyncio.create_task(
                chan.wait_for_var("ZRTP_SECURE", lambda v: v == "1", timeout=5)
            )
            await asyncio.sleep(0.05)
            assert not waiting.done()
            resp = await action(
                manager, Action="Setvar", Channel=chan.name, Variable="ZRTP_SECURE", Value="1"
            )
            assert resp.success and resp.Message == "Variable Set"
            assert await asyncio.wait_for(waiting, 5) == "1"
            varset = await events.wait(
                lambda e: e.event == "VarSet" and e.Variable == "ZRTP_SECURE"
            )
            assert varset.Value == "1" and varset.Channel == chan.name
            assert await chan.wait_for_var("NEVER", lambda v: v is not None, 0.05) is None

            resp = await action(manager, Action="DBGet", Family="zrtp", Key="cache")
            assert resp.response == "Error" and resp.Message == "Database entry not found"
            resp = await action(manager, Action="DBPut", Family="zrtp", Key="cache", Val="abc")
            assert resp.success and ami.astdb[("zrtp", "cache")] == "abc"
            got = await action(manager, Action="DBGet", Family="zrtp", Key="cache")
            assert [m.get("Event", m.get("Response")) for m in got] == [
                "Success",
                "DBGetResponse",
                "DBGetComplete",
            ]
            assert got[1].Val == "abc" and got[2].ListItems == "1"

            other = ami.new_call(endpoint="zbob", rtp_port=20096)
            got = await action(manager, Action="CoreShowChannels")
            assert got[0].EventList == "start" and got[0].Message == "Channels will follow"
            items = [m for m in got if m.get("Event") == "CoreShowChannel"]
            assert [m.Channel for m in items] == [chan.name, other.name]
            assert items[0].ChannelState == "6" and items[0].Application == "WaitForCondition"
            assert got[-1].Event == "CoreShowChannelsComplete" and got[-1].ListItems == "2"

            resp = await asyncio.wait_for(manager.send_command("core show version"), 5)
            assert resp.success and resp.Output == VERSION_LINE

            # the adapter hangs a call up
            resp = await action(manager, Action="Hangup", Channel=chan.name, Cause="21")
            assert resp.success and resp.Message == "Channel Hungup"
            hangup = await events.wait(lambda e: e.event == "Hangup")
            assert (hangup.Uniqueid, hangup.Cause, hangup["Cause-txt"]) == (
                chan.uniqueid,
                "21",
                "Call Rejected",
            )
            assert not chan.alive and chan.hangup_cause == 21
            # the phone hangs up (BYE), as in the capture
            await other.hangup()
            hangup = await events.wait(lambda e: e.event == "Hangup" and e.Channel == other.name)
            assert (hangup.Cause, hangup["Cause-txt"]) == ("0", "Unknown")
            names = [e.event for e in events.seen if e.get("Channel") == other.name]
            assert names[-3:] == ["HangupRequest", "SoftHangupRequest", "Hangup"]
            got = await action(manager, Action="CoreShowChannels")
            assert got[-1].ListItems == "0"

            resp = await action(manager, Action="Ping")
            assert resp.success and resp.Ping == "Pong"
        finally:
            manager.close()
            await ami.close()

    run(scenario())


def test_panoramisk_reconnects_after_drop_and_restart() -> None:
    async def scenario() -> None:
        ami = FakeAmi()
        port = await ami.start()
        logins: asyncio.Queue[None] = asyncio.Queue()
        manager = make_manager(port, logins)
        events = Events(manager)
        try:
            await asyncio.wait_for(manager.connect(), 5)
            await asyncio.wait_for(logins.get(), 5)
            chan = ami.new_call(rtp_port=30000)
            await events.wait(lambda e: e.event == "Newchannel")

            await ami.drop_connections()
            await asyncio.wait_for(logins.get(), 5)
            assert ami.logins == 2 and len(ami.connections) == 2
            # the channel survived an AMI drop
            resp = await action(
                manager, Action="Getvar", Channel=chan.name, Variable="CHANNEL(endpoint)"
            )
            assert resp.Value == "zalice"

            await ami.restart(down_for=0.5)
            assert ami.port == port
            await asyncio.wait_for(logins.get(), 5)
            assert ami.logins == 3
            # Asterisk restarted: the channel is gone
            resp = await action(
                manager, Action="Getvar", Channel=chan.name, Variable="CHANNEL(endpoint)"
            )
            assert resp.response == "Error" and resp.Message == "No such channel"
            assert not chan.alive and ami.live_channels == []
            # and events flow on the new connection
            ami.new_call(rtp_port=30002)
            await events.wait(lambda e: e.event == "Newchannel" and e.Channel != chan.name)
        finally:
            manager.close()
            await ami.close()

    run(scenario())


# --- raw socket: what the capture does not show -----------------------------------------------
class Raw:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        raw = cls(reader, writer)
        assert await asyncio.wait_for(reader.readuntil(b"\r\n"), 5) == (
            b"Asterisk Call Manager/11.0.0\r\n"
        )
        return raw

    def send(self, *lines: str) -> None:
        self.writer.write("".join(f"{line}\r\n" for line in lines).encode() + b"\r\n")

    async def read(self) -> list[tuple[str, str]]:
        data = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        return parse_fields(data)[:-1]

    async def login(self, events: str = "on") -> None:
        self.send("Action: Login", "Username: ctl", "Secret: ctlpass", f"Events: {events}")
        assert (await self.read())[0] == ("Response", "Success")
        if events == "on":
            assert (await self.read())[0] == ("Event", "FullyBooted")
            assert (await self.read())[0] == ("Event", "SuccessfulAuth")

    async def closed(self) -> bool:
        return await asyncio.wait_for(self.reader.read(), 5) == b""

    def close(self) -> None:
        self.writer.close()


def with_fake(body: Callable[[FakeAmi, Raw], Awaitable[None]]) -> None:
    async def scenario() -> None:
        ami = FakeAmi()
        port = await ami.start()
        raw = await Raw.connect(port)
        try:
            await body(ami, raw)
        finally:
            raw.close()
            await ami.close()

    run(scenario())


def test_wrong_secret_is_refused_and_closed() -> None:
    async def body(ami: FakeAmi, raw: Raw) -> None:
        raw.send("Action: Login", "ActionID: 7", "Username: ctl", "Secret: nope")
        assert await raw.read() == [
            ("Response", "Error"),
            ("ActionID", "7"),
            ("Message", "Authentication failed"),
        ]
        assert await raw.closed()
        assert ami.logins == 0

    with_fake(body)


def test_before_login_and_malformed_input() -> None:
    async def body(ami: FakeAmi, raw: Raw) -> None:
        raw.send("Action: Ping", "ActionID: a1")
        assert await raw.read() == [
            ("Response", "Error"),
            ("ActionID", "a1"),
            ("Message", "Permission denied"),
        ]
        await raw.login()
        # lines without a colon are kept but never match a header
        raw.send("garbage without colon", "Action: Ping", "ActionID: a2", "more garbage")
        reply = await raw.read()
        assert reply[:3] == [("Response", "Success"), ("ActionID", "a2"), ("Ping", "Pong")]
        assert re.fullmatch(r"\d+\.\d{6}", dict(reply)["Timestamp"])
        raw.send("just garbage", "ActionID: a3")
        assert await raw.read() == [
            ("Response", "Error"),
            ("ActionID", "a3"),
            ("Message", "Missing action in request"),
        ]
        raw.writer.write(b"\r\n")  # an empty message
        assert await raw.read() == [("Response", "Error"), ("Message", "Missing action in request")]
        raw.send("Action: Frobnicate", "ActionID: a4")
        assert await raw.read() == [
            ("Response", "Error"),
            ("ActionID", "a4"),
            (
                "Message",
                "Invalid/unknown command: Frobnicate. "
                "Use Action: ListCommands to show available commands.",
            ),
        ]
        # bare LF line ends are accepted too; header names are case-insensitive
        raw.writer.write(b"action: ping\nactionid: a5\n\n")
        assert (await raw.read())[:2] == [("Response", "Success"), ("ActionID", "a5")]
        raw.send("Action: Command", "ActionID: a6", "Command: core frob")
        assert await raw.read() == [
            ("Response", "Error"),
            ("ActionID", "a6"),
            ("Message", "Command output follows"),
            (
                "Output",
                "No such command 'core frob' (type 'core show help core' "
                "for other possible commands)",
            ),
        ]
        await ami.send_raw(b"Garbage from the server\r\n\r\n")
        assert await raw.read() == [("Garbage from the server", "")]
        raw.send("Action: Logoff", "ActionID: a7")
        assert await raw.read() == [
            ("Response", "Goodbye"),
            ("ActionID", "a7"),
            ("Message", "Thanks for all the fish."),
        ]
        assert await raw.closed()
        assert [{k.lower(): v for k, v in a.items()}.get("actionid") for a in ami.actions] == [
            "a1",
            None,  # Raw.login()
            "a2",
            "a4",
            "a5",
            "a6",
            "a7",
        ]

    with_fake(body)


def test_events_off_and_category_masks() -> None:
    async def scenario() -> None:
        ami = FakeAmi()
        port = await ami.start()
        quiet, users, loud = [await Raw.connect(port) for _ in range(3)]
        try:
            await quiet.login("off")
            users.send("Action: Login", "Username: ctl", "Secret: ctlpass", "Events: user")
            assert (await users.read())[0] == ("Response", "Success")  # no FullyBooted
            await loud.login()
            chan = ami.new_call(rtp_port=40000)
            await chan.user_event("Hello", Key="v")
            assert [k for k, _ in (await loud.read())[:2]] == ["Event", "Privilege"]
            assert dict(await loud.read())["Event"] == "VarSet"  # SIPDOMAIN
            assert dict(await loud.read())["Application"] == "UserEvent"
            assert dict(await loud.read())["UserEvent"] == "Hello"
            assert dict(await users.read())["UserEvent"] == "Hello"
            quiet.send("Action: Ping", "ActionID: q")
            assert (await quiet.read())[1] == ("ActionID", "q")  # nothing queued before it
            loud.send("Action: Events", "ActionID: e", "EventMask: off")
            assert await loud.read() == [
                ("Response", "Success"),
                ("ActionID", "e"),
                ("Events", "Off"),
            ]
        finally:
            for raw in (quiet, users, loud):
                raw.close()
            await ami.close()

    run(scenario())


def test_actions_on_channels() -> None:
    async def body(ami: FakeAmi, raw: Raw) -> None:
        await raw.login()
        chan = ami.new_call(rtp_port=20100, endpoint="zcarol")
        assert dict(await raw.read())["Event"] == "Newchannel"
        assert dict(await raw.read())["Variable"] == "SIPDOMAIN"

        # Setvar: response first, then VarSet (values C-escaped)
        raw.send("Action: Setvar", f"Channel: {chan.name}", "Variable: X", 'Value: a"b')
        assert await raw.read() == [("Response", "Success"), ("Message", "Variable Set")]
        varset = dict(await raw.read())
        assert (varset["Event"], varset["Value"]) == ("VarSet", 'a\\"b')
        assert chan.variables["X"] == 'a"b'
        raw.send("Action: Setvar", "Channel: PJSIP/ghost-00000000", "Variable: X", "Value: 1")
        assert dict(await raw.read())["Message"] == "No such channel"
        raw.send("Action: Setvar", "Channel: " + chan.name)
        assert dict(await raw.read())["Message"] == "No variable specified"

        # globals: Setvar/Getvar without Channel
        raw.send("Action: Setvar", "Variable: G", "Value: 42")
        assert dict(await raw.read())["Message"] == "Variable Set"
        assert dict(await raw.read())["Channel"] == "none"
        raw.send("Action: Getvar", "Variable: G")
        assert await raw.read() == [("Response", "Success"), ("Variable", "G"), ("Value", "42")]
        raw.send("Action: Getvar", f"Channel: {chan.name}", "Variable: CHANNEL(rtp,src)")
        assert (await raw.read())[-1] == ("Value", "")

        # UserEvent action: ack, then the event without channel fields (ActionID included)
        raw.send("Action: UserEvent", "ActionID: u1", "UserEvent: Ping2", "Foo: bar")
        assert await raw.read() == [
            ("Response", "Success"),
            ("ActionID", "u1"),
            ("Message", "Event Sent"),
        ]
        assert await raw.read() == [
            ("Event", "UserEvent"),
            ("Privilege", "user,all"),
            ("UserEvent", "Ping2"),
            ("ActionID", "u1"),
            ("Foo", "bar"),
        ]

        # Hangup action: no HangupRequest; the PBX ends (SoftHangupRequest 16), then Hangup
        raw.send("Action: Hangup", "ActionID: h1", f"Channel: {chan.name}", "Cause: 17")
        assert await raw.read() == [
            ("Response", "Success"),
            ("ActionID", "h1"),
            ("Message", "Channel Hungup"),
        ]
        soft = dict(await raw.read())
        assert (soft["Event"], soft["Cause"]) == ("SoftHangupRequest", "16")
        hangup = await raw.read()
        assert hangup[0] == ("Event", "Hangup")
        assert hangup[-2:] == [("Cause", "17"), ("Cause-txt", "User busy")]
        assert not chan.alive and chan.hangup_cause == 17
        raw.send("Action: Hangup", "ActionID: h2", f"Channel: {chan.name}")
        assert dict(await raw.read())["Message"] == "No such channel"

        # Hangup by regex: a list of ChannelHungup
        a = ami.new_call(rtp_port=20200, endpoint="zdave")
        b = ami.new_call(rtp_port=20202, endpoint="zerin")
        for _ in range(4):
            await raw.read()
        raw.send("Action: Hangup", "ActionID: h3", "Channel: /^PJSIP/zd/")
        assert await raw.read() == [
            ("Response", "Success"),
            ("ActionID", "h3"),
            ("EventList", "start"),
            ("Message", "Channels hung up will follow"),
        ]
        assert await raw.read() == [
            ("Event", "ChannelHungup"),
            ("Channel", a.name),
            ("ActionID", "h3"),
        ]
        done = await raw.read()
        assert done[0] == ("Event", "ChannelsHungupListComplete") and done[-1] == ("ListItems", "1")
        assert dict(await raw.read())["Event"] == "SoftHangupRequest"
        assert dict(await raw.read())["Cause"] == "0"
        assert not a.alive and b.alive

        # DBDel
        raw.send("Action: DBDel", "Family: f", "Key: k")
        assert dict(await raw.read())["Message"] == "Database entry could not be deleted"
        ami.astdb[("f", "k")] = "v"
        raw.send("Action: Getvar", "Variable: DB(f/k)")
        assert (await raw.read())[-1] == ("Value", "v")
        raw.send("Action: DBDel", "Family: f", "Key: k")
        assert dict(await raw.read())["Message"] == "Key deleted successfully"

    with_fake(body)


def test_channel_hangup_sequence_matches_capture() -> None:
    async def body(ami: FakeAmi, raw: Raw) -> None:
        await raw.login()
        chan = ami.new_call(rtp_port=20300)
        await chan.answer()
        for _ in range(5):  # Newchannel, VarSet, Newexten, Newstate, DeviceStateChange
            await raw.read()
        await chan.hangup()
        got = [await raw.read() for _ in range(4)]
        assert [dict(m)["Event"] for m in got] == [
            "HangupRequest",
            "SoftHangupRequest",
            "Hangup",
            "DeviceStateChange",
        ]
        assert [k for k, _ in got[0]][2:] == [k for k, _ in chan.state_fields()]
        assert got[1][-1] == ("Cause", "16")
        assert got[2][-2:] == [("Cause", "0"), ("Cause-txt", "Unknown")]
        assert got[3] == [
            ("Event", "DeviceStateChange"),
            ("Privilege", "call,all"),
            ("Device", "PJSIP/zalice"),
            ("State", "NOT_INUSE"),
        ]
        assert chan.hangup_cause == 0 and not chan.alive
        with pytest.raises(RuntimeError):
            await chan.set_var("X", "1")

    with_fake(body)
