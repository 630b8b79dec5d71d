"""The RTCP port R:P+1 is latched by the RTP rules (issue 11, item 7): only the phone's SDP
host; nothing clear latches it where clear media may not flow (``required`` before
secure); once SRTP keys exist only SRTCP that authenticates and is fresh under the live
replay state latches or moves it. Real sockets on loopback, fast path on and off."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pbx_zrtp.endpoint import EndpointOptions, run_endpoint
from pbx_zrtp.relay.core import Relay
from pbx_zrtp.relay.fastpath import available
from pbx_zrtp.relay.mirror import Mirror, Policy
from pbx_zrtp.srtp import SrtpContext
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from pbx_zrtp.zrtp.events import SrtpKeys
from tests.relay.helpers import (
    PHONE_HOST,
    RELAY_HOST,
    EchoPbx,
    create_call,
    make_relay,
    rtcp_sr,
    rtp,
)

STRANGER = "127.0.0.9"

FASTPATH = [
    False,
    pytest.param(True, marks=pytest.mark.skipif(bool(available()), reason="no fast path")),
]

Inbox = asyncio.Queue[tuple[bytes, tuple[str, int]]]


async def udp(host: str) -> tuple[asyncio.DatagramTransport, Inbox]:
    queue: Inbox = asyncio.Queue()

    class Proto(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            queue.put_nowait((data, addr))

    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        Proto, local_addr=(host, 0)
    )
    return transport, queue


async def drain(queue: Inbox, wait: float = 0.2) -> list[bytes]:
    await asyncio.sleep(wait)
    out = []
    while not queue.empty():
        out.append(queue.get_nowait()[0])
    return out


def phone_srtp(result: dict[str, Any]) -> SrtpContext:
    """The phone's own SRTP context (its keys as the endpoint printed them)."""
    return SrtpContext(
        SrtpKeys(
            result["cipher"],
            result["auth_tag"],
            bytes.fromhex(result["srtp_self_key"]),
            bytes.fromhex(result["srtp_self_salt"]),
            bytes.fromhex(result["srtp_peer_key"]),
            bytes.fromhex(result["srtp_peer_salt"]),
        )
    )


def mirror_of(relay: Relay, call_id: str) -> Mirror:
    return next(m for m in relay.mirrors() if m.identity and m.identity.call_id == call_id)


async def secure_phone(port: int, zid: bytes) -> dict[str, Any]:
    result = await run_endpoint(
        ZrtpConfiguration(zid=zid),
        EndpointOptions(bind=(PHONE_HOST, 0), peer=(RELAY_HOST, port), srtp_count=10, timeout=10),
    )
    assert result["ok"], result
    return result


@pytest.mark.parametrize("fastpath", FASTPATH)
def test_clear_rtcp_from_a_stranger_never_latches_a_required_call(fastpath: bool) -> None:
    """Before: the stranger's first packet latched R:P+1 for good, so the phone's
    SRTCP was dropped as wrong_source and the PBX's RTCP went to the stranger."""

    async def scenario() -> None:
        relay = make_relay(fastpath=fastpath)
        await relay.start()
        port = await create_call(relay, "rtcp-req", Policy.REQUIRED)
        pbx = EchoPbx(port)  # echoes RTCP: the PBX's RTCP follows the latch
        await pbx.start()
        stranger, stranger_inbox = await udp(STRANGER)
        phone_rtcp, phone_inbox = await udp(PHONE_HOST)
        try:
            for _ in range(3):
                stranger.sendto(rtcp_sr(ssrc=7), (RELAY_HOST, port + 1))
            await asyncio.sleep(0.1)
            mirror = mirror_of(relay, "rtcp-req")
            assert mirror.phone_rtcp is None and pbx.rtcp_received == []
            assert mirror.counters.drops["clear_blocked"] >= 3  # (and echoed priming)
            ctx = phone_srtp(await secure_phone(port, b"Q" * 12))
            if fastpath:
                assert mirror.fast.handle is not None
            srtcp = ctx.protect(rtcp_sr())
            assert srtcp is not None
            phone_rtcp.sendto(srtcp, (RELAY_HOST, port + 1))
            got = await drain(phone_inbox)
            assert pbx.rtcp_received == [rtcp_sr()]  # decrypted for the PBX
            assert mirror.phone_rtcp == phone_rtcp.get_extra_info("sockname")
            assert [ctx.unprotect(p) for p in got] == [rtcp_sr()]  # the echo, as SRTCP
            # once secure, clear RTCP from the stranger is nothing either
            stranger.sendto(rtcp_sr(ssrc=7), (RELAY_HOST, port + 1))
            assert await drain(stranger_inbox) == []
            assert pbx.rtcp_received == [rtcp_sr()]
        finally:
            stranger.close()
            phone_rtcp.close()
            pbx.close()
            await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


@pytest.mark.parametrize("fastpath", FASTPATH)
def test_only_fresh_authenticated_srtcp_moves_the_rtcp_latch(fastpath: bool) -> None:
    async def scenario() -> None:
        relay = make_relay(fastpath=fastpath)
        await relay.start()
        port = await create_call(relay, "rtcp-move", Policy.REQUIRED)
        pbx = EchoPbx(port)
        await pbx.start()
        first, first_inbox = await udp(PHONE_HOST)
        stranger, stranger_inbox = await udp(STRANGER)
        moved, moved_inbox = await udp(PHONE_HOST)
        try:
            ctx = phone_srtp(await secure_phone(port, b"M" * 12))
            mirror = mirror_of(relay, "rtcp-move")
            # an authentic *SRTP* packet (RTP, not RTCP: e.g. one captured on its way to
            # R:P, which the native worker may have handled) sent to P+1 latches nothing
            srtp_rtp = ctx.protect(rtp(40000, ssrc=0x0A0B0C0D))
            assert srtp_rtp is not None
            stranger.sendto(srtp_rtp, (RELAY_HOST, port + 1))
            await asyncio.sleep(0.1)
            assert mirror.phone_rtcp is None and pbx.rtcp_received == []
            assert mirror.counters.drops["srtcp_auth"] == 1
            captured = ctx.protect(rtcp_sr())
            assert captured is not None
            first.sendto(captured, (RELAY_HOST, port + 1))
            assert len(await drain(first_inbox)) == 1
            assert mirror.phone_rtcp == first.get_extra_info("sockname")
            # a captured SRTCP packet replayed from elsewhere: authentic but not fresh
            stranger.sendto(captured, (RELAY_HOST, port + 1))
            # a forged one, and the SRTP packet again
            stranger.sendto(captured[:-4] + bytes(4), (RELAY_HOST, port + 1))
            stranger.sendto(srtp_rtp, (RELAY_HOST, port + 1))
            assert await drain(stranger_inbox) == []
            assert mirror.phone_rtcp == first.get_extra_info("sockname")
            assert pbx.rtcp_received == [rtcp_sr()]  # the replay never reached the PBX
            assert mirror.counters.drops["wrong_source"] == 3
            # NAT rebinding: the phone's next SRTCP from a new port moves the latch
            fresh = ctx.protect(rtcp_sr())
            assert fresh is not None
            moved.sendto(fresh, (RELAY_HOST, port + 1))
            got = await drain(moved_inbox)
            assert [ctx.unprotect(p) for p in got] == [rtcp_sr()]
            assert mirror.phone_rtcp == moved.get_extra_info("sockname")
            assert mirror.counters.drops["rtcp_relatched"] == 1
            assert pbx.rtcp_received == [rtcp_sr(), rtcp_sr()]
            assert await drain(first_inbox) == []  # the old address hears nothing more
        finally:
            for transport in (first, stranger, moved):
                transport.close()
            pbx.close()
            await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


@pytest.mark.parametrize("fastpath", FASTPATH)
def test_rtcp_from_outside_the_phones_sdp_host_is_dropped(fastpath: bool) -> None:
    async def scenario() -> None:
        relay = make_relay(fastpath=fastpath)
        await relay.start()
        port = await create_call(relay, "rtcp-hint", Policy.OPTIONAL, phone_hint=(PHONE_HOST, 0))
        pbx = EchoPbx(port, echo=False)
        await pbx.start()
        stranger, _ = await udp(STRANGER)
        phone_rtcp, _ = await udp(PHONE_HOST)
        try:
            stranger.sendto(rtcp_sr(ssrc=7), (RELAY_HOST, port + 1))  # clear, optional
            await asyncio.sleep(0.1)
            mirror = mirror_of(relay, "rtcp-hint")
            assert mirror.phone_rtcp is None and pbx.rtcp_received == []
            assert mirror.counters.drops["wrong_source"] == 1
            phone_rtcp.sendto(rtcp_sr(), (RELAY_HOST, port + 1))  # clear from the phone
            await asyncio.sleep(0.1)
            assert pbx.rtcp_received == [rtcp_sr()]  # optional and pending: clear flows
            assert mirror.phone_rtcp == phone_rtcp.get_extra_info("sockname")
        finally:
            stranger.close()
            phone_rtcp.close()
            pbx.close()
            await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))
