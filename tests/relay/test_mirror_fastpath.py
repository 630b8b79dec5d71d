"""Secured calls whose steady state runs in the native fast path (fastpath.py)."""

from __future__ import annotations

import asyncio
import os

import pytest

from pbx_zrtp.calls import Policy
from pbx_zrtp.endpoint import EndpointOptions, run_endpoint
from pbx_zrtp.relay.fastpath import available
from pbx_zrtp.srtp import SrtpContext
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from pbx_zrtp.zrtp.events import SrtpKeys
from tests.relay.helpers import (
    PHONE_HOST,
    RELAY_HOST,
    EchoPbx,
    assert_echoed_back,
    create_call,
    make_relay,
    rtcp_sr,
)
from tests.relay.test_fastpath_security import NETS, Net

_REASON = available()
if _REASON is not None:
    if os.environ.get("CI"):
        raise RuntimeError(f"the fast path must work in CI: {_REASON}")
    pytest.skip(f"fast path unavailable: {_REASON}", allow_module_level=True)


@pytest.mark.parametrize("cipher", ["AES1", "AES3"])
@pytest.mark.parametrize("net", NETS)
def test_secured_call_runs_natively_srtp_rtcp_and_teardown(net: Net, cipher: str) -> None:
    """IPv4 and IPv6 (relay.address ::2, in a namespace), AES-128 and AES-256."""

    async def scenario() -> None:
        ciphers = tuple(dict.fromkeys((cipher.encode(), b"AES1")))
        relay = make_relay(fastpath=True, relay_host=net.relay, pbx_host=net.pbx, ciphers=ciphers)
        await relay.start()
        port = await create_call(relay, "fast-1", Policy.REQUIRED)
        pbx = EchoPbx(port, host=net.pbx)
        await pbx.start()
        try:
            stray, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=(net.phone, 0)
            )
            stray.sendto(b"runt", (net.relay, port))  # one drop counted before going native
            await asyncio.sleep(0.05)
            stray.close()
            bound: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()
            phone = await run_endpoint(
                ZrtpConfiguration(zid=b"N" * 12, cipher_types=(cipher.encode(),)),
                EndpointOptions(
                    bind=(net.phone, 0), peer=(net.relay, port), srtp_count=50, timeout=10
                ),
                ready=bound,
            )
            mirror = next(iter(relay.mirrors()))
            # every packet came back; the echo PBX may also have echoed a priming packet
            # that crossed the hand-over, which the phone rightly accepts too
            primed = mirror.counters.priming_sent
            assert phone["ok"] and 50 <= phone["srtp"]["received_ok"] <= 50 + primed
            assert mirror.fast.handle is not None  # the steady state ran in C
            report = relay.get("fast-1")
            assert report.state == "secure" and report.cipher == phone["cipher"] == cipher
            assert report.phone == net.where(*bound.result())
            assert report.counters["phone_in"] >= 50 and report.counters["pbx_in"] >= 50
            # RTCP from the phone still reaches the PBX (Python path, port P+1)
            keys = SrtpKeys(
                phone["cipher"],
                phone["auth_tag"],
                bytes.fromhex(phone["srtp_self_key"]),
                bytes.fromhex(phone["srtp_self_salt"]),
                bytes.fromhex(phone["srtp_peer_key"]),
                bytes.fromhex(phone["srtp_peer_salt"]),
            )
            srtcp = SrtpContext(keys).protect(rtcp_sr())
            assert srtcp is not None
            transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=(net.phone, 0)
            )
            transport.sendto(srtcp, (net.relay, port + 1))
            await asyncio.sleep(0.2)
            transport.close()
            assert pbx.rtcp_received == [rtcp_sr()]
            before = relay.get("fast-1").counters
            final = relay.delete("fast-1")
            assert final.last_state == "secure" and final.counters["phone_in"] >= 50
            # folding the worker's counters back in neither loses nor doubles any
            assert final.counters["drops"]["runt"] == 1
            assert final.counters["phone_in"] == before["phone_in"]
            assert mirror.fast.handle is None  # detached on hangup
        finally:
            pbx.close()
            await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_many_fast_calls_and_a_zrtp_retransmission_is_punted_to_the_engine() -> None:
    async def scenario() -> None:
        # Eight handshakes in this one process: the relay waits as long as the phones
        # (its 3 s default failed one call in CI's run before its phone's Hello came).
        relay = make_relay(fastpath=True, required_timeout=15.0)
        await relay.start()
        ports = [await create_call(relay, f"f{i}", Policy.REQUIRED) for i in range(8)]
        pbxs = [EchoPbx(p) for p in ports]
        for p in pbxs:
            await p.start()
        try:
            results = await asyncio.gather(
                *[
                    run_endpoint(
                        ZrtpConfiguration(zid=bytes([i + 1]) * 12),
                        EndpointOptions(
                            bind=(PHONE_HOST, 0), peer=(RELAY_HOST, port), srtp_count=30, timeout=15
                        ),
                    )
                    for i, port in enumerate(ports)
                ]
            )
            for i, result in enumerate(results):
                assert_echoed_back(result, 30, relay, f"f{i}")
            assert all(m.fast.handle is not None for m in relay.mirrors())
            # a ZRTP packet arriving on a fast call goes back to the Python engine
            mirror = next(m for m in relay.mirrors() if m.identity and m.identity.call_id == "f0")
            assert mirror._engine is not None
            before = mirror._engine.stats["received"] + mirror._engine.stats["ignored"]
            hello = bytes.fromhex("10000001") + b"ZRTP" + bytes(4) + b"garbage" * 4
            transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=(PHONE_HOST, 0)
            )
            transport.sendto(hello, (RELAY_HOST, ports[0]))
            await asyncio.sleep(0.2)
            transport.close()
            stats = relay.get("f0").counters["drops"]
            after = mirror._engine.stats
            assert after["dropped_bad_crc"] + after["received"] + after["ignored"] > before or (
                stats.get("wrong_source", 0) >= 1
            )
        finally:
            for p in pbxs:
                p.close()
            await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_calls_spread_over_several_native_workers() -> None:
    async def scenario() -> None:
        relay = make_relay(fastpath=2)
        await relay.start()
        ports = [await create_call(relay, f"w{i}", Policy.REQUIRED) for i in range(6)]
        pbxs = [EchoPbx(p) for p in ports]
        for p in pbxs:
            await p.start()
        try:
            results = await asyncio.gather(
                *[
                    run_endpoint(
                        ZrtpConfiguration(zid=bytes([i + 40]) * 12),
                        EndpointOptions(
                            bind=(PHONE_HOST, 0), peer=(RELAY_HOST, port), srtp_count=20, timeout=15
                        ),
                    )
                    for i, port in enumerate(ports)
                ]
            )
            for i, result in enumerate(results):
                assert_echoed_back(result, 20, relay, f"w{i}")
            workers = {id(m.fastpath) for m in relay.mirrors() if m.fast.handle is not None}
            assert len(workers) == 2 and len(relay.fastpaths) == 2
        finally:
            for p in pbxs:
                p.close()
            await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_counters_plus_adds_the_workers_counters_once() -> None:
    from collections import Counter

    from pbx_zrtp.relay.mirror import Counters

    mine = Counters(phone_in=3, pbx_out=2, drops=Counter({"runt": 1, "srtp_auth": 2}))
    total = mine.plus(
        {"phone_in": 10, "pbx_out": 9, "phone_in_bytes": 1720, "srtp_auth": 1, "punted": 4}
    )
    assert (total.phone_in, total.pbx_out, total.phone_in_bytes) == (13, 11, 1720)
    assert total.drops == Counter({"runt": 1, "srtp_auth": 3})
    assert mine.phone_in == 3 and mine.drops["srtp_auth"] == 2  # a new object
