"""Whole calls with DEBUG logging on: no key, salt, retained secret or password may
appear in any log line (ours or our libraries')."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

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


def test_enrollment_and_sas_relay_through_freeswitch_log_no_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """pbxsecret, sashash, SRTP keys and the ESL password stay out of DEBUG logs."""
    from pbx_zrtp.freeswitch.adapter import FreeswitchAdapter
    from pbx_zrtp.freeswitch.config import FreeswitchConfig
    from tests.freeswitch.fake_esl import FakeEsl

    caplog.set_level(logging.DEBUG)
    secrets: list[bytes] = []
    password = "s3cret-esl-password"

    async def scenario() -> None:
        fake = FakeEsl(password=password)
        esl_port = await fake.start()
        ports = [free_even_port() for _ in range(3)]
        cache = MemorySecretCache()
        relay = make_relay(cache=cache, prebind=tuple(ports))
        await relay.start()
        adapter = FreeswitchAdapter(
            FreeswitchConfig(host="127.0.0.1", port=esl_port, password=password),
            LocalRelay(relay),
        )
        assert await adapter.start()
        pbxs = [EchoPbx(port) for port in ports]
        for pbx in pbxs:
            await pbx.start()
        bob_cache = MemorySecretCache()
        try:

            async def leg(port: int, call_uuid: str | None = None, enroll: bool = False) -> Any:
                channel = fake.new_call(local_media_port=port, destination="9602")
                if call_uuid:
                    await channel.set_var("call_uuid", call_uuid)
                if enroll:
                    await channel.set_var("pbx_zrtp_enroll", "offer")
                await channel.set_var("pbx_zrtp_policy", "required")
                await channel.set_var("rtp_adv_audio_ip", RELAY_HOST)
                await channel.answer()
                return channel

            def phone(port: int, zid: bytes, phone_cache: MemorySecretCache, **kw: Any) -> Any:
                return run_endpoint(
                    ZrtpConfiguration(zid=zid),
                    EndpointOptions(
                        bind=(PHONE_HOST, 0), peer=(RELAY_HOST, port), srtp_count=3, **kw
                    ),
                    cache=phone_cache,
                )

            enrolling = await leg(ports[0], enroll=True)
            await phone(ports[0], b"B" * 12, bob_cache, accept_enrollment=True)
            await enrolling.custom_event("pbx_zrtp::enroll", action="confirm")
            await enrolling.wait_for_var("pbx_zrtp_enroll_result", bool, 5)
            await enrolling.hangup()
            a_leg = await leg(ports[1])
            await leg(ports[2], call_uuid=a_leg.uuid)
            a, b = await asyncio.gather(
                phone(ports[1], b"A" * 12, MemorySecretCache(), sas_relay_wait=5),
                phone(ports[2], b"B" * 12, bob_cache, sas_relay_wait=5),
            )
            assert b["sas_relay"]["relayed"]
            for result in (a, b):
                for name in ("srtp_self_key", "srtp_self_salt", "srtp_peer_key", "srtp_peer_salt"):
                    secrets.append(bytes.fromhex(result[name]))
            zid = cache.local_zid(lambda: b"")
            pbx_secret = cache.lookup(CacheKey(zid, b"B" * 12)).pbx_secret
            assert pbx_secret is not None
            secrets.append(pbx_secret)
            hashes = [m.secured.sas_hash for m in relay.mirrors() if m.secured is not None]
            assert len(hashes) == 2
            secrets.extend(hashes)
        finally:
            await adapter.close()
            await relay.close()
            for pbx in pbxs:
                pbx.close()
            await fake.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
    text = "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records)
    assert "SASrelay" in text or "sas relay" in text.lower()  # the relay really ran
    assert password not in text
    for secret in secrets:
        for form in (secret.hex(), secret.hex().upper(), repr(secret), str(list(secret))):
            assert form not in text
