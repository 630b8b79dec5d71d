"""``pbx-zrtp relay``: the relay process (mirrors, control API, metrics)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from pbx_zrtp.cache.base import CacheError, SecretCache
from pbx_zrtp.cache.memory import MemorySecretCache
from pbx_zrtp.cache.sqlite import SqliteSecretCache
from pbx_zrtp.config import ConfigError, read_secret_file
from pbx_zrtp.relay.config import RelayConfig, read_password_file
from pbx_zrtp.relay.control.server import ControlServer
from pbx_zrtp.relay.core import Relay, RelayLayout
from pbx_zrtp.relay.fastpath import FastPath
from pbx_zrtp.relay.fastpath import available as fastpath_available
from pbx_zrtp.relay.metrics import RelayMetrics
from pbx_zrtp.relay.mirror import MirrorSettings
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from pbx_zrtp.zrtp.warmup import warm_up

log = logging.getLogger("pbx_zrtp.relay")


def open_cache(
    path: str | None, url: str | None = None, password_file: str | None = None
) -> SecretCache:
    """The configured store: PostgreSQL (``url``), SQLite (``path``), or memory.

    Raises CacheError when the store cannot be opened (e.g. the database is down).
    """
    if url is not None:
        try:
            from pbx_zrtp.cache.postgres import PostgresSecretCache
        except ImportError:
            raise ConfigError(
                "cache.url: PostgreSQL support is not installed: pip install 'pbx-zrtp[postgres]'"
            ) from None
        password = read_password_file(password_file) if password_file else None
        return PostgresSecretCache(url, password=password)
    if path is None:
        return MemorySecretCache()
    Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return SqliteSecretCache(path)


def open_fastpath(
    mode: str, workers: int = 1, event_loop: str = "asyncio"
) -> list[FastPath] | None:
    """The native forwarding workers, per `relay.fastpath` ("auto", "on", "off") and
    `relay.fastpath_workers` (0: one per CPU but one, for the asyncio loop); none on
    uvloop, whose UDP transports cannot pause reading for the worker."""
    if mode == "off":
        return None
    if event_loop == "uvloop":
        log.info("event loop uvloop: secured media is forwarded in Python (no fast path)")
        return None
    reason = fastpath_available()
    if reason is not None:
        if mode == "on":
            raise ConfigError(f"relay.fastpath: on, but the fast path is unavailable: {reason}")
        log.warning("fast path unavailable (%s): secured media is forwarded in Python", reason)
        return None
    count = workers or max(1, (os.cpu_count() or 2) - 1)
    log.info("fast path on: secured calls are forwarded natively by %d worker(s)", count)
    return [FastPath() for _ in range(count)]


def read_token(path: str) -> str:
    return read_secret_file("control.token_file", path, min_length=16)


#: RelayConfig fields that only a restart applies -> the settings' names.
RESTART_SETTINGS = {
    "relay_address": "relay.address",
    "pbx_address": "relay.pbx_address",
    "port_min": "relay.ports",
    "port_max": "relay.ports",
    "prebind": "relay.prebind",
    "prebind_policy": "relay.prebind_policy",
    "rtcp": "relay.rtcp",
    "fastpath": "relay.fastpath",
    "fastpath_workers": "relay.fastpath_workers",
    "event_loop": "relay.event_loop",
    "cache_path": "cache.path",
    "cache_url": "cache.url",
    "cache_password_file": "cache.password_file",
    "control_socket": "control.socket",
    "control_tcp": "control.tcp",
    "control_token_file": "control.token_file",
    "metrics": "metrics.listen",
}


class RelayService:
    """Everything ``pbx-zrtp relay`` runs, started and stopped as one."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.cache = open_cache(config.cache_path, config.cache_url, config.cache_password_file)
        self.zid = self.cache.local_zid(lambda: os.urandom(12))
        settings = MirrorSettings(
            zrtp=self._zrtp_for(config),
            cache=self.cache,
            optional_timeout=config.optional_timeout,
            required_timeout=config.required_timeout,
        )
        layout = RelayLayout(
            config.relay_address,
            config.pbx_address,
            config.port_min,
            config.port_max,
            config.prebind,
            config.prebind_policy,
            config.rtcp,
        )
        self.relay = Relay(
            layout,
            settings,
            fastpath=open_fastpath(config.fastpath, config.fastpath_workers, config.event_loop),
        )
        token = read_token(config.control_token_file) if config.control_token_file else None
        self.control = ControlServer(self.relay, token=token)
        self.metrics = RelayMetrics(self.relay)
        self.metrics_port: int | None = None
        self._purging: asyncio.Task[None] | None = None
        self.control_port: int | None = None

    def _zrtp_for(self, config: RelayConfig) -> Callable[[str, str], ZrtpConfiguration]:
        zrtp, zid = config.zrtp, self.zid

        def configuration(self_uri: str, peer_uri: str) -> ZrtpConfiguration:
            return zrtp.configuration(zid, self_uri, peer_uri)

        return configuration

    def reload(self, new: RelayConfig) -> list[str]:
        """Apply what can change under live calls (SIGHUP): the timeouts and the
        [zrtp] offer, for calls that start from now on; returns the settings that
        changed but need a restart."""
        old = self.config
        self.relay.settings = replace(
            self.relay.settings,
            zrtp=self._zrtp_for(new),
            optional_timeout=new.optional_timeout,
            required_timeout=new.required_timeout,
        )
        restart = sorted(
            {n for a, n in RESTART_SETTINGS.items() if getattr(old, a) != getattr(new, a)}
        )
        # what runs is what the file said, except what needs a restart
        kept = {attr: getattr(old, attr) for attr in RESTART_SETTINGS}
        self.config = replace(new, **kept)
        return restart

    async def start(self) -> None:
        warm_up(self.config.zrtp.key_agreements[:1])
        await self.relay.start()
        self._purging = asyncio.ensure_future(self._purge_forever())
        if self.config.control_socket:
            await self.control.start_unix(self.config.control_socket)
        if self.config.control_tcp:
            self.control_port = await self.control.start_tcp(*self.config.control_tcp)
        if self.config.metrics:
            self.metrics_port = await self.metrics.serve(*self.config.metrics)
        log.info(
            "relay ready: %s -> PBX %s, ports %d-%d, ZID %s, control %s",
            self.config.relay_address,
            self.config.pbx_address,
            self.config.port_min,
            self.config.port_max,
            self.zid.hex(),
            self.config.control_socket or "tcp",
        )

    async def _purge_forever(self) -> None:
        """Expired secrets leave the store on a schedule (and at start): a lookup
        already ignores them, but a stolen or shared database should not keep them.
        A blocking store is purged on its worker's threads, never on the media loop."""
        store = self.relay.settings.store
        while True:
            try:
                if store is not None:
                    erased = await store.run(self.cache.purge_expired)
                else:
                    erased = self.cache.purge_expired()
            except CacheError as exc:
                log.warning("cache: purging expired secrets failed: %s", exc)
            else:
                if erased:
                    log.info("cache: purged %d expired secret(s)", erased)
            await asyncio.sleep(self.config.cache_purge_interval)

    async def close(self) -> None:
        if self._purging is not None:
            self._purging.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purging
        await self.control.close()
        await self.metrics.close()
        await self.relay.close()
        self.cache.close()
