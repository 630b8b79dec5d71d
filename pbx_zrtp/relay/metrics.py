"""Prometheus metrics for the relay, served from the relay's own event loop.

Values are read from the relay at scrape time, in the loop's thread, so no lock
is needed and nothing is counted twice. prometheus_client renders the format.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from pbx_zrtp.calls import CallReport
from pbx_zrtp.relay.core import Relay

log = logging.getLogger("pbx_zrtp.relay")

STATES = ("pending", "secure", "clear", "failed", "off", "idle")


class _RelayCollector(Collector):
    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = self.relay.stats()
        calls = GaugeMetricFamily("pbx_zrtp_calls", "Live calls by state", labels=["state"])
        for state in STATES:
            calls.add_metric([state], stats["calls"].get(state, 0))
        yield calls
        ended = CounterMetricFamily(
            "pbx_zrtp_calls_ended", "Ended calls by their last state", labels=["state"]
        )
        for state, count in sorted(stats["ended"].items()):
            ended.add_metric([state], count)
        yield ended
        packets = CounterMetricFamily(
            "pbx_zrtp_packets",
            "Packets by direction (phone_in, phone_out, pbx_in, pbx_out)",
            labels=["direction"],
        )
        for direction, count in sorted(stats["packets"].items()):
            packets.add_metric([direction], count)
        yield packets
        drops = CounterMetricFamily(
            "pbx_zrtp_drops", "Dropped datagrams by reason", labels=["reason"]
        )
        for reason, count in sorted(stats["drops"].items()):
            drops.add_metric([reason], count)
        yield drops
        yield GaugeMetricFamily(
            "pbx_zrtp_prebound_ports", "Ports bound in advance", value=stats["prebound_ports"]
        )


class RelayMetrics:
    def __init__(self, relay: Relay) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_RelayCollector(relay))
        self.handshake = Histogram(
            "pbx_zrtp_handshake_seconds",
            "Time from a call's activation to secure",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
            registry=self.registry,
        )
        self._seen_secure: set[str] = set()
        relay.add_listener(self._on_report)
        self._server: asyncio.Server | None = None

    def _on_report(self, report: CallReport) -> None:
        if report.state == "secure" and report.handshake_ms is not None:
            if report.call_id not in self._seen_secure:
                self._seen_secure.add(report.call_id)
                self.handshake.observe(report.handshake_ms / 1000)
        elif report.state == "ended":
            self._seen_secure.discard(report.call_id)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def serve(self, host: str, port: int) -> int:
        """A minimal HTTP endpoint: GET /metrics; anything else is 404."""
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
            if len(parts) >= 2 and parts[0] == b"GET" and parts[1].split(b"?")[0] == b"/metrics":
                body = self.render()
                head = (
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                )
            else:
                body = b"not found\n"
                head = (
                    "HTTP/1.1 404 Not Found\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                )
            writer.write(head.encode() + body)
            await asyncio.wait_for(writer.drain(), 5)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1)
