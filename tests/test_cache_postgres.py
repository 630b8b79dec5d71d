"""The PostgreSQL store as several relays share it: races, one ZID, outages, no leaks.

The behaviour tests of tests/test_cache.py already run against PostgreSQL too; these
cover what only a shared, networked store has.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import time
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pbx_zrtp.cache import CacheEntry, CacheError, CacheKey, MemorySecretCache
from pbx_zrtp.cache.postgres import SCHEMA_VERSION, PostgresSecretCache, safe_dsn
from tests.postgres_server import PostgresServer
from tests.test_cache import _KEYS, KEY, FakeClock, _op, secret


def _admin(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True)


# --- two relays hammering the same peer -------------------------------------------

_AUDIT = """
CREATE TABLE audit (id bigserial PRIMARY KEY, old_rs1 bytea, new_rs1 bytea, new_rs2 bytea);
CREATE FUNCTION audit_fn() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit (old_rs1, new_rs1, new_rs2)
    VALUES (CASE WHEN TG_OP = 'UPDATE' THEN OLD.rs1 END, NEW.rs1, NEW.rs2);
    RETURN NEW;
END $$;
CREATE TRIGGER audit AFTER INSERT OR UPDATE ON retained_secrets
    FOR EACH ROW EXECUTE FUNCTION audit_fn();
"""

_HAMMER = """
import sys
from pbx_zrtp.cache import CacheKey
from pbx_zrtp.cache.postgres import PostgresSecretCache
key = CacheKey(b"A" * 12, b"B" * 12)
index, count = int(sys.argv[2]), int(sys.argv[3])
with PostgresSecretCache(sys.argv[1]) as cache:
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(count):
        cache.update_retained_secret(
            key, bytes([index]) + i.to_bytes(2, "big") + bytes(29), 3600, keep_previous=True
        )
        if i % 7 == 0:
            cache.lookup(key)
"""


def _start_together(argvs: list[list[str]]) -> list[subprocess.Popen[str]]:
    """Start processes that print a line when ready, then release them at once."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for argv in argvs
    ]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    return procs


def test_two_relays_rotating_the_same_peer_lose_no_update(pg_dsn: str) -> None:
    PostgresSecretCache(pg_dsn).close()  # schema
    with _admin(pg_dsn) as admin:
        admin.execute(_AUDIT)
    count = 250
    procs = _start_together([[_HAMMER, pg_dsn, str(n), str(count)] for n in (1, 2)])
    assert [p.wait(timeout=90) for p in procs] == [0, 0]
    with _admin(pg_dsn) as admin:
        rows = admin.execute("SELECT old_rs1, new_rs1, new_rs2 FROM audit ORDER BY id").fetchall()
    assert len(rows) == 2 * count
    # Every update moved exactly the rs1 it replaced into rs2 (no torn row), and
    # each update replaced the one serialised just before it (no lost update).
    assert rows[0][0] is None and rows[0][2] is None
    for previous, row in itertools.pairwise(rows):
        assert row[0] == previous[1]
        assert row[2] == row[0]
    writers = {bytes(row[1])[0] for row in rows}
    assert writers == {1, 2}
    interleaved = sum(1 for a, b in itertools.pairwise(rows) if bytes(a[1])[0] != bytes(b[1])[0])
    assert interleaved > 1  # both relays really were writing at the same time
    with PostgresSecretCache(pg_dsn) as cache:
        entry = cache.lookup(KEY)
    assert (entry.rs1, entry.rs2) == (bytes(rows[-1][1]), bytes(rows[-1][0]))


_FIRST_START = """
import os, sys
from pbx_zrtp.cache.postgres import PostgresSecretCache
print("ready", flush=True)
sys.stdin.readline()
with PostgresSecretCache(sys.argv[1]) as cache:
    print(cache.local_zid(lambda: os.urandom(12)).hex(), flush=True)
"""


def test_relays_starting_together_share_one_zid(pg_dsn: str) -> None:
    # A fresh database: the schema creation races too.
    procs = _start_together([[_FIRST_START, pg_dsn] for _ in range(4)])
    outputs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0]
    assert len(set(outputs)) == 1 and len(bytes.fromhex(outputs[0])) == 12
    with PostgresSecretCache(pg_dsn) as cache:
        assert cache.local_zid(lambda: b"X" * 12).hex() == outputs[0]
        assert cache.local_zid(lambda: b"Y" * 12, name="other") == b"Y" * 12


def test_two_stores_share_one_database(pg_dsn: str) -> None:
    with PostgresSecretCache(pg_dsn) as first, PostgresSecretCache(pg_dsn) as second:
        first.update_retained_secret(KEY, secret(1), 3600, keep_previous=True)
        assert second.lookup(KEY).rs1 == secret(1)
        second.update_retained_secret(KEY, secret(2), 3600, keep_previous=True)
        second.set_sas_verified(KEY, True)
        assert first.lookup(KEY) == CacheEntry(rs1=secret(2), rs2=secret(1), sas_verified=True)
        first.forget(KEY)
        assert second.lookup(KEY) == CacheEntry()


# --- schema ------------------------------------------------------------------------


def test_schema_version_and_newer_schema_refused(pg_dsn: str) -> None:
    with PostgresSecretCache(pg_dsn) as cache:
        assert cache.schema_version == SCHEMA_VERSION
        cache.update_retained_secret(KEY, secret(1), 3600, keep_previous=True)
    with PostgresSecretCache(pg_dsn) as cache:  # reopening migrates nothing, loses nothing
        assert cache.lookup(KEY).rs1 == secret(1)
    with _admin(pg_dsn) as admin:
        admin.execute("UPDATE pbx_zrtp_schema SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(RuntimeError, match="newer"):
        PostgresSecretCache(pg_dsn)


# --- outages -----------------------------------------------------------------------


def _terminate(admin: psycopg.Connection[Any], dbname: str) -> int:
    rows = admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()",
        (dbname,),
    ).fetchall()
    return len(rows)


def _backend_pid(cache: PostgresSecretCache) -> int:
    assert cache._conn is not None
    return int(cache._conn.info.backend_pid)


def test_dropped_connection_is_replaced_on_the_next_call(
    pg_dsn: str, pg_server: PostgresServer
) -> None:
    dbname = psycopg.conninfo.conninfo_to_dict(pg_dsn)["dbname"]
    assert isinstance(dbname, str)
    with PostgresSecretCache(pg_dsn) as cache, _admin(pg_server.dsn()) as admin:
        cache.update_retained_secret(KEY, secret(1), 3600, keep_previous=True)
        before = _backend_pid(cache)
        assert _terminate(admin, dbname) == 1
        # The idle connection died: the next call reconnects (and, since nothing was
        # committed on the dead one, runs the rotation exactly once).
        cache.update_retained_secret(KEY, secret(2), 3600, keep_previous=True)
        assert _backend_pid(cache) != before
        assert cache.lookup(KEY) == CacheEntry(rs1=secret(2), rs2=secret(1))
        # The database refuses connections for a while: calls fail fast with CacheError.
        admin.execute(f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS false")  # type: ignore[arg-type]
        _terminate(admin, dbname)
        started = time.monotonic()
        with pytest.raises(CacheError, match=r"PostgresSecretCache\(.*cannot look up"):
            cache.lookup(KEY)
        with pytest.raises(CacheError, match="cannot store rs1"):
            cache.update_retained_secret(KEY, secret(3), 3600, keep_previous=True)
        assert time.monotonic() - started < 5
        admin.execute(f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS true")  # type: ignore[arg-type]
        assert cache.lookup(KEY) == CacheEntry(rs1=secret(2), rs2=secret(1))


def test_a_held_row_lock_costs_a_bounded_wait(pg_dsn: str) -> None:
    with PostgresSecretCache(pg_dsn, statement_timeout=0.3) as cache:
        cache.update_retained_secret(KEY, secret(1), 3600, keep_previous=True)
        with _admin(pg_dsn) as other, other.transaction():
            other.execute("SELECT * FROM retained_secrets FOR UPDATE")
            started = time.monotonic()
            with pytest.raises(CacheError, match="timeout"):
                cache.update_retained_secret(KEY, secret(2), 3600, keep_previous=True)
            assert time.monotonic() - started < 2
            assert cache.lookup(KEY).rs1 == secret(1)  # readers are not blocked
        cache.update_retained_secret(KEY, secret(2), 3600, keep_previous=True)
        assert cache.lookup(KEY) == CacheEntry(rs1=secret(2), rs2=secret(1))


def test_concurrent_threads_on_one_store(pg_dsn: str) -> None:
    with PostgresSecretCache(pg_dsn) as cache:
        errors: list[BaseException] = []

        def worker(n: int) -> None:
            try:
                for i in range(30):
                    cache.update_retained_secret(KEY, bytes([n, i]) * 16, 60, keep_previous=True)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in (1, 2, 3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        entry = cache.lookup(KEY)
        assert entry.rs1 is not None and entry.rs2 is not None and entry.rs1 != entry.rs2


# --- nothing secret in messages ---------------------------------------------------------


def test_errors_never_quote_a_secret(pg_dsn: str) -> None:
    # A trigger that fails with the row in its DETAIL, as a CHECK violation would.
    with PostgresSecretCache(pg_dsn) as cache:
        with _admin(pg_dsn) as admin:
            admin.execute(
                "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "RAISE EXCEPTION 'refused' USING DETAIL = encode(NEW.rs1, 'hex'); END $$;"
                "CREATE TRIGGER boom BEFORE INSERT OR UPDATE ON retained_secrets "
                "FOR EACH ROW EXECUTE FUNCTION boom()"
            )
        value = bytes.fromhex("c0ffee") * 10
        with pytest.raises(CacheError) as excinfo:
            cache.update_retained_secret(KEY, value, 3600, keep_previous=True)
        text = str(excinfo.value) + repr(excinfo.value)
        assert "refused" in text and "cannot store rs1" in text
        assert value.hex() not in text and excinfo.value.__cause__ is None
        assert cache.lookup(KEY) == CacheEntry()


def test_password_auth_and_no_password_in_messages(pg_server: PostgresServer, pg_dsn: str) -> None:
    password = "s3cret-Pa55word"
    dbname = psycopg.conninfo.conninfo_to_dict(pg_dsn)["dbname"]
    dsn = pg_server.add_password_role(str(dbname), password)
    with PostgresSecretCache(dsn, password=password) as cache:
        cache.update_retained_secret(KEY, secret(1), 3600, keep_previous=True)
        assert password not in repr(cache)
    with_password = f"{dsn} password={password}x"
    assert password not in safe_dsn(with_password)
    with pytest.raises(CacheError, match="password authentication failed") as excinfo:
        PostgresSecretCache(with_password)
    assert password not in str(excinfo.value)
    with pytest.raises(CacheError, match="cannot open"):
        PostgresSecretCache(dsn, password="wrong")


# --- same answers as the memory store --------------------------------------------------


@pytest.fixture(scope="module")
def shared_dsn(pg_server: PostgresServer) -> str:
    with _admin(pg_server.dsn()) as admin:
        admin.execute("DROP DATABASE IF EXISTS agree WITH (FORCE)")
        admin.execute("CREATE DATABASE agree")
    return pg_server.dsn("agree")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(_op, max_size=25))
def test_memory_and_postgres_agree(shared_dsn: str, ops: list[tuple[Any, ...]]) -> None:
    clock = FakeClock()
    memory = MemorySecretCache(clock=clock)
    with PostgresSecretCache(shared_dsn, clock=clock) as store:
        with _admin(shared_dsn) as admin:
            admin.execute("TRUNCATE retained_secrets, pbx_secrets")
        for op in ops:
            results = []
            for one in (memory, store):
                if op[0] == "update":
                    one.update_retained_secret(
                        _KEYS[op[1]], secret(op[2]), op[3], keep_previous=op[4]
                    )
                elif op[0] == "verify":
                    one.set_sas_verified(_KEYS[op[1]], op[2])
                elif op[0] == "pbx":
                    one.store_pbx_secret(_KEYS[op[1]], secret(op[2]), op[3])
                elif op[0] == "forget":
                    one.forget(_KEYS[op[1]])
                elif op[0] == "purge":
                    results.append(one.purge_expired())
            if op[0] == "advance":
                clock.advance(op[1])
            assert results[:1] == results[1:]
            for key in _KEYS:
                assert memory.lookup(key) == store.lookup(key)
            assert memory.list_entries() == store.list_entries()
            assert memory.list_pbx_secrets() == store.list_pbx_secrets()


def test_uri_sort_order_matches_memory(pg_dsn: str) -> None:
    keys = [CacheKey(b"A" * 12, b"B" * 12, uri) for uri in ("b", "B", "a", "é", "Z", "_")]
    memory = MemorySecretCache()
    with PostgresSecretCache(pg_dsn) as store:
        for key in keys:
            memory.set_sas_verified(key, True)
            store.set_sas_verified(key, True)
        assert [k for k, _ in store.list_entries()] == [k for k, _ in memory.list_entries()]
