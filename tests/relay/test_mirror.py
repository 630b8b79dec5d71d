"""A call through a mirror on loopback: phone (our engine) -> relay -> echo PBX."""

from __future__ import annotations

import asyncio

from pbx_zrtp.endpoint import EndpointOptions, run_endpoint
from pbx_zrtp.relay.mirror import Policy
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from tests.relay.helpers import (
    PHONE_HOST,
    RELAY_HOST,
    EchoPbx,
    Recorder,
    create_call,
    make_relay,
)


def test_secured_call_through_a_mirror_srtp_both_ways() -> None:
    async def scenario() -> None:
        relay = make_relay()
        await relay.start()
        recorder = Recorder(relay)
        port = await create_call(
            relay, "call-1", Policy.REQUIRED, self_uri="sip:100@pbx", peer_uri="sip:phone@lan"
        )
        pbx = EchoPbx(port)
        await pbx.start()
        try:
            phone = await run_endpoint(
                ZrtpConfiguration(zid=b"P" * 12),
                EndpointOptions(
                    bind=(PHONE_HOST, 0), peer=(RELAY_HOST, port), srtp_count=20, timeout=10
                ),
            )
            report = relay.get("call-1")
            assert report.state == "secure"
            assert phone["sas"] == report.sas and report.sas_type == phone["sas_type"]
            # SRTP from the phone was decrypted, echoed by the PBX in the clear and
            # re-encrypted toward the phone: every packet authenticated end to end.
            assert phone["srtp"]["received_ok"] == 20
            assert len(pbx.received) >= 20  # clear RTP on the PBX side (plus priming)
            assert recorder.states("call-1")[:2] == ["pending", "secure"]
            assert report.peer_zid == (b"P" * 12).hex()
        finally:
            await relay.close()
            pbx.close()

    asyncio.run(scenario())
