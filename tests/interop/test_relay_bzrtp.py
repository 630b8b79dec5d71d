"""A bzrtp phone (Linphone's ZRTP library) through the relay to a plain-RTP PBX."""

from __future__ import annotations

import asyncio
import pathlib

import pytest

from pbx_zrtp.calls import Policy
from tests.relay.helpers import PHONE_HOST, RELAY_HOST, EchoPbx, Recorder, create_call, make_relay

from .bzrtp_build import finish, run_bzrtp_peer

pytestmark = pytest.mark.interop


@pytest.mark.parametrize("key_agreement", ["X255", "DH3k"])
def test_bzrtp_phone_secures_through_a_mirror(
    bzrtp_peer_bin: pathlib.Path, key_agreement: str
) -> None:
    async def scenario() -> None:
        relay = make_relay()
        recorder = Recorder(relay)
        port = await create_call(
            relay, "bz-1", Policy.REQUIRED, self_uri="sip:100@pbx", peer_uri="sip:linphone@lan"
        )
        pbx = EchoPbx(port)
        await pbx.start()
        try:
            proc = run_bzrtp_peer(
                bzrtp_peer_bin,
                [
                    "--bind",
                    f"{PHONE_HOST}:0",
                    "--peer",
                    f"{RELAY_HOST}:{port}",
                    "--key-agreement",
                    key_agreement,
                    "--srtp",
                    "30",
                    "--timeout",
                    "10",
                ],
            )
            loop = asyncio.get_running_loop()
            phone = await loop.run_in_executor(None, finish, proc, 20.0)
            assert phone["ok"], phone
            await recorder.wait_for(lambda: "secure" in recorder.states("bz-1"))
            report = relay.get("bz-1")
            assert report.state == "secure" and report.sas == phone["sas"]
            assert report.key_agreement == key_agreement == phone["key_agreement"]
            # The phone's SRTP came back through the PBX echo, re-encrypted by the relay.
            assert phone["srtp"]["received_ok"] == 30, phone["srtp"]
            assert report.counters["drops"].get("srtp_auth", 0) == 0
        finally:
            pbx.close()
            await relay.close()

    asyncio.run(scenario())
