"""Unverify against Linphone's ZRTP library: no false cache-mismatch alarm (issue 13, item 5).

A bzrtp phone (with its own SQLite cache) calls through the relay and both sides
mark the SAS verified; the admin withdraws the relay's mark. Linphone showed a
cache-mismatch warning on the next call when unverify erased the relay's retained
secret; with the flag cleared alone, bzrtp sees continuity and no V flag.
"""

from __future__ import annotations

import asyncio
import pathlib
from typing import Any

import pytest

from pbx_zrtp.cache.memory import MemorySecretCache
from pbx_zrtp.relay.core import Relay
from pbx_zrtp.relay.mirror import Policy
from tests.relay.helpers import PHONE_HOST, RELAY_HOST, EchoPbx, Recorder, create_call, make_relay

from .bzrtp_build import finish, run_bzrtp_peer

pytestmark = pytest.mark.interop


async def _call(
    relay: Relay,
    recorder: Recorder,
    binary: pathlib.Path,
    cache: pathlib.Path,
    call_id: str,
    *extra: str,
) -> dict[str, Any]:
    port = await create_call(
        relay, call_id, Policy.REQUIRED, self_uri="sip:9400@pbx", peer_uri="sip:linphone@lan"
    )
    pbx = EchoPbx(port)
    await pbx.start()
    try:
        proc = run_bzrtp_peer(
            binary,
            [
                "--bind",
                f"{PHONE_HOST}:0",
                "--peer",
                f"{RELAY_HOST}:{port}",
                "--cache",
                str(cache),
                "--self-uri",
                "sip:linphone@lan",
                "--peer-uri",
                "sip:9400@pbx",
                "--srtp",
                "5",
                "--timeout",
                "10",
                *extra,
            ],
        )
        phone = await asyncio.get_running_loop().run_in_executor(None, finish, proc, 20.0)
        assert phone["ok"], phone.get("error")
        await recorder.wait_for(lambda: "secure" in recorder.states(call_id))
        return phone
    finally:
        pbx.close()


def test_unverify_leaves_bzrtp_without_a_cache_mismatch(
    bzrtp_peer_bin: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    async def scenario() -> None:
        relay = make_relay(cache=MemorySecretCache())
        recorder = Recorder(relay)
        cache = tmp_path / "linphone-zrtp.db"
        try:
            phone = await _call(relay, recorder, bzrtp_peer_bin, cache, "c1", "--mark-verified")
            assert not phone["cache_mismatch"]
            relay.verify("c1")
            relay.verify("c1", False)  # the admin withdraws the mark
            relay.delete("c1")
            phone = await _call(relay, recorder, bzrtp_peer_bin, cache, "c2")
            report = relay.get("c2")
            mismatch = (phone["cache_mismatch"], report.cache_mismatch)
            assert mismatch == (False, False), mismatch
            assert not phone["previously_verified"] and not report.previously_verified
            assert phone["sas"] == report.sas
            relay.delete("c2")
        finally:
            await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 90))
