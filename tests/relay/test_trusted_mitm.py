"""The relay as a trusted MiTM (RFC 6189 §7.3): enrollment and SAS relay between bridged legs.

Phones are our engine (``run_endpoint``) with their own caches, on loopback;
each leg's PBX side is a plain RTP echo. Legs of one bridged call share a bridge id.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from pbx_zrtp.cache.memory import MemorySecretCache
from pbx_zrtp.calls import CallReport, Policy
from pbx_zrtp.endpoint import EndpointOptions, run_endpoint
from pbx_zrtp.relay.core import Relay, RelayError
from pbx_zrtp.relay.fastpath import available
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from tests.relay.helpers import PHONE_HOST, RELAY_HOST, EchoPbx, Recorder, create_call, make_relay

ALICE = bytes.fromhex("a11ce0000000000000000001")
BOB = bytes.fromhex("b0b000000000000000000002")


class Phone:
    def __init__(self, zid: bytes) -> None:
        self.zid = zid
        self.cache = MemorySecretCache()

    async def call(self, port: int, **options: Any) -> dict[str, Any]:
        defaults: dict[str, Any] = {"srtp_count": 5, "timeout": 10}
        return await run_endpoint(
            ZrtpConfiguration(zid=self.zid),
            EndpointOptions(
                bind=(PHONE_HOST, 0), peer=(RELAY_HOST, port), **{**defaults, **options}
            ),
            cache=self.cache,
        )


async def enroll(relay: Relay, recorder: Recorder, phone: Phone, *, consent: bool = True) -> None:
    """The "enroll this phone" extension: E flag, the user compares the SAS, both store."""
    call_id = f"enroll-{phone.zid.hex()}-{os.urandom(2).hex()}"
    port = await create_call(relay, call_id, Policy.REQUIRED, enroll=True)
    pbx = EchoPbx(port)
    await pbx.start()
    try:
        task = asyncio.ensure_future(phone.call(port, accept_enrollment=consent))
        await recorder.wait_for(lambda: "secure" in recorder.states(call_id))
        report = await relay.enroll(call_id)  # the user pressed 1: "the SAS matches"
        assert report.enrolled and report.sas_verified and report.enrollment_offered
        result = await task
        assert result["ok"] and result["pbx_enrollment_offered"]
        assert result["enrolled"] is consent
    finally:
        relay.delete(call_id)
        pbx.close()


async def bridged_call(
    relay: Relay, recorder: Recorder, a: Phone, b: Phone, *, relay_wait: float
) -> tuple[list[dict[str, Any]], list[CallReport]]:
    group = f"linkedid-{os.urandom(3).hex()}"
    legs = [f"{group}-a", f"{group}-b"]
    ports = [await create_call(relay, leg, Policy.REQUIRED, bridge=group) for leg in legs]
    pbxs = [EchoPbx(port) for port in ports]
    for pbx in pbxs:
        await pbx.start()
    try:
        results = await asyncio.gather(
            a.call(ports[0], sas_relay_wait=relay_wait),
            b.call(ports[1], sas_relay_wait=relay_wait),
        )

        def settled() -> bool:
            reports = [relay.get(leg) for leg in legs]
            return all(
                r.sas_relay == "none" or r.sas_relay.endswith("acknowledged") for r in reports
            )

        await recorder.wait_for(settled)
        return list(results), [relay.get(leg) for leg in legs]
    finally:
        for leg in legs:
            relay.delete(leg)
        for pbx in pbxs:
            pbx.close()


@pytest.mark.parametrize(
    "fastpath",
    [False, pytest.param(True, marks=pytest.mark.skipif(bool(available()), reason="no fast path"))],
)
def test_both_enrolled_read_the_same_sas_relayed_to_exactly_one(fastpath: bool) -> None:
    async def scenario() -> None:
        relay = make_relay(cache=MemorySecretCache(), fastpath=fastpath)
        await relay.start()
        recorder = Recorder(relay)
        alice, bob = Phone(ALICE), Phone(BOB)
        await enroll(relay, recorder, alice)
        await enroll(relay, recorder, bob)
        results, reports = await bridged_call(relay, recorder, alice, bob, relay_wait=5)
        assert all(r["ok"] and r["pbx_trusted"] for r in results)
        # The two humans read the same words...
        assert results[0]["displayed_sas"] == results[1]["displayed_sas"]
        # ...relayed to exactly one leg; the other got the "empty" SASrelay.
        relayed = [r for r in results if r["sas_relay"]["relayed"]]
        assert len(relayed) == 1
        source = next(r for r in results if not r["sas_relay"]["relayed"])
        assert relayed[0]["displayed_sas"] == source["sas"] != relayed[0]["sas"]
        assert source["sas_relay"]["ignored_reason"] == "no sashash relayed to us"
        assert {r.sas_relay for r in reports} == {"target:acknowledged", "source:acknowledged"}
        assert all(r.sas_scope == "end-to-end" and r.enrolled for r in reports)
        assert reports[0].displayed_sas == reports[1].displayed_sas == source["sas"]
        await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_unenrolled_legs_keep_their_own_sas_and_say_so() -> None:
    async def scenario() -> None:
        relay = make_relay()
        await relay.start()
        recorder = Recorder(relay)
        alice, bob = Phone(ALICE), Phone(BOB)
        results, reports = await bridged_call(relay, recorder, alice, bob, relay_wait=1.0)
        assert all(r["ok"] and r["sas_relay"] is None for r in results)
        assert results[0]["displayed_sas"] != results[1]["displayed_sas"]  # two legs, two SAS
        assert all(r.sas_relay == "none" and r.sas_scope == "pbx-leg" for r in reports)
        assert [r.displayed_sas for r in reports] == [r["sas"] for r in results]
        await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_one_enrolled_leg_gets_the_other_legs_sas() -> None:
    async def scenario() -> None:
        relay = make_relay()
        await relay.start()
        recorder = Recorder(relay)
        alice, bob = Phone(ALICE), Phone(BOB)
        await enroll(relay, recorder, bob)
        results, reports = await bridged_call(relay, recorder, alice, bob, relay_wait=5)
        a, b = results
        assert not a["pbx_trusted"] and b["pbx_trusted"]
        assert b["sas_relay"]["relayed"] and b["displayed_sas"] == a["sas"]
        assert not a["sas_relay"]["relayed"] and a["displayed_sas"] == a["sas"]
        assert [r.sas_relay for r in reports] == ["source:acknowledged", "target:acknowledged"]
        assert all(r.sas_scope == "end-to-end" for r in reports)
        await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_phone_that_declined_enrollment_is_not_trusted_and_unenroll_forgets() -> None:
    async def scenario() -> None:
        relay = make_relay()
        await relay.start()
        recorder = Recorder(relay)
        alice, bob = Phone(ALICE), Phone(BOB)
        await enroll(relay, recorder, alice, consent=False)  # the user said no on the phone
        await enroll(relay, recorder, bob)
        assert {peer for _, peer, _ in await relay.enrolled_phones()} == {ALICE, BOB}
        assert await relay.unenroll(peer_zid=BOB) == 1
        results, reports = await bridged_call(relay, recorder, alice, bob, relay_wait=1.0)
        assert not any(r["pbx_trusted"] for r in results)
        assert all(r.sas_relay == "none" and not r.enrolled for r in reports)
        await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_mitm_on_one_leg_shows_as_different_sas_then_a_cache_mismatch() -> None:
    """An attacker terminates ZRTP on Alice's leg with a relay of its own: toward
    Alice it claims the PBX's ZID, toward the PBX Alice's."""

    async def scenario() -> None:
        cache = MemorySecretCache()
        relay = make_relay(cache=cache)
        await relay.start()
        pbx_zid = cache.local_zid(lambda: os.urandom(12))
        recorder = Recorder(relay)
        alice = Phone(ALICE)
        port = await create_call(relay, "attacked", Policy.REQUIRED)
        echo = EchoPbx(port)
        await echo.start()
        attacker_port: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()
        toward_alice = asyncio.ensure_future(
            run_endpoint(
                ZrtpConfiguration(zid=pbx_zid, mitm=True),
                EndpointOptions(bind=("127.0.0.66", 0), peer=None, srtp_count=0, timeout=10),
                cache=MemorySecretCache(),
                ready=attacker_port,
            )
        )
        toward_pbx = asyncio.ensure_future(
            run_endpoint(
                ZrtpConfiguration(zid=ALICE),
                EndpointOptions(bind=("127.0.0.67", 0), peer=(RELAY_HOST, port), timeout=10),
                cache=MemorySecretCache(),
            )
        )
        bound = await attacker_port
        victim = await run_endpoint(
            ZrtpConfiguration(zid=ALICE),
            EndpointOptions(bind=(PHONE_HOST, 0), peer=bound, timeout=10),
            cache=alice.cache,
        )
        await toward_alice
        await toward_pbx
        await recorder.wait_for(lambda: "secure" in recorder.states("attacked"))
        assert victim["zid_peer"] == pbx_zid.hex()  # the attacker looks like the PBX
        assert victim["sas"] != relay.get("attacked").sas  # the humans would notice
        relay.delete("attacked")
        echo.close()
        # Next call without the attacker: both sides hold a secret the other lacks.
        port = await create_call(relay, "direct", Policy.REQUIRED)
        echo = EchoPbx(port)
        await echo.start()
        direct = await alice.call(port)
        await recorder.wait_for(lambda: "secure" in recorder.states("direct"))
        assert direct["cache_mismatch"] and relay.get("direct").cache_mismatch
        relay.delete("direct")
        echo.close()
        await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_enrollment_offered_too_late_on_a_prebound_port_is_refused_harmlessly() -> None:
    async def scenario() -> None:
        from tests.relay.helpers import free_even_port

        port = free_even_port()
        # Never named, the port's exchange waits cache_timeout for a name before it goes
        # on without continuity; a short one lets it secure while a name given now
        # still adopts it (the exchange began less than 3 s before).
        relay = make_relay(prebind=(port,), cache_timeout=0.5)
        await relay.start()
        recorder = Recorder(relay)
        echo = EchoPbx(port)
        await echo.start()
        result = await Phone(ALICE).call(port)  # media first: secured under prebind_policy
        assert result["ok"] and not result["pbx_enrollment_offered"]
        await recorder.wait_for(lambda: "secure" in recorder.states(f"port-{port}"))
        with pytest.raises(RelayError, match="too late"):
            await relay.create("named-late", port, Policy.REQUIRED, enroll=True)
        assert relay.get(f"port-{port}").state == "secure"  # left as it was
        report = await relay.create("named-late", port, Policy.REQUIRED)
        assert report.state == "secure"
        echo.close()
        await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


async def enroll_on_a_bridged_leg(
    relay: Relay, recorder: Recorder, enrolling: Phone, other: Phone
) -> tuple[dict[str, Any], dict[str, Any], CallReport, CallReport]:
    """``enrolling`` enrolls on leg a of a bridged call (E flag, the user confirms),
    then leg b (``other``) is answered: the relay applies §7.3 to the two legs.
    Leg b's mirror is created first (the relay's tie-break would favour leg a)."""
    group = f"linkedid-{os.urandom(3).hex()}"
    legs = [f"{group}-a", f"{group}-b"]
    port_b = await create_call(relay, legs[1], Policy.REQUIRED, bridge=group)
    port_a = await create_call(relay, legs[0], Policy.REQUIRED, bridge=group, enroll=True)
    pbxs = [EchoPbx(port_a), EchoPbx(port_b)]
    for pbx in pbxs:
        await pbx.start()
    try:
        task_a = asyncio.ensure_future(
            enrolling.call(port_a, accept_enrollment=True, sas_relay_wait=4)
        )
        await recorder.wait_for(lambda: "secure" in recorder.states(legs[0]))
        assert (await relay.enroll(legs[0])).enrolled  # the user pressed 1
        result_b = await other.call(port_b, sas_relay_wait=4)
        result_a = await task_a
        await recorder.wait_for(
            lambda: all(
                relay.get(leg).sas_relay == "none" or relay.get(leg).sas_relay.endswith("ed")
                for leg in legs
            )
        )
        return result_a, result_b, relay.get(legs[0]), relay.get(legs[1])
    finally:
        for leg in legs:
            relay.delete(leg)
        for pbx in pbxs:
            pbx.close()


def test_a_phone_enrolled_during_this_call_is_not_reported_end_to_end() -> None:
    """Issue 11 item 8: the phone enrolled in this very call shares no pbxsecret in this
    DH exchange, so it acknowledges a SASrelay but shows its own SAS (§7.3). Before,
    the relay sent it the far end's SAS anyway and reported both legs end-to-end."""

    async def scenario() -> None:
        relay = make_relay()
        await relay.start()
        recorder = Recorder(relay)
        alice, bob = Phone(ALICE), Phone(BOB)
        a, b, report_a, report_b = await enroll_on_a_bridged_leg(relay, recorder, alice, bob)
        assert a["ok"] and b["ok"] and a["enrolled"] and report_a.enrolled
        assert a["displayed_sas"] == a["sas"] != b["displayed_sas"]  # two SAS on the phones
        # ...and the relay says so: no SAS relayed, each leg reads its own
        assert report_a.sas_scope == report_b.sas_scope == "pbx-leg"
        assert report_a.sas_relay == report_b.sas_relay == "none"
        assert (report_a.displayed_sas, report_b.displayed_sas) == (a["sas"], b["sas"])
        # Next call: Alice's pbxsecret matches, the SAS is relayed to her, end-to-end.
        results, reports = await bridged_call(relay, recorder, alice, bob, relay_wait=5)
        assert results[0]["displayed_sas"] == results[1]["displayed_sas"] == results[1]["sas"]
        assert all(r.sas_scope == "end-to-end" for r in reports)
        await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_the_relayed_sas_goes_to_the_leg_that_can_render_it() -> None:
    """Bob enrolled earlier (his pbxsecret matches); Alice enrolls during this call.
    Both are "enrolled", but only Bob renders a relayed SAS: he is the target."""

    async def scenario() -> None:
        relay = make_relay()
        await relay.start()
        recorder = Recorder(relay)
        alice, bob = Phone(ALICE), Phone(BOB)
        await enroll(relay, recorder, bob)
        a, b, report_a, report_b = await enroll_on_a_bridged_leg(relay, recorder, alice, bob)
        assert a["ok"] and b["ok"] and report_a.enrolled and report_b.enrolled
        assert b["sas_relay"]["relayed"] and b["displayed_sas"] == a["sas"] == a["displayed_sas"]
        assert (report_a.sas_relay, report_b.sas_relay) == (
            "source:acknowledged",
            "target:acknowledged",
        )
        assert report_a.sas_scope == report_b.sas_scope == "end-to-end"
        assert report_a.displayed_sas == report_b.displayed_sas == a["sas"]
        await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
