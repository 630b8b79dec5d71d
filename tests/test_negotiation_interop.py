"""Negotiation rules that other ZRTP libraries depend on (issue 16), engine vs engine in memory.

- libzrtp refuses a Commit naming a type its Hello did not list, even a mandatory
  one (§5.2 says unlisted mandatory types are implied): choose from the explicit list.
- Curve25519 has two names on the wire, X255 (bzrtp) and E255 (GNU ZRTP).
- GNU ZRTP, acknowledged before it saw our Hello, only waits for a Commit: a forced
  responder must not leave it waiting forever.
"""

from __future__ import annotations

import pytest

from pbx_zrtp.zrtp import packets as p
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from pbx_zrtp.zrtp.connection import State, ZrtpConnection, choose_key_agreement
from pbx_zrtp.zrtp.events import Event, HandshakeFailed
from pbx_zrtp.zrtp.keyagreement import KEY_AGREEMENTS
from tests.zrtp_harness import Network, make_connection

ZID_A = bytes.fromhex("a1a1a1a1a1a1a1a1a1a1a1a1")
ZID_B = bytes.fromhex("b2b2b2b2b2b2b2b2b2b2b2b2")
ZID_C = bytes.fromhex("c3c3c3c3c3c3c3c3c3c3c3c3")


def _commits(net: Network, direction: str) -> list[p.Commit]:
    out = []
    for way, datagram in net.wire:
        if way == direction:
            message = p.ZrtpPacket.parse(datagram).message
            if isinstance(message, p.Commit):
                out.append(message)
    return out


# ---------------------------------------------------------------- 1. explicit lists


@pytest.mark.parametrize(
    ("field", "ours", "theirs", "expected", "secured_field"),
    [
        # libzrtp's stock profile lists only HS32; we prefer HS80 (issue 16, item 1).
        ("auth_tag_types", (b"HS80", b"HS32"), (b"HS32",), b"HS32", "auth_tag"),
        # a peer listing only S384 never asked for the implied S256
        ("hash_types", (b"S256", b"S384"), (b"S384",), b"S384", "hash"),
        # a peer listing only B256 never asked for the implied B32
        ("sas_types", (b"B32 ", b"B256"), (b"B256",), b"B256", "sas_type"),
        # a peer listing only AES3 never asked for the implied AES1
        ("cipher_types", (b"AES1", b"AES3"), (b"AES3",), b"AES3", "cipher"),
    ],
)
def test_initiator_chooses_from_what_the_peer_lists(
    field: str,
    ours: tuple[bytes, ...],
    theirs: tuple[bytes, ...],
    expected: bytes,
    secured_field: str,
) -> None:
    a = make_connection(ZID_A, seed=1, ssrc=0x1111, role="initiator", **{field: ours})
    b = make_connection(ZID_B, seed=2, ssrc=0x2222, role="responder", **{field: theirs})
    net = Network(a, b)
    net.run()
    sa, sb = net.secured()
    commits = _commits(net, "a->b")
    assert commits, net.wire
    chosen = {
        "auth_tag_types": commits[0].auth_tag_type,
        "hash_types": commits[0].hash_type,
        "sas_types": commits[0].sas_type,
        "cipher_types": commits[0].cipher_type,
    }[field]
    assert chosen == expected
    assert getattr(sa, secured_field) == getattr(sb, secured_field) == expected.decode().strip()
    assert sa.sas == sb.sas


def test_key_agreement_comes_from_the_peers_explicit_list() -> None:
    # §4.1.2 with the implied DH3k: DH3k is faster than EC38, but the peer lists only
    # EC38, and a strict peer refuses a Commit for a type it did not list.
    assert choose_key_agreement((b"DH3k", b"EC38"), (b"EC38",)) == b"EC38"
    a = make_connection(
        ZID_A,
        seed=1,
        ssrc=0x1111,
        role="initiator",
        key_agreement_types=(b"DH3k", b"EC38"),
        hash_types=(b"S384", b"S256"),
    )
    b = make_connection(
        ZID_B,
        seed=2,
        ssrc=0x2222,
        role="responder",
        key_agreement_types=(b"EC38",),
        hash_types=(b"S384",),
    )
    net = Network(a, b)
    net.run()
    sa, sb = net.secured()
    assert sa.key_agreement == sb.key_agreement == "EC38"


def test_mandatory_types_are_still_implied_when_a_list_is_empty_or_disjoint() -> None:
    # Nothing in common with what the peer lists: the mandatory type (§5.2) remains.
    assert choose_key_agreement((b"EC25",), (b"X255",)) == b"DH3k"
    assert choose_key_agreement((b"X255",), ()) == b"DH3k"


# ---------------------------------------------------------------- 2. Curve25519 names


def test_hello_offers_curve25519_under_both_names_and_keeps_mult() -> None:
    default = ZrtpConfiguration(zid=ZID_A).hello_key_agreements()
    # Post-quantum X1M1 first (issue 17), then Curve25519 under both names, side by side.
    assert default[:3] == (b"X1M1", b"X255", b"E255")
    assert default[-1] == b"Mult" and len(default) == 7
    only_e255 = ZrtpConfiguration(zid=ZID_A, key_agreement_types=(b"E255",))
    assert only_e255.hello_key_agreements() == (b"E255", b"X255", b"Mult")
    every = ZrtpConfiguration(
        zid=ZID_A,
        key_agreement_types=(b"X255", b"EC25", b"DH3k", b"X448", b"DH2k", b"EC38"),
    )
    assert len(every.hello_key_agreements()) == 7 and every.hello_key_agreements()[-1] == b"Mult"


OUR_HELLO = ZrtpConfiguration(zid=ZID_A).hello_key_agreements()


@pytest.mark.parametrize(
    ("theirs", "expected"),
    [
        ((b"E255", b"EC25", b"DH3k", b"EC38", b"DH2k", b"Mult"), b"E255"),  # GNU ZRTP + E255
        ((b"EC25", b"E255", b"DH3k", b"Mult"), b"E255"),  # GNU ZRTP, E255 second
        ((b"X255", b"X448", b"DH3k", b"Mult"), b"X255"),  # bzrtp
        ((b"DH3k", b"DH2k", b"EC25", b"EC38", b"Mult"), b"EC25"),  # libzrtp: no Curve25519
        (OUR_HELLO, b"X1M1"),  # pbx_zrtp: post-quantum X25519+ML-KEM-512 first (issue 17)
    ],
)
def test_curve25519_reaches_every_peer_and_both_sides_agree(
    theirs: tuple[bytes, ...], expected: bytes
) -> None:
    assert choose_key_agreement(OUR_HELLO, theirs) == expected
    # The peer runs the same §4.1.2 rule from its side (bzrtp pre-computes its DH
    # part from it as responder): it must land on the same type.
    assert choose_key_agreement(theirs, OUR_HELLO) == expected


def test_two_names_of_one_rank_tie_break_the_same_way_on_both_sides() -> None:
    assert choose_key_agreement((b"X255", b"E255"), (b"E255", b"X255")) == b"E255"
    assert choose_key_agreement((b"E255", b"X255"), (b"X255", b"E255")) == b"E255"


def test_e255_is_the_x255_computation() -> None:
    e255, x255 = KEY_AGREEMENTS[b"E255"], KEY_AGREEMENTS[b"X255"]
    secret_a, secret_b = bytes(range(32)), bytes(range(32, 64))
    e_a, e_b = e255(lambda n: secret_a[:n]), e255(lambda n: secret_b[:n])
    x_a, x_b = x255(lambda n: secret_a[:n]), x255(lambda n: secret_b[:n])
    assert e_a.public_value == x_a.public_value
    assert e_a.compute(x_b.public_value) == x_a.compute(e_b.public_value)


@pytest.mark.parametrize("initiator", ["a", "b"])
def test_a_peer_offering_only_e255_secures_with_curve25519(initiator: str) -> None:
    a = make_connection(
        ZID_A, seed=3, ssrc=0x1111, role="initiator" if initiator == "a" else "responder"
    )
    b = make_connection(
        ZID_B,
        seed=4,
        ssrc=0x2222,
        role="responder" if initiator == "a" else "initiator",
        key_agreement_types=(b"E255",),
    )
    net = Network(a, b)
    net.run()
    sa, sb = net.secured()
    assert sa.key_agreement == sb.key_agreement == "E255"
    assert sa.sas == sb.sas and sa.keys.local_key == sb.keys.remote_key


# ---------------------------------------------------------------- 3. forced responder


def test_forced_responder_hello_has_no_passive_flag() -> None:
    a = make_connection(ZID_A, seed=1, ssrc=1, role="responder")
    a.start(0.0)
    hello = p.ZrtpPacket.parse(a.datagrams_to_send()[0]).message
    assert isinstance(hello, p.Hello) and not hello.passive


def test_two_forced_responders_do_not_wait_for_each_other_forever() -> None:
    """Each only waits for a Commit, as GNU ZRTP does once its Hello was
    acknowledged before it saw ours: one side must commit after all (§4.2)."""
    a = make_connection(ZID_A, seed=1, ssrc=0x1111, role="responder")
    b = make_connection(ZID_B, seed=2, ssrc=0x2222, role="responder")
    net = Network(a, b)
    net.run(until=30.0)
    sa, sb = net.secured()
    assert sa.sas == sb.sas and {sa.role, sb.role} == {"initiator", "responder"}
    assert a.stats["responder_fallback_commit"] + b.stats["responder_fallback_commit"] >= 1
    # Only after the grace period, not at once.
    assert net.now >= ZrtpConfiguration(zid=ZID_A).responder_commit_wait


def test_forced_responder_still_answers_a_peer_that_commits() -> None:
    a = make_connection(ZID_A, seed=1, ssrc=0x1111, role="responder")
    b = make_connection(ZID_B, seed=2, ssrc=0x2222)
    net = Network(a, b)
    net.run()
    sa, sb = net.secured()
    assert (sa.role, sb.role) == ("responder", "initiator")
    assert a.stats["responder_fallback_commit"] == 0


def _drive(conn: ZrtpConnection, until: float) -> list[Event]:
    events: list[Event] = []
    while (timer := conn.get_timer()) is not None and timer <= until:
        conn.handle_timer(timer)
        conn.datagrams_to_send()
    while (event := conn.next_event()) is not None:
        events.append(event)
    return events


def _peer_hello() -> bytes:
    peer = make_connection(ZID_C, seed=9, ssrc=0x3333)
    peer.start(0.0)
    return peer.datagrams_to_send()[0]


def _hello_ack(sequence: int = 7) -> bytes:
    return p.ZrtpPacket(sequence, 0x3333, p.HelloAck()).serialize()


def test_silent_acknowledged_peer_gets_our_commit_and_the_failure_names_it() -> None:
    """The GNU ZRTP deadlock as our responder saw it: the peer's Hello arrived and
    our Hello was acknowledged, then nothing. We commit after the grace period; the
    failure then names the Commit that got no answer, not an acknowledgement that
    did arrive."""
    a = make_connection(ZID_A, seed=1, ssrc=0x1111, role="responder")
    a.start(0.0)
    a.receive_datagram(_peer_hello(), 0.01)
    a.receive_datagram(_hello_ack(), 0.02)
    a.datagrams_to_send()
    grace = ZrtpConfiguration(zid=ZID_A).responder_commit_wait
    assert a.get_timer() == pytest.approx(0.02 + grace)
    a.handle_timer(0.02 + grace)
    sent = [p.ZrtpPacket.parse(d).message for d in a.datagrams_to_send()]
    assert any(isinstance(m, p.Commit) for m in sent)
    assert a.state is State.COMMIT_SENT and a.role == "initiator"
    events = _drive(a, 60.0)
    failures = [e for e in events if isinstance(e, HandshakeFailed)]
    assert [f.reason for f in failures] == ["time-out waiting for the answer to Commit"]


def test_time_out_names_a_missing_peer_hello_after_our_hello_was_acknowledged() -> None:
    a = make_connection(ZID_A, seed=1, ssrc=0x1111, role="responder")
    a.start(0.0)
    a.receive_datagram(_hello_ack(), 0.02)
    failures = [e for e in _drive(a, 60.0) if isinstance(e, HandshakeFailed)]
    assert [f.reason for f in failures] == [
        "time-out: the peer acknowledged our Hello but never sent its own"
    ]
    assert "never acknowledged" not in failures[0].reason
