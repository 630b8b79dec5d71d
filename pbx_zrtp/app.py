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

from pbx_zrtp.asterisk.adapter import AsteriskAdapter
from pbx_zrtp.asterisk.config import parse_asterisk
from pbx_zrtp.freeswitch.adapter import FreeswitchAdapter
from pbx_zrtp.freeswitch.config import parse_freeswitch
from pbx_zrtp.relay.config import RelayConfig
from pbx_zrtp.relay.handle import LocalRelay, RelayHandle, RemoteRelay
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
    handle: RelayHandle
    started: list[Any] = []
    try:
        if with_relay:
            service = RelayService(config)
            await service.start()
            handle = LocalRelay(service.relay)
        else:
            address = relay_address or f"unix:{config.control_socket}"
            token = read_token(config.control_token_file) if config.control_token_file else None
            handle = RemoteRelay(address, config.relay_address, token=token)
            await handle.start()
        # Each adapter keeps reconnecting in the background if its PBX is down.
        if asterisk is not None:
            ami_adapter = AsteriskAdapter(asterisk, handle)
            started.append(ami_adapter)
            await ami_adapter.start()
        if freeswitch is not None:
            esl_adapter = FreeswitchAdapter(freeswitch, handle)
            started.append(esl_adapter)
            await esl_adapter.start()
        if not started and not with_relay:
            log.warning("no [asterisk] or [freeswitch] section: nothing to do")
        await _wait_for_signal()
    finally:
        for adapter in reversed(started):
            await adapter.close()
        if service is not None:
            await service.close()
        else:
            with contextlib.suppress(Exception):
                await handle.close()
    return 0
