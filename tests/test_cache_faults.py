"""Faults of the store under a running relay: kill -9 mid-write, a full disk.

kill -9: a child rotates rs1 in a tight loop and is SIGKILLed at random moments,
again and again. Each key's rs1 is a counter that the child increments (read rs1 = n,
write n + 1 in DH mode), so a consistent store always holds rs1 = n and rs2 = n - 1:
a torn or half-applied rotation would break that.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pbx_zrtp.cache import CacheError, CacheKey, SqliteSecretCache
from pbx_zrtp.cache.base import NEVER_EXPIRES, SecretCache
from pbx_zrtp.cache.postgres import PostgresSecretCache

KEYS = [CacheKey(b"A" * 12, bytes([n]) * 12, "sip:100@pbx") for n in range(1, 5)]


def counter(n: int) -> bytes:
    return n.to_bytes(8, "big") + b"\x5a" * 24


_WRITER = """
import sys
from pbx_zrtp.cache import CacheKey, SqliteSecretCache
from pbx_zrtp.cache.postgres import PostgresSecretCache
kind, target = sys.argv[1], sys.argv[2]
cache = SqliteSecretCache(target) if kind == "sqlite" else PostgresSecretCache(target)
keys = [CacheKey(b"A" * 12, bytes([n]) * 12, "sip:100@pbx") for n in range(1, 5)]
print("ready", flush=True)
while True:
    for key in keys:
        rs1 = cache.lookup(key).rs1
        n = int.from_bytes(rs1[:8], "big") if rs1 else 0
        cache.update_retained_secret(
            key, (n + 1).to_bytes(8, "big") + b"\\x5a" * 24, 0xFFFFFFFF, keep_previous=True
        )
"""


def _check_consistent(cache: SecretCache) -> int:
    """Assert the counter invariant on every key; return the sum of the counters."""
    total = 0
    for key in KEYS:
        entry = cache.lookup(key)
        if entry.rs1 is None:
            assert entry.rs2 is None
            continue
        n = int.from_bytes(entry.rs1[:8], "big")
        assert entry.rs1 == counter(n), "rs1 torn"
        assert entry.rs2 == (counter(n - 1) if n > 1 else None), "rs2 is not rs1's predecessor"
        total += n
    return total


def _kill_repeatedly(kind: str, target: str, open_store: type[SecretCache], kills: int) -> int:
    rng = random.Random(6189)
    deadline = time.monotonic() + 90
    progress = 0
    for _ in range(kills):
        assert time.monotonic() < deadline, "kill -9 loop took too long"
        child = subprocess.Popen(
            [sys.executable, "-c", _WRITER, kind, target], stdout=subprocess.PIPE, text=True
        )
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.06))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        child.stdout.close()
        assert child.returncode == -signal.SIGKILL
        with open_store(target) as cache:  # type: ignore[attr-defined]
            total = _check_consistent(cache)
        assert total >= progress  # committed rotations are never lost
        progress = total
    return progress


def _writable(cache: SecretCache) -> None:
    rs1 = cache.lookup(KEYS[0]).rs1
    n = int.from_bytes(rs1[:8], "big") if rs1 else 0
    cache.update_retained_secret(KEYS[0], counter(n + 1), NEVER_EXPIRES, keep_previous=True)
    _check_consistent(cache)


def test_kill_9_during_sqlite_writes_leaves_a_consistent_cache(tmp_path: Path) -> None:
    path = str(tmp_path / "cache.db")
    SqliteSecretCache(path).close()
    progress = _kill_repeatedly("sqlite", path, SqliteSecretCache, kills=25)
    assert progress > 25  # the children really were writing when they died
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()
    with SqliteSecretCache(path) as cache:
        _writable(cache)


def test_kill_9_during_postgres_writes_leaves_a_consistent_cache(pg_dsn: str) -> None:
    PostgresSecretCache(pg_dsn).close()
    progress = _kill_repeatedly("postgres", pg_dsn, PostgresSecretCache, kills=25)
    assert progress > 25
    with PostgresSecretCache(pg_dsn) as cache:
        _writable(cache)


# --- disk full ------------------------------------------------------------------------


def _fill(cache: SqliteSecretCache, limit: int = 100_000) -> tuple[int, CacheError]:
    """Write new entries until the store refuses; return how many and the error."""
    for n in range(limit):
        key = CacheKey(b"F" * 12, n.to_bytes(12, "big"), "x" * 200)
        try:
            cache.update_retained_secret(key, os.urandom(32), NEVER_EXPIRES, keep_previous=True)
        except CacheError as exc:
            return n, exc
    raise AssertionError("the store never filled up")


def test_full_database_refuses_writes_but_keeps_answering(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    with SqliteSecretCache(path) as cache:
        cache.update_retained_secret(KEYS[0], counter(1), NEVER_EXPIRES, keep_previous=True)
        cache.update_retained_secret(KEYS[0], counter(2), NEVER_EXPIRES, keep_previous=True)
        cache.set_sas_verified(KEYS[0], True)
        # SQLITE_FULL exactly as a full disk gives it: cap the file at its size + a bit.
        pages = cache._conn.execute("PRAGMA page_count").fetchone()[0]
        cache._conn.execute(f"PRAGMA max_page_count = {pages + 8}")
        written, error = _fill(cache)
        assert written > 0
        message = str(error)
        assert "full" in message and str(path) in message and "cannot store rs1" in message
        assert counter(2).hex() not in message
        # Every kind of write that needs space is refused cleanly, not half-done...
        fresh = CacheKey(b"G" * 12, b"H" * 12, "y" * 3000)
        with pytest.raises(CacheError, match="full"):
            cache.set_sas_verified(fresh, True)
        with pytest.raises(CacheError, match="full"):  # pbxsecrets: a table of their own
            for n in range(10_000):
                cache.store_pbx_secret(CacheKey(b"G" * 12, n.to_bytes(12, "big")), counter(9), 60)
        # Rotating existing entries grows them (rs2 appears) until one does not fit: that
        # rotation is rolled back whole, rs1 kept and no rs2 half-written.
        failed_at, _ = _fill(cache)
        assert failed_at < written
        stuck = cache.lookup(CacheKey(b"F" * 12, failed_at.to_bytes(12, "big"), "x" * 200))
        assert stuck.rs1 is not None and stuck.rs2 is None
        # ...and what is stored still reads back, unchanged.
        entry = cache.lookup(KEYS[0])
        assert (entry.rs1, entry.rs2, entry.sas_verified) == (counter(2), counter(1), True)
        assert len(cache.list_entries()) == written + 1
        cache.update_retained_secret(KEYS[0], counter(3), 60, keep_previous=True)  # in place
        cache._conn.execute("PRAGMA max_page_count = 1073741823")  # space again
        cache.update_retained_secret(KEYS[1], counter(1), NEVER_EXPIRES, keep_previous=True)
        assert cache.lookup(KEYS[1]).rs1 == counter(1)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()


_ON_TMPFS = """
import json, os, sqlite3, sys
from pbx_zrtp.cache import CacheError, CacheKey, SqliteSecretCache
path = os.path.join(sys.argv[1], "cache.db")
key = CacheKey(b"A" * 12, b"B" * 12)
result = {}
with SqliteSecretCache(path) as cache:
    cache.update_retained_secret(key, b"\\x01" * 32, 0xFFFFFFFF, keep_previous=True)
    cache.update_retained_secret(key, b"\\x02" * 32, 0xFFFFFFFF, keep_previous=True)
    for n in range(100000):
        other = CacheKey(b"F" * 12, n.to_bytes(12, "big"), "x" * 500)
        try:
            cache.update_retained_secret(other, os.urandom(32), 0xFFFFFFFF, keep_previous=True)
        except CacheError as exc:
            result["error"] = str(exc)
            result["written"] = n
            break
    entry = cache.lookup(key)
    result["lookup"] = [entry.rs1.hex(), entry.rs2.hex()]
    result["entries"] = len(cache.list_entries())
conn = sqlite3.connect(path)
result["integrity"] = conn.execute("PRAGMA integrity_check").fetchall()[0][0]
conn.close()
print(json.dumps(result))
"""


def test_full_filesystem_refuses_writes_but_keeps_answering(tmp_path: Path) -> None:
    """A real ENOSPC: the store on a 512 KiB tmpfs in a private mount namespace."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare to mount a small tmpfs (the test above covers SQL)")
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    script = (
        f'mount -t tmpfs -o size=512k,mode=700 tmpfs "$1" && exec "{sys.executable}" -c "$2" "$1"'
    )
    result = subprocess.run(
        [
            *("unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh"),
            *(str(mount_point), _ON_TMPFS),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if result.returncode != 0 and "mount" in result.stderr and "written" not in result.stdout:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()[:200]}")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["written"] > 0
    assert "full" in report["error"] and "cannot store rs1" in report["error"]
    assert report["lookup"] == [(b"\x02" * 32).hex(), (b"\x01" * 32).hex()]
    assert report["entries"] == report["written"] + 1
    assert report["integrity"] == "ok"
