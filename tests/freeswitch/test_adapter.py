"""What only the FreeSWITCH adapter does (the flows every adapter shares are in
tests/pbx/test_adapters.py), through whole calls: fake ESL (replaying real
FreeSWITCH 1.10 behaviour), a real relay with pre-bound ports, a real ZRTP phone
(our engine) and an echo 'PBX'."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from pbx_zrtp.endpoint import EndpointOptions, run_endpoint
from pbx_zrtp.freeswitch.adapter import FreeswitchAdapter
from pbx_zrtp.freeswitch.config import FreeswitchConfig
from pbx_zrtp.pbx.variables import legacy_sas
from pbx_zrtp.relay.core import Relay
from pbx_zrtp.relay.handle import LocalRelay
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from tests.freeswitch.fake_esl import FakeEsl, FakeFsChannel
from tests.interop.multistream import run_two_streams
from tests.relay.helpers import PHONE_HOST, RELAY_HOST, EchoPbx, free_even_port, make_relay

SETTLED: Callable[[str | None], bool] = lambda v: v not in (None, "", "pending")  # noqa: E731


class Lab:
    def __init__(
        self, fake: FakeEsl, relay: Relay, adapter: FreeswitchAdapter, ports: list[int]
    ) -> None:
        self.fake = fake
        self.relay = relay
        self.adapter = adapter
        self.free_ports = list(ports)
        self.pbxs: list[EchoPbx] = []

    async def call(
        self,
        policy: str | None = "required",
        *,
        legacy: bool = False,
        advertise: bool = True,
        destination: str = "9400",
        answer: bool = True,
    ) -> tuple[FakeFsChannel, int]:
        """The dialplan: set pbx_zrtp_policy (or zrtp_secure_media), rtp_adv_audio_ip, answer."""
        port = self.free_ports.pop()
        pbx = EchoPbx(port)
        await pbx.start()
        self.pbxs.append(pbx)
        channel = self.fake.new_call(local_media_port=port, destination=destination)
        if legacy:
            await channel.set_var("zrtp_secure_media", "true")
        elif policy is not None:
            await channel.set_var("pbx_zrtp_policy", policy)
        if advertise:
            await channel.set_var("rtp_adv_audio_ip", RELAY_HOST)
        if answer:
            await channel.answer()
        return channel, port


@contextlib.asynccontextmanager
async def lab(calls: int = 4, **config: Any) -> AsyncIterator[Lab]:
    fake = FakeEsl()
    esl_port = await fake.start()
    ports = [free_even_port() for _ in range(calls)]
    relay = make_relay(
        prebind=tuple(ports),
        required_timeout=config.pop("required_timeout", 3.0),
        optional_timeout=config.pop("optional_timeout", 1.0),
    )
    await relay.start()
    settings = FreeswitchConfig(host="127.0.0.1", port=esl_port, password="ClueCon", **config)
    adapter = FreeswitchAdapter(settings, LocalRelay(relay))
    assert await adapter.start()
    await _until(lambda: adapter.resyncs > 0)  # its first snapshot of the PBX is taken
    the_lab = Lab(fake, relay, adapter, ports)
    try:
        yield the_lab
    finally:
        await adapter.close()
        await relay.close()
        for pbx in the_lab.pbxs:
            pbx.close()
        await fake.close()


def phone(port: int, zid: bytes = b"F" * 12, srtp: int = 10, sas: bytes | None = None) -> Any:
    # With a SAS preference the phone commits, so its choice is the one used.
    config = (
        ZrtpConfiguration(zid=zid)
        if sas is None
        else ZrtpConfiguration(zid=zid, sas_types=(sas,), role="initiator")
    )
    return run_endpoint(
        config,
        EndpointOptions(bind=(PHONE_HOST, 0), peer=(RELAY_HOST, port), srtp_count=srtp, timeout=10),
    )


def run(coro: Any) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))


async def _until(predicate: Callable[[], bool], timeout: float = 8.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def test_secure_call_sets_new_and_legacy_variables_and_fires_call_secure() -> None:
    async def scenario() -> None:
        async with lab() as t:
            channel, port = await t.call("required")
            result, state = await asyncio.gather(
                phone(port, sas=b"B256"), channel.wait_for_var("pbx_zrtp_state", SETTLED, 10)
            )
            assert state == "secure" and result["ok"] and result["srtp"]["received_ok"] == 10
            v = channel.variables
            assert v["pbx_zrtp_secure"] == "true" and v["pbx_zrtp_sas"] == result["sas"]
            assert v["pbx_zrtp_sas_type"] == "B256" and v["pbx_zrtp_active_policy"] == "required"
            assert v["pbx_zrtp_peer_zid"] == (b"F" * 12).hex()
            # both on their defaults: a KEM hybrid with AES-256, as bzrtp negotiates it
            assert v["pbx_zrtp_cipher"] == result["cipher"] == "AES3"
            # the drop-in for FreeSWITCH's removed ZRTP
            word1, word2 = result["sas"].split(" ")
            assert v["zrtp_secure_media_confirmed_audio"] == "true"
            assert (v["zrtp_sas1_string_audio"], v["zrtp_sas2_string"]) == (word1, word2)
            await _until(
                lambda: any(e.get("Event-Subclass") == "pbx_zrtp::secure" for e in t.fake.fired)
            )
            secure = next(e for e in t.fake.fired if e.get("Event-Subclass") == "pbx_zrtp::secure")
            assert secure.get("secure_type") == f"zrtp:{word1}:{word2}"
            assert secure.get("pbx_zrtp_uuid") == channel.uuid and secure.get("Unique-ID") is None
            # and the event FreeSWITCH <= 1.10.8 fired, header for header (issue 13)
            await _until(lambda: any(e.name == "CALL_SECURE" for e in t.fake.fired))
            legacy = next(e for e in t.fake.fired if e.name == "CALL_SECURE")
            assert legacy.get("Event-Name") == "CALL_SECURE" and legacy.subclass is None
            assert legacy.get("secure_type") == f"zrtp:{word1}:{word2}"
            assert legacy.get("secure_media_type") == "audio"
            assert legacy.get("caller-unique-id") == channel.uuid
            await _until(lambda: "secure" in t.fake.global_vars.get("pbx_zrtp_calls", ""))
            await channel.hangup()
            await _until(lambda: not t.relay.calls())
            assert port in {m.port for m in t.relay.mirrors()}  # pre-bound port stays bound

    run(scenario())


def test_a_video_call_on_prebound_ports_sets_the_video_variables_old_and_new() -> None:
    """local_video_port (from the pre-bound range, as FreeSWITCH's RTP range is)
    is mirrored as the call's video stream: secured by Multistream; the legacy
    zrtp_secure_media_confirmed_video says so as FreeSWITCH's removed ZRTP did."""

    async def scenario() -> None:
        async with lab(required_timeout=10.0) as t:
            video_port = t.free_ports.pop()
            video_pbx = EchoPbx(video_port)
            await video_pbx.start()
            t.pbxs.append(video_pbx)
            port = t.free_ports.pop()
            pbx = EchoPbx(port)
            await pbx.start()
            t.pbxs.append(pbx)
            channel = t.fake.new_call(local_media_port=port)
            await channel.set_var("pbx_zrtp_policy", "required")
            await channel.set_var("rtp_adv_audio_ip", RELAY_HOST)
            await channel.set_var("rtp_adv_video_ip", RELAY_HOST)
            await channel.set_var("local_video_port", str(video_port))
            await channel.set_var("rtp_video_recv_pt", "103")
            await channel.answer()
            await _until(lambda: channel.variables.get("pbx_zrtp_state_video") == "pending")
            loop = asyncio.get_running_loop()
            _first, second, received = await loop.run_in_executor(
                None,
                lambda: run_two_streams(
                    (port, video_port), srtp=10, host=RELAY_HOST, bind=PHONE_HOST, timeout=15
                ),
            )
            await channel.wait_for_var("pbx_zrtp_state_video", SETTLED, 10)
            v = channel.variables
            assert v["pbx_zrtp_state"] == "secure" and v["pbx_zrtp_sas"] == second.sas
            assert v["pbx_zrtp_state_video"] == "secure" and v["pbx_zrtp_secure_video"] == "true"
            assert v["zrtp_secure_media_confirmed_video"] == "true" and received == 10
            assert v.get("pbx_zrtp_fail_reason_video", "") == ""  # empty: unset in FreeSWITCH
            mirror = next(m for m in t.relay.mirrors() if m.port == video_port)
            assert mirror.identity is not None and mirror.identity.payload_type == 103
            await channel.hangup()
            await _until(lambda: not t.relay.calls())
            # both pre-bound ports stay bound, idle, for the next call
            assert {port, video_port} <= {m.port for m in t.relay.mirrors()}
            assert mirror.first is None and mirror.identity is None

    run(scenario())


def test_a_required_video_call_whose_video_bypasses_the_relay_fails() -> None:
    """rtp_adv_video_ip not the relay: the phone would send its video to FreeSWITCH
    and FreeSWITCH its video, clear, to the phone. Under required the call fails."""

    async def scenario() -> None:
        async with lab() as t:
            video_port = t.free_ports.pop()
            channel = t.fake.new_call(local_media_port=t.free_ports.pop())
            await channel.set_var("pbx_zrtp_policy", "required")
            await channel.set_var("rtp_adv_audio_ip", RELAY_HOST)
            await channel.set_var("local_video_port", str(video_port))
            await channel.answer()
            state = await channel.wait_for_var("pbx_zrtp_state", SETTLED, 10)
            assert state == "failed"
            assert "rtp_adv_video_ip" in channel.variables["pbx_zrtp_fail_reason"]

    run(scenario())


def test_legacy_zrtp_secure_media_true_means_optional() -> None:
    async def scenario() -> None:
        async with lab() as t:
            channel, port = await t.call(legacy=True)
            result, state = await asyncio.gather(
                phone(port), channel.wait_for_var("pbx_zrtp_state", SETTLED, 10)
            )
            assert state == "secure" and channel.variables["pbx_zrtp_active_policy"] == "optional"
            assert channel.variables["zrtp_sas1_string_audio"] == result["sas"]
            assert channel.variables.get("zrtp_sas2_string", "") == ""  # unset: B32 has one part

    run(scenario())


def test_media_before_the_port_is_known_is_held_then_secured() -> None:
    """The phone's first packets reach the pre-bound port before CHANNEL_ANSWER."""

    async def scenario() -> None:
        async with lab() as t:
            channel, port = await t.call("required", answer=False)
            task = asyncio.ensure_future(phone(port))
            await _until(lambda: bool(t.relay.calls()))  # the relay attached its default
            assert t.relay.calls()[0].call_id == f"port-{port}"
            await channel.answer()
            result, state = await asyncio.gather(
                task, channel.wait_for_var("pbx_zrtp_state", SETTLED, 10)
            )
            assert state == "secure" and result["ok"]
            assert t.relay.calls()[0].call_id == f"fs-{channel.uuid}"

    run(scenario())


def test_missing_rtp_adv_audio_ip_is_a_named_failure() -> None:
    async def scenario() -> None:
        async with lab(hangup_failed_after=30) as t:
            channel, _ = await t.call("required", advertise=False)
            state = await channel.wait_for_var("pbx_zrtp_state", SETTLED, 10)
            assert (
                state == "failed"
                and "rtp_adv_audio_ip" in channel.variables["pbx_zrtp_fail_reason"]
            )

    run(scenario())


def test_malformed_esl_input_is_survived() -> None:
    async def scenario() -> None:
        async with lab() as t:
            await t.fake.send_raw(b"garbage\n\n")
            await t.fake.send_raw(b"Content-Length: 5\nContent-Type: text/event-plain\n\nxx%zz")
            channel, port = await t.call("required")
            result, state = await asyncio.gather(
                phone(port, srtp=0), channel.wait_for_var("pbx_zrtp_state", SETTLED, 10)
            )
            assert state == "secure" and result["ok"]

    run(scenario())


def test_fs_cli_administration() -> None:
    async def scenario() -> None:
        async with lab() as t:
            channel, port = await t.call("optional")
            await asyncio.gather(
                phone(port, srtp=0), channel.wait_for_var("pbx_zrtp_state", SETTLED, 10)
            )
            sas = channel.variables["pbx_zrtp_sas"].replace(" ", "_")
            # fs_cli> uuid_setvar <uuid> pbx_zrtp_verified true
            await t.fake.fs_cli("uuid_setvar", f"{channel.uuid} pbx_zrtp_verified true")
            await _until(lambda: channel.variables.get("pbx_zrtp_sas_verified") == "true")
            await _until(
                lambda: any(e.get("Event-Subclass") == "pbx_zrtp::verified" for e in t.fake.fired)
            )
            await _until(lambda: "verified:" in t.fake.global_vars.get("pbx_zrtp_calls", ""))
            # fs_cli> global_getvar pbx_zrtp_calls
            listing = await t.fake.fs_cli("global_getvar", "pbx_zrtp_calls")
            # the value holds no "=": global_setvar would take it as a conditional set
            assert listing == f"{channel.uuid} secure {sas} verified:true", listing
            # fs_cli> uuid_setvar <uuid> pbx_zrtp_policy required
            await t.fake.fs_cli("uuid_setvar", f"{channel.uuid} pbx_zrtp_policy required")
            await _until(lambda: channel.variables.get("pbx_zrtp_active_policy") == "required")

    run(scenario())


def test_legacy_sas_split() -> None:
    assert legacy_sas("aardvark adroitness", "B256") == ("aardvark", "adroitness")
    assert legacy_sas("b7k2", "B32") == ("b7k2", "")


def test_calls_that_may_send_clear_audio_straight_to_the_phone_are_warned_about(
    caplog: Any,
) -> None:
    """Issue 13, defect 8: without rtp_auto_adjust_threshold=1 (on the channel, or
    global) FreeSWITCH sends its first RTP packets to the phone, not the relay: the
    adapter warns at call start; and at hangup it compares FreeSWITCH's RTP count with
    what the relay got, and names the difference as clear packets sent to the phone."""

    async def scenario() -> None:
        async with lab(calls=3) as t:
            unsafe, _ = await t.call("optional")
            safe, _ = await t.call("optional", answer=False)
            await safe.set_var("rtp_auto_adjust_threshold", "1")
            await safe.answer()
            await _until(lambda: bool(safe.variables.get("pbx_zrtp_state")))
            await _until(lambda: "CLEAR AUDIO" in caplog.text)
            t.fake.global_vars["rtp_auto_adjust_threshold"] = "1"  # vars.xml
            global_safe, port = await t.call("required")
            result, _ = await asyncio.gather(
                phone(port), global_safe.wait_for_var("pbx_zrtp_state", SETTLED, 10)
            )
            assert result["ok"]
            warned = [r.getMessage() for r in caplog.records if "CLEAR AUDIO" in r.getMessage()]
            assert len(warned) == 1 and unsafe.uuid in warned[0], warned
            assert "rtp_auto_adjust_threshold is unset (10), not 1" in warned[0]
            # hangup: FreeSWITCH says it sent 3 packets more than the relay got
            (report,) = [r for r in t.relay.calls() if r.call_id == f"fs-{global_safe.uuid}"]
            heard = report.counters["pbx_in"]
            assert heard > 0
            global_safe.rtp_out_packets = heard + 3
            await global_safe.hangup()
            await _until(lambda: "IN THE CLEAR" in caplog.text)
            assert f"the relay got {heard}: 3 went straight to the phone" in caplog.text
            # the same figures: no warning
            await unsafe.hangup()
            await _until(lambda: f"fs-{unsafe.uuid}" not in {r.call_id for r in t.relay.calls()})
            assert caplog.text.count("IN THE CLEAR") == 1

    with caplog.at_level(logging.WARNING, logger="pbx_zrtp"):
        run(scenario())
