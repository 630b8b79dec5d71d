"""Enrollment and SAS relay driven from the FreeSWITCH dialplan (fake ESL, real relay with
pre-bound ports, our phones)."""

from __future__ import annotations

import asyncio
from typing import Any

from pbx_zrtp.cache.memory import MemorySecretCache
from pbx_zrtp.endpoint import EndpointOptions, run_endpoint
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from tests.freeswitch.fake_esl import FakeFsChannel
from tests.freeswitch.test_adapter import SETTLED, Lab, _until, lab, run
from tests.relay.helpers import PHONE_HOST, RELAY_HOST, EchoPbx

ALICE = bytes.fromhex("a11ce0000000000000000033")
BOB = bytes.fromhex("b0b000000000000000000044")


def phone(port: int, zid: bytes, cache: MemorySecretCache, **options: Any) -> Any:
    return run_endpoint(
        ZrtpConfiguration(zid=zid),
        EndpointOptions(
            bind=(PHONE_HOST, 0), peer=(RELAY_HOST, port), srtp_count=5, timeout=10, **options
        ),
        cache=cache,
    )


async def leg(
    t: Lab, *, destination: str, call_uuid: str | None = None, enroll: bool = False
) -> tuple[FakeFsChannel, int]:
    """set pbx_zrtp_policy=required (+ pbx_zrtp_enroll=offer), rtp_adv_audio_ip, answer;
    a bridged B leg carries the A leg's uuid as call_uuid (Channel-Call-UUID)."""
    port = t.free_ports.pop()
    pbx = EchoPbx(port)
    await pbx.start()
    t.pbxs.append(pbx)
    channel = t.fake.new_call(local_media_port=port, destination=destination)
    if call_uuid is not None:
        await channel.set_var("call_uuid", call_uuid)
    if enroll:
        await channel.set_var("pbx_zrtp_enroll", "offer")
    await channel.set_var("pbx_zrtp_policy", "required")
    await channel.set_var("rtp_adv_audio_ip", RELAY_HOST)
    await channel.answer()
    return channel, port


def test_enroll_from_the_dialplan_then_one_sas_across_the_bridge() -> None:
    async def scenario() -> None:
        async with lab(calls=6) as t:
            bob_cache = MemorySecretCache()
            channel, port = await leg(t, destination="9477", enroll=True)
            result, state = await asyncio.gather(
                phone(port, BOB, bob_cache, accept_enrollment=True),
                channel.wait_for_var("pbx_zrtp_state", SETTLED, 10),
            )
            assert state == "secure" and result["enrolled"]
            # <action application="event" data="Event-Subclass=pbx_zrtp::enroll,
            #  Event-Name=CUSTOM,action=confirm"/> after the user pressed 1
            await channel.custom_event("pbx_zrtp::enroll", action="confirm")
            assert await channel.wait_for_var("pbx_zrtp_enroll_result", bool, 5) == "enrolled"
            await _until(lambda: channel.variables.get("pbx_zrtp_enrolled") == "true")
            await channel.hangup()

            a_leg, a_port = await leg(t, destination="9402")
            b_leg, b_port = await leg(t, destination="9402", call_uuid=a_leg.uuid)
            a, b = await asyncio.gather(
                phone(a_port, ALICE, MemorySecretCache(), sas_relay_wait=5),
                phone(b_port, BOB, bob_cache, sas_relay_wait=5),
            )
            assert b["sas_relay"]["relayed"] and a["displayed_sas"] == b["displayed_sas"]
            for channel in (a_leg, b_leg):
                await channel.wait_for_var("pbx_zrtp_sas_scope", lambda v: v == "end-to-end", 8)
                assert channel.variables["pbx_zrtp_displayed_sas"] == a["sas"]
            assert b_leg.variables["pbx_zrtp_sas_relay"] == "target:acknowledged"
            assert a_leg.variables["pbx_zrtp_enrolled"] == "false"

    run(scenario())


def test_fs_cli_unenroll_and_a_bad_action_are_reported() -> None:
    async def scenario() -> None:
        async with lab() as t:
            bob_cache = MemorySecretCache()
            channel, port = await leg(t, destination="9477", enroll=True)
            await asyncio.gather(
                phone(port, BOB, bob_cache, accept_enrollment=True),
                channel.wait_for_var("pbx_zrtp_state", SETTLED, 10),
            )
            await t.fake.fs_cli("uuid_setvar", f"{channel.uuid} pbx_zrtp_enroll confirm")
            assert await channel.wait_for_var("pbx_zrtp_enroll_result", bool, 5) == "enrolled"
            assert [peer for _, peer, _ in await t.relay.enrolled_phones()] == [BOB]
            await t.fake.fs_cli("uuid_setvar", f"{channel.uuid} pbx_zrtp_enroll remove")
            await _until(lambda: channel.variables.get("pbx_zrtp_enroll_result") == "unenrolled")
            assert await t.relay.enrolled_phones() == []
            await t.fake.fs_cli("uuid_setvar", f"{channel.uuid} pbx_zrtp_enroll maybe")
            await _until(
                lambda: "unknown action" in (channel.variables.get("pbx_zrtp_enroll_result") or "")
            )

    run(scenario())


def test_legacy_enrollment_variables() -> None:
    """FreeSWITCH <= 1.10.8: zrtp_enrollment=true asked for enrollment; the results were
    zrtp_new_user_enrolled_audio, zrtp_already_enrolled_audio, zrtp_user_unenrolled_audio
    (switch_rtp.c). Issue 13: the drop-in reads and sets them too."""

    async def scenario() -> None:
        async with lab(calls=4) as t:
            bob_cache = MemorySecretCache()

            async def legacy_enrollment_call() -> FakeFsChannel:
                port = t.free_ports.pop()
                pbx = EchoPbx(port)
                await pbx.start()
                t.pbxs.append(pbx)
                channel = t.fake.new_call(local_media_port=port, destination="9477")
                await channel.set_var("zrtp_enrollment", "true")
                await channel.set_var("pbx_zrtp_policy", "required")
                await channel.set_var("rtp_adv_audio_ip", RELAY_HOST)
                await channel.answer()
                result, state = await asyncio.gather(
                    phone(port, BOB, bob_cache, accept_enrollment=True),
                    channel.wait_for_var("pbx_zrtp_state", SETTLED, 10),
                )
                assert state == "secure" and result["enrolled"]  # the E flag was offered
                return channel

            first = await legacy_enrollment_call()
            await first.custom_event("pbx_zrtp::enroll", action="confirm")
            assert await first.wait_for_var("pbx_zrtp_enroll_result", bool, 5) == "enrolled"
            assert first.variables["zrtp_new_user_enrolled_audio"] == "true"
            await first.hangup()
            second = await legacy_enrollment_call()
            await _until(lambda: second.variables.get("zrtp_already_enrolled_audio") == "true")
            await second.custom_event("pbx_zrtp::enroll", action="remove")
            assert await second.wait_for_var("pbx_zrtp_enroll_result", bool, 5) == "unenrolled"
            assert second.variables["zrtp_user_unenrolled_audio"] == "true"

    run(scenario())
