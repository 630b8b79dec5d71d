"""Metrics an operator alerts on: every labelled series at 0 from the first scrape,
build info, process metrics, handshake failures by kind, cache errors, bytes, live
counts of natively forwarded calls, and HEAD /metrics."""

from __future__ import annotations

import asyncio
import os
import pathlib
import re
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pbx_zrtp import __version__
from pbx_zrtp.cache.base import CacheError
from pbx_zrtp.cache.memory import MemorySecretCache
from pbx_zrtp.endpoint import EndpointOptions, run_endpoint
from pbx_zrtp.relay.fastpath import available
from pbx_zrtp.relay.metrics import (
    DIRECTIONS,
    DROP_REASONS,
    ENDED,
    FAILURES,
    RelayMetrics,
    failure_kind,
)
from pbx_zrtp.relay.mirror import Policy
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from tests.relay.helpers import PHONE_HOST, RELAY_HOST, EchoPbx, create_call, make_relay

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_every_series_exists_at_zero_from_the_first_scrape() -> None:
    async def scenario() -> None:
        relay = make_relay()
        await relay.start()
        try:
            samples = _samples(RelayMetrics(relay).render())
        finally:
            await relay.close()
        for reason in DROP_REASONS:
            assert _value(samples, "pbx_zrtp_drops_total", reason=reason) == 0
        for state in ENDED:
            assert _value(samples, "pbx_zrtp_calls_ended_total", state=state) == 0
        for direction in DIRECTIONS:
            assert _value(samples, "pbx_zrtp_packets_total", direction=direction) == 0
            assert _value(samples, "pbx_zrtp_bytes_total", direction=direction) == 0
        for kind in FAILURES:
            assert _value(samples, "pbx_zrtp_handshake_failures_total", reason=kind) == 0
        assert _value(samples, "pbx_zrtp_cache_errors_total") == 0
        assert _value(samples, "pbx_zrtp_fastpath_calls") == 0
        assert _value(samples, "pbx_zrtp_handshake_seconds_count") == 0
        build = [k for k in samples if k[0] == "pbx_zrtp_build_info"]
        assert len(build) == 1 and samples[build[0]] == 1
        assert dict(build[0][1])["version"] == __version__
        assert dict(build[0][1])["fastpath"] == "python"
        for name in ("process_cpu_seconds_total", "process_open_fds", "process_start_time_seconds"):
            assert any(k[0] == name for k in samples), name
        # Prometheus conventions: counters end in _total, units in the name
        for name, _ in samples:
            assert re.fullmatch(r"[a-z_:][a-z0-9_:]*", name), name

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_the_drop_reasons_are_all_the_sources_use() -> None:
    """A reason missing from DROP_REASONS would only appear after its first drop."""
    used: set[str] = set()
    for path in (ROOT / "pbx_zrtp" / "relay").glob("*.py"):
        used |= set(re.findall(r'drops\["([a-z_]+)"\]', path.read_text()))
    from pbx_zrtp.relay.fastlink import FAST_DROPS
    from pbx_zrtp.srtp import Refusal

    used |= set(FAST_DROPS) | {refusal.value for refusal in Refusal}
    assert used <= set(DROP_REASONS), sorted(used - set(DROP_REASONS))


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("not secure within 10 s (no packet from the phone)", "timeout"),
        ("ZRTP failed: time-out: no ZRTP Hello from the peer", "zrtp_timeout"),
        ("ZRTP failed: responder time-out: no message from the initiator", "zrtp_timeout"),
        ("ZRTP failed: time-out waiting for the answer to Commit", "zrtp_timeout"),
        ("ZRTP failed: peer sent Error 0x61 (dh bad pvi)", "peer_error"),
        ("ZRTP failed: DHPart2 hash chain does not match", "protocol_error"),
        ("ZRTP ended: peer sent Error 0x40 (auth tag)", "ended_after_secure"),
        ("SRTP unavailable: unsupported profile", "srtp_unavailable"),
        ("something new", "other"),
    ],
)
def test_failure_kinds(reason: str, kind: str) -> None:
    assert failure_kind(reason) == kind
    assert kind in FAILURES


def test_a_required_call_that_times_out_counts_as_a_timeout_failure() -> None:
    async def scenario() -> None:
        relay = make_relay(required_timeout=0.3)
        await relay.start()
        metrics = RelayMetrics(relay)
        try:
            await create_call(relay, "silent", Policy.REQUIRED)
            for _ in range(50):
                if relay.get("silent").state == "failed":
                    break
                await asyncio.sleep(0.05)
            relay.delete("silent")
            samples = _samples(metrics.render())
        finally:
            await relay.close()
        assert _value(samples, "pbx_zrtp_handshake_failures_total", reason="timeout") == 1
        assert _value(samples, "pbx_zrtp_handshake_failures_total", reason="peer_error") == 0
        assert _value(samples, "pbx_zrtp_calls_ended_total", state="failed") == 1

    asyncio.run(asyncio.wait_for(scenario(), 30))


class _BrokenCache(MemorySecretCache):
    """Keeps the ZID; every per-call operation fails like a disk gone bad."""

    def lookup(self, *args: Any, **kwargs: Any) -> Any:
        raise CacheError("disk gone")

    def update_retained_secret(self, *args: Any, **kwargs: Any) -> Any:
        raise CacheError("disk gone")


def _secure_call(relay: Any, port: int, srtp: int) -> dict[str, Any]:
    return asyncio.ensure_future(  # type: ignore[return-value]
        run_endpoint(
            ZrtpConfiguration(zid=os.urandom(12)),
            EndpointOptions(
                bind=(PHONE_HOST, 0), peer=(RELAY_HOST, port), srtp_count=srtp, timeout=10
            ),
            cache=MemorySecretCache(),
        )
    )


def test_cache_errors_are_counted_once_per_call() -> None:
    async def scenario() -> None:
        relay = make_relay(cache=_BrokenCache())
        await relay.start()
        metrics = RelayMetrics(relay)
        port = await create_call(relay, "nocache", Policy.REQUIRED)
        echo = EchoPbx(port)
        await echo.start()
        try:
            phone = await _secure_call(relay, port, 5)
            assert phone["ok"]
            assert relay.get("nocache").cache_error
            samples = _samples(metrics.render())
        finally:
            echo.close()
            await relay.close()
        assert _value(samples, "pbx_zrtp_cache_errors_total") == 1

    asyncio.run(asyncio.wait_for(scenario(), 30))


@pytest.mark.skipif(available() is not None, reason=f"no fast path: {available()}")
def test_natively_forwarded_packets_and_bytes_count_while_the_call_lasts() -> None:
    async def scenario() -> None:
        relay = make_relay(fastpath=True)
        await relay.start()
        metrics = RelayMetrics(relay)
        port = await create_call(relay, "fast", Policy.REQUIRED)
        echo = EchoPbx(port)
        await echo.start()
        try:
            phone = await _secure_call(relay, port, 60)
            assert phone["ok"]
            mirror = next(m for m in relay.mirrors() if m.identity and m.identity.call_id == "fast")
            assert mirror.fast.handle is not None  # still forwarded by the worker
            samples = _samples(metrics.render())
            assert _value(samples, "pbx_zrtp_fastpath_calls") == 1
            in_python = mirror.counters.phone_in
        finally:
            echo.close()
            await relay.close()
        phone_in = _value(samples, "pbx_zrtp_packets_total", direction="phone_in")
        assert phone_in >= 60 > in_python  # the worker's share is in, live
        assert _value(samples, "pbx_zrtp_bytes_total", direction="phone_in") >= 60 * 160
        build = next(k for k in samples if k[0] == "pbx_zrtp_build_info")
        assert dict(build[1])["fastpath"] == "native"

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_head_and_other_methods_on_the_metrics_endpoint() -> None:
    async def request(port: int, line: bytes) -> tuple[bytes, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(line + b"\r\nHost: x\r\n\r\n")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        return head, body

    async def scenario() -> None:
        relay = make_relay()
        await relay.start()
        metrics = RelayMetrics(relay)
        port = await metrics.serve("127.0.0.1", 0)
        try:
            head, body = await request(port, b"HEAD /metrics HTTP/1.1")
            assert head.startswith(b"HTTP/1.1 200 OK") and body == b""
            assert b"Content-Type: text/plain; version=0.0.4" in head
            length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
            assert length > 1000
            head, body = await request(port, b"GET /metrics HTTP/1.1")
            assert head.startswith(b"HTTP/1.1 200 OK") and b"pbx_zrtp_build_info" in body
            head, _ = await request(port, b"POST /metrics HTTP/1.1")
            assert head.startswith(b"HTTP/1.1 405") and b"Allow: GET, HEAD" in head
            head, _ = await request(port, b"GET /other HTTP/1.1")
            assert head.startswith(b"HTTP/1.1 404")
        finally:
            await metrics.close()
            await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))
