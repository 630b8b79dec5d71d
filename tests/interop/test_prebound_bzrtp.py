"""A bzrtp phone (Linphone's ZRTP library) on a pre-bound port (issue 13, item 2).

Before the adapter names a pre-bound port's call the relay answers its source
with at most the bytes it sent (no Hello schedule). A genuine ZRTP phone must
still secure: when the call is never named (the prebind policy governs), and
when the adapter names it while the exchange runs (the exchange is adopted).
"""

from __future__ import annotations

import asyncio
import pathlib

import pytest

from pbx_zrtp.relay.mirror import Policy
from tests.relay.helpers import (
    PHONE_HOST,
    RELAY_HOST,
    EchoPbx,
    Recorder,
    free_even_port,
    make_relay,
)

from .bzrtp_build import finish, run_bzrtp_peer

pytestmark = pytest.mark.interop


@pytest.mark.parametrize("named", [False, True])
def test_bzrtp_phone_secures_on_a_prebound_port(bzrtp_peer_bin: pathlib.Path, named: bool) -> None:
    async def scenario() -> None:
        port = free_even_port()
        relay = make_relay(prebind=(port,))
        await relay.start()
        recorder = Recorder(relay)
        pbx = EchoPbx(port)
        await pbx.start()
        try:
            proc = run_bzrtp_peer(
                bzrtp_peer_bin,
                [
                    *("--bind", f"{PHONE_HOST}:0", "--peer", f"{RELAY_HOST}:{port}"),
                    *("--srtp", "20", "--timeout", "10"),
                ],
            )
            loop = asyncio.get_running_loop()
            waiting = loop.run_in_executor(None, finish, proc, 20.0)
            call_id = f"port-{port}"
            if named:  # FreeSWITCH's CHANNEL_ANSWER reaches the adapter after the Hello
                mirror = next(m for m in relay.mirrors() if m.port == port)
                await recorder.wait_for(lambda: mirror.speaks_zrtp)
                await relay.create("fs-bz", port, Policy.REQUIRED)
                call_id = "fs-bz"
            phone = await waiting
            assert phone["ok"], phone.get("error")
            await recorder.wait_for(lambda: "secure" in recorder.states(call_id))
            report = relay.get(call_id)
            assert report.sas == phone["sas"]
            assert phone["srtp"]["received_ok"] == 20, phone["srtp"]
        finally:
            pbx.close()
            await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


VIDEO_PT = 96


@pytest.mark.parametrize("fast", [False, True])
def test_bzrtp_video_reaches_its_prebound_port_before_the_name(
    bzrtp_peer_bin: pathlib.Path, fast: bool
) -> None:
    """Linphone's way (bzrtp_addChannel once audio is secure) on FreeSWITCH's
    pre-bound ports, the adapter naming the video port only once bzrtp's video
    exchange has run as far as it can without a session: the stream is then
    keyed by Multistream under the call's SAS and carries SRTP both ways."""

    async def scenario() -> None:
        port, video_port = free_even_port(), free_even_port()
        relay = make_relay(prebind=(port, video_port), fastpath=fast, required_timeout=10.0)
        await relay.start()
        audio_pbx, video_pbx = EchoPbx(port), EchoPbx(video_port)
        await audio_pbx.start()
        await video_pbx.start()
        try:
            await relay.create("fs-bzv", port, Policy.REQUIRED)
            proc = run_bzrtp_peer(
                bzrtp_peer_bin,
                [
                    *("--bind", f"{PHONE_HOST}:0", "--peer", f"{RELAY_HOST}:{port}"),
                    *("--ms-bind", f"{PHONE_HOST}:0", "--ms-peer", f"{RELAY_HOST}:{video_port}"),
                    *("--ms-pt", str(VIDEO_PT), "--srtp", "20", "--timeout", "15"),
                ],
            )
            loop = asyncio.get_running_loop()
            waiting = loop.run_in_executor(None, finish, proc, 25.0)
            mirror = next(m for m in relay.mirrors() if m.port == video_port)
            recorder = Recorder(relay)

            def held() -> bool:  # bzrtp's video Hello accepted, its Mult Commit (if any) held
                engine = mirror._engine
                return engine is not None and (
                    engine.holds_multistream_commit or engine.awaits_session
                )

            await recorder.wait_for(held, timeout=15)
            engine = mirror._engine
            assert engine is not None
            await recorder.wait_for(lambda: engine.holds_multistream_commit, timeout=5)
            assert mirror.counters.phone_out_bytes <= mirror.counters.phone_in_bytes
            await relay.add_stream("fs-bzv", "video", video_port, payload_type=VIDEO_PT)
            phone = await waiting
            assert phone["ok"], phone.get("error")
            ms = phone["multistream"]
            assert ms["ok"] and ms["key_agreement"] == "Mult", ms
            report = relay.get("fs-bzv")
            video = report.stream("video")
            assert video is not None and video.state.value == "secure", video
            assert video.key_agreement == "Mult" and video.sas == report.sas == phone["sas"]
            assert ms["srtp"]["received_ok"] >= 20 and ms["srtp"]["received_bad"] == 0, ms
            assert len([d for d in video_pbx.received if d[1] & 0x7F == VIDEO_PT]) >= 20
            assert [c.call_id for c in relay.calls()] == ["fs-bzv"]
        finally:
            audio_pbx.close()
            video_pbx.close()
            await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
