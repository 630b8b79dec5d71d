"""What ``pbx-zrtp run`` / ``relay`` / ``asterisk`` start, and how they stop.

By default one process runs the relay and the configured adapters, talking in
process; ``pbx-zrtp asterisk --relay unix:…`` runs the adapter alone against a
relay elsewhere (control API).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

from pbx_zrtp import sdnotify
from pbx_zrtp.asterisk.config import parse_asterisk
from pbx_zrtp.freeswitch.config import parse_freeswitch
from pbx_zrtp.relay.config import RelayConfig
from pbx_zrtp.relay.handle import LocalRelay, RelayHandle, RemoteRelay
from pbx_zrtp.relay.pool import RelayEntry, RelayPool
from pbx_zrtp.relay.service import RelayService, read_token

log = logging.getLogger("pbx_zrtp")


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("stopping")


async def _pool(entries: list[Any], grace: float) -> RelayHandle:
    """An adapter with ``[[…relays]]`` gets its own pool of them."""
    pool = RelayPool.connect(entries, grace=grace)
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
) -> int:
    """Start the relay (unless ``with_relay`` is False) and the configured adapters."""
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
    try:
        if with_relay:
            service = RelayService(config)
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
            handle = RelayPool([(entry, RemoteRelay(address, config.relay_address, token=token))])
            await handle.start()
        # Each adapter keeps reconnecting in the background if its PBX is down.
        # An adapter's module imports its PBX library (an extra): only when configured.
        if asterisk is not None:
            from pbx_zrtp.asterisk.adapter import AsteriskAdapter

            if asterisk.relays:
                pools.append(await _pool(asterisk.relays, asterisk.relay_grace))
            ami_adapter = AsteriskAdapter(asterisk, pools[-1] if asterisk.relays else _one(handle))
            started.append(ami_adapter)
            await ami_adapter.start()
        if freeswitch is not None:
            from pbx_zrtp.freeswitch.adapter import FreeswitchAdapter

            if freeswitch.relays:
                pools.append(await _pool(freeswitch.relays, freeswitch.relay_grace))
            esl_adapter = FreeswitchAdapter(
                freeswitch, pools[-1] if freeswitch.relays else _one(handle)
            )
            started.append(esl_adapter)
            await esl_adapter.start()
        if not started and not with_relay:
            log.warning("no [asterisk] or [freeswitch] section: nothing to do")
        # systemd (Type=notify): the control socket and metrics listen, adapters started
        parts = (["relay"] if with_relay else []) + [type(a).__name__ for a in started]
        sdnotify.ready("running: " + (", ".join(parts) or "nothing configured"))
        await _wait_for_signal()
    finally:
        for adapter in reversed(started):
            await adapter.close()
        for pool in pools:
            await pool.close()
        if service is not None:
            await service.close()
        elif handle is not None:
            with contextlib.suppress(Exception):
                await handle.close()
    return 0
