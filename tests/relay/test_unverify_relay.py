"""Unverify through the relay keeps key continuity (issue 13, item 5).

A phone (our endpoint, with its own retained-secret cache) calls through the
relay; both sides mark the SAS verified; the admin withdraws the relay's mark
(``verify --unverify``, an adapter's ``unverify``). On the next call neither side
may see a cache mismatch (the false MiTM alarm linphone showed), and neither
reports the call previously verified. Real sockets on loopback.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pbx_zrtp.cache.memory import MemorySecretCache
from pbx_zrtp.endpoint import EndpointOptions, run_endpoint
from pbx_zrtp.relay.core import Relay
from pbx_zrtp.relay.mirror import CallReport, Policy
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from tests.relay.helpers import (
    PHONE_HOST,
    RELAY_HOST,
    EchoPbx,
    Recorder,
    create_call,
    make_relay,
)

PHONE_ZID = b"U" * 12
URIS = {"self_uri": "sip:9400@pbx", "peer_uri": "sip:alice@lan"}


async def _call(
    relay: Relay, recorder: Recorder, phone_cache: MemorySecretCache, call_id: str, **opts: Any
) -> tuple[dict[str, Any], CallReport]:
    port = await create_call(relay, call_id, Policy.REQUIRED, **URIS)
    pbx = EchoPbx(port)
    await pbx.start()
    try:
        phone = await run_endpoint(
            ZrtpConfiguration(zid=PHONE_ZID, self_uri="sip:alice@lan", peer_uri="sip:9400@pbx"),
            EndpointOptions(bind=(PHONE_HOST, 0), peer=(RELAY_HOST, port), timeout=10, **opts),
            cache=phone_cache,
        )
        await recorder.wait_for(lambda: "secure" in recorder.states(call_id))
        return phone, relay.get(call_id)
    finally:
        pbx.close()


def test_unverify_through_the_relay_leaves_no_cache_mismatch_on_the_next_call() -> None:
    async def scenario() -> None:
        relay_cache, phone_cache = MemorySecretCache(), MemorySecretCache()
        relay = make_relay(cache=relay_cache)
        recorder = Recorder(relay)
        try:
            # Call 1: both compare the SAS and mark it.
            phone, report = await _call(relay, recorder, phone_cache, "c1", mark_verified=True)
            assert phone["ok"] and not phone["cache_mismatch"]
            assert relay.verify("c1").sas_verified
            assert relay.verify("c1", False).sas_verified is False  # the admin withdraws it
            relay.delete("c1")
            # Call 2: continuity intact on both sides; nobody says "previously verified".
            phone, report = await _call(relay, recorder, phone_cache, "c2")
            assert phone["ok"]
            assert not phone["cache_mismatch"] and not report.cache_mismatch
            assert not phone["previously_verified"] and not report.previously_verified
            relay.verify("c2")  # verified again: the call after says so on both sides
            relay.delete("c2")
            phone, report = await _call(relay, recorder, phone_cache, "c3")
            assert not phone["cache_mismatch"] and not report.cache_mismatch
            assert phone["previously_verified"] and report.previously_verified
            relay.delete("c3")
        finally:
            await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
