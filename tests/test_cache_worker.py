"""StoreWorker: a store run on threads, in order per peer, answers on the loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from pbx_zrtp.cache.base import (
    CacheEntry,
    CacheError,
    CacheKey,
    RetainedSecretWrite,
    SasVerifiedWrite,
    SecretCache,
)
from pbx_zrtp.cache.memory import MemorySecretCache
from pbx_zrtp.cache.worker import StoreWorker

KEY_1 = CacheKey(b"S" * 12, b"1" * 12)
KEY_1_OTHER_URI = CacheKey(b"S" * 12, b"1" * 12, "sip:200@pbx")
KEY_2 = CacheKey(b"S" * 12, b"2" * 12)


class GatedStore(SecretCache):
    """A memory store whose calls for a peer wait until that peer's gate opens."""

    blocking = True

    def __init__(self) -> None:
        self.inner = MemorySecretCache()
        self.gates: dict[bytes, threading.Event] = {}
        self.log: list[str] = []
        self.fail: dict[str, Exception] = {}

    def gate(self, key: CacheKey) -> threading.Event:
        return self.gates.setdefault(key.peer_zid, threading.Event())

    def _call(self, what: str, key: CacheKey, run: Callable[[], object]) -> object:
        assert self.gate(key).wait(10), f"{what} never released"
        self.log.append(f"{what}:{key.peer_zid[:1].decode()}")
        if what in self.fail:
            raise self.fail[what]
        return run()

    def lookup(self, key: CacheKey) -> CacheEntry:
        result = self._call("lookup", key, lambda: self.inner.lookup(key))
        assert isinstance(result, CacheEntry)
        return result

    def update_retained_secret(
        self, key: CacheKey, rs1: bytes, lifetime: int, *, keep_previous: bool
    ) -> None:
        self._call(
            "update",
            key,
            lambda: self.inner.update_retained_secret(
                key, rs1, lifetime, keep_previous=keep_previous
            ),
        )

    def set_sas_verified(self, key: CacheKey, verified: bool) -> None:
        self._call("verified", key, lambda: self.inner.set_sas_verified(key, verified))

    def store_pbx_secret(self, key: CacheKey, secret: bytes, lifetime: int) -> None:
        self._call("pbx", key, lambda: self.inner.store_pbx_secret(key, secret, lifetime))

    def forget(self, key: CacheKey) -> None:
        self._call("forget", key, lambda: self.inner.forget(key))

    def local_zid(self, create: Callable[[], bytes], name: str = "default") -> bytes:
        return self.inner.local_zid(create, name)


def test_one_peers_operations_run_in_order_and_others_do_not_wait() -> None:
    async def scenario() -> None:
        store = GatedStore()
        worker = StoreWorker(store, threads=2)
        answers: list[str] = []
        worker.write(RetainedSecretWrite(KEY_1, b"r" * 32, 3600), lambda e: answers.append("w1"))
        worker.write(SasVerifiedWrite(KEY_1_OTHER_URI, True), lambda e: answers.append("v1"))
        worker.lookup(KEY_1, lambda entry, e: answers.append(f"l1:{entry.rs1 is not None}"))
        worker.lookup(KEY_2, lambda entry, e: answers.append("l2"))
        store.gate(KEY_2).set()
        await asyncio.wait_for(_until(lambda: answers == ["l2"]), 5)  # peer 2 is not stuck
        assert worker.pending == 3
        store.gate(KEY_1).set()
        assert await worker.drain(5)
        # Peer 1's operations in submission order, across URIs; the lookup sees the write.
        assert answers == ["l2", "w1", "v1", "l1:True"]
        assert [x for x in store.log if x.endswith(":1")] == ["update:1", "verified:1", "lookup:1"]
        worker.close()

    asyncio.run(scenario())


def test_failures_come_back_as_text_never_as_exceptions() -> None:
    async def scenario() -> None:
        store = GatedStore()
        store.gate(KEY_1).set()
        store.fail["lookup"] = CacheError("database down")
        store.fail["update"] = RuntimeError("a bug in the store")
        worker = StoreWorker(store)
        got: list[tuple[object, str]] = []
        worker.lookup(KEY_1, lambda entry, error: got.append((entry, error)))
        write = RetainedSecretWrite(KEY_1, b"r" * 32, 3600)
        assert await worker.apply(write) == "store failure (RuntimeError)"
        assert got == [(None, "database down")]
        store.fail.clear()
        assert await worker.apply(write) == ""  # the peer's queue goes on
        worker.close()

    asyncio.run(scenario())


def test_drain_waits_only_for_what_was_submitted_before() -> None:
    async def scenario() -> None:
        store = GatedStore()
        worker = StoreWorker(store)
        worker.lookup(KEY_1, lambda entry, error: None)
        assert not await worker.drain(0.05)  # stuck on peer 1
        assert await worker.drain(0.05, KEY_2)  # nothing for peer 2
        store.gate(KEY_2).set()
        drained = asyncio.ensure_future(worker.drain(5, KEY_1))
        worker.lookup(KEY_2, lambda entry, error: None)
        await asyncio.sleep(0.05)
        assert not drained.done()
        store.gate(KEY_1).set()
        assert await drained
        assert await worker.drain(5)
        worker.close()

    asyncio.run(scenario())


def test_a_failing_answer_handler_does_not_stop_the_queue_and_close_is_not_a_trap() -> None:
    async def scenario() -> None:
        store = GatedStore()
        store.gate(KEY_1).set()
        worker = StoreWorker(store)

        def broken(entry: CacheEntry | None, error: str) -> None:
            raise ValueError("host bug")

        worker.lookup(KEY_1, broken)
        assert await worker.apply(SasVerifiedWrite(KEY_1, True)) == ""
        worker.close()
        assert await worker.apply(SasVerifiedWrite(KEY_1, False)) == ""  # new threads
        assert not store.inner.lookup(KEY_1).sas_verified
        worker.close()

    asyncio.run(scenario())


def test_a_worker_needs_a_thread() -> None:
    with pytest.raises(ValueError, match="thread"):
        StoreWorker(MemorySecretCache(), threads=0)


async def _until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await asyncio.sleep(0.005)
