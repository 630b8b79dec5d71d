"""The attack catalogue at engine level: each attack is met the way RFC 6189 says.

Attacks already proven elsewhere (see docs/reliability.md, "Attacks"): replayed
packets of an earlier session (test_connection), forged Confirm (bad MAC),
forged GoClear and GoClear refused without the A flag, a false Commit H2,
tampered DHPart2 -> hvi mismatch, pv 0/1/p-1 in the key agreement objects
(test_known_answers), forged/replayed SRTP (test_srtp). This file adds the
rest, driving two real engines in memory (tests/zrtp_harness.py) with a man in
the middle that rewrites, injects or replays packets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from pbx_zrtp.zrtp import packets as p
from pbx_zrtp.zrtp.connection import State, ZrtpConnection
from pbx_zrtp.zrtp.crypto import implicit_mac
from pbx_zrtp.zrtp.errors import ErrorCode
from pbx_zrtp.zrtp.events import (
    Event,
    GoClearRefused,
    HandshakeFailed,
    SecurityWarning,
    SrtpKeysReady,
)
from pbx_zrtp.zrtp.keyagreement import DH2k, DH3k
from tests.zrtp_harness import Network, make_connection

ZID_A = bytes.fromhex("a1a1a1a1a1a1a1a1a1a1a1a1")
ZID_B = bytes.fromhex("b2b2b2b2b2b2b2b2b2b2b2b2")

Tamper = Callable[[str, bytes], bytes | None]


def engines(
    a: dict[str, object] | None = None, b: dict[str, object] | None = None, seed: int = 1
) -> tuple[ZrtpConnection, ZrtpConnection]:
    """a is the initiator, b the responder unless the configurations say otherwise."""
    return (
        make_connection(ZID_A, seed=seed, ssrc=0x1111, **{"role": "initiator", **(a or {})}),
        make_connection(ZID_B, seed=seed + 1, ssrc=0x2222, **{"role": "responder", **(b or {})}),
    )


def rewrite(kind: type[p.Message], change: Callable[[p.Message], p.Message]) -> Tamper:
    """A man in the middle that rewrites every ``kind`` message (CRC recomputed)."""

    def tamper(direction: str, data: bytes) -> bytes:
        packet = p.ZrtpPacket.parse(data)
        if isinstance(packet.message, kind):
            return p.ZrtpPacket(packet.sequence, packet.ssrc, change(packet.message)).serialize()
        return data

    return tamper


def sent_errors(net: Network, direction: str) -> list[int]:
    return [
        m.code
        for d, data in net.wire
        if d == direction and isinstance(m := p.ZrtpPacket.parse(data).message, p.Error)
    ]


def failed_with(events: list[Event]) -> HandshakeFailed:
    failures = [e for e in events if isinstance(e, HandshakeFailed)]
    assert failures, events
    return failures[0]


def never_keyed(events: list[Event]) -> bool:
    return not any(isinstance(e, SrtpKeysReady) or type(e).__name__ == "Secured" for e in events)


# ---------------------------------------------------------------------- DH values


def _dh_bad_values(prime: int, length: int) -> dict[str, bytes]:
    return {
        "0": bytes(length),
        "1": (1).to_bytes(length, "big"),
        "p-1": (prime - 1).to_bytes(length, "big"),
        "p": prime.to_bytes(length, "big"),
    }


_P256 = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF

BAD_PUBLIC_VALUES = [
    *(("DH3k", name, pv) for name, pv in _dh_bad_values(DH3k.prime, 384).items()),
    *(("DH2k", name, pv) for name, pv in _dh_bad_values(DH2k.prime, 256).items()),
    ("EC25", "off-curve point (1, 1)", (1).to_bytes(32, "big") * 2),
    ("EC25", "point at infinity (0, 0)", bytes(64)),
    ("EC25", "x = p", _P256.to_bytes(32, "big") + (1).to_bytes(32, "big")),
    ("EC38", "off-curve point (1, 1)", (1).to_bytes(48, "big") * 2),
    ("X255", "low-order point u = 0", bytes(32)),
    ("X255", "low-order point u = 1", (1).to_bytes(32, "little")),
    ("X448", "low-order point u = 0", bytes(56)),
    ("X448", "low-order point u = 1", (1).to_bytes(56, "little")),
]


@pytest.mark.parametrize(("ka", "what", "pv"), BAD_PUBLIC_VALUES, ids=lambda x: str(x)[:24])
def test_bad_public_value_in_dhpart1_gets_error_0x61(ka: str, what: str, pv: bytes) -> None:
    """§4.4.1.2 / §5.9: pv 0, 1, p-1 (or >= p), off-curve and low-order points -> Error
    0x61 'DH Error: bad pvi or pvr', before any key is derived."""
    hashes = (b"S384",) if ka == "EC38" else (b"S256",)
    cfg = {"key_agreement_types": (ka.encode(),), "hash_types": hashes}
    a, b = engines(cfg, cfg)
    net = Network(a, b, tamper=rewrite(p.DHPart1, lambda m: replace(m, pv=pv)))  # type: ignore[type-var]
    net.run()
    failure = failed_with(net.events_a)
    assert failure.error_code == ErrorCode.BAD_DH_VALUE and not failure.by_peer, what
    assert sent_errors(net, "a->b")[:1] == [ErrorCode.BAD_DH_VALUE]
    assert never_keyed(net.events_a) and never_keyed(net.events_b)
    assert failed_with(net.events_b).by_peer  # the responder learns why


@pytest.mark.parametrize("value", ["1", "p-1"])
def test_malicious_initiator_committing_to_a_bad_dh_value_gets_error_0x61(value: str) -> None:
    """An initiator that commits (hvi, MACs all correct) to pv = 1 or p-1 in DHPart2:
    the responder checks the value itself and answers Error 0x61."""
    cfg = {"key_agreement_types": (b"DH3k",)}
    a, b = engines(cfg, cfg)
    bad = {"1": 1, "p-1": DH3k.prime - 1}[value].to_bytes(384, "big")
    forged: dict[str, bytes] = {}

    def tamper(direction: str, data: bytes) -> bytes:
        packet = p.ZrtpPacket.parse(data)
        message = packet.message
        if isinstance(message, p.DHPart2 | p.Commit) and "dhpart2" not in forged:
            part = replace(a._own_dhpart, pv=bad)  # type: ignore[type-var]
            part = replace(part, mac=implicit_mac(a._h0, part.serialize()[:-8]))
            forged["dhpart2"] = part.serialize()
            hvi = a._hash.digest(forged["dhpart2"] + b._hello_bytes)[:32]  # type: ignore[union-attr]
            commit = replace(a._commit, hvi=hvi)  # type: ignore[type-var]
            commit = replace(commit, mac=implicit_mac(a._h1, commit.serialize()[:-8]))
            forged["commit"] = commit.serialize()
        if isinstance(message, p.Commit):
            message = p.Commit.parse(forged["commit"])
        elif isinstance(message, p.DHPart2):
            message = p.DHPart2.parse(forged["dhpart2"])
        return p.ZrtpPacket(packet.sequence, packet.ssrc, message).serialize()

    net = Network(a, b, tamper=tamper)
    net.run()
    failure = failed_with(net.events_b)
    assert failure.error_code == ErrorCode.BAD_DH_VALUE and not failure.by_peer
    assert sent_errors(net, "b->a")[:1] == [ErrorCode.BAD_DH_VALUE]
    assert never_keyed(net.events_b)


# ---------------------------------------------------------------------- hvi


def test_commit_with_a_bad_hvi_gets_error_0x62() -> None:
    """The initiator's Commit carries an hvi (correctly MACed) that does not hash its
    DHPart2: §4.4.1.1 -> Error 0x62 'DH Error: hvi != hashed data'."""
    a, b = engines()

    def change(message: p.Message) -> p.Message:
        assert isinstance(message, p.Commit) and message.hvi is not None
        commit = replace(message, hvi=bytes(32))
        return replace(commit, mac=implicit_mac(a._h1, commit.serialize()[:-8]))

    net = Network(a, b, tamper=rewrite(p.Commit, change))
    net.run()
    failure = failed_with(net.events_b)
    assert failure.error_code == ErrorCode.HVI_MISMATCH and not failure.by_peer
    assert sent_errors(net, "b->a")[:1] == [ErrorCode.HVI_MISMATCH]
    assert failed_with(net.events_a).error_code == ErrorCode.HVI_MISMATCH
    assert never_keyed(net.events_b)


def test_commit_rewritten_by_a_third_party_fails_its_mac() -> None:
    """Someone without the initiator's H1 changes the hvi: the Commit's MAC, checked
    when DHPart2 reveals H1 (§9), catches it first: Error 0x70."""
    a, b = engines()
    net = Network(a, b, tamper=rewrite(p.Commit, lambda m: replace(m, hvi=bytes(32))))  # type: ignore[type-var]
    net.run()
    assert failed_with(net.events_b).error_code == ErrorCode.BAD_CONFIRM_MAC
    assert never_keyed(net.events_b)


# ---------------------------------------------------------------------- hash chain


def _inject_copy(
    target: Callable[[], ZrtpConnection], kind: type[p.Message], **changes: bytes
) -> Tamper:
    """Before the real ``kind`` message, deliver a copy with ``changes`` (a false packet)."""
    done: list[bool] = []

    def tamper(direction: str, data: bytes) -> bytes:
        packet = p.ZrtpPacket.parse(data)
        if isinstance(packet.message, kind) and not done:
            done.append(True)
            false = replace(packet.message, **changes)  # type: ignore[type-var]
            target().receive_datagram(
                p.ZrtpPacket(packet.sequence, packet.ssrc, false).serialize(), 0.0
            )
        return data

    return tamper


@pytest.mark.parametrize(
    ("kind", "field", "receiver"),
    [
        (p.Commit, "h2", "b"),
        (p.DHPart1, "h1", "a"),
        (p.DHPart2, "h1", "b"),
    ],
)
def test_wrong_hash_chain_preimage_is_discarded_and_the_exchange_goes_on(
    kind: type[p.Message], field: str, receiver: str
) -> None:
    """§9: a message whose H2/H1 does not hash to what the peer sent before is a
    false packet: discarded (counted, SecurityWarning), not fatal; the real message
    that follows completes the exchange."""
    a, b = engines()
    target = b if receiver == "b" else a
    net = Network(a, b, tamper=_inject_copy(lambda: target, kind, **{field: b"\x5a" * 32}))
    net.run()
    sa, sb = net.secured()
    assert sa.sas == sb.sas
    assert target.stats["dropped_false_packet"] == 1
    events = net.events_b if receiver == "b" else net.events_a
    warnings = [e.reason for e in events if isinstance(e, SecurityWarning)]
    assert any("preimage" in w for w in warnings), warnings


def test_confirm_with_a_wrong_h0_is_discarded() -> None:
    """A Confirm2 with a valid MAC but an H0 that does not hash to the DHPart2's H1
    (only the peer itself can build one) is discarded, never accepted: §9."""
    a, b = engines()

    def change(message: p.Message) -> p.Message:
        assert isinstance(message, p.Confirm2)
        from pbx_zrtp.zrtp.crypto import aes_cfb

        plain = p.ConfirmPlaintext.parse(
            aes_cfb(a._zrtpkey_i, message.cfb_iv, message.encrypted, encrypt=False)
        )
        encrypted = aes_cfb(
            a._zrtpkey_i, message.cfb_iv, replace(plain, h0=b"\x11" * 32).serialize(), encrypt=True
        )
        mac = a._hash.mac(a._mackey_i, encrypted)  # type: ignore[union-attr]
        return replace(message, encrypted=encrypted, confirm_mac=mac)

    net = Network(a, b, tamper=rewrite(p.Confirm2, change))
    net.run(until=40)
    assert b.state is not State.SECURE
    assert b.stats["dropped_false_packet"] >= 1
    assert any(isinstance(e, SecurityWarning) and "Confirm H0" in e.reason for e in net.events_b)
    assert never_keyed(net.events_b)


# ---------------------------------------------------------------------- downgrade


@pytest.mark.parametrize(
    ("ours", "commit_change", "code"),
    [
        ({"key_agreement_types": (b"X255", b"DH3k")}, {"key_agreement_type": b"DH2k"}, 0x53),
        ({"hash_types": (b"S256",)}, {"hash_type": b"S384"}, 0x51),
        ({"cipher_types": (b"AES1",)}, {"cipher_type": b"AES3"}, 0x52),
        ({"sas_types": (b"B32 ",)}, {"sas_type": b"B256"}, 0x55),
        ({}, {"auth_tag_type": b"SK32"}, 0x54),
    ],
)
def test_commit_choosing_an_algorithm_we_do_not_allow_is_refused(
    ours: dict[str, object], commit_change: dict[str, bytes], code: int
) -> None:
    """Downgrade: a Commit naming a type outside our policy (our Hello did not list it)
    is refused with the §5.9 'not supported' code, before any DH work."""
    a, b = engines(b=ours)
    net = Network(a, b, tamper=rewrite(p.Commit, lambda m: replace(m, **commit_change)))  # type: ignore[type-var]
    net.run()
    failure = failed_with(net.events_b)
    assert failure.error_code == code and not failure.by_peer
    assert sent_errors(net, "b->a")[:1] == [code]
    assert never_keyed(net.events_b)
    assert b._key_agreement is None  # no DH computed for a refused Commit


def test_peer_offering_only_what_our_policy_excludes_negotiates_up_not_down() -> None:
    """A peer that offers only DH2k against our X255/DH3k policy: the negotiation
    uses the mandatory DH3k both sides imply (§5.1.5), never DH2k."""
    a, b = engines({"key_agreement_types": (b"DH2k",)}, {"key_agreement_types": (b"X255", b"DH3k")})
    net = Network(a, b)
    net.run()
    sa, sb = net.secured()
    assert sa.key_agreement == sb.key_agreement == "DH3k"


def test_algorithm_stripping_in_hello_is_caught_by_the_hello_mac() -> None:
    """A man in the middle strips the responder's strong types from its Hello so the
    initiator picks DH2k: the Hello's MAC (keyed by H2, revealed in DHPart1) no
    longer matches, and the initiator ends with Error 0x70 (§8.1.1, §9)."""
    a, b = engines({"role": "initiator"}, {"key_agreement_types": (b"X255", b"DH2k")})

    def strip(message: p.Message) -> p.Message:
        assert isinstance(message, p.Hello)
        return replace(message, key_agreement_types=(b"DH2k",))

    def tamper(direction: str, data: bytes) -> bytes:
        return rewrite(p.Hello, strip)(direction, data) if direction == "b->a" else data  # type: ignore[return-value]

    net = Network(a, b, tamper=tamper)
    net.run()
    failure = failed_with(net.events_a)
    assert failure.error_code == ErrorCode.BAD_CONFIRM_MAC and "Hello" in failure.reason
    assert never_keyed(net.events_a)


# ---------------------------------------------------------------------- floods, replays, forgeries


def _hello_from(seed: int) -> bytes:
    """A valid Hello from a stranger (distinct ZID and SSRC)."""
    stranger = make_connection(seed.to_bytes(12, "big"), seed=seed, ssrc=0x10000 + seed)
    stranger.start(0.0)
    return stranger.datagrams_to_send()[0]


def test_hello_flood_after_the_real_hello_is_ignored_and_counted() -> None:
    """1000 valid Hellos from strangers once the real peer's Hello is in: memory stays
    bounded (at most 4 candidates), every extra one is counted, the call secures."""
    flood = [_hello_from(1000 + i) for i in range(1000)]
    a, b = engines()
    fired: list[bool] = []

    def tamper(direction: str, data: bytes) -> bytes:
        if direction == "a->b" and not fired and b._peer_hello is not None:
            fired.append(True)
            for hello in flood:
                b.receive_datagram(hello, 0.0)
        return data

    net = Network(a, b, tamper=tamper)
    net.run()
    sa, sb = net.secured()
    assert sa.sas == sb.sas and sb.peer_zid == ZID_A
    assert b.stats["ignored_other_hello"] + b.stats["alternate_hello"] == 1000
    assert len(b._hello_candidates) <= 4


def test_hello_flood_before_the_real_hello_is_bounded_and_fails_cleanly() -> None:
    """Strangers' Hellos arrive first (an attacker spoofing the phone's address): the
    engine keeps at most 4 candidates and counts the rest. The real Hello finds no
    room, so its Commit names a Hello we never kept and is dropped as a false packet
    (§9): this one call fails cleanly within the §6 limits, with no keys ever
    derived. (An attacker on the path can deny a call anyway, by dropping packets.)"""
    a, b = engines()
    for i in range(203):
        b.receive_datagram(_hello_from(500 + i), 0.0)
    assert len(b._hello_candidates) == 4
    assert b.stats["alternate_hello"] == 3 and b.stats["ignored_other_hello"] == 199
    net = Network(a, b)
    net.run(until=30)
    fa, fb = net.failures()
    assert [f.reason for f in fa] == ["time-out waiting for the answer to Commit"]
    assert [f.reason for f in fb] == ["time-out: the peer never acknowledged our Hello"]
    assert b.stats["dropped_false_packet"] >= 1  # the real Commits, not matching
    assert net.now <= 12.0 + 1e-6
    assert never_keyed(net.events_a) and never_keyed(net.events_b)


def test_replaying_the_whole_exchange_after_secure_changes_nothing() -> None:
    """Every packet of the exchange replayed into both engines once secure: no state
    change, no new keys, nothing but harmless acknowledgements sent."""
    a, b = engines()
    net = Network(a, b)
    net.run()
    sa, sb = net.secured()
    keys_a, keys_b = a._srtp_keys, b._srtp_keys
    a.datagrams_to_send()
    b.datagrams_to_send()
    for direction, data in list(net.wire) * 3:
        (b if direction == "a->b" else a).receive_datagram(data, 99.0)
    assert a.state is State.SECURE and b.state is State.SECURE
    assert (a._srtp_keys, b._srtp_keys) == (keys_a, keys_b)
    answers = {
        type(p.ZrtpPacket.parse(d).message) for d in a.datagrams_to_send() + b.datagrams_to_send()
    }
    assert answers <= {p.HelloAck, p.Conf2Ack}
    for conn in (a, b):
        events = []
        while (e := conn.next_event()) is not None:
            events.append(e)
        assert not any(isinstance(e, HandshakeFailed) for e in events)
    assert sa.sas == sb.sas


def test_unauthenticated_error_after_secure_only_warns() -> None:
    """§4.7.1: Error is not authenticated; once secure it is acknowledged and reported,
    never acted upon (the call stays secure)."""
    a, b = engines()
    net = Network(a, b)
    net.run()
    net.secured()
    b.receive_datagram(p.ZrtpPacket(4000, 0x1111, p.Error(code=0x61)).serialize(), 50.0)
    assert b.state is State.SECURE
    events = []
    while (e := b.next_event()) is not None:
        events.append(e)
    assert any(isinstance(e, SecurityWarning) and "after going secure" in e.reason for e in events)
    assert [type(p.ZrtpPacket.parse(d).message) for d in b.datagrams_to_send()] == [p.ErrorAck]


def test_goclear_without_permission_is_refused_and_repeats_stay_refused() -> None:
    """§4.7.2: with the A flag clear, a correctly MACed GoClear is refused (Error 0x100,
    GoClearRefused) every time it is repeated; the call stays secure."""
    a, b = engines()
    net = Network(a, b)
    net.run()
    net.secured()
    b.datagrams_to_send()
    mac = a._hash.mac(a._mackey_i, p.GoClear.MESSAGE_TYPE)  # type: ignore[union-attr]
    refused = 0
    for seq in range(5):
        b.receive_datagram(
            p.ZrtpPacket(5000 + seq, 0x1111, p.GoClear(clear_mac=mac)).serialize(), 60.0
        )
        while (e := b.next_event()) is not None:
            refused += isinstance(e, GoClearRefused)
        sent = [p.ZrtpPacket.parse(d).message for d in b.datagrams_to_send()]
        assert sent == [p.Error(code=ErrorCode.GOCLEAR_NOT_ALLOWED)]
    assert refused == 5 and b.state is State.SECURE and b._srtp_keys is not None
