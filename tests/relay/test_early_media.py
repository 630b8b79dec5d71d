"""Early media under ``required``: audio the PBX sends before the phone has done ZRTP
(a 183 with Playback before Answer, a far end's ringback) never reaches the phone in
the clear; once the call is secure it does, as SRTP.

Real sockets on loopback, as tests/relay/test_fastpath_security.py: the PBX plays a
numbered stream from the moment the relay knows the call; the phone sends clear RTP
(as Linphone does while it offers ZRTP) and only then starts ZRTP. Fast path on and
off; the call named by the adapter before any media, with the phone's SDP address
(``phone_hint``), or only after media reached a pre-bound port (FreeSWITCH).
"""

from __future__ import annotations

import asyncio
import struct

import pytest

from pbx_zrtp.relay.mirror import Policy
from tests.relay.helpers import (
    PHONE_HOST,
    RELAY_HOST,
    EchoPbx,
    create_call,
    free_even_port,
    make_relay,
)
from tests.relay.test_fastpath_security import FAST, PBX_SSRC, PHONE_SSRC, Phone, rtp, until

MODES = ["created", "hinted", "prebound"]


class LatePhone(Phone):
    """A phone whose ZRTP starts late: until ``start`` it ignores the relay's Hellos."""

    started = False

    def start(self) -> None:
        self.started = True
        super().start()

    def zrtp(self, data: bytes) -> None:
        if self.started:
            super().zrtp(data)


EARLY = b"EARLY MEDIA "  # the PBX's payloads start with this, then the packet number


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fast", FAST)
def test_early_media_reaches_the_phone_only_as_srtp(fast: bool, mode: str) -> None:
    async def scenario() -> None:
        prebound = free_even_port() if mode == "prebound" else None
        relay = make_relay(
            fastpath=fast,
            required_timeout=20.0,
            prebind=(prebound,) if prebound else (),
            prebind_policy=Policy.REQUIRED,
        )
        await relay.start()
        phone = LatePhone((RELAY_HOST, 0), PHONE_HOST)
        sock = await phone.open()
        if prebound is not None:
            port = prebound
        elif mode == "hinted":
            port = await create_call(relay, "call", Policy.REQUIRED, phone_hint=sock.address())
        else:
            port = await create_call(relay, "call", Policy.REQUIRED)
        phone.peer = (RELAY_HOST, port)
        mirror = next(m for m in relay.mirrors() if m.port == port)
        pbx = EchoPbx(port, echo=False)
        await pbx.start()
        sent = 0
        playing = True

        async def play() -> None:  # the PBX's early media, every 10 ms, until told to stop
            nonlocal sent
            while playing:
                sent += 1
                body = EARLY + sent.to_bytes(4, "big") + bytes(144)
                pbx.transports[0].sendto(
                    rtp(sent, PBX_SSRC, body), (RELAY_HOST, mirror.pbx_side_port)
                )
                await asyncio.sleep(0.01)

        player = asyncio.ensure_future(play())
        try:
            await asyncio.sleep(0.2)  # early media before the phone sends anything
            for n in range(1, 6):  # clear RTP from the phone, before ZRTP
                sock.transport.sendto(rtp(n, PHONE_SSRC, b"CLEAR PHONE " + bytes(148)), phone.peer)
                await asyncio.sleep(0.02)
            if prebound is not None:  # the adapter names the call once media flows
                await until(lambda: mirror.identity is not None)
                await relay.create("call", port, Policy.REQUIRED)
            await asyncio.sleep(0.2)
            report = relay.get("call")
            assert report.state == "pending"
            blocked = report.counters["drops"].get("clear_blocked", 0)
            assert blocked >= 10, report.counters  # early media so far, the phone's clear RTP
            assert sock.media == []  # nothing but ZRTP has reached the phone yet
            phone.start()
            await until(lambda: phone.srtp is not None)
            first = phone.audio(1)[0][1]  # completes the relay if it is the initiator
            sock.transport.sendto(first, phone.peer)
            await until(lambda: relay.get("call").state == "secure")
            await until(lambda: len(sock.media) >= 20)  # the early media, now as SRTP
        finally:
            playing = False
            await player
        try:
            srtp = phone.srtp
            assert srtp is not None
            numbers = []
            for datagram in sock.media:  # every one authenticates: none was clear
                plain = srtp.unprotect(datagram)
                assert plain is not None, f"not SRTP: {datagram[:24]!r}"
                assert plain[12 : 12 + len(EARLY)] == EARLY
                numbers.append(struct.unpack("!I", plain[24:28])[0])
            assert numbers == sorted(numbers) and numbers[-1] <= sent
            assert numbers[0] > 20  # the first ~20 early packets (before secure) never went
            report = relay.get("call")
            assert report.state == "secure"
            drops = report.counters["drops"]
            if prebound is None:  # every early packet before secure was dropped, counted
                assert drops.get("clear_blocked", 0) >= numbers[0] - 1
            else:  # the call's counters start when the adapter names it (a clean start)
                assert drops.get("clear_blocked", 0) >= 1
            # and nothing clear from the phone reached the PBX
            assert not any(b"CLEAR PHONE" in d for d in pbx.received)
            assert (mirror.fast.handle is not None) is fast
        finally:
            phone.close()
            pbx.close()
            await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
