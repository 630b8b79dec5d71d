"""What ``pbx-zrtp run`` / ``relay`` / ``asterisk`` start, and how they stop.

By default one process runs the relay and the configured adapters, talking in
process; ``pbx-zrtp asterisk --relay unix:…`` runs the adapter alone against a
relay elsewhere (control API). ``load_settings`` reads a configuration file once,
for ``--check`` and for running alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Collection
from dataclasses import dataclass, field

from pbx_zrtp.calls import RelayHandle
from pbx_zrtp.config import read_toml
from pbx_zrtp.config.fields import Problems
from pbx_zrtp.pbx.registry import BY_NAME, KINDS, PbxAdapter, PbxConfig
from pbx_zrtp.relay import config as relay_config
from pbx_zrtp.relay.config import RelayConfig

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


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("stopping")


async def run(
    settings: Settings,
    *,
    with_relay: bool = True,
    adapters: Collection[str] | None = None,
    relay_address: str | None = None,
) -> int:
    """Start the relay (unless ``with_relay`` is False) and the configured adapters
    (those named in ``adapters``; None: all)."""
    from pbx_zrtp.config.relays import RelayEntry
    from pbx_zrtp.relay.handle import LocalRelay, RemoteRelay
    from pbx_zrtp.relay.pool import RelayPool
    from pbx_zrtp.relay.service import RelayService, read_token

    config = settings.relay
    chosen = {n: c for n, c in settings.pbxs.items() if adapters is None or n in adapters}
    service: RelayService | None = None
    handle: RelayHandle | None = None
    started: list[PbxAdapter] = []
    pools: list[RelayPool] = []
    try:
        if with_relay:
            service = RelayService(config)
            await service.start()
            handle = LocalRelay(service.relay)
        elif any(not pbx.relays for pbx in chosen.values()) or not chosen:
            address = relay_address or f"unix:{config.control_socket}"
            token = read_token(config.control_token_file) if config.control_token_file else None
            # A pool of one: a relay that restarts under live calls is noticed (its
            # calls reported failed) just as with several.
            entry = RelayEntry("relay", address, config.relay_address, token=token)
            pool = RelayPool([(entry, RemoteRelay(address, config.relay_address, token=token))])
            await pool.start()
            handle = pool
        # Each adapter keeps reconnecting in the background if its PBX is down.
        for name, pbx in chosen.items():
            relay = handle
            if pbx.relays:  # an adapter with [[…relays]] gets its own pool of them
                pools.append(RelayPool.connect(pbx.relays, grace=pbx.relay_grace))
                await pools[-1].start()
                relay = pools[-1]
            assert relay is not None  # a relay (or a pool of one) exists without [[…relays]]
            adapter = BY_NAME[name].adapter(pbx, relay)
            started.append(adapter)
            await adapter.start()
        if not started and not with_relay:
            names = " or ".join(f"[{kind.name}]" for kind in KINDS)
            log.warning("no %s section: nothing to do", names)
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
