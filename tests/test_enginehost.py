"""The one asyncio host of the engine (enginehost.py), which the relay's mirrors
and ``pbx-zrtp endpoint`` share: two hosts wired back to back secure, each
through its own store worker when the cache blocks; once closed, a host neither
sends nor passes on events, whatever its timer or a late store answer does."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Callable

from pbx_zrtp.cache.base import SecretCache
from pbx_zrtp.cache.memory import MemorySecretCache
from pbx_zrtp.cache.sqlite import SqliteSecretCache
from pbx_zrtp.cache.worker import StoreWorker
from pbx_zrtp.enginehost import EngineHost
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from pbx_zrtp.zrtp.events import Event, Secured


def _pair(
    caches: tuple[SecretCache, SecretCache], stores: tuple[StoreWorker | None, StoreWorker | None]
) -> tuple[EngineHost, EngineHost, list[Event], list[Event], list[list[bytes]]]:
    loop = asyncio.get_running_loop()
    events_a: list[Event] = []
    events_b: list[Event] = []
    sent: list[list[bytes]] = [[], []]  # by a, by b
    hosts: list[EngineHost] = []

    def to(index: int) -> Callable[[bytes], None]:
        def send(datagram: bytes) -> None:
            sent[1 - index].append(datagram)
            loop.call_soon(hosts[index].receive, datagram)  # a datagram crosses the wire

        return send

    configurations = (
        ZrtpConfiguration(zid=b"A" * 12, role="initiator"),
        ZrtpConfiguration(zid=b"B" * 12, role="responder"),
    )
    pairs = zip(configurations, (events_a, events_b), strict=True)
    for index, (configuration, events) in enumerate(pairs):
        hosts.append(
            EngineHost(
                configuration,
                loop=loop,
                ssrc=0x1000 + index,
                send=to(1 - index),
                on_event=events.append,
                cache=caches[index],
                store=stores[index],
            )
        )
    return hosts[0], hosts[1], events_a, events_b, sent


async def _until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def _secured(events: list[Event]) -> Secured | None:
    return next((e for e in events if isinstance(e, Secured)), None)


def test_two_hosts_secure_each_other_with_the_cache_inline() -> None:
    async def main() -> None:
        a, b, events_a, events_b, _ = _pair(
            (MemorySecretCache(), MemorySecretCache()), (None, None)
        )
        b.start()
        a.start()
        # The initiator completes on the responder's first SRTP (§4.6).
        await _until(lambda: _secured(events_b) is not None)
        a.srtp_authenticated()
        await _until(lambda: _secured(events_a) is not None)
        sas_a, sas_b = _secured(events_a), _secured(events_b)
        assert sas_a is not None and sas_b is not None and sas_a.sas == sas_b.sas
        a.close()
        b.close()

    asyncio.run(main())


def test_two_hosts_secure_each_other_through_store_workers(tmp_path: pathlib.Path) -> None:
    """A blocking store runs on worker threads; its answers wake the host."""

    async def main() -> None:
        caches = (
            SqliteSecretCache(str(tmp_path / "a.db")),
            SqliteSecretCache(str(tmp_path / "b.db")),
        )
        stores = (StoreWorker(caches[0]), StoreWorker(caches[1]))
        a, b, events_a, events_b, _ = _pair((caches[0], caches[1]), (stores[0], stores[1]))
        b.start()
        a.start()
        await _until(lambda: _secured(events_b) is not None)
        a.srtp_authenticated()
        await _until(lambda: _secured(events_a) is not None)
        secured = _secured(events_a)
        assert secured is not None and secured.sas == getattr(_secured(events_b), "sas", None)
        a.close()
        b.close()
        for store in stores:
            assert await store.drain(10.0)
            store.close()
        for cache in caches:
            cache.close()

    asyncio.run(main())


def _lone(sent: list[bytes], events: list[Event]) -> EngineHost:
    """A host whose datagrams reach nobody: its timer repeats its Hello."""
    return EngineHost(
        ZrtpConfiguration(zid=b"L" * 12),
        loop=asyncio.get_running_loop(),
        ssrc=0x2000,
        send=sent.append,
        on_event=events.append,
        cache=MemorySecretCache(),
    )


def test_a_closed_host_sends_nothing_and_passes_no_event_on() -> None:
    async def main() -> None:
        sent: list[bytes] = []
        events: list[Event] = []
        host = _lone(sent, events)
        clock_sent: list[bytes] = []
        clock = _lone(clock_sent, [])
        host.start()
        await _until(lambda: len(sent) >= 2)  # the timer works
        host.close()
        by_host, seen = len(sent), len(events)
        host.pump()
        host.receive(sent[0])
        host.srtp_authenticated()
        # Another host's Hello repeats measure several of the closed host's timer periods.
        clock.start()
        await _until(lambda: len(clock_sent) >= 4)
        assert (len(sent), len(events)) == (by_host, seen)
        clock.close()

    asyncio.run(main())
