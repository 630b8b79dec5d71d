"""A bzrtp phone (Linphone's ZRTP library) on a pre-bound port (issue 13, item 2).

Before the adapter names a pre-bound port's call the relay answers its source
with at most the bytes it sent (no Hello schedule). A genuine ZRTP phone must
still secure: when the call is never named (the prebind policy governs), and
when the adapter names it while the exchange runs (the exchange is adopted).
"""

from __future__ import annotations

import asyncio
import pathlib

import pytest

from pbx_zrtp.relay.mirror import Policy
from tests.relay.helpers import (
    PHONE_HOST,
    RELAY_HOST,
    EchoPbx,
    Recorder,
    free_even_port,
    make_relay,
)

from .bzrtp_build import finish, run_bzrtp_peer

pytestmark = pytest.mark.interop


@pytest.mark.parametrize("named", [False, True])
def test_bzrtp_phone_secures_on_a_prebound_port(bzrtp_peer_bin: pathlib.Path, named: bool) -> None:
    async def scenario() -> None:
        port = free_even_port()
        relay = make_relay(prebind=(port,))
        await relay.start()
        recorder = Recorder(relay)
        pbx = EchoPbx(port)
        await pbx.start()
        try:
            proc = run_bzrtp_peer(
                bzrtp_peer_bin,
                [
                    *("--bind", f"{PHONE_HOST}:0", "--peer", f"{RELAY_HOST}:{port}"),
                    *("--srtp", "20", "--timeout", "10"),
                ],
            )
            loop = asyncio.get_running_loop()
            waiting = loop.run_in_executor(None, finish, proc, 20.0)
            call_id = f"port-{port}"
            if named:  # FreeSWITCH's CHANNEL_ANSWER reaches the adapter after the Hello
                mirror = next(m for m in relay.mirrors() if m.port == port)
                await recorder.wait_for(lambda: mirror.speaks_zrtp)
                await relay.create("fs-bz", port, Policy.REQUIRED)
                call_id = "fs-bz"
            phone = await waiting
            assert phone["ok"], phone.get("error")
            await recorder.wait_for(lambda: "secure" in recorder.states(call_id))
            report = relay.get(call_id)
            assert report.sas == phone["sas"]
            assert phone["srtp"]["received_ok"] == 20, phone["srtp"]
        finally:
            pbx.close()
            await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
