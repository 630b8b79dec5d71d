"""A post-quantum (KEM-mode, fragmented) call through a mirror on loopback."""

from __future__ import annotations

import asyncio
import os
from dataclasses import asdict

from pbx_zrtp.asterisk.adapter import variables_for
from pbx_zrtp.cache.memory import MemorySecretCache
from pbx_zrtp.endpoint import EndpointOptions, run_endpoint
from pbx_zrtp.freeswitch.adapter import variables_for as freeswitch_variables
from pbx_zrtp.relay.core import Relay, RelayLayout
from pbx_zrtp.relay.mirror import MirrorSettings, Policy
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from tests.relay.helpers import (
    PBX_HOST,
    PHONE_HOST,
    RELAY_HOST,
    EchoPbx,
    assert_echoed_back,
    create_call,
)


def _pq_relay() -> Relay:
    cache = MemorySecretCache()
    zid = cache.local_zid(lambda: os.urandom(12))

    def zrtp(self_uri: str, peer_uri: str) -> ZrtpConfiguration:
        return ZrtpConfiguration(
            zid=zid,
            mitm=True,
            self_uri=self_uri,
            peer_uri=peer_uri,
            key_agreement_types=(b"X3M3", b"X1M1", b"X255", b"DH3k"),
            hash_types=(b"S256", b"S384", b"S512"),
        )

    settings = MirrorSettings(zrtp=zrtp, cache=cache, required_timeout=5.0)
    return Relay(RelayLayout(RELAY_HOST, PBX_HOST, port_min=1024, port_max=65535), settings)


def test_fragmented_pq_handshake_through_a_required_mirror_srtp_both_ways() -> None:
    """The phone's X448+ML-KEM-1024 Commit and the relay's DHPart1 only fit the MTU
    as fragments (first byte 0x11): the mirror must hand them to its engine."""

    async def scenario() -> None:
        relay = _pq_relay()
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
            variables = variables_for(asdict(report), Policy.REQUIRED)
            assert variables["ZRTP_PQ"] == "1" and variables["ZRTP_KEY_AGREEMENT"] == "X3M3"
            assert freeswitch_variables(asdict(report), Policy.REQUIRED)["pbx_zrtp_pq"] == "true"
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
            assert variables_for(asdict(dh_report), Policy.REQUIRED)["ZRTP_PQ"] == "0"
        finally:
            await relay.close()
            pbx.close()

    asyncio.run(scenario())
