"""Key continuity on pre-bound ports (FreeSWITCH): the retained secrets are keyed
with the call's URIs whatever came first, the phone's Hello or the adapter's name.

A phone's ZRTP may reach a pre-bound port before the adapter names the call (an
unclaimed ``port-P`` call, adopted when named). The relay's secrets for the phone
must then still be looked up and written under the named call's key, as for a call
named first: otherwise continuity depends on a race, and the phone (which holds
rs1) sees a cache mismatch, a false MiTM alarm. Real sockets on loopback, our own
engine as the phone with its own cache; the store inline (memory) and on worker
threads (SQLite), the fast path off and on.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from pbx_zrtp.cache.base import CacheKey, SecretCache
from pbx_zrtp.cache.memory import MemorySecretCache
from pbx_zrtp.cache.sqlite import SqliteSecretCache
from pbx_zrtp.calls import BadRequest, Policy
from pbx_zrtp.endpoint import EndpointOptions, run_endpoint
from pbx_zrtp.relay.core import Relay
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from tests.relay.helpers import (
    PHONE_HOST,
    RELAY_HOST,
    EchoPbx,
    Recorder,
    free_even_port,
    make_relay,
)

PHONE_ZID = b"P" * 12
SELF_URI = "sip:1000@pbx.example"  # what the adapter passes when it names the call
PEER_URI = "sip:1001@pbx.example"


def _phone(port: int, cache: MemorySecretCache, *, mark_verified: bool) -> Any:
    return asyncio.ensure_future(
        run_endpoint(
            ZrtpConfiguration(zid=PHONE_ZID, self_uri=PEER_URI, peer_uri=SELF_URI),
            EndpointOptions(
                bind=(PHONE_HOST, 0),
                peer=(RELAY_HOST, port),
                srtp_count=5,
                timeout=10,
                mark_verified=mark_verified,
            ),
            cache=cache,
        )
    )


async def _call(
    relay: Relay,
    recorder: Recorder,
    name: str,
    port: int,
    phone_cache: MemorySecretCache,
    *,
    hello_first: bool,
    mark_verified: bool,
) -> tuple[dict[str, Any], Any]:
    """One call on the pre-bound ``port``: named first, or named once the phone's
    Hello was accepted on the unclaimed port (the exchange is then adopted)."""
    if hello_first:
        task = _phone(port, phone_cache, mark_verified=mark_verified)
        mirror = next(m for m in relay.mirrors() if m.port == port)
        await recorder.wait_for(lambda: mirror.speaks_zrtp)
        assert relay.get(f"port-{port}").state == "pending"  # unclaimed, not secure yet
        await relay.create(name, port, Policy.REQUIRED, self_uri=SELF_URI, peer_uri=PEER_URI)
    else:
        await relay.create(name, port, Policy.REQUIRED, self_uri=SELF_URI, peer_uri=PEER_URI)
        task = _phone(port, phone_cache, mark_verified=mark_verified)
    phone = await task
    assert phone["ok"], phone
    await recorder.wait_for(lambda: relay.get(name).state == "secure")
    if mark_verified:
        relay.verify(name, True)  # the humans compared the SAS
    report = await relay.stored(name)
    relay.delete(name)
    return phone, report


@pytest.mark.parametrize("store", ["memory", "sqlite"])
@pytest.mark.parametrize("fastpath", [False, True], ids=["python", "fastpath"])
@pytest.mark.parametrize(
    "hello_first", [(False, True), (True, False)], ids=["second-hello-first", "first-hello-first"]
)
def test_continuity_does_not_depend_on_whether_the_hello_or_the_name_came_first(
    hello_first: tuple[bool, bool], fastpath: bool, store: str, tmp_path: Path
) -> None:
    async def scenario() -> None:
        cache: SecretCache = (
            MemorySecretCache() if store == "memory" else SqliteSecretCache(tmp_path / "r.db")
        )
        relay_zid = cache.local_zid(lambda: b"R" * 12)
        first_port, second_port = free_even_port(), free_even_port()
        relay = make_relay(prebind=(first_port, second_port), cache=cache, fastpath=fastpath)
        await relay.start()
        recorder = Recorder(relay)
        pbxs = [EchoPbx(first_port), EchoPbx(second_port)]
        for pbx in pbxs:
            await pbx.start()
        phone_cache = MemorySecretCache()
        try:
            phone, report = await _call(
                relay, recorder, "fs-1", first_port, phone_cache,
                hello_first=hello_first[0], mark_verified=True,
            )  # fmt: skip
            assert not phone["cache_mismatch"] and not report.cache_mismatch  # first contact
            assert not report.cache_error

            phone, report = await _call(
                relay, recorder, "fs-2", second_port, phone_cache,
                hello_first=hello_first[1], mark_verified=False,
            )  # fmt: skip
            # No false MiTM alarm: both sides found the rs1 of the first call.
            assert not phone["cache_mismatch"], "the phone saw a cache mismatch"
            assert not report.cache_mismatch and not report.cache_error
            assert phone["previously_verified"] is True
            assert report.previously_verified is True and report.sas_verified

            named = cache.lookup(CacheKey(relay_zid, PHONE_ZID, SELF_URI, PEER_URI))
            assert named.rs1 is not None and named.rs2 is not None and named.sas_verified
            unnamed = cache.lookup(CacheKey(relay_zid, PHONE_ZID, "", ""))
            assert unnamed.rs1 is None and not unnamed.sas_verified  # nothing under no name
        finally:
            for pbx in pbxs:
                pbx.close()
            await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_call_never_named_goes_on_without_continuity_and_writes_nothing() -> None:
    """A phone that holds rs1 on a pre-bound port whose call is never named: the
    relay cannot know the key, so after ``cache_timeout`` it goes on as on a store
    time-out (the phone sees the cache mismatch it saw before, when the relay
    looked under empty URIs and found nothing) and writes no secret: the named
    key's rs1 is untouched, nothing lands under empty URIs, and the next call
    still has continuity."""

    async def scenario() -> None:
        cache = MemorySecretCache()
        relay_zid = cache.local_zid(lambda: b"R" * 12)
        named_port, stray_port, next_port = free_even_port(), free_even_port(), free_even_port()
        # The unclaimed call's policy (required) gives it more than cache_timeout.
        relay = make_relay(
            prebind=(named_port, stray_port, next_port), cache=cache, required_timeout=8
        )
        await relay.start()
        recorder = Recorder(relay)
        pbxs = [EchoPbx(p) for p in (named_port, stray_port, next_port)]
        for pbx in pbxs:
            await pbx.start()
        phone_cache = MemorySecretCache()
        key = CacheKey(relay_zid, PHONE_ZID, SELF_URI, PEER_URI)
        try:
            await _call(
                relay, recorder, "fs-1", named_port, phone_cache,
                hello_first=False, mark_verified=True,
            )  # fmt: skip
            rs1 = cache.lookup(key).rs1
            assert rs1 is not None

            phone = await _phone(stray_port, phone_cache, mark_verified=False)
            assert phone["ok"]  # it still secures, without continuity
            report = relay.get(f"port-{stray_port}")
            assert report.state == "secure" and report.sas == phone["sas"]
            assert "not named" in report.cache_error
            with pytest.raises(BadRequest, match="not named"):  # no key to store a V flag
                relay.verify(f"port-{stray_port}", True)
            assert cache.lookup(key).rs1 == rs1
            assert cache.lookup(CacheKey(relay_zid, PHONE_ZID, "", "")).rs1 is None

            phone, report = await _call(
                relay, recorder, "fs-3", next_port, phone_cache,
                hello_first=True, mark_verified=False,
            )  # fmt: skip
            assert not phone["cache_mismatch"] and not report.cache_mismatch
            # The relay kept its V flag; the phone cleared its own on the mismatch it
            # saw (its rule), so neither says "previously verified" (both flags needed).
            assert cache.lookup(key).sas_verified
        finally:
            for pbx in pbxs:
                pbx.close()
            await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
