"""What ``pbx-zrtp run`` / ``relay`` / ``asterisk`` start, and how they stop.

By default one process runs the relay and the configured adapters, talking in
process; ``pbx-zrtp asterisk --relay unix:…`` runs the adapter alone against a
relay elsewhere (control API). ``load_settings`` reads a configuration file once,
for ``--check`` and for running alike.

Signals, as systemd sends them: SIGHUP (``systemctl reload``) re-reads the file and
applies what can change under live calls (log level, timeouts, the ZRTP offer, each
adapter's policies and time-outs, its ``[[…relays]]`` pool; for calls from then on),
naming what needs a restart; SIGTERM (``systemctl stop`` or
``restart``) drains: no new calls, those in progress keep flowing up to
``[timeouts] drain`` seconds, then everything stops; SIGINT (Ctrl-C) or a second
SIGTERM stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pbx_zrtp import logs, sdnotify
from pbx_zrtp.calls import RelayHandle
from pbx_zrtp.config import ConfigError, read_toml
from pbx_zrtp.config.fields import Problems
from pbx_zrtp.pbx.registry import BY_NAME, KINDS, PbxAdapter, PbxConfig
from pbx_zrtp.relay import config as relay_config
from pbx_zrtp.relay.config import RelayConfig

if TYPE_CHECKING:
    from pbx_zrtp.relay.pool import RelayPool
    from pbx_zrtp.relay.service import RelayService

log = logging.getLogger("pbx_zrtp")


@dataclass
class Settings:
    """A whole configuration file, each section parsed once."""

    relay: RelayConfig
    #: The PBX sections present, by name (``[asterisk]``, ``[freeswitch]``).
    pbxs: dict[str, PbxConfig] = field(default_factory=dict)


def load_settings(path: str | os.PathLike[str] | None) -> Settings:
    """Read ``path`` (None: embedded defaults); ConfigError lists every problem of
    every section at once."""
    relay = RelayConfig.defaults()
    if path is None:
        return Settings(relay)
    data = read_toml(path)
    problems = Problems()
    relay = relay_config.read(data, problems, others=BY_NAME, base=relay)
    pbxs: dict[str, PbxConfig] = {}
    for kind in KINDS:  # the registry's order: the order adapters start in
        table = data.get(kind.name)
        if isinstance(table, dict):
            pbxs[kind.name] = kind.read(table, problems)
    problems.check()
    return Settings(relay, pbxs)


class _Signals:
    """SIGINT, SIGTERM and SIGHUP as a queue the service's main task reads."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[int] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, self._queue.put_nowait, signum)

    async def next(self, timeout: float | None = None) -> int | None:
        """The next signal, or None after ``timeout`` seconds."""
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None


@dataclass
class _Running:
    """The adapters this process runs, by section name, and the pools of those with
    ``[[…relays]]``: what a reload can reconfigure in place."""

    adapters: dict[str, PbxAdapter] = field(default_factory=dict)
    pools: dict[str, RelayPool] = field(default_factory=dict)
    #: the sections this process serves (None: all configured, as ``pbx-zrtp run``)
    chosen: Collection[str] | None = None


async def _reload_pbxs(new: Settings, running: _Running) -> list[str]:
    """Reconfigure each running adapter (and its pool) from ``new``; returns what
    changed but needs a restart."""
    restart: list[str] = []
    for name in sorted(set(running.adapters) | set(new.pbxs)):
        adapter, config = running.adapters.get(name), new.pbxs.get(name)
        if adapter is None:
            if running.chosen is None or name in running.chosen:
                restart.append(f"[{name}] (added)")
            continue
        if config is None:
            restart.append(f"[{name}] (removed)")
            continue
        restart += adapter.reconfigure(config)
        pool = running.pools.get(name)
        if (pool is None) != (not config.relays):
            # the adapter talks to one relay or to a pool: which, is fixed at start
            restart.append(f"{name}.relays ({'added' if pool is None else 'removed'})")
        elif pool is not None:
            await pool.reconfigure(config.relays, grace=config.relay_grace)
    return restart


#: What ``pbx-zrtp asterisk``/``freeswitch`` alone takes from the relay's sections.
_ADAPTER_RELAY_SETTINGS = {
    "control_socket": "control.socket",
    "control_token_file": "control.token_file",
    "relay_address": "relay.address",
}


async def _reload(
    path: str | None, current: Settings, service: RelayService | None, running: _Running
) -> Settings:
    """SIGHUP: apply what can change live; a file with errors changes nothing."""
    sdnotify.reloading()
    try:
        new = load_settings(path)
    except ConfigError as exc:
        log.error("reload refused, the running configuration stays: configuration error: %s", exc)
        sdnotify.ready("running (the last reload was refused)")
        return current
    logs.set_level(new.relay.log_level)
    if service is not None:
        restart = service.reload(new.relay)
    else:  # an adapter alone: how it reaches its relay was settled at start
        restart = [
            name
            for attr, name in _ADAPTER_RELAY_SETTINGS.items()
            if getattr(current.relay, attr) != getattr(new.relay, attr)
        ]
        new = Settings(current.relay, new.pbxs)
    restart += await _reload_pbxs(new, running)
    if restart:
        log.warning(
            "reloaded; changed but applied only by a restart (systemctl restart): %s",
            ", ".join(restart),
        )
    else:
        log.info(
            "reloaded: log level, timeouts, the ZRTP offer, the adapters' policies and relay"
            " pools (for new calls)"
        )
    sdnotify.ready("running (reloaded)")
    return new


async def _drain(service: RelayService, timeout: float, signals: _Signals) -> None:
    """SIGTERM: refuse new calls and let those in progress carry on, up to ``timeout``."""
    relay = service.relay
    relay.drain()
    calls = relay.active_calls
    if calls == 0 or timeout <= 0:
        return
    log.info(
        "stopping: no new calls; %d in progress keep flowing for up to %g s "
        "(SIGTERM again or Ctrl-C: stop now)",
        calls,
        timeout,
    )
    sdnotify.stopping(f"draining {calls} calls")
    # systemd's TimeoutStopSec would kill us first otherwise
    sdnotify.notify(f"EXTEND_TIMEOUT_USEC={int((timeout + 15) * 1_000_000)}")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while relay.active_calls and (left := deadline - loop.time()) > 0:
        signum = await signals.next(min(left, 0.25))
        if signum in (signal.SIGINT, signal.SIGTERM):
            log.info("stopping now: %d calls cut", relay.active_calls)
            return
    if relay.active_calls:
        log.warning("drain time over: %d calls cut", relay.active_calls)
    else:
        log.info("every call ended")


def _connected(adapter: PbxAdapter) -> Callable[[], bool]:
    return lambda: adapter.link.connected


async def run(
    settings: Settings,
    *,
    with_relay: bool = True,
    adapters: Collection[str] | None = None,
    relay_address: str | None = None,
    config_path: str | None = None,
    metrics: tuple[str, int] | None = None,
) -> int:
    """Start the relay (unless ``with_relay`` is False) and the configured adapters
    (those named in ``adapters``; None: all); ``config_path`` is re-read on SIGHUP.
    Without the relay, ``metrics`` is where the adapters' health is served (the
    relay serves it on its own endpoint)."""
    from pbx_zrtp.config.relays import RelayEntry
    from pbx_zrtp.health import AdapterHealth, adapter_registry
    from pbx_zrtp.relay.handle import LocalRelay, RemoteRelay
    from pbx_zrtp.relay.metrics import MetricsServer
    from pbx_zrtp.relay.pool import RelayPool
    from pbx_zrtp.relay.service import RelayService, read_token

    config = settings.relay
    chosen = {n: c for n, c in settings.pbxs.items() if adapters is None or n in adapters}
    service: RelayService | None = None
    handle: RelayHandle | None = None
    started: list[PbxAdapter] = []
    pools: list[RelayPool] = []
    running = _Running(chosen=adapters)
    health = AdapterHealth()
    health_server: MetricsServer | None = None
    try:
        if with_relay:
            service = RelayService(config)
            service.metrics.registry.register(health)
            await service.start()
            handle = LocalRelay(service.relay)
        elif any(not pbx.relays for pbx in chosen.values()) or not chosen:
            address = relay_address or f"unix:{config.control_socket}"
            token = read_token(config.control_token_file) if config.control_token_file else None
            # A pool of one: a relay that restarts under live calls is noticed (its
            # calls reported failed) just as with several.
            entry = RelayEntry("relay", address, config.relay_address, token=token)
            pool = RelayPool([(entry, RemoteRelay(address, config.relay_address, token=token))])
            health.add_pool("relay", pool.status)
            await pool.start()
            handle = pool
        # Each adapter keeps reconnecting in the background if its PBX is down; its
        # module imports its PBX library (an extra) only here, when it is configured.
        for name, pbx in chosen.items():
            relay = handle
            if pbx.relays:  # an adapter with [[…relays]] gets its own pool of them
                pools.append(RelayPool.connect(pbx.relays, grace=pbx.relay_grace))
                running.pools[name] = pools[-1]
                health.add_pool(name, pools[-1].status)
                await pools[-1].start()
                relay = pools[-1]
            assert relay is not None  # a relay (or a pool of one) exists without [[…relays]]
            adapter = BY_NAME[name].adapter(pbx, relay)
            health.add_adapter(name, _connected(adapter))
            started.append(adapter)
            running.adapters[name] = adapter
            await adapter.start()
        if not started and not with_relay:
            names = " or ".join(f"[{kind.name}]" for kind in KINDS)
            log.warning("no %s section: nothing to do", names)
        if metrics is not None and service is None:
            health_server = MetricsServer(adapter_registry(health))
            await health_server.serve(*metrics)
        # systemd (Type=notify): the control socket and metrics listen, adapters started
        parts = (["relay"] if with_relay else []) + [type(a).__name__ for a in started]
        signals = _Signals()
        sdnotify.ready("running: " + (", ".join(parts) or "nothing configured"))
        while (signum := await signals.next()) == signal.SIGHUP:
            settings = await _reload(config_path, settings, service, running)
        if signum == signal.SIGTERM and service is not None:
            await _drain(service, settings.relay.drain_timeout, signals)
        sdnotify.stopping("stopping")
        log.info("stopping")
    finally:
        if health_server is not None:
            await health_server.close()
        for adapter in reversed(started):
            await adapter.close()
        for each in pools:
            await each.close()
        if service is not None:
            await service.close()
        elif handle is not None:
            with contextlib.suppress(Exception):
                await handle.close()
    return 0
