"""An in-process retained-secret store (tests, "cacheless" mode, short-lived tools).

It has exactly the semantics of :class:`~pbx_zrtp.cache.sqlite.SqliteSecretCache`
but keeps everything in a dict that dies with the process. This module also holds
the input checks and the secret-free :class:`CacheEntryInfo` shared by both stores.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pbx_zrtp.cache.base import NEVER_EXPIRES, CacheEntry, CacheKey, SecretCache

#: Longest secret accepted (bytes). ZRTP's retained secrets and pbxsecret are 256-bit
#: KDF outputs; 64 bytes leaves room for a 512-bit hash without allowing garbage.
MAX_SECRET_LEN = 64


@dataclass(frozen=True)
class CacheEntryInfo:
    """What an admin may see about a cache entry: never a secret value.

    ``has_rs1``/``has_rs2``/``has_pbx_secret`` count unexpired secrets only;
    ``rs1_expires``/``rs2_expires`` are unix times, ``None`` when the secret
    never expires or is absent. ``has_pbx_secret`` refers to the entry's ZID pair.
    """

    has_rs1: bool
    has_rs2: bool
    rs1_expires: float | None
    sas_verified: bool
    updated_at: float
    rs2_expires: float | None = None
    has_pbx_secret: bool = False


def check_key(key: CacheKey) -> None:
    """Reject keys whose fields have the wrong type (CacheKey only checks ZID length)."""
    if not isinstance(key, CacheKey):
        raise ValueError(f"expected a CacheKey, got {type(key).__name__}")
    if not isinstance(key.self_zid, bytes) or not isinstance(key.peer_zid, bytes):
        raise ValueError("CacheKey ZIDs must be bytes")
    if not isinstance(key.self_uri, str) or not isinstance(key.peer_uri, str):
        raise ValueError("CacheKey URIs must be str")


def check_secret(secret: bytes, what: str) -> bytes:
    """Return ``secret`` as bytes; its value never appears in the error message."""
    if not isinstance(secret, bytes | bytearray | memoryview):
        raise ValueError(f"{what} must be bytes, got {type(secret).__name__}")
    value = bytes(secret)
    if not 0 < len(value) <= MAX_SECRET_LEN:
        raise ValueError(f"{what} must be 1..{MAX_SECRET_LEN} bytes long, got {len(value)} bytes")
    return value


def check_lifetime(lifetime: int) -> int:
    """A cache expiration interval is an unsigned 32-bit number of seconds (§4.9)."""
    if isinstance(lifetime, bool) or not isinstance(lifetime, int):
        raise ValueError(f"lifetime must be an int, got {type(lifetime).__name__}")
    if not 0 <= lifetime <= NEVER_EXPIRES:
        raise ValueError(f"lifetime must be in 0..0xFFFFFFFF seconds, got {lifetime}")
    return lifetime


def expiry_time(now: float, lifetime: int) -> float | None:
    """The unix time at which a secret stored ``now`` expires (None: never)."""
    return None if lifetime == NEVER_EXPIRES else now + lifetime


def is_live(expires: float | None, now: float) -> bool:
    """A secret is usable strictly before its expiry time."""
    return expires is None or expires > now


def listed_entry(row: Sequence[Any], now: float) -> tuple[CacheKey, CacheEntryInfo]:
    """One row of the SQL stores' entry listing (the same twelve columns in both):
    self_zid, peer_zid, self_uri, peer_uri, rs1 set, rs1 expiry, rs2 set, rs2 expiry,
    verified, updated_at, pbxsecret set, pbxsecret expiry."""
    (self_zid, peer_zid, self_uri, peer_uri, rs1_set, rs1_expires) = row[:6]
    (rs2_set, rs2_expires, verified, updated_at, pbx_set, pbx_expires) = row[6:12]
    has_rs1 = bool(rs1_set) and is_live(rs1_expires, now)
    has_rs2 = bool(rs2_set) and is_live(rs2_expires, now)
    key = CacheKey(bytes(self_zid), bytes(peer_zid), self_uri, peer_uri)
    info = CacheEntryInfo(
        has_rs1=has_rs1,
        has_rs2=has_rs2,
        rs1_expires=rs1_expires if has_rs1 else None,
        sas_verified=bool(verified),
        updated_at=float(updated_at),
        rs2_expires=rs2_expires if has_rs2 else None,
        has_pbx_secret=bool(pbx_set) and is_live(pbx_expires, now),
    )
    return key, info


@dataclass
class _Retained:
    rs1: bytes | None = field(default=None, repr=False)
    rs1_expires: float | None = None
    rs2: bytes | None = field(default=None, repr=False)
    rs2_expires: float | None = None
    sas_verified: bool = False
    updated_at: float = 0.0


@dataclass
class _PbxSecret:
    secret: bytes = field(repr=False)
    expires: float | None
    updated_at: float


class MemorySecretCache(SecretCache):
    """A :class:`SecretCache` in a dict, guarded by a lock; nothing survives the process."""

    blocking = False  # a dict and a lock: safe to call on the event loop

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._retained: dict[CacheKey, _Retained] = {}
        self._pbx: dict[tuple[bytes, bytes], _PbxSecret] = {}
        self._identities: dict[str, bytes] = {}

    def __repr__(self) -> str:
        return f"MemorySecretCache(<{len(self._retained)} entries>)"

    def local_zid(self, create: Callable[[], bytes], name: str = "default") -> bytes:
        with self._lock:
            if name not in self._identities:
                zid = create()
                if len(zid) != 12:
                    raise ValueError("a ZID is 12 bytes")
                self._identities[name] = zid
            return self._identities[name]

    def lookup(self, key: CacheKey) -> CacheEntry:
        check_key(key)
        with self._lock:
            now = self._clock()
            row = self._retained.get(key)
            pbx = self._pbx.get((key.self_zid, key.peer_zid))
            pbx_secret = pbx.secret if pbx is not None and is_live(pbx.expires, now) else None
            if row is None:
                return CacheEntry(pbx_secret=pbx_secret)
            return CacheEntry(
                rs1=row.rs1 if is_live(row.rs1_expires, now) else None,
                rs2=row.rs2 if is_live(row.rs2_expires, now) else None,
                sas_verified=row.sas_verified,
                pbx_secret=pbx_secret,
            )

    def update_retained_secret(
        self, key: CacheKey, rs1: bytes, lifetime: int, *, keep_previous: bool
    ) -> None:
        check_key(key)
        rs1 = check_secret(rs1, "rs1")
        check_lifetime(lifetime)
        with self._lock:
            now = self._clock()
            row = self._retained.get(key)
            if lifetime == 0:  # §4.9: do not cache, and erase what an earlier call left
                if row is not None:
                    row.rs1 = row.rs2 = row.rs1_expires = row.rs2_expires = None
                    row.updated_at = now
                return
            if row is None:
                row = self._retained[key] = _Retained()
            if keep_previous:  # DH mode: old (unexpired) rs1 becomes rs2 (§4.6.1)
                if row.rs1 is not None and is_live(row.rs1_expires, now):
                    row.rs2, row.rs2_expires = row.rs1, row.rs1_expires
                else:
                    row.rs2 = row.rs2_expires = None
            elif row.rs2 is not None and not is_live(row.rs2_expires, now):
                row.rs2 = row.rs2_expires = None
            row.rs1, row.rs1_expires = rs1, expiry_time(now, lifetime)
            row.updated_at = now

    def set_sas_verified(self, key: CacheKey, verified: bool) -> None:
        check_key(key)
        with self._lock:
            now = self._clock()
            row = self._retained.setdefault(key, _Retained())
            row.sas_verified = bool(verified)
            row.updated_at = now

    def store_pbx_secret(self, key: CacheKey, secret: bytes, lifetime: int) -> None:
        check_key(key)
        secret = check_secret(secret, "pbx secret")
        check_lifetime(lifetime)
        with self._lock:
            now = self._clock()
            pair = (key.self_zid, key.peer_zid)
            if lifetime == 0:
                self._pbx.pop(pair, None)
            else:
                self._pbx[pair] = _PbxSecret(secret, expiry_time(now, lifetime), now)

    def forget(self, key: CacheKey) -> None:
        check_key(key)
        with self._lock:
            self._retained.pop(key, None)
            self._pbx.pop((key.self_zid, key.peer_zid), None)

    def list_entries(self) -> list[tuple[CacheKey, CacheEntryInfo]]:
        """Every retained-secret entry, sorted by key, without secret values."""
        with self._lock:
            now = self._clock()
            result = []
            for key, row in self._retained.items():
                has_rs1 = row.rs1 is not None and is_live(row.rs1_expires, now)
                has_rs2 = row.rs2 is not None and is_live(row.rs2_expires, now)
                pbx = self._pbx.get((key.self_zid, key.peer_zid))
                info = CacheEntryInfo(
                    has_rs1=has_rs1,
                    has_rs2=has_rs2,
                    rs1_expires=row.rs1_expires if has_rs1 else None,
                    sas_verified=row.sas_verified,
                    updated_at=row.updated_at,
                    rs2_expires=row.rs2_expires if has_rs2 else None,
                    has_pbx_secret=pbx is not None and is_live(pbx.expires, now),
                )
                result.append((key, info))
        result.sort(key=lambda item: _sort_key(item[0]))
        return result

    def list_pbx_secrets(self) -> list[tuple[bytes, bytes, float | None]]:
        """``(self_zid, peer_zid, expires)`` of every unexpired pbxsecret, sorted."""
        with self._lock:
            now = self._clock()
            return sorted(
                (pair[0], pair[1], pbx.expires)
                for pair, pbx in self._pbx.items()
                if is_live(pbx.expires, now)
            )

    def purge_expired(self) -> int:
        """Erase expired secrets; return how many secret values were erased.

        Entries left with no secret and no SAS-verified flag are dropped too.
        """
        erased = 0
        with self._lock:
            now = self._clock()
            for key, row in list(self._retained.items()):
                if row.rs1 is not None and not is_live(row.rs1_expires, now):
                    row.rs1 = row.rs1_expires = None
                    erased += 1
                if row.rs2 is not None and not is_live(row.rs2_expires, now):
                    row.rs2 = row.rs2_expires = None
                    erased += 1
                if row.rs1 is None and row.rs2 is None and not row.sas_verified:
                    del self._retained[key]
            for pair, pbx in list(self._pbx.items()):
                if not is_live(pbx.expires, now):
                    del self._pbx[pair]
                    erased += 1
        return erased


def _sort_key(key: CacheKey) -> tuple[bytes, bytes, str, str]:
    return (key.self_zid, key.peer_zid, key.self_uri, key.peer_uri)
