"""The control API over real sockets: a Unix socket in tmp_path and TCP on 127.0.0.1.

Relays run on the loopback lab of ``helpers.py``; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import socket
import stat
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

import pytest

from pbx_zrtp.calls import Policy
from pbx_zrtp.endpoint import EndpointOptions, run_endpoint
from pbx_zrtp.relay.control import (
    MAX_LINE,
    ControlClient,
    ControlConnectionError,
    ControlError,
    parse_control_address,
)
from pbx_zrtp.relay.control.server import ControlServer
from pbx_zrtp.relay.core import Relay
from pbx_zrtp.relay.ctl import ctl_main, format_table
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from tests.relay.helpers import PHONE_HOST, RELAY_HOST, EchoPbx, free_even_port, make_relay

TOKEN = "s3cret-token-for-the-tests-0123456789"
WAIT = 5.0

T = TypeVar("T")


@pytest.fixture
def sock_path(tmp_path: pathlib.Path) -> Iterator[str]:
    """A Unix socket path in tmp_path (or a short temporary directory if tmp_path is
    too long for sun_path)."""
    path = tmp_path / "run" / "control.sock"
    if len(str(path)) <= 90:
        yield str(path)
        return
    directory = tempfile.mkdtemp(prefix="pzc")
    try:
        yield os.path.join(directory, "run", "control.sock")
    finally:
        import shutil

        shutil.rmtree(directory, ignore_errors=True)


class Raw:
    """A line-level client, to send exactly the bytes a test wants."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def unix(cls, path: str, limit: int = 1 << 24) -> Raw:
        reader, writer = await asyncio.open_unix_connection(path, limit=limit)
        return cls(reader, writer)

    @classmethod
    async def tcp(cls, port: int) -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)
        return cls(reader, writer)

    async def send(self, data: bytes | dict[str, Any]) -> None:
        if isinstance(data, dict):
            data = json.dumps(data).encode() + b"\n"
        self.writer.write(data)
        await self.writer.drain()

    async def recv(self) -> dict[str, Any]:
        line = await asyncio.wait_for(self.reader.readline(), WAIT)
        assert line, "the server closed the connection"
        message = json.loads(line)
        assert isinstance(message, dict)
        return message

    async def call(self, request: dict[str, Any]) -> dict[str, Any]:
        await self.send(request)
        reply = await self.recv()
        assert reply["type"] == "reply", reply
        return reply

    async def closed(self) -> bool:
        """True once the server has closed the connection (after any pending lines)."""
        try:
            while await asyncio.wait_for(self.reader.readline(), WAIT):
                pass
        except ConnectionError:
            pass
        self.writer.close()
        return True

    def close(self) -> None:
        self.writer.close()


@contextlib.asynccontextmanager
async def serving(
    sock_path: str,
    *,
    token: str | None = None,
    tcp: bool = False,
    **relay_options: Any,
) -> AsyncIterator[tuple[Relay, ControlServer, int]]:
    relay = make_relay(**relay_options)
    await relay.start()
    server = ControlServer(relay, token=token)
    await server.start_unix(sock_path)
    port = await server.start_tcp("127.0.0.1", 0) if tcp else 0
    try:
        yield relay, server, port
    finally:
        await server.close()
        await relay.close()


async def create_on_free_port(
    request: Callable[..., Awaitable[Any]], call_id: str, policy: str, **extra: Any
) -> Any:
    """Create through ``request`` on a free even port (retried if the port got taken)."""
    for _ in range(20):
        port = free_even_port()
        try:
            return await request(call_id=call_id, port=port, policy=policy, **extra)
        except ControlError as exc:
            if "cannot bind" not in str(exc):
                raise
    raise AssertionError("no free port for a mirror")


async def until(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, 60)

    return asyncio.run(bounded())


# ---------------------------------------------------------------------- protocol


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_hello_and_a_call_lifecycle(sock_path: str, transport: str) -> None:
    async def scenario() -> None:
        async with serving(sock_path, token=TOKEN, tcp=True) as (_relay, _server, port):
            raw = await (Raw.unix(sock_path) if transport == "unix" else Raw.tcp(port))
            hello = await raw.recv()
            assert hello == {
                "type": "hello",
                "service": "pbx-zrtp-control",
                "version": 1,
                "auth_required": transport == "tcp",
            }
            if transport == "tcp":
                assert await raw.call({"id": "a", "op": "auth", "token": TOKEN}) == {
                    "type": "reply",
                    "id": "a",
                    "ok": True,
                    "result": "authenticated",
                }
            assert await raw.call({"id": 1, "op": "ping"}) == {
                "type": "reply",
                "id": 1,
                "ok": True,
                "result": "pong",
            }

            async def create(**args: Any) -> Any:
                reply = await raw.call({"id": 2, "op": "create", **args})
                if not reply["ok"]:
                    raise ControlError(reply["error"])
                return reply["result"]

            report = await create_on_free_port(
                create, "call-1", "optional", self_uri="sip:100@pbx", peer_uri="sip:a@lan"
            )
            assert report["call_id"] == "call-1" and report["policy"] == "optional"
            assert report["state"] == "pending" and report["sas"] == ""
            call_port = report["port"]

            shown = await raw.call({"id": 3.5, "op": "show", "call_id": "call-1"})
            assert shown["id"] == 3.5 and shown["ok"] and shown["result"]["port"] == call_port
            listed = await raw.call({"id": None, "op": "list"})
            assert [c["call_id"] for c in listed["result"]] == ["call-1"]
            updated = await raw.call(
                {"id": 4, "op": "update", "call_id": "call-1", "policy": "off"}
            )
            assert updated["result"]["state"] == "off" and updated["result"]["policy"] == "off"
            stats = await raw.call({"id": 5, "op": "stats"})
            assert stats["result"]["calls"] == {"off": 1}
            deleted = await raw.call(
                {"id": 6, "op": "delete", "call_id": "call-1", "reason": "bye"}
            )
            assert deleted["result"]["state"] == "ended"
            assert deleted["result"]["reason"] == "bye"
            gone = await raw.call({"id": 7, "op": "show", "call_id": "call-1"})
            assert gone == {
                "type": "reply",
                "id": 7,
                "ok": False,
                "error": "no call 'call-1'",
                "code": "no_such_call",  # a program tells "gone" from "refused" by this
            }
            stats = await raw.call({"id": 8, "op": "stats"})
            assert stats["result"]["calls"] == {}
            assert sum(stats["result"]["ended"].values()) == 1
            raw.close()

    run(scenario())


def test_client_over_tcp_and_unix_with_relay_errors(sock_path: str) -> None:
    async def scenario() -> None:
        async with (
            serving(sock_path, token=TOKEN, tcp=True) as (_relay, _server, port),
            ControlClient(f"tcp:127.0.0.1:{port}", token=TOKEN) as tcp,
            ControlClient(f"unix:{sock_path}") as unix,
        ):
            assert tcp.hello["auth_required"] is True
            assert unix.hello["auth_required"] is False
            report = await create_on_free_port(
                lambda **a: tcp.request("create", **a), "c", "required"
            )
            assert report["state"] == "pending"
            seen = await unix.request("list")
            assert [c["call_id"] for c in seen] == ["c"]
            with pytest.raises(ControlError, match="already has a mirror"):
                await unix.request("create", call_id="c", port=report["port"], policy="off")
            with pytest.raises(ControlError, match="not secure: there is no SAS"):
                await unix.request("verify", call_id="c")
            with pytest.raises(ControlError, match="outside the relay's range"):
                await unix.request("create", call_id="d", port=2, policy="off")
            assert (await unix.request("delete", call_id="c"))["state"] == "ended"
            assert await tcp.request("list") == []

    run(scenario())


def test_subscribe_streams_pending_then_failed(sock_path: str) -> None:
    async def scenario() -> None:
        async with (
            serving(sock_path, required_timeout=0.5),
            ControlClient(f"unix:{sock_path}") as watcher,
        ):
            assert await watcher.request("subscribe") == "subscribed"
            with pytest.raises(ControlError, match="already subscribed"):
                await watcher.request("subscribe")
            async with ControlClient(f"unix:{sock_path}") as adapter:
                await create_on_free_port(
                    lambda **a: adapter.request("create", **a), "req-1", "required"
                )
                events = watcher.events()
                first = await asyncio.wait_for(anext(events), WAIT)
                assert first["type"] == "event" and first["event"] == "state"
                assert first["call"]["call_id"] == "req-1"
                assert first["call"]["state"] == "pending"
                second = await asyncio.wait_for(anext(events), WAIT)
                assert second["call"]["state"] == "failed"
                assert "no packet from the phone" in second["call"]["reason"]
                # The watcher can still make requests while subscribed.
                assert (await watcher.request("show", call_id="req-1"))["state"] == "failed"
                await adapter.request("delete", call_id="req-1")
                third = await asyncio.wait_for(anext(events), WAIT)
                assert third["call"]["state"] == "ended"

    run(scenario())


def test_secure_call_verify_and_table(sock_path: str) -> None:
    async def scenario() -> None:
        async with serving(sock_path), ControlClient(f"unix:{sock_path}") as client:
            report = await create_on_free_port(
                lambda **a: client.request("create", **a),
                "sec-1",
                "required",
                self_uri="sip:100@pbx",
                peer_uri="sip:phone@lan",
            )
            pbx = EchoPbx(report["port"])
            await pbx.start()
            try:
                phone = await run_endpoint(
                    ZrtpConfiguration(zid=b"Q" * 12),
                    EndpointOptions(
                        bind=(PHONE_HOST, 0),
                        peer=(RELAY_HOST, report["port"]),
                        srtp_count=5,
                        timeout=10,
                    ),
                )
            finally:
                pbx.close()
            shown = await client.request("show", call_id="sec-1")
            assert shown["state"] == "secure" and shown["sas"] == phone["sas"]
            assert shown["sas_verified"] is False
            verified = await client.request("verify", call_id="sec-1")
            assert verified["sas_verified"] is True
            table = format_table(await client.request("list"))
            assert table.splitlines()[1].split() == [
                "sec-1",
                str(report["port"]),
                "secure",
                "required",
                phone["sas"],
                "yes",
            ]
            unverified = await client.request("verify", call_id="sec-1", verified=False)
            assert unverified["sas_verified"] is False

    run(scenario())


# ---------------------------------------------------------------------- Unix socket


def test_unix_socket_file_mode_directory_and_stale_socket(sock_path: str) -> None:
    async def scenario() -> None:
        directory = os.path.dirname(sock_path)
        relay = make_relay()
        server = ControlServer(relay)
        await server.start_unix(sock_path)
        assert stat.S_IMODE(os.stat(directory).st_mode) & 0o077 == 0  # created 0700
        info = os.lstat(sock_path)
        assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
        assert os.listdir(directory) == ["control.sock"]  # no temporary left behind
        # A live socket is not taken over.
        with pytest.raises(RuntimeError, match="another process"):
            await ControlServer(relay).start_unix(sock_path)
        await server.close()
        assert not os.path.exists(sock_path)

        # A stale socket (nobody listening) is replaced; a custom mode is applied.
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(sock_path)
        stale.close()
        server = ControlServer(relay)
        await server.start_unix(sock_path, mode=0o660)
        assert stat.S_IMODE(os.lstat(sock_path).st_mode) == 0o660
        raw = await Raw.unix(sock_path)
        assert (await raw.recv())["type"] == "hello"
        raw.close()
        await server.close()

        # Anything else at the path is left alone.
        pathlib.Path(sock_path).write_text("not a socket")
        with pytest.raises(ValueError, match="not a socket"):
            await ControlServer(relay).start_unix(sock_path)
        assert pathlib.Path(sock_path).read_text() == "not a socket"
        with pytest.raises(ValueError, match="too long"):
            await ControlServer(relay).start_unix("/tmp/" + "x" * 120)

    run(scenario())


# ---------------------------------------------------------------------- TCP and auth


def test_tcp_requires_a_token() -> None:
    async def scenario() -> None:
        relay = make_relay()
        with pytest.raises(ValueError, match="refuses to listen on TCP without a token"):
            await ControlServer(relay).start_tcp("127.0.0.1", 0)
        with pytest.raises(ValueError, match="too short"):
            await ControlServer(relay, token="short").start_tcp("127.0.0.1", 0)
        with pytest.raises(ValueError, match="must not be empty"):
            ControlServer(relay, token="")

    run(scenario())


def test_tcp_wrong_token_and_unauthenticated_ops_are_refused(sock_path: str) -> None:
    async def scenario() -> None:
        async with serving(sock_path, token=TOKEN, tcp=True) as (_relay, server, port):
            wrong = await Raw.tcp(port)
            assert (await wrong.recv())["auth_required"] is True
            reply = await wrong.call({"id": 1, "op": "auth", "token": "guess-guess-guess"})
            assert reply == {
                "type": "reply",
                "id": 1,
                "ok": False,
                "error": "authentication failed: closing",
                "code": "bad_request",
            }
            assert "guess" not in json.dumps(reply)
            assert await wrong.closed()

            sneaky = await Raw.tcp(port)
            await sneaky.recv()
            reply = await sneaky.call({"id": 2, "op": "list"})
            assert not reply["ok"] and "authentication required" in reply["error"]
            assert await sneaky.closed()

            typed = await Raw.tcp(port)
            await typed.recv()
            reply = await typed.call({"id": 3, "op": "auth", "token": 12345})
            assert reply["error"] == "field 'token' must be a string, got number"
            typed.close()

            with pytest.raises(ControlError, match="authentication failed"):
                await ControlClient(f"tcp:127.0.0.1:{port}", token="x" * 20).connect()
            with pytest.raises(ControlError, match="requires a token"):
                await ControlClient(f"tcp:127.0.0.1:{port}").connect()
            # None of this disturbed an authenticated client.
            async with ControlClient(f"tcp:127.0.0.1:{port}", token=TOKEN) as good:
                assert await good.request("ping") == "pong"
            await until(lambda: server.client_count == 0)

    run(scenario())


# ---------------------------------------------------------------------- bad input


BAD_REQUESTS: list[tuple[bytes, Any, str]] = [
    (b"{not json\n", None, "malformed JSON: "),
    (b"[1, 2]\n", None, "a request must be a JSON object, got array"),
    (b'{"id": 1, "op": "ping", "x": NaN}\n', None, "malformed JSON: NaN is not valid JSON"),
    (b"\xff\xfe\n", None, "malformed request: not UTF-8"),
    (b"[" * 60000 + b"\n", None, "malformed JSON"),
    (b'{"id": [1], "op": "ping"}\n', None, "field 'id' must be a string, number"),
    (b'{"id": 1e400, "op": "ping"}\n', None, "field 'id' must be a finite number"),
    (b'{"id": 1}\n', 1, "missing field 'op'"),
    (b'{"id": 1, "op": 5}\n', 1, "field 'op' must be a string, got number"),
    (b'{"id": 1, "op": "explode"}\n', 1, "unknown op 'explode'"),
    (b'{"id": 1, "op": "ping", "extra": 1}\n', 1, "unknown field 'extra' for op 'ping'"),
    (b'{"id": 1, "op": "show"}\n', 1, "missing field 'call_id' for op 'show'"),
    (b'{"id": 1, "op": "show", "call_id": 7}\n', 1, "field 'call_id' must be a string, got"),
    (b'{"id": 1, "op": "show", "call_id": ""}\n', 1, "field 'call_id' must not be empty"),
    (b'{"id": 1, "op": "show", "call_id": "a\\nb"}\n', 1, "must not contain control char"),
    (
        b'{"id": 1, "op": "create", "call_id": "c", "port": "10000", "policy": "off"}\n',
        1,
        "field 'port' must be an integer, got string",
    ),
    (
        b'{"id": 1, "op": "create", "call_id": "c", "port": true, "policy": "off"}\n',
        1,
        "field 'port' must be an integer, got boolean",
    ),
    (
        b'{"id": 1, "op": "create", "call_id": "c", "port": 10000.0, "policy": "off"}\n',
        1,
        "field 'port' must be an integer, got number",
    ),
    (
        b'{"id": 1, "op": "create", "call_id": "c", "port": 70000, "policy": "off"}\n',
        1,
        "field 'port' must be 1-65535",
    ),
    (
        b'{"id": 1, "op": "create", "call_id": "c", "port": 10000}\n',
        1,
        "missing field 'policy' for op 'create'",
    ),
    (
        b'{"id": 1, "op": "create", "call_id": "c", "port": 10000, "policy": "maybe"}\n',
        1,
        "field 'policy' must be one of 'off', 'optional', 'required'",
    ),
    (
        b'{"id": 1, "op": "create", "call_id": "c", "port": 10000, "policy": "off",'
        b' "pbx_host": "pbx.example"}\n',
        1,
        "field 'pbx_host' must be an IP address",
    ),
    (
        b'{"id": 1, "op": "create", "call_id": "c", "port": 10000, "policy": "off",'
        b' "pbx_host": "::1"}\n',
        1,
        "field 'pbx_host' must be an IPv4 address",
    ),
    (
        b'{"id": 1, "op": "create", "call_id": "c", "port": 10000, "policy": "off",'
        b' "phone_host": "127.0.0.9"}\n',
        1,
        "fields 'phone_host' and 'phone_port' go together",
    ),
    (
        b'{"id": 1, "op": "create", "call_id": "c", "port": 10000, "policy": "off",'
        b' "pbx_port": 65535}\n',
        1,
        "field 'pbx_port' must be 1-65534",
    ),
    (
        b'{"id": 1, "op": "verify", "call_id": "c", "verified": "yes"}\n',
        1,
        "field 'verified' must be true or false, got string",
    ),
    (
        b'{"id": 1, "op": "delete", "call_id": "c", "reason": {}}\n',
        1,
        "field 'reason' must be a string, got object",
    ),
    (b'{"id": 1, "op": "update", "call_id": "c"}\n', 1, "missing field 'policy'"),
]


def test_bad_requests_get_precise_errors_and_the_connection_stays(sock_path: str) -> None:
    async def scenario() -> None:
        async with serving(sock_path):
            raw = await Raw.unix(sock_path)
            await raw.recv()
            for data, expected_id, message in BAD_REQUESTS:
                await raw.send(data)
                reply = await raw.recv()
                assert reply["type"] == "reply" and reply["ok"] is False, (data, reply)
                assert reply["id"] == expected_id, (data, reply)
                assert message in reply["error"], (data, reply)
            await raw.send(b"\n  \n")  # blank lines are ignored
            assert (await raw.call({"id": "after", "op": "ping"}))["result"] == "pong"
            raw.close()

    run(scenario())


def test_overlong_line_closes_only_that_connection(sock_path: str) -> None:
    async def scenario() -> None:
        async with serving(sock_path):
            bystander = await Raw.unix(sock_path)
            await bystander.recv()
            raw = await Raw.unix(sock_path)
            await raw.recv()
            # Exactly MAX_LINE bytes is still accepted.
            padded = {"id": 1, "op": "ping"}
            text = json.dumps(padded)
            line = text[:-1] + " " * (MAX_LINE - len(text)) + "}"
            assert len(line) == MAX_LINE
            await raw.send(line.encode() + b"\n")
            assert (await raw.recv())["result"] == "pong"
            await raw.send(b'{"id": 2, "op": "ping", "pad": "' + b"x" * MAX_LINE + b'"}\n')
            reply = await raw.recv()
            assert reply["id"] is None and "longer than 65536 bytes" in reply["error"]
            assert await raw.closed()
            assert (await bystander.call({"id": 3, "op": "ping"}))["result"] == "pong"
            bystander.close()

    run(scenario())


def test_internal_errors_are_generic_and_the_connection_stays(sock_path: str) -> None:
    async def scenario() -> None:
        async with serving(sock_path) as (relay, _server, _port):

            def broken() -> dict[str, Any]:
                raise RuntimeError("detail that must not leak")

            relay.stats = broken  # type: ignore[method-assign]
            async with ControlClient(f"unix:{sock_path}") as client:
                with pytest.raises(ControlError) as caught:
                    await client.request("stats")
                assert str(caught.value) == "internal error in op 'stats' (see the relay's log)"
                assert await client.request("ping") == "pong"

    run(scenario())


def test_too_many_clients_are_refused(sock_path: str) -> None:
    async def scenario() -> None:
        relay = make_relay()
        server = ControlServer(relay, max_clients=1)
        await server.start_unix(sock_path)
        try:
            async with ControlClient(f"unix:{sock_path}") as first:
                with pytest.raises(ControlError, match="too many control connections"):
                    await ControlClient(f"unix:{sock_path}").connect()
                assert await first.request("ping") == "pong"
        finally:
            await server.close()

    run(scenario())


# ---------------------------------------------------------------------- slow clients


def test_a_subscriber_that_never_reads_blocks_nobody(sock_path: str) -> None:
    async def scenario() -> None:
        relay = make_relay()
        await relay.start()
        server = ControlServer(relay, write_timeout=0.5)
        await server.start_unix(sock_path)
        loop = asyncio.get_running_loop()
        try:
            # A small stream buffer: once 8 KiB are buffered, asyncio stops reading the
            # socket for us, like a client that stopped reading.
            stuck = await Raw.unix(sock_path, limit=4096)
            await stuck.recv()
            assert (await stuck.call({"id": 1, "op": "subscribe"}))["ok"]
            # From here on `stuck` reads nothing while events pile up for it.
            async with ControlClient(f"unix:{sock_path}") as fast:

                async def create(**args: Any) -> Any:
                    return await asyncio.wait_for(fast.request("create", **args), WAIT)

                slowest = 0.0
                cycles = 0
                while server.client_count > 1 and cycles < 5000:
                    cycles += 1
                    started = loop.time()
                    call_id = f"flood-{cycles}"
                    await create_on_free_port(create, call_id, "optional")
                    await asyncio.wait_for(fast.request("delete", call_id=call_id), WAIT)
                    slowest = max(slowest, loop.time() - started)
                assert server.client_count == 1, f"the stuck client survived {cycles} cycles"
                assert slowest < 1.0, f"a request waited {slowest:.2f} s"
                assert await fast.request("ping") == "pong"
            # The stuck client gets what was buffered, then the end of the connection.
            assert await stuck.closed()
        finally:
            await server.close()
            await relay.close()

    run(scenario())


def test_a_subscriber_that_falls_behind_is_told_and_dropped(sock_path: str) -> None:
    async def scenario() -> None:
        async with (
            serving(sock_path) as (relay, server, _port),
            ControlClient(f"unix:{sock_path}") as watcher,
        ):
            await watcher.request("subscribe")
            await create_on_free_port(
                lambda **a: watcher.request("create", **a), "burst", "optional"
            )
            # More events in one go than a subscription holds (1000): it overflows.
            for i in range(1100):
                relay.update("burst", policy=Policy.OFF if i % 2 == 0 else Policy.OPTIONAL)
            events = watcher.events()
            got: list[dict[str, Any]] = []
            with pytest.raises(ControlConnectionError):
                while True:
                    got.append(await asyncio.wait_for(anext(events), WAIT))
            assert got[-1]["event"] == "end" and "fell behind" in got[-1]["reason"]
            assert len(got) < 10  # stale events are not delivered after an overflow
            await until(lambda: server.client_count == 0)
            assert not relay._subscribers

    run(scenario())


def test_tcp_client_that_does_not_authenticate_in_time_is_dropped(
    sock_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("pbx_zrtp.relay.control.server.AUTH_TIMEOUT", 0.2)

    async def scenario() -> None:
        async with serving(sock_path, token=TOKEN, tcp=True) as (_relay, _server, port):
            idle = await Raw.tcp(port)
            await idle.recv()
            reply = await idle.recv()
            assert reply["error"] == "authentication timed out: closing"
            assert await idle.closed()

    run(scenario())


def test_client_events_end_with_an_error_when_the_server_goes(sock_path: str) -> None:
    async def scenario() -> None:
        relay = make_relay()
        server = ControlServer(relay)
        await server.start_unix(sock_path)
        client = ControlClient(f"unix:{sock_path}")
        await client.connect()
        await client.request("subscribe")
        await server.close()
        with pytest.raises(ControlConnectionError, match="closed the control connection"):
            await asyncio.wait_for(anext(client.events()), WAIT)
        with pytest.raises(ControlConnectionError):
            await client.request("ping")
        await client.close()
        with pytest.raises(ControlConnectionError, match="is `pbx-zrtp relay` running"):
            await ControlClient(f"unix:{sock_path}").connect()

    run(scenario())


def test_parse_control_address() -> None:
    assert parse_control_address("unix:/run/x.sock") == ("unix", "/run/x.sock", 0)
    assert parse_control_address("/run/x.sock") == ("unix", "/run/x.sock", 0)
    assert parse_control_address("tcp:127.0.0.1:5097") == ("tcp", "127.0.0.1", 5097)
    assert parse_control_address("tcp:[::1]:5097") == ("tcp", "::1", 5097)
    for bad in ("unix:", "tcp:host", "tcp:host:x", "tcp:host:0", "http://x"):
        with pytest.raises(ValueError):
            parse_control_address(bad)


# ---------------------------------------------------------------------- pbx-zrtp ctl


class ThreadedRelay:
    """A relay and its control server on an event loop in a background thread."""

    def __init__(self, sock_path: str, token: str | None = None) -> None:
        self.sock_path = sock_path
        self.token = token
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.relay: Relay | None = None
        self.server: ControlServer | None = None
        self.tcp_port = 0

    def call(self, coro: Awaitable[T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(_as_coroutine(coro), self.loop)
        return future.result(timeout=30)

    def __enter__(self) -> ThreadedRelay:
        self.thread.start()

        async def start() -> None:
            self.relay = make_relay()
            await self.relay.start()
            self.server = ControlServer(self.relay, token=self.token)
            await self.server.start_unix(self.sock_path)
            if self.token:
                self.tcp_port = await self.server.start_tcp("127.0.0.1", 0)

        self.call(start())
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            assert self.server is not None and self.relay is not None
            await self.server.close()
            await self.relay.close()

        try:
            self.call(stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


async def _as_coroutine(awaitable: Awaitable[T]) -> T:
    return await awaitable


def test_ctl_list_show_json_and_errors(
    sock_path: str, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with ThreadedRelay(sock_path, token=TOKEN) as lab:
        control = ["--control", f"unix:{sock_path}"]
        assert ctl_main([*control, "list"]) == 0
        assert capsys.readouterr().out == "no calls\n"

        port = 0
        for _ in range(20):
            port = free_even_port()
            code = ctl_main([*control, "create", "ctl-1", str(port), "--policy", "optional"])
            if code == 0:
                break
        assert code == 0
        out = capsys.readouterr().out
        assert "call:" in out and "ctl-1" in out and "pending" in out

        assert ctl_main([*control, "list"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].split() == ["CALL", "PORT", "STATE", "POLICY", "SAS", "VERIFIED"]
        assert lines[1].split() == ["ctl-1", str(port), "pending", "optional", "-", "-"]

        assert ctl_main([*control, "--json", "list"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert [c["call_id"] for c in listed] == ["ctl-1"]
        assert ctl_main([*control, "show", "ctl-1", "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["port"] == port and shown["state"] == "pending"
        assert ctl_main([*control, "show", "ctl-1"]) == 0
        assert "policy:" in capsys.readouterr().out

        assert ctl_main([*control, "update", "ctl-1", "--policy", "off", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["state"] == "off"
        assert ctl_main([*control, "verify", "ctl-1"]) == 1
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err == ("pbx-zrtp ctl: the call is not secure: there is no SAS to verify\n")
        assert ctl_main([*control, "stats", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["calls"] == {"off": 1}
        assert ctl_main([*control, "stats"]) == 0
        assert "uptime s:" in capsys.readouterr().out
        assert ctl_main([*control, "ping"]) == 0
        assert capsys.readouterr().out == "pong\n"

        # Over TCP, with and without the token file.
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN + "\n")
        token_file.chmod(0o644)  # others could read it: ctl refuses, like the relay does
        tcp = ["--control", f"tcp:127.0.0.1:{lab.tcp_port}"]
        assert ctl_main([*tcp, "--token-file", str(token_file), "list"]) == 1
        assert "readable by other users" in capsys.readouterr().err
        token_file.chmod(0o600)
        assert ctl_main([*tcp, "--token-file", str(token_file), "--json", "list"]) == 0
        assert [c["call_id"] for c in json.loads(capsys.readouterr().out)] == ["ctl-1"]
        assert ctl_main([*tcp, "list"]) == 1
        assert "requires a token" in capsys.readouterr().err
        assert ctl_main([*tcp, "--token-file", str(tmp_path / "missing"), "list"]) == 1
        assert "--token-file: cannot read" in capsys.readouterr().err

        assert ctl_main([*control, "delete", "ctl-1", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["state"] == "ended"
        assert ctl_main([*control, "show", "ctl-1"]) == 1
        assert capsys.readouterr().err == "pbx-zrtp ctl: no call 'ctl-1'\n"

    missing = os.path.join(os.path.dirname(sock_path), "nobody.sock")
    assert ctl_main(["--control", f"unix:{missing}", "list"]) == 1
    assert capsys.readouterr().err == (
        f"pbx-zrtp ctl: cannot reach the relay control socket at unix:{missing}:"
        " is `pbx-zrtp relay` running?\n"
    )
    assert ctl_main(["--control", "nonsense", "list"]) == 2
    assert ctl_main(["create", "x", "10000"]) == 2  # --policy is required


def test_ctl_watch_prints_events_as_json(
    sock_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with ThreadedRelay(sock_path) as lab:
        assert lab.relay is not None
        relay = lab.relay

        async def end_stream_soon() -> None:
            # Give `watch` time to subscribe, then cause events and end the stream.
            for _ in range(200):
                if relay._subscribers:
                    break
                await asyncio.sleep(0.01)
            port = free_even_port()
            await relay.create("w-1", port, Policy.OFF)
            relay.delete("w-1", "done")
            for sub in list(relay._subscribers):
                sub.close()

        pending = asyncio.run_coroutine_threadsafe(end_stream_soon(), lab.loop)
        code = ctl_main(["--control", f"unix:{sock_path}", "watch", "--json"])
        pending.result(timeout=10)
        captured = capsys.readouterr()
        lines = [json.loads(line) for line in captured.out.splitlines()]
        assert [(e["event"], e.get("call", {}).get("state")) for e in lines] == [
            ("state", "off"),
            ("state", "ended"),
            ("end", None),
        ]
        assert code == 1  # the stream ended without Ctrl-C
        assert captured.err.startswith("pbx-zrtp ctl: the event stream ended: ")


def test_every_op_is_in_the_table_the_docs_and_ctl() -> None:
    """Adding an op is one function in ops.py and one ctl entry: nothing else can lag
    behind unnoticed (the docs list each op's fields under its own heading)."""
    import pathlib
    import re

    from pbx_zrtp.relay.control.ops import OPS
    from pbx_zrtp.relay.ctl import COMMANDS

    docs = (pathlib.Path(__file__).parents[2] / "docs" / "control-api.md").read_text()
    documented = set(re.findall(r"^### `(\w+)` \{", docs, re.M))
    assert documented == set(OPS)
    assert set(COMMANDS) == set(OPS) - {"auth", "subscribe"}  # those two ctl does itself
