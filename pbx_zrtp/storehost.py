"""Serve a ZRTP engine's retained-secret requests off the event loop.

An engine built with ``host_cache=True`` never calls the store: it asks for an
entry (``CacheLookupNeeded``) and hands its writes over (``CacheWriteNeeded``).
:class:`EngineStore` passes them to a :class:`~pbx_zrtp.cache.worker.StoreWorker`
(threads, in order per peer) and feeds the answers back to the engine on the
loop, then lets the host pump the engine again. The relay's mirrors and
``pbx-zrtp endpoint`` both host the engine this way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pbx_zrtp.cache.base import CacheEntry, CacheKey, CacheWrite
from pbx_zrtp.cache.worker import StoreWorker
from pbx_zrtp.zrtp.connection import ZrtpConnection
from pbx_zrtp.zrtp.events import CacheLookupNeeded, CacheWriteNeeded, Event

log = logging.getLogger("pbx_zrtp.cache")


class EngineStore:
    """One engine's link to the store: requests out, answers back in."""

    def __init__(
        self,
        worker: StoreWorker,
        engine: ZrtpConnection,
        *,
        clock: Callable[[], float],
        wake: Callable[[ZrtpConnection], None],
        write_failed: Callable[[ZrtpConnection, CacheWrite, str], None] | None = None,
        label: str = "",
    ) -> None:
        self.worker = worker
        self.engine = engine
        self._clock = clock
        #: Called after a lookup's answer reached the engine: pump it (it may have
        #: packets to send now).
        self._wake = wake
        #: Called after a write failed (``engine.cache_error`` says so already).
        self._write_failed = write_failed
        self._label = label

    def handle(self, event: Event) -> bool:
        """Take a store request out of the engine's events; False for other events."""
        if isinstance(event, CacheLookupNeeded):
            key = event.key
            self.worker.lookup(key, lambda entry, error: self._answered(key, entry, error))
            return True
        if isinstance(event, CacheWriteNeeded):
            write = event.write
            self.worker.write(write, lambda error: self._written(write, error))
            return True
        return False

    def _answered(self, key: CacheKey, entry: CacheEntry | None, error: str) -> None:
        if error:
            log.warning("%s: retained secrets could not be read: %s", self._label or "-", error)
        self.engine.provide_cache_entry(key, entry, self._clock(), error=error)
        self._wake(self.engine)

    def _written(self, write: CacheWrite, error: str) -> None:
        if not error:
            return
        log.warning("%s: %s: %s", self._label or "-", write.failure, error)
        self.engine.cache_write_failed(write, error)
        if self._write_failed is not None:
            self._write_failed(self.engine, write, error)
