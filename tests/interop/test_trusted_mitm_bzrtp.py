"""A bzrtp phone (Linphone, no SASrelay support) on one leg of a bridged call."""

from __future__ import annotations

import asyncio
import pathlib

import pytest

from pbx_zrtp.calls import Policy
from tests.relay.helpers import PHONE_HOST, RELAY_HOST, EchoPbx, Recorder, create_call, make_relay
from tests.relay.test_trusted_mitm import BOB, Phone, enroll

from .bzrtp_build import finish, run_bzrtp_peer

pytestmark = pytest.mark.interop


@pytest.mark.parametrize("bob_enrolled", [False, True])
def test_bzrtp_leg_degrades_cleanly(bzrtp_peer_bin: pathlib.Path, bob_enrolled: bool) -> None:
    async def scenario() -> None:
        relay = make_relay()
        await relay.start()
        recorder = Recorder(relay)
        bob = Phone(BOB)
        if bob_enrolled:
            await enroll(relay, recorder, bob)
        legs = ["bz-a", "bz-b"]
        ports = [await create_call(relay, leg, Policy.REQUIRED, bridge="g-bz") for leg in legs]
        pbxs = [EchoPbx(port) for port in ports]
        for pbx in pbxs:
            await pbx.start()
        try:
            args = ["--bind", f"{PHONE_HOST}:0", "--peer", f"{RELAY_HOST}:{ports[0]}"]
            proc = run_bzrtp_peer(
                bzrtp_peer_bin, [*args, "--srtp", "100", "--timeout", "10", "--linger-ms", "500"]
            )
            loop = asyncio.get_running_loop()
            linphone_task = loop.run_in_executor(None, finish, proc, 30.0)
            ours = await bob.call(ports[1], srtp_count=20, sas_relay_wait=3)
            linphone = await linphone_task
            # Nothing broke on the bzrtp leg: secure, all its SRTP came back.
            assert linphone["ok"], linphone
            assert linphone["srtp"]["received_ok"] == 100, linphone["srtp"]
            a, b = relay.get("bz-a"), relay.get("bz-b")
            assert a.state == b.state == "secure" and a.sas == linphone["sas"]
            assert not a.enrolled  # bzrtp has no pbxsecret
            if not bob_enrolled:
                assert ours["sas_relay"] is None
                assert a.sas_relay == b.sas_relay == "none"
                assert a.sas_scope == b.sas_scope == "pbx-leg"
            else:
                # Bob reads Linphone's SAS, relayed; Linphone keeps its own: the same words.
                assert ours["sas_relay"]["relayed"] and ours["displayed_sas"] == linphone["sas"]
                await recorder.wait_for(lambda: relay.get("bz-b").sas_relay.endswith("ed"))
                assert relay.get("bz-b").sas_relay == "target:acknowledged"
                assert relay.get("bz-b").sas_scope == "end-to-end"
                # bzrtp ignores the empty SASrelay; its leg still reads end-to-end.
                assert relay.get("bz-a").sas_relay.startswith("source:")
                assert relay.get("bz-a").sas_scope == "end-to-end"
        finally:
            for leg in legs:
                relay.delete(leg)
            for pbx in pbxs:
                pbx.close()
            await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
