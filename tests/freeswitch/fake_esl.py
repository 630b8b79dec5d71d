"""A fake FreeSWITCH inbound Event Socket (``mod_event_socket``) for tests.

It reproduces what FreeSWITCH 1.10.12 puts on the wire, as captured in
``tests/freeswitch/freeswitch-esl-transcript.txt`` (one call, raw TCP stream), and, for what
that capture does not show, what the 1.10.12 sources write (``mod_event_socket.c``,
``switch_event.c``, ``switch_channel.c``, ``switch_loadable_module.c``, ``mod_commands.c``,
``mod_dptools.c``):

* greeting ``Content-Type: auth/request``; every command is a header block ended by a blank
  line (``\\n\\n``; ``\\r`` ignored, leading blank lines skipped); a ``Content-Length``
  header makes the following bytes the command's body;
* ``command/reply`` + ``Reply-Text`` replies (``bgapi`` adds ``Job-UUID``); ``api`` answers
  ``api/response`` + ``Content-Length`` + body; an empty API output is ``-ERR no reply``;
* before ``auth`` every command but ``exit`` is ``-ERR command not found``; a wrong password
  is ``-ERR invalid``, then ``text/disconnect-notice`` and close; no auth within 25 s closes;
* events: ``Content-Length`` + ``Content-Type: text/event-plain`` (or ``-json``), the body is
  ``Name: value`` lines with values URL-encoded by ``switch_url_encode`` (``%XX`` already in a
  value is left alone, empty values never appear), then a blank line, or
  ``Content-Length: n`` + blank line + body for events with a body (``BACKGROUND_JOB``);
* a CUSTOM event's ``Event-Subclass`` header is always first (``switch_event_dup``);
  ``event plain CUSTOM a::b`` only subscribes the listed subclasses; ``ALL`` gets everything;
* ``switch_api_execute`` fires an ``API`` event (``API-Command``, ``API-Command-Argument``)
  for every API call, from ESL ``api``/``bgapi`` and from fs_cli alike, after the command
  ran: events the command fires (a ``uuid_kill``'s ``CHANNEL_HANGUP``) come first, and the
  caller's ``api/response`` comes before all of them on the caller's connection;
* ``sendevent`` events get ``Command`` + the client's headers + ``Event-UUID`` and then the
  delivery headers; one whose ``Unique-ID`` names a live channel goes to that channel
  (``FakeFsChannel.received_events``) and is not broadcast;
* channel variables keep FreeSWITCH's order: setting a variable moves it to the end, setting
  it to nothing deletes it.

Only the event types a call here produces are emitted (CHANNEL_CREATE, CHANNEL_PROGRESS_MEDIA,
CHANNEL_ANSWER, CHANNEL_HANGUP, CHANNEL_HANGUP_COMPLETE, CUSTOM, API, BACKGROUND_JOB); no
CHANNEL_STATE/EXECUTE/DESTROY, no log lines; ``event xml`` is not modelled (plain is sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import random
import re
import time
import uuid as uuid_mod
from collections.abc import Callable

Header = tuple[str, str]


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


HOSTNAME = "vm"
IPV4 = "192.0.2.2"
IPV6 = "fd00::2"
VERSION_HUMAN = "1.10.12 -release 64bit"
DISCONNECT_MESSAGE = "Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
SHUTDOWN_MESSAGE = "The system is being shut down.\n"
AUTH_TIMEOUT = 25.0  # read_packet(listener, &event, 25) while not authenticated
SIP_PORT_PHONE = 5070
SIP_PORT_FS = 5090

# switch_event.c EVENT_NAMES, in event-id order (CUSTOM is id 0, ALL the last).
EVENT_NAMES = _words(
    "CUSTOM CLONE CHANNEL_CREATE CHANNEL_DESTROY CHANNEL_STATE CHANNEL_CALLSTATE CHANNEL_ANSWER "
    "CHANNEL_HANGUP CHANNEL_HANGUP_COMPLETE CHANNEL_EXECUTE CHANNEL_EXECUTE_COMPLETE "
    "CHANNEL_HOLD CHANNEL_UNHOLD CHANNEL_BRIDGE CHANNEL_UNBRIDGE CHANNEL_PROGRESS "
    "CHANNEL_PROGRESS_MEDIA CHANNEL_OUTGOING CHANNEL_PARK CHANNEL_UNPARK CHANNEL_APPLICATION "
    "CHANNEL_ORIGINATE CHANNEL_UUID API LOG INBOUND_CHAN OUTBOUND_CHAN STARTUP SHUTDOWN PUBLISH "
    "UNPUBLISH TALK NOTALK SESSION_CRASH MODULE_LOAD MODULE_UNLOAD DTMF MESSAGE PRESENCE_IN "
    "NOTIFY_IN PRESENCE_OUT PRESENCE_PROBE MESSAGE_WAITING MESSAGE_QUERY ROSTER CODEC "
    "BACKGROUND_JOB DETECTED_SPEECH DETECTED_TONE PRIVATE_COMMAND HEARTBEAT TRAP ADD_SCHEDULE "
    "DEL_SCHEDULE EXE_SCHEDULE RE_SCHEDULE RELOADXML NOTIFY PHONE_FEATURE "
    "PHONE_FEATURE_SUBSCRIBE SEND_MESSAGE RECV_MESSAGE REQUEST_PARAMS CHANNEL_DATA GENERAL "
    "COMMAND SESSION_HEARTBEAT CLIENT_DISCONNECTED SERVER_DISCONNECTED SEND_INFO RECV_INFO "
    "RECV_RTCP_MESSAGE SEND_RTCP_MESSAGE CALL_SECURE NAT RECORD_START RECORD_STOP "
    "PLAYBACK_START PLAYBACK_STOP CALL_UPDATE FAILURE SOCKET_DATA MEDIA_BUG_START "
    "MEDIA_BUG_STOP CONFERENCE_DATA_QUERY CONFERENCE_DATA CALL_SETUP_REQ CALL_SETUP_RESULT "
    "CALL_DETAIL DEVICE_STATE TEXT SHUTDOWN_REQUESTED ALL"
)

# The events ``myevents`` subscribes (mod_event_socket.c).
MYEVENTS = frozenset(
    _words(
        "CHANNEL_ANSWER CHANNEL_APPLICATION CHANNEL_BRIDGE CHANNEL_CREATE CHANNEL_DATA "
        "CHANNEL_DESTROY CHANNEL_EXECUTE CHANNEL_EXECUTE_COMPLETE CHANNEL_HANGUP "
        "CHANNEL_HANGUP_COMPLETE CHANNEL_ORIGINATE CHANNEL_UUID CHANNEL_OUTGOING CHANNEL_PARK "
        "CHANNEL_PROGRESS CHANNEL_PROGRESS_MEDIA CHANNEL_STATE CHANNEL_UNBRIDGE CHANNEL_UNPARK "
        "DETECTED_SPEECH DTMF NOTALK TALK"
    )
)

# switch_channel.c CAUSE_CHART.
CAUSES: dict[str, int] = {
    "NONE": 0, "UNALLOCATED_NUMBER": 1, "NO_ROUTE_TRANSIT_NET": 2, "NO_ROUTE_DESTINATION": 3,
    "CHANNEL_UNACCEPTABLE": 6, "CALL_AWARDED_DELIVERED": 7, "NORMAL_CLEARING": 16,
    "USER_BUSY": 17, "NO_USER_RESPONSE": 18, "NO_ANSWER": 19, "SUBSCRIBER_ABSENT": 20,
    "CALL_REJECTED": 21, "NUMBER_CHANGED": 22, "REDIRECTION_TO_NEW_DESTINATION": 23,
    "EXCHANGE_ROUTING_ERROR": 25, "DESTINATION_OUT_OF_ORDER": 27, "INVALID_NUMBER_FORMAT": 28,
    "FACILITY_REJECTED": 29, "RESPONSE_TO_STATUS_ENQUIRY": 30, "NORMAL_UNSPECIFIED": 31,
    "NORMAL_CIRCUIT_CONGESTION": 34, "NETWORK_OUT_OF_ORDER": 38, "NORMAL_TEMPORARY_FAILURE": 41,
    "SWITCH_CONGESTION": 42, "ACCESS_INFO_DISCARDED": 43, "REQUESTED_CHAN_UNAVAIL": 44,
    "PRE_EMPTED": 45, "FACILITY_NOT_SUBSCRIBED": 50, "OUTGOING_CALL_BARRED": 52,
    "INCOMING_CALL_BARRED": 54, "BEARERCAPABILITY_NOTAUTH": 57, "BEARERCAPABILITY_NOTAVAIL": 58,
    "SERVICE_UNAVAILABLE": 63, "BEARERCAPABILITY_NOTIMPL": 65, "CHAN_NOT_IMPLEMENTED": 66,
    "FACILITY_NOT_IMPLEMENTED": 69, "SERVICE_NOT_IMPLEMENTED": 79, "INVALID_CALL_REFERENCE": 81,
    "INCOMPATIBLE_DESTINATION": 88, "INVALID_MSG_UNSPECIFIED": 95, "MANDATORY_IE_MISSING": 96,
    "MESSAGE_TYPE_NONEXIST": 97, "WRONG_MESSAGE": 98, "IE_NONEXIST": 99,
    "INVALID_IE_CONTENTS": 100, "WRONG_CALL_STATE": 101, "RECOVERY_ON_TIMER_EXPIRE": 102,
    "MANDATORY_IE_LENGTH_ERROR": 103, "PROTOCOL_ERROR": 111, "INTERWORKING": 127,
    "SUCCESS": 142, "ORIGINATOR_CANCEL": 487, "CRASH": 700, "SYSTEM_SHUTDOWN": 701,
    "LOSE_RACE": 702, "MANAGER_REQUEST": 703, "BLIND_TRANSFER": 800, "ATTENDED_TRANSFER": 801,
    "ALLOTTED_TIMEOUT": 802, "USER_CHALLENGE": 803, "MEDIA_TIMEOUT": 804, "PICKED_OFF": 805,
    "USER_NOT_REGISTERED": 806, "PROGRESS_TIMEOUT": 807, "INVALID_GATEWAY": 808,
    "GATEWAY_DOWN": 809, "INVALID_URL": 810, "INVALID_PROFILE": 811, "NO_PICKUP": 812,
    "SRTP_READ_ERROR": 813, "BOWOUT": 814, "BUSY_EVERYWHERE": 815, "DECLINE": 816,
    "DOES_NOT_EXIST_ANYWHERE": 817, "NOT_ACCEPTABLE": 818, "UNWANTED": 819, "NO_IDENTITY": 820,
    "BAD_IDENTITY_INFO": 821, "UNSUPPORTED_CERTIFICATE": 822, "INVALID_IDENTITY": 823,
    "STALE_DATE": 824, "REJECT_ALL": 825,
}  # fmt: skip
_CAUSE_NAMES = {v: k for k, v in CAUSES.items()}

_URL_UNSAFE = frozenset(b'\r\n #%&+:;<=>?@[\\]^`{|}"')  # SWITCH_URL_UNSAFE
_HEX = b"0123456789ABCDEF"
_PACKET_END = re.compile(rb"\n\r*\n")
_MAX_PACKET = 10485760  # read_packet max_len
_WS = " \t\r\n\v"  # switch_strip_whitespace
_LOG_LEVELS = {
    "console": 0, "alert": 1, "crit": 2, "err": 3, "warning": 4, "notice": 5, "info": 6,
    "debug": 7,
}  # fmt: skip

SHOW_SYNTAX = (
    "codec|endpoint|application|api|dialplan|file|timer|calls [count]|channels [count|like "
    "<match string>]|calls|detailed_calls|bridged_calls|detailed_bridged_calls|aliases|complete"
    "|chat|management|modules|nat_map|say|interfaces|interface_types|tasks|limits|status"
)
CHANNEL_COLUMNS = _words(
    "uuid direction created created_epoch name state cid_name cid_num ip_addr dest application "
    "application_data dialplan context read_codec read_rate read_bit_rate write_codec "
    "write_rate write_bit_rate secure hostname presence_id presence_data accountcode callstate "
    "callee_name callee_num callee_direction call_uuid sent_callee_name sent_callee_num "
    "initial_cid_name initial_cid_num initial_ip_addr initial_dest initial_dialplan "
    "initial_context"
)
#: FreeSWITCH 1.10.12's basic_calls view (``show bridged_calls``), a leg's columns in
#: order; then the bridged leg's, prefixed ``b_``; then the call's creation time.
BASIC_CALL_COLUMNS = [
    "uuid",
    "direction",
    "created",
    "created_epoch",
    "name",
    "state",
    "cid_name",
    "cid_num",
    "ip_addr",
    "dest",
    "presence_id",
    "presence_data",
    "accountcode",
    "callstate",
    "callee_name",
    "callee_num",
    "callee_direction",
    "call_uuid",
    "hostname",
    "sent_callee_name",
    "sent_callee_num",
]
BASIC_CALL_B_COLUMNS = [c for c in BASIC_CALL_COLUMNS if c not in ("call_uuid", "hostname")]


# --- FreeSWITCH string helpers -----------------------------------------------------------------
def url_encode(value: str) -> str:
    """``switch_url_encode``: unsafe and non-printable bytes become ``%XX``; a ``%`` followed
    by two upper-case hex digits is kept as is (no double encoding)."""
    raw = value.encode()
    out = bytearray()
    n = len(raw)
    for i, b in enumerate(raw):
        if b == 0x25 and i < n - 2 and raw[i + 1] in _HEX and raw[i + 2] in _HEX:
            out.append(b)
        elif b < 0x20 or b > 0x7E or b in _URL_UNSAFE:
            out += b"%" + bytes((_HEX[b >> 4], _HEX[b & 0x0F]))
        else:
            out.append(b)
    return out.decode("ascii")


def str2cause(text: str | None) -> int:
    """``switch_channel_str2cause``: a number, a cause name, else NORMAL_CLEARING."""
    if not text:
        return CAUSES["NORMAL_CLEARING"]
    if text[0].isdigit():
        return _atoi(text)
    return CAUSES.get(text.upper(), CAUSES["NORMAL_CLEARING"])


def cause2str(cause: int) -> str:
    return _CAUSE_NAMES.get(cause, "UNKNOWN")


def _atoi(text: str) -> int:
    m = re.match(r"\s*([+-]?\d+)", text)
    return int(m.group(1)) if m else 0


def _strip_ws(text: str | None) -> str:
    return (text or "").strip(_WS)


def _unescape(c: str) -> str:
    return {"n": "\n", "r": "\r", "t": "\t", "s": " "}.get(c, c)


def _cleanup_separated(s: str, delim: str) -> str:
    """``cleanup_separated_string``: strip leading blanks, quotes, escapes, trailing blanks."""
    i, n = 0, len(s)
    while i < n and s[i] == " ":
        i += 1
    out: list[str] = []
    end: int | None = None
    inside = False
    while i < n:
        c = s[i]
        esc = False
        if c == "\\" and i + 1 < n:
            e = s[i + 1]
            if e in "'\"\\" or (delim and e == delim) or _unescape(e) != e:
                i += 1
                out.append(_unescape(e))
                end = len(out)
                esc = True
        if not esc:
            if c == "'" and (inside or "'" in s[i + 1 :]):
                inside = not inside
                if inside:
                    end = len(out)
            else:
                out.append(c)
                if c != " " or inside:
                    end = len(out)
        i += 1
    return "".join(out if end is None else out[:end])


def separate_string(buf: str | None, delim: str, arraylen: int) -> list[str]:
    """``switch_separate_string``: at most ``arraylen`` fields, the last one keeps the rest of
    the string; single quotes group, backslash escapes; ``^^<d>`` changes the delimiter."""
    if not buf or arraylen < 1:
        return []
    if buf.startswith("^^") and len(buf) >= 4:
        delim, buf = buf[2], buf[3:]
    starts: list[int] = []
    ends: dict[int, int] = {}
    i, n, state, inside = 0, len(buf), 0, False
    while i < n and len(starts) < arraylen:
        c = buf[i]
        if state == 0:  # START
            starts.append(i)
            state = 1 if delim == " " else 2
            continue
        if state == 1:  # SKIP_INITIAL_SPACE
            if c == " ":
                i += 1
            else:
                state = 2
            continue
        if state == 2:  # FIND_DELIM
            if c == "\\":
                i += 1
            elif c == "'" and (delim == " " or inside or "'" in buf[i + 1 :]):
                inside = not inside
            elif c == delim and not inside:
                ends[len(starts) - 1] = i
                state = 3 if delim == " " else 0
            i += 1
            continue
        if c == " ":  # SKIP_ENDING_SPACE
            i += 1
        else:
            state = 0
    fields = [buf[s : ends.get(k, n)] for k, s in enumerate(starts)]
    return [_cleanup_separated(f, "" if delim == " " else delim) for f in fields]


def name_event(name: str) -> str | None:
    """``switch_name_event``: case-insensitive, ``SWITCH_EVENT_`` prefix allowed."""
    for known in EVENT_NAMES:
        if name.upper() == known or (len(name) > 13 and name[13:].upper() == known):
            return known
    return None


def _now_us() -> int:
    return time.time_ns() // 1000


def _local_stamp(us: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(us / 1e6))


# --- events ------------------------------------------------------------------------------------
class FsEvent:
    """A ``switch_event_t``: ordered headers (duplicates allowed), subclass, optional body."""

    def __init__(
        self, name: str, headers: list[Header] | None = None, subclass: str | None = None
    ) -> None:
        self.name = name
        self.headers: list[Header] = list(headers or [])
        self.subclass = subclass
        self.body: str | None = None

    def get(self, name: str) -> str | None:
        lname = name.lower()
        return next((v for k, v in self.headers if k.lower() == lname), None)

    def add(self, name: str, value: str | None) -> None:
        """``switch_event_add_header_string(BOTTOM)``: an empty value deletes the header."""
        if not value:
            self.headers = [(k, v) for k, v in self.headers if k.lower() != name.lower()]
        else:
            self.headers.append((name, value))

    def delivered(self) -> FsEvent:
        """``switch_event_dup`` (what a listener queues): ``Event-Subclass`` moves first."""
        out = FsEvent(self.name, subclass=self.subclass)
        if self.subclass:
            out.headers.append(("Event-Subclass", self.subclass))
        for k, v in self.headers:
            if self.subclass and k == "Event-Subclass":
                continue
            out.add(k, v)
        out.body = self.body
        return out

    def plain(self) -> bytes:
        """``switch_event_serialize(event, &str, SWITCH_TRUE)``."""
        text = "".join(f"{k}: {url_encode(v) or '_undef_'}\n" for k, v in self.headers)
        if self.body:
            text += f"Content-Length: {len(self.body.encode())}\n\n{self.body}"
        else:
            text += "\n"
        return text.encode()

    def json(self) -> bytes:
        """``switch_event_serialize_json`` (cJSON_PrintUnformatted, duplicate keys kept)."""
        items = list(self.headers)
        if self.body is not None:
            items += [("Content-Length", str(len(self.body.encode()))), ("_body", self.body)]
        parts = [f"{_json_str(k)}:{_json_str(v)}" for k, v in items]
        return ("{" + ",".join(parts) + "}").encode()

    def frame(self, fmt: str = "plain") -> bytes:
        payload = self.json() if fmt == "json" else self.plain()
        kind = "json" if fmt == "json" else "plain"
        head = f"Content-Length: {len(payload)}\nContent-Type: text/event-{kind}\n\n"
        return head.encode() + payload

    def __repr__(self) -> str:
        return f"FsEvent({self.name!r}, subclass={self.subclass!r}, {len(self.headers)} headers)"


def _json_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


# --- one ESL connection ------------------------------------------------------------------------
class EslConnection:
    """Per-socket listener state (``listener_t``)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buf = bytearray()
        self.authed = False
        self.running = True
        self.events_on = False
        self.event_ids: set[str] = set()
        self.custom: set[str] = set()
        self.fmt = "plain"
        self.filters: list[Header] = []
        self.myevents = False
        self.session: FakeFsChannel | None = None
        self.linger: int | None = None  # None: no linger; -1: forever
        self.log_level: int | None = None
        self.handle_disco = False
        self.sent: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self.writer.transport.is_closing():
            self.sent.append(data)
            self.writer.write(data)

    async def drain(self) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.writer.drain()

    def abort(self) -> None:
        self.running = False
        self.writer.transport.abort()

    def wants(self, ev: FsEvent) -> bool:
        """``event_handler``'s choice for this listener."""
        if not self.events_on:
            return False
        send = "ALL" in self.event_ids or (
            ev.name in self.event_ids
            and (ev.name != "CUSTOM" or not ev.subclass or ev.subclass in self.custom)
        )
        if send and self.filters:
            send = self._filter(ev)
        if send and self.myevents:
            uid = ev.get("unique-id")
            if not uid or (self.session is not None and uid != self.session.uuid):
                send = False
        return send

    def _filter(self, ev: FsEvent) -> bool:
        send = False
        for name, spec in self.filters:
            hval = ev.get(name)
            if hval is None:
                continue
            pos, i = True, 0
            while i < len(spec):
                if spec[i] == "+":
                    pos = True
                elif spec[i] == "-":
                    pos = False
                elif spec[i] != " ":
                    break
                i += 1
            comp = spec[i:]
            if send and pos:
                continue
            if spec.startswith("/"):
                m = re.fullmatch(r"/(.*)/([a-z]*)", comp, re.S)
                pattern = m.group(1) if m else comp.strip("/")
                cmp = re.search(pattern, hval) is not None
            else:
                cmp = hval.lower() == comp.lower()
            if cmp:
                if not pos:
                    return False
                send = True
        return send


# --- channels ----------------------------------------------------------------------------------
class FakeFsChannel:
    """One inbound sofia channel, as FreeSWITCH describes it in events and variables."""

    def __init__(
        self,
        fs: FakeEsl,
        *,
        uuid: str,
        caller: str,
        caller_name: str,
        destination: str,
        remote_media_ip: str,
        remote_media_port: int,
        local_media_ip: str,
        local_media_port: int,
        session_id: int,
    ) -> None:
        self._fs = fs
        self.uuid = uuid
        #: sofia's rtp_audio_out_packet_count at hangup (the test says how many RTP packets)
        self.rtp_out_packets = 0
        self.caller = caller
        self.caller_name = caller_name
        self.destination = destination
        self.phone_ip = remote_media_ip
        self.remote_media_ip = remote_media_ip
        self.remote_media_port = remote_media_port
        self.local_media_ip = local_media_ip
        self.local_media_port = local_media_port
        self.session_id = session_id
        self.name = f"sofia/internal/{caller}@{self.phone_ip}:{SIP_PORT_PHONE}"
        self.variables: dict[str, str] = {}
        self.alive = True
        self.hangup_cause: str | None = None
        self.answered = False
        self.early = False
        self.media = False
        self.display: str | None = None
        self.received_events: list[FsEvent] = []
        self.state = "CS_INIT"
        self.state_number = 2
        self.call_state = "DOWN"
        self.created_us = _now_us()
        self.answered_us = 0
        self.progress_media_us = 0
        self.hangup_us = 0
        self._cause = 0
        self._last_app: str | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._tag = f"{random.randrange(10**12):X}"[:13]

    # variables ---------------------------------------------------------------------------------
    def _set(self, name: str, value: str | None) -> None:
        """``switch_channel_set_variable``: delete, then (if a value) append at the end."""
        if not name:
            return
        self.variables.pop(name, None)
        if value:
            self.variables[name] = value
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def _exec_app(self, app: str, data: str | None = None) -> None:
        """What ``switch_core_session_exec`` does to the variables before the app runs."""
        self._set("current_application", app)
        self._set("current_application_data", data)
        self._set("current_application_response", None)
        self._set("current_application", app)
        self._last_app = app

    # headers -----------------------------------------------------------------------------------
    def _answer_state(self) -> str:
        if self.state_number >= 10:
            return "hangup"
        if self.answered:
            return "answered"
        return "early" if self.early else "ringing"

    def _data(self) -> list[Header]:
        """``switch_channel_event_set_data``: channel, caller profile, then variables."""
        ts = self.times
        h: list[Header] = [
            ("Channel-State", self.state),
            ("Channel-Call-State", self.call_state),
            ("Channel-State-Number", str(self.state_number)),
            ("Channel-Name", self.name),
            ("Unique-ID", self.uuid),
            ("Call-Direction", "inbound"),
            ("Presence-Call-Direction", "inbound"),
            ("Channel-HIT-Dialplan", "true"),
            ("Channel-Call-UUID", self.variables.get("call_uuid", self.uuid)),
            ("Answer-State", self._answer_state()),
        ]
        if self._cause:
            h.append(("Hangup-Cause", cause2str(self._cause)))
        for side in ("Read", "Write"):
            h += [
                (f"Channel-{side}-Codec-Name", "PCMU"),
                (f"Channel-{side}-Codec-Rate", "8000"),
                (f"Channel-{side}-Codec-Bit-Rate", "64000"),
            ]
        h += [
            ("Caller-Direction", "inbound"),
            ("Caller-Logical-Direction", "inbound"),
            ("Caller-Username", self.caller),
            ("Caller-Dialplan", "XML"),
            ("Caller-Caller-ID-Name", self.caller_name),
            ("Caller-Caller-ID-Number", self.caller),
            ("Caller-Orig-Caller-ID-Name", self.caller_name),
            ("Caller-Orig-Caller-ID-Number", self.caller),
            ("Caller-Network-Addr", self.phone_ip),
            ("Caller-ANI", self.caller),
            ("Caller-Destination-Number", self.destination),
            ("Caller-Unique-ID", self.uuid),
            ("Caller-Source", "mod_sofia"),
            ("Caller-Context", "default"),
            ("Caller-Channel-Name", self.name),
            ("Caller-Profile-Index", "1"),
            ("Caller-Profile-Created-Time", str(ts["created"])),
            ("Caller-Channel-Created-Time", str(ts["created"])),
            ("Caller-Channel-Answered-Time", str(ts["answered"])),
            ("Caller-Channel-Progress-Time", "0"),
            ("Caller-Channel-Progress-Media-Time", str(ts["progress_media"])),
            ("Caller-Channel-Hangup-Time", str(ts["hangup"])),
            ("Caller-Channel-Transfer-Time", "0"),
            ("Caller-Channel-Resurrect-Time", "0"),
            ("Caller-Channel-Bridged-Time", "0"),
            ("Caller-Channel-Last-Hold", "0"),
            ("Caller-Channel-Hold-Accum", "0"),
            ("Caller-Screen-Bit", "true"),
            ("Caller-Privacy-Hide-Name", "false"),
            ("Caller-Privacy-Hide-Number", "false"),
        ]
        h += [(f"variable_{k}", v) for k, v in self.variables.items()]
        return h

    @property
    def times(self) -> dict[str, int]:
        return {
            "created": self.created_us,
            "answered": self.answered_us,
            "progress_media": self.progress_media_us,
            "hangup": self.hangup_us,
        }

    def _event(self, name: str, where: tuple[str, str, int], *top: Header) -> FsEvent:
        ev = self._fs._new_event(name, *where)
        for k, v in top:
            ev.add(k, v)
        for k, v in self._data():
            ev.add(k, v)
        return ev

    # the call ----------------------------------------------------------------------------------
    def _initial_variables(self, extra: dict[str, str] | None) -> None:
        phone, fs = self.phone_ip, self.local_media_ip
        c, d, n = self.caller, self.destination, self.session_id
        from_tag = f"{30972 + n}SIPpTag00{n}"
        r_sdp = (
            f"v=0\r\no={self.caller_name} 53655765 2353687637 IN IP4 {phone}\r\ns=-\r\n"
            f"c=IN IP4 {self.remote_media_ip}\r\nt=0 0\r\n"
            f"m=audio {self.remote_media_port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
            f"a=zrtp-hash:1.10 {'0' * 64}\r\n"
        )
        for k, v in (
            ("direction", "inbound"),
            ("uuid", self.uuid),
            ("call_uuid", self.uuid),
            ("session_id", str(n)),
            ("sip_from_user", c),
            ("sip_from_port", str(SIP_PORT_PHONE)),
            ("sip_from_uri", f"{c}@{phone}:{SIP_PORT_PHONE}"),
            ("sip_from_host", phone),
            ("video_media_flow", "disabled"),
            ("text_media_flow", "disabled"),
            ("channel_name", self.name),
            ("sip_call_id", f"{n}-30972@{phone}"),
            ("sip_local_network_addr", fs),
            ("sip_network_ip", phone),
            ("sip_network_port", str(SIP_PORT_PHONE)),
            ("sip_invite_stamp", str(self.created_us)),
            ("sip_received_ip", phone),
            ("sip_received_port", str(SIP_PORT_PHONE)),
            ("sip_via_protocol", "udp"),
            ("sip_from_user_stripped", c),
            ("sip_from_tag", from_tag),
            ("sofia_profile_name", "internal"),
            ("sofia_profile_url", f"sip:mod_sofia@{fs}:{SIP_PORT_FS}"),
            ("recovery_profile_name", "internal"),
            ("sip_full_via", f"SIP/2.0/UDP {phone}:{SIP_PORT_PHONE};branch=z9hG4bK-30972-1-0"),
            ("sip_from_display", self.caller_name),
            (
                "sip_full_from",
                f'"{self.caller_name}" <sip:{c}@{phone}:{SIP_PORT_PHONE}>;tag={from_tag}',
            ),
            ("sip_full_to", f"<sip:{d}@{fs}:{SIP_PORT_FS}>"),
            ("sip_req_user", d),
            ("sip_req_port", str(SIP_PORT_FS)),
            ("sip_req_uri", f"{d}@{fs}:{SIP_PORT_FS}"),
            ("sip_req_host", fs),
            ("sip_to_user", d),
            ("sip_to_port", str(SIP_PORT_FS)),
            ("sip_to_uri", f"{d}@{fs}:{SIP_PORT_FS}"),
            ("sip_to_host", fs),
            ("sip_contact_user", c),
            ("sip_contact_port", str(SIP_PORT_PHONE)),
            ("sip_contact_uri", f"{c}@{phone}:{SIP_PORT_PHONE}"),
            ("sip_contact_host", phone),
            ("sip_subject", "pbx_zrtp test"),
            ("sip_via_host", phone),
            ("sip_via_port", str(SIP_PORT_PHONE)),
            ("max_forwards", "70"),
            ("switch_r_sdp", r_sdp),
            ("ep_codec_string", "CORE_PCM_MODULE.PCMU@8000h@20i@64000b"),
            ("rtp_use_codec_string", "PCMU,PCMA"),
            ("remote_video_media_flow", "inactive"),
            ("remote_text_media_flow", "inactive"),
            ("remote_audio_media_flow", "sendrecv"),
            ("audio_media_flow", "sendrecv"),
            ("remote_media_ip", self.remote_media_ip),
            ("remote_media_port", str(self.remote_media_port)),
            ("rtp_audio_recv_pt", "0"),
            ("rtp_use_codec_name", "PCMU"),
            ("rtp_use_codec_rate", "8000"),
            ("rtp_use_codec_ptime", "20"),
            ("rtp_use_codec_channels", "1"),
            ("rtp_last_audio_codec_string", "PCMU@8000h@20i@1c"),
            ("read_codec", "PCMU"),
            ("original_read_codec", "PCMU"),
            ("read_rate", "8000"),
            ("original_read_rate", "8000"),
            ("write_codec", "PCMU"),
            ("write_rate", "8000"),
            ("dtmf_type", "info"),
            ("endpoint_disposition", "RECEIVED"),
        ):
            self._set(k, v)
        for k, v in (extra or {}).items():
            self._set(k, v)

    def _media_up(self) -> None:
        """sofia builds its SDP answer: the local media variables appear."""
        if self.media:
            return
        self.media = True
        adv = self.local_media_ip
        wanted = self.variables.get("rtp_adv_audio_ip")
        # DESIGN §3: applied only off loopback (a real FS also needs ext-sip-ip and an ACL miss).
        if wanted and not self.phone_ip.startswith("127."):
            adv = wanted
        sess = random.randrange(10**9, 2 * 10**9)
        sdp = (
            f"v=0\r\no=FreeSWITCH {sess} {sess + 1} IN IP4 {adv}\r\ns=FreeSWITCH\r\n"
            f"c=IN IP4 {adv}\r\nt=0 0\r\nm=audio {self.local_media_port} RTP/AVP 0\r\n"
            "a=rtpmap:0 PCMU/8000\r\na=ptime:20\r\na=sendrecv\r\n"
        )
        self._set("rtp_local_sdp_str", sdp)
        self._set("local_media_ip", self.local_media_ip)
        self._set("local_media_port", str(self.local_media_port))
        self._set("advertised_media_ip", adv)
        self._set("rtp_use_timer_name", "soft")
        self._set("rtp_use_pt", "0")
        self._set("rtp_use_ssrc", str(random.randrange(1, 2**32)))
        self._set("remote_media_ip", self.remote_media_ip)
        self._set("remote_media_port", str(self.remote_media_port))

    def _pre_answer(self) -> None:
        if not self.alive or self.early or self.answered:
            return
        self._exec_app("pre_answer")
        self._media_up()
        self.early = True
        self._set("endpoint_disposition", "EARLY MEDIA")
        self.progress_media_us = _now_us()
        where = ("switch_channel.c", "switch_channel_perform_mark_pre_answered", 3560)
        self._fs._fire(self._event("CHANNEL_PROGRESS_MEDIA", where))
        self.call_state = "EARLY"

    def _answer(self, next_app: str | None = None) -> None:
        if not self.alive or self.answered:
            return
        self._exec_app("answer")
        self._media_up()
        self.answered_us = _now_us()
        self.answered = True
        where = ("switch_channel.c", "switch_channel_perform_mark_answered", 3846)
        self._fs._fire(self._event("CHANNEL_ANSWER", where))
        self.call_state = "ACTIVE"
        self._set("endpoint_disposition", "ANSWER")
        if next_app:
            self._exec_app(next_app)
        # the phone's ACK
        phone, fs, c, d = self.phone_ip, self.local_media_ip, self.caller, self.destination
        tag = self.variables.get("sip_from_tag", "")
        self._set("sip_to_tag", self._tag)
        self._set("sip_from_tag", tag)
        self._set("sip_cseq", "1")
        self._set("sip_call_id", self.variables.get("sip_call_id"))
        self._set("sip_full_via", f"SIP/2.0/UDP {phone}:{SIP_PORT_PHONE};branch=z9hG4bK-30972-1-5")
        self._set("sip_from_display", self.caller_name)
        self._set(
            "sip_full_from", f'"{self.caller_name}" <sip:{c}@{phone}:{SIP_PORT_PHONE}>;tag={tag}'
        )
        self._set("sip_full_to", f"<sip:{d}@{fs}:{SIP_PORT_FS}>;tag={self._tag}")

    def _custom(self, subclass: str, headers: dict[str, str]) -> None:
        """The dialplan's ``event Event-Name=CUSTOM,Event-Subclass=<s>,k=v,...``."""
        if not self.alive:
            return
        data = ",".join(
            ["Event-Name=CUSTOM", f"Event-Subclass={subclass}"]
            + [f"{k}={v}" for k, v in headers.items()]
        )
        self._exec_app("event", data)
        ev = self._fs._new_event("CHANNEL_APPLICATION", "mod_dptools.c", "event_function", 1902)
        ev.name = "CUSTOM"
        ev.add("Event-Name", None)
        ev.add("Event-Name", "CUSTOM")
        ev.subclass = subclass
        ev.add("Event-Subclass", subclass)
        for k, v in headers.items():
            ev.add(k, v)
        for k, v in self._data():
            ev.add(k, v)
        self._fs._fire(ev)

    def _hangup(self, cause: int, *, local: bool, complete_now: bool) -> None:
        """``switch_channel_perform_hangup``; HANGUP_COMPLETE follows from the session thread."""
        if not self.alive or self.state_number >= 10:
            return
        self.state_number = 10
        self._cause = cause
        self.hangup_cause = cause2str(cause)
        if not local and self.answered:  # the phone's BYE
            self._set("sip_term_status", "200")
            self._set("proto_specific_hangup_cause", "sip:200")
            self._set("sip_term_cause", str(cause))
        where = ("switch_channel.c", "switch_channel_perform_hangup", 3445)
        self._fs._fire(self._event("CHANNEL_HANGUP", where))
        self._fs._session_down(self)
        if complete_now:
            self._complete(local)
        else:
            asyncio.get_running_loop().call_soon(self._complete, local)

    def _complete(self, local: bool) -> None:
        if not self.alive:
            return
        if self.answered:
            disposition = "send_bye" if local else "recv_bye"
        else:
            disposition = "send_refuse" if local else "recv_cancel"
        self._set("sip_hangup_disposition", disposition)
        self._set("hangup_cause", cause2str(self._cause))
        self._set("hangup_cause_q850", str(self._cause if self._cause <= 127 else 16))
        self.hangup_us = _now_us()
        self._timestamps()
        self.state, self.state_number, self.call_state = "CS_REPORTING", 11, "HANGUP"
        where = ("switch_core_state_machine.c", "switch_core_session_reporting_state", 943)
        ev = self._event("CHANNEL_HANGUP_COMPLETE", where, ("Hangup-Cause", cause2str(self._cause)))
        self.alive = False
        self._fs._channel_gone(self)
        self._fs._fire(ev)
        self._wake()

    def _timestamps(self) -> None:
        """``switch_channel_set_timestamps`` (+ sofia's RTP statistics)."""
        start, ans, end = self.created_us, self.answered_us, self.hangup_us
        pm = self.progress_media_us
        s = self._set
        s("digits_dialed", "none")
        s("start_stamp", _local_stamp(start))
        s("profile_start_stamp", _local_stamp(start))
        if ans:
            s("answer_stamp", _local_stamp(ans))
        if pm:
            s("progress_media_stamp", _local_stamp(pm))
        s("end_stamp", _local_stamp(end))
        for name, us in (
            ("start", start), ("profile_start", start), ("answer", ans), ("bridge", 0),
            ("last_hold", 0),
        ):  # fmt: skip
            s(f"{name}_epoch", str(us // 1_000_000))
            s(f"{name}_uepoch", str(us))
        s("hold_accum_seconds", "0")
        s("hold_accum_usec", "0")
        s("hold_accum_ms", "0")
        for name, us in (("resurrect", 0), ("progress", 0), ("progress_media", pm), ("end", end)):
            s(f"{name}_epoch", str(us // 1_000_000))
            s(f"{name}_uepoch", str(us))
        s("last_app", self._last_app)
        s("caller_id", f'"{self.caller_name}" <{self.caller}>')
        spans = {
            "duration": end - start,
            "bill": end - ans if ans else 0,
            "progress": 0,
            "answer": ans - start if ans else 0,
            "wait": ans - start if ans else 0,
            "progress_media": pm - start if pm else 0,
            "flow_bill": end - start,
        }
        for unit, div in (("sec", 1_000_000), ("msec", 1000), ("usec", 1)):
            for key, us in spans.items():
                name = {"sec": "duration", "msec": "mduration", "usec": "uduration"}[unit]
                s(name if key == "duration" else f"{key}{unit}", str(us // div))
        if self.media:
            for k in _words(
                "in_raw_bytes in_media_bytes in_packet_count in_media_packet_count "
                "in_skip_packet_count in_jitter_packet_count in_dtmf_packet_count "
                "in_cng_packet_count in_flush_packet_count in_largest_jb_size"
            ):
                s(f"rtp_audio_{k}", "0")
            for k, v in (
                ("in_jitter_min_variance", "0.00"), ("in_jitter_max_variance", "0.00"),
                ("in_jitter_loss_rate", "0.00"), ("in_jitter_burst_rate", "0.00"),
                ("in_mean_interval", "0.00"), ("in_flaw_total", "0"),
                ("in_quality_percentage", "100.00"), ("in_mos", "4.50"),
            ):  # fmt: skip
                s(f"rtp_audio_{k}", v)
            for k in _words(
                "out_raw_bytes out_media_bytes out_packet_count out_media_packet_count "
                "out_skip_packet_count out_dtmf_packet_count out_cng_packet_count "
                "rtcp_packet_count rtcp_octet_count"
            ):
                # out_packet_count: what the test says FreeSWITCH sent (rtp_out_packets)
                s(f"rtp_audio_{k}", str(self.rtp_out_packets) if k == "out_packet_count" else "0")

    def _channel_row(self) -> dict[str, str]:
        """The ``channels`` table row behind ``show channels``."""
        row = dict.fromkeys(CHANNEL_COLUMNS, "")
        row.update(
            uuid=self.uuid,
            direction="inbound",
            created=_local_stamp(self.created_us),
            created_epoch=str(self.created_us // 1_000_000),
            name=self.name,
            state=self.state,
            cid_name=self.caller_name,
            cid_num=self.caller,
            ip_addr=self.phone_ip,
            dest=self.destination,
            application=self.variables.get("current_application", ""),
            application_data=self.variables.get("current_application_data", ""),
            dialplan="XML",
            context="default",
            read_codec="PCMU",
            read_rate="8000",
            read_bit_rate="64000",
            write_codec="PCMU",
            write_rate="8000",
            write_bit_rate="64000",
            hostname=HOSTNAME,
            callstate=self.call_state,
            call_uuid=self.variables.get("call_uuid", self.uuid),
            initial_cid_name=self.caller_name,
            initial_cid_num=self.caller,
            initial_ip_addr=self.phone_ip,
            initial_dest=self.destination,
            initial_dialplan="XML",
            initial_context="default",
        )
        return row

    # public API --------------------------------------------------------------------------------
    async def pre_answer(self) -> None:
        """Dialplan ``pre_answer``: CHANNEL_PROGRESS_MEDIA, first with local_media_ip/port."""
        self._pre_answer()
        await self._fs._drain()

    async def answer(self, *, next_app: str | None = None) -> None:
        """Dialplan ``answer``: CHANNEL_ANSWER (local_media_ip/port unless pre-answered).
        ``next_app``: the dialplan application that starts before the phone's ACK arrives."""
        self._answer(next_app)
        await self._fs._drain()

    async def set_var(self, name: str, value: str | None) -> None:
        """The dialplan (or sofia) sets a variable; no event. ``None``/``""`` unsets."""
        self._set(name, value)

    async def auto_adjust(self, ip: str, port: int) -> None:
        """RTP auto-adjust latched onto ``ip:port`` (e.g. the relay); no event."""
        self._set("remote_audio_ip_reported", self.remote_media_ip)
        self._set("remote_audio_ip", ip)
        self._set("remote_audio_port_reported", str(self.remote_media_port))
        self._set("remote_audio_port", str(port))
        self._set("rtp_auto_adjust_audio", "true")

    async def custom_event(self, subclass: str, **headers: str) -> None:
        """Dialplan ``event Event-Name=CUSTOM,Event-Subclass=<subclass>,k=v,...``."""
        self._custom(subclass, headers)
        await self._fs._drain()

    async def reinvite_answered(self) -> None:
        """mod_sofia answered the phone's re-INVITE (sofia.c, after its 200 OK): the
        CUSTOM ``sofia::reinvite`` event, with the Unique-ID and no channel data
        (as captured from FreeSWITCH 1.10.12: fixtures/video-reinvite-esl-events.txt)."""
        ev = self._fs._new_event("CUSTOM", "sofia.c", "sofia_handle_sip_i_state", 8489)
        ev.subclass = "sofia::reinvite"
        ev.add("Event-Subclass", "sofia::reinvite")
        ev.add("Unique-ID", self.uuid)
        self._fs._fire(ev)
        await self._fs._drain()

    async def video_codec_set(self, codec: str = "H264") -> None:
        """``switch_core_session_set_video_read_codec``: the CODEC event, with the
        channel's basic data and no variables (as FreeSWITCH 1.10.12 sent it when
        ``uuid_media_reneg`` added video: fixtures/video-reneg-esl-events.txt)."""
        ev = self._fs._new_event(
            "CODEC", "switch_core_codec.c", "switch_core_session_set_video_read_codec", 510
        )
        for k, v in (
            ("Channel-Name", self.name),
            ("Unique-ID", self.uuid),
            ("Channel-Call-UUID", self.variables.get("call_uuid", self.uuid)),
            ("channel-video-read-codec-name", codec),
            ("channel-video-read-codec-rate", "90000"),
        ):
            ev.add(k, v)
        self._fs._fire(ev)
        await self._fs._drain()

    async def wait_for_var(
        self, name: str, predicate: Callable[[str | None], bool], timeout: float
    ) -> str | None:
        """A dialplan loop polling ``${name}``: returns the value it sees when ``predicate``
        holds, or when ``timeout`` expires or the channel hangs up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = self.variables.get(name)
            remaining = deadline - loop.time()
            if predicate(value) or remaining <= 0 or not self.alive:
                return value
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append(fut)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fut, remaining)

    async def hangup(self, cause: str = "NORMAL_CLEARING") -> None:
        """The phone hangs up (BYE, or CANCEL before answer): HANGUP then HANGUP_COMPLETE."""
        self._hangup(str2cause(cause), local=False, complete_now=True)
        await self._fs._drain()

    def __repr__(self) -> str:
        return f"FakeFsChannel({self.uuid!r}, alive={self.alive})"


# --- the server --------------------------------------------------------------------------------
class FakeEsl:
    """An inbound ESL server (``mod_event_socket``) with a FreeSWITCH core behind it."""

    def __init__(self, *, password: str = "ClueCon", host: str = "127.0.0.1") -> None:
        self.password = password
        self.host = host
        self.port = 0
        self.commands: list[str] = []
        self.auths = 0
        self.fired: list[FsEvent] = []
        self.connections: list[EslConnection] = []
        self.global_vars: dict[str, str] = {}
        self.auth_timeout = AUTH_TIMEOUT
        self._channels: dict[str, FakeFsChannel] = {}
        #: FreeSWITCH's bridged calls (a-leg uuid, b-leg uuid), for ``show bridged_calls``
        #: (fixtures/resync-bridged-calls.json: FreeSWITCH 1.10.12's answer).
        self.bridged_calls: list[tuple[str, str]] = []
        self._all_channels: dict[str, FakeFsChannel] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: list[FsEvent] | None = None
        self._apis: dict[str, Callable[[str | None], str]] = {
            "uuid_setvar": self._api_uuid_setvar,
            "uuid_setvar_multi": self._api_uuid_setvar_multi,
            "uuid_getvar": self._api_uuid_getvar,
            "uuid_kill": self._api_uuid_kill,
            "uuid_exists": self._api_uuid_exists,
            "uuid_display": self._api_uuid_display,
            "global_getvar": self._api_global_getvar,
            "global_setvar": self._api_global_setvar,
            "status": self._api_status,
            "show": self._api_show,
            "hostname": lambda _arg: HOSTNAME,
        }
        self._boot()

    def _boot(self) -> None:
        self.core_uuid = str(uuid_mod.uuid4())
        self._seq = 0
        self._session_ids = 0
        self._peak = 0
        self._started = time.monotonic()
        self.global_vars.update(
            {
                "hostname": HOSTNAME,
                "local_ip_v4": IPV4,
                "local_mask_v4": "255.255.255.0",
                "local_ip_v6": IPV6,
                "base_dir": "/usr/local/freeswitch",
                "core_uuid": self.core_uuid,
                "domain": IPV4,
                "domain_name": IPV4,
                "internal_sip_port": str(SIP_PORT_FS),
            }
        )

    # lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> int:
        """Listen on ``host:0``; return the port."""
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        for conn in list(self.connections):
            conn.abort()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None
        await self._reap()

    async def drop_connections(self) -> None:
        """Abrupt close (RST) of every client; keep listening."""
        for conn in list(self.connections):
            conn.abort()
        await self._reap()

    async def restart(self, down_for: float = 0.5, *, graceful: bool = False) -> None:
        """FreeSWITCH restarts on the same port: connections cut, channels lost, new Core-UUID.
        ``graceful``: channels are hung up (SYSTEM_SHUTDOWN) and clients get the shutdown
        disconnect-notice first, as on ``fsctl shutdown``; otherwise it is a crash."""
        if graceful:
            for ch in list(self._channels.values()):
                ch._hangup(CAUSES["SYSTEM_SHUTDOWN"], local=True, complete_now=True)
            for conn in list(self.connections):
                self._send_disconnect(conn, SHUTDOWN_MESSAGE)
                await conn.drain()
        port = self.port
        await self.close()
        for ch in self._channels.values():
            ch.alive = False
            ch._wake()
        self._channels.clear()
        await asyncio.sleep(down_for)
        self._boot()
        self.port = port
        await self.start()

    async def lua_event(self, subclass: str, **headers: str) -> None:
        """mod_lua ``freeswitch.Event("CUSTOM", subclass)`` + ``addHeader`` + ``fire()``
        from an API script (no channel: ``lua <script>`` at fs_cli). Values are not
        encoded inside FreeSWITCH (ESL encodes them on the way out)."""
        ev = self._new_event("CUSTOM", "mod_lua.cpp", "Event::fire", 1)
        ev.subclass = subclass
        ev.add("Event-Subclass", subclass)
        for k, v in headers.items():
            ev.add(k, v)
        self._fire(ev)
        await self._drain()

    async def send_raw(self, data: bytes) -> None:
        """Arbitrary bytes to every client."""
        for conn in list(self.connections):
            conn.write(data)
        await self._drain()

    async def _reap(self) -> None:
        tasks = [t for t in self._tasks if not t.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=2)

    async def _drain(self) -> None:
        for conn in list(self.connections):
            await conn.drain()

    # calls -------------------------------------------------------------------------------------
    def new_call(
        self,
        *,
        uuid: str | None = None,
        caller: str = "1001",
        destination: str = "9400",
        remote_media_ip: str = "127.0.0.18",
        remote_media_port: int = 40000,
        local_media_ip: str = "127.0.0.1",
        local_media_port: int,
        variables: dict[str, str] | None = None,
        caller_name: str = "phone",
    ) -> FakeFsChannel:
        """An inbound call arrives: CHANNEL_CREATE (offer's remote_media_ip/port, no local
        port; ``variables`` appear as ``variable_*``), then routing into the dialplan."""
        self._session_ids += 1
        ch = FakeFsChannel(
            self,
            uuid=uuid or str(uuid_mod.uuid4()),
            caller=caller,
            caller_name=caller_name,
            destination=destination,
            remote_media_ip=remote_media_ip,
            remote_media_port=remote_media_port,
            local_media_ip=local_media_ip,
            local_media_port=local_media_port,
            session_id=self._session_ids,
        )
        ch._initial_variables(variables)
        self._channels[ch.uuid] = ch
        self._all_channels[ch.uuid] = ch
        self._peak = max(self._peak, len(self._channels))
        where = ("switch_core_state_machine.c", "switch_core_session_run", 626)
        self._fire(ch._event("CHANNEL_CREATE", where))
        # CS_ROUTING -> CS_EXECUTE; sofia re-sets call_uuid on the way.
        ch.state, ch.state_number, ch.call_state = "CS_EXECUTE", 4, "RINGING"
        ch._set("call_uuid", ch.uuid)
        return ch

    def channel(self, uuid: str) -> FakeFsChannel:
        """A channel by uuid (also one that has hung up)."""
        return self._all_channels[uuid]

    def _locate(self, uuid: str | None) -> FakeFsChannel | None:
        return self._channels.get(uuid or "")

    def _channel_gone(self, ch: FakeFsChannel) -> None:
        self._channels.pop(ch.uuid, None)

    def _session_down(self, ch: FakeFsChannel) -> None:
        """A ``myevents <uuid>`` listener whose channel is gone: linger or disconnect."""
        for conn in list(self.connections):
            if conn.session is ch and not conn.handle_disco:
                conn.handle_disco = True
                if conn.linger is not None:
                    conn.write(
                        (
                            "Content-Type: text/disconnect-notice\n"
                            f"Controlled-Session-UUID: {ch.uuid}\n"
                            "Content-Disposition: linger\n"
                            f"Channel-Name: {ch.name}\n"
                            f"Linger-Time: {conn.linger}\n"
                            "Content-Length: 0\n\n"
                        ).encode()
                    )
                else:
                    conn.running = False
                    self._send_disconnect(conn, DISCONNECT_MESSAGE)
                    conn.writer.close()

    # events ------------------------------------------------------------------------------------
    def _new_event(self, name: str, file: str, func: str, line: int) -> FsEvent:
        """``switch_event_create`` (+ ``switch_event_prep_for_delivery``)."""
        self._seq += 1
        us = _now_us()
        ev = FsEvent(name)
        for k, v in (
            ("Event-Name", name),
            ("Core-UUID", self.core_uuid),
            ("FreeSWITCH-Hostname", HOSTNAME),
            ("FreeSWITCH-Switchname", HOSTNAME),
            ("FreeSWITCH-IPv4", IPV4),
            ("FreeSWITCH-IPv6", IPV6),
            ("Event-Date-Local", _local_stamp(us)),
            ("Event-Date-GMT", email.utils.formatdate(us / 1e6, usegmt=True)),
            ("Event-Date-Timestamp", str(us)),
            ("Event-Calling-File", file),
            ("Event-Calling-Function", func),
            ("Event-Calling-Line-Number", str(line)),
            ("Event-Sequence", str(self._seq)),
        ):
            ev.add(k, v)
        return ev

    def _fire(self, ev: FsEvent) -> None:
        self.fired.append(ev)
        if self._pending is not None:
            self._pending.append(ev)
        else:
            self._deliver(ev)

    def _deliver(self, ev: FsEvent) -> None:
        out = ev.delivered()
        for conn in list(self.connections):
            if conn.running and conn.wants(ev):
                conn.write(out.frame(conn.fmt))

    # fs_cli / API ------------------------------------------------------------------------------
    async def fs_cli(self, command: str, args: str = "") -> str:
        """An admin typed ``command args`` at fs_cli: run it, fire the API event, return the
        output fs_cli would print."""
        out = self._api_reply(command, args or None)
        await asyncio.sleep(0)  # HANGUP_COMPLETE after a uuid_kill
        await self._drain()
        return out

    def _api_execute(self, cmd: str, arg: str | None) -> tuple[bool, str]:
        """``switch_api_execute``: the API event is created first, fired after the command."""
        cmd_used, arg_used = _strip_ws(cmd), _strip_ws(arg)
        ev = self._new_event("API", "switch_loadable_module.c", "switch_api_execute", 2954)
        ev.add("API-Command", cmd_used)
        ev.add("API-Command-Argument", arg_used)
        fn = self._apis.get(cmd_used)
        if fn is None:
            ok, out = False, "INVALID COMMAND!\n"
        else:
            ok, out = True, fn(arg_used or None)
        self._fire(ev)
        return ok, out

    def _api_reply(self, cmd: str, arg: str | None) -> str:
        """``api_exec``'s reply text."""
        ok, out = self._api_execute(cmd, arg)
        reply = out if ok else f"-ERR {cmd} Command not found!\n"
        return reply or "-ERR no reply\n"

    def _api_uuid_setvar(self, arg: str | None) -> str:
        argv = separate_string(arg, " ", 3)
        if len(argv) in (2, 3) and argv[0]:
            ch = self._locate(argv[0])
            if ch is None:
                return "-ERR No such channel!\n"
            if not argv[1]:
                return "-ERR No variable specified\n"
            ch._set(argv[1], argv[2] if len(argv) == 3 else None)
            return "+OK\n"
        return "-USAGE: <uuid> <var> [value]\n"

    def _api_uuid_setvar_multi(self, arg: str | None) -> str:
        usage = "-USAGE: <uuid> <var>=<value>;<var>=<value>...\n"
        if not arg:
            return usage
        uuid, sep, rest = arg.partition(" ")
        if not sep:
            return ""
        ch = self._locate(uuid)
        if ch is None:
            return "-ERR No such channel!\n" + usage
        out, done = "", 0
        for item in separate_string(rest, ";", 64):
            name, eq, value = item.partition("=")
            if not name:
                out += "-ERR No variable specified\n"
            else:
                ch._set(name, value if eq else None)
                done += 1
        return out + "+OK\n" if done else out + usage

    def _api_uuid_getvar(self, arg: str | None) -> str:
        argv = separate_string(arg, " ", 4)
        if len(argv) >= 2 and argv[0]:
            ch = self._locate(argv[0])
            if ch is None:
                return "-ERR No such channel!\n"
            if not argv[1]:
                return "-ERR No variable name specified!\n"
            value = ch.variables.get(argv[1])
            return "_undef_" if value is None else value
        return "-USAGE: <uuid> <var>\n"

    def _api_uuid_kill(self, arg: str | None) -> str:
        if not arg:
            return "-USAGE: <uuid> [cause]\n"
        uuid, _, kcause = arg.partition(" ")
        ch = self._locate(uuid)
        if ch is None:
            return "-ERR No such channel!\n"
        ch._hangup(str2cause(kcause), local=True, complete_now=False)
        return "+OK\n"

    def _api_uuid_exists(self, arg: str | None) -> str:
        return "true" if arg and self._locate(arg) else "false"

    def _api_uuid_display(self, arg: str | None) -> str:
        argv = separate_string(arg, " ", 2)
        if len(argv) < 2 or not argv[0] or not argv[1]:
            return "-USAGE: <uuid> <display>\n"
        ch = self._locate(argv[0])
        if ch is None:
            return "-ERR Operation failed\n"
        ch.display = argv[1]
        return "+OK Success\n"

    def _api_global_getvar(self, arg: str | None) -> str:
        if not arg:
            return "".join(f"{k}={v}\n" for k, v in self.global_vars.items())
        return self.global_vars.get(arg, "")

    def _api_global_setvar(self, arg: str | None) -> str:
        """``global_setvar name=value[=expected]`` (mod_commands ``global_setvar_function``):
        ``switch_separate_string(cmd, '=', argv, 3)``; a third field makes it
        ``switch_core_set_var_conditional``: set only if the current value is ``expected``
        (or, unset, only if ``expected`` is empty). +OK either way; no value unsets."""
        argv = separate_string(arg, "=", 3)
        if not argv or not argv[0]:
            return "-USAGE: <var>=<value>\n"
        name = argv[0].strip()
        value = argv[1].strip() if len(argv) > 1 else ""
        expected = argv[2] if len(argv) > 2 else ""
        if expected:
            current = self.global_vars.get(name)
            if current is None or current != expected:
                return "+OK"
        if value:
            self.global_vars[name] = value
        else:
            self.global_vars.pop(name, None)
        return "+OK"

    def _api_status(self, arg: str | None) -> str:
        up = time.monotonic() - self._started
        us = int(up * 1e6)
        parts = [
            ("year", 0),
            ("day", us // 86_400_000_000),
            ("hour", us // 3_600_000_000 % 24),
            ("minute", us // 60_000_000 % 60),
            ("second", us // 1_000_000 % 60),
            ("millisecond", us // 1000 % 1000),
            ("microsecond", us % 1000),
        ]
        n, peak = len(self._channels), self._peak
        return (
            "UP " + ", ".join(f"{v} {k}{'' if v == 1 else 's'}" for k, v in parts) + "\n"
            f"FreeSWITCH (Version {VERSION_HUMAN}) is ready\n"
            f"{self._session_ids} session(s) since startup\n"
            f"{n} session(s) - peak {peak}, last 5min {peak} \n"
            f"0 session(s) per Sec out of max 30, peak {min(peak, 1)}, last 5min "
            f"{min(peak, 1)} \n"
            "1000 session(s) max\n"
            "min idle cpu 0.00/100.00\n"
            "Current Stack Size/Max 240K/8192K\n"
        )

    def _api_show(self, arg: str | None) -> str:
        """``show channels [count] [as json|csv|delim <d>]`` (other reports: usage)."""
        argv = separate_string(arg, " ", 6) if arg else []
        argv += [""] * (6 - len(argv))
        command, as_, justcount = argv[0], "", False
        if argv[2] and argv[1].lower() == "as":
            as_ = argv[2]
        if not command:
            return f"-USAGE: {SHOW_SYNTAX}\n"
        if command.lower().startswith("status"):
            return self._api_status(None)
        if command.lower() == "bridged_calls" and argv[1].lower() == "as":
            return self._bridged_calls_json() if argv[2].lower() == "json" else "\n0 total.\n"
        if command.lower() != "channels":
            return f"-USAGE: {SHOW_SYNTAX}\n"
        if argv[1].lower() == "count":
            justcount = True
            as_ = argv[3] if argv[2].lower() == "as" and argv[3] else ""
        rows = [ch._channel_row() for ch in self._channels.values()]
        count = len(rows)
        fmt = as_.lower() or "delim"
        if justcount and fmt == "json":
            return json.dumps({"row_count": count, "rows": []}, separators=(",", ":"))
        if fmt in ("delim", "csv"):
            delim = argv[3] if as_ and argv[3] and not justcount else ","
            out = ""
            if rows and not justcount:
                out += delim.join(CHANNEL_COLUMNS) + "\n"
                out += "".join(delim.join(r[c] for c in CHANNEL_COLUMNS) + "\n" for r in rows)
            return out + f"\n{count} total.\n"
        if fmt == "json":
            if not rows:
                return '{"row_count": 0}\n'
            return json.dumps(
                {"row_count": count, "rows": rows}, separators=(",", ":"), ensure_ascii=False
            )
        return f"-ERR Cannot find format {as_}\n"

    def _bridged_calls_json(self) -> str:
        """``show bridged_calls as json``: the basic_calls view, a leg's columns and its
        bridged leg's (``b_*``), for pairs whose two channels are up."""
        rows = []
        for a_uuid, b_uuid in self.bridged_calls:
            a, b = self._channels.get(a_uuid), self._channels.get(b_uuid)
            if a is None or b is None:
                continue
            ar, br = a._channel_row(), b._channel_row()
            row = {key: ar.get(key, "") for key in BASIC_CALL_COLUMNS}
            row.update({f"b_{key}": br.get(key, "") for key in BASIC_CALL_B_COLUMNS})
            row.update(
                callee_name=b.caller_name,
                callee_num=b.caller,
                callee_direction="SEND",
                call_uuid=a.uuid,
                sent_callee_name=b.caller_name,
                sent_callee_num=b.caller,
                b_callee_name=a.caller_name,
                b_callee_num=a.caller,
                b_callee_direction="SEND",
                b_sent_callee_name=a.caller_name,
                b_sent_callee_num=a.caller,
                call_created_epoch=br["created_epoch"],
            )
            rows.append(row)
        if not rows:
            return '{"row_count": 0}\n'
        return json.dumps({"row_count": len(rows), "rows": rows}, separators=(",", ":"))

    # the socket --------------------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = EslConnection(reader, writer)
        self.connections.append(conn)
        try:
            await self._run(conn)
        except (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # a cancelled handler (loop teardown) must not log noise
        finally:
            with contextlib.suppress(ValueError):
                self.connections.remove(conn)
            if not writer.transport.is_closing():
                self._send_disconnect(conn, DISCONNECT_MESSAGE)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(writer.drain(), 1)
                writer.close()
            self._tasks.discard(task)

    async def _run(self, conn: EslConnection) -> None:
        conn.write(b"Content-Type: auth/request\n\n")
        await conn.drain()
        while conn.running:
            timeout = None if conn.authed else self.auth_timeout
            try:
                packet = await asyncio.wait_for(self._read_packet(conn), timeout)
            except TimeoutError:
                return
            if packet is None:
                return
            cmd, headers, body = packet
            self._command(conn, cmd, headers, body)
            await conn.drain()

    def _send_disconnect(self, conn: EslConnection, message: str) -> None:
        head = "Content-Type: text/disconnect-notice\n"
        if conn.session is not None:
            head += (
                f"Controlled-Session-UUID: {conn.session.uuid}\nContent-Disposition: disconnect\n"
            )
        head += f"Content-Length: {len(message.encode())}\n\n"
        conn.write(head.encode() + message.encode())

    async def _read_packet(
        self, conn: EslConnection
    ) -> tuple[str, list[Header], str | None] | None:
        """``read_packet``: a header block ended by ``\\n\\r*\\n``; Content-Length = body."""
        buf = conn.buf
        while True:
            skip = 0
            while skip < len(buf) and buf[skip] in b"\r\n":
                skip += 1
            del buf[:skip]
            m = _PACKET_END.search(buf)
            if m or len(buf) >= _MAX_PACKET:
                break
            data = await conn.reader.read(65536)
            if not data:
                return None
            buf += data
        end = m.end() if m else len(buf)
        block = bytes(buf[:end]).decode("utf-8", "replace")
        del buf[:end]
        lines = [ln for ln in re.split(r"[\r\n]+", block) if ln]
        cmd = lines[0] if lines else ""
        headers: list[Header] = []
        body: str | None = None
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon:
                continue
            headers.append((name, value.lstrip(" ")))
            if name.lower() == "content-length" and (clen := _atoi(value)) > 0:
                while len(buf) < clen:
                    data = await conn.reader.read(65536)
                    if not data:
                        return None
                    buf += data
                body = bytes(buf[:clen]).decode("utf-8", "replace").split("\0")[0]
                del buf[:clen]
        return cmd, headers, body

    def _reply(self, conn: EslConnection, reply: str) -> None:
        if not reply:
            return
        if reply.startswith("~"):
            conn.write(f"Content-Type: command/reply\n{reply[1:]}".encode())
        else:
            conn.write(f"Content-Type: command/reply\nReply-Text: {reply}\n\n".encode())

    def _command(
        self, conn: EslConnection, cmd: str, headers: list[Header], body: str | None
    ) -> None:
        """``parse_command`` + the reply; events the command fires go out after the reply."""
        self.commands.append(cmd)
        self._pending = []
        try:
            reply = self._parse_command(conn, cmd, headers, body)
        finally:
            pending, self._pending = self._pending, None
        self._reply(conn, reply)
        for ev in pending:
            self._deliver(ev)

    def _parse_command(
        self, conn: EslConnection, cmd: str, headers: list[Header], body: str | None
    ) -> str:
        low = cmd.lower()
        if low.startswith("exit") or low.startswith("..."):
            conn.running = False
            return "+OK bye"
        if not conn.authed:
            if low.startswith("auth "):
                if cmd[5:] == self.password:
                    conn.authed = True
                    self.auths += 1
                    return "+OK accepted"
                conn.running = False
                return "-ERR invalid"
            if low.startswith("userauth "):
                conn.running = False
                return "-ERR invalid"
            return "-ERR command not found"

        if low.startswith("filter "):
            return self._cmd_filter(conn, cmd[7:])
        if conn.session is not None and low.startswith("resume"):
            return "+OK"
        if conn.session is not None or low.startswith("myevents "):
            if conn.session is not None and low.startswith("getvar"):
                _, _, name = cmd.partition(" ")
                return conn.session.variables.get(name, "") or "-ERR command not found"
            if low.startswith("myevents"):
                return self._cmd_myevents(conn, cmd)
        if low.startswith("divert_events"):
            if conn.session is None:
                return "-ERR not controlling a session."
            onoff = cmd[13:].strip(" ")
            if not onoff:
                return "-ERR missing value."
            return "+OK events diverted" if onoff.lower() == "on" else "+OK events not diverted"
        if low.startswith("sendmsg"):
            return self._cmd_sendmsg(conn, cmd, headers)
        if low.startswith("sendevent"):
            return self._cmd_sendevent(cmd, headers, body)
        if low.startswith("api "):
            api_cmd, _, arg = cmd[4:].partition(" ")
            reply = self._api_reply(api_cmd, arg if _ else None)
            data = reply.encode()
            conn.write(f"Content-Type: api/response\nContent-Length: {len(data)}\n\n".encode())
            conn.write(data)
            return ""
        if low.startswith("bgapi "):
            return self._cmd_bgapi(cmd[6:], headers)
        if low.startswith("log"):
            level_s = cmd[4:] if len(cmd) > 3 else ""
            level = 7 if not level_s else _LOG_LEVELS.get(level_s.lower())
            if level_s.isdigit():
                level = min(int(level_s), 7)
            if level is None:
                return "-ERR invalid log level"
            conn.log_level = level
            return f"+OK log level {level_s} [{level}]"
        if low.startswith("linger"):
            if conn.session is None:
                return "-ERR not controlling a session"
            secs = cmd[7:] if cmd[6:7] == " " and cmd[7:] else ""
            conn.linger = _atoi(secs) if secs else -1
            return f"+OK will linger {conn.linger} seconds" if secs else "+OK will linger"
        if low.startswith("nolinger"):
            if conn.session is None:
                return "-ERR not controlling a session"
            conn.linger = None
            return "+OK will not linger"
        if low.startswith("nolog"):
            if conn.log_level is None:
                return "-ERR not loging"
            conn.log_level = None
            return "+OK no longer logging"
        if low.startswith("event"):
            return self._cmd_event(conn, cmd)
        if low.startswith("nixevent"):
            return self._cmd_nixevent(conn, cmd)
        if low.startswith("noevents"):
            if not conn.events_on:
                return "-ERR not listening for events"
            conn.events_on = False
            conn.event_ids.clear()
            conn.custom.clear()
            return "+OK no longer listening for events"
        return "-ERR command not found"

    def _cmd_filter(self, conn: EslConnection, rest: str) -> str:
        rest = rest.lstrip(" ")
        name, sp, value = rest.partition(" ")
        if name.lower() == "delete" and sp:
            name, sp2, val = value.partition(" ")
            if name.lower() == "all":
                conn.filters.clear()
            else:
                conn.filters = [
                    (k, v)
                    for k, v in conn.filters
                    if not (k.lower() == name.lower() and (not sp2 or not val or v == val))
                ]
            return f"+OK filter deleted. [{name}][{val if sp2 else ''}]"
        if sp:
            if name.lower() == "add":
                name, _, value = value.partition(" ")
            if value:
                conn.filters.append((name, value))
            return f"+OK filter added. [{name}]=[{value}]"
        return "-ERR invalid syntax"

    def _cmd_event(self, conn: EslConnection, cmd: str) -> str:
        _, sp, rest = cmd[5:].partition(" ")
        keys = 0
        custom = False
        if sp:
            for count, tok in enumerate(rest.split(" ")):
                if count == 0 and tok.lower() in ("plain", "xml", "json"):
                    conn.fmt = tok.lower()
                    continue
                if custom:
                    conn.custom.add(tok)
                    continue
                name = name_event(tok)
                if name is None:
                    continue
                keys += 1
                if name == "ALL":
                    conn.event_ids.update(EVENT_NAMES)
                conn.event_ids.add(name)
                if name == "CUSTOM":
                    custom = True
        if not keys:
            return "-ERR no keywords supplied"
        conn.events_on = True
        return f"+OK event listener enabled {conn.fmt}"

    def _cmd_nixevent(self, conn: EslConnection, cmd: str) -> str:
        _, sp, rest = cmd[5:].partition(" ")
        keys = 0
        custom = False
        if sp:
            for tok in rest.split(" "):
                if custom:
                    conn.custom.discard(tok)
                    continue
                name = name_event(tok)
                if name is None:
                    continue
                keys += 1
                if name == "CUSTOM":
                    custom = True
                elif name == "ALL":
                    conn.event_ids.clear()
                else:
                    if "ALL" in conn.event_ids:
                        conn.event_ids.discard("ALL")
                        conn.event_ids.update(n for n in EVENT_NAMES if n != "ALL")
                    conn.event_ids.discard(name)
        if not keys:
            return "-ERR no keywords supplied"
        conn.events_on = True
        return "+OK events nixed"

    def _cmd_myevents(self, conn: EslConnection, cmd: str) -> str:
        if conn.myevents:
            return "-ERR aready enabled."
        if conn.session is None:
            uuid, sp, _fmt = cmd[9:].partition(" ")
            conn.session = self._locate(uuid)
            if conn.session is None and sp:
                return "-ERR invalid uuid"
        conn.event_ids.update(MYEVENTS)
        conn.myevents = True
        conn.events_on = True
        if "xml" in cmd or "XML" in cmd:
            conn.fmt = "xml"
        if "json" in cmd or "JSON" in cmd:
            conn.fmt = "json"
        return "+OK Events Enabled"

    def _cmd_sendmsg(self, conn: EslConnection, cmd: str, headers: list[Header]) -> str:
        ev = FsEvent("CLONE", [("Command", cmd), *headers])
        uuid = cmd[7:].strip(" ") or ev.get("session-id") or ""
        if conn.session is not None and uuid == conn.session.uuid:
            uuid = ""
        ch = conn.session if not uuid else self._locate(uuid)
        if ch is None:
            return f"-ERR invalid session id [{uuid}]"
        ch.received_events.append(ev)
        what = (ev.get("call-command") or "").lower()
        if what == "hangup":
            ch._hangup(str2cause(ev.get("hangup-cause")), local=True, complete_now=False)
        elif what == "execute":
            app = (ev.get("execute-app-name") or "").lower()
            data = ev.get("execute-app-arg")
            if app == "set" and data and "=" in data:
                name, _, value = data.partition("=")
                ch._exec_app("set", data)
                ch._set(name, value)
            elif app == "unset" and data:
                ch._exec_app("unset", data)
                ch._set(data, None)
            elif app == "answer":
                ch._answer()
            elif app == "pre_answer":
                ch._pre_answer()
            elif app == "hangup":
                ch._hangup(str2cause(data), local=True, complete_now=False)
        return "+OK"

    def _cmd_sendevent(self, cmd: str, headers: list[Header], body: str | None) -> str:
        event_uuid = str(uuid_mod.uuid4())
        ename = cmd[9:].strip(" \t")
        name = (name_event(ename) if ename else None) or "CUSTOM"
        ev = FsEvent(name, [("Command", cmd), *headers, ("Event-UUID", event_uuid)])
        ev.body = body
        if ename and name_event(ename) == "CUSTOM" and (sub := ev.get("Event-Subclass")):
            ev.subclass = sub
            ev.headers = [(k, v) for k, v in ev.headers if k.lower() != "event-subclass"]
            ev.headers.append(("Event-Subclass", sub))
        target = self._locate(ev.get("unique-id"))
        if target is not None:
            target.received_events.append(ev)
            return f"+OK {event_uuid}"
        prep = self._new_event(name, "mod_event_socket.c", "parse_command", 2275)
        ev.headers += prep.headers
        self._fire(ev)
        return f"+OK {event_uuid}"

    def _cmd_bgapi(self, rest: str, headers: list[Header]) -> str:
        api_cmd, sp, arg = rest.partition(" ")
        job = next((v for k, v in headers if k.lower() == "job-uuid"), None)
        job = job or str(uuid_mod.uuid4())

        def run() -> None:
            ok, out = self._api_execute(api_cmd, arg if sp else None)
            reply = out if ok else f"-ERR {api_cmd} Command not found!\n"
            ev = self._new_event("BACKGROUND_JOB", "mod_event_socket.c", "api_exec", 1572)
            ev.add("Job-UUID", job)
            ev.add("Job-Command", api_cmd)
            ev.add("Job-Command-Arg", arg if sp else None)
            ev.body = reply
            self._fire(ev)

        asyncio.get_running_loop().call_soon(run)
        return f"~Reply-Text: +OK Job-UUID: {job}\nJob-UUID: {job}\n\n"
