"""Withdrawing the SAS-verified mark keeps key continuity (issue 13, item 5).

"Unverify" (an admin's `zrtp unverify`, the relay's ``verify --unverify``, the
engine's ``set_sas_verified(False)``) clears the V flag only (RFC 6189 §7.1). It
must not erase the retained secret: the phone still holds it, so the next call
would show the phone a cache mismatch, a false MiTM alarm. Engine and cache here
(two engines in memory); through the relay in tests/relay/test_unverify_relay.py.
"""

from __future__ import annotations

from pbx_zrtp.cache.base import CacheKey
from pbx_zrtp.cache.memory import MemorySecretCache
from pbx_zrtp.zrtp.connection import ZrtpConnection
from tests.zrtp_harness import Network, make_connection

ZID_PHONE = bytes.fromhex("a1a1a1a1a1a1a1a1a1a1a1a1")
ZID_PBX = bytes.fromhex("b2b2b2b2b2b2b2b2b2b2b2b2")


def _call(
    seed: int, phone_cache: MemorySecretCache, pbx_cache: MemorySecretCache
) -> tuple[Network, ZrtpConnection, ZrtpConnection]:
    phone = make_connection(ZID_PHONE, seed=seed, ssrc=0x1111, cache=phone_cache)
    pbx = make_connection(ZID_PBX, seed=seed + 1000, ssrc=0x2222, cache=pbx_cache)
    net = Network(phone, pbx)
    net.run()
    return net, phone, pbx


def test_unverify_clears_the_flag_and_keeps_the_retained_secret() -> None:
    phone_cache, pbx_cache = MemorySecretCache(), MemorySecretCache()
    _, phone, pbx = _call(1, phone_cache, pbx_cache)
    phone.set_sas_verified(True)
    pbx.set_sas_verified(True)
    key = CacheKey(ZID_PBX, ZID_PHONE, "", "")
    secret = pbx_cache.lookup(key).rs1
    assert secret is not None
    assert pbx_cache.lookup(key).sas_verified

    pbx.set_sas_verified(False)  # the admin withdraws the mark
    entry = pbx_cache.lookup(key)
    assert not entry.sas_verified
    kept = entry.rs1 == secret  # (never let an assertion print a secret)
    assert kept, "the retained secret was changed or erased"

    # Next call: continuity holds on both sides, nobody claims "previously verified".
    net, _, _ = _call(2, phone_cache, pbx_cache)
    on_phone, on_pbx = net.secured()
    assert not on_phone.cache_mismatch and not on_pbx.cache_mismatch
    assert not on_phone.previously_verified and not on_pbx.previously_verified

    # Verifying again later restores it for the call after.
    _, phone, pbx = _call(3, phone_cache, pbx_cache)
    pbx.set_sas_verified(True)
    net, _, _ = _call(4, phone_cache, pbx_cache)
    on_phone, on_pbx = net.secured()
    assert on_phone.previously_verified and on_pbx.previously_verified
    assert not on_phone.cache_mismatch and not on_pbx.cache_mismatch


def test_unverify_keeps_the_pbxsecret_of_an_enrolled_phone() -> None:
    """Clearing the V flag is not unenrolling: the trusted-MiTM key stays."""
    cache = MemorySecretCache()
    key = CacheKey(ZID_PBX, ZID_PHONE, "", "")
    cache.update_retained_secret(key, b"\x01" * 32, 3600, keep_previous=False)
    cache.store_pbx_secret(key, b"\x02" * 32, 3600)
    cache.set_sas_verified(key, True)
    phone_cache = MemorySecretCache()
    phone_cache.update_retained_secret(
        CacheKey(ZID_PHONE, ZID_PBX, "", ""), b"\x01" * 32, 3600, keep_previous=False
    )
    pbx = make_connection(ZID_PBX, seed=5, ssrc=0x2222, cache=cache)
    phone = make_connection(ZID_PHONE, seed=6, ssrc=0x1111, cache=phone_cache)
    net = Network(phone, pbx)
    net.run()
    assert not net.secured()[1].cache_mismatch
    pbx.set_sas_verified(False)
    entry = cache.lookup(key)
    assert not entry.sas_verified
    kept = entry.pbx_secret == b"\x02" * 32 and entry.rs1 is not None
    assert kept, "unverify erased the pbxsecret or the retained secret"
