"""A slow retained-secret store never stalls the relay (issue 11, item 5).

The store is the real SQLite store behind a wrapper that takes 2 s per call (a
PostgreSQL server that has gone away answers after its 2-3 s time-outs). While a
new call's handshake waits for its lookup, an already secured call keeps carrying
media both ways through the relay, and ``pbx-zrtp ctl list`` answers.

Everything that measures runs in threads with blocking sockets, outside the
relay's event loop: if the loop stalls, the measurements see it. The assertions
count packets forwarded *during* the store's stall, they do not time the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from pbx_zrtp.cache.base import CacheEntry, CacheError, CacheKey, SecretCache
from pbx_zrtp.cache.memory import MemorySecretCache
from pbx_zrtp.cache.sqlite import SqliteSecretCache
from pbx_zrtp.endpoint import EndpointOptions, run_endpoint
from pbx_zrtp.relay.control import ControlServer
from pbx_zrtp.relay.core import Relay, RelayError
from pbx_zrtp.relay.ctl import ctl_main
from pbx_zrtp.relay.mirror import Policy
from pbx_zrtp.srtp import SrtpContext
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from pbx_zrtp.zrtp.events import SrtpKeys
from tests.relay.helpers import (
    PBX_HOST,
    PHONE_HOST,
    RELAY_HOST,
    EchoPbx,
    Recorder,
    create_call,
    make_relay,
)

T = TypeVar("T")

DELAY = 2.0  # seconds per store call
PHONE_A = bytes.fromhex("aa00000000000000000000a1")
PHONE_B = bytes.fromhex("bb00000000000000000000b2")
PHONE_SSRC = 0x0A0A0A0A
PBX_SSRC = 0x0B0B0B0B


class SlowStore(SecretCache):
    """The SQLite store, ``DELAY`` seconds per call; records when each call ran."""

    def __init__(self, inner: SecretCache) -> None:
        self.inner = inner
        self.lock = threading.Lock()
        self.calls: list[tuple[str, bytes, float, float]] = []  # what, peer ZID, start, end
        self.active = 0
        self.lookup_started: dict[bytes, threading.Event] = {}

    def _slow(self, what: str, key: CacheKey, run: Callable[[], T]) -> T:
        start = time.monotonic()
        with self.lock:
            self.active += 1
        self.lookup_started.setdefault(key.peer_zid, threading.Event())
        if what == "lookup":
            self.lookup_started[key.peer_zid].set()
        try:
            time.sleep(DELAY)
            return run()
        finally:
            with self.lock:
                self.active -= 1
                self.calls.append((what, key.peer_zid, start, time.monotonic()))

    def lookup(self, key: CacheKey) -> CacheEntry:
        return self._slow("lookup", key, lambda: self.inner.lookup(key))

    def update_retained_secret(
        self, key: CacheKey, rs1: bytes, lifetime: int, *, keep_previous: bool
    ) -> None:
        self._slow(
            "update",
            key,
            lambda: self.inner.update_retained_secret(
                key, rs1, lifetime, keep_previous=keep_previous
            ),
        )

    def set_sas_verified(self, key: CacheKey, verified: bool) -> None:
        self._slow("verified", key, lambda: self.inner.set_sas_verified(key, verified))

    def store_pbx_secret(self, key: CacheKey, secret: bytes, lifetime: int) -> None:
        self._slow("pbx", key, lambda: self.inner.store_pbx_secret(key, secret, lifetime))

    def forget(self, key: CacheKey) -> None:
        self._slow("forget", key, lambda: self.inner.forget(key))

    def local_zid(self, create: Callable[[], bytes], name: str = "default") -> bytes:
        return self.inner.local_zid(create, name)  # start-up only, not in a call

    def window(self, what: str, peer: bytes) -> tuple[float, float]:
        with self.lock:
            return next((s, e) for w, z, s, e in self.calls if w == what and z == peer)


class Stream(threading.Thread):
    """Sends one RTP stream every 20 ms from ``sock`` and records what comes back."""

    def __init__(
        self,
        sock: socket.socket,
        target: tuple[str, int],
        ssrc: int,
        protect: Callable[[bytes], bytes | None],
        accept: Callable[[bytes], bool],
        stop: threading.Event,
    ) -> None:
        super().__init__(daemon=True)
        self.sock, self.target, self.ssrc = sock, target, ssrc
        self.protect, self.accept, self.stop = protect, accept, stop
        self.received: list[float] = []
        self.receiver = threading.Thread(target=self._receive, daemon=True)

    def run(self) -> None:
        self.receiver.start()
        seq = 1
        while not self.stop.is_set():
            header = struct.pack("!BBHII", 0x80, 0, seq, seq * 160, self.ssrc)
            packet = self.protect(header + b"\xff" * 160)
            if packet is not None:
                self.sock.sendto(packet, self.target)
            seq += 1
            time.sleep(0.02)

    def _receive(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                data, _ = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            if self.accept(data):
                self.received.append(time.monotonic())

    def inside(self, start: float, end: float) -> list[float]:
        return [t for t in self.received if start <= t <= end]


def _largest_gap(times: list[float], start: float, end: float) -> float:
    points = [start, *times, end]
    return max(b - a for a, b in itertools.pairwise(points))


def _ctl_list(address: str) -> tuple[float, list[dict[str, Any]]]:
    """``pbx-zrtp ctl --json list`` as a user runs it; (time answered, calls)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = ctl_main(["--control", address, "--timeout", "10", "--json", "list"])
    answered = time.monotonic()
    assert status == 0, out.getvalue()
    return answered, json.loads(out.getvalue())


def test_a_slow_store_stalls_neither_other_calls_media_nor_the_control_api(
    tmp_path: Path,
) -> None:
    sqlite = SqliteSecretCache(tmp_path / "cache.db")
    store = SlowStore(sqlite)
    control = f"unix:{tmp_path / 'control.sock'}"

    async def scenario() -> None:
        relay = make_relay(cache=store)  # type: ignore[arg-type]
        await relay.start()
        server = ControlServer(relay)
        await server.start_unix(control.removeprefix("unix:"))
        recorder = Recorder(relay)
        stop = threading.Event()
        sockets: list[socket.socket] = []
        try:
            # Call A: secured first (its own lookup and rs1 write take 2 s each).
            port_a = await create_call(relay, "a", Policy.REQUIRED)
            pbx_a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            pbx_a.bind((PBX_HOST, port_a))
            phone_a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            phone_a.bind((PHONE_HOST, 0))
            phone_addr = phone_a.getsockname()
            phone_a.close()  # the endpoint binds it for the handshake, then we take it over
            sockets += [pbx_a]
            result = await run_endpoint(
                ZrtpConfiguration(zid=PHONE_A),
                EndpointOptions(bind=phone_addr, peer=(RELAY_HOST, port_a), timeout=15),
                cache=MemorySecretCache(),
            )
            assert result["ok"], result
            await recorder.wait_for(lambda: relay.get("a").state == "secure", timeout=15)
            await recorder.wait_for(lambda: store.active == 0, timeout=15)  # A's writes done

            keys = SrtpKeys(
                result["cipher"],
                result["auth_tag"],
                bytes.fromhex(result["srtp_self_key"]),
                bytes.fromhex(result["srtp_self_salt"]),
                bytes.fromhex(result["srtp_peer_key"]),
                bytes.fromhex(result["srtp_peer_salt"]),
            )
            srtp = SrtpContext(keys)
            phone_a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sockets.append(phone_a)
            for _ in range(100):  # the endpoint's transport closes on a later loop turn
                try:
                    phone_a.bind(phone_addr)
                    break
                except OSError:
                    await asyncio.sleep(0.01)
            pbx_side = (RELAY_HOST, relay._by_call["a"].pbx_side_port)
            uplink = Stream(  # phone -> relay -> PBX
                phone_a,
                (RELAY_HOST, port_a),
                PHONE_SSRC,
                srtp.protect,
                lambda d: srtp.unprotect(d) is not None,
                stop,
            )
            downlink = Stream(  # PBX -> relay -> phone
                pbx_a,
                pbx_side,
                PBX_SSRC,
                lambda d: d,
                lambda d: d[8:12] == PHONE_SSRC.to_bytes(4, "big"),
                stop,
            )
            # Phone A's packets as the PBX receives them, and the PBX's as the phone does.
            to_pbx, to_phone = downlink, uplink
            uplink.start()
            downlink.start()
            await asyncio.sleep(0.5)
            assert to_pbx.received and to_phone.received  # call A flows both ways

            # Call B: its handshake waits 2 s on the store's lookup.
            port_b = await create_call(relay, "b", Policy.REQUIRED)
            answers: list[tuple[float, list[dict[str, Any]]]] = []

            def ask_during_the_stall() -> None:
                store.lookup_started.setdefault(PHONE_B, threading.Event()).wait(20)
                time.sleep(0.2)
                answers.append(_ctl_list(control))

            asker = threading.Thread(target=ask_during_the_stall, daemon=True)
            asker.start()
            phone_b = await run_endpoint(
                ZrtpConfiguration(zid=PHONE_B),
                EndpointOptions(bind=(PHONE_HOST, 0), peer=(RELAY_HOST, port_b), timeout=15),
                cache=MemorySecretCache(),
            )
            assert phone_b["ok"], phone_b  # the slow store delayed B; it did not fail it
            await asyncio.to_thread(asker.join, 20)
            stop.set()

            start, end = store.window("lookup", PHONE_B)
            assert end - start >= DELAY
            inner = (start + 0.1, end - 0.1)
            for name, stream in (("phone -> PBX", to_pbx), ("PBX -> phone", to_phone)):
                inside = stream.inside(*inner)
                # ~90 packets in the window; under heavy CI load half is plenty.
                assert len(inside) >= 40, (name, len(inside))
                assert _largest_gap(inside, *inner) < 0.75, name
            assert answers, "ctl list never answered"
            answered, calls = answers[0]
            assert start < answered < end  # answered while the store was still busy
            assert {c["call_id"]: c["state"] for c in calls}["a"] == "secure"
        finally:
            stop.set()
            await server.close()
            await relay.close()
            for sock in sockets:
                sock.close()

    try:
        asyncio.run(asyncio.wait_for(scenario(), 90))
    finally:
        sqlite.close()


class RefusingStore(SqliteSecretCache):
    """SQLite, but slow to take a pbxsecret, or refusing it outright."""

    refuse = False

    def store_pbx_secret(self, key: CacheKey, secret: bytes, lifetime: int) -> None:
        time.sleep(0.3)
        if self.refuse:
            raise CacheError(f"{self!r}: cannot store the pbxsecret: disk I/O error")
        super().store_pbx_secret(key, secret, lifetime)


def test_enroll_answers_once_the_pbxsecret_is_stored_or_says_it_was_not(tmp_path: Path) -> None:
    async def enroll_once(relay: Relay, recorder: Recorder, call_id: str) -> None:
        port = await create_call(relay, call_id, Policy.REQUIRED, enroll=True)
        pbx = EchoPbx(port)
        await pbx.start()
        phone = asyncio.ensure_future(
            run_endpoint(
                ZrtpConfiguration(zid=PHONE_A),
                EndpointOptions(
                    bind=(PHONE_HOST, 0), peer=(RELAY_HOST, port), timeout=10, linger=1.0
                ),
                cache=MemorySecretCache(),
            )
        )
        try:
            await recorder.wait_for(lambda: relay.get(call_id).state == "secure")
        finally:
            await phone
            pbx.close()

    async def scenario() -> None:
        store = RefusingStore(tmp_path / "cache.db")
        relay = make_relay(cache=store)  # type: ignore[arg-type]
        await relay.start()
        recorder = Recorder(relay)
        try:
            await enroll_once(relay, recorder, "e1")
            report = await relay.enroll("e1")
            assert report.enrolled and report.sas_verified and not report.cache_error
            assert [peer for _, peer, _ in store.list_pbx_secrets()] == [PHONE_A]  # stored
            relay.delete("e1")

            store.refuse = True
            await enroll_once(relay, recorder, "e2")
            with pytest.raises(RelayError, match=r"pbxsecret was not stored: .*disk I/O error"):
                await relay.enroll("e2")
            report = relay.get("e2")
            assert not report.enrolled
            assert report.cache_error.startswith("the pbxsecret was not stored")
            relay.delete("e2")
        finally:
            await relay.close()
            store.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
