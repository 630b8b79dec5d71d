"""Events the ZRTP engine reports to its host (``ZrtpConnection.next_event``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pbx_zrtp.cache.base import CacheKey, CacheWrite


@dataclass(frozen=True)
class SrtpKeys:
    """SRTP master keys for one media stream, from this endpoint's point of view.

    ``local_*`` protect the packets we send, ``remote_*`` unprotect the peer's.
    """

    cipher: str  # "AES1" or "AES3"
    auth_tag: str  # "HS32" or "HS80"
    local_key: bytes = field(repr=False)
    local_salt: bytes = field(repr=False)
    remote_key: bytes = field(repr=False)
    remote_salt: bytes = field(repr=False)


@dataclass(frozen=True)
class Event:
    """Base class of engine events."""


@dataclass(frozen=True)
class PeerHelloReceived(Event):
    """The peer speaks ZRTP: its first acceptable Hello arrived."""

    peer_zid: bytes
    client_id: str
    version: str
    mitm: bool
    passive: bool


@dataclass(frozen=True)
class SrtpKeysReady(Event):
    """Keys are known; the host may start unprotecting the peer's SRTP.

    The initiator gets this after sending Confirm2 (the responder's first valid
    SRTP packet then completes the exchange, §4.6); the responder together
    with ``Secured``.
    """

    keys: SrtpKeys


@dataclass(frozen=True)
class Secured(Event):
    """The exchange completed: protect outgoing media with ``keys`` from now on."""

    role: str  # "initiator" | "responder"
    sas: str
    sas_type: str
    key_agreement: str
    hash: str
    cipher: str
    auth_tag: str
    peer_zid: bytes
    peer_client_id: str
    keys: SrtpKeys
    cache_mismatch: bool
    previously_verified: bool
    peer_mitm: bool
    peer_disclosure: bool
    peer_allows_clear: bool
    #: The peer is a trusted MiTM (M flag) inviting us to enroll (E flag, §7.3.1);
    #: acting on it needs the user's consent, which is the host's business.
    peer_enrollment: bool
    multistream: bool
    #: Both sides proved the same pbxsecret in this exchange (§7.3): seen from a
    #: PBX, the phone is enrolled with us; seen from a phone, the peer is a
    #: trusted MiTM whose SASrelay may be rendered.
    pbx_secret_matched: bool = False
    #: The full sashash (§4.5.2); a trusted MiTM relays it to the other leg.
    sas_hash: bytes = field(default=b"", repr=False)
    #: The retained-secret store failed (read or write): the call is secure, but
    #: key continuity with this peer was not saved. "" when all went well.
    cache_error: str = ""


@dataclass(frozen=True)
class HandshakeFailed(Event):
    """ZRTP ended without securing the stream.

    ``error_code`` is the §5.9 code we sent or received (None for plain
    timeouts without a peer); ``by_peer`` tells whether the peer sent it.
    """

    reason: str
    error_code: int | None = None
    by_peer: bool = False


@dataclass(frozen=True)
class WentClear(Event):
    """The peer's authenticated GoClear was accepted: media is clear from now on."""


@dataclass(frozen=True)
class GoClearRefused(Event):
    """The peer asked to go clear and we refused (Error 0x100); we stay secure."""

    reason: str = "GoClear is not allowed (our A flag is clear)"


@dataclass(frozen=True)
class SecurityWarning(Event):
    """Something suspicious that did not stop the exchange (bad MAC, hash image...)."""

    reason: str


@dataclass(frozen=True)
class SasRelayed(Event):
    """Phone side: the peer, a MiTM, sent SASrelay (§7.3) and we acknowledged it.

    ``sas`` is what to show the user from now on. With ``relayed`` it is the SAS
    of the far end's leg, relayed by a PBX we are enrolled with (so the two
    humans read the same words); otherwise it is our own leg's SAS, rendered
    with the scheme the PBX asked for, and ``ignored_reason`` says why a
    relayed sashash was not rendered (none sent, or the sender is not trusted).
    """

    sas: str
    sas_type: str
    relayed: bool
    #: The far end's V flag, relayed (6189bis: a False asks for a conspicuous SAS).
    far_end_verified: bool
    ignored_reason: str = ""


@dataclass(frozen=True)
class SasRelayAcknowledged(Event):
    """PBX side: the phone acknowledged our SASrelay with RelayACK."""


@dataclass(frozen=True)
class SasRelayUnacknowledged(Event):
    """PBX side: no RelayACK came back after every retransmission; the phone
    (bzrtp, for one) probably does not implement SASrelay. The call stays secure."""

    reason: str


@dataclass(frozen=True)
class CacheLookupNeeded(Event):
    """Host-served cache (``host_cache=True``): fetch the retained secrets of ``key``
    off the event loop and answer with ``ZrtpConnection.provide_cache_entry``.

    The exchange waits for the answer only where the secrets are needed (before
    our Commit or DHPart1), and at most ``cache_timeout`` seconds: then it goes on
    without key continuity, exactly as after a failed read.
    """

    key: CacheKey


@dataclass(frozen=True)
class CacheWriteNeeded(Event):
    """Host-served cache: apply ``write`` to the store, in order per peer, off the
    event loop; report a failure with ``ZrtpConnection.cache_write_failed``."""

    write: CacheWrite
