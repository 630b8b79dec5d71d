"""The fake ESL server against the real FreeSWITCH 1.10.12 capture and against greenswitch.

1. Replay: the monitor client's bytes from the capture are sent verbatim, the call side is
   re-enacted through the FakeFsChannel API (admin at fs_cli, a control client's api and
   sendevent commands taken from the capture's API/CUSTOM events), and every message the fake
   sends the monitor is compared with the capture's (framing, content type, header names and
   order, values except clock/sequence/random ones).
2. greenswitch (what the adapter uses) in its own OS thread with its own gevent hub, bridged
   to asyncio, no monkey-patching: connect, api, CHANNEL_ANSWER and a CUSTOM event.
3. Reconnection over a raw asyncio client after a connection drop and a FreeSWITCH restart.
4. FreeSWITCH behaviours the capture does not show, over a raw socket.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib
import re
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

import pytest

from tests.freeswitch.fake_esl import FakeEsl, url_encode

T = TypeVar("T")

TRANSCRIPT = Path(__file__).parent / "freeswitch-esl-transcript.txt"
_MARKER = re.compile(rb"^### (<<< RECV|>>> SENT) [0-9.]+\n", re.M)
# Values that depend on the clock, on counters or on randomness, not on the protocol.
_VOLATILE = re.compile(
    r"Core-UUID|Event-Date-.*|Event-Sequence|Event-UUID|Caller-.*-Time|"
    r"variable_(session_id|sip_call_id|sip_from_tag|sip_to_tag|sip_full_from|sip_full_to|"
    r"sip_invite_stamp|rtp_local_sdp_str|rtp_use_ssrc|.*_stamp|.*_epoch|.*_uepoch|"
    r"(u|m)?duration|.*(sec|msec|usec)|rtp_audio_.*)"
)


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout)


# --- ESL messages ------------------------------------------------------------------------------
@dataclass
class Msg:
    """One ESL message: the outer header block and the Content-Length body."""

    headers: list[tuple[str, str]]
    body: bytes = b""

    def get(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    @property
    def content_type(self) -> str | None:
        return self.get("Content-Type")

    @property
    def event(self) -> list[tuple[str, str]]:
        """A text/event-plain body as (name, raw URL-encoded value) pairs."""
        text = self.body.decode()
        head, _, _ = text.partition("\n\n")
        return [(k, v) for k, _, v in (ln.partition(": ") for ln in head.split("\n"))]

    def ev(self, name: str) -> str | None:
        return next((unquote(v) for k, v in self.event if k == name), None)


def parse_stream(data: bytes) -> list[Msg]:
    out: list[Msg] = []
    pos = 0
    while pos < len(data):
        end = data.index(b"\n\n", pos)
        headers = [
            (k, v) for k, _, v in (ln.partition(": ") for ln in data[pos:end].decode().split("\n"))
        ]
        pos = end + 2
        msg = Msg(headers)
        if (n := msg.get("Content-Length")) is not None:
            msg.body = data[pos : pos + int(n)]
            pos += int(n)
        out.append(msg)
    return out


def transcript() -> list[tuple[bool, bytes]]:
    """(sent_by_client, bytes) per socket read/write of the capture."""
    raw = TRANSCRIPT.read_bytes()
    marks = list(_MARKER.finditer(raw))
    return [
        (m.group(1) == b">>> SENT", raw[m.end() : nxt.start() if nxt else len(raw)])
        for m, nxt in zip(marks, [*marks[1:], None], strict=True)
    ]


class RawEsl:
    """A minimal asyncio ESL client that keeps events apart from replies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.events: list[Msg] = []

    @classmethod
    async def connect(cls, port: int, password: str | None = "ClueCon") -> RawEsl:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        esl = cls(reader, writer)
        greeting = await esl.read()
        assert greeting.headers == [("Content-Type", "auth/request")]
        if password is not None:
            reply = await esl.command(f"auth {password}")
            assert reply.get("Reply-Text") == "+OK accepted", reply
        return esl

    async def read(self, timeout: float = 5.0) -> Msg:
        block = await asyncio.wait_for(self.reader.readuntil(b"\n\n"), timeout)
        msg = Msg(
            [(k, v) for k, _, v in (ln.partition(": ") for ln in block[:-2].decode().split("\n"))]
        )
        if (n := msg.get("Content-Length")) is not None:
            msg.body = await asyncio.wait_for(self.reader.readexactly(int(n)), timeout)
        return msg

    def send(self, cmd: str, headers: list[tuple[str, str]] | None = None) -> None:
        text = cmd + "\n" + "".join(f"{k}: {v}\n" for k, v in headers or []) + "\n"
        self.writer.write(text.encode())

    async def command(self, cmd: str, headers: list[tuple[str, str]] | None = None) -> Msg:
        self.send(cmd, headers)
        while True:
            msg = await self.read()
            if msg.content_type in ("text/event-plain", "text/event-json"):
                self.events.append(msg)
            else:
                return msg

    async def api(self, cmd: str) -> str:
        msg = await self.command(f"api {cmd}")
        assert msg.content_type == "api/response", msg
        return msg.body.decode()

    async def event(self, name: str | None = None, timeout: float = 5.0) -> Msg:
        while True:
            for i, msg in enumerate(self.events):
                if name is None or msg.ev("Event-Name") == name:
                    return self.events.pop(i)
            msg = await self.read(timeout)
            assert msg.content_type == "text/event-plain", msg
            self.events.append(msg)

    async def closed(self, timeout: float = 5.0) -> bool:
        """True when the server closed (EOF or reset) within ``timeout``."""
        try:
            while await asyncio.wait_for(self.reader.read(65536), timeout):
                pass
        except ConnectionError:
            return True
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


# --- 1. the capture ----------------------------------------------------------------------------
def compare(expected: Msg, actual: Msg, where: str) -> None:
    assert [k for k, _ in actual.headers] == [k for k, _ in expected.headers], where
    assert actual.content_type == expected.content_type, where
    assert actual.get("Reply-Text") == expected.get("Reply-Text"), where
    for msg in (expected, actual):
        if msg.get("Content-Length") is not None:
            assert int(msg.get("Content-Length") or "") == len(msg.body), where
    if expected.content_type != "text/event-plain":
        return
    assert actual.body.endswith(b"\n\n"), where
    exp, act = expected.event, actual.event
    assert [k for k, _ in act] == [k for k, _ in exp], where
    for (name, e_val), (_, a_val) in zip(exp, act, strict=True):
        if _VOLATILE.fullmatch(name):
            assert a_val, f"{where}: {name}"
            if name.endswith("-Time"):  # set or not set, as in the capture
                assert (a_val == "0") == (e_val == "0"), f"{where}: {name}"
        else:
            assert a_val == e_val, f"{where}: {name}"


def test_replay_of_the_capture() -> None:
    async def main() -> None:
        segments = transcript()
        expected = parse_stream(b"".join(d for sent, d in segments if not sent))
        assert len(expected) == 19  # greeting, 2 replies, 16 events
        fs = FakeEsl()
        port = await fs.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for sent, data in segments:
            if sent:
                writer.write(data)  # the monitor client's bytes, verbatim
        ctrl = await RawEsl.connect(port)
        uuid = next(m.ev("Unique-ID") for m in expected if m.ev("Event-Name") == "CHANNEL_CREATE")
        hangup = next(m for m in expected if m.ev("Event-Name") == "CHANNEL_HANGUP")
        ch = None
        fs_cli_done = False
        for msg in expected:
            name = msg.ev("Event-Name")
            if name == "CHANNEL_CREATE":
                ch = fs.new_call(
                    uuid=msg.ev("Unique-ID"),
                    caller=msg.ev("Caller-Caller-ID-Number") or "",
                    destination=msg.ev("Caller-Destination-Number") or "",
                    remote_media_ip=msg.ev("variable_remote_media_ip") or "",
                    remote_media_port=int(msg.ev("variable_remote_media_port") or 0),
                    local_media_ip="127.0.0.1",
                    local_media_port=26178,
                )
            elif name == "CHANNEL_ANSWER":
                assert ch is not None
                await ch.set_var("pbx_zrtp", "true")  # the dialplan of ext 9400
                await ch.set_var("rtp_adv_audio_ip", "127.0.0.2")
                await ch.answer(next_app="echo")
                await ch.auto_adjust("127.0.0.3", 40452)  # RTP latched onto the relay
            elif name == "API":
                cmd, arg = msg.ev("API-Command") or "", msg.ev("API-Command-Argument") or ""
                if not fs_cli_done:  # the admin at fs_cli, per the capture's notes
                    assert await fs.fs_cli(cmd, arg) == "+OK\n"
                    fs_cli_done = True
                elif cmd == "uuid_getvar":  # the control client; values as the capture had them
                    reply = await ctrl.api(f"{cmd} {arg}")
                    assert reply == hangup.ev("variable_" + arg.split(" ")[1]), (arg, reply)
                elif cmd == "uuid_kill":  # the channel is already gone
                    assert await ctrl.api(f"{cmd} {arg}") == "-ERR No such channel!\n"
                else:
                    assert await ctrl.api(f"{cmd} {arg}") == "+OK\n", (cmd, arg)
            elif name == "CUSTOM":
                names = [k for k, _ in msg.event]
                custom = names[names.index("Command") + 1 : names.index("Event-UUID")]
                headers = [("Event-Subclass", msg.ev("Event-Subclass") or "")]
                headers += [(k, msg.ev(k) or "") for k in custom]
                answer = await ctrl.command(msg.ev("Command") or "", headers)
                assert (answer.get("Reply-Text") or "").startswith("+OK "), answer
            elif name == "CHANNEL_HANGUP":
                assert ch is not None
                await ch.hangup(msg.ev("Hangup-Cause") or "")
        actual = []
        for _ in expected:
            block = await asyncio.wait_for(reader.readuntil(b"\n\n"), 5)
            msg = parse_stream(block)[0]
            if (n := msg.get("Content-Length")) is not None:
                msg.body = await asyncio.wait_for(reader.readexactly(int(n)), 5)
            actual.append(msg)
        for i, (exp, act) in enumerate(zip(expected, actual, strict=True)):
            compare(exp, act, f"message {i} ({exp.ev('Event-Name') or exp.content_type})")
        assert uuid is not None
        assert fs.channel(uuid).hangup_cause == "NORMAL_CLEARING"
        assert fs.commands[:2] == [
            "auth ClueCon",
            "event plain CHANNEL_CREATE CHANNEL_PROGRESS CHANNEL_PROGRESS_MEDIA CHANNEL_ANSWER "
            "CHANNEL_PARK CHANNEL_HANGUP CHANNEL_HANGUP_COMPLETE CALL_UPDATE API CUSTOM "
            "pbx_zrtp::request pbx_zrtp::sas",
        ]
        writer.close()
        await ctrl.close()
        await fs.close()

    run(main())


def test_url_encoding_matches_the_capture() -> None:
    assert (
        url_encode("Sat, 28 Nov 2026 17:16:23 GMT") == "Sat,%2028%20Nov%202026%2017%3A16%3A23%20GMT"
    )
    assert (
        url_encode("SIP/2.0/UDP 127.0.0.1:5070;branch=z")
        == "SIP/2.0/UDP%20127.0.0.1%3A5070%3Bbranch%3Dz"
    )
    assert url_encode('"phone" <1001>') == "%22phone%22%20%3C1001%3E"
    assert url_encode("a\r\nb%41%zz") == "a%0D%0Ab%41%25zz"  # %XX is not encoded twice
    assert url_encode("é\t") == "%C3%A9%09"


# --- 2. greenswitch ----------------------------------------------------------------------------
class GeventThread:
    """A gevent hub in its own OS thread (no monkey-patching anywhere).

    greenswitch objects belong to this thread: every call on them is submitted with
    ``call()``/``submit()`` (``loop.run_callback_threadsafe`` + a greenlet per call) and its
    result comes back through a ``concurrent.futures.Future``; greenswitch handlers hand events
    to asyncio with ``loop.call_soon_threadsafe``.
    """

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="gevent-esl", daemon=True)
        self._thread.start()
        assert self._ready.wait(5)

    def _main(self) -> None:
        gevent = importlib.import_module("gevent")  # untyped; no monkey-patching anywhere
        hub = gevent.get_hub()  # this thread's own hub and libev loop
        self._loop = hub.loop
        keepalive = hub.loop.async_()  # an active watcher keeps an idle hub from exiting
        keepalive.start(lambda: None)
        self._stop = importlib.import_module("gevent.event").Event()
        self._spawn = gevent.spawn
        self._ready.set()
        self._stop.wait()
        keepalive.stop()
        keepalive.close()
        hub.destroy(destroy_loop=True)

    def submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        cf: concurrent.futures.Future[T] = concurrent.futures.Future()

        def job() -> None:
            if not cf.set_running_or_notify_cancel():
                return
            try:
                cf.set_result(fn(*args))
            except BaseException as exc:
                cf.set_exception(exc)

        self._loop.run_callback_threadsafe(self._spawn, job)
        return cf

    async def call(self, fn: Callable[..., T], *args: Any, timeout: float = 5.0) -> T:
        return await asyncio.wait_for(asyncio.wrap_future(self.submit(fn, *args)), timeout)

    def stop(self) -> None:
        self._loop.run_callback_threadsafe(self._stop.set)
        self._thread.join(5)
        assert not self._thread.is_alive()


def test_greenswitch_in_its_own_thread() -> None:
    from greenswitch import InboundESL

    async def main() -> None:
        fs = FakeEsl()
        port = await fs.start()
        aloop = asyncio.get_running_loop()
        got: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        gt = GeventThread()
        try:

            def setup() -> tuple[Any, str]:
                esl = InboundESL("127.0.0.1", port, "ClueCon", timeout=5)
                esl.connect()

                def on_event(ev: Any) -> None:  # runs in the gevent thread
                    aloop.call_soon_threadsafe(got.put_nowait, dict(ev.headers))

                for name in ("CHANNEL_ANSWER", "pbx_zrtp::request", "CHANNEL_HANGUP_COMPLETE"):
                    esl.register_handle(name, on_event)
                reply = esl.send(
                    "event plain CHANNEL_ANSWER CHANNEL_HANGUP_COMPLETE CUSTOM pbx_zrtp::request"
                )
                return esl, reply.data

            esl, reply = await gt.call(setup)
            assert reply == "+OK event listener enabled plain"
            assert fs.auths == 1

            ch = fs.new_call(local_media_port=24680, variables={"pbx_zrtp_policy": "required"})
            await ch.answer()
            ev = await asyncio.wait_for(got.get(), 5)
            assert ev["Event-Name"] == "CHANNEL_ANSWER"
            assert ev["variable_local_media_port"] == "24680"
            assert ev["variable_pbx_zrtp_policy"] == "required"
            assert ev["Unique-ID"] == ch.uuid

            await ch.custom_event("pbx_zrtp::request", pbx_zrtp_policy="required")
            ev = await asyncio.wait_for(got.get(), 5)  # greenswitch dispatched it by subclass
            assert (ev["Event-Name"], ev["Event-Subclass"]) == ("CUSTOM", "pbx_zrtp::request")
            assert ev["pbx_zrtp_policy"] == "required"
            assert ev["Unique-ID"] == ch.uuid

            res = await gt.call(esl.send, f"api uuid_getvar {ch.uuid} local_media_port")
            assert res.data == "24680"
            res = await gt.call(esl.send, f"api uuid_setvar {ch.uuid} ZRTP_SAS k4b2")
            assert res.data == "+OK\n"
            assert ch.variables["ZRTP_SAS"] == "k4b2"
            res = await gt.call(esl.send, f"api uuid_getvar {ch.uuid} nothing")
            assert res.data == "_undef_"

            await ch.hangup()
            ev = await asyncio.wait_for(got.get(), 5)
            assert ev["Event-Name"] == "CHANNEL_HANGUP_COMPLETE"

            # greenswitch does not notice a dead server by itself: connected goes False, and
            # nothing else (no DISCONNECT handler call, a pending send() would wait forever).
            await fs.drop_connections()
            for _ in range(200):
                if not await gt.call(lambda: esl.connected):
                    break
                await asyncio.sleep(0.01)
            assert not await gt.call(lambda: esl.connected)
        finally:
            gt.stop()
            await fs.close()

    run(main())


# --- 3. reconnection ---------------------------------------------------------------------------
def test_reconnect_after_drop_and_restart() -> None:
    async def reconnect(port: int, deadline: float = 5.0) -> RawEsl:
        async def attempt() -> RawEsl:
            while True:
                try:
                    return await RawEsl.connect(port)
                except (ConnectionError, OSError, asyncio.IncompleteReadError):
                    await asyncio.sleep(0.05)

        return await asyncio.wait_for(attempt(), deadline)

    async def main() -> None:
        fs = FakeEsl()
        port = await fs.start()
        esl = await RawEsl.connect(port)
        await esl.command("event plain CHANNEL_CREATE")
        ch = fs.new_call(local_media_port=30000)
        core1 = (await esl.event("CHANNEL_CREATE")).ev("Core-UUID")

        await fs.drop_connections()
        assert await esl.closed()
        esl = await reconnect(port)
        assert fs.auths == 2
        assert await esl.api(f"uuid_exists {ch.uuid}") == "true"  # a drop loses no call

        await fs.restart(down_for=0.3)
        assert await esl.closed()
        esl = await reconnect(port)
        assert fs.port == port
        assert fs.auths == 3  # counted across restarts
        await esl.command("event plain CHANNEL_CREATE")
        assert await esl.api(f"uuid_exists {ch.uuid}") == "false"  # the restart lost it
        assert not ch.alive
        fs.new_call(local_media_port=30002)
        core2 = (await esl.event("CHANNEL_CREATE")).ev("Core-UUID")
        assert core1 and core2 and core1 != core2
        await esl.close()
        await fs.close()

    run(main())


def test_restart_refuses_connections_while_down() -> None:
    async def main() -> None:
        fs = FakeEsl()
        port = await fs.start()
        restart = asyncio.create_task(fs.restart(down_for=0.5))
        await asyncio.sleep(0.2)
        with pytest.raises(OSError):
            await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
        await restart
        esl = await RawEsl.connect(port)
        await esl.close()
        await fs.close()

    run(main())


# --- 4. behaviour the capture does not show ----------------------------------------------------
def test_auth_errors_and_exit() -> None:
    async def main() -> None:
        fs = FakeEsl(password="secret")
        port = await fs.start()
        esl = await RawEsl.connect(port, password=None)
        reply = await esl.command("api status")
        assert reply.headers == [
            ("Content-Type", "command/reply"),
            ("Reply-Text", "-ERR command not found"),
        ]
        reply = await esl.command("auth ClueCon")
        assert reply.get("Reply-Text") == "-ERR invalid"
        notice = await esl.read()
        assert notice.content_type == "text/disconnect-notice"
        assert (
            notice.body == b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
        )
        assert await esl.closed()
        assert fs.auths == 0

        esl = await RawEsl.connect(port, password="secret")
        assert (await esl.command("exit")).get("Reply-Text") == "+OK bye"
        assert (await esl.read()).content_type == "text/disconnect-notice"
        assert await esl.closed()
        await fs.close()

    run(main())


def test_api_commands() -> None:
    async def main() -> None:
        fs = FakeEsl()
        port = await fs.start()
        esl = await RawEsl.connect(port)
        ch = fs.new_call(local_media_port=20000, remote_media_ip="10.0.0.5")
        u = ch.uuid
        assert await esl.api(f"uuid_setvar {u} ZRTP_SECURE 1") == "+OK\n"
        assert await esl.api(f"uuid_getvar {u} ZRTP_SECURE") == "1"
        assert await esl.api(f"uuid_setvar {u} greeting hello world") == "+OK\n"
        assert ch.variables["greeting"] == "hello world"  # the 3rd field keeps the rest
        assert await esl.api(f"uuid_setvar {u} greeting") == "+OK\n"  # no value: unset
        assert "greeting" not in ch.variables
        assert await esl.api(f"uuid_setvar {u} a=1") == "+OK\n"  # unsets a var named "a=1"
        assert "a" not in ch.variables and "a=1" not in ch.variables
        assert await esl.api(f"uuid_setvar {u} a=1 x") == "+OK\n"
        assert ch.variables["a=1"] == "x"  # the literal name
        assert await esl.api(f"uuid_setvar_multi {u} a=1;b=2;c") == "+OK\n"
        assert (ch.variables["a"], ch.variables["b"], "c" in ch.variables) == ("1", "2", False)
        assert list(ch.variables)[-2:] == ["a", "b"]  # setting moves a variable to the end
        assert await esl.api(f"uuid_getvar {u} unset_thing") == "_undef_"
        assert await esl.api("uuid_getvar nope x") == "-ERR No such channel!\n"
        assert await esl.api("uuid_setvar nope x 1") == "-ERR No such channel!\n"
        assert (await esl.api("uuid_setvar_multi nope a=1")).startswith("-ERR No such channel!\n")
        assert await esl.api(f"uuid_exists {u}") == "true"
        assert await esl.api("uuid_exists nope") == "false"
        assert await esl.api(f"uuid_display {u} Bob") == "+OK Success\n"
        assert await esl.api("global_getvar hostname") == "vm"
        assert await esl.api("global_getvar no_such_var") == "-ERR no reply\n"
        # mod_commands: a second "=" makes global_setvar conditional (issue 13, defect 3)
        assert await esl.api("global_setvar g=a b=c") == "+OK"  # g unset, "c" expected
        assert await esl.api("global_getvar g") == "-ERR no reply\n"
        assert await esl.api("global_setvar g=one") == "+OK"
        assert await esl.api("global_setvar g=two=one") == "+OK"  # g was "one": set
        assert await esl.api("global_getvar g") == "two"
        assert await esl.api("global_setvar g=three=one") == "+OK"  # g is "two": kept
        assert await esl.api("global_getvar g") == "two"
        assert await esl.api("frobnicate 1 2") == "-ERR frobnicate Command not found!\n"
        status = await esl.api("status")
        assert status.startswith("UP 0 years, 0 days") and "is ready\n" in status
        assert "1 session(s) - peak 1" in status
        show = await esl.api("show channels as json")
        assert show.startswith('{"row_count":1,"rows":[{"uuid":"' + u)
        plain = (await esl.api("show channels")).split("\n")
        assert plain[0].startswith("uuid,direction,created,created_epoch,name,state,")
        assert plain[1].startswith(f"{u},inbound,") and plain[-2:] == ["1 total.", ""]
        assert await esl.api("show channels count") == "\n1 total.\n"

        await esl.command("event plain CHANNEL_HANGUP CHANNEL_HANGUP_COMPLETE API")
        esl.send(f"api uuid_kill {u} USER_BUSY")
        kinds = []
        for _ in range(4):
            msg = await esl.read()
            kinds.append(
                msg.ev("Event-Name") if msg.body.startswith(b"Event-") else msg.content_type
            )
            if msg.ev("Event-Name") == "CHANNEL_HANGUP_COMPLETE":
                assert msg.event[13] == ("Hangup-Cause", "USER_BUSY")
                assert msg.ev("variable_sip_hangup_disposition") == "send_refuse"
        assert kinds == ["api/response", "CHANNEL_HANGUP", "API", "CHANNEL_HANGUP_COMPLETE"]
        assert (ch.alive, ch.hangup_cause) == (False, "USER_BUSY")
        assert await esl.api("show channels as json") == '{"row_count": 0}\n'
        assert await esl.api("show channels") == "\n0 total.\n"
        await esl.close()
        await fs.close()

    run(main())


def test_events_bgapi_sendevent_and_fs_cli() -> None:
    async def main() -> None:
        fs = FakeEsl()
        port = await fs.start()
        mon = await RawEsl.connect(port)
        reply = await mon.command(
            "event plain CHANNEL_ANSWER API BACKGROUND_JOB CUSTOM pbx_zrtp::sas"
        )
        assert reply.get("Reply-Text") == "+OK event listener enabled plain"
        ctl = await RawEsl.connect(port)
        ch = fs.new_call(local_media_port=20002)

        await ch.custom_event("pbx_zrtp::request", pbx_zrtp_policy="optional")  # not subscribed
        await ch.pre_answer()  # not subscribed either
        await ch.answer()
        ans = await mon.event()
        assert ans.ev("Event-Name") == "CHANNEL_ANSWER"  # nothing before it
        assert ans.ev("Channel-Call-State") == "EARLY" and ans.ev("Answer-State") == "answered"

        out = await fs.fs_cli("uuid_setvar", f"{ch.uuid} pbx_zrtp_verified true")
        assert out == "+OK\n"
        api = await mon.event("API")
        assert api.event[-2:] == [
            ("API-Command", "uuid_setvar"),
            ("API-Command-Argument", url_encode(f"{ch.uuid} pbx_zrtp_verified true")),
        ]

        reply = await ctl.command("bgapi uuid_getvar", [("Job-UUID", "job-1")])
        assert reply.headers[1:] == [("Reply-Text", "+OK Job-UUID: job-1"), ("Job-UUID", "job-1")]
        job = await mon.event("BACKGROUND_JOB")
        assert job.ev("Job-Command") == "uuid_getvar" and job.ev("Job-Command-Arg") is None
        assert job.body.endswith(b"\nContent-Length: 21\n\n-USAGE: <uuid> <var>\n\n"[:-1])

        # sendevent with our own header is broadcast; with a live Unique-ID it is not
        sas = [
            ("Event-Subclass", "pbx_zrtp::sas"),
            ("pbx_zrtp_uuid", ch.uuid),
            ("zrtp_sas", "k4b2"),
        ]
        reply = await ctl.command("sendevent CUSTOM", sas)
        ev = await mon.event("CUSTOM")
        assert ev.event[0] == ("Event-Subclass", "pbx_zrtp%3A%3Asas")
        assert reply.get("Reply-Text") == f"+OK {ev.ev('Event-UUID')}"
        await ctl.command("sendevent CUSTOM", [*sas, ("Unique-ID", ch.uuid)])
        await ctl.command("sendevent CUSTOM", [*sas, ("Unique-ID", "gone"), ("n", "2")])
        ev = await mon.event("CUSTOM")
        assert ev.ev("n") == "2"  # the routed one never arrived
        assert [e.get("Command") for e in ch.received_events] == ["sendevent CUSTOM"]

        # a dialplan loop waiting for the adapter's variable
        waiter = asyncio.create_task(ch.wait_for_var("ZRTP_SECURE", lambda v: v == "1", 5))
        await asyncio.sleep(0.05)
        assert await ctl.api(f"uuid_setvar {ch.uuid} ZRTP_SECURE 1") == "+OK\n"
        assert await asyncio.wait_for(waiter, 5) == "1"
        assert await ch.wait_for_var("nothing", lambda v: v is not None, 0.05) is None

        # garbage on the wire reaches every client
        await fs.send_raw(b"Content-Type: text/garbage\n\n")
        while (await mon.read()).content_type != "text/garbage":
            pass
        for c in (mon, ctl):
            await c.close()
        await fs.close()

    run(main())
