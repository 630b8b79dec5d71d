"""A retained-secret store on PostgreSQL, shared by several relays (the ``postgres`` extra).

When one host is not enough, relays on several hosts share one cache so a phone
keeps key continuity whichever relay serves it, and they all present ONE PBX ZID.

* Same semantics and keys as :class:`~pbx_zrtp.cache.sqlite.SqliteSecretCache`.
* The rs1 -> rs2 rotation is ONE ``INSERT ... ON CONFLICT DO UPDATE`` whose new rs2
  is computed from the row version it locks, so two relays updating the same peer at
  once serialise on the row: no lost or torn update, rs2 is always a former rs1.
* ``local_zid`` inserts with ``ON CONFLICT DO NOTHING`` and reads back the winner,
  so relays starting at the same moment agree on one ZID.
* Schema version in table ``pbx_zrtp_schema``; :func:`migrate` upgrades it under a
  transaction-scoped advisory lock, so concurrent first starts do not race.
* The relay calls the store from worker threads (``cache/worker.py``), never from
  the media loop; still, a call's handshake waits for its lookup, so: one connection
  per store, a short connect timeout, server-side ``statement_timeout``/``lock_timeout``,
  TCP keepalives and ``tcp_user_timeout`` so a dead database costs a call seconds, not
  minutes. A dropped connection is replaced on the next call (a call that finds its
  idle connection dead retries once on a new one, unless the failure hit COMMIT,
  whose outcome is then unknown).
* Every database failure raises :class:`~pbx_zrtp.cache.base.CacheError` built from
  the server's primary message only: PostgreSQL's DETAIL lines can quote a row, and
  the row may hold a secret. The DSN's password never appears in repr or messages.

Expiry times are unix times (double precision); NULL means "never expires".
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg import conninfo as pg_conninfo

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

T = TypeVar("T")

#: The schema version this code writes (table ``pbx_zrtp_schema``).
SCHEMA_VERSION = 1

#: Serialises schema migrations between relays (``pg_advisory_xact_lock`` key).
_MIGRATION_LOCK = 0x7A727470  # "zrtp"

#: Statements that take a database from version ``n - 1`` to version ``n``.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """
        CREATE TABLE retained_secrets (
            self_zid     bytea   NOT NULL CHECK (octet_length(self_zid) = 12),
            peer_zid     bytea   NOT NULL CHECK (octet_length(peer_zid) = 12),
            self_uri     text    NOT NULL,
            peer_uri     text    NOT NULL,
            rs1          bytea,
            rs1_expires  double precision,
            rs2          bytea,
            rs2_expires  double precision,
            sas_verified boolean NOT NULL DEFAULT false,
            updated_at   double precision NOT NULL,
            PRIMARY KEY (self_zid, peer_zid, self_uri, peer_uri)
        )
        """,
        """
        CREATE TABLE pbx_secrets (
            self_zid   bytea NOT NULL CHECK (octet_length(self_zid) = 12),
            peer_zid   bytea NOT NULL CHECK (octet_length(peer_zid) = 12),
            secret     bytea NOT NULL,
            expires    double precision,
            updated_at double precision NOT NULL,
            PRIMARY KEY (self_zid, peer_zid)
        )
        """,
        """
        CREATE TABLE identities (
            name text  PRIMARY KEY,
            zid  bytea NOT NULL CHECK (octet_length(zid) = 12)
        )
        """,
    ),
}

_KEY_WHERE = "self_zid = %s AND peer_zid = %s AND self_uri = %s AND peer_uri = %s"
_LIVE = "(({col}) IS NOT NULL AND (({exp}) IS NULL OR ({exp}) > %(now)s))"

# DH mode (keep): the old rs1, if live, becomes rs2; Preshared: rs2 stays if live (§4.6.1).
# In PostgreSQL every SET expression sees the locked row's OLD values.
_ROTATE = f"""
INSERT INTO retained_secrets AS r (self_zid, peer_zid, self_uri, peer_uri,
    rs1, rs1_expires, rs2, rs2_expires, sas_verified, updated_at)
VALUES (%(s)s, %(p)s, %(su)s, %(pu)s, %(rs1)s, %(exp)s, NULL, NULL, false, %(now)s)
ON CONFLICT (self_zid, peer_zid, self_uri, peer_uri) DO UPDATE SET
    rs2 = CASE
        WHEN %(keep)s THEN CASE WHEN {_LIVE.format(col="r.rs1", exp="r.rs1_expires")}
                               THEN r.rs1 END
        ELSE CASE WHEN {_LIVE.format(col="r.rs2", exp="r.rs2_expires")} THEN r.rs2 END
    END,
    rs2_expires = CASE
        WHEN %(keep)s THEN CASE WHEN {_LIVE.format(col="r.rs1", exp="r.rs1_expires")}
                               THEN r.rs1_expires END
        ELSE CASE WHEN {_LIVE.format(col="r.rs2", exp="r.rs2_expires")}
                  THEN r.rs2_expires END
    END,
    rs1 = excluded.rs1,
    rs1_expires = excluded.rs1_expires,
    updated_at = excluded.updated_at
"""


def _key_params(key: CacheKey) -> tuple[bytes, bytes, str, str]:
    return (key.self_zid, key.peer_zid, key.self_uri, key.peer_uri)


def _describe(exc: psycopg.Error) -> str:
    """The cause of ``exc`` without DETAIL/CONTEXT lines (they may quote a secret)."""
    primary = exc.diag.message_primary if exc.diag is not None else None
    if not primary:
        lines = str(exc).strip().splitlines()
        primary = lines[0] if lines else ""
        # libpq connection errors: keep the last line, the actual reason.
        if len(lines) > 1 and not any(w in lines[-1] for w in ("DETAIL", "CONTEXT", "HINT")):
            primary = f"{primary} {lines[-1].strip()}"
    state = f" [{exc.sqlstate}]" if exc.sqlstate else ""
    return f"{type(exc).__name__}{state}: {primary or 'no message'}"


def safe_dsn(dsn: str) -> str:
    """``dsn`` in key=value form without its password, for logs and messages."""
    try:
        params = pg_conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        return "<unparsable DSN>"
    params.pop("password", None)
    return pg_conninfo.make_conninfo("", **params)


def migrate(conn: psycopg.Connection[Any]) -> int:
    """Bring the schema of ``conn`` up to :data:`SCHEMA_VERSION` in one transaction.

    Returns the version found before migrating. Refuses a newer schema.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS pbx_zrtp_schema (version integer NOT NULL)")
        row = conn.execute("SELECT max(version) FROM pbx_zrtp_schema").fetchone()
        found = int(row[0]) if row is not None and row[0] is not None else 0
        if found > SCHEMA_VERSION:
            raise RuntimeError(
                f"cache schema version {found} is newer than this software supports "
                f"({SCHEMA_VERSION}); upgrade pbx-zrtp"
            )
        for version in range(found + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[version]:
                conn.execute(statement)
        if found != SCHEMA_VERSION:
            conn.execute("DELETE FROM pbx_zrtp_schema")
            conn.execute("INSERT INTO pbx_zrtp_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
    return found


class PostgresSecretCache(SecretCache):
    """A :class:`SecretCache` in a PostgreSQL database, shareable between hosts.

    ``dsn`` is a libpq URL or key=value string. ``password`` (e.g. read from a 0600
    file) overrides one in the DSN; without either, libpq's PGPASSWORD/PGPASSFILE
    (~/.pgpass) apply. Timeouts are in seconds.
    """

    def __init__(
        self,
        dsn: str,
        *,
        password: str | None = None,
        clock: Callable[[], float] = time.time,
        connect_timeout: float = 3.0,
        statement_timeout: float = 2.0,
    ) -> None:
        self._dsn = dsn
        self._safe_dsn = safe_dsn(dsn)
        self._password = password
        self._clock = clock
        self._connect_timeout = max(2, round(connect_timeout))  # libpq's minimum is 2 s
        self._statement_ms = max(1, int(statement_timeout * 1000))
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._closed = False
        with self._lock:
            conn = self._connection("open")
            try:
                migrate(conn)
            except psycopg.Error as exc:
                self._drop()
                raise self._error("create or upgrade the schema", exc) from None
            except BaseException:
                self._drop()
                raise

    def __repr__(self) -> str:
        return f"PostgresSecretCache({self._safe_dsn!r})"

    def __enter__(self) -> PostgresSecretCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- connection handling ----------------------------------------------------------

    def _error(self, what: str, exc: psycopg.Error | str) -> CacheError:
        cause = exc if isinstance(exc, str) else _describe(exc)
        return CacheError(f"{self!r}: cannot {what}: {cause}")

    def _connection(self, what: str) -> psycopg.Connection[Any]:
        """The open connection, or a new one (lock held)."""
        if self._closed:
            raise self._error(what, "the store is closed")
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        self._conn = None
        extra: dict[str, Any] = {}
        if self._password is not None:
            extra["password"] = self._password
        options = (
            f"-c statement_timeout={self._statement_ms} -c lock_timeout={self._statement_ms}"
            f" -c idle_in_transaction_session_timeout={max(self._statement_ms * 5, 10000)}"
        )
        try:
            conn = psycopg.connect(
                self._dsn,
                autocommit=True,
                connect_timeout=self._connect_timeout,
                application_name="pbx-zrtp",
                options=options,
                keepalives=1,
                keepalives_idle=10,
                keepalives_interval=3,
                keepalives_count=3,
                tcp_user_timeout=self._connect_timeout * 1000,
                **extra,
            )
        except psycopg.Error as exc:
            raise self._error(what, exc) from None
        self._conn = conn
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def _run(
        self, what: str, body: Callable[[psycopg.Connection[Any]], T], *, read: bool = False
    ) -> T:
        """Run ``body`` in one transaction; retry once if an idle connection had died.

        ``read``: ``body`` is ONE read-only statement, run without BEGIN/COMMIT (one
        round trip instead of three) and always safe to retry. A write is retried only
        when it failed before COMMIT: a rotation applied twice would push rs1 into rs2.
        """
        with self._lock:
            for attempt in (1, 2):
                reused = self._conn is not None and not self._conn.closed
                conn = self._connection(what)
                committing = False
                try:
                    if read:
                        return body(conn)
                    with conn.transaction():
                        result = body(conn)
                        committing = True
                    return result
                except psycopg.Error as exc:
                    dead = conn.closed or conn.broken
                    if dead:
                        self._drop()
                    if dead and reused and not committing and attempt == 1:
                        continue  # nothing was committed: safe to run again
                    raise self._error(what, exc) from None
            raise AssertionError("unreachable")  # pragma: no cover

    # --- the SecretCache interface ----------------------------------------------------

    @property
    def schema_version(self) -> int:
        def body(conn: psycopg.Connection[Any]) -> int:
            row = conn.execute("SELECT max(version) FROM pbx_zrtp_schema").fetchone()
            return int(row[0]) if row is not None and row[0] is not None else 0

        return self._run("read the schema version", body)

    def local_zid(self, create: Callable[[], bytes], name: str = "default") -> bytes:
        """Our own ZID for identity ``name``: stored once, then the same for every relay."""

        def body(conn: psycopg.Connection[Any]) -> bytes:
            row = conn.execute("SELECT zid FROM identities WHERE name = %s", (name,)).fetchone()
            if row is not None:
                return bytes(row[0])
            zid = create()
            if len(zid) != 12:
                raise ValueError("a ZID is 12 bytes")
            # A relay starting at the same moment may win the insert: then use its ZID.
            conn.execute(
                "INSERT INTO identities (name, zid) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
                (name, zid),
            )
            row = conn.execute("SELECT zid FROM identities WHERE name = %s", (name,)).fetchone()
            assert row is not None
            return bytes(row[0])

        return self._run("read or create the local ZID", body)

    def lookup(self, key: CacheKey) -> CacheEntry:
        check_key(key)

        def body(conn: psycopg.Connection[Any]) -> CacheEntry:
            now = self._clock()
            # One statement (one snapshot, one round trip) for both tables.
            row = conn.execute(
                "SELECT r.self_zid IS NOT NULL, r.rs1, r.rs1_expires, r.rs2, r.rs2_expires, "
                "r.sas_verified, p.secret, p.expires FROM (SELECT 1) AS one "
                "LEFT JOIN retained_secrets AS r ON r.self_zid = %s AND r.peer_zid = %s "
                "AND r.self_uri = %s AND r.peer_uri = %s "
                "LEFT JOIN pbx_secrets AS p ON p.self_zid = %s AND p.peer_zid = %s",
                (*_key_params(key), key.self_zid, key.peer_zid),
            ).fetchone()
            assert row is not None
            found, rs1, rs1_expires, rs2, rs2_expires, verified, pbx, pbx_expires = row
            pbx_secret = bytes(pbx) if pbx is not None and is_live(pbx_expires, now) else None
            if not found:
                return CacheEntry(pbx_secret=pbx_secret)
            return CacheEntry(
                rs1=bytes(rs1) if rs1 is not None and is_live(rs1_expires, now) else None,
                rs2=bytes(rs2) if rs2 is not None and is_live(rs2_expires, now) else None,
                sas_verified=bool(verified),
                pbx_secret=pbx_secret,
            )

        return self._run("look up retained secrets", body, read=True)

    def update_retained_secret(
        self, key: CacheKey, rs1: bytes, lifetime: int, *, keep_previous: bool
    ) -> None:
        check_key(key)
        rs1 = check_secret(rs1, "rs1")
        check_lifetime(lifetime)
        params = _key_params(key)

        def body(conn: psycopg.Connection[Any]) -> None:
            now = self._clock()
            if lifetime == 0:  # §4.9: do not cache, and erase what an earlier call left
                conn.execute(
                    "UPDATE retained_secrets SET rs1 = NULL, rs1_expires = NULL, rs2 = NULL, "
                    f"rs2_expires = NULL, updated_at = %s WHERE {_KEY_WHERE}",
                    (now, *params),
                )
                return
            conn.execute(
                _ROTATE,
                {
                    "s": params[0],
                    "p": params[1],
                    "su": params[2],
                    "pu": params[3],
                    "rs1": rs1,
                    "exp": expiry_time(now, lifetime),
                    "now": now,
                    "keep": bool(keep_previous),
                },
            )

        self._run("store rs1", body)

    def set_sas_verified(self, key: CacheKey, verified: bool) -> None:
        check_key(key)

        def body(conn: psycopg.Connection[Any]) -> None:
            conn.execute(
                "INSERT INTO retained_secrets (self_zid, peer_zid, self_uri, peer_uri, "
                "sas_verified, updated_at) VALUES (%s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (self_zid, peer_zid, self_uri, peer_uri) DO UPDATE SET "
                "sas_verified = excluded.sas_verified, updated_at = excluded.updated_at",
                (*_key_params(key), bool(verified), self._clock()),
            )

        self._run("store the SAS-verified flag", body)

    def store_pbx_secret(self, key: CacheKey, secret: bytes, lifetime: int) -> None:
        check_key(key)
        secret = check_secret(secret, "pbx secret")
        check_lifetime(lifetime)
        pair = (key.self_zid, key.peer_zid)

        def body(conn: psycopg.Connection[Any]) -> None:
            now = self._clock()
            if lifetime == 0:
                conn.execute("DELETE FROM pbx_secrets WHERE self_zid = %s AND peer_zid = %s", pair)
                return
            conn.execute(
                "INSERT INTO pbx_secrets (self_zid, peer_zid, secret, expires, updated_at) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (self_zid, peer_zid) DO UPDATE SET "
                "secret = excluded.secret, expires = excluded.expires, "
                "updated_at = excluded.updated_at",
                (*pair, secret, expiry_time(now, lifetime), now),
            )

        self._run("store the pbxsecret", body)

    def forget(self, key: CacheKey) -> None:
        check_key(key)

        def body(conn: psycopg.Connection[Any]) -> None:
            conn.execute(f"DELETE FROM retained_secrets WHERE {_KEY_WHERE}", _key_params(key))
            conn.execute(
                "DELETE FROM pbx_secrets WHERE self_zid = %s AND peer_zid = %s",
                (key.self_zid, key.peer_zid),
            )

        self._run("forget an entry", body)

    def list_entries(self) -> list[tuple[CacheKey, CacheEntryInfo]]:
        """Every retained-secret entry, sorted by key, without secret values."""

        def body(conn: psycopg.Connection[Any]) -> list[tuple[CacheKey, CacheEntryInfo]]:
            now = self._clock()
            rows = conn.execute(
                "SELECT r.self_zid, r.peer_zid, r.self_uri, r.peer_uri, "
                "r.rs1 IS NOT NULL, r.rs1_expires, r.rs2 IS NOT NULL, r.rs2_expires, "
                "r.sas_verified, r.updated_at, p.self_zid IS NOT NULL, p.expires "
                "FROM retained_secrets AS r LEFT JOIN pbx_secrets AS p "
                "ON p.self_zid = r.self_zid AND p.peer_zid = r.peer_zid "
                'ORDER BY r.self_zid, r.peer_zid, r.self_uri COLLATE "C", r.peer_uri COLLATE "C"'
            ).fetchall()
            return [listed_entry(row, now) for row in rows]

        return self._run("list entries", body)

    def list_pbx_secrets(self) -> list[tuple[bytes, bytes, float | None]]:
        """``(self_zid, peer_zid, expires)`` of every unexpired pbxsecret, sorted."""

        def body(conn: psycopg.Connection[Any]) -> list[tuple[bytes, bytes, float | None]]:
            rows = conn.execute(
                "SELECT self_zid, peer_zid, expires FROM pbx_secrets "
                "WHERE expires IS NULL OR expires > %s ORDER BY self_zid, peer_zid",
                (self._clock(),),
            ).fetchall()
            return [(bytes(s), bytes(p), e) for s, p, e in rows]

        return self._run("list pbxsecrets", body)

    def purge_expired(self) -> int:
        """Erase expired secrets; return how many secret values were erased.

        Entries left with no secret and no SAS-verified flag are dropped too.
        """

        def body(conn: psycopg.Connection[Any]) -> int:
            now = self._clock()
            erased = conn.execute(
                "UPDATE retained_secrets SET rs1 = NULL, rs1_expires = NULL "
                "WHERE rs1 IS NOT NULL AND rs1_expires <= %s",
                (now,),
            ).rowcount
            erased += conn.execute(
                "UPDATE retained_secrets SET rs2 = NULL, rs2_expires = NULL "
                "WHERE rs2 IS NOT NULL AND rs2_expires <= %s",
                (now,),
            ).rowcount
            conn.execute(
                "DELETE FROM retained_secrets "
                "WHERE rs1 IS NULL AND rs2 IS NULL AND NOT sas_verified"
            )
            erased += conn.execute("DELETE FROM pbx_secrets WHERE expires <= %s", (now,)).rowcount
            return erased

        return self._run("purge expired secrets", body)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop()
