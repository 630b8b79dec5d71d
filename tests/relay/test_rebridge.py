"""Call changes (issue 15, item 4): the SAS relay follows the PBX's bridges.

A transfer, a pickup or a park and retrieve moves a leg into another bridge; the
adapter tells the relay with ``rebridge``. The phone that was shown the old far
end's SAS must never go on showing it: it gets the new far end's SAS once the new
bridge's two legs are secure, or its own leg's SAS back when there is none. The
phones are our engine (enrolled with the relay where the test says), each leg's PBX
side an RTP echo, as in ``test_trusted_mitm.py``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from pbx_zrtp.cache.memory import MemorySecretCache
from pbx_zrtp.calls import Policy
from pbx_zrtp.relay.core import Relay
from pbx_zrtp.relay.fastpath import available
from tests.relay.helpers import EchoPbx, Recorder, create_call, make_relay
from tests.relay.test_trusted_mitm import Phone, enroll

ALICE = bytes.fromhex("a11ce0000000000000000011")
BOB = bytes.fromhex("b0b000000000000000000012")
CAROL = bytes.fromhex("ca7010000000000000000013")
#: How long a phone stays on the call after its first SASrelay: an upper bound for
#: the test's own steps (each waits for what it needs, not for this).
STAY = 8.0


class Legs:
    """Three legs on the relay, each with an echo PBX; phones join with ``dial``."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.tag = os.urandom(3).hex()
        self.ports: dict[str, int] = {}
        self.pbxs: list[EchoPbx] = []

    async def leg(self, name: str, bridge: str) -> str:
        call_id = f"{self.tag}-{name}"
        self.ports[call_id] = await create_call(self.relay, call_id, Policy.REQUIRED, bridge=bridge)
        pbx = EchoPbx(self.ports[call_id])
        await pbx.start()
        self.pbxs.append(pbx)
        return call_id

    def dial(self, phone: Phone, call_id: str, **options: Any) -> asyncio.Future[dict[str, Any]]:
        return asyncio.ensure_future(phone.call(self.ports[call_id], timeout=20, **options))

    def close(self) -> None:
        for call_id in self.ports:
            if any(r.call_id == call_id for r in self.relay.calls()):
                self.relay.delete(call_id)
        for pbx in self.pbxs:
            pbx.close()


@pytest.mark.parametrize(
    "fastpath",
    [False, pytest.param(True, marks=pytest.mark.skipif(bool(available()), reason="no fast path"))],
)
def test_a_transferred_enrolled_phone_is_shown_the_new_far_ends_sas(fastpath: bool) -> None:
    """Bob (enrolled) talks to Alice and reads her SAS; Alice transfers him to Carol
    (blind or attended, the PBX's bridge events end the same way): Alice's leg leaves,
    Bob's and Carol's legs share a new bridge. Bob's phone then shows Carol's SAS,
    and Alice's leg no longer claims an end-to-end SAS."""

    async def scenario() -> None:
        relay = make_relay(cache=MemorySecretCache(), fastpath=fastpath)
        await relay.start()
        recorder = Recorder(relay)
        alice, bob, carol = Phone(ALICE), Phone(BOB), Phone(CAROL)
        await enroll(relay, recorder, bob)
        legs = Legs(relay)
        try:
            a = await legs.leg("alice", "linkedid-1")
            b = await legs.leg("bob", "linkedid-1")
            c = await legs.leg("carol", "linkedid-2")  # Alice's consultation call
            calls = [
                legs.dial(alice, a, linger=STAY),
                legs.dial(bob, b, sas_relay_wait=5, linger=STAY),
                legs.dial(carol, c, linger=STAY),
            ]
            await recorder.wait_for(
                lambda: (
                    relay.get(b).sas_relay == "target:acknowledged"
                    and relay.get(c).state == "secure"
                )
            )
            assert relay.get(b).displayed_sas == relay.get(a).sas != relay.get(b).sas
            # The transfer: Alice's leg leaves the bridge, Bob's joins Carol's.
            relay.rebridge(a, "")
            relay.rebridge(b, "bridge-2")
            relay.rebridge(c, "bridge-2")
            await recorder.wait_for(lambda: relay.get(b).sas_relay == "target:acknowledged")
            rb, rc, ra = relay.get(b), relay.get(c), relay.get(a)
            assert rb.displayed_sas == rc.sas and rb.sas_scope == "end-to-end", rb
            assert rc.sas_relay == "source:acknowledged" and rc.sas_scope == "end-to-end", rc
            assert ra.sas_relay == "" and ra.sas_scope == "pbx-leg", ra
            assert ra.displayed_sas == ra.sas and rb.bridge == rc.bridge == "bridge-2"
            results = await asyncio.gather(*calls)
            # What Bob's phone shows at the end: Carol's SAS, relayed by the trusted PBX.
            assert results[1]["pbx_trusted"] and results[1]["sas_relay"]["relayed"]
            assert results[1]["displayed_sas"] == results[2]["sas"] != results[0]["sas"]
            assert all(r["ok"] for r in results)
        finally:
            legs.close()
            await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 90))


def test_when_the_far_end_leaves_the_phone_gets_its_own_sas_back() -> None:
    """Bob reads Alice's relayed SAS; Alice hangs up (a blind transfer's transferer,
    a parked call's far end). Before the fix Bob's phone went on showing Alice's SAS
    and his report still named her SAS as the one he reads."""

    async def scenario() -> None:
        relay = make_relay(cache=MemorySecretCache())
        await relay.start()
        recorder = Recorder(relay)
        alice, bob = Phone(ALICE), Phone(BOB)
        await enroll(relay, recorder, bob)
        legs = Legs(relay)
        try:
            a = await legs.leg("alice", "linkedid-1")
            b = await legs.leg("bob", "linkedid-1")
            first = legs.dial(alice, a)
            second = legs.dial(bob, b, sas_relay_wait=5, linger=STAY)
            await recorder.wait_for(lambda: relay.get(b).sas_relay == "target:acknowledged")
            alice_sas = relay.get(a).sas
            assert relay.get(b).displayed_sas == alice_sas
            relay.delete(a)
            report = relay.get(b)
            assert report.sas_relay == "" and report.sas_scope == "pbx-leg", report
            assert report.displayed_sas == report.sas != alice_sas
            bob_result = await second
            assert bob_result["sas_relay"]["relayed"]  # from the trusted PBX: rendered
            assert bob_result["displayed_sas"] == bob_result["sas"] != alice_sas
            await first
        finally:
            legs.close()
            await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 90))


def test_a_third_leg_in_a_bridge_undoes_the_link_and_a_rebridge_makes_a_new_one() -> None:
    """Unenrolled phones: linked as "none" (each reads its own SAS). A third leg with
    the same bridge id (a conference, a blind transfer's new leg before the old one
    left) undoes the link; moving it and one old leg into their own bridge links
    those two."""

    async def scenario() -> None:
        relay = make_relay()
        await relay.start()
        recorder = Recorder(relay)
        legs = Legs(relay)
        try:
            a = await legs.leg("alice", "linkedid-1")
            b = await legs.leg("bob", "linkedid-1")
            calls = [
                legs.dial(Phone(ALICE), a, linger=STAY),
                legs.dial(Phone(BOB), b, linger=STAY),
            ]
            await recorder.wait_for(
                lambda: relay.get(a).sas_relay == relay.get(b).sas_relay == "none"
            )
            c = await legs.leg("carol", "linkedid-1")
            assert relay.get(a).sas_relay == relay.get(b).sas_relay == ""
            calls.append(legs.dial(Phone(CAROL), c, linger=STAY))
            await recorder.wait_for(lambda: relay.get(c).state == "secure")
            assert [relay.get(x).sas_relay for x in (a, b, c)] == ["", "", ""]
            relay.rebridge(b, "bridge-9")
            assert relay.rebridge(c, "bridge-9").sas_relay == "none"
            assert relay.get(b).sas_relay == "none" and relay.get(a).sas_relay == ""
            assert relay.rebridge(c, "bridge-9").sas_relay == "none"  # the same: no change
            for result in await asyncio.gather(*calls):
                assert result["ok"] and result["sas_relay"] is None  # no SASrelay sent
        finally:
            legs.close()
            await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 90))
