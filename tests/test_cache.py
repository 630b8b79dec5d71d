"""Retained-secret stores: RFC 6189 §4.6.1 rotation, §4.9 expiry, §7.1 V flag, §7.3.1 pbxsecret."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pbx_zrtp.cache import (
    NEVER_EXPIRES,
    CacheEntry,
    CacheEntryInfo,
    CacheError,
    CacheKey,
    MemorySecretCache,
    SecretCache,
    SqliteSecretCache,
)
from pbx_zrtp.cache.postgres import PostgresSecretCache
from pbx_zrtp.cache.sqlite import SCHEMA_VERSION

ZID_A = b"A" * 12
ZID_B = b"B" * 12
ZID_C = b"C" * 12
KEY = CacheKey(ZID_A, ZID_B)
T0 = 1_700_000_000.0


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


Store = MemorySecretCache | SqliteSecretCache | PostgresSecretCache
MakeStore = Callable[[Callable[[], float]], Store]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeStore]:
    opened: list[Store] = []
    dsn = request.getfixturevalue("pg_dsn") if request.param == "postgres" else ""

    def make(clock: Callable[[], float]) -> Store:
        store: Store
        if request.param == "memory":
            store = MemorySecretCache(clock=clock)
        elif request.param == "postgres":
            store = PostgresSecretCache(dsn, clock=clock)
        else:
            store = SqliteSecretCache(tmp_path / "zrtp-cache.db", clock=clock)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cache(make_store: MakeStore, clock: FakeClock) -> Store:
    return make_store(clock)


def secret(n: int) -> bytes:
    return bytes([n]) * 32


# --- basic semantics -------------------------------------------------------------


def test_stores_implement_the_interface(cache: Store) -> None:
    assert isinstance(cache, SecretCache)


def test_lookup_unknown_key_is_empty(cache: Store) -> None:
    assert cache.lookup(KEY) == CacheEntry()
    assert cache.list_entries() == []


def test_first_update_sets_rs1_only(cache: Store) -> None:
    cache.update_retained_secret(KEY, secret(1), NEVER_EXPIRES, keep_previous=True)
    assert cache.lookup(KEY) == CacheEntry(rs1=secret(1))


def test_dh_rotation_moves_rs1_to_rs2(cache: Store) -> None:
    for n in (1, 2, 3):
        cache.update_retained_secret(KEY, secret(n), NEVER_EXPIRES, keep_previous=True)
    assert cache.lookup(KEY) == CacheEntry(rs1=secret(3), rs2=secret(2))


def test_preshared_update_does_not_save_old_rs1(cache: Store) -> None:
    cache.update_retained_secret(KEY, secret(1), NEVER_EXPIRES, keep_previous=False)
    assert cache.lookup(KEY) == CacheEntry(rs1=secret(1))
    cache.update_retained_secret(KEY, secret(2), NEVER_EXPIRES, keep_previous=True)
    cache.update_retained_secret(KEY, secret(3), NEVER_EXPIRES, keep_previous=False)
    # §4.6.1: rs1 -> rs2 happens in DH mode only; Preshared leaves rs2 alone.
    assert cache.lookup(KEY) == CacheEntry(rs1=secret(3), rs2=secret(1))


def test_lifetime_zero_erases_rs1_and_rs2_but_keeps_verified(cache: Store) -> None:
    cache.update_retained_secret(KEY, secret(1), NEVER_EXPIRES, keep_previous=True)
    cache.update_retained_secret(KEY, secret(2), NEVER_EXPIRES, keep_previous=True)
    cache.set_sas_verified(KEY, True)
    cache.update_retained_secret(KEY, secret(3), 0, keep_previous=True)
    assert cache.lookup(KEY) == CacheEntry(sas_verified=True)


def test_lifetime_zero_on_unknown_key_creates_nothing(cache: Store) -> None:
    cache.update_retained_secret(KEY, secret(1), 0, keep_previous=True)
    assert cache.lookup(KEY) == CacheEntry()
    assert cache.list_entries() == []


# --- expiry ----------------------------------------------------------------------


def test_rs1_expires(cache: Store, clock: FakeClock) -> None:
    cache.update_retained_secret(KEY, secret(1), 100, keep_previous=True)
    clock.advance(99.5)
    assert cache.lookup(KEY).rs1 == secret(1)
    clock.advance(0.5)  # usable strictly before now + lifetime
    assert cache.lookup(KEY) == CacheEntry()


def test_rs1_expired_while_rs2_still_valid(cache: Store, clock: FakeClock) -> None:
    cache.update_retained_secret(KEY, secret(1), NEVER_EXPIRES, keep_previous=True)
    cache.update_retained_secret(KEY, secret(2), 10, keep_previous=True)
    clock.advance(11)
    assert cache.lookup(KEY) == CacheEntry(rs2=secret(1))


def test_rs2_keeps_its_own_expiry(cache: Store, clock: FakeClock) -> None:
    cache.update_retained_secret(KEY, secret(1), 100, keep_previous=True)
    clock.advance(50)
    cache.update_retained_secret(KEY, secret(2), 1000, keep_previous=True)
    assert cache.lookup(KEY) == CacheEntry(rs1=secret(2), rs2=secret(1))
    clock.advance(51)  # secret(1) was stored at T0 for 100 s
    assert cache.lookup(KEY) == CacheEntry(rs1=secret(2))


def test_expired_rs1_is_not_rotated_into_rs2(cache: Store, clock: FakeClock) -> None:
    cache.update_retained_secret(KEY, secret(1), 10, keep_previous=True)
    clock.advance(20)
    cache.update_retained_secret(KEY, secret(2), NEVER_EXPIRES, keep_previous=True)
    clock.advance(-20)  # even if the clock steps back, the expired rs1 is gone
    assert cache.lookup(KEY) == CacheEntry(rs1=secret(2))


def test_never_expires(cache: Store, clock: FakeClock) -> None:
    cache.update_retained_secret(KEY, secret(1), NEVER_EXPIRES, keep_previous=True)
    cache.update_retained_secret(KEY, secret(2), NEVER_EXPIRES, keep_previous=True)
    clock.advance(10 * NEVER_EXPIRES)
    assert cache.lookup(KEY) == CacheEntry(rs1=secret(2), rs2=secret(1))
    [(_, info)] = cache.list_entries()
    assert info.has_rs1 and info.rs1_expires is None and info.rs2_expires is None


def test_longest_finite_lifetime(cache: Store, clock: FakeClock) -> None:
    cache.update_retained_secret(KEY, secret(1), NEVER_EXPIRES - 1, keep_previous=True)
    [(_, info)] = cache.list_entries()
    assert info.rs1_expires == T0 + NEVER_EXPIRES - 1


# --- SAS verified flag (§7.1) ------------------------------------------------------


def test_sas_verified_survives_updates(cache: Store) -> None:
    cache.set_sas_verified(KEY, True)  # creates the entry
    assert cache.lookup(KEY) == CacheEntry(sas_verified=True)
    cache.update_retained_secret(KEY, secret(1), NEVER_EXPIRES, keep_previous=True)
    cache.update_retained_secret(KEY, secret(2), 3600, keep_previous=False)
    assert cache.lookup(KEY) == CacheEntry(rs1=secret(2), sas_verified=True)
    cache.set_sas_verified(KEY, False)
    assert cache.lookup(KEY) == CacheEntry(rs1=secret(2))


def test_new_entry_is_not_verified(cache: Store) -> None:
    cache.update_retained_secret(KEY, secret(1), NEVER_EXPIRES, keep_previous=True)
    assert cache.lookup(KEY).sas_verified is False


# --- keys --------------------------------------------------------------------------


def test_per_uri_keys_are_independent(cache: Store) -> None:
    # One phone (ZID_B) calling two extensions of a PBX that has one ZID (ZID_A).
    ext100 = CacheKey(ZID_A, ZID_B, "sip:100@pbx", "sip:alice@pbx")
    ext200 = CacheKey(ZID_A, ZID_B, "sip:200@pbx", "sip:alice@pbx")
    cache.update_retained_secret(ext100, secret(1), NEVER_EXPIRES, keep_previous=True)
    cache.update_retained_secret(ext200, secret(2), NEVER_EXPIRES, keep_previous=True)
    cache.update_retained_secret(ext100, secret(3), NEVER_EXPIRES, keep_previous=True)
    cache.set_sas_verified(ext200, True)
    assert cache.lookup(ext100) == CacheEntry(rs1=secret(3), rs2=secret(1))
    assert cache.lookup(ext200) == CacheEntry(rs1=secret(2), sas_verified=True)
    assert cache.lookup(KEY) == CacheEntry()  # default URIs are a third key
    assert [key for key, _ in cache.list_entries()] == [ext100, ext200]


def test_zid_pairs_are_independent_and_directional(cache: Store) -> None:
    cache.update_retained_secret(KEY, secret(1), NEVER_EXPIRES, keep_previous=True)
    assert cache.lookup(CacheKey(ZID_A, ZID_C)) == CacheEntry()
    assert cache.lookup(CacheKey(ZID_B, ZID_A)) == CacheEntry()


# --- pbxsecret (§7.3.1) ------------------------------------------------------------


def test_pbx_secret_is_shared_across_uris_of_a_zid_pair(cache: Store, clock: FakeClock) -> None:
    ext100 = CacheKey(ZID_A, ZID_B, "sip:100@pbx")
    ext200 = CacheKey(ZID_A, ZID_B, "sip:200@pbx")
    cache.store_pbx_secret(ext100, secret(9), 100)
    assert cache.lookup(ext200) == CacheEntry(pbx_secret=secret(9))
    assert cache.lookup(KEY).pbx_secret == secret(9)
    assert cache.lookup(CacheKey(ZID_A, ZID_C)).pbx_secret is None
    assert cache.list_entries() == []  # a pbxsecret alone is not a retained-secret entry
    assert cache.list_pbx_secrets() == [(ZID_A, ZID_B, T0 + 100)]
    clock.advance(100)
    assert cache.lookup(ext100) == CacheEntry()
    assert cache.list_pbx_secrets() == []


def test_pbx_secret_replace_and_erase(cache: Store) -> None:
    cache.store_pbx_secret(KEY, secret(8), NEVER_EXPIRES)
    cache.store_pbx_secret(KEY, secret(9), NEVER_EXPIRES)
    assert cache.lookup(KEY).pbx_secret == secret(9)
    cache.store_pbx_secret(KEY, secret(9), 0)
    assert cache.lookup(KEY).pbx_secret is None


# --- forget / purge / list ---------------------------------------------------------


def test_forget(cache: Store) -> None:
    other_uri = CacheKey(ZID_A, ZID_B, "sip:200@pbx")
    other_peer = CacheKey(ZID_A, ZID_C)
    for key in (KEY, other_uri, other_peer):
        cache.update_retained_secret(key, secret(1), NEVER_EXPIRES, keep_previous=True)
        cache.update_retained_secret(key, secret(2), NEVER_EXPIRES, keep_previous=True)
        cache.set_sas_verified(key, True)
        cache.store_pbx_secret(key, secret(9), NEVER_EXPIRES)
    cache.forget(KEY)
    assert cache.lookup(KEY) == CacheEntry()
    # Other URIs of the pair keep their rs1/rs2; the pair's pbxsecret is gone.
    assert cache.lookup(other_uri) == CacheEntry(rs1=secret(2), rs2=secret(1), sas_verified=True)
    assert cache.lookup(other_peer).pbx_secret == secret(9)
    cache.forget(KEY)  # idempotent


def test_list_entries(cache: Store, clock: FakeClock) -> None:
    cache.update_retained_secret(KEY, secret(1), 100, keep_previous=True)
    cache.update_retained_secret(KEY, secret(2), 50, keep_previous=True)
    cache.store_pbx_secret(KEY, secret(3), NEVER_EXPIRES)
    verified_only = CacheKey(ZID_A, ZID_C)
    clock.advance(7)
    cache.set_sas_verified(verified_only, True)
    assert cache.list_entries() == [
        (
            KEY,
            CacheEntryInfo(
                has_rs1=True,
                has_rs2=True,
                rs1_expires=T0 + 50,
                sas_verified=False,
                updated_at=T0,
                rs2_expires=T0 + 100,
                has_pbx_secret=True,
            ),
        ),
        (verified_only, CacheEntryInfo(False, False, None, True, T0 + 7)),
    ]
    clock.advance(60)
    [(_, info), _] = cache.list_entries()
    assert (info.has_rs1, info.rs1_expires, info.has_rs2) == (False, None, True)


def test_purge_expired(cache: Store, clock: FakeClock) -> None:
    short = CacheKey(ZID_A, ZID_B, "short")
    verified = CacheKey(ZID_A, ZID_B, "verified")
    forever = CacheKey(ZID_A, ZID_C)
    cache.update_retained_secret(short, secret(1), 10, keep_previous=True)
    cache.update_retained_secret(short, secret(2), 10, keep_previous=True)
    cache.update_retained_secret(verified, secret(3), 10, keep_previous=True)
    cache.set_sas_verified(verified, True)
    cache.update_retained_secret(forever, secret(4), NEVER_EXPIRES, keep_previous=True)
    cache.update_retained_secret(forever, secret(5), 10, keep_previous=True)
    cache.store_pbx_secret(short, secret(6), 10)
    cache.store_pbx_secret(forever, secret(7), NEVER_EXPIRES)
    assert cache.purge_expired() == 0
    clock.advance(10)
    assert cache.purge_expired() == 5  # short rs1+rs2, verified rs1, forever rs1, pbx
    assert [key for key, _ in cache.list_entries()] == [verified, forever]
    assert cache.lookup(verified) == CacheEntry(sas_verified=True)
    assert cache.lookup(forever) == CacheEntry(rs2=secret(4), pbx_secret=secret(7))
    assert cache.purge_expired() == 0


def test_list_entries_and_reprs_contain_no_secrets(cache: Store) -> None:
    rs1, rs2, pbx = b"\x11" * 32, b"\x22" * 32, b"\x33" * 32
    cache.update_retained_secret(KEY, rs2, NEVER_EXPIRES, keep_previous=True)
    cache.update_retained_secret(KEY, rs1, NEVER_EXPIRES, keep_previous=True)
    cache.store_pbx_secret(KEY, pbx, NEVER_EXPIRES)
    entries = cache.list_entries()
    text = repr(entries) + str(entries) + repr(cache) + repr(cache.lookup(KEY))
    for value in (rs1, rs2, pbx):
        assert value not in entries[0][1].__dict__.values()
        assert repr(value)[2:-1] not in text and value.hex() not in text
    assert not any(isinstance(v, bytes) for v in entries[0][1].__dict__.values())


# --- input validation --------------------------------------------------------------

SECRET_BYTES = b"\xde\xad\xbe\xef" * 16  # 64 bytes, recognisable in a message


@pytest.mark.parametrize(
    "bad_secret",
    [b"", SECRET_BYTES + b"\x01", "not bytes", 1234, None],
    ids=["empty", "65-bytes", "str", "int", "none"],
)
def test_invalid_secret_rejected_without_leaking(cache: Store, bad_secret: Any) -> None:
    calls: list[Callable[[], None]] = [
        lambda: cache.update_retained_secret(KEY, bad_secret, 60, keep_previous=True),
        lambda: cache.store_pbx_secret(KEY, bad_secret, 60),
    ]
    for call in calls:
        with pytest.raises(ValueError) as excinfo:
            call()
        message = str(excinfo.value)
        assert "deadbeef" not in message and "\\xde" not in message
        assert "not bytes" not in message
    assert cache.lookup(KEY) == CacheEntry()


def test_max_length_secret_accepted(cache: Store) -> None:
    cache.update_retained_secret(KEY, SECRET_BYTES, 60, keep_previous=True)
    cache.store_pbx_secret(KEY, bytearray(SECRET_BYTES), 60)  # type: ignore[arg-type]
    assert cache.lookup(KEY) == CacheEntry(rs1=SECRET_BYTES, pbx_secret=SECRET_BYTES)


@pytest.mark.parametrize("bad_lifetime", [-1, NEVER_EXPIRES + 1, 1.5, True, "60"])
def test_invalid_lifetime_rejected(cache: Store, bad_lifetime: Any) -> None:
    with pytest.raises(ValueError, match="lifetime"):
        cache.update_retained_secret(KEY, SECRET_BYTES, bad_lifetime, keep_previous=True)
    with pytest.raises(ValueError, match="lifetime"):
        cache.store_pbx_secret(KEY, SECRET_BYTES, bad_lifetime)
    assert cache.lookup(KEY) == CacheEntry()


def test_invalid_key_rejected(cache: Store) -> None:
    with pytest.raises(ValueError):
        cache.lookup(CacheKey("A" * 12, ZID_B))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        cache.set_sas_verified(CacheKey(ZID_A, ZID_B, 5), True)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        cache.forget((ZID_A, ZID_B))  # type: ignore[arg-type]


# --- concurrency -------------------------------------------------------------------


class TickClock:
    """Each call returns the next tick; remembers, per thread, the tick it last got.

    Both stores read the clock exactly once per update, inside their critical
    section, so ticks give the order in which updates were serialised.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = 0
        self._local = threading.local()

    def __call__(self) -> float:
        with self._lock:
            tick = self._next
            self._next += 1
        self._local.last = tick
        return T0 + tick

    @property
    def last(self) -> int:
        return int(self._local.last)


def _race(stores: list[Store], clock: TickClock, per_thread: int = 50) -> None:
    written: list[tuple[int, bytes]] = []
    written_lock = threading.Lock()
    barrier = threading.Barrier(len(stores))

    errors: list[BaseException] = []

    def worker(index: int, store: Store) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                value = bytes([index, i % 256, i // 256]) * 8
                store.update_retained_secret(KEY, value, 1000, keep_previous=True)
                with written_lock:
                    written.append((clock.last, value))
        except BaseException as exc:  # reported below: a thread's exception is lost otherwise
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n, s)) for n, s in enumerate(stores)]
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # interleave the threads as much as possible
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(old_interval)
    assert errors == []
    written.sort()
    assert [tick for tick, _ in written] == list(range(len(stores) * per_thread))
    entry = stores[0].lookup(KEY)
    # The last serialised update rotated the one just before it: nothing was lost.
    assert (entry.rs1, entry.rs2) == (written[-1][1], written[-2][1])
    [(_, info)] = stores[0].list_entries()
    assert info.rs1_expires == T0 + written[-1][0] + 1000
    assert info.rs2_expires == T0 + written[-2][0] + 1000


def test_concurrent_updates_from_two_threads(make_store: MakeStore) -> None:
    clock = TickClock()
    store = make_store(clock)
    _race([store, store], clock)


# --- SQLite specifics ----------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_sqlite_file_modes(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    old_umask = os.umask(0o000)  # even a permissive umask must not widen the mode
    try:
        with SqliteSecretCache(path) as cache:
            cache.update_retained_secret(KEY, secret(1), NEVER_EXPIRES, keep_previous=True)
            assert _mode(path) == 0o600
            for suffix in ("-wal", "-shm"):
                companion = Path(str(path) + suffix)
                if companion.exists():
                    assert _mode(companion) == 0o600
    finally:
        os.umask(old_umask)


def test_sqlite_tightens_existing_world_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    SqliteSecretCache(path).close()
    os.chmod(path, 0o644)
    wal = Path(str(path) + "-wal")
    wal.touch()
    os.chmod(wal, 0o666)
    with SqliteSecretCache(path) as cache:
        assert cache.lookup(KEY) == CacheEntry()
    assert _mode(path) == 0o600
    if wal.exists():
        assert _mode(wal) == 0o600


def test_sqlite_pragmas_and_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    with SqliteSecretCache(path) as cache:
        assert cache.schema_version == SCHEMA_VERSION
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert {"retained_secrets", "pbx_secrets"} <= tables
    finally:
        conn.close()


def test_sqlite_refuses_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    SqliteSecretCache(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(RuntimeError, match="newer"):
        SqliteSecretCache(path)


def test_sqlite_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    clock = FakeClock()
    with SqliteSecretCache(path, clock=clock) as cache:
        cache.update_retained_secret(KEY, secret(1), NEVER_EXPIRES, keep_previous=True)
        cache.update_retained_secret(KEY, secret(2), 3600, keep_previous=True)
        cache.set_sas_verified(KEY, True)
        cache.store_pbx_secret(KEY, secret(9), NEVER_EXPIRES)
    with SqliteSecretCache(str(path), clock=clock) as cache:
        assert cache.lookup(KEY) == CacheEntry(
            rs1=secret(2), rs2=secret(1), sas_verified=True, pbx_secret=secret(9)
        )
        clock.advance(3600)
        assert cache.lookup(KEY).rs1 is None


def test_sqlite_two_instances_share_one_file(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    with SqliteSecretCache(path) as first, SqliteSecretCache(path) as second:
        first.update_retained_secret(KEY, secret(1), NEVER_EXPIRES, keep_previous=True)
        assert second.lookup(KEY).rs1 == secret(1)
        second.update_retained_secret(KEY, secret(2), NEVER_EXPIRES, keep_previous=True)
        second.set_sas_verified(KEY, True)
        assert first.lookup(KEY) == CacheEntry(rs1=secret(2), rs2=secret(1), sas_verified=True)
        first.forget(KEY)
        assert second.lookup(KEY) == CacheEntry()


def test_sqlite_concurrent_updates_from_two_connections(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    clock = TickClock()
    with (
        SqliteSecretCache(path, clock=clock) as first,
        SqliteSecretCache(path, clock=clock) as second,
    ):
        _race([first, second], clock)


_CHILD = """
import sys
from pbx_zrtp.cache import CacheKey, SqliteSecretCache
key = CacheKey(b"A" * 12, b"B" * 12)
index = int(sys.argv[2])
with SqliteSecretCache(sys.argv[1]) as cache:
    for i in range(40):
        cache.update_retained_secret(key, bytes([index, i]) * 16, 1000, keep_previous=True)
"""


def test_sqlite_shared_between_processes(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    SqliteSecretCache(path).close()
    children = [subprocess.Popen([sys.executable, "-c", _CHILD, str(path), str(n)]) for n in (1, 2)]
    assert [child.wait(timeout=60) for child in children] == [0, 0]
    with SqliteSecretCache(path) as cache:
        entry = cache.lookup(KEY)
    assert entry.rs1 in (bytes([1, 39]) * 16, bytes([2, 39]) * 16)
    assert entry.rs2 is not None and entry.rs2 != entry.rs1
    assert entry.rs2[0] in (1, 2)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_operations_after_close_fail(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    cache: Store
    if kind == "postgres":
        cache = PostgresSecretCache(request.getfixturevalue("pg_dsn"))
    else:
        cache = SqliteSecretCache(tmp_path / "cache.db")
    cache.close()
    cache.close()  # idempotent
    with pytest.raises(CacheError, match="closed"):
        cache.lookup(KEY)
    with pytest.raises(CacheError, match=r"SecretCache\(.*cannot store rs1"):
        cache.update_retained_secret(KEY, secret(1), 60, keep_previous=True)


# --- the two stores agree ----------------------------------------------------------

_KEYS = [KEY, CacheKey(ZID_A, ZID_B, "sip:200@pbx"), CacheKey(ZID_A, ZID_C, "", "sip:bob")]
_LIFETIMES = [0, 1, 5, 30, NEVER_EXPIRES]

_op = st.one_of(
    st.tuples(
        st.just("update"),
        st.sampled_from(range(len(_KEYS))),
        st.integers(1, 255),
        st.sampled_from(_LIFETIMES),
        st.booleans(),
    ),
    st.tuples(st.just("verify"), st.sampled_from(range(len(_KEYS))), st.booleans()),
    st.tuples(
        st.just("pbx"),
        st.sampled_from(range(len(_KEYS))),
        st.integers(1, 255),
        st.sampled_from(_LIFETIMES),
    ),
    st.tuples(st.just("forget"), st.sampled_from(range(len(_KEYS)))),
    st.tuples(st.just("advance"), st.sampled_from([1, 4, 10, 40])),
    st.tuples(st.just("purge")),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_op, max_size=25))
def test_memory_and_sqlite_agree(ops: list[tuple[Any, ...]]) -> None:
    clock = FakeClock()
    with tempfile.TemporaryDirectory() as tmp:
        memory = MemorySecretCache(clock=clock)
        sqlite_store = SqliteSecretCache(Path(tmp) / "cache.db", clock=clock)
        try:
            for op in ops:
                results = []
                for store in (memory, sqlite_store):
                    if op[0] == "update":
                        store.update_retained_secret(
                            _KEYS[op[1]], secret(op[2]), op[3], keep_previous=op[4]
                        )
                    elif op[0] == "verify":
                        store.set_sas_verified(_KEYS[op[1]], op[2])
                    elif op[0] == "pbx":
                        store.store_pbx_secret(_KEYS[op[1]], secret(op[2]), op[3])
                    elif op[0] == "forget":
                        store.forget(_KEYS[op[1]])
                    elif op[0] == "purge":
                        results.append(store.purge_expired())
                if op[0] == "advance":
                    clock.advance(op[1])
                assert results[:1] == results[1:]
                for key in _KEYS:
                    assert memory.lookup(key) == sqlite_store.lookup(key)
                assert memory.list_entries() == sqlite_store.list_entries()
                assert memory.list_pbx_secrets() == sqlite_store.list_pbx_secrets()
        finally:
            sqlite_store.close()


def test_every_store_of_the_package_purges_and_lists_its_pbxsecrets() -> None:
    """SecretCache gives do-nothing defaults (for partial test stores); every real
    store must have its own, or the running relay would never purge it."""
    from pbx_zrtp.cache.base import SecretCache
    from pbx_zrtp.cache.memory import MemorySecretCache
    from pbx_zrtp.cache.postgres import PostgresSecretCache
    from pbx_zrtp.cache.sqlite import SqliteSecretCache

    for store in (MemorySecretCache, SqliteSecretCache, PostgresSecretCache):
        for name in ("purge_expired", "list_pbx_secrets"):
            assert getattr(store, name) is not getattr(SecretCache, name), (store, name)
