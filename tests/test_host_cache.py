"""The engine with a host-served store (``host_cache=True``, issue 11 item 5), in memory.

The engine never calls the store: it asks (``CacheLookupNeeded``) and hands writes
over (``CacheWriteNeeded``). These tests play the host with an explicit clock and
a store that answers late, never, or fails.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from pbx_zrtp.cache.base import CacheKey, CacheWrite, RetainedSecretWrite, SasVerifiedWrite
from pbx_zrtp.cache.memory import MemorySecretCache
from pbx_zrtp.zrtp import packets as p
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from pbx_zrtp.zrtp.connection import State, ZrtpConnection
from pbx_zrtp.zrtp.events import CacheLookupNeeded, CacheWriteNeeded, Secured, SrtpKeysReady
from tests.zrtp_harness import Network, make_connection

ZID_A = bytes.fromhex("a1a1a1a1a1a1a1a1a1a1a1a1")
ZID_B = bytes.fromhex("b2b2b2b2b2b2b2b2b2b2b2b2")
KEY_AB = CacheKey(ZID_A, ZID_B)
KEY_BA = CacheKey(ZID_B, ZID_A)


@dataclass
class Host:
    """Serves one engine's store requests, ``delay`` seconds late (None: never)."""

    store: MemorySecretCache
    delay: float | None = 0.0
    fail_writes: str = ""
    lookups: list[tuple[float, CacheKey]] = field(default_factory=list)
    writes: list[CacheWrite] = field(default_factory=list)
    due: list[tuple[float, CacheKey]] = field(default_factory=list)


class HostedNetwork(Network):
    """The harness's network, plus hosts answering the engines' store requests."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.hosts: dict[int, Host] = {}
        self.times: list[float] = []  # when each datagram of ``wire`` was sent

    def serve(self, conn: ZrtpConnection, host: Host) -> None:
        self.hosts[id(conn)] = host

    def _pending_times(self) -> list[float]:
        return [when for host in self.hosts.values() for when, _ in host.due]

    def _collect(self, source: ZrtpConnection, direction: str) -> None:
        sent = len(self.wire)
        super()._collect(source, direction)
        self.times += [self.now] * (len(self.wire) - sent)

    def _drain_events(self) -> None:
        for conn, sink in ((self.a, self.events_a), (self.b, self.events_b)):
            host = self.hosts.get(id(conn))
            while (event := conn.next_event()) is not None:
                sink.append(event)
                if host is None:
                    continue
                if isinstance(event, CacheLookupNeeded):
                    host.lookups.append((self.now, event.key))
                    if host.delay is not None:
                        host.due.append((self.now + host.delay, event.key))
                elif isinstance(event, CacheWriteNeeded):
                    host.writes.append(event.write)
                    if host.fail_writes:
                        conn.cache_write_failed(event.write, host.fail_writes)
                    else:
                        event.write.apply(host.store)
            if host is not None:
                for when, key in [d for d in host.due if d[0] <= self.now]:
                    host.due.remove((when, key))
                    conn.provide_cache_entry(key, host.store.lookup(key), self.now)


def host_served(zid: bytes, *, seed: int, ssrc: int, role: str) -> ZrtpConnection:
    configuration = ZrtpConfiguration(zid=zid, role=role)  # type: ignore[arg-type]
    return ZrtpConnection(
        configuration, ssrc=ssrc, random=random.Random(seed).randbytes, host_cache=True
    )


def hosted(
    seed: int, store_a: MemorySecretCache, store_b: MemorySecretCache
) -> tuple[HostedNetwork, ZrtpConnection, ZrtpConnection, Host]:
    """A calls B; A's store is called directly, B's is served by a host."""
    a = make_connection(ZID_A, seed=seed, ssrc=0x1111, cache=store_a, role="initiator")
    conn_b = host_served(ZID_B, seed=seed + 7, ssrc=0x2222, role="responder")
    host = Host(store_b)
    net = HostedNetwork(a, conn_b, seed=seed)
    net.serve(conn_b, host)
    return net, a, conn_b, host


def sent_types(net: Network, direction: str) -> list[type[p.Message]]:
    return [type(p.ZrtpPacket.parse(d).message) for dirn, d in net.wire if dirn == direction]


def test_a_host_served_store_keeps_continuity_and_the_v_flag() -> None:
    store_a, store_b = MemorySecretCache(), MemorySecretCache()
    for seed in range(3):
        net, a, b, host = hosted(seed * 10, store_a, store_b)
        net.run()
        sa, sb = net.secured()
        assert sa.sas == sb.sas and not sa.cache_mismatch and not sb.cache_mismatch
        assert [key for _, key in host.lookups] == [KEY_BA]
        assert store_a.lookup(KEY_AB).rs1 == store_b.lookup(KEY_BA).rs1 is not None
        assert sa.previously_verified == sb.previously_verified == (seed == 2)
        if seed == 1:
            a.set_sas_verified(True)
            b.set_sas_verified(True)
            net._drain_events()
            assert SasVerifiedWrite(KEY_BA, True) in host.writes


def test_the_responder_holds_the_commit_until_the_store_answers() -> None:
    store_a, store_b = MemorySecretCache(), MemorySecretCache()
    net, *_ = hosted(1, store_a, store_b)
    net.run()  # a first call leaves matching secrets on both sides
    net, _, b, host = hosted(2, store_a, store_b)
    host.delay = 2.0  # a slow store: two seconds per lookup
    net.run(until=1.5)
    assert b.state is State.DISCOVERY
    assert b.stats["commit_held_for_cache"] >= 1  # A's Commit came and was held
    assert p.DHPart1 not in sent_types(net, "b->a")  # nothing keyed before the answer
    assert not any(isinstance(e, SrtpKeysReady | Secured) for e in net.events_b)
    net.run(until=30)
    sa, sb = net.secured()
    assert host.lookups[0][0] < 0.1 and sb.sas == sa.sas
    # The late entry was used: rs1 matched, no mismatch, no error.
    assert not sa.cache_mismatch and not sb.cache_mismatch and not sb.cache_error
    assert any(isinstance(w, RetainedSecretWrite) for w in host.writes)


def test_the_initiator_commits_only_after_the_store_answered() -> None:
    store_a, store_b = MemorySecretCache(), MemorySecretCache()
    b = make_connection(ZID_B, seed=3, ssrc=0x2222, cache=store_b, role="responder")
    a = host_served(ZID_A, seed=4, ssrc=0x1111, role="initiator")
    net = HostedNetwork(a, b)
    host = Host(store_a, delay=1.0)
    net.serve(a, host)
    net.run(until=0.9)
    assert p.Commit not in sent_types(net, "a->b")
    net.run(until=30)
    net.secured()
    assert [key for _, key in host.lookups] == [KEY_AB]
    assert p.Commit in sent_types(net, "a->b")


def test_a_store_that_never_answers_costs_continuity_not_the_call() -> None:
    store_a, store_b = MemorySecretCache(), MemorySecretCache()
    net, *_ = hosted(5, store_a, store_b)
    net.run()
    rs1_before = store_b.lookup(KEY_BA).rs1
    net, _, b, host = hosted(6, store_a, store_b)
    host.delay = None  # the database hangs
    net.run(until=30)
    sa, sb = net.secured()
    assert sb.cache_error == (
        "key continuity not saved: retained secrets could not be read:"
        " the store did not answer within 3 s"
    )
    assert sa.cache_mismatch  # A expected B's rs1: the phone's user is warned
    # Nothing is written over a secret we could not read.
    assert not any(isinstance(w, RetainedSecretWrite) for w in host.writes)
    assert store_b.lookup(KEY_BA).rs1 == rs1_before
    # An answer after the time-out is ignored.
    b.provide_cache_entry(KEY_BA, store_b.lookup(KEY_BA), net.now)
    assert b.stats["cache_answers_ignored"] == 1


def test_a_failed_lookup_and_a_failed_write_are_reported_without_failing() -> None:
    store_a, store_b = MemorySecretCache(), MemorySecretCache()
    net, _, b, host = hosted(7, store_a, store_b)
    host.delay = None
    net.run(until=0.2)
    (_, key), *_ = host.lookups
    b.provide_cache_entry(key, None, net.now, error="database down")
    net.run(until=30)
    _, sb = net.secured()
    assert sb.cache_error == (
        "key continuity not saved: retained secrets could not be read: database down"
    )

    net, _, b, host = hosted(8, MemorySecretCache(), MemorySecretCache())
    host.fail_writes = "disk full"
    net.run()
    net._drain_events()
    assert b.cache_error == "key continuity not saved: disk full"
    assert b.state is State.SECURE


def test_the_host_mode_takes_no_store_object() -> None:
    with pytest.raises(ValueError, match="host_cache"):
        ZrtpConnection(
            ZrtpConfiguration(zid=ZID_A), ssrc=1, cache=MemorySecretCache(), host_cache=True
        )


def test_a_forced_responders_fallback_commit_waits_for_the_store_not_longer() -> None:
    """Both sides forced responders; B never commits. A's fallback Commit (after
    ``responder_commit_wait``) comes due while its lookup is still out: A commits
    as soon as the store answers, not one more grace period later."""
    store_a = MemorySecretCache()
    configuration = ZrtpConfiguration(zid=ZID_A, role="responder", cache_timeout=5.0)
    a = ZrtpConnection(
        configuration, ssrc=0x1111, random=random.Random(9).randbytes, host_cache=True
    )
    b = make_connection(
        ZID_B,
        seed=10,
        ssrc=0x2222,
        cache=MemorySecretCache(),
        role="responder",
        responder_commit_wait=60.0,
    )
    net = HostedNetwork(a, b)
    host = Host(store_a, delay=2.5)  # answers after A's 2 s grace period
    net.serve(a, host)
    net.run(until=30)
    net.secured()
    first_commit = next(
        when
        for when, (direction, data) in zip(net.times, net.wire, strict=True)
        if direction == "a->b" and isinstance(p.ZrtpPacket.parse(data).message, p.Commit)
    )
    assert a.stats["responder_fallback_commit"] == 1
    assert 2.5 <= first_commit < 2.8


# A pre-bound port's engine (the relay's unclaimed call): the phone's Hello may come
# before the call is named, and the secrets are keyed with the named call's URIs.
NAMED_BA = CacheKey(ZID_B, ZID_A, "sip:pbx", "sip:1000")


def _awaiting_name(store: MemorySecretCache | None, *, seed: int) -> ZrtpConnection:
    configuration = ZrtpConfiguration(zid=ZID_B, role="responder")
    if store is None:  # the store served by a host (SQLite, PostgreSQL)
        return ZrtpConnection(
            configuration,
            ssrc=0x2222,
            random=random.Random(seed).randbytes,
            host_cache=True,
            await_name=True,
        )
    return ZrtpConnection(  # an in-memory store, called inline
        configuration,
        ssrc=0x2222,
        random=random.Random(seed).randbytes,
        cache=store,
        await_name=True,
    )


def _named_first_call(store_a: MemorySecretCache, store_b: MemorySecretCache) -> None:
    a = make_connection(
        ZID_A, seed=1, ssrc=0x1111, cache=store_a, role="initiator", self_uri="sip:1000",
        peer_uri="sip:pbx",
    )  # fmt: skip
    b = make_connection(
        ZID_B, seed=2, ssrc=0x2222, cache=store_b, role="responder", self_uri="sip:pbx",
        peer_uri="sip:1000",
    )  # fmt: skip
    net = Network(a, b)
    net.run()
    net.secured()
    assert store_b.lookup(NAMED_BA).rs1 is not None


@pytest.mark.parametrize("hosted_store", [False, True], ids=["inline", "host"])
def test_an_unnamed_call_looks_its_secrets_up_under_the_name_it_is_given(
    hosted_store: bool,
) -> None:
    store_a, store_b = MemorySecretCache(), MemorySecretCache()
    _named_first_call(store_a, store_b)
    a = make_connection(
        ZID_A, seed=3, ssrc=0x1111, cache=store_a, role="initiator", self_uri="sip:1000",
        peer_uri="sip:pbx",
    )  # fmt: skip
    b = _awaiting_name(None if hosted_store else store_b, seed=4)
    net = HostedNetwork(a, b)
    host = Host(store_b)
    if hosted_store:
        net.serve(b, host)
    net.run(until=1.0)  # the Hello and Commit are in, the call has no name yet
    assert b.stats["commit_held_for_cache"] >= 1
    assert p.DHPart1 not in sent_types(net, "b->a")  # nothing keyed before the name
    assert not host.lookups  # and nothing looked up under no name
    b.name_call("sip:pbx", "sip:1000", net.now)
    net._drain_events()
    if hosted_store:
        assert [key for _, key in host.lookups] == [NAMED_BA]
    net.run(until=30)
    sa, sb = net.secured()
    assert not sa.cache_mismatch and not sb.cache_mismatch and not sb.cache_error
    assert store_b.lookup(CacheKey(ZID_B, ZID_A)).rs1 is None  # nothing under no name


@pytest.mark.parametrize("hosted_store", [False, True], ids=["inline", "host"])
def test_a_call_never_named_goes_on_without_continuity_and_stores_nothing(
    hosted_store: bool,
) -> None:
    store_a, store_b = MemorySecretCache(), MemorySecretCache()
    _named_first_call(store_a, store_b)
    rs1 = store_b.lookup(NAMED_BA).rs1
    a = make_connection(
        ZID_A, seed=5, ssrc=0x1111, cache=store_a, role="initiator", self_uri="sip:1000",
        peer_uri="sip:pbx",
    )  # fmt: skip
    b = _awaiting_name(None if hosted_store else store_b, seed=6)
    net = HostedNetwork(a, b)
    host = Host(store_b)
    if hosted_store:
        net.serve(b, host)
    net.run(until=30)
    sa, sb = net.secured()
    assert sb.cache_error == (
        "key continuity not saved: retained secrets could not be read:"
        " the call was not named within 3 s"
    )
    assert sa.cache_mismatch  # as before: the relay had no secret under empty URIs
    with pytest.raises(ValueError, match="not named"):
        b.set_sas_verified(True)
    assert not host.lookups and not host.writes
    assert store_b.lookup(NAMED_BA).rs1 == rs1
    unnamed = store_b.lookup(CacheKey(ZID_B, ZID_A))
    assert unnamed.rs1 is None and not unnamed.sas_verified
