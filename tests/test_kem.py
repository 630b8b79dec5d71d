"""KEM mode (post-quantum hybrids X1M1, X3M3), S512 and fragmentation, engine vs engine
in memory. Interop with bzrtp's post-quantum build is in tests/interop/test_bzrtp_pq.py."""

from __future__ import annotations

import random

import pytest

from pbx_zrtp.zrtp import packets as p
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from pbx_zrtp.zrtp.connection import choose_key_agreement
from pbx_zrtp.zrtp.crypto import HASHES, SHA256, SHA512
from pbx_zrtp.zrtp.errors import ZrtpProtocolError
from pbx_zrtp.zrtp.events import HandshakeFailed
from pbx_zrtp.zrtp.fragments import Reassembler
from pbx_zrtp.zrtp.kem import K255MLK512, K448MLK1024, KEMS, create_kem
from tests.test_connection import assert_agree, pair
from tests.zrtp_harness import Network

HYBRIDS = ["X1M1", "X3M3"]


def kem_pair(name: str, seed: int = 1, **extra: object) -> Network:
    config = {"key_agreement_types": (name.encode(), b"X255"), "hash_types": (b"S256", b"S512")}
    config.update(extra)
    a, b = pair(seed=seed, a=dict(config), b=dict(config))
    return Network(a, b, seed=seed)


def test_both_hybrids_are_available() -> None:
    assert set(KEMS) == {b"X1M1", b"X3M3"}


@pytest.mark.parametrize("name", HYBRIDS)
@pytest.mark.parametrize("hash_name", ["S256", "S384", "S512"])
def test_hybrid_kem_agrees_on_one_secret(name: str, hash_name: str) -> None:
    hash_algorithm = HASHES[hash_name.encode()]
    rng = random.Random(7)
    initiator = create_kem(name.encode(), hash_algorithm, rng.randbytes)
    responder = create_kem(name.encode(), hash_algorithm, rng.randbytes)
    public = initiator.generate()
    assert len(public) == initiator.public_key_length and len(public) % 4 == 0
    ciphertext, secret = responder.encapsulate(public)
    assert len(ciphertext) == responder.ciphertext_length
    assert initiator.decapsulate(ciphertext) == secret
    assert len(secret) == hash_algorithm.digest_size  # bzrtp's DHResult length


def test_hybrid_secret_depends_on_the_ciphertext_and_the_hash() -> None:
    """The combiner binds the ciphertext: a flipped bit gives another secret."""
    rng = random.Random(3)
    initiator = create_kem(b"X1M1", SHA512, rng.randbytes)
    responder = create_kem(b"X1M1", SHA512, rng.randbytes)
    public = initiator.generate()
    ciphertext, secret = responder.encapsulate(public)
    tampered = bytearray(ciphertext)
    tampered[40] ^= 1  # inside the ML-KEM part: implicit rejection, another secret
    assert initiator.decapsulate(bytes(tampered)) != secret
    other = create_kem(b"X1M1", SHA256, rng.randbytes)
    other_public = other.generate()
    _, secret256 = create_kem(b"X1M1", SHA256, rng.randbytes).encapsulate(other_public)
    assert len(secret256) == 32


def test_ml_kem_512_matches_the_fips_203_sizes_and_openssl_ml_kem_768() -> None:
    """pqcrypto (our ML-KEM-512) and OpenSSL interoperate at ML-KEM-768: same FIPS 203."""
    from cryptography.hazmat.primitives.asymmetric import mlkem
    from pqcrypto.kem import ml_kem_512, ml_kem_768

    assert (ml_kem_512.PUBLIC_KEY_SIZE, ml_kem_512.CIPHERTEXT_SIZE) == (800, 768)
    private = mlkem.MLKEM768PrivateKey.generate()
    ciphertext, secret = ml_kem_768.encaps(private.public_key().public_bytes_raw())
    assert private.decapsulate(ciphertext) == secret
    public, secret_key = ml_kem_768.keygen()
    secret2, ciphertext2 = mlkem.MLKEM768PublicKey.from_public_bytes(public).encapsulate()
    assert ml_kem_768.decaps(secret_key, ciphertext2) == secret2


def test_bad_public_key_and_ciphertext_lengths_are_protocol_errors() -> None:
    rng = random.Random(5)
    responder = create_kem(b"X3M3", SHA512, rng.randbytes)
    with pytest.raises(ZrtpProtocolError):
        responder.encapsulate(b"\x00" * 100)
    initiator = create_kem(b"X1M1", SHA512, rng.randbytes)
    initiator.generate()
    with pytest.raises(ZrtpProtocolError):
        initiator.decapsulate(b"\x01" * 804)


@pytest.mark.parametrize("name", HYBRIDS)
@pytest.mark.parametrize("initiator", ["a", "b"])
def test_kem_mode_secures_in_both_roles_with_s512(name: str, initiator: str) -> None:
    config = {"key_agreement_types": (name.encode(), b"X255"), "hash_types": (b"S256", b"S512")}
    roles = (
        {"a": "initiator", "b": "responder"}
        if initiator == "a"
        else {
            "a": "responder",
            "b": "initiator",
        }
    )
    a, b = pair(seed=11, a={**config, "role": roles["a"]}, b={**config, "role": roles["b"]})
    net = Network(a, b, seed=11)
    net.run(until=30)
    assert_agree(net)
    sa, sb = net.secured()
    assert sa.role == roles["a"]
    assert sa.key_agreement == sb.key_agreement == name
    assert sa.hash == "S512"  # the strongest common hash, as bzrtp picks it


def test_k448_mlk1024_commit_and_dhpart1_travel_as_fragments() -> None:
    net = kem_pair("X3M3", seed=2)
    net.run(until=30)
    assert_agree(net)
    fragments = [p.Fragment.parse(d) for _, d in net.wire if p.is_zrtp_fragment(d)]
    assert fragments, "the 1740-octet Commit must be fragmented at the 1452 MTU"
    assert all(len(f.serialize()) <= 1452 for f in fragments)
    whole = [d for _, d in net.wire if p.is_zrtp_packet(d)]
    assert all(len(d) <= 1452 for d in whole)
    # X25519+ML-KEM-512 fits one packet: no fragments at all.
    small = kem_pair("X1M1", seed=2)
    small.run(until=30)
    assert_agree(small)
    assert not [d for _, d in small.wire if p.is_zrtp_fragment(d)]


@pytest.mark.parametrize("seed", range(6))
def test_fragmented_exchange_survives_loss_reordering_and_duplication(seed: int) -> None:
    config = {"key_agreement_types": (b"X3M3",), "hash_types": (b"S512",), "mtu": 600}
    a, b = pair(seed=seed, a=dict(config), b=dict(config))
    net = Network(a, b, loss=0.2, duplicate=0.2, reorder=0.3, seed=seed)
    net.run(until=60)
    assert_agree(net)
    assert any(p.is_zrtp_fragment(d) for _, d in net.wire)


def test_dh_only_peer_still_negotiates_dh_with_the_pq_configuration() -> None:
    pq = {"key_agreement_types": (b"X1M1", b"X255", b"DH3k"), "hash_types": (b"S256", b"S512")}
    a, b = pair(seed=4, a=pq, b={"key_agreement_types": (b"X255", b"DH3k")})
    net = Network(a, b)
    net.run(until=30)
    assert_agree(net)
    assert net.secured()[0].key_agreement == "X255"


def test_mixing_rule_of_the_draft() -> None:
    # one first choice DH, the other KEM: the DH
    assert choose_key_agreement((b"X255", b"X1M1"), (b"X1M1", b"X255")) == b"X255"
    # both first choices KEM: the faster KEM
    assert choose_key_agreement((b"X3M3", b"X1M1"), (b"X1M1", b"X3M3")) == b"X1M1"
    assert choose_key_agreement((b"X1M1", b"X255"), (b"X1M1", b"DH3k")) == b"X1M1"
    # both DH: the DH rule, KEMs play no part (the draft's second example)
    alice = (b"X448", b"X255", b"X1M1", b"DH3k")
    assert choose_key_agreement(alice, (b"DH3k", b"X1M1", b"X255")) == b"X255"


def test_pq_required_refuses_a_dh_only_peer_on_both_sides() -> None:
    pq = {"key_agreement_types": (b"X1M1",), "pq_required": True}
    dh_only = {"key_agreement_types": (b"X255", b"DH3k")}
    for initiator_config, other in ((pq, dh_only), (dh_only, pq)):
        a, b = pair(seed=9, a=dict(initiator_config), b=dict(other))
        net = Network(a, b)
        net.run(until=30)
        fa, fb = net.failures()
        assert fa or fb, "a DH-only peer must not secure a PQ-required call"
        assert not [e for e in net.events_a + net.events_b if type(e).__name__ == "Secured"]
    with pytest.raises(ValueError):
        ZrtpConfiguration(zid=b"z" * 12, key_agreement_types=(b"X255",), pq_required=True)


def test_commit_with_a_truncated_kem_key_fails_cleanly() -> None:
    """A Commit whose KEM key has the wrong length ends the exchange with an Error,
    never an exception out of the engine."""

    def truncate(direction: str, data: bytes) -> bytes | None:
        if not p.is_zrtp_packet(data):
            return data
        packet = p.ZrtpPacket.parse(data)
        message = packet.message
        if isinstance(message, p.Commit) and message.kem_public_key is not None:
            from dataclasses import replace

            bad = replace(message, kem_public_key=message.kem_public_key[:-4])
            return p.ZrtpPacket(packet.sequence, packet.ssrc, bad).serialize()
        return data

    net = kem_pair("X1M1", seed=21)
    net.tamper = truncate
    net.run(until=30)
    fa, fb = net.failures()
    assert isinstance((fa + fb)[0], HandshakeFailed)


def test_reassembler_is_bounded_and_ignores_duplicates_and_conflicts() -> None:
    message = bytes(range(256)) * 6  # 1536 octets
    frags = p.fragment_message(
        message, ssrc=1, message_id=7, sequences=iter(range(100)).__next__, mtu=600
    )
    assert len(frags) == 3
    r = Reassembler(slots=2)
    assert r.add(frags[2]) is None
    assert r.add(frags[2]) is None and r.stats["fragment_duplicate"] == 1
    conflicting = p.Fragment(9, 1, 7, frags[0].total_words, 0, b"\xff" * len(frags[0].data))
    assert r.add(frags[0]) is None
    assert r.add(conflicting) is None and r.stats["fragment_conflict"] == 1
    assert r.add(frags[1]) == message
    assert r.buffered_octets == 0
    # many message ids never hold more than `slots` buffers
    for message_id in range(50):
        r.add(p.Fragment(message_id, 1, message_id, 500, 0, b"\x00" * 8))
    assert r.buffered_octets <= 2 * 500 * 4
    assert r.add(p.Fragment(1, 1, 99, 0xFFFF, 0, b"\x00" * 8)) is None
    assert r.stats["fragment_too_big"] == 1


def test_hostile_fragments_never_raise() -> None:
    a, _ = pair(seed=3, a={"key_agreement_types": (b"X3M3",)})
    a.start(0.0)
    rng = random.Random(1)
    for _ in range(2000):
        size = rng.randrange(0, 80)
        body = bytearray(rng.randbytes(size))
        data = bytes([0x11, 0]) + rng.randbytes(2) + b"ZRTP" + bytes(body)
        if rng.random() < 0.5 and len(data) >= 24:
            data = data[:-4] + p.crc32c_of(data[:-4]).to_bytes(4, "little")
        a.receive_datagram(data, 0.0)
    assert a.stats["dropped_bad_fragment"] > 0


def test_ml_kem_512_secret_key_never_shows_in_a_repr() -> None:
    small = K255MLK512(SHA512, random.Random(1).randbytes)
    small.generate()
    assert small._secrets is not None
    secret = small._secrets[1]
    assert repr(secret) == "<secret>"
    assert K448MLK1024.name == b"X3M3"
