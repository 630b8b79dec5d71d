"""Whole calls with DEBUG logging on: no key, salt, retained secret or password may
appear in any log line (ours or our libraries')."""

from __future__ import annotations

import asyncio
import logging

import pytest

from pbx_zrtp.asterisk.adapter import AsteriskAdapter
from pbx_zrtp.asterisk.config import AsteriskConfig
from pbx_zrtp.cache.base import CacheKey
from pbx_zrtp.cache.memory import MemorySecretCache
from pbx_zrtp.endpoint import EndpointOptions, run_endpoint
from pbx_zrtp.relay.handle import LocalRelay
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from tests.asterisk.fake_ami import FakeAmi
from tests.relay.helpers import PHONE_HOST, RELAY_HOST, EchoPbx, free_even_port, make_relay


def test_a_secured_asterisk_call_logs_no_secret(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secrets: list[bytes] = []

    async def scenario() -> None:
        fake = FakeAmi(secret="s3cret-ami-password")
        ami_port = await fake.start()
        cache = MemorySecretCache()
        relay = make_relay(cache=cache)
        adapter = AsteriskAdapter(
            AsteriskConfig(
                host="127.0.0.1", port=ami_port, username="ctl", secret="s3cret-ami-password"
            ),
            LocalRelay(relay),
        )
        assert await adapter.start()
        port = free_even_port()
        pbx = EchoPbx(port)
        await pbx.start()
        try:
            channel = fake.new_call(rtp_port=port)
            await channel.progress()
            await channel.user_event(
                "PbxZrtp",
                Policy="required",
                Target="600",
                Endpoint="zalice",
                RtpSrc=f"127.0.0.1:{port}",
            )
            phone = await run_endpoint(
                ZrtpConfiguration(zid=b"L" * 12),
                EndpointOptions(
                    bind=(PHONE_HOST, 0), peer=(RELAY_HOST, port), srtp_count=5, timeout=10
                ),
                cache=MemorySecretCache(),  # a cacheless phone would tell us not to keep rs1
            )
            await channel.wait_for_var("ZRTP_STATE", lambda v: v == "secure", 10)
            await channel.hangup()
            await asyncio.sleep(0.2)
            for name in ("srtp_self_key", "srtp_self_salt", "srtp_peer_key", "srtp_peer_salt"):
                secrets.append(bytes.fromhex(phone[name]))
            zid = cache.local_zid(lambda: b"")
            entry = cache.lookup(CacheKey(zid, b"L" * 12, "600", "zalice"))
            assert entry.rs1 is not None
            secrets.append(entry.rs1)
        finally:
            await adapter.close()
            await relay.close()
            pbx.close()
            await fake.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
    text = "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records)
    assert len(caplog.records) > 10  # the call really was logged
    assert "s3cret-ami-password" not in text
    for secret in secrets:
        for form in (secret.hex(), secret.hex().upper(), repr(secret), str(list(secret))):
            assert form not in text
