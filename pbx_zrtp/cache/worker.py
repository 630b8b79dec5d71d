"""A retained-secret store run off the event loop.

The relay forwards every call's media on one asyncio loop; a store that waits on a
disk or a database (PostgreSQL: seconds when it is down) must never run there.
:class:`StoreWorker` runs a :class:`~pbx_zrtp.cache.base.SecretCache` on a few
worker threads and hands each answer back to the loop as a callback.

Operations on one peer (one ZID pair) run one at a time in the order they were
submitted, so a call's writes land before the next call's lookup of that phone;
different peers do not wait for each other (the store may still serialise them
itself: the SQLite and PostgreSQL stores use one connection each).

A failure never raises into the loop: the callback gets the store's error text
(no secret in it, see :class:`~pbx_zrtp.cache.base.CacheError`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from pbx_zrtp.cache.base import CacheEntry, CacheError, CacheKey, CacheWrite, SecretCache

log = logging.getLogger("pbx_zrtp.cache")

T = TypeVar("T")

#: Threads per worker. The stores serialise on their one connection anyway; a
#: second thread lets a fast store keep answering while one call is stuck in it.
DEFAULT_THREADS = 2

_Order = tuple[bytes, bytes]


@dataclass
class _Job:
    number: int
    run: Callable[[], Any]
    done: Callable[[Any, str], None]


class StoreWorker:
    """Runs a store's calls on worker threads, in order per peer; answers on the loop."""

    def __init__(self, store: SecretCache, *, threads: int = DEFAULT_THREADS) -> None:
        if threads < 1:
            raise ValueError("a store worker needs at least one thread")
        self.store = store
        self._threads = threads
        self._executor: ThreadPoolExecutor | None = None
        self._queues: dict[_Order, deque[_Job]] = {}
        self._submitted = 0
        #: Jobs not answered yet: number -> the peer they belong to.
        self._outstanding: dict[int, _Order] = {}
        self._waiters: list[tuple[int, _Order | None, asyncio.Future[None]]] = []

    def __repr__(self) -> str:
        return f"StoreWorker({self.store!r}, {self.pending} pending)"

    @property
    def pending(self) -> int:
        """Operations submitted and not yet answered."""
        return len(self._outstanding)

    def lookup(self, key: CacheKey, done: Callable[[CacheEntry | None, str], None]) -> None:
        """Look ``key`` up; ``done(entry, "")`` or ``done(None, error)`` on the loop."""
        self._submit((key.self_zid, key.peer_zid), lambda: self.store.lookup(key), done)

    def write(self, write: CacheWrite, done: Callable[[str], None] | None = None) -> None:
        """Apply ``write``; ``done(error)`` on the loop, error "" when it was stored."""

        def finished(_result: object, error: str) -> None:
            if done is not None:
                done(error)

        key = write.key
        self._submit((key.self_zid, key.peer_zid), lambda: write.apply(self.store), finished)

    async def apply(self, write: CacheWrite) -> str:
        """Apply ``write`` in its peer's order and wait for it: the error, "" if stored."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        def done(error: str) -> None:
            if not future.done():
                future.set_result(error)

        self.write(write, done)
        return await future

    async def run(self, function: Callable[[], T]) -> T:
        """Run any other store call (listings) on a worker thread, after what is queued."""
        await self.drain()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool(), function)

    async def drain(self, timeout: float | None = None, key: CacheKey | None = None) -> bool:
        """Wait until every operation submitted so far (for ``key``'s peer only, if
        given) is answered; later ones are not waited for, so a busy relay cannot
        starve this. False on time-out."""
        target = self._submitted
        order = None if key is None else (key.self_zid, key.peer_zid)
        if self._settled(target, order):
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((target, order, future))
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        """Stop the threads once the operations already running are done.

        Queued operations still run if the loop goes on; a later submission
        starts new threads, so a closed worker is never a trap.
        """
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)

    # ------------------------------------------------------------------ internals

    def _settled(self, target: int, order: _Order | None) -> bool:
        return not any(
            number <= target and (order is None or peer == order)
            for number, peer in self._outstanding.items()
        )

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self._threads, thread_name_prefix="pbx-zrtp-store"
            )
        return self._executor

    def _submit(
        self, order: _Order, function: Callable[[], Any], done: Callable[[Any, str], None]
    ) -> None:
        self._submitted += 1
        job = _Job(self._submitted, function, done)
        self._outstanding[job.number] = order
        queue = self._queues.get(order)
        if queue is not None:
            queue.append(job)  # runs after the peer's earlier operations
            return
        self._queues[order] = deque([job])
        self._start(order, job)

    def _start(self, order: _Order, job: _Job) -> None:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool(), _guarded, job.run)
        future.add_done_callback(lambda f: self._finished(order, f))

    def _finished(self, order: _Order, future: asyncio.Future[tuple[Any, str]]) -> None:
        queue = self._queues[order]
        job = queue.popleft()
        if future.cancelled():
            result, error = None, "the store operation was cancelled"
        else:
            result, error = future.result()
        del self._outstanding[job.number]
        try:
            job.done(result, error)
        except Exception:  # a host bug must not stop this peer's queue
            log.exception("store answer handler failed")
        if queue:
            self._start(order, queue[0])
        else:
            del self._queues[order]
        waiting = []
        for target, peer, waiter in self._waiters:
            if waiter.done():
                continue  # timed out
            if self._settled(target, peer):
                waiter.set_result(None)
            else:
                waiting.append((target, peer, waiter))
        self._waiters = waiting


def _guarded(function: Callable[[], Any]) -> tuple[Any, str]:
    """Run one store call on a worker thread: (result, "") or (None, error text)."""
    try:
        return function(), ""
    except CacheError as exc:
        return None, str(exc)
    except Exception as exc:  # a store bug costs continuity, never the relay
        log.exception("retained-secret store failed unexpectedly")
        return None, f"store failure ({type(exc).__name__})"
