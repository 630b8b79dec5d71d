"""Priming only while a call needs it (issue 13, item 10).

Closed-loop priming sends the PBX silence until the PBX's first packet reaches
the relay, so the PBX latches onto the relay before any audio could go straight
to the phone. A plain endpoint whose media never passes the relay (no
``media_address``) is never heard: priming must stop once the call is known not
to need it (off or clear: passing through; failed: nothing flows), and resume
if the call needs it again. Real sockets on loopback; the PBX here never answers.
"""

from __future__ import annotations

import asyncio

from pbx_zrtp.endpoint import EndpointOptions, run_endpoint
from pbx_zrtp.relay.core import Relay
from pbx_zrtp.relay.mirror import Policy
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from tests.relay.helpers import PHONE_HOST, RELAY_HOST, Recorder, create_call, make_relay


def _primed(relay: Relay, call_id: str) -> int:
    return int(relay.get(call_id).counters["priming_sent"])


async def _still(relay: Relay, call_id: str, wait: float = 0.4) -> tuple[int, int]:
    before = _primed(relay, call_id)
    await asyncio.sleep(wait)
    return before, _primed(relay, call_id)


def test_a_plain_endpoint_is_primed_only_until_the_optional_call_goes_clear() -> None:
    async def scenario() -> None:
        relay = make_relay(optional_timeout=0.6)
        recorder = Recorder(relay)
        await create_call(relay, "plain-opt", Policy.OPTIONAL)
        try:
            await asyncio.sleep(0.3)
            assert _primed(relay, "plain-opt") >= 5  # pending: the PBX may still latch
            await recorder.wait_for(lambda: "clear" in recorder.states("plain-opt"))
            before, after = await _still(relay, "plain-opt")
            assert after == before, (before, after)  # clear: nothing left to protect
            # The whole cost is the pending time: about one packet per 20 ms.
            assert before <= 0.6 / 0.020 + 5, before
        finally:
            await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_a_required_call_that_failed_is_no_longer_primed() -> None:
    async def scenario() -> None:
        relay = make_relay(required_timeout=0.5)
        recorder = Recorder(relay)
        await create_call(relay, "plain-req", Policy.REQUIRED)
        try:
            await recorder.wait_for(lambda: "failed" in recorder.states("plain-req"))
            before, after = await _still(relay, "plain-req")
            assert before > 0 and after == before, (before, after)
        finally:
            await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_an_off_call_is_not_primed_until_its_policy_asks_for_zrtp() -> None:
    async def scenario() -> None:
        relay = make_relay()
        await create_call(relay, "plain-off", Policy.OFF)
        try:
            before, after = await _still(relay, "plain-off")
            assert before == after == 0, (before, after)  # byte-exact pass-through
            relay.update("plain-off", policy=Policy.REQUIRED)  # the dialplan changed its mind
            await asyncio.sleep(0.3)
            assert _primed(relay, "plain-off") >= 5
        finally:
            await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_a_call_secured_after_going_clear_is_primed_again() -> None:
    """Clear stopped priming; a phone that then completes ZRTP makes the call need
    the PBX latched again (its audio must reach the relay to be encrypted)."""

    async def scenario() -> None:
        relay = make_relay(optional_timeout=0.3)
        recorder = Recorder(relay)
        port = await create_call(relay, "late-zrtp", Policy.OPTIONAL)
        try:
            await recorder.wait_for(lambda: "clear" in recorder.states("late-zrtp"))
            before, after = await _still(relay, "late-zrtp", 0.2)
            assert after == before
            phone = await run_endpoint(
                ZrtpConfiguration(zid=b"L" * 12),
                EndpointOptions(bind=(PHONE_HOST, 0), peer=(RELAY_HOST, port), timeout=10),
            )
            assert phone["ok"] and relay.get("late-zrtp").state == "secure"
            _, again = await _still(relay, "late-zrtp", 0.3)
            assert again >= after + 5, (after, again)
        finally:
            await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))
