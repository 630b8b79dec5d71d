"""A post-quantum (KEM-mode, fragmented) call through a mirror on loopback."""

from __future__ import annotations

import asyncio

from pbx_zrtp.asterisk.adapter import variables_for
from pbx_zrtp.endpoint import EndpointOptions, run_endpoint
from pbx_zrtp.freeswitch.adapter import variables_for as freeswitch_variables
from pbx_zrtp.relay.mirror import Policy
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from tests.relay.helpers import (
    PHONE_HOST,
    RELAY_HOST,
    EchoPbx,
    assert_echoed_back,
    create_call,
    pq_relay,
)


def test_fragmented_pq_handshake_through_a_required_mirror_srtp_both_ways() -> None:
    """The phone's X448+ML-KEM-1024 Commit and the relay's DHPart1 only fit the MTU
    as fragments (first byte 0x11): the mirror must hand them to its engine."""

    async def scenario() -> None:
        relay = pq_relay(required_timeout=5.0)
        await relay.start()
        port = await create_call(
            relay, "pq-1", Policy.REQUIRED, self_uri="sip:100@pbx", peer_uri="sip:phone@lan"
        )
        pbx = EchoPbx(port)
        await pbx.start()
        try:
            phone = await run_endpoint(
                ZrtpConfiguration(
                    zid=b"Q" * 12,
                    key_agreement_types=(b"X3M3",),
                    hash_types=(b"S512",),
                    pq_required=True,
                ),
                EndpointOptions(
                    bind=(PHONE_HOST, 0), peer=(RELAY_HOST, port), srtp_count=10, timeout=10
                ),
            )
            assert phone["ok"], phone
            report = relay.get("pq-1")
            assert report.state == "secure"
            assert phone["key_agreement"] == "X3M3"
            assert phone["sas"] == report.sas
            assert_echoed_back(phone, 10, relay, "pq-1")
            assert report.pq
            variables = variables_for(report, Policy.REQUIRED)
            assert variables["ZRTP_PQ"] == "1" and variables["ZRTP_KEY_AGREEMENT"] == "X3M3"
            assert freeswitch_variables(report, Policy.REQUIRED)["pbx_zrtp_pq"] == "true"
            # The same relay with a DH-only phone: DH, and the flag says so.
            port2 = await create_call(relay, "dh-1", Policy.REQUIRED)
            pbx2 = EchoPbx(port2)
            await pbx2.start()
            try:
                dh_phone = await run_endpoint(
                    ZrtpConfiguration(zid=b"D" * 12, key_agreement_types=(b"X255", b"DH3k")),
                    EndpointOptions(
                        bind=(PHONE_HOST, 0), peer=(RELAY_HOST, port2), srtp_count=5, timeout=10
                    ),
                )
            finally:
                pbx2.close()
            assert dh_phone["ok"] and dh_phone["key_agreement"] == "X255"
            dh_report = relay.get("dh-1")
            assert not dh_report.pq
            assert variables_for(dh_report, Policy.REQUIRED)["ZRTP_PQ"] == "0"
        finally:
            await relay.close()
            pbx.close()

    asyncio.run(scenario())
