"""A fake Asterisk Manager Interface (AMI) server for tests.

It reproduces what Asterisk 22 puts on the wire, as captured in
``/work/shared/fixtures/asterisk-ami-transcript.txt`` (one call, raw TCP stream) and as
written by Asterisk's ``main/manager.c`` for the actions that capture does not show:

* banner ``Asterisk Call Manager/11.0.0``; CRLF line ends; a blank line ends a message;
* responses are written the way ``astman_send_response_full`` / ``astman_append`` write
  them, one TCP write per call, so ``Getvar`` is two writes (``Response``+``ActionID``,
  then ``Variable``/``Value``/blank line), ``Command`` is one write per output line, the
  list actions (``DBGet``, ``CoreShowChannels``) are a ``Response`` with ``EventList:
  start``, one event per item and a ``...Complete`` event;
* events carry ``Privilege: <category>,all`` and the channel snapshot fields in
  Asterisk's order, and go to every logged-in session whose event mask has their
  category (``Events: on`` at login = all of them);
* an action-caused event (``VarSet`` for ``Setvar``, the hangup events for ``Hangup``,
  ``UserEvent`` for ``UserEvent``) is written after the action's response, like the
  transcript shows.

Every write is logged per connection (``FakeAmi.connections[i].sent``) so tests can compare
the fake's TCP segments with the transcript's.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
import uuid
from collections.abc import Awaitable, Callable

Fields = list[tuple[str, str]]
Handler = Callable[["AmiSession", list[str]], Awaitable[bool]]

AMI_VERSION = "11.0.0"
BANNER = f"Asterisk Call Manager/{AMI_VERSION}\r\n".encode()
#: ``core show version`` output of the Asterisk the transcript was captured from.
VERSION_LINE = (
    "Asterisk 22.10.1 built by root @ vm on a x86_64 running Linux on 2026-11-28 17:08:22 UTC"
)
#: ``AST_SOFTHANGUP_APPUNLOAD``: the "Cause" a ``SoftHangupRequest`` carries when the PBX
#: thread of a channel ends (``pbx.c``). It is a soft-hangup flag, not a Q.850 cause.
SOFTHANGUP_APPUNLOAD = 16

_MAX_LINE = 1024  # manager.c: inbuf[1025]
_MAX_HEADERS = 128  # manager.c: AST_MAX_MANHEADERS
_READ_LIMIT = 1 << 20
_BLANKS = "".join(chr(c) for c in range(33))  # ast_skip_blanks()

_EVENT_CATEGORIES = (
    "system",
    "call",
    "log",
    "verbose",
    "command",
    "agent",
    "user",
    "config",
    "dtmf",
    "reporting",
    "cdr",
    "dialplan",
    "originate",
    "agi",
    "cc",
    "aoc",
    "test",
    "security",
    "message",
)
ALL_EVENTS = frozenset(_EVENT_CATEGORIES)
_TRUE = {"yes", "true", "y", "t", "1", "on"}
_FALSE = {"no", "false", "n", "f", "0", "off"}

_STATE_DESC = {
    0: "Down",
    1: "Rsrvd",
    2: "OffHook",
    3: "Dialing",
    4: "Ring",
    5: "Ringing",
    6: "Up",
    7: "Busy",
    8: "Dialing Offhook",
    9: "Pre-ring",
}

# ast_cause2str() (main/channel.c); anything else is "Unknown".
_CAUSE_TXT = {
    1: "Unallocated (unassigned) number",
    2: "No route to specified transmit network",
    3: "No route to destination",
    5: "Misdialed trunk prefix",
    6: "Channel unacceptable",
    7: "Call awarded and being delivered in an established channel",
    8: "Pre-empted",
    14: "Number ported elsewhere",
    16: "Normal Clearing",
    17: "User busy",
    18: "No user responding",
    19: "User alerting, no answer",
    20: "Subscriber absent",
    21: "Call Rejected",
    22: "Number changed",
    23: "Redirected to new destination",
    26: "Answered elsewhere",
    27: "Destination out of order",
    28: "Invalid number format",
    29: "Facility rejected",
    30: "Response to STATus ENQuiry",
    31: "Normal, unspecified",
    34: "Circuit/channel congestion",
    38: "Network out of order",
    41: "Temporary failure",
    42: "Switching equipment congestion",
    43: "Access information discarded",
    44: "Requested channel not available",
    50: "Facility not subscribed",
    52: "Outgoing call barred",
    54: "Incoming call barred",
    57: "Bearer capability not authorized",
    58: "Bearer capability not available",
    65: "Bearer capability not implemented",
    66: "Channel not implemented",
    69: "Facility not implemented",
    81: "Invalid call reference value",
    88: "Incompatible destination",
    95: "Invalid message unspecified",
    96: "Mandatory information element is missing",
    97: "Message type nonexist.",
    98: "Wrong message",
    99: "Info. element nonexist or not implemented",
    100: "Invalid information element contents",
    101: "Message not compatible with call state",
    102: "Recover on timer expiry",
    103: "Mandatory IE length error",
    111: "Protocol error, unspecified",
    127: "Interworking, unspecified",
}

# ast_escape_c() as applied to VarSet values.
_C_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    "\\": "\\\\",
    "'": "\\'",
    '"': '\\"',
    "?": "\\?",
}


def cause_text(cause: int) -> str:
    """``ast_cause2str``: the ``Cause-txt`` of a Q.850 cause."""
    return _CAUSE_TXT.get(cause, "Unknown")


def format_message(fields: Fields, *, end: bool = True) -> bytes:
    """``Key: value`` lines, CRLF-terminated, plus the blank line that ends a message."""
    text = "".join(f"{k}: {v}\r\n" for k, v in fields)
    return (text + ("\r\n" if end else "")).encode()


def get_header(headers: list[str], name: str, *, skip_empty: bool = False) -> str:
    """``astman_get_header``: first ``name:`` line (case-insensitive), leading blanks skipped."""
    n = len(name)
    for line in headers:
        if line[:n].lower() == name.lower() and line[n : n + 1] == ":":
            value = line[n + 1 :].lstrip(_BLANKS)
            if skip_empty and not value:
                continue
            return value
    return ""


def _event_mask(value: str) -> frozenset[str]:
    """``strings_to_mask`` for the ``Events:`` header of Login / the Events action."""
    v = value.strip()
    if not v:
        return ALL_EVENTS
    if v.isdigit():
        return ALL_EVENTS if int(v) else frozenset()  # numeric masks: all-or-nothing here
    if v.lower() in _FALSE:
        return frozenset()
    if v.lower() in _TRUE:
        return ALL_EVENTS
    words = {w.strip().lower() for w in v.split(",")}
    if "all" in words:
        return ALL_EVENTS
    return frozenset(words & ALL_EVENTS)


def _now_tv(t: float | None = None) -> str:
    t = time.time() if t is None else t
    ms = int((t % 1) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{ms:03d}+0000"


def _ip_port(addr: object) -> tuple[str, int]:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return str(addr[0]), int(addr[1])
    return "0.0.0.0", 0


class AmiSession:
    """One client connection (``mansession``). ``sent`` logs every TCP write in order."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.index = index
        self.sent: list[bytes] = []
        self.received = bytearray()
        self.authenticated = False
        self.username = ""
        self.events: frozenset[str] = ALL_EVENTS
        self.started = time.time()
        self.session_id = f"0x{id(self):x}"
        self.local = _ip_port(writer.get_extra_info("sockname"))
        self.remote = _ip_port(writer.get_extra_info("peername"))

    @property
    def open(self) -> bool:
        return not self.writer.is_closing()

    def write(self, data: bytes) -> None:
        if self.writer.is_closing():
            return
        self.sent.append(data)
        self.writer.write(data)


class FakeChannel:
    """A PJSIP channel in the fake Asterisk. Its coroutines emit the events the real one does."""

    def __init__(
        self,
        ami: FakeAmi,
        *,
        name: str,
        uniqueid: str,
        endpoint: str,
        exten: str,
        context: str,
        rtp_port: int,
        rtp_src_ip: str,
        rtp_dest_ip: str,
        remote_addr: str,
        call_id: str,
    ) -> None:
        self._ami = ami
        self.name = name
        self.uniqueid = uniqueid
        self.linkedid = uniqueid
        self.endpoint = endpoint
        self.exten = exten
        self.context = context
        self.rtp_port = rtp_port
        self.rtp_src_ip = rtp_src_ip
        self.rtp_dest_ip = rtp_dest_ip
        self.remote_addr = remote_addr
        self.call_id = call_id
        self.variables: dict[str, str] = {}
        self.alive = True
        self.hangup_cause: int | None = None
        self.state = 4  # AST_STATE_RING: an incoming call entering the dialplan
        self.priority = 1
        #: priority the next dialplan application runs at (tests may set it to model a Goto)
        self.next_priority = 1
        self.application = ""
        self.app_data = ""
        #: chan_pjsip has an active media state (after Progress()/Answer()); before that the
        #: CHANNEL(rtp,...) / CHANNEL(rtcp,...) reads return nothing.
        self.media_active = False
        self.in_use = False
        self.rtcp_rxcount = 0
        #: A video call: chan_pjsip's video RTP port and codec (None: audio only).
        self.video_port: int | None = None
        self.video_format = "vp8"
        self.created = time.monotonic()
        self._changed = asyncio.Event()

    # --- what the AMI shows of the channel -------------------------------------------------
    def state_fields(self) -> Fields:
        """``ast_manager_build_channel_state_string``."""
        return [
            ("Channel", self.name),
            ("ChannelState", str(self.state)),
            ("ChannelStateDesc", _STATE_DESC.get(self.state, "Unknown")),
            ("CallerIDNum", self.endpoint),
            ("CallerIDName", "<unknown>"),
            ("ConnectedLineNum", "<unknown>"),
            ("ConnectedLineName", "<unknown>"),
            ("Language", "en"),
            ("AccountCode", ""),
            ("Context", self.context),
            ("Exten", self.exten),
            ("Priority", str(self.priority)),
            ("Uniqueid", self.uniqueid),
            ("Linkedid", self.linkedid),
        ]

    def _emit(self, event: str, category: str, extra: Fields | None = None) -> None:
        self._ami.emit(event, category, [*self.state_fields(), *(extra or [])])

    def _check_alive(self) -> None:
        if not self.alive:
            raise RuntimeError(f"{self.name} is gone")

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def send_media_to(self, ip: str) -> None:
        """Asterisk's symmetric RTP moved where it sends (``CHANNEL(rtp,dest)``): strict
        RTP learned a new source from a few sequential packets."""
        self.rtp_dest_ip = ip
        self._wake()

    def channel_function(self, args: str) -> str:
        """``CHANNEL(args)`` as chan_pjsip / the core answer it ('' = read failed)."""
        parts = [p.strip().lower() for p in args.split(",")]
        key = ",".join(parts[:2])
        if key in ("rtp,src", "rtp,dest") and len(parts) > 2 and parts[2] != "audio":
            # chan_pjsip: "Channel %s has no video media/RTP session" -> read fails
            if parts[2] != "video" or self.video_port is None or not self.media_active:
                return ""
            ip = self.rtp_src_ip if key == "rtp,src" else self.rtp_dest_ip
            return f"{ip}:{self.video_port}"
        if key == "videonativeformat":  # Asterisk 22.10.1 on an audio-only call: "(nothing)"
            return self.video_format if self.video_port is not None else "(nothing)"
        media = {
            "rtp,src": f"{self.rtp_src_ip}:{self.rtp_port}",
            "rtp,dest": f"{self.rtp_dest_ip}:{self.rtp_port}",
            "rtcp,rxcount": str(self.rtcp_rxcount),
        }
        if key in media:
            return media[key] if self.media_active else ""
        simple = {
            "endpoint": self.endpoint,
            "pjsip,remote_addr": self.remote_addr,
            "pjsip,call-id": self.call_id,
            "name": self.name,
            "uniqueid": self.uniqueid,
            "linkedid": self.linkedid,
            "state": _STATE_DESC.get(self.state, "Unknown"),
            "channeltype": "PJSIP",
            "language": "en",
            "context": self.context,
            "exten": self.exten,
            "priority": str(self.priority),
        }
        return simple.get(key, simple.get(parts[0], ""))

    def read_variable(self, name: str) -> str | None:
        if name in self.variables:
            return self.variables[name]
        for k, v in self.variables.items():
            if k.lstrip("_") == name:
                return v
        builtins = {
            "CHANNEL": self.name,
            "UNIQUEID": self.uniqueid,
            "EXTEN": self.exten,
            "CONTEXT": self.context,
            "PRIORITY": str(self.priority),
            "HANGUPCAUSE": "" if self.hangup_cause is None else str(self.hangup_cause),
        }
        return builtins.get(name)

    # --- the dialplan / the phone ----------------------------------------------------------
    async def exec_app(self, application: str, app_data: str = "") -> None:
        """The dialplan runs an application at ``next_priority``: ``Newexten``."""
        self._check_alive()
        self.priority = self.next_priority
        self.next_priority += 1
        self.application, self.app_data = application, app_data
        self._emit(
            "Newexten",
            "dialplan",
            [("Extension", self.exten), ("Application", application), ("AppData", app_data)],
        )

    async def progress(self) -> None:
        """``Progress()``: 183 with SDP; from now on CHANNEL(rtp,src) has the media address.

        chan_pjsip does not change the channel state for progress, so there is no
        ``Newstate`` (the state stays Ring); it does refresh the endpoint's device state.
        """
        await self.exec_app("Progress")
        self.media_active = True
        self.in_use = True
        self._ami._update_device(self.endpoint)

    async def answer(self) -> None:
        """``Answer()``: Newexten, Newstate Up, DeviceStateChange INUSE (transcript order)."""
        await self.exec_app("Answer")
        self.media_active = True
        if self.state != 6:
            self.state = 6
            self._emit("Newstate", "call")
        self.in_use = True
        self._ami._update_device(self.endpoint)

    async def user_event(self, name: str, **headers: str) -> None:
        """``UserEvent(name,Key: value,...)``: Newexten for the application, then UserEvent."""
        app_data = ",".join([name, *(f"{k}: {v}" for k, v in headers.items())])
        await self.exec_app("UserEvent", app_data)
        self._emit("UserEvent", "user", [("UserEvent", name), *headers.items()])

    async def set_var(self, name: str, value: str) -> None:
        """The dialplan (or the channel driver) sets a variable: store it, emit VarSet."""
        self._check_alive()
        self._store(name, value)

    def _store(self, name: str, value: str) -> None:
        self.variables[name] = value
        escaped = "".join(_C_ESCAPES.get(c, c) for c in value)
        self._emit("VarSet", "dialplan", [("Variable", name), ("Value", escaped)])
        self._wake()

    async def wait_for_var(
        self, name: str, predicate: Callable[[str | None], bool], timeout: float
    ) -> str | None:
        """``WaitForCondition``: the value once ``predicate`` holds, None on timeout/hangup."""
        self._check_alive()
        await self.exec_app("WaitForCondition", f"#,#[#{{{name}}}],{timeout:g},0.05")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = self.variables.get(name)
            if predicate(value):
                return value
            remaining = deadline - loop.time()
            if not self.alive or remaining <= 0:
                return None
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                return None

    async def hangup(self, cause: int = SOFTHANGUP_APPUNLOAD, *, q850: int = 0) -> None:
        """The phone hangs up (BYE), as in the transcript.

        Emits HangupRequest, SoftHangupRequest (``Cause: cause``; 16 in the transcript,
        which is Asterisk's AST_SOFTHANGUP_APPUNLOAD flag), Hangup (``Cause: q850`` with
        its ``Cause-txt``; 0/Unknown for a plain BYE, as in the transcript) and
        DeviceStateChange NOT_INUSE. ``hangup_cause`` becomes ``q850``.
        """
        self.terminate(request=True, soft_cause=cause, q850=q850)

    def terminate(self, *, request: bool, soft_cause: int, q850: int) -> None:
        if not self.alive:
            return
        if request:  # ast_queue_hangup(): Cause only when the channel has a hangupcause
            self._emit("HangupRequest", "call", [("Cause", str(q850))] if q850 else [])
        self._emit("SoftHangupRequest", "call", [("Cause", str(soft_cause))])
        self.alive = False
        self.hangup_cause = q850
        self._emit("Hangup", "call", [("Cause", str(q850)), ("Cause-txt", cause_text(q850))])
        self._ami._channel_gone(self)
        self._wake()


class FakeAmi:
    """The fake Asterisk: an AMI TCP server plus the channels it reports on."""

    def __init__(
        self,
        *,
        username: str = "ctl",
        secret: str = "ctlpass",
        host: str = "127.0.0.1",
        auth_fail_delay: float = 0.0,
    ) -> None:
        self.username = username
        self.secret = secret
        self.host = host
        #: Asterisk sleeps 1 s before answering a failed Login; 0 keeps tests fast.
        self.auth_fail_delay = auth_fail_delay
        self.port = 0
        self.logins = 0
        self.actions: list[dict[str, str]] = []
        #: every connection ever accepted, in order (with its write log)
        self.connections: list[AmiSession] = []
        self.globals: dict[str, str] = {}
        self.astdb: dict[tuple[str, str], str] = {}
        #: sequence number of the next channel name (``PJSIP/<endpoint>-%08x``)
        self.next_channel_seq = 0
        self._next_uid_seq = 0
        self._server: asyncio.Server | None = None
        self._sessions: set[AmiSession] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._live: dict[str, FakeChannel] = {}
        self._all: dict[str, FakeChannel] = {}
        #: Asterisk's bridges (BridgeUniqueid -> the Uniqueids in it), for BridgeList and
        #: BridgeInfo (fixtures/resync-bridges-ami.json: Asterisk 22.10.1's answers).
        self.bridges: dict[str, list[str]] = {}
        self._devices: dict[str, str] = {}
        self._boot = time.time()
        self._login_event = asyncio.Event()
        self._handlers: dict[str, Handler] = {
            "login": self._login,
            "logoff": self._logoff,
            "ping": self._ping,
            "events": self._events,
            "getvar": self._getvar,
            "setvar": self._setvar,
            "hangup": self._hangup,
            "userevent": self._userevent,
            "dbget": self._dbget,
            "dbput": self._dbput,
            "dbdel": self._dbdel,
            "coreshowchannels": self._coreshowchannels,
            "bridgelist": self._bridgelist,
            "bridgeinfo": self._bridgeinfo,
            "command": self._command,
        }

    # --- server lifecycle ------------------------------------------------------------------
    async def start(self) -> int:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=_READ_LIMIT
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._boot = time.time()
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self.drop_connections()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def drop_connections(self) -> None:
        """Abruptly close every client connection (RST); the server keeps listening."""
        for session in list(self._sessions):
            session.writer.transport.abort()
        tasks = list(self._tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    async def restart(self, down_for: float = 0.5) -> None:
        """Asterisk restarts: connections dropped, nothing listens for ``down_for`` seconds,
        then it listens again on the same port. Channels and globals are lost; AstDB stays."""
        if self._server is not None:
            self._server.close()
        await self.drop_connections()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        for chan in list(self._live.values()):
            chan.alive = False
            chan._wake()
        self._live.clear()
        self._devices.clear()
        self.globals.clear()
        await asyncio.sleep(down_for)
        await self.start()

    async def wait_for_logins(self, count: int, timeout: float = 5.0) -> None:
        """Wait until ``logins >= count`` (TimeoutError otherwise)."""

        async def wait() -> None:
            while self.logins < count:
                event = self._login_event
                await event.wait()

        await asyncio.wait_for(wait(), timeout)

    # --- channels --------------------------------------------------------------------------
    def channel(self, uniqueid: str) -> FakeChannel:
        """A channel (alive or not) by uniqueid (or name)."""
        if uniqueid in self._all:
            return self._all[uniqueid]
        for chan in self._all.values():
            if chan.name == uniqueid:
                return chan
        raise KeyError(uniqueid)

    @property
    def live_channels(self) -> list[FakeChannel]:
        return list(self._live.values())

    def new_call(
        self,
        *,
        endpoint: str = "zalice",
        exten: str = "600",
        context: str = "from-phones",
        rtp_port: int,
        rtp_src_ip: str = "127.0.0.1",
        remote_addr: str = "127.0.10.3:5070",
        uniqueid: str | None = None,
        rtp_dest_ip: str = "127.0.10.2",
        call_id: str | None = None,
        sip_domain: str = "127.0.10.1",
        linkedid: str | None = None,
    ) -> FakeChannel:
        """An incoming PJSIP call enters the dialplan: Newchannel, then chan_pjsip's
        ``VarSet SIPDOMAIN`` (as in the transcript)."""
        if uniqueid is None:
            uniqueid = f"{int(self._boot)}.{self._next_uid_seq}"
            self._next_uid_seq += 1
        name = f"PJSIP/{endpoint}-{self.next_channel_seq:08x}"
        self.next_channel_seq += 1
        if call_id is None:
            call_id = f"{uuid.uuid4().hex}@{remote_addr.rsplit(':', 1)[0]}"
        chan = FakeChannel(
            self,
            name=name,
            uniqueid=uniqueid,
            endpoint=endpoint,
            exten=exten,
            context=context,
            rtp_port=rtp_port,
            rtp_src_ip=rtp_src_ip,
            rtp_dest_ip=rtp_dest_ip,
            remote_addr=remote_addr,
            call_id=call_id,
        )
        if linkedid is not None:  # a Dial()ed leg inherits the caller's Linkedid
            chan.linkedid = linkedid
        self._live[uniqueid] = chan
        self._all[uniqueid] = chan
        chan._emit("Newchannel", "call")
        chan._store("SIPDOMAIN", sip_domain)
        return chan

    def _find_live(self, name_or_uid: str) -> FakeChannel | None:
        """``ast_channel_get_by_name``: channel name (case-insensitive) or uniqueid."""
        for chan in self._live.values():
            if chan.name.lower() == name_or_uid.lower():
                return chan
        return self._live.get(name_or_uid)

    def _channel_gone(self, chan: FakeChannel) -> None:
        self._live.pop(chan.uniqueid, None)
        self._update_device(chan.endpoint)

    def _update_device(self, endpoint: str) -> None:
        busy = any(c.in_use for c in self._live.values() if c.endpoint == endpoint)
        state = "INUSE" if busy else "NOT_INUSE"
        if self._devices.get(endpoint, "NOT_INUSE") != state:
            self._devices[endpoint] = state
            self.emit(
                "DeviceStateChange", "call", [("Device", f"PJSIP/{endpoint}"), ("State", state)]
            )

    # --- events ----------------------------------------------------------------------------
    def emit(self, event: str, category: str, fields: Fields) -> None:
        """A manager event to every logged-in session that wants ``category``."""
        self._broadcast(
            category, format_message([("Event", event), ("Privilege", f"{category},all"), *fields])
        )

    def _broadcast(self, category: str, data: bytes) -> None:
        for session in list(self._sessions):
            if session.authenticated and category in session.events:
                session.write(data)

    async def send_raw(self, data: bytes) -> None:
        """Write arbitrary bytes to every connected client (malformed-input tests)."""
        for session in list(self._sessions):
            session.write(data)

    # --- connection handling ---------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session = AmiSession(reader, writer, len(self.connections))
        self.connections.append(session)
        self._sessions.add(session)
        try:
            session.write(BANNER)
            await self._read_messages(session)
        except (ConnectionError, OSError):
            pass
        finally:
            self._sessions.discard(session)
            self._tasks.discard(task)
            if not writer.is_closing():
                writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _read_messages(self, session: AmiSession) -> None:
        """``do_message``: lines up to a blank line make a message. ``\\r\\n`` or ``\\n``
        ends a line; a NUL ends its useful part; over-long lines spoil the message."""
        headers: list[str] = []
        too_long = False
        too_many = False
        while True:
            try:
                raw = await session.reader.readuntil(b"\n")
            except asyncio.IncompleteReadError:
                return  # EOF (a partial last line is dropped)
            except asyncio.LimitOverrunError as exc:
                session.received += await session.reader.readexactly(exc.consumed)
                too_long = True
                continue
            session.received += raw
            body = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
            if len(body) > _MAX_LINE:
                too_long = True
                continue
            line = body.split(b"\0", 1)[0].decode("utf-8", "replace")
            if line:
                if len(headers) < _MAX_HEADERS:
                    headers.append(line)
                else:
                    too_many = True
                continue
            if too_many:
                session.write(
                    self._response(
                        headers, "Error", "Too many lines in message or allocation failure"
                    )
                )
                keep = True
            elif too_long:
                session.write(
                    self._response(headers, "Error", "Failed to parse message: line too long")
                )
                keep = True
            else:
                keep = await self._process(session, headers)
            headers, too_long, too_many = [], False, False
            if not keep:
                return

    async def _process(self, session: AmiSession, headers: list[str]) -> bool:
        """``process_message``; False ends the session."""
        action = get_header(headers, "Action", skip_empty=True)
        if not action:
            session.write(self._response(headers, "Error", "Missing action in request"))
            return True
        record: dict[str, str] = {}
        for line in headers:
            if ":" in line:
                key, value = line.split(":", 1)
                record.setdefault(key, value.lstrip(" \t"))
        self.actions.append(record)
        name = action.lower()
        if not session.authenticated and name not in ("login", "logoff", "challenge"):
            session.write(self._response(headers, "Error", "Permission denied"))
            return True
        handler = self._handlers.get(name)
        if handler is None:
            session.write(
                self._response(
                    headers,
                    "Error",
                    f"Invalid/unknown command: {action}. "
                    "Use Action: ListCommands to show available commands.",
                )
            )
            return True
        return await handler(session, headers)

    # --- response helpers (astman_send_response_full & co) ---------------------------------
    @staticmethod
    def _action_id(headers: list[str]) -> Fields:
        aid = get_header(headers, "ActionID")
        return [("ActionID", aid)] if aid else []

    def _response(
        self,
        headers: list[str],
        response: str,
        message: str | None,
        *,
        listflag: str | None = None,
        more: bool = False,
    ) -> bytes:
        fields: Fields = [("Response", response), *self._action_id(headers)]
        if listflag:
            fields.append(("EventList", listflag))
        if more:
            return format_message(fields, end=False)
        if message is not None:
            fields.append(("Message", message))
        return format_message(fields)

    def _list_complete(self, headers: list[str], event: str, count: int, *, end: bool) -> bytes:
        fields: Fields = [
            ("Event", event),
            *self._action_id(headers),
            ("EventList", "Complete"),
            ("ListItems", str(count)),
        ]
        return format_message(fields, end=end)

    # --- actions ---------------------------------------------------------------------------
    async def _login(self, s: AmiSession, m: list[str]) -> bool:
        if s.authenticated:
            s.write(self._response(m, "Success", "Already authenticated"))
            return True
        user = get_header(m, "Username")
        if user.lower() != self.username.lower() or get_header(m, "Secret") != self.secret:
            if self.auth_fail_delay:
                await asyncio.sleep(self.auth_fail_delay)
            s.write(self._response(m, "Error", "Authentication failed"))
            return False
        s.authenticated = True
        s.username = user
        events = get_header(m, "Events")
        if events:
            s.events = _event_mask(events)
        self.logins += 1
        self._login_event.set()
        self._login_event = asyncio.Event()
        s.write(self._response(m, "Success", "Authentication accepted"))
        now = time.time()
        if "system" in s.events:
            s.write(
                format_message(
                    [
                        ("Event", "FullyBooted"),
                        ("Privilege", "system,all"),
                        ("Uptime", str(int(now - self._boot))),
                        ("LastReload", str(int(now - self._boot))),
                        ("Status", "Fully Booted"),
                    ]
                )
            )
        lip, lport = s.local
        rip, rport = s.remote
        self.emit(
            "SuccessfulAuth",
            "security",
            [
                ("EventTV", _now_tv(now)),
                ("Severity", "Informational"),
                ("Service", "AMI"),
                ("EventVersion", "1"),
                ("AccountID", user),
                ("SessionID", s.session_id),
                ("LocalAddress", f"IPV4/TCP/{lip}/{lport}"),
                ("RemoteAddress", f"IPV4/TCP/{rip}/{rport}"),
                ("UsingPassword", "0"),
                ("SessionTV", _now_tv(s.started)),
            ],
        )
        return True

    async def _logoff(self, s: AmiSession, m: list[str]) -> bool:
        s.write(self._response(m, "Goodbye", "Thanks for all the fish."))
        return False

    async def _ping(self, s: AmiSession, m: list[str]) -> bool:
        # action_ping: three astman_append() calls, three writes
        s.write(b"Response: Success\r\n")
        if self._action_id(m):
            s.write(format_message(self._action_id(m), end=False))
        now = time.time()
        s.write(f"Ping: Pong\r\nTimestamp: {int(now)}.{int((now % 1) * 1e6):06d}\r\n\r\n".encode())
        return True

    async def _events(self, s: AmiSession, m: list[str]) -> bool:
        s.events = _event_mask(get_header(m, "EventMask"))
        state = "On" if s.events else "Off"
        s.write(format_message([("Response", "Success"), *self._action_id(m), ("Events", state)]))
        return True

    def _read_function(self, chan: FakeChannel | None, expr: str) -> str:
        match = re.fullmatch(r"\s*([A-Za-z_][A-Za-z0-9_]*)\((.*)\)\s*", expr, re.S)
        if match is None:
            return ""
        func, args = match.group(1).upper(), match.group(2)
        if func == "GLOBAL":
            return self.globals.get(args, "")
        if func == "DB":
            family, _, key = args.partition("/")
            return self.astdb.get((family, key), "")
        if func == "CHANNEL" and chan is not None:
            return chan.channel_function(args)
        if func == "CALLERID" and chan is not None:
            return {"num": chan.endpoint, "name": "<unknown>"}.get(args.strip().lower(), "")
        return ""

    async def _getvar(self, s: AmiSession, m: list[str]) -> bool:
        name = get_header(m, "Channel")
        var = get_header(m, "Variable")
        if not var:
            s.write(self._response(m, "Error", "No variable specified"))
            return True
        chan = None
        if name:
            chan = self._find_live(name)
            if chan is None:
                s.write(self._response(m, "Error", "No such channel"))
                return True
        if var.endswith(")"):
            value = self._read_function(chan, var)
        else:
            found = chan.read_variable(var) if chan is not None else None
            value = found if found is not None else self.globals.get(var, "")
        s.write(self._response(m, "Success", None, more=True))
        s.write(f"Variable: {var}\r\nValue: {value}\r\n\r\n".encode())
        return True

    async def _setvar(self, s: AmiSession, m: list[str]) -> bool:
        name = get_header(m, "Channel")
        var = get_header(m, "Variable")
        value = get_header(m, "Value")
        if not var:
            s.write(self._response(m, "Error", "No variable specified"))
            return True
        chan = None
        if name:
            chan = self._find_live(name)
            if chan is None:
                s.write(self._response(m, "Error", "No such channel"))
                return True
        s.write(self._response(m, "Success", "Variable Set"))
        if chan is not None:
            chan._store(var, value)
        else:
            self.globals[var] = value
            escaped = "".join(_C_ESCAPES.get(c, c) for c in value)
            self.emit(
                "VarSet",
                "dialplan",
                [("Channel", "none"), ("Uniqueid", "none"), ("Variable", var), ("Value", escaped)],
            )
        return True

    async def _hangup(self, s: AmiSession, m: list[str]) -> bool:
        target = get_header(m, "Channel")
        if not target:
            s.write(self._response(m, "Error", "No channel specified"))
            return True
        cause_hdr = get_header(m, "Cause")
        cause = 0
        if re.fullmatch(r"\s*[+-]?\d+", cause_hdr):
            cause = int(cause_hdr)
            if not 0 <= cause <= 127:
                cause = 0
        if not target.startswith("/"):
            chan = self._find_live(target)
            if chan is None:
                s.write(self._response(m, "Error", "No such channel"))
                return True
            s.write(self._response(m, "Success", "Channel Hungup"))
            # softhangup_withcause: no HangupRequest; the PBX thread ends (SoftHangupRequest
            # APPUNLOAD) and the channel is destroyed with the given cause.
            chan.terminate(request=False, soft_cause=SOFTHANGUP_APPUNLOAD, q850=cause)
            return True
        pattern = target[1:-1] if len(target) > 1 and target.endswith("/") else None
        if pattern is None:
            s.write(
                self._response(m, "Error", "Regex format invalid, Channel param should be /regex/")
            )
            return True
        try:
            regex = re.compile(pattern)
        except re.error:
            s.write(self._response(m, "Error", f"Regex compile failed on: {target}"))
            return True
        s.write(self._response(m, "Success", "Channels hung up will follow", listflag="start"))
        matched = [c for c in self._live.values() if regex.search(c.name)]
        for chan in matched:
            s.write(
                format_message(
                    [("Event", "ChannelHungup"), ("Channel", chan.name), *self._action_id(m)]
                )
            )
        s.write(self._list_complete(m, "ChannelsHungupListComplete", len(matched), end=True))
        for chan in matched:
            chan.terminate(request=False, soft_cause=SOFTHANGUP_APPUNLOAD, q850=cause)
        return True

    async def _userevent(self, s: AmiSession, m: list[str]) -> bool:
        name = get_header(m, "UserEvent")
        body = "".join(
            f"{line}\r\n" for line in m if not line.lower().startswith(("userevent:", "action:"))
        )
        s.write(self._response(m, "Success", "Event Sent"))
        text = f"Event: UserEvent\r\nPrivilege: user,all\r\nUserEvent: {name}\r\n{body}\r\n"
        self._broadcast("user", text.encode())
        return True

    async def _dbget(self, s: AmiSession, m: list[str]) -> bool:
        family, key = get_header(m, "Family"), get_header(m, "Key")
        if not family:
            s.write(self._response(m, "Error", "No family specified."))
            return True
        if not key:
            s.write(self._response(m, "Error", "No key specified."))
            return True
        if (family, key) not in self.astdb:
            s.write(self._response(m, "Error", "Database entry not found"))
            return True
        s.write(self._response(m, "Success", "Result will follow", listflag="start"))
        s.write(
            format_message(
                [
                    ("Event", "DBGetResponse"),
                    ("Family", family),
                    ("Key", key),
                    ("Val", self.astdb[(family, key)]),
                    *self._action_id(m),
                ]
            )
        )
        s.write(self._list_complete(m, "DBGetComplete", 1, end=False))
        s.write(b"\r\n")
        return True

    async def _dbput(self, s: AmiSession, m: list[str]) -> bool:
        family, key = get_header(m, "Family"), get_header(m, "Key")
        if not family:
            s.write(self._response(m, "Error", "No family specified"))
            return True
        if not key:
            s.write(self._response(m, "Error", "No key specified"))
            return True
        self.astdb[(family, key)] = get_header(m, "Val")
        s.write(self._response(m, "Success", "Updated database successfully"))
        return True

    async def _dbdel(self, s: AmiSession, m: list[str]) -> bool:
        family, key = get_header(m, "Family"), get_header(m, "Key")
        if not family:
            s.write(self._response(m, "Error", "No family specified."))
            return True
        if not key:
            s.write(self._response(m, "Error", "No key specified."))
            return True
        if self.astdb.pop((family, key), None) is None:
            s.write(self._response(m, "Error", "Database entry could not be deleted"))
        else:
            s.write(self._response(m, "Success", "Key deleted successfully"))
        return True

    async def _coreshowchannels(self, s: AmiSession, m: list[str]) -> bool:
        s.write(self._response(m, "Success", "Channels will follow", listflag="start"))
        chans = list(self._live.values())
        for chan in chans:
            secs = int(time.monotonic() - chan.created)
            duration = f"{secs // 3600:02d}:{secs % 3600 // 60:02d}:{secs % 60:02d}"
            s.write(
                format_message(
                    [
                        ("Event", "CoreShowChannel"),
                        *self._action_id(m),
                        *chan.state_fields(),
                        ("Application", chan.application),
                        ("ApplicationData", chan.app_data),
                        ("Duration", duration),
                        ("BridgeId", ""),
                    ]
                )
            )
        s.write(self._list_complete(m, "CoreShowChannelsComplete", len(chans), end=True))
        return True

    @staticmethod
    def _bridge_fields(name: str, members: list[str]) -> Fields:
        return [
            ("BridgeUniqueid", name),
            ("BridgeType", "basic"),
            ("BridgeTechnology", "simple_bridge"),
            ("BridgeCreator", "<unknown>"),
            ("BridgeName", "<unknown>"),
            ("BridgeNumChannels", str(len(members))),
            ("BridgeVideoSourceMode", "none"),
        ]

    async def _bridgelist(self, s: AmiSession, m: list[str]) -> bool:
        s.write(self._response(m, "Success", "Bridge listing will follow", listflag="start"))
        for name, members in self.bridges.items():
            fields = [("Event", "BridgeListItem"), *self._action_id(m)]
            s.write(format_message(fields + self._bridge_fields(name, members)))
        s.write(self._list_complete(m, "BridgeListComplete", len(self.bridges), end=True))
        return True

    async def _bridgeinfo(self, s: AmiSession, m: list[str]) -> bool:
        name = get_header(m, "BridgeUniqueid")
        members = self.bridges.get(name)
        if members is None:
            s.write(self._response(m, "Error", f"Bridge {name} not found"))
            return True
        s.write(
            self._response(m, "Success", "Bridge channel listing will follow", listflag="start")
        )
        for uniqueid in members:
            chan = self._live.get(uniqueid)
            if chan is not None:
                fields = [("Event", "BridgeInfoChannel"), *self._action_id(m)]
                s.write(format_message(fields + chan.state_fields()))
        complete = [
            ("Event", "BridgeInfoComplete"),
            *self._action_id(m),
            ("EventList", "Complete"),
            ("ListItems", str(len(members))),
        ]
        s.write(format_message(complete + self._bridge_fields(name, members)))
        return True

    async def _command(self, s: AmiSession, m: list[str]) -> bool:
        cmd = get_header(m, "Command")
        if not cmd:
            s.write(self._response(m, "Error", "No command provided"))
            return True
        words = cmd.split()
        known = {"core show version": [VERSION_LINE]}
        output = known.get(" ".join(words).lower())
        ok = output is not None
        if output is None:
            output = [
                f"No such command '{cmd}' (type 'core show help {words[0] if words else ''}' "
                "for other possible commands)"
            ]
        s.write(self._response(m, "Success" if ok else "Error", None, more=True))
        s.write(b"Message: Command output follows\r\n")
        for line in output:
            s.write(f"Output: {line}\r\n".encode())
        s.write(b"\r\n")
        return True
