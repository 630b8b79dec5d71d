"""What ``pbx-zrtp run`` / ``relay`` / ``asterisk`` start, and how they stop.

By default one process runs the relay and the configured adapters, talking in
process; ``pbx-zrtp asterisk --relay unix:…`` runs the adapter alone against a
relay elsewhere (control API).

Signals, as systemd sends them: SIGHUP (``systemctl reload``) re-reads the file and
applies what can change under live calls (log level, timeouts, the ZRTP offer, for
calls from then on), naming what needs a restart; SIGTERM (``systemctl stop`` or
``restart``) drains: no new calls, those in progress keep flowing up to
``[timeouts] drain`` seconds, then everything stops; SIGINT (Ctrl-C) or a second
SIGTERM stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import replace
from typing import Any

from pbx_zrtp import logs, sdnotify
from pbx_zrtp.asterisk.config import parse_asterisk
from pbx_zrtp.freeswitch.config import parse_freeswitch
from pbx_zrtp.health import AdapterHealth, adapter_registry
from pbx_zrtp.relay.config import ConfigError, RelayConfig, load_config
from pbx_zrtp.relay.handle import LocalRelay, RelayHandle, RemoteRelay
from pbx_zrtp.relay.metrics import MetricsServer
from pbx_zrtp.relay.pool import RelayEntry, RelayPool
from pbx_zrtp.relay.service import RelayService, read_token

log = logging.getLogger("pbx_zrtp")


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


def _adapter_sections(config: RelayConfig) -> None:
    """Parse the adapter sections (ConfigError if one is wrong)."""
    if "asterisk" in config.adapters:
        parse_asterisk(config.adapters["asterisk"])
    if "freeswitch" in config.adapters:
        parse_freeswitch(config.adapters["freeswitch"])


def _reload(path: str | None, current: RelayConfig, service: RelayService | None) -> RelayConfig:
    """SIGHUP: apply what can change live; a file with errors changes nothing."""
    sdnotify.reloading()
    try:
        new = load_config(path)
        _adapter_sections(new)
    except ConfigError as exc:
        log.error("reload refused, the running configuration stays: configuration error: %s", exc)
        sdnotify.ready("running (the last reload was refused)")
        return current
    logs.set_level(new.log_level)
    restart = service.reload(new) if service is not None else []
    # The adapters' sections: their connections and relay pools are built at start.
    restart += [
        f"[{n}]"
        for n in ("asterisk", "freeswitch")
        if current.adapters.get(n) != new.adapters.get(n)
    ]
    if restart:
        log.warning(
            "reloaded; changed but applied only by a restart (systemctl restart): %s",
            ", ".join(restart),
        )
    else:
        log.info("reloaded: log level, timeouts and the ZRTP offer (for new calls)")
    sdnotify.ready("running (reloaded)")
    return replace(new, adapters=current.adapters)  # as they run, until a restart


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


async def _pool(entries: list[Any], grace: float, health: AdapterHealth, name: str) -> RelayHandle:
    """An adapter with ``[[…relays]]`` gets its own pool of them."""
    pool = RelayPool.connect(entries, grace=grace)
    health.add_pool(name, pool.status)
    await pool.start()
    return pool


def _one(handle: RelayHandle | None) -> RelayHandle:
    assert handle is not None  # created whenever an adapter has no [[…relays]]
    return handle


async def run(
    config: RelayConfig,
    *,
    with_relay: bool = True,
    adapters: tuple[str, ...] = ("asterisk", "freeswitch"),
    relay_address: str | None = None,
    config_path: str | None = None,
    metrics: tuple[str, int] | None = None,
) -> int:
    """Start the relay (unless ``with_relay`` is False) and the configured adapters;
    ``config_path`` is re-read on SIGHUP. Without the relay, ``metrics`` is where
    the adapters' health is served (the relay serves it on its own endpoint)."""
    # Parse adapter sections first: a bad [asterisk] section fails before anything binds.
    asterisk = freeswitch = None
    if "asterisk" in adapters and "asterisk" in config.adapters:
        asterisk = parse_asterisk(config.adapters["asterisk"])
    if "freeswitch" in adapters and "freeswitch" in config.adapters:
        freeswitch = parse_freeswitch(config.adapters["freeswitch"])
    service: RelayService | None = None
    handle: RelayHandle | None = None
    started: list[Any] = []
    pools: list[RelayHandle] = []
    health = AdapterHealth()
    health_server: MetricsServer | None = None
    try:
        if with_relay:
            service = RelayService(config)
            service.metrics.registry.register(health)
            await service.start()
            handle = LocalRelay(service.relay)
        elif any(a is not None and not a.relays for a in (asterisk, freeswitch)) or not (
            asterisk or freeswitch
        ):
            address = relay_address or f"unix:{config.control_socket}"
            token = read_token(config.control_token_file) if config.control_token_file else None
            # A pool of one: a relay that restarts under live calls is noticed (its
            # calls reported failed) just as with several.
            entry = RelayEntry("relay", address, config.relay_address, token=token)
            one = RelayPool([(entry, RemoteRelay(address, config.relay_address, token=token))])
            health.add_pool("relay", one.status)
            handle = one
            await handle.start()
        # Each adapter keeps reconnecting in the background if its PBX is down.
        # An adapter's module imports its PBX library (an extra): only when configured.
        if asterisk is not None:
            from pbx_zrtp.asterisk.adapter import AsteriskAdapter

            if asterisk.relays:
                pools.append(await _pool(asterisk.relays, asterisk.relay_grace, health, "asterisk"))
            ami_adapter = AsteriskAdapter(asterisk, pools[-1] if asterisk.relays else _one(handle))
            health.add_adapter("asterisk", ami_adapter.ami.logged_in.is_set)
            started.append(ami_adapter)
            await ami_adapter.start()
        if freeswitch is not None:
            from pbx_zrtp.freeswitch.adapter import FreeswitchAdapter

            if freeswitch.relays:
                pools.append(
                    await _pool(freeswitch.relays, freeswitch.relay_grace, health, "freeswitch")
                )
            esl_adapter = FreeswitchAdapter(
                freeswitch, pools[-1] if freeswitch.relays else _one(handle)
            )
            health.add_adapter("freeswitch", esl_adapter.esl.connected.is_set)
            started.append(esl_adapter)
            await esl_adapter.start()
        if not started and not with_relay:
            log.warning("no [asterisk] or [freeswitch] section: nothing to do")
        if metrics is not None and service is None:
            health_server = MetricsServer(adapter_registry(health))
            await health_server.serve(*metrics)
        # systemd (Type=notify): the control socket and metrics listen, adapters started
        parts = (["relay"] if with_relay else []) + [type(a).__name__ for a in started]
        signals = _Signals()
        sdnotify.ready("running: " + (", ".join(parts) or "nothing configured"))
        while (signum := await signals.next()) == signal.SIGHUP:
            config = _reload(config_path, config, service)
        if signum == signal.SIGTERM and service is not None:
            await _drain(service, config.drain_timeout, signals)
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
