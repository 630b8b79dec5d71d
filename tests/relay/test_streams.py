"""Further streams of a call (video, issue 15 item 1): each on its own mirror, keyed
by Multistream from the call's first stream, under the call's policy.

Real sockets on the loopback lab; the phone is our own engine running two streams
(tests/interop/multistream.py) or raw sockets. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from pbx_zrtp.calls import BadRequest, CallState, NoSuchCall, Policy
from pbx_zrtp.relay.core import Relay
from pbx_zrtp.relay.mirror import Mirror
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from pbx_zrtp.zrtp.connection import ZrtpConnection
from tests.interop.multistream import run_two_streams
from tests.relay.helpers import (
    PBX_HOST,
    PHONE_HOST,
    RELAY_HOST,
    EchoPbx,
    Recorder,
    create_call,
    free_even_port,
    make_relay,
    rtp,
)

VIDEO_PT = 96


def _mirror(relay: Relay, port: int) -> Mirror:
    return next(m for m in relay.mirrors() if m.port == port)


async def _call_with_video(relay: Relay, call_id: str, policy: Policy) -> tuple[int, int]:
    port = await create_call(relay, call_id, policy)
    video_port = free_even_port()
    await relay.add_stream(call_id, "video", video_port, payload_type=VIDEO_PT)
    return port, video_port


def _udp(host: str, port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


def _drain(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096))
        except BlockingIOError:
            return out


def test_a_two_stream_phone_secures_audio_then_video_by_multistream() -> None:
    async def scenario() -> None:
        relay = make_relay(required_timeout=10.0)
        port, video_port = await _call_with_video(relay, "av-1", Policy.REQUIRED)
        pbxs = [EchoPbx(port), EchoPbx(video_port)]
        for pbx in pbxs:
            await pbx.start()
        try:
            loop = asyncio.get_running_loop()
            first, second, received = await loop.run_in_executor(
                None,
                lambda: run_two_streams(
                    (port, video_port), srtp=10, host=RELAY_HOST, bind=PHONE_HOST, timeout=15
                ),
            )
            report = relay.get("av-1")
            video = report.stream("video")
            assert report.state is CallState.SECURE and video is not None
            assert video.state is CallState.SECURE and video.key_agreement == "Mult"
            assert second.multistream and video.sas == report.sas == first.sas == second.sas
            assert received == 10  # the phone's video SRTP, echoed, re-encrypted
            assert video.counters["pbx_out"] >= 10 and video.counters["phone_out"] >= 10
            assert video.phone.startswith(PHONE_HOST) and video.handshake_ms is not None
        finally:
            for pbx in pbxs:
                pbx.close()
            await relay.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("fastpath", [False, True])
def test_video_priming_stops_for_good_once_the_phones_video_reaches_the_pbx(
    fastpath: bool,
) -> None:
    """Video comes in bursts (a frame, then nothing for up to a second). Priming that
    resumed in the gaps put the relay's SSRC between the phone's frames, and the real
    FreeSWITCH 1.10.12 then bridged no video at all between two video phones (its
    video jitter buffer never completed a frame). Once the phone's own video went to
    the PBX (which latched onto this socket from it), the PBX sees only that stream."""

    async def scenario() -> None:
        relay = make_relay(required_timeout=10.0, fastpath=fastpath)
        port, video_port = await _call_with_video(relay, "av-6", Policy.REQUIRED)
        audio_pbx, video_pbx = EchoPbx(port), EchoPbx(video_port, echo=False)
        for pbx in (audio_pbx, video_pbx):
            await pbx.start()
        try:
            loop = asyncio.get_running_loop()
            # 10 video packets, then 1.5 s of nothing (the PBX sends no video back)
            _, second, _ = await loop.run_in_executor(
                None,
                lambda: run_two_streams(
                    (port, video_port), srtp=10, host=RELAY_HOST, bind=PHONE_HOST, timeout=15
                ),
            )
            assert second.multistream
            ssrcs = [int.from_bytes(d[8:12], "big") for d in video_pbx.received if len(d) >= 12]
            assert ssrcs.count(7) == 10, ssrcs  # the phone's video, decrypted
            first = ssrcs.index(7)
            assert first > 0 and 7 not in ssrcs[:first]  # primed until then ...
            assert ssrcs[first:] == [7] * 10, ssrcs  # ... and never again
            video = relay.get("av-6").stream("video")
            # (the first priming packet went out before the PBX stand-in listened)
            assert video is not None and video.counters["priming_sent"] <= first + 1
        finally:
            for pbx in (audio_pbx, video_pbx):
                pbx.close()
            await relay.close()

    asyncio.run(scenario())


def test_under_required_no_clear_video_either_way_before_the_stream_is_secure() -> None:
    async def scenario() -> None:
        relay = make_relay(required_timeout=10.0)
        _, video_port = await _call_with_video(relay, "av-2", Policy.REQUIRED)
        phone = _udp(PHONE_HOST)
        pbx = _udp(PBX_HOST, video_port)
        mirror = _mirror(relay, video_port)
        try:
            for seq in range(5):
                phone.sendto(rtp(seq, pt=VIDEO_PT), (RELAY_HOST, video_port))
            await asyncio.sleep(0.2)
            for seq in range(5):  # the PBX's clear video toward the latched phone
                pbx.sendto(rtp(seq, pt=VIDEO_PT), (RELAY_HOST, mirror.pbx_side_port))
            await asyncio.sleep(0.2)
            to_pbx = _drain(pbx)
            # only our priming reached the PBX: the stream's payload type, no payload
            assert to_pbx and all(len(d) == 12 and d[1] & 0x7F == VIDEO_PT for d in to_pbx)
            assert _drain(phone) == []
            video = relay.get("av-2").stream("video")
            assert video is not None and video.state is CallState.PENDING
            assert video.counters["drops"]["clear_blocked"] == 10
            assert video.counters["pbx_out"] == 0 and video.counters["phone_out"] == 0
        finally:
            phone.close()
            pbx.close()
            await relay.close()

    asyncio.run(scenario())


def test_a_video_hello_waits_for_the_first_streams_session() -> None:
    """Before the audio stream is secure there is nothing to key video from: the
    phone's video Hello is counted and not answered (it repeats it)."""

    async def scenario() -> None:
        relay = make_relay(required_timeout=10.0)
        _, video_port = await _call_with_video(relay, "av-3", Policy.REQUIRED)
        phone = _udp(PHONE_HOST)
        try:
            engine = ZrtpConnection(ZrtpConfiguration(zid=os.urandom(12)), ssrc=7)
            engine.start(0.0)
            (hello,) = engine.datagrams_to_send()
            phone.sendto(hello, (RELAY_HOST, video_port))
            await asyncio.sleep(0.2)
            assert _drain(phone) == []
            video = relay.get("av-3").stream("video")
            assert video is not None and video.counters["drops"]["zrtp_before_first"] == 1
        finally:
            phone.close()
            await relay.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("policy", "state"), [(Policy.REQUIRED, CallState.FAILED), (Policy.OPTIONAL, CallState.CLEAR)]
)
def test_the_stream_follows_a_first_stream_that_cannot_be_secured(
    policy: Policy, state: CallState
) -> None:
    async def scenario() -> None:
        relay = make_relay(required_timeout=0.4, optional_timeout=0.4)
        recorder = Recorder(relay)
        await _call_with_video(relay, "av-4", policy)
        try:
            await recorder.wait_for(lambda: state.value in recorder.states("av-4"))
            video = relay.get("av-4").stream("video")
            assert video is not None and video.state is state
            assert "first stream" in video.reason and "no Multistream key" in video.reason
            # the event that said so carried the stream
            last = recorder.events[-1]
            assert last.stream("video") is not None
        finally:
            await relay.close()

    asyncio.run(scenario())


def test_streams_are_named_once_per_call_and_end_with_it() -> None:
    async def scenario() -> None:
        relay = make_relay()
        port, video_port = await _call_with_video(relay, "av-5", Policy.OPTIONAL)
        try:
            with pytest.raises(NoSuchCall):
                await relay.add_stream("nobody", "video", free_even_port())
            with pytest.raises(BadRequest, match="already has a video stream"):
                await relay.add_stream("av-5", "video", free_even_port())
            with pytest.raises(BadRequest, match="stream name"):
                await relay.add_stream("av-5", "Video!", free_even_port())
            with pytest.raises(BadRequest, match="already mirrored"):
                await relay.add_stream("av-5", "text", port)
            with pytest.raises(BadRequest, match="already mirrored"):
                await create_call_on(relay, "other", video_port)
            relay.update("av-5", policy=Policy.REQUIRED)
            video = relay.get("av-5").stream("video")
            assert video is not None and video.state is CallState.PENDING
            assert _mirror(relay, video_port).identity.policy is Policy.REQUIRED  # type: ignore[union-attr]
            assert relay.active_calls == 1 and len(relay.calls()) == 1
            final = relay.delete("av-5")
            ended = final.stream("video")
            assert ended is not None and ended.state is CallState.ENDED and ended.port == video_port
            assert {m.port for m in relay.mirrors()} == set()  # both port pairs closed
            assert relay.totals.calls["pending"] == 1  # one call, not two
        finally:
            await relay.close()

    asyncio.run(scenario())


async def create_call_on(relay: Relay, call_id: str, port: int) -> None:
    await relay.create(call_id, port, Policy.REQUIRED)
