"""Security review findings in the engine (issue 11, items 3, 9, 10), in memory.

3. The V flag (§7.1) and ``previously_verified`` count only when a retained secret
   matched in this exchange; a stored V flag without one is cleared.
9. A Multistream stream is keyed only toward the ZID of the call's first stream
   (§4.4.3).
10. GoClear on a Multistream stream is refused: ZRTPSess belongs to the first
    stream (§4.7.2.1).
"""

from __future__ import annotations

import random

from pbx_zrtp.cache.base import NEVER_EXPIRES, CacheKey
from pbx_zrtp.cache.memory import MemorySecretCache
from pbx_zrtp.zrtp import packets as p
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from pbx_zrtp.zrtp.connection import State, ZrtpConnection
from pbx_zrtp.zrtp.errors import ErrorCode
from pbx_zrtp.zrtp.events import GoClearRefused, Secured, WentClear
from tests.zrtp_harness import Network, make_connection

ZID_A = bytes.fromhex("a1a1a1a1a1a1a1a1a1a1a1a1")
ZID_B = bytes.fromhex("b2b2b2b2b2b2b2b2b2b2b2b2")
ZID_M = bytes.fromhex("c3c3c3c3c3c3c3c3c3c3c3c3")  # someone else: a MiTM, another party

KEY_AB = CacheKey(ZID_A, ZID_B)
KEY_BA = CacheKey(ZID_B, ZID_A)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def call(
    cache_a: MemorySecretCache | None,
    cache_b: MemorySecretCache | None,
    *,
    seed: int,
    zid_b: bytes = ZID_B,
    a: dict[str, object] | None = None,
    b: dict[str, object] | None = None,
) -> tuple[Network, ZrtpConnection, ZrtpConnection]:
    conn_a = make_connection(ZID_A, seed=seed, ssrc=0x1111, cache=cache_a, **(a or {}))
    conn_b = make_connection(zid_b, seed=seed + 500, ssrc=0x2222, cache=cache_b, **(b or {}))
    net = Network(conn_a, conn_b, seed=seed)
    net.run()
    net.secured()
    return net, conn_a, conn_b


def sent_v_flag(conn: ZrtpConnection) -> bool:
    """The V flag the peer of ``conn`` sent in its Confirm."""
    confirm = conn._peer_confirm
    assert confirm is not None
    return confirm.sas_verified


def verified_call(cache_a: MemorySecretCache, cache_b: MemorySecretCache, seed: int) -> None:
    """A call in which both users compared the SAS and said so."""
    _, a, b = call(cache_a, cache_b, seed=seed)
    a.set_sas_verified(True)
    b.set_sas_verified(True)


# ---------------------------------------------------------------------- item 3: the V flag


def test_continuity_still_gives_v_and_previously_verified() -> None:
    cache_a, cache_b = MemorySecretCache(), MemorySecretCache()
    verified_call(cache_a, cache_b, seed=1)
    net, a, b = call(cache_a, cache_b, seed=2)
    sa, sb = net.secured()
    assert sent_v_flag(a) and sent_v_flag(b)
    assert sa.previously_verified and sb.previously_verified
    assert not sa.cache_mismatch and not sb.cache_mismatch
    assert cache_a.lookup(KEY_AB).sas_verified and cache_b.lookup(KEY_BA).sas_verified


def test_a_match_through_rs2_still_counts() -> None:
    """B lost the last rotation: its rs1 is A's rs2. A secret matched, so V stands."""
    cache_a, cache_b = MemorySecretCache(), MemorySecretCache()
    verified_call(cache_a, cache_b, seed=3)
    first_rs1 = cache_b.lookup(KEY_BA).rs1
    assert first_rs1 is not None
    call(cache_a, cache_b, seed=4)
    assert cache_a.lookup(KEY_AB).rs2 == first_rs1
    stale_b = MemorySecretCache()  # B's disk restored from before the second call
    stale_b.update_retained_secret(KEY_BA, first_rs1, NEVER_EXPIRES, keep_previous=False)
    stale_b.set_sas_verified(KEY_BA, True)
    net, _, _ = call(cache_a, stale_b, seed=5)
    sa, sb = net.secured()
    assert sa.previously_verified and sb.previously_verified
    assert not sa.cache_mismatch and not sb.cache_mismatch


def test_expired_retained_secrets_void_the_v_flag_and_clear_it() -> None:
    clock = Clock()
    cache_a, cache_b = MemorySecretCache(clock=clock), MemorySecretCache(clock=clock)
    one_hour = {"cache_expiration": 3600}
    _, a, b = call(cache_a, cache_b, seed=6, a=one_hour, b=one_hour)
    a.set_sas_verified(True)
    b.set_sas_verified(True)
    clock.now += 7200  # rs1 and rs2 expired; the stored V flags did not
    entry = cache_a.lookup(KEY_AB)
    assert entry.rs1 is None and entry.rs2 is None and entry.sas_verified

    net, a, b = call(cache_a, cache_b, seed=7, a=one_hour, b=one_hour)
    sa, sb = net.secured()
    assert not sent_v_flag(a) and not sent_v_flag(b)  # V is not sent without a match
    assert not sa.previously_verified and not sb.previously_verified
    assert not sa.cache_mismatch and not sb.cache_mismatch  # nothing was expected to match
    # The void flags are cleared: a later call does not inherit them either.
    assert not cache_a.lookup(KEY_AB).sas_verified
    assert not cache_b.lookup(KEY_BA).sas_verified


def test_a_peer_sending_cache_expiration_0_leaves_no_v_flag_behind() -> None:
    cache_a, cache_b = MemorySecretCache(), MemorySecretCache()
    verified_call(cache_a, cache_b, seed=8)
    # B asks not to cache (§4.9: expiration 0): both sides erase rs1 and rs2.
    net, a, b = call(cache_a, cache_b, seed=9, b={"cache_expiration": 0})
    assert all(s.previously_verified for s in net.secured())  # this one still matched
    assert cache_a.lookup(KEY_AB).rs1 is None and cache_b.lookup(KEY_BA).rs1 is None

    net, a, b = call(cache_a, cache_b, seed=10)
    sa, sb = net.secured()
    assert not sent_v_flag(a) and not sent_v_flag(b)
    assert not sa.previously_verified and not sb.previously_verified
    assert not cache_a.lookup(KEY_AB).sas_verified
    assert not cache_b.lookup(KEY_BA).sas_verified


class LyingPeer(ZrtpConnection):
    """Sends V=1 whatever its cache says: a MiTM has no reason to be honest."""

    def _derive_dh(self, *args: object) -> None:
        super()._derive_dh(*args)  # type: ignore[arg-type]
        self._previously_verified = True


def test_a_mitm_reusing_the_peers_zid_gets_no_verified_flag() -> None:
    """A's secrets with B expired; Mallory presents B's ZID and sends V=1."""
    clock = Clock()
    cache_a, cache_b = MemorySecretCache(clock=clock), MemorySecretCache(clock=clock)
    _, a, b = call(cache_a, cache_b, seed=11, a={"cache_expiration": 600})
    a.set_sas_verified(True)
    b.set_sas_verified(True)
    clock.now += 3600

    rng = random.Random(12)
    a = make_connection(ZID_A, seed=12, ssrc=0x1111, cache=cache_a)
    m = LyingPeer(ZrtpConfiguration(zid=ZID_B), ssrc=0x2222, random=rng.randbytes)
    net = Network(a, m, seed=12)
    net.run()
    sa, _ = net.secured()
    assert sent_v_flag(a)  # Mallory's V=1 reached A...
    assert not sent_v_flag(m)  # ...but A did not echo a V it cannot back
    assert not sa.cache_mismatch  # A's secrets had expired: nothing to mismatch
    assert not sa.previously_verified  # ...and still no "previously verified"
    assert not cache_a.lookup(KEY_AB).sas_verified  # and the void flag is gone


def test_a_mismatch_clears_the_v_flag() -> None:
    cache_a, cache_b = MemorySecretCache(), MemorySecretCache()
    verified_call(cache_a, cache_b, seed=13)
    mallory = MemorySecretCache()
    mallory.set_sas_verified(KEY_BA, True)
    net, _a, m = call(cache_a, mallory, seed=14)
    sa, _ = net.secured()
    assert sa.cache_mismatch and not sa.previously_verified and not sent_v_flag(m)
    assert not cache_a.lookup(KEY_AB).sas_verified
    assert cache_a.lookup(KEY_AB).rs1 is not None  # §4.6.1.1: the rs1 itself is held back


# ---------------------------------------------------------------------- item 9: Multistream ZID


def _first_stream() -> tuple[ZrtpConnection, ZrtpConnection]:
    _, a, b = call(None, None, seed=20)
    assert a.session is not None and b.session is not None
    assert a.session.peer_zid == ZID_B and b.session.peer_zid == ZID_A
    return a, b


def test_multistream_commit_from_another_zid_is_refused() -> None:
    """A's call is with B. Mallory (another ZID) holds B's ZRTPSess and commits a
    Multistream stream to A: A must refuse it, not key a stream of B's call to M."""
    a, b = _first_stream()
    a2 = make_connection(ZID_A, seed=21, ssrc=0x3333, session=a.session, role="responder")
    m2 = make_connection(ZID_M, seed=22, ssrc=0x4444, session=b.session, role="initiator")
    net = Network(a2, m2)
    net.run(until=40)
    assert not any(isinstance(e, Secured) for e in net.events_a)
    failed_a, failed_m = net.failures()
    assert failed_a and failed_a[0].error_code == ErrorCode.NO_SHARED_SECRET
    assert "ZID" in failed_a[0].reason and "4.4.3" in failed_a[0].reason
    assert failed_m and failed_m[0].by_peer  # told at once with Error 0x56


def test_multistream_toward_another_zid_is_not_committed() -> None:
    """As initiator, A does not key a Multistream stream toward a ZID other than B's."""
    a, b = _first_stream()
    a2 = make_connection(ZID_A, seed=23, ssrc=0x3333, session=a.session, role="initiator")
    # b.session names A as its peer, so only A's side can see the difference.
    m2 = make_connection(ZID_M, seed=24, ssrc=0x4444, session=b.session, role="responder")
    net = Network(a2, m2)
    net.run(until=40)
    assert not any(isinstance(e, Secured) for e in net.events_a + net.events_b)
    failed_a, _ = net.failures()
    assert failed_a and failed_a[0].error_code == ErrorCode.NO_SHARED_SECRET
    assert not failed_a[0].by_peer and "ZID" in failed_a[0].reason
    commits = [d for direction, d in net.wire if direction == "a->b"]
    assert not any(isinstance(p.ZrtpPacket.parse(d).message, p.Commit) for d in commits)


def test_a_further_stream_refuses_a_dh_commit_from_anyone() -> None:
    """A video stream of A's call with B (multistream_only, as the relay runs it):
    Mallory, holding no session, commits a DH exchange on it. Without the check A
    would key the call's video toward M with a SAS nobody compares."""
    a, _ = _first_stream()
    a2 = make_connection(
        ZID_A, seed=41, ssrc=0x3333, session=a.session, multistream_only=True, role="responder"
    )
    m2 = make_connection(ZID_M, seed=42, ssrc=0x4444, role="initiator")
    net = Network(a2, m2)
    net.run(until=40)
    assert not any(isinstance(e, Secured) for e in net.events_a + net.events_b)
    failed_a, _ = net.failures()
    assert failed_a and failed_a[0].error_code == ErrorCode.UNSUPPORTED_KEY_AGREEMENT
    assert "Multistream" in failed_a[0].reason


def test_a_further_stream_does_not_fall_back_to_dh_toward_a_peer_without_mult() -> None:
    a, _ = _first_stream()
    a2 = make_connection(
        ZID_A, seed=43, ssrc=0x3333, session=a.session, multistream_only=True, role="initiator"
    )
    m2 = make_connection(ZID_M, seed=44, ssrc=0x4444, multistream=False, role="responder")
    net = Network(a2, m2)
    net.run(until=40)
    assert not any(isinstance(e, Secured) for e in net.events_a + net.events_b)
    failed_a, _ = net.failures()
    assert failed_a and failed_a[0].error_code == ErrorCode.UNSUPPORTED_KEY_AGREEMENT
    commits = [d for direction, d in net.wire if direction == "a->b"]
    assert not any(isinstance(p.ZrtpPacket.parse(d).message, p.Commit) for d in commits)


def test_a_further_stream_with_the_first_streams_peer_is_keyed_by_mult() -> None:
    a, b = _first_stream()
    a2 = make_connection(ZID_A, seed=45, ssrc=0x3333, session=a.session, multistream_only=True)
    b2 = make_connection(ZID_B, seed=46, ssrc=0x4444, session=b.session)
    net = Network(a2, b2)
    net.run()
    sa, sb = net.secured()
    assert sa.multistream and sb.multistream and sa.sas == sb.sas


def test_multistream_with_the_same_zid_still_works() -> None:
    a, b = _first_stream()
    a2 = make_connection(ZID_A, seed=25, ssrc=0x3333, session=a.session)
    b2 = make_connection(ZID_B, seed=26, ssrc=0x4444, session=b.session)
    net = Network(a2, b2)
    net.run()
    sa, sb = net.secured()
    assert sa.multistream and sa.sas == sb.sas


# ---------------------------------------------------------------------- item 10: GoClear on Mult


def _goclear_from(sender: ZrtpConnection) -> bytes:
    hash_ = sender._hash
    assert hash_ is not None
    mackey = sender._mackey_i if sender.role == "initiator" else sender._mackey_r
    mac = hash_.mac(mackey, p.GoClear.MESSAGE_TYPE)
    return p.ZrtpPacket(999, sender._ssrc, p.GoClear(clear_mac=mac)).serialize()


def test_goclear_on_a_multistream_stream_is_refused_and_zrtpsess_kept() -> None:
    clear = {"allow_clear": True}
    _, a, b = call(None, None, seed=30, a={**clear, "role": "initiator"}, b=clear)
    assert b.session is not None
    zrtp_sess = b.session.zrtp_sess
    a2 = make_connection(ZID_A, seed=31, ssrc=0x3333, session=a.session, role="initiator", **clear)
    b2 = make_connection(ZID_B, seed=32, ssrc=0x4444, session=b.session, role="responder", **clear)
    net = Network(a2, b2)
    net.run()
    sa, sb = net.secured()
    assert sa.multistream and sb.multistream
    b2.datagrams_to_send()
    # An authenticated GoClear on the Multistream stream is refused: that stream
    # cannot replace ZRTPSess for the whole call.
    b2.receive_datagram(_goclear_from(a2), 50.0)
    events = []
    while (event := b2.next_event()) is not None:
        events.append(event)
    refused = [e for e in events if isinstance(e, GoClearRefused)]
    assert refused and "Multistream" in refused[0].reason
    assert not any(isinstance(e, WentClear) for e in events)
    assert b2.state is State.SECURE
    sent = [p.ZrtpPacket.parse(d).message for d in b2.datagrams_to_send()]
    assert [type(m) for m in sent] == [p.Error]
    assert isinstance(sent[0], p.Error) and sent[0].code == ErrorCode.GOCLEAR_NOT_ALLOWED
    assert b.session.zrtp_sess == zrtp_sess  # the call's ZRTPSess is untouched
    # Neither side offers GoClear on a Multistream stream (A flag clear in Confirm).
    assert not sa.peer_allows_clear and not sb.peer_allows_clear
    # The first (DH) stream still goes clear, replacing ZRTPSess (§4.7.2.1).
    b.receive_datagram(_goclear_from(a), 51.0)
    assert b.state is State.CLEAR and b.session.zrtp_sess != zrtp_sess
