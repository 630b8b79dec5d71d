"""Retained-secret cache benchmark: lookup and rotation, SQLite vs PostgreSQL.

Run from the repository root (figures: docs/deployment.md, "Cache"):

    .venv/bin/python bench/cache.py               # both stores, about 30 s
    .venv/bin/python bench/cache.py --json        # one JSON object instead of a table
    .venv/bin/python bench/cache.py --store sqlite --ops 5000

What one call costs the relay: the engine looks the peer up as soon as its ZID is
known (``lookup``) and rotates rs1 -> rs2 once Confirm has been exchanged
(``update_retained_secret``, DH mode), synchronously, in the media path. Each
operation is timed alone (perf_counter around the call) on one store instance, one
thread, over ``--peers`` distinct peers pre-populated with one rotation each, peers
taken in a fixed pseudo-random order (seed 6189) so runs are reproducible.

* SQLite: the store's own settings (WAL, ``synchronous=NORMAL``: a commit is not
  fsynced; the WAL is at checkpoints), a file in a temporary directory.
* PostgreSQL: a throwaway server from Debian's ``postgresql`` package
  (tests/postgres_server.py), reached over its Unix socket, ``fsync=on`` and the
  default ``synchronous_commit=on``: every rotation waits for its WAL flush. With
  ``--pg-async-commit`` the role uses ``synchronous_commit=off`` instead (a server
  crash may then lose the last few hundred ms of rotations, never consistency).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pbx_zrtp.cache import CacheKey, SecretCache, SqliteSecretCache  # noqa: E402

SELF_ZID = b"R" * 12


def _keys(peers: int) -> list[CacheKey]:
    return [
        CacheKey(SELF_ZID, n.to_bytes(12, "big"), "sip:100@pbx", "sip:p@lan") for n in range(peers)
    ]


def _measure(op: Callable[[CacheKey], object], keys: list[CacheKey], ops: int) -> dict[str, float]:
    order = random.Random(6189)
    samples = []
    started = time.perf_counter()
    for _ in range(ops):
        key = keys[order.randrange(len(keys))]
        t0 = time.perf_counter()
        op(key)
        samples.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    samples.sort()
    return {
        "ops_per_s": round(ops / elapsed),
        "p50_us": round(statistics.median(samples) * 1e6, 1),
        "p99_us": round(samples[int(len(samples) * 0.99) - 1] * 1e6, 1),
        "max_us": round(samples[-1] * 1e6, 1),
    }


def bench_store(store: SecretCache, peers: int, ops: int) -> dict[str, dict[str, float]]:
    keys = _keys(peers)
    secret = os.urandom(32)
    for key in keys:  # every peer known: one rotation each
        store.update_retained_secret(key, secret, 0xFFFFFFFF, keep_previous=True)
    for key in keys[:50]:  # warm-up
        store.lookup(key)
    counter = iter(range(1 << 62))

    def rotate(key: CacheKey) -> None:
        value = next(counter).to_bytes(8, "big") + secret[8:]
        store.update_retained_secret(key, value, 0xFFFFFFFF, keep_previous=True)

    return {"lookup": _measure(store.lookup, keys, ops), "rotate": _measure(rotate, keys, ops)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--ops", type=int, default=3000, help="operations per measurement")
    parser.add_argument("--peers", type=int, default=1000, help="distinct peers in the cache")
    parser.add_argument("--pg-async-commit", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict[str, Any] = {
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
        ),
        "ops": args.ops,
        "peers": args.peers,
    }
    if args.store in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as tmp, SqliteSecretCache(Path(tmp) / "c.db") as store:
            results["sqlite"] = bench_store(store, args.peers, args.ops)
    if args.store in ("postgres", "both"):
        from pbx_zrtp.cache.postgres import PostgresSecretCache
        from tests.postgres_server import start_server

        server = start_server(fsync=True)
        try:
            import psycopg

            with psycopg.connect(server.dsn(), autocommit=True) as admin:
                admin.execute("CREATE DATABASE bench")
                if args.pg_async_commit:
                    admin.execute("ALTER DATABASE bench SET synchronous_commit = off")
                version = admin.execute("SHOW server_version").fetchone()
            results["postgres_version"] = version[0] if version else "?"
            with PostgresSecretCache(server.dsn("bench")) as store:
                name = "postgres_async_commit" if args.pg_async_commit else "postgres"
                results[name] = bench_store(store, args.peers, args.ops)
        finally:
            server.stop()
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{results['machine']}; {args.ops} ops per figure over {args.peers} peers")
    print(f"{'store':24} {'operation':8} {'ops/s':>8} {'p50 us':>9} {'p99 us':>9} {'max us':>9}")
    for name, figures in results.items():
        if not isinstance(figures, dict):
            continue
        for op, f in figures.items():
            cells = f"{f['ops_per_s']:8} {f['p50_us']:9} {f['p99_us']:9} {f['max_us']:9}"
            print(f"{name:24} {op:8} {cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
