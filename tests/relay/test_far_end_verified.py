"""What the relay passes on as "far end verified" in SASrelay (issue 11, item 3).

The relay relays the far leg's ``previously_verified`` (6189bis: a False asks the
phone to show the SAS conspicuously). It must follow the engine's rule: a V flag
counts only when a retained secret matched in that leg's exchange.
"""

from __future__ import annotations

import asyncio

from pbx_zrtp.cache.base import CacheKey
from pbx_zrtp.cache.memory import MemorySecretCache
from pbx_zrtp.relay.mirror import Policy
from tests.relay.helpers import EchoPbx, Recorder, create_call, make_relay
from tests.relay.test_trusted_mitm import ALICE, BOB, Phone, bridged_call, enroll


def test_a_v_flag_without_a_matching_secret_is_not_relayed_as_verified() -> None:
    async def scenario() -> None:
        cache = MemorySecretCache()
        relay = make_relay(cache=cache)
        await relay.start()
        recorder = Recorder(relay)
        relay_zid = relay.settings.zrtp("", "").zid
        alice, bob = Phone(ALICE), Phone(BOB)
        await enroll(relay, recorder, alice)  # Alice's leg will show Bob's side's SAS
        # Both ends of Bob's leg hold a V flag but no retained secret (expired, or
        # erased by an expiration 0): nothing in this exchange backs it.
        cache.set_sas_verified(CacheKey(relay_zid, BOB), True)
        bob.cache.set_sas_verified(CacheKey(BOB, relay_zid), True)
        results, reports = await bridged_call(relay, recorder, alice, bob, relay_wait=5)
        shown = results[0]["sas_relay"]
        assert shown is not None and shown["relayed"]
        assert shown["far_end_verified"] is False  # Alice is asked to compare the SAS
        assert results[1]["previously_verified"] is False
        assert not reports[1].previously_verified and not reports[1].cache_mismatch
        assert not cache.lookup(CacheKey(relay_zid, BOB)).sas_verified  # void flag cleared
        await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_continuity_is_relayed_as_verified() -> None:
    async def scenario() -> None:
        relay = make_relay()
        await relay.start()
        recorder = Recorder(relay)
        alice, bob = Phone(ALICE), Phone(BOB)
        await enroll(relay, recorder, alice)
        # Bob calls once and both ends verify the SAS: rs1 and V on both sides.
        port = await create_call(relay, "bob-first", Policy.REQUIRED)
        pbx = EchoPbx(port)
        await pbx.start()
        try:
            first = await bob.call(port, mark_verified=True)
            assert first["ok"]
            await recorder.wait_for(lambda: relay.get("bob-first").state == "secure")
            assert relay.verify("bob-first").sas_verified
        finally:
            relay.delete("bob-first")
            pbx.close()
        results, reports = await bridged_call(relay, recorder, alice, bob, relay_wait=5)
        assert results[1]["previously_verified"] is True and reports[1].previously_verified
        shown = results[0]["sas_relay"]
        assert shown is not None and shown["relayed"] and shown["far_end_verified"] is True
        await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
