"""Relay bookkeeping: ports, pre-bound mirrors, totals, subscriptions, validation."""

from __future__ import annotations

import asyncio

import pytest

from pbx_zrtp.calls import Policy
from pbx_zrtp.endpoint import EndpointOptions, run_endpoint
from pbx_zrtp.relay.core import RelayError
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from tests.relay.helpers import (
    PHONE_HOST,
    RELAY_HOST,
    EchoPbx,
    Recorder,
    assert_echoed_back,
    create_call,
    free_even_port,
    make_relay,
)


def test_delete_then_create_on_the_same_port() -> None:
    async def scenario() -> None:
        relay = make_relay()
        port = await create_call(relay, "a", Policy.OFF)
        for i in range(20):
            relay.delete("a" if i == 0 else f"a{i}")
            await relay.create(f"a{i + 1}", port, Policy.OFF)
        assert [c.call_id for c in relay.calls()] == ["a20"]
        await relay.close()

    asyncio.run(scenario())


def test_ended_totals_keep_the_state_reached() -> None:
    async def scenario() -> None:
        relay = make_relay(required_timeout=0.5)
        recorder = Recorder(relay)
        await create_call(relay, "dead", Policy.REQUIRED)
        await create_call(relay, "off", Policy.OFF)
        await recorder.wait_for(lambda: "failed" in recorder.states("dead"))
        final = relay.delete("dead")
        relay.delete("off")
        assert final.state == "ended" and final.last_state == "failed"
        assert relay.stats()["ended"] == {"failed": 1, "off": 1}
        await relay.close()

    asyncio.run(scenario())


def test_invalid_requests_are_refused_with_a_reason() -> None:
    async def scenario() -> None:
        relay = make_relay()
        port = free_even_port()
        with pytest.raises(RelayError, match="not an IP address"):
            await relay.create("x", port, Policy.OFF, pbx_host="pbx.example")
        with pytest.raises(RelayError, match="odd"):
            await relay.create("x", port + 1, Policy.OFF)
        with pytest.raises(RelayError, match="payload_type"):
            await relay.create("x", port, Policy.OFF, payload_type=9)
        await relay.create("x", port, Policy.OFF, pbx_host="127.0.0.3")
        with pytest.raises(RelayError, match="already has a mirror"):
            await relay.create("x", port, Policy.OFF)
        with pytest.raises(RelayError, match="already mirrored"):
            await relay.create("y", port, Policy.OFF)
        with pytest.raises(RelayError, match="no call"):
            relay.delete("nope")
        with pytest.raises(RelayError, match="not secure"):
            relay.verify("x")
        await relay.close()

    asyncio.run(scenario())


def test_a_stuck_subscriber_is_cut_off_and_its_stream_ends() -> None:
    async def scenario() -> None:
        relay = make_relay()
        sub = relay.subscribe()
        port = await create_call(relay, "c0", Policy.OFF)
        for i in range(1200):  # more events than the queue holds, nobody reading
            relay.delete(f"c{i}")
            await relay.create(f"c{i + 1}", port, Policy.OFF)
        assert sub.overflowed
        events = [e async for e in sub]  # must terminate
        assert events == []
        await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_prebound_port_carries_media_before_the_adapter_names_the_call() -> None:
    """FreeSWITCH: the port is known only as the SDP leaves; the relay pre-binds it,
    applies its default policy to early media, and the adapter names the call later."""

    async def scenario() -> None:
        port = free_even_port()
        relay = make_relay(prebind=(port,), prebind_policy=Policy.REQUIRED)
        await relay.start()
        recorder = Recorder(relay)
        pbx = EchoPbx(port)
        await pbx.start()
        try:
            phone_task = asyncio.ensure_future(
                run_endpoint(
                    ZrtpConfiguration(zid=b"F" * 12),
                    EndpointOptions(
                        bind=(PHONE_HOST, 0), peer=(RELAY_HOST, port), srtp_count=10, timeout=10
                    ),
                )
            )
            await recorder.wait_for(lambda: bool(recorder.states(f"port-{port}")))
            report = await relay.create("fs-uuid-1", port, Policy.REQUIRED, self_uri="sip:1000@fs")
            assert report.call_id == "fs-uuid-1"
            phone = await phone_task
            assert_echoed_back(phone, 10, relay, "fs-uuid-1")
            assert relay.get("fs-uuid-1").state == "secure"
            final = relay.delete("fs-uuid-1")
            assert final.last_state == "secure"
            # the port stays bound for the next call, idle
            assert port in {m.port for m in relay.mirrors()}
            assert relay.calls() == []
        finally:
            pbx.close()
            await relay.close()

    asyncio.run(scenario())


def test_every_pending_report_says_when_the_relay_decides() -> None:
    """Issue 13 defect 9: the adapters write ``decides_in`` as the dialplan's wait
    (ZRTP_TIMEOUT). The first `pending` report, pushed to listeners as the state
    changes, carried none (the time-out was armed after it), and the Asterisk
    adapter wrote ZRTP_TIMEOUT="" right after "6" on real Asterisk. Every pending
    report carries it, a policy change re-arms it, and a decided call has none."""

    async def scenario() -> None:
        relay = make_relay(optional_timeout=4.0, required_timeout=9.0)
        await relay.start()
        recorder = Recorder(relay)
        port = await create_call(relay, "c1", Policy.OPTIONAL)
        relay.update("c1", policy=Policy.REQUIRED)
        pending = [e for e in recorder.events if e.call_id == "c1" and e.state == "pending"]
        assert len(pending) == 2, recorder.events
        assert pending[0].decides_in is not None and 0 < pending[0].decides_in <= 4.0
        assert pending[1].decides_in is not None and 4.0 < pending[1].decides_in <= 9.0
        assert relay.get("c1").decides_in is not None
        off = await create_call(relay, "c2", Policy.OFF)
        assert off != port and relay.get("c2").decides_in is None
        await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))
