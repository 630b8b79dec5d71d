"""Adapter health as Prometheus metrics, from the process that runs the adapter.

``pbx-zrtp run`` adds them to the relay's own ``/metrics``; an adapter running alone
(``pbx-zrtp asterisk --metrics 127.0.0.1:9598``) serves them with its process
metrics. An operator alerts on ``pbx_zrtp_adapter_connected == 0`` (AMI or ESL
down, or a refused login) and on ``pbx_zrtp_relays_up < pbx_zrtp_relays`` (a relay
of a pool unreachable).
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from pbx_zrtp import __version__


class AdapterHealth(Collector):
    """Whether each adapter's PBX session is up, and each relay pool's members."""

    def __init__(self) -> None:
        self._adapters: list[tuple[str, Callable[[], bool]]] = []
        self._pools: list[tuple[str, Callable[[], list[dict[str, Any]]]]] = []

    def add_adapter(self, pbx: str, connected: Callable[[], bool]) -> None:
        self._adapters.append((pbx, connected))

    def add_pool(self, name: str, status: Callable[[], list[dict[str, Any]]]) -> None:
        self._pools.append((name, status))

    def collect(self) -> Iterator[GaugeMetricFamily]:
        connected = GaugeMetricFamily(
            "pbx_zrtp_adapter_connected",
            "1 while the adapter's AMI or ESL session with its PBX is up (logged in)",
            labels=["pbx"],
        )
        for pbx, is_up in self._adapters:
            connected.add_metric([pbx], 1 if is_up() else 0)
        yield connected
        total = GaugeMetricFamily("pbx_zrtp_relays", "Relays in an adapter's pool", labels=["pool"])
        up = GaugeMetricFamily(
            "pbx_zrtp_relays_up", "Relays of an adapter's pool that answer", labels=["pool"]
        )
        each = GaugeMetricFamily(
            "pbx_zrtp_relay_up",
            "1 while this relay of the pool answers its control API",
            labels=["pool", "relay"],
        )
        for name, status in self._pools:
            members = status()
            total.add_metric([name], len(members))
            up.add_metric([name], sum(1 for m in members if m.get("up")))
            for member in members:
                each.add_metric([name, str(member.get("name", "?"))], 1 if member.get("up") else 0)
        yield total
        yield up
        yield each


class _BuildInfo(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        build = GaugeMetricFamily(
            "pbx_zrtp_build_info",
            "pbx-zrtp's version (always 1)",
            labels=["version", "python"],
        )
        build.add_metric([__version__, platform.python_version()], 1)
        yield build


def adapter_registry(health: AdapterHealth) -> CollectorRegistry:
    """What an adapter running alone serves: its health, build and process metrics."""
    registry = CollectorRegistry()
    registry.register(health)
    registry.register(_BuildInfo())
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry
