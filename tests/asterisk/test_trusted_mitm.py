"""Enrollment and SAS relay driven from the Asterisk dialplan (fake AMI, real relay, our phones)."""

from __future__ import annotations

import asyncio
from typing import Any

from pbx_zrtp.cache.memory import MemorySecretCache
from pbx_zrtp.endpoint import EndpointOptions, run_endpoint
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from tests.asterisk.test_adapter import SETTLED, Lab, _until, lab, run
from tests.relay.helpers import PHONE_HOST, RELAY_HOST

ALICE = bytes.fromhex("a11ce0000000000000000011")
BOB = bytes.fromhex("b0b000000000000000000022")


def phone(port: int, zid: bytes, cache: MemorySecretCache, **options: Any) -> Any:
    return run_endpoint(
        ZrtpConfiguration(zid=zid),
        EndpointOptions(
            bind=(PHONE_HOST, 0), peer=(RELAY_HOST, port), srtp_count=5, timeout=10, **options
        ),
        cache=cache,
    )


async def enroll_from_dialplan(t: Lab, zid: bytes, cache: MemorySecretCache) -> None:
    """*77: Set(PBX_ZRTP_ENROLL=offer), the subroutine, the user presses 1,
    UserEvent(PbxZrtpAdmin,Command: enroll,Call: ${UNIQUEID}), wait for the result."""
    channel, port = await t.call("required", exten="*77", enroll=True)
    result, state = await asyncio.gather(
        phone(port, zid, cache, accept_enrollment=True),
        channel.wait_for_var("ZRTP_STATE", SETTLED, 10),
    )
    assert state == "secure" and result["pbx_enrollment_offered"] and result["enrolled"]
    assert channel.variables["ZRTP_ENROLLED"] == "0"
    await channel.user_event("PbxZrtpAdmin", Command="enroll", Call=channel.uniqueid)
    outcome = await channel.wait_for_var("ZRTP_ENROLL_RESULT", lambda v: bool(v), 5)
    assert outcome == "enrolled"
    assert channel.variables["ZRTP_ENROLLED"] == "1"
    assert channel.variables["ZRTP_SAS_VERIFIED"] == "1"  # the user compared it first
    await channel.hangup()


def test_enroll_then_a_bridged_call_reads_one_sas_on_both_channels() -> None:
    async def scenario() -> None:
        async with lab() as t:
            alice_cache, bob_cache = MemorySecretCache(), MemorySecretCache()
            await enroll_from_dialplan(t, BOB, bob_cache)
            caller, caller_port = await t.call("required", exten="702")
            callee, callee_port = await t.call("required", exten="702", linkedid=caller.uniqueid)
            a, b = await asyncio.gather(
                phone(caller_port, ALICE, alice_cache, sas_relay_wait=5),
                phone(callee_port, BOB, bob_cache, sas_relay_wait=5),
            )
            assert a["displayed_sas"] == b["displayed_sas"] == a["sas"]
            for channel in (caller, callee):
                await channel.wait_for_var("ZRTP_SAS_SCOPE", lambda v: v == "end-to-end", 8)
            va, vb = caller.variables, callee.variables
            assert va["ZRTP_DISPLAYED_SAS"] == vb["ZRTP_DISPLAYED_SAS"] == a["sas"]
            assert va["ZRTP_ENROLLED"] == "0" and vb["ZRTP_ENROLLED"] == "1"
            assert va["ZRTP_SAS_RELAY"] == "source:acknowledged"
            assert vb["ZRTP_SAS_RELAY"] == "target:acknowledged"
            await caller.hangup()
            await callee.hangup()
            await _until(lambda: not t.relay.calls())

    run(scenario())


def test_unenrolled_bridged_legs_report_pbx_leg_sas_and_unenroll_works() -> None:
    async def scenario() -> None:
        async with lab() as t:
            bob_cache = MemorySecretCache()
            await enroll_from_dialplan(t, BOB, bob_cache)
            # *78 from Bob: the PBX forgets him.
            channel, port = await t.call("required", exten="*78")
            await asyncio.gather(
                phone(port, BOB, bob_cache), channel.wait_for_var("ZRTP_STATE", SETTLED, 10)
            )
            await channel.user_event("PbxZrtpAdmin", Command="unenroll", Call=channel.uniqueid)
            assert await channel.wait_for_var("ZRTP_ENROLL_RESULT", bool, 5) == "unenrolled"
            await channel.hangup()
            caller, caller_port = await t.call("required", exten="702")
            callee, callee_port = await t.call("required", exten="702", linkedid=caller.uniqueid)
            a, b = await asyncio.gather(
                phone(caller_port, ALICE, MemorySecretCache(), sas_relay_wait=1),
                phone(callee_port, BOB, bob_cache, sas_relay_wait=1),
            )
            assert a["sas_relay"] is None and b["sas_relay"] is None
            for channel, result in ((caller, a), (callee, b)):
                await channel.wait_for_var("ZRTP_SAS_SCOPE", lambda v: v == "pbx-leg", 8)
                assert channel.variables["ZRTP_DISPLAYED_SAS"] == result["sas"]
                assert channel.variables["ZRTP_SAS_RELAY"] == "none"
                assert channel.variables["ZRTP_ENROLLED"] == "0"

    run(scenario())


def test_enroll_on_a_call_that_did_not_offer_it_fails_with_a_reason() -> None:
    async def scenario() -> None:
        async with lab() as t:
            channel, port = await t.call("required", exten="600")
            await asyncio.gather(
                phone(port, ALICE, MemorySecretCache()),
                channel.wait_for_var("ZRTP_STATE", SETTLED, 10),
            )
            await channel.user_event("PbxZrtpAdmin", Command="enroll", Call=channel.uniqueid)
            outcome = await channel.wait_for_var("ZRTP_ENROLL_RESULT", bool, 5)
            assert outcome.startswith("failed:") and "not offered" in outcome
            assert channel.variables["ZRTP_ENROLLED"] == "0"

    run(scenario())
