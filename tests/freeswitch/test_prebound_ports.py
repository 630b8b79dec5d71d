"""FreeSWITCH's pre-bound ports between calls (issue 13, item 1), through the adapter.

Field report: a stray datagram between calls left the port's unclaimed call
``failed`` forever, and the next call FreeSWITCH placed there inherited it: a
``required`` call was hung up right after its 200 OK. Here: the fake ESL (real
FreeSWITCH 1.10 behaviour), a real relay with pre-bound ports, real sockets, a
real ZRTP phone (our engine).
"""

from __future__ import annotations

import asyncio
import socket

from pbx_zrtp.endpoint import EndpointOptions, run_endpoint
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from tests.freeswitch.test_adapter import SETTLED, _until, lab, phone, run
from tests.relay.helpers import PHONE_HOST, RELAY_HOST, rtp

STRAY_HOST = "127.0.0.6"


def test_strays_between_calls_do_not_poison_the_next_required_call() -> None:
    """Stray packets on every free pre-bound port; their unclaimed calls fail their
    time-out; the next required calls land on those ports and are secured."""

    async def scenario() -> None:
        async with lab(calls=2, required_timeout=0.6, hangup_failed_after=0.1) as t:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stray:
                stray.bind((STRAY_HOST, 0))
                for port in t.free_ports:
                    stray.sendto(rtp(1), (RELAY_HOST, port))
                await _until(lambda: len(t.relay.calls()) == 2)
                await _until(lambda: all(c.state == "failed" for c in t.relay.calls()))
                # Still sending (a plain phone after its BYE) on the first port.
                stray.sendto(rtp(2), (RELAY_HOST, t.free_ports[-1]))
                for _ in range(2):
                    channel, port = await t.call("required")
                    result, state = await asyncio.gather(
                        phone(port), channel.wait_for_var("pbx_zrtp_state", SETTLED, 10)
                    )
                    assert state == "secure" and result["ok"], (port, state)
                    assert channel.alive and channel.variables["pbx_zrtp_sas"] == result["sas"]
                    await channel.hangup()
            await _until(lambda: not t.relay.calls())  # strays and calls all gone

    run(scenario())


def test_a_call_hung_up_at_once_leaves_a_clean_port_for_the_next_one() -> None:
    """Hung up right after answering: the phone's ZRTP only reaches the port after
    FreeSWITCH's BYE (and completes with the unclaimed port). The port returns to
    idle once the phone stops, and a later call there is secured with its own phone."""

    async def scenario() -> None:
        async with lab(calls=1) as t:
            channel, port = await t.call("required")
            await _until(lambda: bool(t.relay.calls()))
            await channel.hangup()
            await _until(lambda: not t.relay.calls() and not t.adapter.calls)
            late = await run_endpoint(  # the old call's phone, still going after the BYE
                ZrtpConfiguration(zid=b"Z" * 12),
                EndpointOptions(bind=(PHONE_HOST, 0), peer=(RELAY_HOST, port), srtp_count=5),
            )
            assert late["ok"] and [c.call_id for c in t.relay.calls()] == [f"port-{port}"]
            await _until(lambda: not t.relay.calls(), timeout=10)  # back to idle on its own
            t.pbxs.pop().close()  # FreeSWITCH closes the call's RTP socket...
            await asyncio.sleep(0.05)  # (transports close on the loop's next turns)
            t.free_ports.append(port)  # ...and later gives the same port to another call
            channel, again = await t.call("required")
            assert again == port
            result, state = await asyncio.gather(
                phone(port, zid=b"N" * 12), channel.wait_for_var("pbx_zrtp_state", SETTLED, 10)
            )
            assert state == "secure" and result["ok"]
            assert channel.variables["pbx_zrtp_peer_zid"] == (b"N" * 12).hex()

    run(scenario())
