"""A full disk under the retained-secret cache: calls still secure, and say continuity
was not saved (issue: faults)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from pbx_zrtp.cache.memory import MemorySecretCache
from pbx_zrtp.cache.sqlite import SqliteSecretCache
from pbx_zrtp.endpoint import EndpointOptions, run_endpoint
from pbx_zrtp.relay.mirror import Policy
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from tests.relay.helpers import (
    PHONE_HOST,
    RELAY_HOST,
    EchoPbx,
    Recorder,
    assert_echoed_back,
    create_call,
    make_relay,
)
from tests.test_cache_faults import _fill


def test_a_full_cache_disk_leaves_calls_secure_and_reports_continuity_not_saved(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        cache = SqliteSecretCache(tmp_path / "cache.db")
        relay = make_relay(cache=cache)  # type: ignore[arg-type]
        await relay.start()
        recorder = Recorder(relay)
        # SQLITE_FULL exactly as a full disk gives it: cap the file at its size + a bit.
        pages = cache._conn.execute("PRAGMA page_count").fetchone()[0]
        cache._conn.execute(f"PRAGMA max_page_count = {pages + 8}")
        _fill(cache)
        port = await create_call(relay, "full", Policy.REQUIRED, self_uri="sip:" + "x" * 1000)
        echo = EchoPbx(port)
        await echo.start()
        try:
            phone = await run_endpoint(
                ZrtpConfiguration(zid=os.urandom(12)),
                EndpointOptions(
                    bind=(PHONE_HOST, 0), peer=(RELAY_HOST, port), srtp_count=10, timeout=10
                ),
                cache=MemorySecretCache(),  # a cacheless phone would ask us to keep nothing
            )
            assert_echoed_back(phone, 10, relay, "full")  # the call goes on
            await recorder.wait_for(lambda: "secure" in recorder.states("full"))

            def published(prefix: str) -> bool:
                """The adapters were told (a state event), not just the report."""
                return any(e.cache_error.startswith(prefix) for e in recorder.events)

            # Writes run on the store's worker thread: the failure arrives after
            # "secure" and is published as a state event of its own.
            await recorder.wait_for(lambda: published("key continuity not saved"))
            report = relay.get("full")
            assert report.state == "secure"
            assert report.cache_error.startswith("key continuity not saved")
            assert "full" in report.cache_error
            report = relay.verify("full")  # the humans compared: the flag cannot be kept
            assert report.sas_verified
            await recorder.wait_for(lambda: published("the SAS-verified flag was not saved"))
            assert relay.get("full").cache_error.startswith("the SAS-verified flag was not saved")
            final = relay.delete("full")
            assert final.cache_error  # still in the final report
        finally:
            echo.close()
            await relay.close()
            cache.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_an_unreadable_cache_secures_without_continuity_and_writes_nothing(
    tmp_path: Path,
) -> None:
    from tests.zrtp_harness import Network, make_connection

    broken = SqliteSecretCache(tmp_path / "gone.db")
    broken.close()  # every operation now raises CacheError
    a = make_connection(b"A" * 12, seed=1, ssrc=1, cache=broken)
    b = make_connection(b"B" * 12, seed=2, ssrc=2, cache=MemorySecretCache())
    net = Network(a, b)
    net.run()
    secured_a, secured_b = net.secured()
    assert secured_a.sas == secured_b.sas
    assert secured_a.cache_error.startswith(
        "key continuity not saved: retained secrets could not be read"
    )
    assert a.stats["cache_errors"] == 1 and not secured_b.cache_error
