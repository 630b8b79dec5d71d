"""Loopback lab for relay tests: a relay on 127.0.0.2, a 'PBX' on 127.0.0.3, phones on 127.0.0.4+.

Linux routes all of 127.0.0.0/8 to lo, so these behave like separate hosts'
addresses without any setup. Ports come from the kernel (bind to 0) and every
wait is bounded. IPv6 relay tests use ::2-::5 inside a network namespace
(``tests/netns.py``): the hosts are parameters wherever a socket is made.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pbx_zrtp.cache.base import SecretCache
from pbx_zrtp.cache.memory import MemorySecretCache
from pbx_zrtp.calls import CallReport, Policy
from pbx_zrtp.relay.core import Relay, RelayError, RelayLayout
from pbx_zrtp.relay.mirror import MirrorSettings
from pbx_zrtp.zrtp.config import DEFAULT_CIPHERS, ZrtpConfiguration

RELAY_HOST = "127.0.0.2"
PBX_HOST = "127.0.0.3"
PHONE_HOST = "127.0.0.4"


def family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _ephemeral_low() -> int:
    """The kernel's first ephemeral port (net.ipv4.ip_local_port_range)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
            return int(ports.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


#: Test ports come from below the ephemeral range: a socket bound to port 0 (the
#: relay's PBX-side sockets, an endpoint's) never takes a port a test chose for a
#: pre-bound range a moment before.
_PORTS = random.Random()


def free_even_port(relay_host: str = RELAY_HOST, pbx_host: str = PBX_HOST) -> int:
    """An even port free on both the relay and the PBX address (and +1), below the
    kernel's ephemeral range."""
    high = _ephemeral_low() - 2
    for _ in range(200):
        port = _PORTS.randrange(10000, high) & ~1
        try:
            for host in (relay_host, pbx_host):
                for p in (port, port + 1):
                    with socket.socket(family(host), socket.SOCK_DGRAM) as s:
                        s.bind((host, p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free even port pair")


def make_relay(
    *,
    prebind: tuple[int, ...] = (),
    optional_timeout: float = 2.0,
    required_timeout: float = 3.0,
    cache: SecretCache | None = None,
    prebind_policy: Policy = Policy.REQUIRED,
    fastpath: bool | int = False,
    relay_host: str = RELAY_HOST,
    pbx_host: str = PBX_HOST,
    ciphers: tuple[bytes, ...] = DEFAULT_CIPHERS,
    auth_tags: tuple[bytes, ...] = (b"HS32", b"HS80"),
    cache_timeout: float | None = None,
) -> Relay:
    cache = cache or MemorySecretCache()
    waits: dict[str, float] = {} if cache_timeout is None else {"cache_timeout": cache_timeout}
    zid = cache.local_zid(lambda: os.urandom(12))

    def zrtp(self_uri: str, peer_uri: str) -> ZrtpConfiguration:
        return ZrtpConfiguration(
            zid=zid,
            mitm=True,
            self_uri=self_uri,
            peer_uri=peer_uri,
            cipher_types=ciphers,
            auth_tag_types=auth_tags,
            **waits,
        )

    settings = MirrorSettings(
        zrtp=zrtp, cache=cache, optional_timeout=optional_timeout, required_timeout=required_timeout
    )
    return Relay(
        RelayLayout(
            relay_host,
            pbx_host,
            port_min=1024,
            port_max=65535,
            prebind=prebind,
            prebind_policy=prebind_policy,
        ),
        settings,
        fastpath=_native_fastpath(int(fastpath)) if fastpath else None,
    )


def _native_fastpath(workers: int) -> Any:
    from pbx_zrtp.relay.fastpath import FastPath, available

    reason = available()
    if reason is not None:
        raise RuntimeError(f"fast path unavailable: {reason}")
    return [FastPath() for _ in range(workers)]


async def create_call(relay: Relay, call_id: str, policy: Policy, **kwargs: Any) -> int:
    for _ in range(20):
        port = free_even_port(relay.layout.relay_host, relay.layout.pbx_host)
        try:
            await relay.create(call_id, port, policy, **kwargs)
            return port
        except RelayError:
            continue
    raise RuntimeError("could not create a mirror")


def assert_echoed_back(phone: dict[str, Any], sent: int, relay: Relay, call_id: str) -> None:
    """The phone got each of its `sent` packets back from the echo PBX, plus at most the
    relay's priming packets that the echo PBX echoed once the call was secure (a real
    Echo() application does the same): no loss, and nothing the relay did not send."""
    primed = relay.get(call_id).counters["priming_sent"]
    received = phone["srtp"]["received_ok"]
    assert phone["ok"] and sent <= received <= sent + primed, (call_id, received, primed)


@dataclass
class EchoPbx:
    """A PBX stand-in on A:P (and A:P+1): symmetric RTP that echoes to whoever sent last."""

    port: int
    received: list[bytes] = field(default_factory=list)
    rtcp_received: list[bytes] = field(default_factory=list)
    echo: bool = True
    #: RTP streams (by SSRC) not echoed back, e.g. the relay's own priming: a real PBX
    #: answers with one stream of its own, and libzrtp's SRTP receiver takes only one.
    ignore_ssrcs: set[int] = field(default_factory=set)
    transports: list[asyncio.DatagramTransport] = field(default_factory=list)
    host: str = PBX_HOST

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for port, sink in ((self.port, self.received), (self.port + 1, self.rtcp_received)):
            transport, _ = await loop.create_datagram_endpoint(
                lambda sink=sink: _Echo(sink, self), local_addr=(self.host, port)
            )
            self.transports.append(transport)  # type: ignore[arg-type]

    def close(self) -> None:
        for t in self.transports:
            t.close()


class _Echo(asyncio.DatagramProtocol):
    def __init__(self, sink: list[bytes], pbx: EchoPbx) -> None:
        self.sink = sink
        self.pbx = pbx
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.sink.append(data)
        if len(data) >= 12 and int.from_bytes(data[8:12], "big") in self.pbx.ignore_ssrcs:
            return
        if self.pbx.echo:
            self.transport.sendto(data, addr)


class Recorder:
    """Collects the relay's state events."""

    def __init__(self, relay: Relay) -> None:
        self.events: list[CallReport] = []
        relay.add_listener(self.events.append)

    def states(self, call_id: str) -> list[str]:
        return [e.state for e in self.events if e.call_id == call_id]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(
                    f"timed out; events: {[(e.call_id, e.state, e.reason) for e in self.events]}"
                )
            await asyncio.sleep(0.01)


def rtp(seq: int, ssrc: int = 0x01020304, payload: bytes = b"\x7f" * 160, pt: int = 0) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, seq * 160, ssrc) + payload


def rtcp_sr(ssrc: int = 0x01020304) -> bytes:
    # A minimal RTCP sender report (PT 200), 28 bytes.
    return struct.pack("!BBHIIIIII", 0x80, 200, 6, ssrc, 0, 0, 0, 0, 0)


def pq_relay(*, required_timeout: float) -> Relay:
    """A relay that offers the post-quantum KEM hybrids first (X3M3 needs S512)."""
    cache = MemorySecretCache()
    zid = cache.local_zid(lambda: os.urandom(12))

    def zrtp(self_uri: str, peer_uri: str) -> ZrtpConfiguration:
        return ZrtpConfiguration(
            zid=zid,
            mitm=True,
            self_uri=self_uri,
            peer_uri=peer_uri,
            key_agreement_types=(b"X3M3", b"X1M1", b"X255", b"DH3k"),
            hash_types=(b"S256", b"S384", b"S512"),
        )

    settings = MirrorSettings(zrtp=zrtp, cache=cache, required_timeout=required_timeout)
    return Relay(RelayLayout(RELAY_HOST, PBX_HOST, port_min=1024, port_max=65535), settings)
