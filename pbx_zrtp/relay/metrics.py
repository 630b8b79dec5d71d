"""Prometheus metrics for the relay, served from the relay's own event loop.

Values are read from the relay at scrape time, in the loop's thread, so no lock
is needed and nothing is counted twice; a secured call's packets count while the
native worker forwards them, not only when it lets go. prometheus_client renders
the format (counters get their ``_total``).

Every labelled series exists from the first scrape, at 0 (an alert on
``rate(pbx_zrtp_drops_total{reason="srtp_auth"}[5m])`` must not wait for the first
drop to have a series), with ``pbx_zrtp_build_info``, the process's own metrics
(``process_*``: CPU, memory, file descriptors, start time) and handshake failures
by kind. ``HEAD /metrics`` answers like GET without the body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from pbx_zrtp import __version__
from pbx_zrtp.calls import CallReport
from pbx_zrtp.relay.core import Relay

log = logging.getLogger("pbx_zrtp.relay")

STATES = ("pending", "secure", "clear", "failed", "off", "idle")
#: An ended call's label: the state it reached, or "unclaimed" (a pre-bound port's).
ENDED = (*STATES, "unclaimed")
DIRECTIONS = ("phone_in", "phone_out", "pbx_in", "pbx_out")
#: Every reason a datagram is dropped for, in Python or in the native worker
#: (tests/test_metrics.py checks the sources name no other).
DROP_REASONS = (
    "amplification_guard",
    "clear_blocked",
    "goclear_refused",
    "no_call",
    "oversize",
    "phone_unknown",
    "priming_gave_up",
    "punt_overflow",
    "recv_errors",
    "relatched",
    "rtcp_malformed",
    "rtcp_relatched",
    "runt",
    "send_errors",
    "srtp_auth",
    "srtp_protect",
    "srtp_repeat",
    "wrong_source",
    "zrtp_false_packet",
    "zrtp_ignored",
    "zrtp_no_engine",
)
#: Why a call that tried ZRTP did not get (or stay) secure.
FAILURES = (
    "timeout",  # a required call not secure in time
    "zrtp_timeout",  # the ZRTP exchange stalled (no Hello, no answer)
    "peer_error",  # the phone sent a ZRTP Error
    "protocol_error",  # we refused the phone's messages (and sent Error)
    "ended_after_secure",  # ZRTP ended a secure call (Error or GoClear refused)
    "srtp_unavailable",
    "other",
)


def failure_kind(reason: str) -> str:
    """The FAILURES label of a failed call's reason (as the mirror words it)."""
    if reason.startswith("not secure within"):
        return "timeout"
    if reason.startswith("ZRTP ended:"):
        return "ended_after_secure"
    if reason.startswith("SRTP unavailable"):
        return "srtp_unavailable"
    if reason.startswith("ZRTP failed:"):
        detail = reason.removeprefix("ZRTP failed:").strip()
        if detail.startswith("peer sent Error"):
            return "peer_error"
        if "time-out" in detail:
            return "zrtp_timeout"
        return "protocol_error"
    return "other"


class _RelayCollector(Collector):
    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = self.relay.stats()
        build = GaugeMetricFamily(
            "pbx_zrtp_build_info",
            "pbx-zrtp's version and how secured media is forwarded (always 1)",
            labels=["version", "fastpath", "python"],
        )
        fastpath = "native" if self.relay.fastpaths else "python"
        build.add_metric([__version__, fastpath, platform.python_version()], 1)
        yield build
        calls = GaugeMetricFamily("pbx_zrtp_calls", "Live calls by state", labels=["state"])
        for state in STATES:
            calls.add_metric([state], stats["calls"].get(state, 0))
        yield calls
        ended = CounterMetricFamily(
            "pbx_zrtp_calls_ended", "Ended calls by the state they reached", labels=["state"]
        )
        for state in sorted({*ENDED, *stats["ended"]}):
            ended.add_metric([state], stats["ended"].get(state, 0))
        yield ended
        packets = CounterMetricFamily(
            "pbx_zrtp_packets",
            "Packets by direction (phone_in, phone_out, pbx_in, pbx_out)",
            labels=["direction"],
        )
        volume = CounterMetricFamily(
            "pbx_zrtp_bytes",
            "UDP payload bytes by direction (phone_in, phone_out, pbx_in, pbx_out)",
            labels=["direction"],
        )
        for direction in DIRECTIONS:
            packets.add_metric([direction], stats["packets"].get(direction, 0))
            volume.add_metric([direction], stats["bytes"].get(direction, 0))
        yield packets
        yield volume
        drops = CounterMetricFamily(
            "pbx_zrtp_drops", "Dropped datagrams by reason", labels=["reason"]
        )
        for reason in sorted({*DROP_REASONS, *stats["drops"]}):
            drops.add_metric([reason], stats["drops"].get(reason, 0))
        yield drops
        yield GaugeMetricFamily(
            "pbx_zrtp_prebound_ports", "Ports bound in advance", value=stats["prebound_ports"]
        )
        yield GaugeMetricFamily(
            "pbx_zrtp_fastpath_calls",
            "Live calls whose secured media a native worker forwards now",
            value=sum(1 for mirror in self.relay.mirrors() if mirror.fast.attached),
        )


class MetricsServer:
    """A minimal HTTP endpoint for a registry: GET and HEAD /metrics; other paths
    404, other methods 405. The relay serves its own; an adapter running alone
    (``pbx-zrtp asterisk --metrics``) serves its health."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._server: asyncio.Server | None = None

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def serve(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._handle, host, port)
        bound = int(self._server.sockets[0].getsockname()[1])
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while (line := await asyncio.wait_for(reader.readline(), 5)) not in (
                b"\r\n",
                b"\n",
                b"",
            ):
                del line
            parts = request.split()
            method = parts[0] if parts else b""
            path = parts[1].split(b"?")[0] if len(parts) >= 2 else b""
            if path != b"/metrics":
                status, body, extra = "404 Not Found", b"not found\n", ""
            elif method not in (b"GET", b"HEAD"):
                status, body = "405 Method Not Allowed", b"GET or HEAD\n"
                extra = "Allow: GET, HEAD\r\n"
            else:
                status, body = "200 OK", self.render()
                extra = "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
            head = (
                f"HTTP/1.1 {status}\r\n{extra}"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            if method == b"HEAD":
                body = b""  # the length a GET would get, no body (RFC 9110 §9.3.2)
            writer.write(head.encode() + body)
            await asyncio.wait_for(writer.drain(), 5)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1)


class RelayMetrics(MetricsServer):
    def __init__(self, relay: Relay) -> None:
        super().__init__(CollectorRegistry())
        self.registry.register(_RelayCollector(relay))
        self.handshake = Histogram(
            "pbx_zrtp_handshake_seconds",
            "Time from a call's activation to secure",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
            registry=self.registry,
        )
        self.failures = Counter(
            "pbx_zrtp_handshake_failures",
            "Calls that tried ZRTP and did not get or stay secure, by kind",
            labelnames=["reason"],
            registry=self.registry,
        )
        for kind in FAILURES:
            self.failures.labels(kind)
        self.cache_errors = Counter(
            "pbx_zrtp_cache_errors",
            "Calls whose retained-secret cache could not be read or updated",
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self._seen_secure: set[str] = set()
        self._seen_failed: set[str] = set()
        self._seen_cache_error: set[str] = set()
        relay.add_listener(self._on_report)

    def _on_report(self, report: CallReport) -> None:
        call = report.call_id
        if report.cache_error and call not in self._seen_cache_error:
            self._seen_cache_error.add(call)
            self.cache_errors.inc()
        if report.state == "secure" and report.handshake_ms is not None:
            if call not in self._seen_secure:
                self._seen_secure.add(call)
                self.handshake.observe(report.handshake_ms / 1000)
        elif report.state == "failed" or (
            report.state == "clear" and report.reason.startswith("ZRTP failed:")
        ):
            if call not in self._seen_failed:
                self._seen_failed.add(call)
                self.failures.labels(failure_kind(report.reason)).inc()
        elif report.state == "ended":
            self._seen_secure.discard(call)
            self._seen_failed.discard(call)
            self._seen_cache_error.discard(call)
