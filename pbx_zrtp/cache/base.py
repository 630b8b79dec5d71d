"""The interface between the ZRTP engine and a retained-secret store.

The engine is sans-I/O, but retained secrets must be looked up as soon as the
peer's ZID is known and saved once Confirm has been exchanged. A store may be slow
(a database over the network), so a host on an event loop never lets the engine
call it: the engine asks for an entry and hands its writes over as typed
:data:`CacheWrite` values, and the host runs them on worker threads
(:mod:`pbx_zrtp.cache.worker`). Tests and tools with an in-memory store may let
the engine call the store directly.

Entries are keyed by (own ZID, peer ZID, own URI, peer URI). bzrtp (Linphone)
keeps one rs1 per (peer ZID, self URI, peer URI); a PBX that uses one ZID for
every extension must key the same way or a phone that calls two extensions
through it would see a cache mismatch on every other call. URIs default to "".
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

#: Cache expiration interval meaning "never expires" (RFC 6189 §4.9).
NEVER_EXPIRES = 0xFFFFFFFF


class CacheError(Exception):
    """The store could not read or write.

    The message names the store and the cause, never a secret. The engine treats it
    as "key continuity not saved" rather than failing the call: a dead database or a
    full disk must not take calls down with it.
    """


@dataclass(frozen=True)
class CacheKey:
    self_zid: bytes
    peer_zid: bytes
    self_uri: str = ""
    peer_uri: str = ""

    def __post_init__(self) -> None:
        if len(self.self_zid) != 12 or len(self.peer_zid) != 12:
            raise ValueError("a ZID is 12 bytes")


@dataclass(frozen=True)
class CacheEntry:
    """What a store knows about one peer; expired secrets are already left out."""

    rs1: bytes | None = None
    rs2: bytes | None = None
    sas_verified: bool = False
    pbx_secret: bytes | None = None

    def __repr__(self) -> str:  # never show secrets
        return (
            f"CacheEntry(rs1={'set' if self.rs1 else None}, rs2={'set' if self.rs2 else None}, "
            f"sas_verified={self.sas_verified}, pbx_secret={'set' if self.pbx_secret else None})"
        )


class SecretCache(ABC):
    """A store of retained secrets. Every method is atomic on its own.

    Persistent stores raise :class:`CacheError` when storage fails; invalid
    arguments raise ValueError.
    """

    #: The store waits on a disk or a network: a host on an event loop runs it on
    #: a :class:`~pbx_zrtp.cache.worker.StoreWorker`, never on the loop. An
    #: in-memory store answers at once and may be called inline.
    blocking: ClassVar[bool] = True

    @abstractmethod
    def lookup(self, key: CacheKey) -> CacheEntry:
        """Return the unexpired secrets for ``key`` (an empty entry if none)."""

    @abstractmethod
    def update_retained_secret(
        self, key: CacheKey, rs1: bytes, lifetime: int, *, keep_previous: bool
    ) -> None:
        """Store a new rs1 valid for ``lifetime`` seconds.

        With ``keep_previous`` (DH mode) the old rs1 becomes rs2 first (§4.6.1).
        ``lifetime`` is ``NEVER_EXPIRES`` for no expiry; 0 erases rs1 and rs2.
        """

    @abstractmethod
    def set_sas_verified(self, key: CacheKey, verified: bool) -> None:
        """Persist the SAS-verified flag (V, §7.1); creates the entry if needed."""

    @abstractmethod
    def store_pbx_secret(self, key: CacheKey, secret: bytes, lifetime: int) -> None:
        """Store a trusted-MiTM pbxsecret (§7.3.1); lifetime as above."""

    @abstractmethod
    def forget(self, key: CacheKey) -> None:
        """Erase everything known about ``key`` (e.g. after a SAS mismatch)."""

    @abstractmethod
    def local_zid(self, create: Callable[[], bytes], name: str = "default") -> bytes:
        """Our own ZID for identity ``name``: created once with ``create``, then stable.

        The ZID lives with the secrets it indexes, so a cache shared by several
        relays gives them one PBX identity (§4.9, §10).
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources; the default store needs none."""


# ---------------------------------------------------------------------- writes as values


@dataclass(frozen=True)
class RetainedSecretWrite:
    """Store a new rs1 (``SecretCache.update_retained_secret``)."""

    key: CacheKey
    rs1: bytes = field(repr=False)
    lifetime: int
    keep_previous: bool = True

    #: What is lost when this write fails, as the host reports it.
    failure = "key continuity not saved"

    def apply(self, store: SecretCache) -> None:
        store.update_retained_secret(
            self.key, self.rs1, self.lifetime, keep_previous=self.keep_previous
        )


@dataclass(frozen=True)
class SasVerifiedWrite:
    """Persist or clear the SAS-verified flag (``SecretCache.set_sas_verified``)."""

    key: CacheKey
    verified: bool

    @property
    def failure(self) -> str:
        return f"the SAS-verified flag was not {'saved' if self.verified else 'cleared'}"

    def apply(self, store: SecretCache) -> None:
        store.set_sas_verified(self.key, self.verified)


@dataclass(frozen=True)
class PbxSecretWrite:
    """Store a pbxsecret, or erase it with lifetime 0 (``SecretCache.store_pbx_secret``)."""

    key: CacheKey
    secret: bytes = field(repr=False)
    lifetime: int

    @property
    def failure(self) -> str:
        return f"the pbxsecret was not {'erased' if self.lifetime == 0 else 'stored'}"

    def apply(self, store: SecretCache) -> None:
        store.store_pbx_secret(self.key, self.secret, self.lifetime)


#: One write to a store, as the engine hands it to its host.
CacheWrite = RetainedSecretWrite | SasVerifiedWrite | PbxSecretWrite
