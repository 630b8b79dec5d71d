"""A further stream (video) on a pre-bound port, reached before the adapter names it.

FreeSWITCH: the relay binds the PBX's range at start; a phone that adds video with
ZRTP Multistream (RFC 6189 §4.4.3) sends that stream's Hello and its Mult Commit as
soon as the audio is secure, which may be before the adapter has read
``local_video_port`` and named the port as the call's video stream. The stream
must then still be keyed by Multistream under the call's session (never by a DH
exchange of its own), carry no clear media meanwhile, and never answer its
unauthenticated source with more bytes than it sent.

The phone is our engine on two asyncio sockets (a DH stream, then a Multistream
stream from its session) in the relay's own loop, so every step is ordered by
events, not by time; bzrtp does the same in tests/interop/test_prebound_bzrtp.py.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from pbx_zrtp.calls import CallState, Policy
from pbx_zrtp.relay.core import Relay
from pbx_zrtp.relay.mirror import Mirror
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from pbx_zrtp.zrtp.connection import State, ZrtpConnection
from pbx_zrtp.zrtp.events import HandshakeFailed, Secured
from pbx_zrtp.zrtp.packets import is_zrtp_packet
from tests.relay.helpers import (
    PHONE_HOST,
    RELAY_HOST,
    EchoPbx,
    free_even_port,
    make_relay,
    rtp,
)

VIDEO_PT = 96
PHONE_CLEAR = b"\x11" * 160
PBX_CLEAR = b"\x22" * 160


def _kind(data: bytes) -> str:
    return data[16:24].decode("ascii", "replace").strip() if is_zrtp_packet(data) else "media"


@dataclass
class _Stream(asyncio.DatagramProtocol):
    """One stream of the phone: our engine on its own socket, driven by the loop."""

    port: int  # the relay's port it talks to
    conn: ZrtpConnection | None = None
    transport: Any = None
    sent: list[bytes] = field(default_factory=list)
    received: list[bytes] = field(default_factory=list)
    secured: Secured | None = None
    failure: str | None = None
    timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.append(data)
        if self.conn is not None and is_zrtp_packet(data):
            self.conn.receive_datagram(data, asyncio.get_running_loop().time())
            self.pump()

    def start(self, conn: ZrtpConnection) -> None:
        self.conn = conn
        conn.start(asyncio.get_running_loop().time())
        self.pump()

    def send(self, data: bytes) -> None:
        self.sent.append(data)
        self.transport.sendto(data, (RELAY_HOST, self.port))

    def pump(self) -> None:
        conn = self.conn
        assert conn is not None
        for datagram in conn.datagrams_to_send():
            self.send(datagram)
        while (event := conn.next_event()) is not None:
            if isinstance(event, Secured):
                self.secured = event
            elif isinstance(event, HandshakeFailed):
                self.failure = event.reason
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        deadline = conn.get_timer()
        if deadline is not None:
            self.timer = asyncio.get_running_loop().call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        assert self.conn is not None
        self.conn.handle_timer(asyncio.get_running_loop().time())
        self.pump()

    def kinds(self, data: list[bytes]) -> list[str]:
        return [_kind(d) for d in data]

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.transport.close()


async def _stream(port: int) -> _Stream:
    _, stream = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: _Stream(port), local_addr=(PHONE_HOST, 0)
    )
    return stream


async def _until(predicate: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def _mirror(relay: Relay, port: int) -> Mirror:
    return next(m for m in relay.mirrors() if m.port == port)


@dataclass
class _Call:
    relay: Relay
    audio_port: int
    video_port: int
    audio: _Stream
    video: _Stream
    configuration: ZrtpConfiguration

    def close(self) -> None:
        self.audio.close()
        self.video.close()


async def _audio_secured(call_id: str, **relay_args: Any) -> _Call:
    """A relay with the audio and the video port pre-bound, the audio named (as the
    FreeSWITCH adapter names it on CHANNEL_ANSWER) and secured by the phone."""
    audio_port, video_port = free_even_port(), free_even_port()
    relay = make_relay(prebind=(audio_port, video_port), **relay_args)
    await relay.start()
    await relay.create(call_id, audio_port, Policy.REQUIRED)
    configuration = ZrtpConfiguration(zid=os.urandom(12))
    audio, video = await _stream(audio_port), await _stream(video_port)
    audio.start(ZrtpConnection(configuration, ssrc=0x1111))
    await _until(
        lambda: audio.secured is not None and relay.get(call_id).state is CallState.SECURE,
        "the audio stream",
    )
    return _Call(relay, audio_port, video_port, audio, video, configuration)


def _start_video(call: _Call, **config: Any) -> None:
    assert call.audio.conn is not None and call.audio.conn.session is not None
    configuration = call.configuration
    if config:
        configuration = replace(configuration, **config)
    call.video.start(ZrtpConnection(configuration, ssrc=0x2222, session=call.audio.conn.session))


async def _relay_took_the_commit(call: _Call) -> None:
    """The phone's Mult Commit went out and the relay's socket has read every
    datagram the phone sent on the video port so far (whatever it answers, it
    has answered: the relay handles a datagram in one go)."""
    await _until(lambda: "Commit" in call.video.kinds(call.video.sent), "the phone's Commit")
    sent = len(call.video.sent)
    await _until(lambda: _mirror(call.relay, call.video_port).heard() >= sent, "the relay")


@pytest.mark.parametrize("fast", [False, True])
def test_a_video_commit_before_the_name_is_keyed_by_multistream_once_named(fast: bool) -> None:
    """The race: Hello and Mult Commit reach the pre-bound video port before the
    adapter names it. Once named, the stream is secured by Multistream under the
    audio's session; before that, the phone got no more bytes than it sent and no
    Error (which would have ended its video ZRTP for good)."""

    async def scenario() -> None:
        call = await _audio_secured("fs-race", fastpath=1 if fast else False)
        relay = call.relay
        pbx = EchoPbx(call.video_port, echo=False)
        await pbx.start()
        try:
            _start_video(call)
            await _relay_took_the_commit(call)
            phone = call.video
            # Clear video both ways meanwhile (the port's call is unclaimed, under
            # the prebind policy, required): none of it is forwarded.
            for seq in range(3):
                phone.send(rtp(seq, pt=VIDEO_PT, payload=PHONE_CLEAR))
                pbx.transports[0].sendto(
                    rtp(seq, pt=VIDEO_PT, payload=PBX_CLEAR),
                    (RELAY_HOST, _mirror(relay, call.video_port).pbx_side_port),
                )
            sent = len(phone.sent)
            await _until(lambda: _mirror(relay, call.video_port).heard() >= sent, "the relay")
            answered = sum(len(d) for d in phone.received)
            assert answered <= sum(len(d) for d in phone.sent)
            assert "Error" not in phone.kinds(phone.received)
            assert phone.failure is None and phone.secured is None
            assert relay.get("fs-race").stream("video") is None
            report = await relay.add_stream("fs-race", "video", call.video_port, payload_type=96)
            video = report.stream("video")
            assert video is not None and video.state is CallState.PENDING
            await _until(
                lambda: phone.secured is not None or phone.failure is not None, "the video stream"
            )
            assert phone.failure is None, phone.failure
            assert phone.secured is not None and phone.secured.multistream
            await _until(
                lambda: relay.get("fs-race").stream("video").state is CallState.SECURE,
                "the relay's video stream",
            )
            report = relay.get("fs-race")
            video = report.stream("video")
            assert video is not None and video.key_agreement == "Mult"
            assert video.sas == report.sas == phone.secured.sas
            assert video.phone.startswith(PHONE_HOST)
            assert relay.calls() == [report]  # no port-P call left behind
            assert not [d for d in pbx.received if PHONE_CLEAR in d]
            assert not [d for d in phone.received if PBX_CLEAR in d]
            assert video.counters["drops"]["clear_blocked"] >= 3
        finally:
            pbx.close()
            call.close()
            await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_held_commit_from_another_phone_is_refused_once_named() -> None:
    """A Hello and Mult Commit on the pre-bound port from a ZID other than the
    audio's phone: named as the call's video, it is not keyed (§4.4.3: one
    session, one peer ZID); the stream fails, nothing is secured."""

    async def scenario() -> None:
        call = await _audio_secured("fs-other", required_timeout=10.0)
        relay = call.relay
        try:
            _start_video(call, zid=os.urandom(12))
            await _relay_took_the_commit(call)
            await relay.add_stream("fs-other", "video", call.video_port, payload_type=VIDEO_PT)
            await _until(lambda: call.video.failure is not None, "the phone's failure")
            video = relay.get("fs-other").stream("video")
            assert video is not None and video.state is CallState.FAILED
            assert "ZID" in video.reason and call.video.secured is None
            assert relay.get("fs-other").state is CallState.SECURE  # the audio stays
        finally:
            call.close()
            await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_held_video_commit_never_becomes_a_calls_first_stream() -> None:
    """The port with a held Mult Commit is named as another call's first stream:
    that exchange is set aside unanswered (no Error, no keys), the call starts clean."""

    async def scenario() -> None:
        call = await _audio_secured("fs-a", required_timeout=10.0)
        relay = call.relay
        try:
            _start_video(call)
            await _relay_took_the_commit(call)
            report = await relay.create("fs-b", call.video_port, Policy.REQUIRED)
            assert report.state is CallState.PENDING and report.phone == ""
            mirror = _mirror(relay, call.video_port)
            assert mirror.counters.phone_in == 0  # nothing carried over
            sent = len(call.video.sent)
            await _until(lambda: mirror.heard() >= 1, "the phone's next Commit")
            assert len(call.video.sent) > sent  # the phone retransmits: never answered
            assert "Error" not in call.video.kinds(call.video.received)
            assert relay.get("fs-b").state is CallState.PENDING
        finally:
            call.close()
            await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_dh_exchange_begun_on_the_port_is_never_adopted_as_a_stream() -> None:
    """A DH Commit (not Mult) reached the pre-bound port before the name: named as
    the call's video, that exchange is set aside; the stream is keyed by
    Multistream or not at all, so under required it fails and carries nothing."""

    async def scenario() -> None:
        call = await _audio_secured("fs-dh", required_timeout=1.5)
        relay = call.relay
        try:
            call.video.start(ZrtpConnection(ZrtpConfiguration(zid=call.configuration.zid), ssrc=3))
            await _relay_took_the_commit(call)
            await relay.add_stream("fs-dh", "video", call.video_port, payload_type=VIDEO_PT)
            mirror = _mirror(relay, call.video_port)
            assert mirror.counters.phone_in == 0  # set aside
            await _until(
                lambda: relay.get("fs-dh").stream("video").state is CallState.FAILED,  # type: ignore[union-attr]
                "the video's policy time-out",
            )
            assert call.video.secured is None
            video = relay.get("fs-dh").stream("video")
            assert video is not None and video.counters["pbx_out"] == 0
        finally:
            call.close()
            await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_video_stream_that_waits_for_our_commit_is_never_keyed_by_dh_before_the_name() -> None:
    """Linphone's video stream waits for the relay's Commit (seen on real
    FreeSWITCH). An unclaimed port's engine commits by DH once the wait for the
    name (cache_timeout) is over, so a phone that never gets named still secures;
    toward a phone that has a secure call here that would key its video by a DH
    exchange of its own (a SAS nobody compares). It waits for the name instead,
    then keys the stream by Multistream."""

    async def scenario() -> None:
        call = await _audio_secured("fs-wait", required_timeout=10.0, cache_timeout=0.2)
        relay = call.relay
        try:
            _start_video(call, role="responder", responder_commit_wait=60.0)
            mirror = _mirror(relay, call.video_port)
            await _until(lambda: mirror._engine is not None, "the unclaimed engine")
            engine = mirror._engine
            assert engine is not None
            # The wait for the name is over (its lookup gave up): before the fix,
            # the engine sent its DH Commit right then.
            await _until(lambda: engine.stats["cache_errors"] > 0, "the name's time-out")
            await asyncio.sleep(0)
            # (before the fix: COMMIT_SENT, its DH Commit kept from the phone only by
            # the amplification guard's byte budget; named, the port was set aside
            # and the phone's video stalled: it had taken the old engine's Hello)
            assert engine.state is State.DISCOVERY
            phone = call.video
            assert "Commit" not in phone.kinds(phone.received), phone.kinds(phone.received)
            assert phone.secured is None and phone.failure is None
            assert sum(len(d) for d in phone.received) <= sum(len(d) for d in phone.sent)
            await relay.add_stream("fs-wait", "video", call.video_port, payload_type=VIDEO_PT)
            await _until(lambda: phone.secured is not None, "the video stream")
            assert phone.secured is not None and phone.secured.multistream
            video = relay.get("fs-wait").stream("video")
            assert video is not None and video.key_agreement == "Mult"
            assert video.sas == relay.get("fs-wait").sas
        finally:
            call.close()
            await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_second_call_of_the_same_phone_named_late_still_secures_by_dh() -> None:
    """The same phone's second call (its own DH exchange, no session) reaches an
    unclaimed port and waits for our Commit: held like a possible video stream
    past the name's time-out, it goes on by DH once named as a call."""

    async def scenario() -> None:
        call = await _audio_secured("fs-one", required_timeout=10.0, cache_timeout=0.2)
        relay = call.relay
        try:
            configuration = replace(
                call.configuration, role="responder", responder_commit_wait=60.0
            )
            call.video.start(ZrtpConnection(configuration, ssrc=0x3333))  # a new call's audio
            mirror = _mirror(relay, call.video_port)
            await _until(lambda: mirror._engine is not None, "the unclaimed engine")
            engine = mirror._engine
            assert engine is not None
            await _until(lambda: engine.stats["cache_errors"] > 0, "the name's time-out")
            await asyncio.sleep(0)
            assert engine.state is State.DISCOVERY
            report = await relay.create("fs-two", call.video_port, Policy.REQUIRED)
            assert report.call_id == "fs-two"
            second = call.video
            await _until(lambda: second.secured is not None, "the second call")
            assert second.secured is not None and not second.secured.multistream
            assert relay.get("fs-two").key_agreement != "Mult"
            assert relay.get("fs-two").state is CallState.SECURE
        finally:
            call.close()
            await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
