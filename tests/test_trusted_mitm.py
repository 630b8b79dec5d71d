"""Trusted MiTM in the engine: PBX enrollment (§7.3.1) and SASrelay/RelayACK (§5.13, §7.3).

A "PBX" here is our engine with ``mitm=True``; a "phone" is our engine as an
endpoint. Everything runs in memory with an explicit clock (tests/zrtp_harness).
"""

from __future__ import annotations

import os

import pytest

from pbx_zrtp.cache.base import CacheKey
from pbx_zrtp.cache.memory import MemorySecretCache
from pbx_zrtp.zrtp import packets as p
from pbx_zrtp.zrtp.connection import State, ZrtpConnection
from pbx_zrtp.zrtp.events import (
    Event,
    SasRelayAcknowledged,
    SasRelayed,
    SasRelayUnacknowledged,
    Secured,
)
from pbx_zrtp.zrtp.sas import render_sas
from tests.zrtp_harness import Network, make_connection

PBX_ZID = bytes.fromhex("0b0b0b0b0b0b0b0b0b0b0b0b")
PHONE_ZID = bytes.fromhex("a1a1a1a1a1a1a1a1a1a1a1a1")


def _of(events: list[Event], kind: type[Event]) -> list[Event]:
    return [e for e in events if isinstance(e, kind)]


def call(
    pbx_cache: MemorySecretCache,
    phone_cache: MemorySecretCache,
    *,
    seed: int,
    enrollment: bool = False,
    phone_mitm: bool = False,
    pbx_mitm: bool = True,
    sas_types: tuple[bytes, ...] = (b"B32 ", b"B256"),
) -> tuple[Network, ZrtpConnection, ZrtpConnection]:
    pbx = make_connection(
        PBX_ZID,
        seed=seed,
        ssrc=0x1111,
        cache=pbx_cache,
        mitm=pbx_mitm,
        enrollment=enrollment,
        sas_types=sas_types,
    )
    phone = make_connection(
        PHONE_ZID, seed=seed + 1, ssrc=0x2222, cache=phone_cache, mitm=phone_mitm
    )
    net = Network(pbx, phone, seed=seed)
    net.run()
    net.secured()
    return net, pbx, phone


def enroll_both(pbx_cache: MemorySecretCache, phone_cache: MemorySecretCache) -> None:
    net, pbx, phone = call(pbx_cache, phone_cache, seed=100, enrollment=True)
    phone_secured = _of(net.events_b, Secured)[0]
    assert isinstance(phone_secured, Secured)
    assert phone_secured.peer_enrollment  # the phone's UI would now ask the user
    assert not phone_secured.peer_allows_clear  # E implies not A (§7.3.1)
    pbx.enroll()
    phone.enroll()


def test_enrollment_needs_both_sides_and_then_the_pbxsecret_matches() -> None:
    pbx_cache, phone_cache = MemorySecretCache(), MemorySecretCache()
    enroll_both(pbx_cache, phone_cache)
    pbx_entry = pbx_cache.lookup(CacheKey(PBX_ZID, PHONE_ZID))
    phone_entry = phone_cache.lookup(CacheKey(PHONE_ZID, PBX_ZID))
    assert pbx_entry.pbx_secret is not None and pbx_entry.pbx_secret == phone_entry.pbx_secret
    net, pbx, phone = call(pbx_cache, phone_cache, seed=7)
    pbx_secured, phone_secured = net.secured()
    assert pbx_secured.pbx_secret_matched and phone_secured.pbx_secret_matched
    assert pbx.pbx_secret_matched and phone.pbx_secret_matched


def test_a_phone_that_does_not_consent_is_not_enrolled() -> None:
    pbx_cache, phone_cache = MemorySecretCache(), MemorySecretCache()
    net, pbx, _phone = call(pbx_cache, phone_cache, seed=3, enrollment=True)
    pbx.enroll()  # the PBX keeps its copy; that does no harm (§7.3.1)
    assert phone_cache.lookup(CacheKey(PHONE_ZID, PBX_ZID)).pbx_secret is None
    net, _, _ = call(pbx_cache, phone_cache, seed=4)
    pbx_secured, phone_secured = net.secured()
    assert not pbx_secured.pbx_secret_matched and not phone_secured.pbx_secret_matched


def test_enrollment_is_refused_without_the_e_flag_and_from_a_non_mitm() -> None:
    pbx_cache, phone_cache = MemorySecretCache(), MemorySecretCache()
    _, pbx, phone = call(pbx_cache, phone_cache, seed=5)  # no E flag sent
    with pytest.raises(ValueError, match="E flag"):
        phone.enroll()
    with pytest.raises(ValueError, match="E flag"):
        pbx.enroll()
    assert phone_cache.lookup(CacheKey(PHONE_ZID, PBX_ZID)).pbx_secret is None


def test_unenroll_erases_the_pbxsecret() -> None:
    pbx_cache, phone_cache = MemorySecretCache(), MemorySecretCache()
    enroll_both(pbx_cache, phone_cache)
    _, _, phone = call(pbx_cache, phone_cache, seed=9)
    phone.unenroll()
    assert phone_cache.lookup(CacheKey(PHONE_ZID, PBX_ZID)).pbx_secret is None
    net, _, _ = call(pbx_cache, phone_cache, seed=10)
    assert not any(s.pbx_secret_matched for s in net.secured())


def relay(net: Network, pbx: ZrtpConnection, sas_hash: bytes | None, sas_type: str) -> None:
    pbx.send_sas_relay(net.now, sas_hash=sas_hash, sas_type=sas_type, far_end_verified=True)
    net.settle(net.now + 30)


def test_enrolled_phone_renders_the_relayed_sas_and_acknowledges() -> None:
    pbx_cache, phone_cache = MemorySecretCache(), MemorySecretCache()
    enroll_both(pbx_cache, phone_cache)
    net, pbx, phone = call(pbx_cache, phone_cache, seed=11)
    far_end = os.urandom(32)
    relay(net, pbx, far_end, "B256")
    (shown,) = _of(net.events_b, SasRelayed)
    assert isinstance(shown, SasRelayed)
    assert shown.relayed and shown.sas == render_sas(b"B256", far_end[:4])
    assert shown.sas_type == "B256" and shown.far_end_verified
    assert _of(net.events_a, SasRelayAcknowledged)
    assert pbx.get_timer() is None  # retransmission stopped by RelayACK
    assert phone.state is State.SECURE and pbx.state is State.SECURE


def test_unenrolled_phone_ignores_a_relayed_sashash_but_acknowledges() -> None:
    pbx_cache, phone_cache = MemorySecretCache(), MemorySecretCache()
    net, pbx, phone = call(pbx_cache, phone_cache, seed=12)
    own_sas = net.secured()[1].sas
    relay(net, pbx, os.urandom(32), "B32")
    (shown,) = _of(net.events_b, SasRelayed)
    assert isinstance(shown, SasRelayed)
    assert not shown.relayed and shown.sas == own_sas
    assert "not enrolled" in shown.ignored_reason
    assert phone.stats["untrusted_sasrelay"] == 1
    assert _of(net.events_a, SasRelayAcknowledged)


def test_empty_sasrelay_only_changes_the_rendering_scheme() -> None:
    pbx_cache, phone_cache = MemorySecretCache(), MemorySecretCache()
    net, pbx, _phone = call(pbx_cache, phone_cache, seed=13, sas_types=(b"B32 ",))
    phone_secured = net.secured()[1]
    assert phone_secured.sas_type == "B32"
    relay(net, pbx, None, "B256")
    (shown,) = _of(net.events_b, SasRelayed)
    assert isinstance(shown, SasRelayed)
    assert not shown.relayed and shown.sas_type == "B256"
    assert shown.sas == render_sas(b"B256", phone_secured.sas_hash[:4])


def test_forged_sasrelay_is_dropped_without_relayack() -> None:
    pbx_cache, phone_cache = MemorySecretCache(), MemorySecretCache()
    enroll_both(pbx_cache, phone_cache)
    net, pbx, phone = call(pbx_cache, phone_cache, seed=14)

    def forge(direction: str, data: bytes) -> bytes | None:
        packet = p.ZrtpPacket.parse(data)
        if isinstance(packet.message, p.SasRelay):
            flipped = bytes([packet.message.encrypted[9] ^ 1])
            encrypted = packet.message.encrypted[:9] + flipped + packet.message.encrypted[10:]
            forged = p.SasRelay(packet.message.mac, packet.message.cfb_iv, encrypted)
            return p.ZrtpPacket(packet.sequence, packet.ssrc, forged).serialize()
        return data

    net.tamper = forge
    relay(net, pbx, os.urandom(32), "B32")
    assert not _of(net.events_b, SasRelayed)
    assert phone.stats["bad_sasrelay_mac"] >= 1
    assert _of(net.events_a, SasRelayUnacknowledged)  # every copy was forged
    assert phone.state is State.SECURE and pbx.state is State.SECURE


def test_lost_relayacks_are_retransmitted_and_a_silent_phone_is_reported() -> None:
    pbx_cache, phone_cache = MemorySecretCache(), MemorySecretCache()
    enroll_both(pbx_cache, phone_cache)
    net, pbx, _ = call(pbx_cache, phone_cache, seed=15)
    lost = {"acks": 0}

    def drop_two_acks(direction: str, data: bytes) -> bytes | None:
        if isinstance(p.ZrtpPacket.parse(data).message, p.RelayAck) and lost["acks"] < 2:
            lost["acks"] += 1
            return None
        return data

    net.tamper = drop_two_acks
    relay(net, pbx, os.urandom(32), "B32")
    assert len(_of(net.events_b, SasRelayed)) == 1  # the repeats were only re-acknowledged
    assert _of(net.events_a, SasRelayAcknowledged) and lost["acks"] == 2

    net, pbx, _phone = call(pbx_cache, phone_cache, seed=16)
    net.tamper = lambda direction, data: None if direction == "a->b" else data
    relay(net, pbx, os.urandom(32), "B32")
    (_gave_up,) = _of(net.events_a, SasRelayUnacknowledged)
    assert pbx.state is State.SECURE and pbx.get_timer() is None


def test_only_a_mitm_sends_sasrelay_and_only_when_secure() -> None:
    pbx_cache, phone_cache = MemorySecretCache(), MemorySecretCache()
    net, _pbx, phone = call(pbx_cache, phone_cache, seed=17)
    with pytest.raises(ValueError, match="MiTM"):
        phone.send_sas_relay(net.now, sas_hash=None, sas_type="B32", far_end_verified=False)
    fresh = make_connection(PBX_ZID, seed=1, ssrc=1, mitm=True)
    with pytest.raises(ValueError, match="secure"):
        fresh.send_sas_relay(0.0, sas_hash=None, sas_type="B32", far_end_verified=False)


def test_enrollment_can_be_offered_until_our_confirm_is_sent() -> None:
    # FreeSWITCH names a pre-bound port's call late: ZRTP may already be running.
    pbx = make_connection(PBX_ZID, seed=20, ssrc=0x1111, cache=MemorySecretCache(), mitm=True)
    phone = make_connection(PHONE_ZID, seed=21, ssrc=0x2222, cache=MemorySecretCache())
    pbx.start(0.0)
    pbx.offer_enrollment()  # still in discovery
    net = Network(pbx, phone, seed=20)
    net.run()
    assert net.secured()[1].peer_enrollment
    with pytest.raises(ValueError, match="too late"):
        pbx.offer_enrollment()
    with pytest.raises(ValueError, match="MiTM"):
        phone.offer_enrollment()
