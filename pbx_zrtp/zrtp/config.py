"""Configuration of a ZRTP endpoint: identity, algorithm preferences, flags, timers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from pbx_zrtp.cache.base import NEVER_EXPIRES
from pbx_zrtp.zrtp.crypto import AUTH_TAGS, CIPHERS, HASHES, SAS_TYPES
from pbx_zrtp.zrtp.kem import KEMS, is_kem
from pbx_zrtp.zrtp.keyagreement import ALIASES, KEY_AGREEMENTS, MULTISTREAM

Role = Literal["auto", "initiator", "responder"]

PROTOCOL_VERSION = b"1.10"
DEFAULT_CLIENT_ID = b"pbx_zrtp 0.1    "

#: Types every endpoint must support; a Hello that omits them implies them (§5.2).
MANDATORY_HASH = b"S256"
MANDATORY_CIPHER = b"AES1"
MANDATORY_AUTH_TAGS = (b"HS32", b"HS80")
MANDATORY_KEY_AGREEMENT = b"DH3k"
MANDATORY_SAS = b"B32 "

#: AES1 first, as bzrtp orders them (RFC 6189 §5.1.3: AES1 mandatory, AES3 optional);
#: AES3 (AES_CM_256 SRTP, RFC 6188) for peers that choose it, and chosen by us as
#: initiator where §5.1.5 couples it to the key agreement (EC38).
DEFAULT_CIPHERS = (b"AES1", b"AES3")

#: Post-quantum first: X25519+ML-KEM-512 (X1M1) is what current Linphone offers first
#: and it interoperates with bzrtp (tests/interop/test_bzrtp_pq.py). A peer without
#: it (or listing a DH type first) negotiates DH as before: the draft's mixing rule
#: ranks every KEM after every DH type. With X255's alias E255 and Mult this fills
#: the Hello's seven places, so DH2k is no longer offered by default.
DEFAULT_KEY_AGREEMENTS = (b"X1M1", b"X255", b"EC25", b"DH3k", b"X448")
#: S512 is what Linphone picks with its hybrids (and X448) when both list it.
DEFAULT_HASHES = (b"S256", b"S384", b"S512")

#: bzrtp's default MTU: larger messages (post-quantum Commit, DHPart1) are fragmented.
DEFAULT_MTU = 1452
#: bzrtp's floor; below it a K448+ML-KEM-1024 Commit would need too many fragments.
MINIMUM_MTU = 600


def _block(name: str | bytes) -> bytes:
    raw = name.encode("ascii") if isinstance(name, str) else name
    if not 1 <= len(raw) <= 4:
        raise ValueError(f"algorithm name {name!r} must be 1-4 characters")
    return raw.ljust(4, b" ")


def parse_algorithm_list(value: str) -> tuple[bytes, ...]:
    """'X255,DH3k' -> (b'X255', b'DH3k'); 'B32' becomes the 4-byte block b'B32 '."""
    return tuple(_block(part.strip()) for part in value.split(",") if part.strip())


@dataclass
class ZrtpConfiguration:
    """Everything that is fixed for one endpoint identity and one stream's policy.

    Algorithm lists are in preference order. Mandatory types (§5.1) are always
    accepted even when left out, as the RFC requires. Curve25519 is offered under
    both its names (X255 as bzrtp says, E255 as GNU ZRTP says) when either is listed.
    """

    zid: bytes
    client_id: bytes = DEFAULT_CLIENT_ID
    role: Role = "auto"
    hash_types: tuple[bytes, ...] = DEFAULT_HASHES
    cipher_types: tuple[bytes, ...] = DEFAULT_CIPHERS
    auth_tag_types: tuple[bytes, ...] = (b"HS32", b"HS80")
    key_agreement_types: tuple[bytes, ...] = DEFAULT_KEY_AGREEMENTS
    sas_types: tuple[bytes, ...] = (b"B32 ", b"B256")
    #: M flag: we can send SASrelay (a trusted MiTM such as a PBX, §7.3).
    mitm: bool = False
    #: A flag: we accept GoClear from the peer (§4.7.2).
    allow_clear: bool = False
    #: D flag: we disclose session keys to a third party (§11).
    disclosure: bool = False
    #: E flag: a trusted MiTM (``mitm``) invites the peer to enroll (§7.3.1).
    enrollment: bool = False
    #: Offer multistream ("Mult") for additional streams of the same call.
    multistream: bool = True
    cache_expiration: int = NEVER_EXPIRES
    #: Used as the cache key's URIs (bzrtp keys its cache the same way).
    self_uri: str = ""
    peer_uri: str = ""
    #: Optional auxsecret shared out of band (§4.3).
    aux_secret: bytes | None = field(default=None, repr=False)
    #: The peer's a=zrtp-hash from the signalling, hex SHA-256 of its Hello (§8.1).
    peer_hello_hash: str | None = None
    #: Retransmission timers (§6), in seconds.
    t1_initial: float = 0.05
    t1_cap: float = 0.2
    t1_retries: int = 20
    #: Hello retries span at least this long once the peer is known to speak ZRTP (§6).
    t1_extended: float = 12.0
    t2_initial: float = 0.15
    t2_cap: float = 1.2
    t2_retries: int = 10
    #: Responder gives up when nothing arrives for this long after Commit (§6).
    responder_timeout: float = 10.0
    #: Largest ZRTP packet we send; bigger messages go as fragments (KEM mode).
    mtu: int = DEFAULT_MTU
    #: Refuse any key agreement that is not post-quantum (a KEM-mode hybrid).
    pq_required: bool = False
    #: A host-served cache (``host_cache``) that has not answered a lookup after
    #: this long is treated as unreadable: the exchange goes on without continuity.
    cache_timeout: float = 3.0
    #: A forced responder whose discovery is complete (both Hellos seen and
    #: acknowledged) commits itself when the peer has not committed for this long:
    #: a peer that waits for our Commit (GNU ZRTP, once its Hello was acknowledged
    #: before it saw ours) must not be left waiting forever (§4.2).
    responder_commit_wait: float = 2.0

    def __post_init__(self) -> None:
        if len(self.zid) != 12:
            raise ValueError("zid must be 12 bytes")
        if len(self.client_id) != 16:
            raise ValueError("client_id must be 16 bytes (pad with spaces)")
        if self.role not in ("auto", "initiator", "responder"):
            raise ValueError(f"role must be auto, initiator or responder, not {self.role!r}")
        self.hash_types = self._check("hash", self.hash_types, HASHES)
        self.cipher_types = self._check("cipher", self.cipher_types, CIPHERS)
        self.auth_tag_types = self._check("auth tag", self.auth_tag_types, AUTH_TAGS)
        known = {**KEY_AGREEMENTS, **KEMS, MULTISTREAM: None}
        self.key_agreement_types = self._check("key agreement", self.key_agreement_types, known)
        self.sas_types = self._check("SAS", self.sas_types, dict.fromkeys(SAS_TYPES))
        if not 0 <= self.cache_expiration <= NEVER_EXPIRES:
            raise ValueError("cache_expiration must be a 32-bit unsigned number of seconds")
        if self.enrollment and not self.mitm:
            raise ValueError("enrollment (E flag) is only for a trusted MiTM: set mitm too")
        if self.enrollment and self.allow_clear:
            raise ValueError("enrollment (E flag) excludes allow_clear (A flag), §7.3.1")
        if self.aux_secret is not None and not self.aux_secret:
            raise ValueError("aux_secret must not be empty")
        if not self.cache_timeout > 0:
            raise ValueError("cache_timeout must be > 0 seconds")
        if not self.responder_commit_wait > 0:
            raise ValueError("responder_commit_wait must be positive")
        if not MINIMUM_MTU <= self.mtu <= 2048:
            raise ValueError(f"mtu must be {MINIMUM_MTU}..2048 octets")
        if self.pq_required and not any(is_kem(t) for t in self.key_agreement_types):
            raise ValueError("pq_required needs a post-quantum key agreement (X1M1, X3M3)")

    @staticmethod
    def _check(
        kind: str, values: tuple[bytes, ...], known: Mapping[bytes, object]
    ) -> tuple[bytes, ...]:
        blocks = tuple(_block(v) for v in values)
        for value in blocks:
            if value not in known:
                names = ", ".join(k.decode().strip() for k in known)
                raise ValueError(f"unsupported {kind} type {value.decode()!r} (supported: {names})")
        if len(set(blocks)) != len(blocks):
            raise ValueError(f"{kind} list has duplicates")
        if not blocks:
            raise ValueError(f"{kind} list is empty")
        return blocks

    def offered_key_agreements(self) -> tuple[bytes, ...]:
        """Our DH key agreement types in preference order, each Curve25519 name
        followed by its alias (one computation, two names on the wire)."""
        types: list[bytes] = []
        for name in self.key_agreement_types:
            if name == MULTISTREAM:
                continue
            for candidate in (name, ALIASES.get(name)):
                if candidate is not None and candidate not in types:
                    types.append(candidate)
        return tuple(types)

    def hello_key_agreements(self) -> tuple[bytes, ...]:
        """Key agreement types as listed in our Hello (at most 7, Mult kept when offered)."""
        types = self.offered_key_agreements()
        if self.multistream:
            return (*types[:6], MULTISTREAM)
        return types[:7]
