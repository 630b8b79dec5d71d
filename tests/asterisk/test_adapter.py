"""What only the Asterisk adapter does (the flows every adapter shares are in
tests/pbx/test_adapters.py), through whole calls: fake AMI (replaying real Asterisk
behaviour), a real relay, a real ZRTP phone (our engine) and an echo 'PBX'."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from pbx_zrtp.asterisk.adapter import AsteriskAdapter
from pbx_zrtp.asterisk.config import AsteriskConfig
from pbx_zrtp.calls import Policy
from pbx_zrtp.endpoint import EndpointOptions, run_endpoint
from pbx_zrtp.relay.core import Relay
from pbx_zrtp.relay.handle import LocalRelay
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from tests.asterisk.fake_ami import FakeAmi, FakeChannel
from tests.interop.multistream import run_two_streams
from tests.relay.helpers import PHONE_HOST, RELAY_HOST, EchoPbx, free_even_port, make_relay

SETTLED: Callable[[str | None], bool] = lambda v: v not in (None, "", "pending")  # noqa: E731


class Lab:
    def __init__(self, fake: FakeAmi, relay: Relay, adapter: AsteriskAdapter) -> None:
        self.fake = fake
        self.relay = relay
        self.adapter = adapter
        self.pbxs: list[EchoPbx] = []

    async def call(
        self,
        policy: str = "required",
        exten: str = "600",
        *,
        progress: bool = True,
        rtp_src: bool = True,
        linkedid: str | None = None,
        media: str | None = None,
        enroll: bool = False,
        video: bool = False,
    ) -> tuple[FakeChannel, int]:
        """What [pbx-zrtp] does: Set(PBX_ZRTP_POLICY), Progress(), UserEvent(PbxZrtp,...)."""
        port = free_even_port()
        pbx = EchoPbx(port)
        await pbx.start()
        self.pbxs.append(pbx)
        channel = self.fake.new_call(rtp_port=port, exten=exten, linkedid=linkedid)
        if video:  # a video call: chan_pjsip's second RTP instance
            channel.video_port = free_even_port()
            video_pbx = EchoPbx(channel.video_port)
            await video_pbx.start()
            self.pbxs.append(video_pbx)
        if enroll:
            await channel.set_var("PBX_ZRTP_ENROLL", "offer")
        await channel.set_var("PBX_ZRTP_POLICY", policy)
        await channel.set_var("PBX_ZRTP_TARGET", exten)
        if progress:
            await channel.progress()
        headers = {"Policy": policy, "Target": exten, "Endpoint": channel.endpoint}
        if rtp_src:
            headers["RtpSrc"] = f"127.0.0.1:{port}" if progress else ""
        if media is not None:  # the subroutine's MediaAddress ("none": no media_address)
            headers["MediaAddress"] = media
        headers["Enroll"] = "offer" if enroll else ""
        await channel.user_event("PbxZrtp", **headers)
        return channel, port


@contextlib.asynccontextmanager
async def lab(**config: Any) -> AsyncIterator[Lab]:
    fake = FakeAmi()
    port = await fake.start()
    relay = make_relay(
        required_timeout=config.pop("required_timeout", 3.0),
        optional_timeout=config.pop("optional_timeout", 1.0),
    )
    settings = AsteriskConfig(
        host="127.0.0.1", port=port, username="ctl", secret="ctlpass", **config
    )
    adapter = AsteriskAdapter(settings, LocalRelay(relay))
    assert await adapter.start()
    await _until(lambda: adapter.resyncs > 0)  # its first snapshot of the PBX is taken
    the_lab = Lab(fake, relay, adapter)
    try:
        yield the_lab
    finally:
        await adapter.close()
        await relay.close()
        for pbx in the_lab.pbxs:
            pbx.close()
        await fake.close()


def phone(port: int, zid: bytes = b"A" * 12, srtp: int = 10) -> Any:
    return run_endpoint(
        ZrtpConfiguration(zid=zid),
        EndpointOptions(bind=(PHONE_HOST, 0), peer=(RELAY_HOST, port), srtp_count=srtp, timeout=10),
    )


def run(coro: Any) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))


def test_a_video_call_secures_its_video_by_multistream_and_says_so() -> None:
    async def scenario() -> None:
        async with lab(required_timeout=10.0) as t:
            channel, port = await t.call("required", video=True)
            video_port = channel.video_port
            assert video_port is not None
            loop = asyncio.get_running_loop()
            run = loop.run_in_executor(
                None,
                lambda: run_two_streams(
                    (port, video_port), srtp=10, host=RELAY_HOST, bind=PHONE_HOST, timeout=15
                ),
            )
            (first, second, received), _ = await asyncio.gather(
                run, channel.wait_for_var("ZRTP_VIDEO_STATE", SETTLED, 15)
            )
            v = channel.variables
            assert v["ZRTP_STATE"] == "secure" and v["ZRTP_SAS"] == first.sas == second.sas
            assert v["ZRTP_VIDEO_STATE"] == "secure" and v["ZRTP_VIDEO_SECURE"] == "1"
            assert v["ZRTP_VIDEO_FAIL_REASON"] == "" and received == 10
            video = t.relay.get(f"ast-{channel.uniqueid}").stream("video")
            assert video is not None and video.port == video_port
            assert video.key_agreement == "Mult"

    run(scenario())


def test_a_video_stream_the_relay_cannot_mirror_fails_a_required_call_only() -> None:
    """Unmirrored, Asterisk's video would go to the phone directly, clear: under
    required the call fails; under optional it goes on without video in the relay."""

    async def scenario() -> None:
        async with lab() as t:
            for policy, expected in (("required", "failed"), ("optional", "pending")):
                channel = t.fake.new_call(rtp_port=free_even_port())
                channel.video_port = channel.rtp_port  # taken by the call's own audio
                await channel.set_var("PBX_ZRTP_POLICY", policy)
                await channel.progress()
                await channel.user_event(
                    "PbxZrtp",
                    Policy=policy,
                    Target="600",
                    Endpoint=channel.endpoint,
                    RtpSrc=f"127.0.0.1:{channel.rtp_port}",
                )
                state = await channel.wait_for_var("ZRTP_STATE", lambda v: bool(v), 10)
                assert state == expected, (policy, channel.variables)
                if expected == "failed":
                    reason = channel.variables["ZRTP_FAIL_REASON"]
                    assert reason.startswith("relay: video stream:"), reason
                    # no audio mirror left whose later "secure" could overwrite it
                    assert f"ast-{channel.uniqueid}" not in [c.call_id for c in t.relay.calls()]
                else:
                    report = t.relay.get(f"ast-{channel.uniqueid}")
                    assert report.streams == ()

    run(scenario())


def test_video_added_by_a_re_invite_is_mirrored_and_keyed_by_multistream() -> None:
    """The phone turns its camera on mid-call: a re-INVITE gives the call a video
    stream (AMI says nothing of it). The adapter finds it within ``video_watch``, the
    relay mirrors it and the phone keys it by Multistream under the call's session."""

    async def scenario() -> None:
        async with lab(required_timeout=10.0, video_watch=0.2) as t:
            channel, port = await t.call("required")  # audio only
            video_port = free_even_port()
            video_pbx = EchoPbx(video_port)
            await video_pbx.start()
            t.pbxs.append(video_pbx)
            loop = asyncio.get_running_loop()
            run = loop.run_in_executor(
                None,
                lambda: run_two_streams(
                    (port, video_port), srtp=10, host=RELAY_HOST, bind=PHONE_HOST, timeout=15
                ),
            )
            await channel.wait_for_var("ZRTP_STATE", SETTLED, 10)
            assert channel.variables["ZRTP_VIDEO_STATE"] == ""
            assert t.relay.get(f"ast-{channel.uniqueid}").streams == ()
            channel.video_port = video_port  # the re-INVITE
            first, second, received = await run
            state = await channel.wait_for_var("ZRTP_VIDEO_STATE", SETTLED, 10)
            v = channel.variables
            assert state == "secure" and v["ZRTP_VIDEO_SECURE"] == "1", v
            assert v["ZRTP_STATE"] == "secure" and v["ZRTP_SAS"] == first.sas == second.sas
            assert received == 10
            video = t.relay.get(f"ast-{channel.uniqueid}").stream("video")
            assert video is not None and video.port == video_port
            assert video.key_agreement == "Mult"

    run(scenario())


def test_without_video_watch_video_added_later_is_not_mirrored() -> None:
    async def scenario() -> None:
        async with lab(video_watch=0.0) as t:
            channel, port = await t.call("required")
            await asyncio.gather(phone(port), channel.wait_for_var("ZRTP_STATE", SETTLED, 10))
            channel.video_port = free_even_port()
            await asyncio.sleep(0.5)
            assert t.relay.get(f"ast-{channel.uniqueid}").streams == ()
            reads = [a.get("Variable", "") for a in t.fake.actions if a.get("Action") == "Getvar"]
            assert reads.count("CHANNEL(videonativeformat)") == 1  # at the call's start only
            # the audio-only call it would watch is forgotten when it ends, watch or not
            assert channel.uniqueid in t.adapter._audio_only
            await channel.hangup()
            await _until(lambda: channel.uniqueid not in t.adapter._audio_only)

    run(scenario())


def test_an_audio_call_has_no_video_variables_and_no_video_read() -> None:
    """chan_pjsip logs a warning for each CHANNEL(rtp,src,video) of an audio-only
    call: the adapter asks only when CHANNEL(videonativeformat) says there is video."""

    async def scenario() -> None:
        async with lab() as t:
            channel, port = await t.call("required")
            await asyncio.gather(phone(port), channel.wait_for_var("ZRTP_STATE", SETTLED, 10))
            v = channel.variables
            assert v["ZRTP_STATE"] == "secure"
            assert v["ZRTP_VIDEO_STATE"] == "" and v["ZRTP_VIDEO_SECURE"] == "0"
            reads = [a.get("Variable", "") for a in t.fake.actions if a.get("Action") == "Getvar"]
            assert "CHANNEL(videonativeformat)" in reads
            assert not [r for r in reads if "video)" in r]

    run(scenario())


def test_secure_call_sets_every_variable_and_tells_ami_consumers() -> None:
    async def scenario() -> None:
        async with lab() as t:
            channel, port = await t.call("required")
            result, state = await asyncio.gather(
                phone(port), channel.wait_for_var("ZRTP_STATE", SETTLED, 10)
            )
            assert state == "secure" and result["ok"]
            v = channel.variables
            assert v["ZRTP_SECURE"] == "1" and v["ZRTP_SAS"] == result["sas"]
            assert v["ZRTP_SAS_TYPE"] == result["sas_type"] and v["ZRTP_POLICY"] == "required"
            assert v["ZRTP_CIPHER"] == result["cipher"]
            assert v["ZRTP_KEY_AGREEMENT"] == result["key_agreement"]
            # Phone and relay on their defaults: post-quantum X25519+ML-KEM-512 with S512,
            # and AES-256 (both offer AES3; a KEM hybrid prefers it, as bzrtp does).
            assert v["ZRTP_CIPHER"] == "AES3"
            assert v["ZRTP_KEY_AGREEMENT"] == "X1M1" and v["ZRTP_PQ"] == "1"
            assert v["ZRTP_HASH"] == "S512" and v["ZRTP_AUTH_TAG"] == result["auth_tag"]
            assert v["ZRTP_PEER_ZID"] == (b"A" * 12).hex()
            assert v["ZRTP_SAS_VERIFIED"] == "0" and v["ZRTP_CACHE_MISMATCH"] == "0"
            assert v["ZRTP_FAIL_REASON"] == ""
            assert result["srtp"]["received_ok"] == 10
            # ZRTP_STATE is written last: the dialplan wakes to a complete picture
            setvars = [a["Variable"] for a in t.fake.actions if a.get("Action") == "Setvar"]
            assert setvars.index("ZRTP_STATE", setvars.index("ZRTP_SAS")) > setvars.index(
                "ZRTP_SAS"
            )
            await _until(lambda: any(a.get("UserEvent") == "ZrtpSecure" for a in t.fake.actions))
            user_events = [a for a in t.fake.actions if a.get("Action") == "UserEvent"]
            assert any(
                a.get("UserEvent") == "ZrtpSecure" and a.get("SAS") == result["sas"]
                for a in user_events
            )
            await _until(
                lambda: "secure" in t.fake.astdb.get(("pbx_zrtp/calls", channel.uniqueid), "")
            )
            assert t.fake.astdb.get(("pbx_zrtp/calls", channel.uniqueid), "").startswith(
                f"{channel.uniqueid} {channel.name} "  # the id first (`zrtp show calls`)
            )
            await channel.hangup()
            await _until(lambda: not t.relay.calls())
            assert ("pbx_zrtp/calls", channel.uniqueid) not in t.fake.astdb

    run(scenario())


def test_malformed_ami_input_is_survived() -> None:
    async def scenario() -> None:
        async with lab() as t:
            await t.fake.send_raw(b"garbage without colon\r\n\r\n")
            await t.fake.send_raw(
                b"Event: UserEvent\r\nUserEvent: PbxZrtp\r\nPolicy: required\r\n\r\n"
            )
            await t.fake.send_raw(
                b"Event: UserEvent\r\nUserEvent: PbxZrtp\r\nChannel: PJSIP/x\r\n"
                b"Uniqueid: 1.1\r\nRtpSrc: nonsense\r\n\r\n"
            )
            await t.fake.send_raw(b"Event: Hangup\r\nUniqueid: \xff\xfe\r\n\r\n")
            await t.fake.send_raw(b"\r\n\r\n\r\n")
            channel, port = await t.call("required")
            result, state = await asyncio.gather(
                phone(port, srtp=0), channel.wait_for_var("ZRTP_STATE", SETTLED, 10)
            )
            assert state == "secure" and result["ok"]

    run(scenario())


def test_auto_policy_from_astdb_then_patterns_then_default() -> None:
    async def scenario() -> None:
        async with lab(
            policies=[("_7XX", Policy.OFF), ("_6XX", Policy.OPTIONAL)],
            default_policy=Policy.REQUIRED,
        ) as t:
            t.fake.astdb[("pbx_zrtp/policy", "601")] = "required"
            expectations = {"601": "required", "602": "optional", "700": "off", "999": "required"}
            for exten, expected in expectations.items():
                channel, _ = await t.call("auto", exten=exten)
                await _until(
                    lambda c=channel: c.variables.get("ZRTP_STATE") is not None
                )  # written last
                assert channel.variables["ZRTP_POLICY"] == expected, exten
                if expected == "off":
                    assert channel.variables["ZRTP_STATE"] == "off"
                await channel.hangup()
            await _until(lambda: not t.relay.calls())

    run(scenario())


def test_auto_call_is_answered_well_within_the_dialplans_wait() -> None:
    """Issue 11 item 4: an ``auto`` call whose extension has no AstDB key waited 5 s
    for the lookup, longer than the subroutine's 3 s: the dialplan moved on before
    the relay bound the port. Now the adapter answers (ZRTP_STATE) at once."""

    async def scenario() -> None:
        async with lab(policies=[("_6XX", Policy.REQUIRED)]) as t:
            loop = asyncio.get_running_loop()
            started = loop.time()
            channel, _ = await t.call("auto", exten="602")
            state = await channel.wait_for_var("ZRTP_STATE", lambda v: bool(v), 3.0)
            elapsed = loop.time() - started
            assert state == "pending" and channel.variables["ZRTP_POLICY"] == "required"
            assert elapsed < 1.0, f"the adapter answered after {elapsed:.2f} s"
            assert [m.identity.policy for m in t.relay.mirrors() if m.identity] == [Policy.REQUIRED]
            await channel.hangup()
            await _until(lambda: not t.relay.calls())

    run(scenario())


def test_auto_policy_that_cannot_be_read_is_treated_as_required() -> None:
    """An AstDB lookup that fails (time-out) or a stored value that is no policy:
    the key may have meant `required`, so the call is treated as required."""

    async def scenario() -> None:
        async with lab(default_policy=Policy.OFF) as t:
            t.fake.astdb[("pbx_zrtp/policy", "601")] = "requried"  # a typo
            channel, _ = await t.call("auto", exten="601")
            await _until(lambda: channel.variables.get("ZRTP_STATE") is not None)
            assert channel.variables["ZRTP_POLICY"] == "required"
            await channel.hangup()

            async def stuck(session: object, headers: list[str]) -> bool:
                return True  # Asterisk never answers the DBGet

            t.fake._handlers["dbget"] = stuck
            t.adapter.ami.action_timeout = 0.3
            channel, _ = await t.call("auto", exten="602")
            await _until(lambda: channel.variables.get("ZRTP_STATE") is not None)
            assert channel.variables["ZRTP_POLICY"] == "required"
            await channel.hangup()
            await _until(lambda: not t.relay.calls())

    run(scenario())


def test_missing_progress_gives_a_clear_failure_reason() -> None:
    async def scenario() -> None:
        async with lab() as t:
            channel, _ = await t.call("required", progress=False, rtp_src=False)
            state = await channel.wait_for_var("ZRTP_STATE", SETTLED, 10)
            assert state == "failed"
            assert "Progress()" in channel.variables["ZRTP_FAIL_REASON"]
            assert not t.relay.calls()
            # other AMI consumers are told too
            await _until(lambda: any(a.get("UserEvent") == "ZrtpFailed" for a in t.fake.actions))

    run(scenario())


def test_a_required_call_whose_media_bypasses_the_relay_is_refused_at_once() -> None:
    """Issue 13 defect 6: an endpoint without media_address (a plain phone) sends its
    media straight to Asterisk. A call that resolves to `required` is failed with the
    reason before any mirror exists (it used to fail after the relay's 10 s, while its
    clear RTP flowed); `optional` is left to the relay as before."""

    async def scenario() -> None:
        async with lab(policies=[("_6XX", Policy.REQUIRED)]) as t:
            for policy in ("required", "auto"):
                channel, _ = await t.call(policy, exten="601", media="none")
                state = await channel.wait_for_var("ZRTP_STATE", SETTLED, 10)
                assert state == "failed" and channel.variables["ZRTP_POLICY"] == "required"
                reason = channel.variables["ZRTP_FAIL_REASON"]
                assert "has no media_address" in reason and RELAY_HOST in reason, reason
                assert not t.relay.calls()  # refused before the relay was asked
                await channel.hangup()
            optional, port = await t.call("optional", exten="601", media="none")
            await _until(lambda: optional.variables.get("ZRTP_STATE") == "pending")
            assert [c.port for c in t.relay.calls()] == [port]
            await optional.hangup()
            # the relay's own address: mirrored as before
            served, port = await t.call("required", exten="601", media=RELAY_HOST)
            await _until(lambda: served.variables.get("ZRTP_STATE") == "pending")
            assert [c.port for c in t.relay.calls()] == [port]
            await served.hangup()
            await _until(lambda: not t.relay.calls())

    run(scenario())


def test_zrtp_cli_lines_act_and_leave_their_outcome_in_astdb() -> None:
    """Issue 13 (the admin's day): `zrtp verify <id>` is `dialplan set global
    PBX_ZRTP_CLI_VERIFY <id>`, which AMI shows as a VarSet with Channel: none (seen on
    Asterisk 22.10.1). The adapter acts and writes the outcome to AstDB
    pbx_zrtp/result (`zrtp show result`); `zrtp show calls` lines start with the id."""

    def typed(t: Lab, variable: str, value: str) -> None:
        t.fake.emit(
            "VarSet",
            "dialplan",
            [("Channel", "none"), ("Uniqueid", "none"), ("Variable", variable), ("Value", value)],
        )

    async def scenario() -> None:
        async with lab() as t:
            channel, port = await t.call("required")
            await asyncio.gather(
                phone(port, srtp=0), channel.wait_for_var("ZRTP_STATE", SETTLED, 10)
            )
            uid = channel.uniqueid
            line = t.fake.astdb[("pbx_zrtp/calls", uid)]
            assert line.split()[:2] == [uid, channel.name], line
            typed(t, "PBX_ZRTP_CLI_VERIFY", uid)
            await _until(lambda: channel.variables.get("ZRTP_SAS_VERIFIED") == "1")
            await _until(lambda: ("pbx_zrtp/result", "verify") in t.fake.astdb)
            result = t.fake.astdb[("pbx_zrtp/result", "verify")]
            assert result == f"{uid}: done: SAS of {channel.name} marked verified", result
            typed(t, "PBX_ZRTP_CLI_UNVERIFY", uid)
            await _until(lambda: channel.variables.get("ZRTP_SAS_VERIFIED") == "0")
            typed(t, "PBX_ZRTP_CLI_VERIFY", "no.such")
            await _until(lambda: t.fake.astdb[("pbx_zrtp/result", "verify")].startswith("no."))
            assert t.fake.astdb[("pbx_zrtp/result", "verify")] == (
                "no.such: failed: no ZRTP call 'no.such'"
            )
            typed(t, "PBX_ZRTP_CLI_ENROLL", uid)  # *77 was not dialled: nothing offered
            await _until(lambda: ("pbx_zrtp/result", "enroll") in t.fake.astdb)
            assert (
                "failed: enrollment was not offered" in t.fake.astdb[("pbx_zrtp/result", "enroll")]
            )
            typed(t, "SOMETHING_ELSE", uid)  # other globals are none of our business
            await channel.hangup()

    run(scenario())


def test_cli_admin_marks_the_sas_verified() -> None:
    async def scenario() -> None:
        async with lab() as t:
            channel, port = await t.call("required")
            await asyncio.gather(
                phone(port, srtp=0), channel.wait_for_var("ZRTP_STATE", SETTLED, 10)
            )
            # channel originate Local/s@pbx-zrtp-admin application UserEvent \
            #     PbxZrtpAdmin,Command: verify,Call: <uniqueid>
            admin = t.fake.new_call(rtp_port=free_even_port(), endpoint="Local/s@pbx-zrtp-admin")
            await admin.user_event("PbxZrtpAdmin", Command="verify", Call=channel.uniqueid)
            await _until(lambda: channel.variables.get("ZRTP_SAS_VERIFIED") == "1")
            assert any(a.get("UserEvent") == "ZrtpSasVerified" for a in t.fake.actions)
            assert "verified=yes" in t.fake.astdb[("pbx_zrtp/calls", channel.uniqueid)]
            # an unknown call is answered with an error event, nothing breaks
            await admin.user_event("PbxZrtpAdmin", Command="verify", Call="no.such")
            await _until(
                lambda: any(a.get("UserEvent") == "ZrtpAdminError" for a in t.fake.actions)
            )

    run(scenario())


async def _until(predicate: Callable[[], bool], timeout: float = 8.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def test_adapter_in_its_own_process_role_against_a_remote_relay(tmp_path: Any) -> None:
    """`pbx-zrtp asterisk --relay unix:…`: the adapter reaches the relay over the control API."""
    from pbx_zrtp.relay.control.server import ControlServer
    from pbx_zrtp.relay.handle import RemoteRelay

    async def scenario() -> None:
        fake = FakeAmi()
        ami_port = await fake.start()
        relay = make_relay()
        server = ControlServer(relay)
        socket_path = str(tmp_path / "control.sock")
        await server.start_unix(socket_path)
        remote = RemoteRelay(f"unix:{socket_path}", RELAY_HOST)
        await remote.start()
        adapter = AsteriskAdapter(
            AsteriskConfig(host="127.0.0.1", port=ami_port, username="ctl", secret="ctlpass"),
            remote,
        )
        assert await adapter.start()
        t = Lab(fake, relay, adapter)
        try:
            channel, port = await t.call("required")
            result, state = await asyncio.gather(
                phone(port, srtp=5), channel.wait_for_var("ZRTP_STATE", SETTLED, 10)
            )
            assert state == "secure" and channel.variables["ZRTP_SAS"] == result["sas"]
            await channel.hangup()
            await _until(lambda: not relay.calls())
        finally:
            await adapter.close()
            await remote.close()
            await server.close()
            await relay.close()
            for pbx in t.pbxs:
                pbx.close()
            await fake.close()

    run(scenario())


def test_phone_policies_from_the_configuration() -> None:
    """[asterisk.phone_policies]: endpoint names or patterns -> the policy of calls
    from and to that phone; a bad value names the key and the fix."""
    from pbx_zrtp.asterisk.config import parse_asterisk
    from pbx_zrtp.config.fields import ConfigError

    config = parse_asterisk(
        {"secret": "s", "phone_policies": {"_10XX": "required", "zalice": "optional"}}
    )
    assert config.phone_policies == [("_10XX", Policy.REQUIRED), ("zalice", Policy.OPTIONAL)]
    try:
        parse_asterisk({"secret": "s", "phone_policies": {"1001": "yes"}})
    except ConfigError as exc:
        assert "asterisk.phone_policies.1001" in str(exc) and "off, optional" in str(exc)
    else:
        raise AssertionError("a phone policy that is no policy was accepted")

    async def scenario() -> None:
        async with lab(phone_policies=config.phone_policies, default_policy=Policy.OFF) as t:
            channel, _ = await t.call("auto", exten="600")  # from endpoint zalice
            await _until(lambda: channel.variables.get("ZRTP_STATE") is not None)
            assert channel.variables["ZRTP_POLICY"] == "optional"  # not the default off
            await channel.hangup()
            channel, _ = await t.call("auto", exten="1002")  # to phone 1002
            await _until(lambda: channel.variables.get("ZRTP_STATE") is not None)
            assert channel.variables["ZRTP_POLICY"] == "required"
            await channel.hangup()

    run(scenario())
