"""Video added during a call by the phone's re-INVITE (FreeSWITCH), on pre-bound ports.

What a real FreeSWITCH 1.10.12 does (fixtures/video-reinvite-esl-events.txt, captured
by tests/integration/test_freeswitch_video_reinvite_real.py with linphonec's
``camera on``): the call was answered audio-only (no ``local_video_port`` in
CHANNEL_ANSWER); the re-INVITE's answer takes a new ``local_video_port`` from the RTP
range (no event), sends the 200 OK, then fires CUSTOM ``sofia::reinvite`` with the
Unique-ID only. The phone starts its video's ZRTP (Multistream) on the 200 OK, so its
Hello (and Commit) may reach the relay's pre-bound port before the adapter has read
the port. The adapter reads the variables on ``sofia::reinvite`` and names the
stream; the relay keys it by Multistream under the call's session.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from pbx_zrtp.calls import CallState
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from pbx_zrtp.zrtp.connection import ZrtpConnection
from tests.asterisk.test_adapter import _until, run
from tests.freeswitch.test_adapter import SETTLED, lab
from tests.relay.helpers import RELAY_HOST, EchoPbx
from tests.relay.test_prebound_video import _stream

FIXTURES = Path(__file__).parent / "fixtures"


def _captured(name: str = "video-reinvite") -> list[dict[str, str]]:
    out = []
    for block in (FIXTURES / f"{name}-esl-events.txt").read_text().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if fields:
            out.append(fields)
    return out


def test_freeswitchs_own_re_invite_shows_only_as_codec_events() -> None:
    """uuid_media_reneg adding H264 on FreeSWITCH 1.10.12: after the answer, CODEC
    events setting the video codecs, without the channel's variables, and no
    sofia::reinvite."""
    events = _captured("video-reneg")
    answered = next(i for i, e in enumerate(events) if e["Event-Name"] == "CHANNEL_ANSWER")
    later = events[answered + 1 :]
    video = [e for e in later if e.get("channel-video-read-codec-name")]
    assert video and all(e["Event-Name"] == "CODEC" for e in video)
    assert video[0]["channel-video-read-codec-name"] == "H264"
    assert not any(k.startswith("variable_") for e in video for k in e)
    assert not any(e.get("Event-Subclass") == "sofia::reinvite" for e in events)


def test_the_captured_events_name_no_video_port() -> None:
    """Why the adapter must read the variables: the real answer had no video port
    and the re-INVITE's event carries nothing but the channel's id."""
    events = _captured()
    answer = next(e for e in events if e["Event-Name"] == "CHANNEL_ANSWER")
    reinvite = next(e for e in events if e.get("Event-Subclass") == "sofia::reinvite")
    assert "variable_local_video_port" not in answer
    assert answer["variable_rtp_adv_video_ip"] == answer["variable_rtp_adv_audio_ip"]
    assert reinvite["Event-Calling-Function"] == "sofia_handle_sip_i_state"
    assert set(reinvite) == {"Event-Name", "Event-Subclass", "Unique-ID", "Event-Calling-Function"}
    # The video codec's CODEC events came first, without variables either.
    codecs = [e for e in events if e.get("channel-video-read-codec-name")]
    assert codecs and events.index(codecs[0]) < events.index(reinvite)
    assert not any(k.startswith("variable_") for k in codecs[0])
    assert reinvite["Unique-ID"] == answer["Unique-ID"]


@pytest.mark.parametrize("origin", ["phone", "freeswitch"])
def test_video_added_by_re_invite_is_named_and_secured_by_multistream(origin: str) -> None:
    """``phone``: the phone's re-INVITE, then ``sofia::reinvite``; ``freeswitch``:
    FreeSWITCH's own (``uuid_media_reneg``), which fires no ``sofia::reinvite``, only
    a CODEC event setting the video codec (fixtures/video-reneg-esl-events.txt)."""

    async def scenario() -> None:
        async with lab(required_timeout=10.0) as t:
            port, video_port = t.free_ports.pop(), t.free_ports.pop()
            pbxs = [EchoPbx(port), EchoPbx(video_port)]
            for pbx in pbxs:
                await pbx.start()
                t.pbxs.append(pbx)
            channel = t.fake.new_call(local_media_port=port)
            await channel.set_var("pbx_zrtp_policy", "required")
            await channel.set_var("rtp_adv_audio_ip", RELAY_HOST)
            await channel.set_var("rtp_adv_video_ip", RELAY_HOST)
            await channel.answer()  # audio only, as captured
            call_id = f"fs-{channel.uuid}"
            configuration = ZrtpConfiguration(zid=os.urandom(12))
            audio, video = await _stream(port), await _stream(video_port)
            try:
                audio.start(ZrtpConnection(configuration, ssrc=0x1111))
                state = await channel.wait_for_var("pbx_zrtp_state", SETTLED, 10)
                assert state == "secure" and audio.secured is not None
                # The re-INVITE: FreeSWITCH takes the port and answers; the phone's
                # video ZRTP starts and reaches the pre-bound port first.
                await channel.set_var("local_video_port", str(video_port))
                await channel.set_var("rtp_video_recv_pt", "102")
                assert audio.conn is not None and audio.conn.session is not None
                video.start(ZrtpConnection(configuration, ssrc=0x2222, session=audio.conn.session))
                await _until(lambda: "Commit" in video.kinds(video.sent))
                mirror = next(m for m in t.relay.mirrors() if m.port == video_port)
                sent = len(video.sent)
                await _until(lambda: mirror.heard() >= sent)
                assert t.relay.get(call_id).stream("video") is None
                if origin == "phone":
                    await channel.reinvite_answered()
                else:
                    await channel.video_codec_set()
                await channel.wait_for_var("pbx_zrtp_state_video", SETTLED, 10)
                v = channel.variables
                assert v["pbx_zrtp_state_video"] == "secure", v
                assert v["zrtp_secure_media_confirmed_video"] == "true"
                assert v["pbx_zrtp_state"] == "secure"
                await _until(lambda: video.secured is not None)
                assert video.secured is not None and video.secured.multistream
                report = t.relay.get(call_id)
                stream = report.stream("video")
                assert stream is not None and stream.key_agreement == "Mult"
                assert stream.sas == report.sas == video.secured.sas and stream.port == video_port
                assert mirror.identity is not None and mirror.identity.payload_type == 102
                # A later re-INVITE (hold, resume) changes nothing.
                asked = f"api uuid_getvar {channel.uuid} rtp_video_recv_pt"
                reads = t.fake.commands.count(asked)
                await channel.reinvite_answered()
                await _until(lambda: t.fake.commands.count(asked) > reads)
                await asyncio.sleep(0)
                again = t.relay.get(call_id).stream("video")
                assert again is not None and again.state is CallState.SECURE
                assert [c.call_id for c in t.relay.calls()] == [call_id]
            finally:
                audio.close()
                video.close()

    run(scenario())


def test_a_re_invite_without_video_adds_nothing() -> None:
    async def scenario() -> None:
        async with lab() as t:
            channel, _port = await t.call("required")
            await channel.reinvite_answered()  # hold or resume: no local_video_port
            asked = f"api uuid_getvar {channel.uuid} rtp_video_recv_pt"
            await _until(lambda: asked in t.fake.commands)  # the adapter read all three
            await asyncio.sleep(0)
            report = t.relay.get(f"fs-{channel.uuid}")
            assert report.streams == () and report.state is CallState.PENDING

    run(scenario())


def test_video_added_by_re_invite_that_bypasses_the_relay_fails_a_required_call() -> None:
    """The re-INVITE's video was not advertised at the relay (rtp_adv_video_ip unset):
    the phone and FreeSWITCH would exchange that video directly, in the clear. Under
    ``required`` the call fails (its audio mirror is deleted, the dialplan or the
    hang-up safety net ends it), as for a video announced with the call."""

    async def scenario() -> None:
        async with lab(hangup_failed_after=30) as t:
            channel, _port = await t.call("required")
            await channel.set_var("local_video_port", str(t.free_ports.pop()))
            await channel.reinvite_answered()
            await _until(lambda: channel.variables.get("pbx_zrtp_state") == "failed")
            assert "rtp_adv_video_ip" in channel.variables["pbx_zrtp_fail_reason"]
            assert t.relay.calls() == []

    run(scenario())


def test_video_added_while_esl_was_down_is_picked_up_at_resync() -> None:
    """The re-INVITE's events were lost with the ESL connection: the resync reads
    the known call's video port and mirrors it."""

    async def scenario() -> None:
        async with lab(required_timeout=10.0) as t:
            channel, _port = await t.call("required")
            await channel.set_var("rtp_adv_video_ip", RELAY_HOST)
            call_id = f"fs-{channel.uuid}"
            await _until(lambda: channel.variables.get("pbx_zrtp_state") == "pending")
            await t.fake.drop_connections()
            video_port = t.free_ports.pop()
            await channel.set_var("local_video_port", str(video_port))  # while away
            await _until(lambda: t.relay.get(call_id).stream("video") is not None, timeout=15)
            video = t.relay.get(call_id).stream("video")
            assert video is not None and video.port == video_port
            await _until(lambda: channel.variables.get("pbx_zrtp_state_video") == "pending")

    run(scenario())
