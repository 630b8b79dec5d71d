"""The relay service as `pbx-zrtp relay` runs it: control socket, metrics, cache."""

from __future__ import annotations

import asyncio
import os
import pathlib
import time

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


def test_the_running_relay_purges_expired_secrets_on_a_schedule(tmp_path: pathlib.Path) -> None:
    """Expired secrets are erased from the store by the running relay, at start and then
    every cache.purge_interval (before, only a manual call of purge_expired did it)."""
    from pbx_zrtp.cache.base import CacheKey
    from pbx_zrtp.cache.sqlite import SqliteSecretCache

    path = tmp_path / "cache.db"
    # Written 100 s in the past with a 10 s lifetime: expired 90 s ago.
    past = SqliteSecretCache(path, clock=lambda: time.time() - 100)
    key = CacheKey(b"R" * 12, b"P" * 12)
    past.store_pbx_secret(key, b"s" * 32, 10)
    assert past.list_pbx_secrets()  # still there (the past clock sees it live)

    async def scenario() -> None:
        config = load_config(None)
        apply(config, {"cache": {"path": str(path)}, "control": {"socket": ""}})
        config.metrics = None
        config.cache_purge_interval = 0.1
        service = RelayService(config)
        await service.start()
        try:
            deadline = asyncio.get_running_loop().time() + 5
            while past.list_pbx_secrets():
                assert asyncio.get_running_loop().time() < deadline, "never purged"
                await asyncio.sleep(0.05)
            # and again later: one that expires while the relay runs goes too
            past.store_pbx_secret(key, b"t" * 32, 10)
            deadline = asyncio.get_running_loop().time() + 5
            while past.list_pbx_secrets():
                assert asyncio.get_running_loop().time() < deadline, "purged only at start"
                await asyncio.sleep(0.05)
        finally:
            await service.close()
            past.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))
