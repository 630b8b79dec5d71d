"""Two ZRTP engines in memory with an explicit clock (no sockets, no real time)."""

from __future__ import annotations

import itertools
import random

import pytest

from pbx_zrtp.cache.memory import MemorySecretCache
from pbx_zrtp.zrtp import packets as p
from pbx_zrtp.zrtp.connection import TRANSITIONS, State, ZrtpConnection, choose_key_agreement
from pbx_zrtp.zrtp.errors import ErrorCode
from pbx_zrtp.zrtp.events import GoClearRefused, HandshakeFailed, SecurityWarning, WentClear
from tests.zrtp_harness import Network, make_connection

ZID_A = bytes.fromhex("a1a1a1a1a1a1a1a1a1a1a1a1")
ZID_B = bytes.fromhex("b2b2b2b2b2b2b2b2b2b2b2b2")


def pair(
    seed: int = 1,
    a: dict[str, object] | None = None,
    b: dict[str, object] | None = None,
    cache_a: MemorySecretCache | None = None,
    cache_b: MemorySecretCache | None = None,
) -> tuple[ZrtpConnection, ZrtpConnection]:
    conn_a = make_connection(ZID_A, seed=seed, ssrc=0x1111, cache=cache_a, **(a or {}))
    conn_b = make_connection(ZID_B, seed=seed + 1000, ssrc=0x2222, cache=cache_b, **(b or {}))
    return conn_a, conn_b


def assert_agree(net: Network) -> None:
    sa, sb = net.secured()
    assert sa.sas == sb.sas and len(sa.sas) >= 4
    assert {sa.role, sb.role} == {"initiator", "responder"}
    assert sa.keys.local_key == sb.keys.remote_key
    assert sa.keys.local_salt == sb.keys.remote_salt
    assert sa.keys.remote_key == sb.keys.local_key
    assert sa.keys.local_key != sa.keys.remote_key
    assert (sa.key_agreement, sa.hash, sa.cipher, sa.auth_tag, sa.sas_type) == (
        sb.key_agreement,
        sb.hash,
        sb.cipher,
        sb.auth_tag,
        sb.sas_type,
    )


KEY_AGREEMENTS = ["DH3k", "DH2k", "EC25", "EC38", "X255", "X448"]


@pytest.mark.parametrize(
    ("key_agreement", "hash_type", "auth_tag", "sas"),
    [
        (ka, h, t, s)
        for ka, h, t, s in itertools.product(
            KEY_AGREEMENTS, ["S256", "S384"], ["HS32", "HS80"], ["B32", "B256"]
        )
        # exercise every key agreement with every other axis at least once, without 96 DH3k
        # runs; EC38 only with S384, which §5.1.5 requires
        if (
            not (ka == "EC38" and h == "S256")
            and (
                KEY_AGREEMENTS.index(ka)
                + ["S256", "S384"].index(h)
                + ["HS32", "HS80"].index(t)
                + ["B32", "B256"].index(s)
            )
            % 2
            == 0
        )
        or ka in ("X255", "EC25")
    ],
)
@pytest.mark.parametrize("initiator", ["a", "b"])
def test_every_algorithm_combination_in_both_roles(
    key_agreement: str, hash_type: str, auth_tag: str, sas: str, initiator: str
) -> None:
    common = {
        "key_agreement_types": (key_agreement.encode(),),
        "hash_types": (hash_type.encode(),),
        "auth_tag_types": (auth_tag.encode(),),
        "sas_types": (sas.encode().ljust(4),),
    }
    a_cfg = dict(common, role="initiator" if initiator == "a" else "responder")
    b_cfg = dict(common, role="responder" if initiator == "a" else "initiator")
    a, b = pair(a=a_cfg, b=b_cfg)
    net = Network(a, b)
    net.run()
    assert_agree(net)
    sa, _sb = net.secured()
    assert sa.role == ("initiator" if initiator == "a" else "responder")
    assert (sa.key_agreement, sa.hash, sa.auth_tag, sa.sas_type) == (
        key_agreement,
        hash_type,
        auth_tag,
        sas,
    )
    if sas == "B256":
        assert len(sa.sas.split(" ")) == 2
    else:
        assert len(sa.sas) == 4


def test_aes3_keys_are_256_bits_when_both_offer_it() -> None:
    a, b = pair(a={"cipher_types": (b"AES3", b"AES1")}, b={"cipher_types": (b"AES3", b"AES1")})
    net = Network(a, b)
    net.run()
    assert_agree(net)
    sa, _ = net.secured()
    assert sa.cipher == "AES3" and len(sa.keys.local_key) == 32 and len(sa.keys.local_salt) == 14


def test_default_offer_lists_aes1_then_aes3() -> None:
    """AES3 is offered by default now that SRTP can use it; AES1 (mandatory) first,
    as bzrtp orders them."""
    a, b = pair()
    net = Network(a, b)
    net.run()
    hellos = [p.parse_message(p.message_bytes(d)) for _, d in net.wire if p.is_zrtp_packet(d)]
    offered = {h.cipher_types for h in hellos if isinstance(h, p.Hello)}
    assert offered == {(b"AES1", b"AES3")}


@pytest.mark.parametrize(
    ("ciphers", "key_agreement", "expected"),
    [
        ((b"AES1", b"AES3"), b"EC38", "AES3"),  # §5.1.5: EC38 SHOULD use AES-256
        ((b"AES1",), b"EC38", "AES1"),  # ... but only if we offer it
        ((b"AES3", b"AES1"), b"DH2k", "AES1"),  # §5.1.5: DH2k SHOULD use AES-128
        ((b"AES1", b"AES3"), b"X255", "AES1"),  # otherwise: our order
        ((b"AES3", b"AES1"), b"X255", "AES3"),
        ((b"AES1", b"AES3"), b"DH3k", "AES1"),
    ],
)
def test_the_initiator_couples_the_cipher_to_the_key_agreement(
    ciphers: tuple[bytes, ...], key_agreement: bytes, expected: str
) -> None:
    config = {
        "cipher_types": ciphers,
        "key_agreement_types": (key_agreement,),
        "hash_types": (b"S384", b"S256"),
    }
    a, b = pair(a=config, b=config)
    net = Network(a, b)
    net.run()
    assert_agree(net)
    sa, _ = net.secured()
    assert (sa.key_agreement, sa.cipher) == (key_agreement.decode(), expected)
    assert len(sa.keys.local_key) == (32 if expected == "AES3" else 16)


def test_simultaneous_commit_resolves_to_one_initiator() -> None:
    # Both auto, started at the same instant: both commit, contention (§4.2) decides.
    outcomes = set()
    for seed in range(6):
        a, b = pair(seed=seed * 7)
        net = Network(a, b, seed=seed)
        net.run()
        assert_agree(net)
        won = a.stats["commit_contention_won"] + b.stats["commit_contention_won"]
        lost = a.stats["commit_contention_lost"] + b.stats["commit_contention_lost"]
        assert won >= 1 and lost >= 1
        outcomes.add(net.secured()[0].role)
    assert outcomes == {"initiator", "responder"}  # the hvi comparison really decides


@pytest.mark.parametrize("seed", range(12))
def test_loss_reordering_and_duplication(seed: int) -> None:
    a, b = pair(seed=seed, a={"key_agreement_types": (b"X255", b"DH3k")})
    net = Network(a, b, loss=0.2, duplicate=0.2, reorder=0.3, seed=seed)
    net.run(until=60)
    assert_agree(net)


def test_key_agreement_rule_picks_the_faster_first_choice() -> None:
    # RFC 6189 §4.1.2 example: Alice DH2k,DH3k,EC25 vs Bob EC38,EC25,DH3k -> EC25
    assert choose_key_agreement((b"DH2k", b"DH3k", b"EC25"), (b"EC38", b"EC25", b"DH3k")) == b"EC25"
    assert choose_key_agreement((b"DH3k", b"X255"), (b"X255", b"DH3k")) == b"X255"
    assert choose_key_agreement((b"X448",), (b"DH2k", b"X448")) == b"X448"
    assert choose_key_agreement((b"DH3k", b"DH2k"), (b"DH2k", b"DH3k")) == b"DH2k"
    # DH3k is mandatory and implied even when not listed
    assert choose_key_agreement((b"EC25",), (b"X255",)) == b"DH3k"


def test_retained_secrets_across_three_calls() -> None:
    cache_a, cache_b = MemorySecretCache(), MemorySecretCache()
    previous_rs1 = None
    for call in range(3):
        a, b = pair(seed=call * 11, cache_a=cache_a, cache_b=cache_b)
        net = Network(a, b)
        net.run()
        assert_agree(net)
        sa, sb = net.secured()
        assert not sa.cache_mismatch and not sb.cache_mismatch
        entry_a = cache_a.lookup(_key(ZID_A, ZID_B))
        entry_b = cache_b.lookup(_key(ZID_B, ZID_A))
        assert entry_a.rs1 is not None and entry_a.rs1 == entry_b.rs1
        assert entry_a.rs2 == previous_rs1  # rs1 rotated into rs2 (§4.6.1)
        previous_rs1 = entry_a.rs1


def test_cache_mismatch_is_reported_and_holds_back_the_update() -> None:
    cache_a, cache_b = MemorySecretCache(), MemorySecretCache()
    a, b = pair(cache_a=cache_a, cache_b=cache_b)
    net = Network(a, b)
    net.run()
    assert_agree(net)
    # B loses its cache: A still expects a match -> mismatch on A only.
    cache_b = MemorySecretCache()
    old = cache_a.lookup(_key(ZID_A, ZID_B))
    a, b = pair(seed=5, cache_a=cache_a, cache_b=cache_b)
    net = Network(a, b)
    net.run()
    assert_agree(net)
    sa, sb = net.secured()
    assert sa.cache_mismatch and not sb.cache_mismatch
    assert cache_a.lookup(_key(ZID_A, ZID_B)).rs1 == old.rs1  # §4.6.1.1: not updated yet
    a.set_sas_verified(True)  # the users compared the SAS
    new = cache_a.lookup(_key(ZID_A, ZID_B))
    assert new.rs1 != old.rs1 and new.sas_verified
    assert new.rs1 == cache_b.lookup(_key(ZID_B, ZID_A)).rs1


def test_first_call_is_not_a_mismatch_and_per_uri_keys_stay_independent() -> None:
    # One PBX identity (A) reached by one phone (B) under two extension URIs.
    cache_a, cache_b = MemorySecretCache(), MemorySecretCache()
    for seed, uri in enumerate(["sip:100@pbx", "sip:200@pbx", "sip:100@pbx", "sip:200@pbx"]):
        a, b = pair(
            seed=seed * 3,
            cache_a=cache_a,
            cache_b=cache_b,
            a={"self_uri": uri, "peer_uri": "sip:phone@lan"},
            b={"self_uri": "sip:phone@lan", "peer_uri": uri},
        )
        net = Network(a, b)
        net.run()
        sa, sb = net.secured()
        assert not sa.cache_mismatch and not sb.cache_mismatch, uri


def test_sas_verified_flag_round_trip() -> None:
    cache_a, cache_b = MemorySecretCache(), MemorySecretCache()
    a, b = pair(cache_a=cache_a, cache_b=cache_b)
    net = Network(a, b)
    net.run()
    assert not net.secured()[0].previously_verified
    a.set_sas_verified(True)
    b.set_sas_verified(True)
    a, b = pair(seed=9, cache_a=cache_a, cache_b=cache_b)
    net = Network(a, b)
    net.run()
    sa, sb = net.secured()
    assert sa.previously_verified and sb.previously_verified
    # Only one side verified: neither reports it (the V flag must come from both).
    cache_b.set_sas_verified(_key(ZID_B, ZID_A), False)
    a, b = pair(seed=10, cache_a=cache_a, cache_b=cache_b)
    net = Network(a, b)
    net.run()
    sa, sb = net.secured()
    assert not sa.previously_verified and not sb.previously_verified


def test_multistream_second_stream() -> None:
    a, b = pair()
    net = Network(a, b)
    net.run()
    first_a, _first_b = net.secured()
    assert a.session is not None and b.session is not None
    a2 = make_connection(ZID_A, seed=77, ssrc=0x3333, session=a.session)
    b2 = make_connection(ZID_B, seed=78, ssrc=0x4444, session=b.session)
    net2 = Network(a2, b2)
    net2.run()
    assert_agree(net2)
    sa, _sb = net2.secured()
    assert sa.multistream and sa.key_agreement == "Mult"
    assert sa.sas == first_a.sas  # one SAS per call
    assert sa.keys.local_key != first_a.keys.local_key  # new keys per stream
    # no DHPart messages in Mult mode
    assert not any(
        p.ZrtpPacket.parse(d).message.MESSAGE_TYPE.startswith(b"DHPart") for _, d in net2.wire
    )


def test_multistream_commit_without_session_is_refused() -> None:
    a, b = pair()
    net = Network(a, b)
    net.run()
    a2 = make_connection(ZID_A, seed=77, ssrc=0x3333, session=a.session, role="initiator")
    b2 = make_connection(ZID_B, seed=78, ssrc=0x4444, role="responder")  # no session
    net2 = Network(a2, b2)
    net2.run()
    fa, fb = net2.failures()
    assert fb and fb[0].error_code == ErrorCode.NO_SHARED_SECRET
    assert fa and fa[0].by_peer and fa[0].error_code == ErrorCode.NO_SHARED_SECRET


def test_no_peer_times_out_with_a_clear_reason() -> None:
    a = make_connection(ZID_A, seed=1, ssrc=1)
    a.start(0.0)
    sent = len(a.datagrams_to_send())
    now = last_sent = 0.0
    while (timer := a.get_timer()) is not None:
        now = timer
        a.handle_timer(now)
        out = a.datagrams_to_send()
        if out:
            last_sent = now
        sent += len(out)
    events = []
    while (e := a.next_event()) is not None:
        events.append(e)
    assert isinstance(events[-1], HandshakeFailed)
    assert "no ZRTP Hello" in events[-1].reason
    assert sent == 21  # first Hello + 20 retransmissions (§6)
    assert abs(last_sent - 3.75) < 1e-6  # 50 + 100 + 18 * 200 ms
    assert now <= last_sent + 0.2 + 1e-6  # gives up one interval after the last Hello


def test_retransmissions_are_byte_identical_with_increasing_sequence_numbers() -> None:
    a = make_connection(ZID_A, seed=1, ssrc=1)
    a.start(0.0)
    packets = a.datagrams_to_send()
    for _ in range(5):
        a.handle_timer(a.get_timer() or 0.0)
        packets += a.datagrams_to_send()
    parsed = [p.ZrtpPacket.parse(d) for d in packets]
    assert len({p.message_bytes(d) for d in packets}) == 1
    seqs = [x.sequence for x in parsed]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_unsupported_version_gets_error_and_newer_version_is_ignored() -> None:
    b = make_connection(ZID_B, seed=2, ssrc=2)
    b.start(0.0)
    b.datagrams_to_send()
    a = make_connection(ZID_A, seed=1, ssrc=1)
    a.start(0.0)
    hello = p.ZrtpPacket.parse(a.datagrams_to_send()[0]).message
    assert isinstance(hello, p.Hello)
    from dataclasses import replace

    newer = p.ZrtpPacket(1, 1, replace(hello, version=b"2.00")).serialize()
    b.receive_datagram(newer, 0.01)
    assert b.state is State.DISCOVERY and b.stats["ignored_newer_version"] == 1
    older = p.ZrtpPacket(2, 1, replace(hello, version=b"1.00")).serialize()
    b.receive_datagram(older, 0.02)
    out = [p.ZrtpPacket.parse(d).message for d in b.datagrams_to_send()]
    assert any(isinstance(m, p.Error) and m.code == ErrorCode.UNSUPPORTED_VERSION for m in out)
    assert b.state is State.FAILED


def test_equal_zid_is_an_error() -> None:
    a = make_connection(ZID_A, seed=1, ssrc=1)
    b = make_connection(ZID_A, seed=2, ssrc=2)
    net = Network(a, b)
    net.run()
    fa, fb = net.failures()
    assert fa and fb
    assert ErrorCode.EQUAL_ZID in {f.error_code for f in fa + fb}


def test_tampered_dhpart_is_detected() -> None:
    # Flip a byte of the responder's public value and fix up the CRC: the hash
    # commitment / MACs must catch it, never a silent success.
    def tamper(direction: str, data: bytes) -> bytes:
        packet = p.ZrtpPacket.parse(data)
        if isinstance(packet.message, p.DHPart2):
            from dataclasses import replace

            pv = bytearray(packet.message.pv)
            pv[5] ^= 0x01
            msg = replace(packet.message, pv=bytes(pv))
            return p.ZrtpPacket(packet.sequence, packet.ssrc, msg).serialize()
        return data

    a, b = pair(a={"role": "initiator"}, b={"role": "responder"})
    net = Network(a, b, tamper=tamper)
    net.run()
    _fa, fb = net.failures()
    assert fb and fb[0].error_code == ErrorCode.HVI_MISMATCH
    assert not any(isinstance(e, type(None)) for e in net.events_a)
    assert a.state is State.FAILED and b.state is State.FAILED


def test_false_hello_preimage_is_dropped_not_fatal() -> None:
    # A Commit whose H2 does not hash to the Hello's H3 is a false packet (§9).
    a, b = pair(a={"role": "initiator"}, b={"role": "responder"})
    injected = []

    def tamper(direction: str, data: bytes) -> bytes:
        packet = p.ZrtpPacket.parse(data)
        if isinstance(packet.message, p.Commit) and not injected:
            from dataclasses import replace

            injected.append(True)
            bogus = replace(packet.message, h2=b"\x00" * 32)
            b.receive_datagram(
                p.ZrtpPacket(packet.sequence, packet.ssrc, bogus).serialize(), net.now
            )
        return data

    net = Network(a, b, tamper=tamper)
    net.run()
    assert_agree(net)
    assert any(isinstance(e, SecurityWarning) for e in net.events_b)


def test_goclear_refused_by_default_and_accepted_when_allowed() -> None:
    for allow in (False, True):
        a, b = pair(a={"role": "initiator"}, b={"role": "responder", "allow_clear": allow})
        net = Network(a, b)
        net.run()
        assert_agree(net)
        goclear = p.GoClear(clear_mac=a._hash.mac(a._mackey_i, p.GoClear.MESSAGE_TYPE))  # type: ignore[union-attr]
        b.receive_datagram(p.ZrtpPacket(999, 0x1111, goclear).serialize(), 10.0)
        events = []
        while (e := b.next_event()) is not None:
            events.append(e)
        if allow:
            assert any(isinstance(e, WentClear) for e in events) and b.state is State.CLEAR
        else:
            assert any(isinstance(e, GoClearRefused) for e in events) and b.state is State.SECURE
        # a forged GoClear is never acted upon
        a2, b2 = pair(a={"role": "initiator"}, b={"role": "responder", "allow_clear": True})
        net2 = Network(a2, b2)
        net2.run()
        b2.receive_datagram(
            p.ZrtpPacket(999, 0x1111, p.GoClear(clear_mac=b"\x01" * 8)).serialize(), 10.0
        )
        assert b2.state is State.SECURE


def test_ping_gets_pingack() -> None:
    a = make_connection(ZID_A, seed=1, ssrc=1)
    a.start(0.0)
    a.datagrams_to_send()
    a.receive_datagram(
        p.ZrtpPacket(5, 0xABCD, p.Ping(version=b"1.10", endpoint_hash=b"E" * 8)).serialize(), 0.01
    )
    acks = [p.ZrtpPacket.parse(d).message for d in a.datagrams_to_send()]
    ack = next(m for m in acks if isinstance(m, p.PingAck))
    assert ack.received_endpoint_hash == b"E" * 8 and ack.ssrc == 0xABCD


def test_hello_hash_binding() -> None:
    # b checks a's Hello against the a=zrtp-hash from the signalling (§8.1).
    a, _ = pair()
    b = make_connection(ZID_B, seed=1001, ssrc=0x2222, peer_hello_hash=a.hello_hash.split()[1])
    net = Network(a, b)
    net.run()
    assert_agree(net)
    assert a.hello_hash.startswith("1.10 ")
    # A wrong hash makes b drop every Hello from a: never secure, and it says why.
    a2, _ = pair(seed=3)
    b2 = make_connection(ZID_B, seed=1001, ssrc=0x2222, peer_hello_hash="00" * 32)
    net = Network(a2, b2)
    net.run(until=20)
    assert not any(type(e).__name__ == "Secured" for e in net.events_b)
    assert any(isinstance(e, SecurityWarning) for e in net.events_b)


def test_garbage_never_raises() -> None:
    rng = random.Random(4)
    a, b = pair()
    net = Network(a, b)
    net.run()
    for conn in (a, b, make_connection(ZID_A, seed=3, ssrc=3)):
        for _ in range(2000):
            data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 200)))
            if rng.random() < 0.5 and len(data) > 16:
                data = b"\x10\x00" + data[2:4] + b"ZRTP" + data[8:]
            conn.receive_datagram(data, 50.0)
    assert a.state is State.SECURE and b.state is State.SECURE


def test_transition_table_only_names_real_handlers() -> None:
    for (state, message), (handler, targets) in TRANSITIONS.items():
        assert isinstance(state, State) and callable(handler)
        assert all(isinstance(t, State) for t in targets)
        assert message in p.Message.__args__  # type: ignore[attr-defined]


def _key(self_zid: bytes, peer_zid: bytes):  # type: ignore[no-untyped-def]
    from pbx_zrtp.cache.base import CacheKey

    return CacheKey(self_zid, peer_zid)


def _recorded_session(seed: int) -> list[tuple[str, bytes]]:
    a, b = pair(
        seed=seed, a={"key_agreement_types": (b"X255",)}, b={"key_agreement_types": (b"X255",)}
    )
    net = Network(a, b)
    net.run()
    net.secured()
    return net.wire


def test_replayed_and_shuffled_packets_from_another_session_never_break_the_engine() -> None:
    """Hostile input: packets of an earlier call between the same endpoints, replayed in
    random order (some mutated, CRC fixed up), injected into live exchanges. Nothing
    raises, no exchange ever ends secure with keys that disagree, and most calls still
    complete. (A replayed old HelloACK that arrives before the real one can make the
    initiator commit to the old Hello; that call then fails cleanly with a time-out.)"""
    completed = 0
    for seed in range(16):
        rng = random.Random(seed)
        old = [d for _, d in _recorded_session(seed + 100)]
        a, b = pair(
            seed=seed, a={"key_agreement_types": (b"X255",)}, b={"key_agreement_types": (b"X255",)}
        )

        def tamper(
            direction: str,
            data: bytes,
            a: ZrtpConnection = a,
            b: ZrtpConnection = b,
            rng: random.Random = rng,
            old: list[bytes] = old,
        ) -> bytes:
            target = b if direction == "a->b" else a
            for _ in range(rng.randrange(0, 3)):
                junk = bytearray(rng.choice(old))
                if rng.random() < 0.3:
                    junk[rng.randrange(12, len(junk))] ^= 1 << rng.randrange(8)
                    junk[-4:] = p.crc32c_of(bytes(junk[:-4])).to_bytes(4, "little")
                target.receive_datagram(bytes(junk), 0.0)
            return data

        net = Network(a, b, tamper=tamper, seed=seed)
        net.run(until=60)
        assert net.done()  # both sides reached a verdict, none hung
        if a.state is State.SECURE and b.state is State.SECURE:
            assert_agree(net)
            completed += 1
        else:
            fa, fb = net.failures()
            assert fa or fb
    assert completed >= 10, completed


def test_forged_confirm_is_dropped_and_a_real_mitm_times_out_naming_it() -> None:
    """A Confirm2 with a bad MAC is dropped (not fatal); if every Confirm is bad the
    exchange fails with a time-out that says why."""
    from dataclasses import replace

    def corrupt(direction: str, data: bytes) -> bytes:
        packet = p.ZrtpPacket.parse(data)
        if isinstance(packet.message, p.Confirm2):
            msg = replace(packet.message, confirm_mac=bytes(8))
            return p.ZrtpPacket(packet.sequence, packet.ssrc, msg).serialize()
        return data

    a, b = pair(a={"role": "initiator"}, b={"role": "responder"})
    net = Network(a, b, tamper=corrupt)
    net.run(until=60)
    fa, fb = net.failures()
    assert b.stats["bad_confirm_mac"] >= 1
    assert fa and fb
    assert "bad MAC" in fb[0].reason and "possible man in the middle" in fb[0].reason
    assert not any(type(e).__name__ == "Secured" for e in net.events_b)


def test_flags_travel_in_confirm_and_hello() -> None:
    a, b = pair(
        a={"role": "initiator", "mitm": True, "enrollment": True, "disclosure": True},
        b={"role": "responder", "allow_clear": True},
    )
    net = Network(a, b)
    net.run()
    sa, sb = net.secured()
    assert sb.peer_mitm and sb.peer_enrollment and sb.peer_disclosure
    assert not sb.peer_allows_clear  # E implies not A (§7.3.1)
    assert not sa.peer_mitm and not sa.peer_enrollment and not sa.peer_disclosure
    assert sa.peer_allows_clear
    direction, first = net.wire[0]
    hello = p.ZrtpPacket.parse(first).message
    assert direction == "a->b"
    assert isinstance(hello, p.Hello) and hello.mitm and not hello.signature_capable


def test_enrollment_requires_mitm() -> None:
    with pytest.raises(ValueError, match="trusted MiTM"):
        make_connection(ZID_A, seed=1, ssrc=1, enrollment=True)


def test_enrollment_excludes_allow_clear() -> None:
    with pytest.raises(ValueError, match="excludes allow_clear"):
        make_connection(ZID_A, seed=1, ssrc=1, mitm=True, enrollment=True, allow_clear=True)


def test_ec38_is_only_chosen_with_s384() -> None:
    a, b = pair(
        a={"key_agreement_types": (b"EC38", b"X255"), "hash_types": (b"S256",)},
        b={"key_agreement_types": (b"EC38", b"X255")},
    )
    net = Network(a, b)
    net.run()
    assert net.secured()[0].key_agreement != "EC38"
    a, b = pair(
        a={"key_agreement_types": (b"EC38",), "hash_types": (b"S256", b"S384")},
        b={"key_agreement_types": (b"EC38",)},
    )
    net = Network(a, b)
    net.run()
    sa, _ = net.secured()
    assert (sa.key_agreement, sa.hash) == ("EC38", "S384")


def test_cacheless_endpoint_sends_zero_cache_expiration() -> None:
    cache_a = MemorySecretCache()
    a, b = pair(a={"role": "initiator"}, b={"role": "responder"}, cache_a=cache_a)  # b: no cache
    net = Network(a, b)
    net.run()
    net.secured()
    # b told a not to keep the new secret (§4.9.1), so a stores nothing either.
    assert a._peer_confirm is not None and a._peer_confirm.cache_expiration == 0
    assert cache_a.lookup(_key(ZID_A, ZID_B)).rs1 is None


def test_goclear_accepted_rekeys_the_session_and_close_drops_keys() -> None:
    a, b = pair(a={"role": "initiator"}, b={"role": "responder", "allow_clear": True})
    net = Network(a, b)
    net.run()
    net.secured()
    assert b.session is not None
    before = b.session.zrtp_sess
    mac = a._hash.mac(a._mackey_i, p.GoClear.MESSAGE_TYPE)  # type: ignore[union-attr]
    goclear = p.ZrtpPacket(999, 0x1111, p.GoClear(clear_mac=mac)).serialize()
    b.receive_datagram(goclear, 10.0)
    assert b.state is State.CLEAR and b.session is not None
    assert b.session.zrtp_sess != before and len(b.session.zrtp_sess) == len(before)
    b.datagrams_to_send()
    forged = p.ZrtpPacket(1000, 0x1111, p.GoClear(clear_mac=bytes(8))).serialize()
    b.receive_datagram(forged, 10.1)
    assert b.datagrams_to_send() == []  # a forged GoClear gets no ClearACK
    b.receive_datagram(p.ZrtpPacket(1001, 0x1111, p.GoClear(clear_mac=mac)).serialize(), 10.2)
    assert [type(p.ZrtpPacket.parse(d).message) for d in b.datagrams_to_send()] == [p.ClearAck]
    b.close()
    assert b.session is None


def test_ping_from_another_ssrc_is_answered_after_the_exchange() -> None:
    a, b = pair()
    net = Network(a, b)
    net.run()
    net.secured()
    a.datagrams_to_send()
    ping = p.Ping(version=b"1.10", endpoint_hash=b"x" * 8)
    a.receive_datagram(p.ZrtpPacket(7, 0xDEAD, ping).serialize(), 20.0)
    assert [type(p.ZrtpPacket.parse(d).message) for d in a.datagrams_to_send()] == [p.PingAck]
