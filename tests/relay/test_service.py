"""The relay service as `pbx-zrtp relay` runs it: control socket, metrics, cache."""

from __future__ import annotations

import asyncio
import os
import pathlib

from pbx_zrtp.endpoint import EndpointOptions, run_endpoint
from pbx_zrtp.relay.config import apply, load_config
from pbx_zrtp.relay.control import ControlClient
from pbx_zrtp.relay.service import RelayService
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from tests.relay.helpers import PBX_HOST, PHONE_HOST, RELAY_HOST, EchoPbx, free_even_port


def test_service_end_to_end_with_metrics_and_verified_sas(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        config = load_config(None)
        apply(
            config,
            {
                "relay": {"address": RELAY_HOST, "pbx_address": PBX_HOST, "ports": "1024-65534"},
                "cache": {"path": str(tmp_path / "cache.db")},
                "control": {"socket": str(tmp_path / "control.sock")},
                "metrics": {"listen": "127.0.0.1:0"},
            },
        )
        service = RelayService(config)
        await service.start()
        port = free_even_port()
        pbx = EchoPbx(port)
        await pbx.start()
        try:
            assert oct(os.stat(tmp_path / "control.sock").st_mode & 0o777) == "0o600"
            assert oct(os.stat(tmp_path / "cache.db").st_mode & 0o777) == "0o600"
            async with ControlClient(f"unix:{tmp_path / 'control.sock'}") as client:
                await client.request(
                    "create",
                    call_id="m1",
                    port=port,
                    policy="required",
                    self_uri="sip:100@pbx",
                    peer_uri="sip:p@lan",
                )
                phone = await run_endpoint(
                    ZrtpConfiguration(zid=b"M" * 12),
                    EndpointOptions(
                        bind=(PHONE_HOST, 0), peer=(RELAY_HOST, port), srtp_count=5, timeout=10
                    ),
                )
                shown = await client.request("show", call_id="m1")
                assert shown["state"] == "secure" and shown["sas"] == phone["sas"]
                verified = await client.request("verify", call_id="m1")
                assert verified["sas_verified"] is True
                # the V flag is in the relay's cache now (§7.1)
                from pbx_zrtp.cache.base import CacheKey

                key = CacheKey(service.zid, b"M" * 12, "sip:100@pbx", "sip:p@lan")
                assert service.cache.lookup(key).sas_verified
                # metrics, scraped over HTTP
                assert service.metrics_port is not None
                reader, writer = await asyncio.open_connection("127.0.0.1", service.metrics_port)
                writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                await writer.drain()
                body = (await asyncio.wait_for(reader.read(), 5)).decode()
                writer.close()
                assert body.startswith("HTTP/1.1 200 OK")
                assert 'pbx_zrtp_calls{state="secure"} 1.0' in body
                assert "pbx_zrtp_handshake_seconds_count 1.0" in body
                assert 'pbx_zrtp_packets_total{direction="phone_in"}' in body
                await client.request("delete", call_id="m1")
                stats = await client.request("stats")
                assert stats["ended"] == {"secure": 1}
        finally:
            pbx.close()
            await service.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
