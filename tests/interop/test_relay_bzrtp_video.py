"""A bzrtp phone with a second channel (video, as Linphone keys it: bzrtp_addChannel,
Multistream) through the relay: each stream on its own mirror, keyed from the
call's first stream, SRTP both ways on both, in Python and in the native worker."""

from __future__ import annotations

import asyncio
import os
import pathlib

import pytest

from pbx_zrtp.calls import CallState, Policy
from pbx_zrtp.relay.fastpath import available
from tests.relay.helpers import (
    PHONE_HOST,
    RELAY_HOST,
    EchoPbx,
    Recorder,
    create_call,
    free_even_port,
    make_relay,
)

from .bzrtp_build import finish, run_bzrtp_peer

pytestmark = pytest.mark.interop

N_SRTP = 30
VIDEO_PT = 96

_WHY = available()
if _WHY is not None and os.environ.get("CI"):
    raise RuntimeError(f"the fast path must work in CI: {_WHY}")


@pytest.mark.parametrize(
    "fast",
    [False, pytest.param(True, marks=pytest.mark.skipif(_WHY is not None, reason=f"{_WHY}"))],
)
def test_audio_and_video_secured_through_the_relay(
    bzrtp_peer_bin: pathlib.Path, fast: bool
) -> None:
    async def scenario() -> None:
        relay = make_relay(fastpath=fast, required_timeout=8.0)
        recorder = Recorder(relay)
        port = await create_call(relay, "bz-av", Policy.REQUIRED, self_uri="sip:100@pbx")
        video_port = free_even_port()
        report = await relay.add_stream("bz-av", "video", video_port, payload_type=VIDEO_PT)
        video = report.stream("video")
        assert video is not None and video.state is CallState.PENDING
        audio_pbx, video_pbx = EchoPbx(port), EchoPbx(video_port)
        await audio_pbx.start()
        await video_pbx.start()
        try:
            proc = run_bzrtp_peer(
                bzrtp_peer_bin,
                [
                    *("--bind", f"{PHONE_HOST}:0", "--peer", f"{RELAY_HOST}:{port}"),
                    *("--ms-bind", f"{PHONE_HOST}:0", "--ms-peer", f"{RELAY_HOST}:{video_port}"),
                    *("--ms-pt", str(VIDEO_PT), "--srtp", str(N_SRTP), "--timeout", "15"),
                ],
            )
            loop = asyncio.get_running_loop()
            phone = await loop.run_in_executor(None, finish, proc, 25.0)
            assert phone["ok"], phone
            report = relay.get("bz-av")
            video = report.stream("video")
            assert report.state is CallState.SECURE and video is not None, report
            assert video.state is CallState.SECURE, video
            ms = phone["multistream"]
            assert ms["ok"] and ms["key_agreement"] == "Mult" == video.key_agreement, ms
            assert video.sas == report.sas == phone["sas"]
            assert video.cipher == report.cipher == ms["cipher"]
            # The phone's SRTP on each stream came back through that stream's echo,
            # re-encrypted by the relay with that stream's keys.
            assert phone["srtp"]["received_ok"] >= N_SRTP, phone["srtp"]
            assert ms["srtp"]["received_ok"] >= N_SRTP and ms["srtp"]["received_bad"] == 0, ms
            # Each PBX port got only its own stream, in clear RTP: video PT on video.
            video_rtp = [d for d in video_pbx.received if d[1] & 0x7F == VIDEO_PT]
            audio_rtp = [d for d in audio_pbx.received if d[1] & 0x7F == 0]
            assert len(video_rtp) >= N_SRTP and all(
                d[12:] in (b"", b"\x5a" * 160) for d in video_rtp
            )
            assert not [d for d in audio_pbx.received if d[1] & 0x7F == VIDEO_PT]
            assert len(audio_rtp) >= N_SRTP
            for counters in (report.counters, video.counters):
                # (clear_blocked: the echo of our priming before secure, never sent on)
                assert counters["drops"].get("srtp_auth", 0) == 0, counters
            mirrors = {m.port: m for m in relay.mirrors()}
            assert (mirrors[video_port].fast.handle is not None) is fast
            # The call's events carried the video stream's state.
            assert any(
                r.stream("video") is not None and r.stream("video").secure  # type: ignore[union-attr]
                for r in recorder.events
            )
            final = relay.delete("bz-av")
            ended = final.stream("video")
            assert ended is not None and ended.state is CallState.ENDED
            assert video_port not in {m.port for m in relay.mirrors()}
        finally:
            audio_pbx.close()
            video_pbx.close()
            await relay.close()

    asyncio.run(scenario())
