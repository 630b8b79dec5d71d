"""A persistent retained-secret store in one SQLite file, shareable between processes.

* The file is created with mode 0600. If an existing file (or its ``-wal``/``-shm``
  companions) is readable or writable by group/others, it is silently chmod-ed to
  0600 and used: it holds key material, so the owner-only mode is enforced rather
  than merely checked. A file we cannot chmod (another owner) raises PermissionError.
* WAL journal, ``synchronous=NORMAL``, a busy timeout, and ``BEGIN IMMEDIATE`` for
  every read-modify-write, so several relay processes can share one file; a lock
  serialises the threads that share one instance (one connection per instance).
* ``secure_delete`` is on so erased secrets are overwritten in the main file; note
  that copies may survive in the WAL until the next checkpoint.
* Schema versioned with ``PRAGMA user_version``; :func:`migrate` upgrades it.
* Every failure of SQLite itself (disk full, I/O error, lock timeout, closed store)
  raises :class:`~pbx_zrtp.cache.base.CacheError` naming the file and the cause; a
  failed write is rolled back whole, so the file stays consistent and readable.

Retained secrets are keyed by (own ZID, peer ZID, own URI, peer URI); pbxsecrets
by the ZID pair alone, since they belong to the PBX enrollment, not a URI (§7.3.1).
Expiry times are unix times (REAL); NULL means "never expires".
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType

from pbx_zrtp.cache.base import CacheEntry, CacheError, CacheKey, SecretCache
from pbx_zrtp.cache.memory import (
    CacheEntryInfo,
    check_key,
    check_lifetime,
    check_secret,
    expiry_time,
    is_live,
    listed_entry,
)

#: The schema version this code writes (stored in ``PRAGMA user_version``).
SCHEMA_VERSION = 2

#: Statements that take a database from version ``n - 1`` to version ``n``.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """
        CREATE TABLE retained_secrets (
            self_zid     BLOB    NOT NULL CHECK (length(self_zid) = 12),
            peer_zid     BLOB    NOT NULL CHECK (length(peer_zid) = 12),
            self_uri     TEXT    NOT NULL,
            peer_uri     TEXT    NOT NULL,
            rs1          BLOB,
            rs1_expires  REAL,
            rs2          BLOB,
            rs2_expires  REAL,
            sas_verified INTEGER NOT NULL DEFAULT 0,
            updated_at   REAL    NOT NULL,
            PRIMARY KEY (self_zid, peer_zid, self_uri, peer_uri)
        ) WITHOUT ROWID
        """,
        """
        CREATE TABLE pbx_secrets (
            self_zid   BLOB NOT NULL CHECK (length(self_zid) = 12),
            peer_zid   BLOB NOT NULL CHECK (length(peer_zid) = 12),
            secret     BLOB NOT NULL,
            expires    REAL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (self_zid, peer_zid)
        ) WITHOUT ROWID
        """,
    ),
    2: (
        """
        CREATE TABLE identities (
            name TEXT PRIMARY KEY,
            zid  BLOB NOT NULL CHECK (length(zid) = 12)
        ) WITHOUT ROWID
        """,
    ),
}

_KEY_WHERE = "self_zid = ? AND peer_zid = ? AND self_uri = ? AND peer_uri = ?"


def _key_params(key: CacheKey) -> tuple[bytes, bytes, str, str]:
    return (key.self_zid, key.peer_zid, key.self_uri, key.peer_uri)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema of ``conn`` (autocommit mode) up to :data:`SCHEMA_VERSION`.

    Runs in one ``BEGIN IMMEDIATE`` transaction, so concurrent openers do not race.
    Returns the version found before migrating. Refuses a newer schema.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if found > SCHEMA_VERSION:
            raise RuntimeError(
                f"cache schema version {found} is newer than this software supports "
                f"({SCHEMA_VERSION}); upgrade pbx-zrtp"
            )
        for version in range(found + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[version]:
                conn.execute(statement)
        if found != SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return found


def _ensure_private_file(path: str) -> None:
    """Create ``path`` with mode 0600, or tighten an existing file to 0600."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ValueError(f"secret cache {path!r} is not a regular file")
        if mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _tighten_if_exists(path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if mode & 0o077:
        os.chmod(path, 0o600)


class SqliteSecretCache(SecretCache):
    """A :class:`SecretCache` persisted in an SQLite database file."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout: float = 10.0,
    ) -> None:
        self.path = os.fspath(path)
        self._clock = clock
        self._lock = threading.Lock()
        _ensure_private_file(self.path)
        try:
            conn = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise self._error("open", exc) from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000):d}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise RuntimeError(f"cannot put secret cache {self.path!r} in WAL mode")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA secure_delete = ON")
            migrate(conn)
            for suffix in ("-wal", "-shm"):
                _tighten_if_exists(self.path + suffix)
        except sqlite3.Error as exc:
            conn.close()
            raise self._error("open", exc) from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def __repr__(self) -> str:
        return f"SqliteSecretCache({self.path!r})"

    def __enter__(self) -> SqliteSecretCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _error(self, what: str, exc: sqlite3.Error) -> CacheError:
        """A CacheError for a failed ``what``; SQLite's messages never quote bound values."""
        name = getattr(exc, "sqlite_errorname", None)
        cause = f"{exc} ({name})" if name else str(exc)
        return CacheError(f"{self!r}: cannot {what}: {cause}")

    @contextmanager
    def _transaction(
        self, what: str, begin: str = "BEGIN IMMEDIATE"
    ) -> Iterator[sqlite3.Connection]:
        """One transaction, rolled back whole on any error (SQLite's become CacheError)."""
        with self._lock:
            conn = self._conn
            try:
                conn.execute(begin)
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    self._rollback(conn)
                    raise
            except sqlite3.Error as exc:
                raise self._error(what, exc) from exc

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        # SQLite may already have rolled back (e.g. after SQLITE_FULL); nothing to undo then.
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    @property
    def schema_version(self) -> int:
        with self._lock:
            try:
                return int(self._conn.execute("PRAGMA user_version").fetchone()[0])
            except sqlite3.Error as exc:
                raise self._error("read the schema version", exc) from exc

    def local_zid(self, create: Callable[[], bytes], name: str = "default") -> bytes:
        """Our own ZID for identity ``name``: stored once, then stable (§4.9)."""
        with self._transaction("read or create the local ZID") as conn:
            row = conn.execute("SELECT zid FROM identities WHERE name = ?", (name,)).fetchone()
            if row is not None:
                return bytes(row[0])
            zid = create()
            if len(zid) != 12:
                raise ValueError("a ZID is 12 bytes")
            conn.execute("INSERT INTO identities (name, zid) VALUES (?, ?)", (name, zid))
            return zid

    def lookup(self, key: CacheKey) -> CacheEntry:
        check_key(key)
        with self._transaction("look up retained secrets", "BEGIN") as conn:
            now = self._clock()
            row = conn.execute(
                "SELECT rs1, rs1_expires, rs2, rs2_expires, sas_verified "
                f"FROM retained_secrets WHERE {_KEY_WHERE}",
                _key_params(key),
            ).fetchone()
            pbx = conn.execute(
                "SELECT secret, expires FROM pbx_secrets WHERE self_zid = ? AND peer_zid = ?",
                (key.self_zid, key.peer_zid),
            ).fetchone()
        pbx_secret = bytes(pbx[0]) if pbx is not None and is_live(pbx[1], now) else None
        if row is None:
            return CacheEntry(pbx_secret=pbx_secret)
        rs1, rs1_expires, rs2, rs2_expires, verified = row
        return CacheEntry(
            rs1=bytes(rs1) if rs1 is not None and is_live(rs1_expires, now) else None,
            rs2=bytes(rs2) if rs2 is not None and is_live(rs2_expires, now) else None,
            sas_verified=bool(verified),
            pbx_secret=pbx_secret,
        )

    def update_retained_secret(
        self, key: CacheKey, rs1: bytes, lifetime: int, *, keep_previous: bool
    ) -> None:
        check_key(key)
        rs1 = check_secret(rs1, "rs1")
        check_lifetime(lifetime)
        params = _key_params(key)
        with self._transaction("store rs1") as conn:
            now = self._clock()
            if lifetime == 0:  # §4.9: do not cache, and erase what an earlier call left
                conn.execute(
                    "UPDATE retained_secrets SET rs1 = NULL, rs1_expires = NULL, rs2 = NULL, "
                    f"rs2_expires = NULL, updated_at = ? WHERE {_KEY_WHERE}",
                    (now, *params),
                )
                return
            old = conn.execute(
                f"SELECT rs1, rs1_expires, rs2, rs2_expires FROM retained_secrets "
                f"WHERE {_KEY_WHERE}",
                params,
            ).fetchone()
            rs2: bytes | None = None
            rs2_expires: float | None = None
            if old is not None:
                if keep_previous:  # DH mode: old (unexpired) rs1 becomes rs2 (§4.6.1)
                    if old[0] is not None and is_live(old[1], now):
                        rs2, rs2_expires = old[0], old[1]
                elif old[2] is not None and is_live(old[3], now):  # Preshared: rs2 stays
                    rs2, rs2_expires = old[2], old[3]
            conn.execute(
                "INSERT INTO retained_secrets (self_zid, peer_zid, self_uri, peer_uri, "
                "rs1, rs1_expires, rs2, rs2_expires, sas_verified, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?) "
                "ON CONFLICT (self_zid, peer_zid, self_uri, peer_uri) DO UPDATE SET "
                "rs1 = excluded.rs1, rs1_expires = excluded.rs1_expires, "
                "rs2 = excluded.rs2, rs2_expires = excluded.rs2_expires, "
                "updated_at = excluded.updated_at",
                (*params, rs1, expiry_time(now, lifetime), rs2, rs2_expires, now),
            )

    def set_sas_verified(self, key: CacheKey, verified: bool) -> None:
        check_key(key)
        with self._transaction("store the SAS-verified flag") as conn:
            now = self._clock()
            conn.execute(
                "INSERT INTO retained_secrets (self_zid, peer_zid, self_uri, peer_uri, "
                "sas_verified, updated_at) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (self_zid, peer_zid, self_uri, peer_uri) DO UPDATE SET "
                "sas_verified = excluded.sas_verified, updated_at = excluded.updated_at",
                (*_key_params(key), int(bool(verified)), now),
            )

    def store_pbx_secret(self, key: CacheKey, secret: bytes, lifetime: int) -> None:
        check_key(key)
        secret = check_secret(secret, "pbx secret")
        check_lifetime(lifetime)
        pair = (key.self_zid, key.peer_zid)
        with self._transaction("store the pbxsecret") as conn:
            now = self._clock()
            if lifetime == 0:
                conn.execute("DELETE FROM pbx_secrets WHERE self_zid = ? AND peer_zid = ?", pair)
                return
            conn.execute(
                "INSERT INTO pbx_secrets (self_zid, peer_zid, secret, expires, updated_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (self_zid, peer_zid) DO UPDATE SET "
                "secret = excluded.secret, expires = excluded.expires, "
                "updated_at = excluded.updated_at",
                (*pair, secret, expiry_time(now, lifetime), now),
            )

    def forget(self, key: CacheKey) -> None:
        check_key(key)
        with self._transaction("forget an entry") as conn:
            conn.execute(f"DELETE FROM retained_secrets WHERE {_KEY_WHERE}", _key_params(key))
            conn.execute(
                "DELETE FROM pbx_secrets WHERE self_zid = ? AND peer_zid = ?",
                (key.self_zid, key.peer_zid),
            )

    def list_entries(self) -> list[tuple[CacheKey, CacheEntryInfo]]:
        """Every retained-secret entry, sorted by key, without secret values."""
        with self._transaction("list entries", "BEGIN") as conn:
            now = self._clock()
            rows = conn.execute(
                "SELECT r.self_zid, r.peer_zid, r.self_uri, r.peer_uri, "
                "r.rs1 IS NOT NULL, r.rs1_expires, r.rs2 IS NOT NULL, r.rs2_expires, "
                "r.sas_verified, r.updated_at, p.self_zid IS NOT NULL, p.expires "
                "FROM retained_secrets AS r LEFT JOIN pbx_secrets AS p "
                "ON p.self_zid = r.self_zid AND p.peer_zid = r.peer_zid "
                "ORDER BY r.self_zid, r.peer_zid, r.self_uri, r.peer_uri"
            ).fetchall()
        return [listed_entry(row, now) for row in rows]

    def list_pbx_secrets(self) -> list[tuple[bytes, bytes, float | None]]:
        """``(self_zid, peer_zid, expires)`` of every unexpired pbxsecret, sorted."""
        with self._transaction("list pbxsecrets", "BEGIN") as conn:
            now = self._clock()
            rows = conn.execute(
                "SELECT self_zid, peer_zid, expires FROM pbx_secrets "
                "WHERE expires IS NULL OR expires > ? ORDER BY self_zid, peer_zid",
                (now,),
            ).fetchall()
        return [(bytes(s), bytes(p), e) for s, p, e in rows]

    def purge_expired(self) -> int:
        """Erase expired secrets; return how many secret values were erased.

        Entries left with no secret and no SAS-verified flag are dropped too.
        """
        with self._transaction("purge expired secrets") as conn:
            now = self._clock()
            erased = conn.execute(
                "UPDATE retained_secrets SET rs1 = NULL, rs1_expires = NULL "
                "WHERE rs1 IS NOT NULL AND rs1_expires <= ?",
                (now,),
            ).rowcount
            erased += conn.execute(
                "UPDATE retained_secrets SET rs2 = NULL, rs2_expires = NULL "
                "WHERE rs2 IS NOT NULL AND rs2_expires <= ?",
                (now,),
            ).rowcount
            conn.execute(
                "DELETE FROM retained_secrets "
                "WHERE rs1 IS NULL AND rs2 IS NULL AND sas_verified = 0"
            )
            erased += conn.execute("DELETE FROM pbx_secrets WHERE expires <= ?", (now,)).rowcount
        return erased

    def close(self) -> None:
        with self._lock:
            self._conn.close()
