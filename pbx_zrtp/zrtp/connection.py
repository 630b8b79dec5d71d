"""The ZRTP state machine (RFC 6189), sans-I/O in the style of aioquic.

``ZrtpConnection`` never reads a clock, never touches a socket and takes its
randomness as an argument. The host feeds it datagrams and timer expiries and
collects datagrams to send and events:

    conn = ZrtpConnection(config, ssrc=ssrc, random=os.urandom, cache=cache)
    conn.start(now)
    ... conn.receive_datagram(data, now) / conn.handle_timer(now)
    for datagram in conn.datagrams_to_send(): sock.sendto(datagram, peer)
    while (event := conn.next_event()) is not None: ...

The retained-secret store is I/O too. With ``host_cache=True`` the engine never
touches it: it asks (``CacheLookupNeeded``, answered by ``provide_cache_entry``)
and hands its writes over (``CacheWriteNeeded``), and the host runs them off its
event loop. ``cache=`` lets the engine call a store directly, which is only for
in-memory stores (tests, fuzzing, benchmarks).

Every transition is listed in ``TRANSITIONS``: (state, message type) -> handler
and the states the handler may move to. Messages not listed for a state are
ignored, as ZRTP's retransmissions make stale duplicates normal.
"""

from __future__ import annotations

import enum
import hashlib
import os
import struct
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TypeVar

from pbx_zrtp.cache.base import (
    NEVER_EXPIRES,
    CacheEntry,
    CacheError,
    CacheKey,
    CacheWrite,
    PbxSecretWrite,
    RetainedSecretWrite,
    SasVerifiedWrite,
    SecretCache,
)
from pbx_zrtp.zrtp import packets as p
from pbx_zrtp.zrtp.config import (
    MANDATORY_AUTH_TAGS,
    MANDATORY_CIPHER,
    MANDATORY_HASH,
    MANDATORY_KEY_AGREEMENT,
    MANDATORY_SAS,
    PROTOCOL_VERSION,
    ZrtpConfiguration,
)
from pbx_zrtp.zrtp.crypto import (
    CIPHERS,
    HASHES,
    IMPLICIT_HASH,
    SAS_TYPES,
    CipherType,
    HashAlgorithm,
    aes_cfb,
    constant_time_equal,
    hash_chain,
    implicit_mac,
)
from pbx_zrtp.zrtp.errors import ErrorCode, ZrtpProtocolError
from pbx_zrtp.zrtp.events import (
    CacheLookupNeeded,
    CacheWriteNeeded,
    Event,
    GoClearRefused,
    HandshakeFailed,
    PeerHelloReceived,
    SasRelayAcknowledged,
    SasRelayed,
    SasRelayUnacknowledged,
    Secured,
    SecurityWarning,
    SrtpKeys,
    SrtpKeysReady,
    WentClear,
)
from pbx_zrtp.zrtp.fragments import Reassembler
from pbx_zrtp.zrtp.kem import KEM_NONCE_LENGTH, KEMS, Kem, create_kem, is_kem
from pbx_zrtp.zrtp.keyagreement import (
    KEY_AGREEMENTS,
    MULTISTREAM,
    SPEED_RANK,
    KeyAgreement,
    RandomSource,
    create_key_agreement,
)
from pbx_zrtp.zrtp.sas import render_sas

INITIATOR = "initiator"
RESPONDER = "responder"


class State(enum.Enum):
    IDLE = "idle"
    DISCOVERY = "discovery"  # sending Hello, waiting for the peer's Hello/HelloACK
    COMMIT_SENT = "commit-sent"  # initiator: waiting for DHPart1 (or Confirm1 in Mult)
    DHPART2_SENT = "dhpart2-sent"  # initiator: waiting for Confirm1
    CONFIRM2_SENT = "confirm2-sent"  # initiator: waiting for Conf2ACK or SRTP
    DHPART1_SENT = "dhpart1-sent"  # responder: waiting for DHPart2
    CONFIRM1_SENT = "confirm1-sent"  # responder: waiting for Confirm2
    SECURE = "secure"
    CLEAR = "clear"  # went clear after an accepted GoClear
    FAILED = "failed"


#: Distinct peer Hellos remembered before a Commit settles which one is live.
_MAX_HELLOS = 4


class _Drop(Exception):
    """A packet that must not be used (false packet, §9) but does not end the exchange."""


@dataclass(frozen=True)
class ZrtpSession:
    """What a finished DH exchange leaves for Multistream streams of the same call (§4.4.3)."""

    zrtp_sess: bytes = field(repr=False)
    hash: bytes
    cipher: bytes
    auth_tag: bytes
    sas: str
    sas_type: bytes
    key_agreement: bytes
    sas_hash: bytes = field(repr=False)
    pbx_secret_matched: bool
    peer_zid: bytes
    previously_verified: bool
    cache_mismatch: bool
    used_nonces: set[bytes] = field(default_factory=set, repr=False)


@dataclass
class _Retransmission:
    message: p.Message
    interval: float
    cap: float
    remaining: int
    due: float


def with_mandatory(types: tuple[bytes, ...], mandatory: tuple[bytes, ...]) -> tuple[bytes, ...]:
    """A Hello list with the implicitly supported mandatory types appended (§5.2)."""
    return types + tuple(m for m in mandatory if m not in types)


def _peer_list(
    ours: tuple[bytes, ...], theirs: tuple[bytes, ...], mandatory: tuple[bytes, ...]
) -> tuple[bytes, ...]:
    """The peer's list to choose from: what it explicitly lists, when that has
    anything in common with ours; the implied mandatory types only otherwise.

    §5.2 adds unlisted mandatory types to every Hello list, but libzrtp refuses a
    Commit naming a type its Hello did not list (Error 0x54 for HS80 against its
    stock HS32-only profile), even from the side that would win the Commit
    contention. Choosing from the explicit list is always valid for both readings.
    """
    if any(t in with_mandatory(ours, mandatory) for t in theirs):
        return theirs
    return with_mandatory(theirs, mandatory)


def choose_key_agreement(ours: tuple[bytes, ...], theirs: tuple[bytes, ...]) -> bytes:
    """§4.1.2: intersect, compare both first choices, take the faster one.

    Unknown names and Mult are skipped; X255/E255 rank alike (one computation);
    a tie between two names of one rank goes to the lower name, so both sides
    pick the same one. KEM-mode hybrids rank after every DH type, which is the
    post-quantum draft's mixing rule (a DH first choice against a KEM one gives
    the DH; two KEM first choices give the faster KEM) and bzrtp's numeric order.
    """
    mandatory = (MANDATORY_KEY_AGREEMENT,)
    known = {**KEY_AGREEMENTS, **KEMS}
    ours_dh = tuple(t for t in with_mandatory(ours, mandatory) if t in known)
    theirs_dh = tuple(t for t in theirs if t in known)
    theirs_dh = _peer_list(ours_dh, theirs_dh, mandatory)
    ours_common = [t for t in ours_dh if t in theirs_dh]
    theirs_common = [t for t in theirs_dh if t in ours_dh]
    if not ours_common:
        raise ZrtpProtocolError("no key agreement in common", ErrorCode.UNSUPPORTED_KEY_AGREEMENT)
    a, b = ours_common[0], theirs_common[0]
    last = len(SPEED_RANK)
    return min(a, b, key=lambda name: (SPEED_RANK.get(name, last), name))


def _choose(
    ours: tuple[bytes, ...], theirs: tuple[bytes, ...], mandatory: tuple[bytes, ...]
) -> bytes:
    """The initiator's choice (§4.1.2): our first preference the peer lists."""
    theirs_all = _peer_list(ours, theirs, mandatory)
    for candidate in with_mandatory(ours, mandatory):
        if candidate in theirs_all:
            return candidate
    raise ZrtpProtocolError("no algorithm in common", ErrorCode.HELLO_COMPONENTS_MISMATCH)


def _cipher_preference(key_agreement: bytes, ours: tuple[bytes, ...]) -> tuple[bytes, ...]:
    """Our cipher preference for this key agreement (§5.1.5): EC38 SHOULD use AES3
    (when we offer it), DH2k SHOULD use AES1; otherwise our configured order."""
    if key_agreement == b"EC38" and b"AES3" in ours:
        first = b"AES3"
    elif key_agreement == b"DH2k":
        first = MANDATORY_CIPHER
    else:
        return ours
    return (first, *(c for c in ours if c != first))


def _name(block: bytes) -> str:
    return block.decode("ascii", "replace").strip()


class ZrtpConnection:
    """One ZRTP media stream endpoint."""

    def __init__(
        self,
        configuration: ZrtpConfiguration,
        *,
        ssrc: int,
        random: RandomSource = os.urandom,
        cache: SecretCache | None = None,
        session: ZrtpSession | None = None,
        host_cache: bool = False,
        multistream_only: bool = False,
        await_name: bool = False,
    ) -> None:
        if not 0 <= ssrc <= 0xFFFFFFFF:
            raise ValueError("ssrc must be a 32-bit unsigned integer")
        if host_cache and cache is not None:
            raise ValueError("host_cache: the host owns the store, so pass no cache")
        self._config = configuration
        self._ssrc = ssrc
        self._random = random
        self._cache = cache
        #: The host serves the store through events (never called from here).
        self._host_cache = host_cache
        self._has_cache = cache is not None or host_cache
        self._lookup_key: CacheKey | None = None  # host_cache: lookup awaiting its answer
        self._lookup_deadline: float | None = None
        #: The host names the call later (``name_call``): the retained secrets are
        #: keyed with its URIs, so a Hello adopted before then waits for the name
        #: (at most ``cache_timeout``) before its secrets are looked up.
        self._awaiting_name = await_name
        #: A DH Commit that arrived while the lookup was outstanding (§4.3: DHPart1
        #: names our retained secrets, so it cannot be built before the answer).
        self._held_commit: tuple[p.ZrtpPacket, bytes] | None = None
        #: A Multistream Commit that reached this unnamed engine (``await_name``, no
        #: session): a further stream of some call whose port is not named yet. It
        #: waits for ``adopt_session`` (named as that stream) or is refused by
        #: ``name_call`` (named as a call's first stream); nothing answers it before.
        self._held_multistream: tuple[p.ZrtpPacket, bytes] | None = None
        #: ``wait_for_name``: no DH key agreement on this unnamed exchange (ours or
        #: the peer's) before the host names it, however long that takes.
        self._dh_waits_for_name = False
        self._commit_after_lookup = False  # a forced responder's fallback Commit waits
        self._closed = False
        self._session_in = session
        #: A further stream of a call (video): keyed by Multistream from ``session``
        #: only, never by a DH exchange of its own, whose peer nothing ties to the
        #: first stream's (§4.4.3); a peer that cannot do Mult fails the stream.
        self._multistream_only = multistream_only
        if multistream_only and session is None:
            raise ValueError("multistream_only needs the first stream's session")
        self._state = State.IDLE
        self._events: deque[Event] = deque()
        self._outgoing: list[bytes] = []
        # bzrtp drops a packet whose sequence number is not above the last one and
        # does not handle wrap-around: start low, never reuse.
        self._sequence = int.from_bytes(random(2), "big") & 0x0FFF
        self.stats: Counter[str] = Counter()
        #: The last failure of the retained-secret store, "" if none. The call goes
        #: on without it; the host reports that key continuity was not saved.
        self.cache_error = ""
        self._cache_unreadable = False

        self._h0, self._h1, self._h2, self._h3 = hash_chain(random(32))
        self._hello = p.Hello(
            version=PROTOCOL_VERSION,
            client_id=configuration.client_id,
            h3=self._h3,
            zid=configuration.zid,
            signature_capable=False,  # never set S: libzrtp peers ignore such Hellos
            mitm=configuration.mitm,
            # P means "never sends Commit" (§5.2); even a forced responder commits
            # rather than leave a peer that waits for a Commit waiting forever.
            passive=False,
            hash_types=configuration.hash_types[:7],
            cipher_types=configuration.cipher_types[:7],
            auth_tag_types=configuration.auth_tag_types[:7],
            key_agreement_types=configuration.hello_key_agreements(),
            sas_types=configuration.sas_types[:7],
            mac=b"\x00" * 8,
        )
        unsigned = self._hello.serialize()
        self._hello = _replace_mac(self._hello, implicit_mac(self._h2, unsigned[:-8]))
        self._hello_bytes = self._hello.serialize()

        # Peer and negotiation state.
        self._peer_hello: p.Hello | None = None
        self._peer_hello_bytes = b""
        self._peer_ssrc: int | None = None
        self._hello_acked = False
        self._hello_candidates: list[tuple[p.Hello, bytes, int]] = []
        self._role: str | None = None
        self._cached = CacheEntry()
        self._hash: HashAlgorithm | None = None
        self._cipher: CipherType | None = None
        self._auth_tag = b""
        self._sas_type = b""
        self._key_agreement_type = b""
        self._key_agreement: KeyAgreement | None = None
        # KEM mode: the initiator's key pair / the responder's encapsulation, and
        # the responder's shared secret until DHPart2 arrives.
        self._kem: Kem | None = None
        self._kem_secret = b""
        self._reassembler = Reassembler(stats=self.stats)
        self._message_id = int.from_bytes(random(2), "big") & 0x0FFF
        self._fragment_ids: dict[bytes, int] = {}
        self._dh_secret_bits = 0
        self._commit: p.Commit | None = None
        self._commit_bytes = b""  # the Commit that won (ours or the peer's)
        self._own_commit_bytes = b""
        self._dhpart1_bytes = b""
        self._dhpart2_bytes = b""
        self._own_dhpart: p.DHPart1 | p.DHPart2 | None = None
        self._peer_dhpart: p.DHPart1 | p.DHPart2 | None = None
        self._peer_commit: p.Commit | None = None
        self._peer_h1: bytes | None = None
        self._peer_h2: bytes | None = None
        self._confirm_sent: p.Confirm1 | p.Confirm2 | None = None
        self._peer_confirm_bytes = b""
        self._peer_confirm: p.ConfirmPlaintext | None = None
        # Keys (dropped as soon as they are no longer needed).
        self._zidi = b""
        self._zidr = b""
        self._kdf_context = b""
        self._mackey_i = b""
        self._mackey_r = b""
        self._zrtpkey_i = b""
        self._zrtpkey_r = b""
        self._srtp_keys: SrtpKeys | None = None
        self._sas = ""
        self._sas_hash = b""
        self._pbx_secret_matched = False
        self._sas_relay_received = b""  # the last SASrelay we acknowledged
        self._new_rs1: bytes | None = None
        self._cache_mismatch = False
        #: rs1 or rs2 matched the peer's in this DH exchange (§4.3): the only
        #: evidence that lets a stored V flag count (§7.1).
        self._secret_matched = False
        self._previously_verified = False
        self._session: ZrtpSession | None = None
        self._secured_event: Secured | None = None
        self._pending_cache_update = False
        self._cache_lifetime = 0
        # Timers.
        self._retransmission: _Retransmission | None = None
        self._hello_deadline: float | None = None
        self._inactivity_deadline: float | None = None
        self._commit_wait_deadline: float | None = None

    # ------------------------------------------------------------------ host API

    @property
    def state(self) -> State:
        return self._state

    @property
    def role(self) -> str | None:
        return self._role

    @property
    def zid(self) -> bytes:
        return self._config.zid

    @property
    def peer_zid(self) -> bytes | None:
        return self._peer_hello.zid if self._peer_hello else None

    @property
    def cache_key(self) -> CacheKey | None:
        """The store key of this peer (our ZID, its ZID, the URIs), once its Hello is in."""
        return self._cache_key()

    @property
    def session(self) -> ZrtpSession | None:
        """After a DH exchange, the material Multistream streams need."""
        return self._session

    @property
    def awaits_session(self) -> bool:
        """An unnamed engine (``await_name``) still in discovery with the peer's
        Hello in and no key agreement begun but a held Multistream Commit: it may
        yet become a further stream of a call (``adopt_session``)."""
        return (
            self._awaiting_name
            and self._session_in is None
            and self._state is State.DISCOVERY
            and self._peer_hello is not None
            and self._held_commit is None
        )

    @property
    def holds_multistream_commit(self) -> bool:
        """A Multistream Commit waits here for the session of the call this port
        belongs to (see ``_held_multistream``)."""
        return self._held_multistream is not None

    @property
    def hello_hash(self) -> str:
        """Our a=zrtp-hash value (§8.1): version, space, hex SHA-256 of our Hello."""
        return f"{PROTOCOL_VERSION.decode()} {IMPLICIT_HASH.digest(self._hello_bytes).hex()}"

    def start(self, now: float) -> None:
        """Begin discovery: send Hello on the T1 schedule."""
        if self._state is not State.IDLE:
            return
        self._state = State.DISCOVERY
        self._hello_deadline = now + self._config.t1_extended
        self._send(self._hello)
        self._retransmission = _Retransmission(
            self._hello,
            self._config.t1_initial,
            self._config.t1_cap,
            self._config.t1_retries,
            now + self._config.t1_initial,
        )

    def receive_datagram(self, data: bytes, now: float) -> None:
        """Handle one datagram from the peer. Bad input is counted and dropped."""
        if self._state is State.IDLE:
            self.start(now)
        if p.is_zrtp_fragment(data):
            self._receive_fragment(data, now)
            return
        try:
            packet = p.ZrtpPacket.parse(data)
        except ZrtpProtocolError as exc:
            self.stats["dropped_bad_crc" if exc.code is None else "dropped_malformed"] += 1
            return
        message = packet.message
        if (
            self._role is not None
            and packet.ssrc != self._peer_ssrc
            and not isinstance(message, p.Ping)  # every Ping gets a PingACK (§5.15)
        ):
            self.stats["dropped_other_ssrc"] += 1  # not our peer's stream
            return
        entry = TRANSITIONS.get((self._state, type(message)))
        if entry is None:
            self.stats["ignored"] += 1
            return
        handler, targets = entry
        before = self._state
        raw = p.message_bytes(data)
        if not self._guarded(lambda: handler(self, packet, raw, now), now):
            return
        if (
            self._state is not before
            and self._state not in targets
            and self._state is not State.FAILED
        ):
            raise AssertionError(f"transition {before} -> {self._state} not in table")
        self.stats["received"] += 1

    def _receive_fragment(self, data: bytes, now: float) -> None:
        """Collect a fragment; a completed message goes on as one whole packet."""
        try:
            fragment = p.Fragment.parse(data)
        except ZrtpProtocolError:
            self.stats["dropped_bad_fragment"] += 1
            return
        if self._role is not None and fragment.ssrc != self._peer_ssrc:
            self.stats["dropped_other_ssrc"] += 1
            return
        self.stats["received_fragments"] += 1
        message = self._reassembler.add(fragment)
        if message is None:
            return
        head = struct.pack("!BBH4sI", 0x10, 0, fragment.sequence, p.ZRTP_COOKIE, fragment.ssrc)
        whole = head + message
        self.receive_datagram(whole + p.crc32c_of(whole).to_bytes(p.CRC_SIZE, "little"), now)

    def _guarded(self, step: Callable[[], None], now: float) -> bool:
        """Run one step of the exchange: a false packet is dropped and reported, a
        protocol error ends the exchange (Error sent). False when the step failed."""
        try:
            step()
        except _Drop as exc:
            self.stats["dropped_false_packet"] += 1
            self._events.append(SecurityWarning(str(exc)))
            return False
        except ZrtpProtocolError as exc:
            code = exc.code if exc.code is not None else ErrorCode.MALFORMED_PACKET
            self._fail(str(exc), int(code), now, send_error=True)
            return False
        return True

    def handle_timer(self, now: float) -> None:
        """Run retransmissions and time-outs that are due."""
        if self._lookup_deadline is not None and now >= self._lookup_deadline:
            self._lookup_answered(
                None,
                f"the call was not named within {self._config.cache_timeout:g} s"
                if self._awaiting_name
                else f"the store did not answer within {self._config.cache_timeout:g} s",
                now,
            )
        if self._inactivity_deadline is not None and now >= self._inactivity_deadline:
            self._inactivity_deadline = None
            self._fail(
                "responder time-out: no message from the initiator" + self._mitm_hint(),
                int(ErrorCode.PROTOCOL_TIMEOUT),
                now,
                send_error=True,
            )
            return
        if (
            self._commit_wait_deadline is not None
            and now >= self._commit_wait_deadline
            and self._state is State.DISCOVERY
        ):
            self._commit_wait_deadline = None
            self.stats["responder_fallback_commit"] += 1
            self._maybe_commit(now, fallback=True)
            return
        if (
            self._hello_deadline is not None
            and now >= self._hello_deadline
            and self._state is State.DISCOVERY
        ):
            self._hello_deadline = None
            self._fail(self._discovery_failure(), None, now, send_error=False)
            return
        rtx = self._retransmission
        if rtx is None or now < rtx.due:
            return
        if rtx.remaining <= 0:
            self._retransmission = None
            if isinstance(rtx.message, p.Hello):
                if self._peer_hello is None or self._hello_deadline is None:
                    self._fail(self._discovery_failure(), None, now, send_error=False)
                return
            if isinstance(rtx.message, p.Error):
                return  # the Error was already reported when it was first sent
            if isinstance(rtx.message, p.SasRelay):
                self._events.append(
                    SasRelayUnacknowledged(
                        "no RelayACK after every retransmission: the phone does not "
                        "implement SASrelay, or the path lost every copy"
                    )
                )
                return
            hint = self._mitm_hint()
            self._fail(
                f"time-out waiting for the answer to {_name(rtx.message.MESSAGE_TYPE)}{hint}",
                int(ErrorCode.PROTOCOL_TIMEOUT),
                now,
                send_error=False,
            )
            return
        self._send(rtx.message)
        self.stats["retransmitted"] += 1
        rtx.remaining -= 1
        rtx.interval = min(rtx.interval * 2, rtx.cap)
        rtx.due = now + rtx.interval

    def _mitm_hint(self) -> str:
        bad = self.stats["bad_confirm_mac"]
        if not bad:
            return ""
        return f" ({bad} Confirm messages with a bad MAC were dropped: possible man in the middle)"

    def get_timer(self) -> float | None:
        """The next time ``handle_timer`` must be called, or None."""
        deadlines = [
            d
            for d in (
                self._retransmission.due if self._retransmission else None,
                self._hello_deadline if self._state is State.DISCOVERY else None,
                self._commit_wait_deadline if self._state is State.DISCOVERY else None,
                self._inactivity_deadline,
                self._lookup_deadline,
            )
            if d is not None
        ]
        return min(deadlines) if deadlines else None

    def datagrams_to_send(self) -> list[bytes]:
        out, self._outgoing = self._outgoing, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def srtp_authenticated(self, now: float) -> None:
        """The host got a valid SRTP packet from the peer: for the initiator that
        completes the exchange like a Conf2ACK (§4.6)."""
        if self._state is State.CONFIRM2_SENT:
            self._complete_initiator(now)

    def provide_cache_entry(
        self, key: CacheKey, entry: CacheEntry | None, now: float, *, error: str = ""
    ) -> None:
        """The host's answer to ``CacheLookupNeeded``: the entry, or None and the
        store's ``error``. A late answer (after ``cache_timeout``, or for a Hello no
        longer adopted) is ignored; a failed one means "no continuity, write nothing"."""
        if self._closed or self._lookup_key is None or key != self._lookup_key:
            self.stats["cache_answers_ignored"] += 1
            return
        self._lookup_answered(entry, error or "the store gave no answer", now)

    def name_call(self, self_uri: str, peer_uri: str, now: float) -> None:
        """The host named the call (``await_name``): its URIs key the retained
        secrets from now on, and a lookup held for the name is made now, under the
        named call's key. Named after ``cache_timeout``, the exchange went on
        without continuity and writes no retained secret."""
        self._config = replace(self._config, self_uri=self_uri, peer_uri=peer_uri)
        if not self._awaiting_name:
            return
        self._awaiting_name = False
        if self._held_multistream is not None:
            # Named as a call's first stream: there is no session to key it from.
            self._held_multistream = None
            self._guarded(self._refuse_multistream, now)
            return
        key = self._cache_key()
        if self._closed or key is None:
            return
        if self._lookup_key is None:
            if self._dh_waits_for_name and self._state is State.DISCOVERY:
                self._resume_after_lookup(now)  # held past its lookup's time-out
            return
        self._lookup_key = self._lookup_deadline = None
        self._lookup(key, now)
        if not self._host_cache:  # looked up inline: the held exchange goes on now
            self._resume_after_lookup(now)

    def adopt_session(self, session: ZrtpSession, now: float) -> None:
        """The host named this unnamed engine's port (``await_name``) as a further
        stream of a call: from now on it is keyed by Multistream from ``session``
        only, toward that session's peer ZID, exactly like an engine made with
        ``multistream_only`` (§4.4.3). The Hello we sent stays ours (the peer's
        Commit hashes it); a held Multistream Commit is answered now, and without
        one we commit by Multistream once discovery allows. ValueError if the
        exchange cannot become a stream any more (``awaits_session``)."""
        if not (self.awaits_session or self.holds_multistream_commit):
            raise ValueError("this exchange is past discovery: it cannot become a stream")
        self._session_in = session
        self._multistream_only = True
        self._config = replace(self._config, multistream=True, enrollment=False, allow_clear=False)
        # A Multistream exchange reads and writes no retained secret.
        self._awaiting_name = False
        self._has_cache = self._host_cache = False
        self._cache = None
        self._lookup_key = self._lookup_deadline = None
        self._commit_after_lookup = False
        held, self._held_multistream = self._held_multistream, None
        if held is not None:
            packet, raw = held
            commit = packet.message
            assert isinstance(commit, p.Commit)
            self._guarded(lambda: self._respond_to_commit(commit, raw, now), now)
        else:
            self._guarded(lambda: self._maybe_commit(now, fallback=True), now)

    def wait_for_name(self) -> None:
        """The host suspects this unnamed exchange (``await_name``) is a further
        stream of a call it already has secure (the peer's ZID has one): keyed by a
        DH exchange of its own, that stream would carry a SAS nobody compares. So
        neither our DH Commit nor an answer to the peer's DH Commit until the host
        names it (``name_call``: a call's first stream after all, the exchange goes
        on; ``adopt_session``: that call's stream, Multistream only); the end of
        ``cache_timeout`` no longer ends the wait."""
        if self._awaiting_name:
            self._dh_waits_for_name = True

    @property
    def _dh_held(self) -> bool:
        return self._dh_waits_for_name and self._awaiting_name

    @staticmethod
    def _refuse_multistream() -> None:
        raise ZrtpProtocolError(
            "Multistream Commit without a ZRTP session", ErrorCode.NO_SHARED_SECRET
        )

    def cache_write_failed(self, write: CacheWrite, error: str) -> None:
        """The host could not apply a ``CacheWriteNeeded``: the call stays secure,
        ``cache_error`` says what was not saved."""
        self.cache_error = f"{write.failure}: {error}"
        self.stats["cache_errors"] += 1

    def set_sas_verified(self, verified: bool) -> None:
        """The user compared the SAS (True) or withdrew that mark (False), §7.1.

        Persists the V flag; a cache update held back by a cache mismatch
        (§4.6.1.1) is carried out once the SAS is verified. Clearing the flag
        touches nothing else: the peer still holds the retained secret, and
        erasing ours would show it a cache mismatch (a false MiTM alarm) next call.
        """
        key = self._cache_key()
        if not self._has_cache or key is None:
            return
        if self._awaiting_name:
            raise ValueError(
                "the call is not named: its retained secrets have no key to be"
                " stored under (verify the call the PBX named)"
            )
        self._write(SasVerifiedWrite(key, verified))
        if verified and self._pending_cache_update:
            self._pending_cache_update = False
            self._update_cache()

    @property
    def pbx_secret_matched(self) -> bool:
        """Both sides proved the same pbxsecret: the phone is enrolled with the PBX."""
        return self._pbx_secret_matched

    def send_sas_relay(
        self,
        now: float,
        *,
        sas_hash: bytes | None,
        sas_type: str,
        far_end_verified: bool,
        far_end_disclosure: bool = False,
    ) -> None:
        """As a trusted MiTM, relay the other leg's SAS to this peer (§7.3, §5.13).

        ``sas_hash`` None sends the "empty" SASrelay an unenrolled phone gets: a
        null sashash, only the rendering scheme, so both humans render alike.
        Sent on the T2 schedule until RelayACK; ``SasRelayAcknowledged`` or
        ``SasRelayUnacknowledged`` tells how it ended. Misuse raises ValueError.
        """
        if not self._config.mitm:
            raise ValueError("only a MiTM (M flag in our Hello) may send SASrelay")
        if self._state is not State.SECURE:
            raise ValueError(f"SASrelay needs a secure stream, not {self._state.value!r}")
        scheme = sas_type.encode().ljust(4)[:4]
        if scheme not in SAS_TYPES:
            raise ValueError(f"unsupported SAS rendering scheme {sas_type!r}")
        if sas_hash is not None and len(sas_hash) != 32:
            raise ValueError("a sashash is 32 bytes")
        initiator = self._role == INITIATOR
        key = self._zrtpkey_i if initiator else self._zrtpkey_r
        mackey = self._mackey_i if initiator else self._mackey_r
        assert key and mackey and self._hash is not None
        plaintext = p.SasRelayPlaintext(
            sas_verified=far_end_verified,
            allow_clear=False,  # the relay never goes clear toward a phone
            disclosure=self._config.disclosure or far_end_disclosure,
            rendering_scheme=scheme,
            trusted_sas_hash=sas_hash if sas_hash is not None else bytes(32),
        )
        iv = self._random(16)
        encrypted = aes_cfb(key, iv, plaintext.serialize(), encrypt=True)
        mac = self._hash.mac(mackey, encrypted)
        self._send_reliably(p.SasRelay(mac=mac, cfb_iv=iv, encrypted=encrypted), now)

    def offer_enrollment(self) -> None:
        """Invite the peer to enroll (E flag, and no A flag, §7.3.1) in this
        exchange's Confirm: possible until our Confirm has gone out."""
        if not self._config.mitm:
            raise ValueError("only a MiTM (M flag in our Hello) may offer enrollment")
        if self._confirm_sent is not None or self._state in (
            State.SECURE,
            State.CLEAR,
            State.FAILED,
        ):
            raise ValueError("too late to offer enrollment: our Confirm was already sent")
        self._config = replace(self._config, enrollment=True, allow_clear=False)

    def enroll(self) -> None:
        """Store this session's pbxsecret (§7.3.1): the enrollment itself.

        Only with the user's explicit consent (a phone MUST NOT store it
        otherwise), only in the session where the E flag was sent or received,
        and best after the SAS was compared. Misuse raises ValueError.
        """
        session = self._session or self._session_in
        if self._state is not State.SECURE or session is None or self._hash is None:
            raise ValueError("enrollment needs a secure ZRTP session")
        assert self._peer_hello is not None
        peer_confirm = self._peer_confirm
        invited = peer_confirm is not None and peer_confirm.enrollment and self._peer_hello.mitm
        inviting = self._config.mitm and self._config.enrollment
        if not (invited or inviting):
            raise ValueError("no enrollment in this session: neither side set the E flag")
        key = self._cache_key()
        if not self._has_cache or key is None:
            raise ValueError("enrollment needs a retained-secret cache")
        secret = self._hash.kdf(
            session.zrtp_sess, b"Trusted MiTM key", self._zidi + self._zidr, 256
        )
        lifetime = self._config.cache_expiration or NEVER_EXPIRES
        self._write(PbxSecretWrite(key, secret, lifetime), strict=True)

    def unenroll(self) -> None:
        """Erase the pbxsecret shared with this peer: it is no longer trusted."""
        key = self._cache_key()
        if not self._has_cache or key is None:
            raise ValueError("unenrolling needs a retained-secret cache and a known peer")
        # lifetime 0 erases
        self._write(PbxSecretWrite(key, self._random(32), 0), strict=True)

    def close(self) -> None:
        """Drop all key material and stop every timer (§4.7.3)."""
        self._retransmission = None
        self._hello_deadline = None
        self._inactivity_deadline = None
        self._commit_wait_deadline = None
        self._wipe_keys()
        self._mackey_i = self._mackey_r = b""
        self._new_rs1 = None
        self._srtp_keys = None
        self._session = None
        self._pending_cache_update = False
        self._lookup_key = self._lookup_deadline = self._held_commit = None
        self._held_multistream = None
        self._closed = True

    # ------------------------------------------------------------------ sending

    def _next_sequence(self) -> int:
        self._sequence = (self._sequence + 1) & 0xFFFF
        return self._sequence

    def _send(self, message: p.Message) -> None:
        packet = p.ZrtpPacket(self._next_sequence(), self._ssrc, message).serialize()
        self.stats["sent"] += 1
        if len(packet) <= self._config.mtu:
            self._outgoing.append(packet)
            return
        # Too big for the path (a KEM-mode Commit or DHPart1): fragments, which keep
        # one message id across retransmissions so that pieces of copies combine.
        body = p.message_bytes(packet)
        message_id = self._fragment_ids.get(body)
        if message_id is None:
            self._message_id = message_id = (self._message_id + 1) & 0xFFFF
            self._fragment_ids[body] = message_id
        fragments = p.fragment_message(
            body,
            ssrc=self._ssrc,
            message_id=message_id,
            sequences=self._next_sequence,
            mtu=self._config.mtu,
        )
        self._outgoing.extend(fragment.serialize() for fragment in fragments)
        self.stats["sent_fragments"] += len(fragments)

    def _send_reliably(self, message: p.Message, now: float) -> None:
        """Send on the T2 schedule until the matching answer arrives (§6)."""
        self._send(message)
        self._retransmission = _Retransmission(
            message,
            self._config.t2_initial,
            self._config.t2_cap,
            self._config.t2_retries,
            now + self._config.t2_initial,
        )

    def _fail(
        self, reason: str, code: int | None, now: float, *, send_error: bool, by_peer: bool = False
    ) -> None:
        if self._state is State.FAILED:
            return
        self._state = State.FAILED
        self._hello_deadline = None
        self._inactivity_deadline = None
        self._commit_wait_deadline = None
        self._retransmission = None
        self._lookup_key = self._lookup_deadline = self._held_commit = None
        self._held_multistream = None
        self._wipe_keys()
        if send_error and code is not None:
            self._send_reliably(p.Error(code=code), now)
        self._events.append(HandshakeFailed(reason, code, by_peer))

    def _discovery_failure(self) -> str:
        """Name the step of discovery that did not happen."""
        if self._peer_hello is None:
            if self._hello_acked:
                return "time-out: the peer acknowledged our Hello but never sent its own"
            return "time-out: no ZRTP Hello from the peer"
        if not self._hello_acked:
            return "time-out: the peer never acknowledged our Hello"
        return "time-out: both Hellos were acknowledged but no Commit came"

    def _wipe_keys(self) -> None:
        self._mackey_i = self._mackey_r = b""
        self._zrtpkey_i = self._zrtpkey_r = b""
        self._key_agreement = None
        self._kem = None
        self._kem_secret = b""

    # ------------------------------------------------------------------ discovery

    def _on_hello(self, packet: p.ZrtpPacket, raw: bytes, now: float) -> None:
        hello = packet.message
        assert isinstance(hello, p.Hello)
        if self._peer_hello is not None and raw == self._peer_hello_bytes:
            # Retransmission: our HelloACK was lost.
            if self._state is State.DISCOVERY or self._role == RESPONDER:
                # A forced initiator stays silent once, hoping to answer with its
                # Commit; if the peer keeps asking, fall back to contention.
                self._send(p.HelloAck())
            return
        if any(raw == known for _, known, _ in self._hello_candidates):
            if self._config.role != "initiator":
                self._send(p.HelloAck())
            return
        if self._peer_hello is not None and (
            self._state is not State.DISCOVERY or len(self._hello_candidates) >= _MAX_HELLOS
        ):
            self.stats["ignored_other_hello"] += 1
            return
        if not self._acceptable_hello(hello, raw, packet.ssrc):
            return
        if self._peer_hello is not None:
            # Another Hello before any Commit: maybe the real one, the first being a
            # replay from an older call. Keep it; Commit/HelloACK decide (§9).
            self._hello_candidates.append((hello, raw, packet.ssrc))
            self.stats["alternate_hello"] += 1
        else:
            self._hello_candidates.append((hello, raw, packet.ssrc))
            self._adopt_hello(hello, raw, packet.ssrc, now)
            self._events.append(
                PeerHelloReceived(
                    peer_zid=hello.zid,
                    client_id=hello.client_id.decode("ascii", "replace").strip(),
                    version=hello.version.decode("ascii", "replace"),
                    mitm=hello.mitm,
                    passive=hello.passive,
                )
            )
            # §6: the peer speaks ZRTP, so keep our Hello going for t1_extended.
            rtx = self._retransmission
            if rtx is not None and isinstance(rtx.message, p.Hello):
                span = self._config.t1_extended / self._config.t1_cap
                rtx.remaining = max(rtx.remaining, int(span))
        if self._config.role != "initiator":
            # A forced initiator answers the Hello with its Commit instead (§6:
            # Hello ends on HelloACK *or* Commit), so a peer that commits only
            # after its Hello is acknowledged (bzrtp) becomes the responder.
            self._send(p.HelloAck())
        self._maybe_commit(now)

    def _acceptable_hello(self, hello: p.Hello, raw: bytes, ssrc: int) -> bool:
        """§4.1.1 version rules, ZID/SSRC collisions and the a=zrtp-hash binding."""
        version = hello.version[:3]
        if version > PROTOCOL_VERSION[:3]:
            self.stats["ignored_newer_version"] += 1  # §4.1.1: ignore, keep sending ours
            return False
        if version < PROTOCOL_VERSION[:3]:
            raise ZrtpProtocolError(
                f"peer ZRTP version {hello.version!r} is not supported",
                ErrorCode.UNSUPPORTED_VERSION,
            )
        if hello.zid == self._config.zid and ssrc == self._ssrc:
            raise _Drop("our own Hello reflected back")  # not worth ending the call for
        if hello.zid == self._config.zid:
            raise ZrtpProtocolError("peer uses our own ZID", ErrorCode.EQUAL_ZID)
        if ssrc == self._ssrc:
            raise ZrtpProtocolError("SSRC collision", ErrorCode.SSRC_COLLISION)
        expected = self._config.peer_hello_hash
        if expected is not None:
            digest = IMPLICIT_HASH.digest(raw).hex()
            if not constant_time_equal(digest.encode(), expected.lower().encode()):
                raise _Drop("Hello does not match the a=zrtp-hash from the signalling")
        return True

    def _adopt_hello(self, hello: p.Hello, raw: bytes, ssrc: int, now: float) -> None:
        """Take this Hello as the peer's: its H3 anchors the hash chain from now on."""
        if self._peer_hello is not None and raw == self._peer_hello_bytes:
            return
        self._peer_hello = hello
        self._peer_hello_bytes = raw
        self._peer_ssrc = ssrc
        key = self._cache_key()
        self._cached = CacheEntry()
        if key is None:
            return
        if self._awaiting_name and self._has_cache:
            # Keyed with the call's URIs, not known yet: held like a lookup in
            # flight (no DHPart before it) until name_call or cache_timeout.
            self._lookup_key = key
            self._lookup_deadline = now + self._config.cache_timeout
            return
        self._lookup(key, now)

    def _lookup(self, key: CacheKey, now: float) -> None:
        """Look the peer's retained secrets up (or ask the host to)."""
        if self._host_cache:
            # Fetched off the host's loop; needed only once we build a DHPart.
            self._lookup_key = key
            self._lookup_deadline = now + self._config.cache_timeout
            self._events.append(CacheLookupNeeded(key))
        elif self._cache is not None:
            try:
                self._cached = self._cache.lookup(key)
            except CacheError as exc:
                self._cache_unreadable = True
                self._cache_failed("retained secrets could not be read", exc)

    def _lookup_answered(self, entry: CacheEntry | None, error: str, now: float) -> None:
        """The lookup is over (answered, failed or timed out): resume the exchange."""
        self._lookup_key = self._lookup_deadline = None
        if entry is None:
            # Go on as if this peer were new, and write nothing back: a store that
            # failed to read must not have a good rs1 overwritten.
            self._cache_unreadable = True
            self.cache_error = f"retained secrets could not be read: {error}"
            self.stats["cache_errors"] += 1
        else:
            self._cached = entry
        if self._dh_held:
            return  # resumed by name_call (or adopt_session, Multistream only)
        self._resume_after_lookup(now)

    def _resume_after_lookup(self, now: float) -> None:
        """Build what waited for the retained secrets: the held Commit's answer,
        or our own Commit."""
        held, self._held_commit = self._held_commit, None
        if held is not None and self._state is State.DISCOVERY:
            packet, raw = held
            assert isinstance(packet.message, p.Commit)
            commit = packet.message
            self._guarded(lambda: self._respond_to_commit(commit, raw, now), now)
        else:
            fallback, self._commit_after_lookup = self._commit_after_lookup, False
            self._guarded(lambda: self._maybe_commit(now, fallback=fallback), now)

    def _on_hello_ack(self, packet: p.ZrtpPacket, raw: bytes, now: float) -> None:
        if not self._hello_acked:
            self._hello_acked = True
            self._retransmission = None
        # With several candidate Hellos, the one from the SSRC that acknowledged
        # ours is the live peer.
        for hello, hello_raw, ssrc in self._hello_candidates:
            if ssrc == packet.ssrc:
                self._adopt_hello(hello, hello_raw, ssrc, now)
                break
        self._maybe_commit(now)

    def _maybe_commit(self, now: float, *, fallback: bool = False) -> None:
        if self._state is not State.DISCOVERY or self._peer_hello is None or not self._hello_acked:
            return
        if self._held_multistream is not None:
            return  # the peer committed by Multistream: never a DH Commit of ours
        if self._dh_held:
            self._commit_after_lookup = self._commit_after_lookup or fallback
            return
        if self._config.role == "responder" and not fallback:
            # Discovery is complete: the peer should commit now. Give it time, then
            # commit ourselves (GNU ZRTP, acknowledged before it saw our Hello, only
            # waits for a Commit).
            if self._commit_wait_deadline is None:
                self._commit_wait_deadline = now + self._config.responder_commit_wait
            return
        peer = self._peer_hello
        multistream = (
            self._session_in is not None
            and MULTISTREAM in peer.key_agreement_types
            and self._config.multistream
        )
        if not multistream and self._lookup_key is not None:
            # Our DHPart2 (committed to by hvi) names the cached secrets: wait for
            # the store, then commit (a forced responder's fallback included).
            self._commit_after_lookup = self._commit_after_lookup or fallback
            return
        self._commit_wait_deadline = None
        if self._multistream_only and not multistream:
            raise ZrtpProtocolError(
                "this stream is keyed only by Multistream (a further stream of the call,"
                " RFC 6189 §4.4.3) and the peer's Hello offers no Mult",
                ErrorCode.UNSUPPORTED_KEY_AGREEMENT,
            )
        if multistream:
            assert self._session_in is not None
            self._check_session_peer(self._session_in, peer)
        self._role = INITIATOR
        self._zidi, self._zidr = self._config.zid, peer.zid
        if multistream:
            assert self._session_in is not None
            session = self._session_in
            self._hash = HASHES[session.hash]
            self._cipher = CIPHERS[session.cipher]
            self._auth_tag = session.auth_tag
            self._sas_type = session.sas_type
            self._key_agreement_type = MULTISTREAM
            nonce = self._random(16)
            commit = p.Commit(
                h2=self._h2,
                zid=self._config.zid,
                hash_type=session.hash,
                cipher_type=session.cipher,
                auth_tag_type=session.auth_tag,
                key_agreement_type=MULTISTREAM,
                sas_type=session.sas_type,
                nonce=nonce,
                mac=b"\x00" * 8,
            )
        else:
            self._negotiate_as_initiator(peer)
            assert self._hash is not None and self._cipher is not None
            kem_public_key = None
            if is_kem(self._key_agreement_type):
                # KEM mode: our public key goes in the Commit, DHPart2 carries a
                # nonce that hvi commits to (post-quantum draft, bzrtp).
                self._key_agreement = None
                self._kem = create_kem(self._key_agreement_type, self._hash, self._random)
                kem_public_key = self._kem.generate()
                pv = self._random(KEM_NONCE_LENGTH)
            else:
                self._kem = None
                self._dh_secret_bits = self._cipher.key_length * 16
                self._key_agreement = create_key_agreement(
                    self._key_agreement_type, self._random, self._dh_secret_bits
                )
                pv = self._key_agreement.public_value
            self._own_dhpart = self._build_dhpart(p.DHPart2, b"Initiator", pv)
            self._dhpart2_bytes = self._own_dhpart.serialize()
            hvi = self._hash.digest(self._dhpart2_bytes + self._peer_hello_bytes)[:32]
            commit = p.Commit(
                h2=self._h2,
                zid=self._config.zid,
                hash_type=self._hash.name,
                cipher_type=self._cipher.name,
                auth_tag_type=self._auth_tag,
                key_agreement_type=self._key_agreement_type,
                sas_type=self._sas_type,
                hvi=hvi,
                mac=b"\x00" * 8,
                kem_public_key=kem_public_key,
            )
        commit = _replace_mac(commit, implicit_mac(self._h1, commit.serialize()[:-8]))
        self._commit = commit
        self._own_commit_bytes = self._commit_bytes = commit.serialize()
        if multistream:
            assert self._session_in is not None
            self._derive_multistream(self._session_in)
        self._state = State.COMMIT_SENT
        self._send_reliably(commit, now)

    def _negotiate_as_initiator(self, peer: p.Hello) -> None:
        cfg = self._config
        ours = tuple(t for t in self._hello.key_agreement_types if t != MULTISTREAM)
        if not (b"S384" in cfg.hash_types and b"S384" in peer.hash_types):
            ours = tuple(t for t in ours if t != b"EC38")  # §5.1.5: EC38 MUST use S384
        self._key_agreement_type = choose_key_agreement(ours, peer.key_agreement_types)
        if cfg.pq_required and not is_kem(self._key_agreement_type):
            raise ZrtpProtocolError(
                "post-quantum key agreement required, the peer offers none in common",
                ErrorCode.UNSUPPORTED_KEY_AGREEMENT,
            )
        hash_pref = cfg.hash_types
        cipher_pref = cfg.cipher_types
        if self._key_agreement_type == b"EC38":
            hash_pref = (b"S384", *(h for h in hash_pref if h != b"S384"))
        elif is_kem(self._key_agreement_type):
            # As bzrtp: the strongest hash and cipher both sides list (S512, AES3).
            strong = [h for h in (b"S512", b"S384") if h in hash_pref]
            hash_pref = (*strong, *(h for h in hash_pref if h not in strong))
            if b"AES3" in cipher_pref:
                cipher_pref = (b"AES3", *(c for c in cipher_pref if c != b"AES3"))
        self._hash = HASHES[_choose(hash_pref, peer.hash_types, (MANDATORY_HASH,))]
        self._cipher = CIPHERS[
            _choose(
                _cipher_preference(self._key_agreement_type, cipher_pref),
                peer.cipher_types,
                (MANDATORY_CIPHER,),
            )
        ]
        self._auth_tag = _choose(cfg.auth_tag_types, peer.auth_tag_types, MANDATORY_AUTH_TAGS)
        self._sas_type = _choose(cfg.sas_types, peer.sas_types, (MANDATORY_SAS,))

    # ------------------------------------------------------------------ commit

    def _on_commit(self, packet: p.ZrtpPacket, raw: bytes, now: float) -> None:
        commit = packet.message
        assert isinstance(commit, p.Commit)
        if self._held_commit is not None:
            # One Commit is already waiting for the store: it stands, exactly as it
            # would had it been answered at once (later ones could not re-pick the Hello).
            self.stats["commit_held_for_cache"] += 1
            return
        if self._held_multistream is not None:
            self.stats["commit_held_for_session"] += 1  # the peer's retransmission
            return
        if self._state is State.DISCOVERY:
            # The Commit's H2 tells which candidate Hello is the live one (§9).
            for hello, hello_raw, ssrc in self._hello_candidates:
                if ssrc == packet.ssrc and constant_time_equal(
                    IMPLICIT_HASH.digest(commit.h2), hello.h3
                ):
                    self._adopt_hello(hello, hello_raw, ssrc, now)
                    break
        peer = self._peer_hello
        if peer is None:
            raise _Drop("Commit before the peer's Hello")
        self._check_preimage(commit.h2, peer.h3, "Commit H2")
        if commit.zid != peer.zid:
            raise _Drop("Commit ZID differs from the Hello's")
        if self._state is State.COMMIT_SENT:
            assert self._commit is not None
            ours = self._commit
            if commit.is_preshared:
                raise _Drop("Preshared Commit against our DH Commit")  # §4.2: Prsh loses
            if ours.is_multistream != commit.is_multistream:
                raise ZrtpProtocolError(
                    "Multistream Commit against a DH Commit", ErrorCode.CRITICAL_SOFTWARE_ERROR
                )
            ours_value = ours.nonce if ours.is_multistream else ours.hvi
            theirs_value = commit.nonce if commit.is_multistream else commit.hvi
            assert ours_value is not None and theirs_value is not None
            if ours_value >= theirs_value:
                self.stats["commit_contention_won"] += 1
                return  # §4.2: the lower Commit is discarded; the peer becomes responder
            self.stats["commit_contention_lost"] += 1
            self._retransmission = None
        if self._multistream_only and not commit.is_multistream:
            raise ZrtpProtocolError(
                "a DH Commit on a stream keyed only by Multistream (a further stream"
                " of the call, RFC 6189 §4.4.3) is refused",
                ErrorCode.UNSUPPORTED_KEY_AGREEMENT,
            )
        if (
            commit.is_multistream
            and self._awaiting_name
            and self._session_in is None
            and self._state is State.DISCOVERY
        ):
            # An unnamed port: the further stream of a call the host has not named
            # yet. Held, unanswered, until the host says whose stream this is.
            self._held_multistream = (packet, raw)
            self.stats["commit_held_for_session"] += 1
            return
        if (self._lookup_key is not None or self._dh_held) and not commit.is_multistream:
            # DHPart1 names our retained secrets: answer once the store has.
            self._held_commit = (packet, raw)
            self.stats["commit_held_for_cache"] += 1
            return
        self._respond_to_commit(commit, raw, now)

    def _respond_to_commit(self, commit: p.Commit, raw: bytes, now: float) -> None:
        peer = self._peer_hello
        assert peer is not None
        # The Hello's MAC is keyed by the H2 we have just learned (§8.1.1).
        self._check_mac(implicit_mac(commit.h2, self._peer_hello_bytes[:-8]), peer.mac, "Hello")
        cfg = self._config
        self._check_offered(
            commit.hash_type, cfg.hash_types, (MANDATORY_HASH,), ErrorCode.UNSUPPORTED_HASH
        )
        self._check_offered(
            commit.cipher_type, cfg.cipher_types, (MANDATORY_CIPHER,), ErrorCode.UNSUPPORTED_CIPHER
        )
        self._check_offered(
            commit.auth_tag_type,
            cfg.auth_tag_types,
            MANDATORY_AUTH_TAGS,
            ErrorCode.UNSUPPORTED_AUTH_TAG,
        )
        self._check_offered(
            commit.sas_type, cfg.sas_types, (MANDATORY_SAS,), ErrorCode.UNSUPPORTED_SAS
        )
        self._role = RESPONDER
        self._zidi, self._zidr = peer.zid, self._config.zid
        self._hash = HASHES[commit.hash_type]
        self._cipher = CIPHERS[commit.cipher_type]
        self._auth_tag = commit.auth_tag_type
        self._sas_type = commit.sas_type
        self._key_agreement_type = commit.key_agreement_type
        self._peer_commit = commit
        self._peer_h2 = commit.h2
        self._commit = commit
        self._commit_bytes = raw
        self._hello_acked = True
        if self._retransmission is not None and isinstance(self._retransmission.message, p.Hello):
            self._retransmission = None
        self._inactivity_deadline = now + cfg.responder_timeout
        if commit.is_multistream:
            session = self._session_in
            if session is None or not cfg.multistream:
                raise ZrtpProtocolError(
                    "Multistream Commit without a ZRTP session", ErrorCode.NO_SHARED_SECRET
                )
            self._check_session_peer(session, peer)
            assert commit.nonce is not None
            if commit.nonce in session.used_nonces:
                raise ZrtpProtocolError("Multistream nonce reuse", ErrorCode.NONCE_REUSE)
            session.used_nonces.add(commit.nonce)
            self._derive_multistream(session)
            self._send_confirm(p.Confirm1, now, reliably=False)
            self._state = State.CONFIRM1_SENT
            return
        if commit.key_agreement_type == b"EC38" and commit.hash_type != b"S384":
            raise ZrtpProtocolError("EC38 needs the S384 hash (§5.1.5)", ErrorCode.UNSUPPORTED_HASH)
        offered = (*self._hello.key_agreement_types, MANDATORY_KEY_AGREEMENT)
        if commit.key_agreement_type not in offered:
            raise ZrtpProtocolError(
                f"key agreement {_name(commit.key_agreement_type)} was not offered",
                ErrorCode.UNSUPPORTED_KEY_AGREEMENT,
            )
        if cfg.pq_required and not is_kem(commit.key_agreement_type):
            raise ZrtpProtocolError(
                f"post-quantum key agreement required, Commit chose "
                f"{_name(commit.key_agreement_type)}",
                ErrorCode.UNSUPPORTED_KEY_AGREEMENT,
            )
        assert self._cipher is not None and self._hash is not None
        if is_kem(commit.key_agreement_type):
            if commit.kem_public_key is None:
                raise ZrtpProtocolError("KEM-mode Commit without a public key")
            # Our discarded Commit's key pair (lost contention) cannot serve: a
            # responder encapsulates to the initiator's key.
            self._key_agreement = None
            self._kem = create_kem(commit.key_agreement_type, self._hash, self._random)
            ciphertext, self._kem_secret = self._kem.encapsulate(commit.kem_public_key)
            self._send_dhpart1(self._build_dhpart(p.DHPart1, b"Responder", ciphertext))
            return
        if commit.kem_public_key is not None:
            raise ZrtpProtocolError("DH-mode Commit carries a KEM public key")
        self._kem = None
        reusable = self._key_agreement
        if (
            reusable is None
            or reusable.name != commit.key_agreement_type
            or (self._dh_secret_bits != self._cipher.key_length * 16)
        ):
            # §4.2: after losing contention the key pair of our own discarded Commit may
            # serve as the responder's if the type matches (its pv was only committed to
            # by hash, never sent); otherwise make a fresh one.
            self._key_agreement = create_key_agreement(
                commit.key_agreement_type, self._random, self._cipher.key_length * 16
            )
        assert self._key_agreement is not None
        pv = self._key_agreement.public_value
        self._send_dhpart1(self._build_dhpart(p.DHPart1, b"Responder", pv))

    def _send_dhpart1(self, dhpart1: p.DHPart1 | p.DHPart2) -> None:
        self._own_dhpart = dhpart1
        self._dhpart1_bytes = dhpart1.serialize()
        self._send(dhpart1)
        self._state = State.DHPART1_SENT

    @staticmethod
    def _check_session_peer(session: ZrtpSession, peer: p.Hello) -> None:
        """§4.4.3: every stream of a Multistream session has the first stream's ZIDs.

        ZRTPSess was agreed with ``session.peer_zid``; keying a stream from it
        toward anyone else would hand that party a stream of our call.
        """
        if not constant_time_equal(peer.zid, session.peer_zid):
            raise ZrtpProtocolError(
                "Multistream refused: the peer's ZID differs from the ZID of the call's"
                " first stream (RFC 6189 §4.4.3)",
                ErrorCode.NO_SHARED_SECRET,
            )

    def _on_commit_repeat(self, packet: p.ZrtpPacket, raw: bytes, now: float) -> None:
        """The initiator resent its Commit: our DHPart1 (or Confirm1) was lost."""
        if raw != self._commit_bytes:
            return
        self._inactivity_deadline = now + self._config.responder_timeout
        if self._state is State.DHPART1_SENT and self._own_dhpart is not None:
            self._send(self._own_dhpart)
        elif self._state is State.CONFIRM1_SENT and self._commit and self._commit.is_multistream:
            assert self._confirm_sent is not None
            self._send(self._confirm_sent)

    def _check_offered(
        self,
        value: bytes,
        offered: tuple[bytes, ...],
        mandatory: tuple[bytes, ...],
        code: ErrorCode,
    ) -> None:
        if value not in with_mandatory(offered, mandatory):
            raise ZrtpProtocolError(f"Commit chose {_name(value)}, which we did not offer", code)

    # ------------------------------------------------------------------ DH parts

    def _build_dhpart(
        self, cls: type[p.DHPart1] | type[p.DHPart2], label: bytes, pv: bytes
    ) -> p.DHPart1 | p.DHPart2:
        """DHPart1/2 with our secret IDs; ``pv`` is the DH public value, or in KEM
        mode the ciphertext (DHPart1) or the initiator's nonce (DHPart2)."""
        assert self._hash is not None
        mac = self._hash.mac
        cached = self._cached
        rs1_id = mac(cached.rs1, label) if cached.rs1 else self._random(8)
        rs2_id = mac(cached.rs2, label) if cached.rs2 else self._random(8)
        aux = self._config.aux_secret
        aux_id = mac(aux, self._h3) if aux else self._random(8)
        pbx_id = mac(cached.pbx_secret, label) if cached.pbx_secret else self._random(8)
        part = cls(
            h1=self._h1,
            rs1_id=rs1_id,
            rs2_id=rs2_id,
            aux_secret_id=aux_id,
            pbx_secret_id=pbx_id,
            pv=pv,
            mac=b"\x00" * 8,
        )
        return _replace_mac(part, implicit_mac(self._h0, part.serialize()[:-8]))

    def _on_dhpart1(self, packet: p.ZrtpPacket, raw: bytes, now: float) -> None:
        part = packet.message
        assert isinstance(part, p.DHPart1) and self._peer_hello is not None
        if (self._key_agreement is None and self._kem is None) or self._own_dhpart is None:
            raise _Drop("DHPart1 in a Multistream exchange")
        h2 = IMPLICIT_HASH.digest(part.h1)
        self._check_preimage(h2, self._peer_hello.h3, "DHPart1 H1")
        self._check_mac(
            implicit_mac(h2, self._peer_hello_bytes[:-8]), self._peer_hello.mac, "Hello"
        )
        self._peer_h1, self._peer_h2 = part.h1, h2
        assert self._own_dhpart is not None
        if self._kem is not None:
            dh_result = self._kem.decapsulate(part.pv)  # checks the ciphertext's length
        else:
            assert self._key_agreement is not None
            if len(part.pv) != self._key_agreement.pv_length:
                raise ZrtpProtocolError("DHPart1 public value has the wrong length")
            dh_result = self._key_agreement.compute(part.pv)
        self._peer_dhpart = part
        self._dhpart1_bytes = raw
        self._derive_dh(dh_result, part, b"Responder")
        self._state = State.DHPART2_SENT
        self._send_reliably(self._own_dhpart, now)

    def _on_dhpart2(self, packet: p.ZrtpPacket, raw: bytes, now: float) -> None:
        part = packet.message
        assert isinstance(part, p.DHPart2) and self._peer_commit is not None
        self._check_preimage(part.h1, self._peer_commit.h2, "DHPart2 H1")
        commit = self._peer_commit
        self._check_mac(implicit_mac(part.h1, self._commit_bytes[:-8]), commit.mac, "Commit")
        assert self._hash is not None
        hvi = self._hash.digest(raw + self._hello_bytes)[:32]
        if commit.hvi is None or not constant_time_equal(hvi, commit.hvi):
            raise ZrtpProtocolError("hvi does not match DHPart2", ErrorCode.HVI_MISMATCH)
        if self._kem is not None:
            if len(part.pv) != KEM_NONCE_LENGTH:
                raise ZrtpProtocolError("KEM-mode DHPart2 nonce has the wrong length")
            dh_result, self._kem_secret = self._kem_secret, b""
        else:
            assert self._key_agreement is not None
            if len(part.pv) != self._key_agreement.pv_length:
                raise ZrtpProtocolError("DHPart2 public value has the wrong length")
            dh_result = self._key_agreement.compute(part.pv)
        self._peer_h1 = part.h1
        self._peer_dhpart = part
        self._dhpart2_bytes = raw
        self._inactivity_deadline = now + self._config.responder_timeout
        self._derive_dh(dh_result, part, b"Initiator")
        self._send_confirm(p.Confirm1, now, reliably=False)
        self._state = State.CONFIRM1_SENT

    def _on_dhpart2_repeat(self, packet: p.ZrtpPacket, raw: bytes, now: float) -> None:
        if raw == self._dhpart2_bytes and self._confirm_sent is not None:
            self._inactivity_deadline = now + self._config.responder_timeout
            self._send(self._confirm_sent)

    # ------------------------------------------------------------------ key derivation

    def _match_secrets(
        self, part: p.DHPart1 | p.DHPart2, peer_label: bytes
    ) -> tuple[bytes, bytes, bytes]:
        """s1, s2, s3 per §4.3 (empty bytes for null)."""
        assert self._hash is not None and self._peer_hello is not None
        mac = self._hash.mac
        cached = self._cached
        s1 = b""
        if self._role == RESPONDER:
            # Initiator's rs1 first, then its rs2, each against our rs1 and rs2.
            for received in (part.rs1_id, part.rs2_id):
                for ours in (cached.rs1, cached.rs2):
                    if ours and constant_time_equal(mac(ours, peer_label), received):
                        s1 = ours
                        break
                if s1:
                    break
        else:
            for ours in (cached.rs1, cached.rs2):
                if ours and any(
                    constant_time_equal(mac(ours, peer_label), r)
                    for r in (part.rs1_id, part.rs2_id)
                ):
                    s1 = ours
                    break
        aux = self._config.aux_secret
        s2 = (
            aux
            if aux and constant_time_equal(mac(aux, self._peer_hello.h3), part.aux_secret_id)
            else b""
        )
        pbx = cached.pbx_secret
        s3 = pbx if pbx and constant_time_equal(mac(pbx, peer_label), part.pbx_secret_id) else b""
        self._pbx_secret_matched = bool(s3)
        self._secret_matched = bool(s1)
        self._cache_mismatch = cached.rs1 is not None and not s1  # §4.3.2's definition
        if aux and not s2:
            self._events.append(SecurityWarning("auxsecret mismatch"))
        return s1, s2, s3

    def _total_hash(self, *messages: bytes) -> bytes:
        assert self._hash is not None
        return self._hash.digest(b"".join(messages))

    def _derive_dh(self, dh_result: bytes, part: p.DHPart1 | p.DHPart2, peer_label: bytes) -> None:
        assert self._hash is not None
        s1, s2, s3 = self._match_secrets(part, peer_label)
        responder_hello = self._peer_hello_bytes if self._role == INITIATOR else self._hello_bytes
        total_hash = self._total_hash(
            responder_hello, self._commit_bytes, self._dhpart1_bytes, self._dhpart2_bytes
        )
        self._kdf_context = self._zidi + self._zidr + total_hash
        s0 = self._hash.digest(
            b"\x00\x00\x00\x01"
            + dh_result
            + b"ZRTP-HMAC-KDF"
            + self._zidi
            + self._zidr
            + total_hash
            + len(s1).to_bytes(4, "big")
            + s1
            + len(s2).to_bytes(4, "big")
            + s2
            + len(s3).to_bytes(4, "big")
            + s3
        )
        del dh_result, s1, s2, s3
        kdf = self._hash.kdf
        ctx = self._kdf_context
        hash_bits = self._hash.digest_size * 8
        zrtp_sess = kdf(s0, b"ZRTP Session Key", ctx, hash_bits)
        sas_hash = kdf(s0, b"SAS", ctx, 256)
        self._sas = render_sas(self._sas_type, sas_hash[:4])
        self._sas_hash = sas_hash
        self._new_rs1 = kdf(s0, b"retained secret", ctx, 256)
        self._derive_stream_keys(s0)
        # §7.1: V vouches for the SAS compared in an earlier call of this lineage of
        # retained secrets. Without a secret that matched now (expired, erased by a
        # peer's expiration 0, or someone else using the peer's ZID) it proves nothing.
        verified = self._cached.sas_verified and self._secret_matched
        self._previously_verified = verified
        self._session = ZrtpSession(
            zrtp_sess=zrtp_sess,
            hash=self._hash.name,
            cipher=self._cipher_name(),
            auth_tag=self._auth_tag,
            sas=self._sas,
            sas_type=self._sas_type,
            key_agreement=self._key_agreement_type,
            sas_hash=sas_hash,
            pbx_secret_matched=self._pbx_secret_matched,
            peer_zid=self._peer_hello.zid if self._peer_hello else b"",
            previously_verified=verified,
            cache_mismatch=self._cache_mismatch,
        )

    def _derive_multistream(self, session: ZrtpSession) -> None:
        assert self._hash is not None
        responder_hello = self._peer_hello_bytes if self._role == INITIATOR else self._hello_bytes
        total_hash = self._total_hash(responder_hello, self._commit_bytes)
        self._kdf_context = self._zidi + self._zidr + total_hash
        s0 = self._hash.kdf(
            session.zrtp_sess, b"ZRTP MSK", self._kdf_context, self._hash.digest_size * 8
        )
        self._sas = session.sas
        self._sas_hash = session.sas_hash
        self._pbx_secret_matched = session.pbx_secret_matched
        self._previously_verified = session.previously_verified
        self._cache_mismatch = session.cache_mismatch
        self._derive_stream_keys(s0)

    def _cipher_name(self) -> bytes:
        assert self._cipher is not None
        return self._cipher.name

    def _derive_stream_keys(self, s0: bytes) -> None:
        assert self._hash is not None and self._cipher is not None
        kdf = self._hash.kdf
        ctx = self._kdf_context
        key_bits = self._cipher.key_length * 8
        hash_bits = self._hash.digest_size * 8
        key_i = kdf(s0, b"Initiator SRTP master key", ctx, key_bits)
        salt_i = kdf(s0, b"Initiator SRTP master salt", ctx, 112)
        key_r = kdf(s0, b"Responder SRTP master key", ctx, key_bits)
        salt_r = kdf(s0, b"Responder SRTP master salt", ctx, 112)
        self._mackey_i = kdf(s0, b"Initiator HMAC key", ctx, hash_bits)
        self._mackey_r = kdf(s0, b"Responder HMAC key", ctx, hash_bits)
        self._zrtpkey_i = kdf(s0, b"Initiator ZRTP key", ctx, key_bits)
        self._zrtpkey_r = kdf(s0, b"Responder ZRTP key", ctx, key_bits)
        initiator = self._role == INITIATOR
        self._srtp_keys = SrtpKeys(
            cipher=_name(self._cipher.name),
            auth_tag=_name(self._auth_tag),
            local_key=key_i if initiator else key_r,
            local_salt=salt_i if initiator else salt_r,
            remote_key=key_r if initiator else key_i,
            remote_salt=salt_r if initiator else salt_i,
        )

    # ------------------------------------------------------------------ confirm

    def _send_confirm(
        self, cls: type[p.Confirm1] | type[p.Confirm2], now: float, *, reliably: bool
    ) -> None:
        initiator = self._role == INITIATOR
        multistream = self._key_agreement_type == MULTISTREAM
        plaintext = p.ConfirmPlaintext(
            h0=self._h0,
            enrollment=self._config.enrollment and not multistream,
            sas_verified=self._previously_verified,
            # A Multistream stream refuses GoClear (see _on_goclear): do not offer it.
            allow_clear=self._config.allow_clear and not multistream,
            disclosure=self._config.disclosure,
            # §4.9: Multistream sends 0xffffffff (ignored); a cacheless endpoint sends 0.
            cache_expiration=0xFFFFFFFF
            if multistream
            else (self._config.cache_expiration if self._has_cache else 0),
        )
        iv = self._random(16)
        key = self._zrtpkey_i if initiator else self._zrtpkey_r
        encrypted = aes_cfb(key, iv, plaintext.serialize(), encrypt=True)
        assert self._hash is not None
        mac = self._hash.mac(self._mackey_i if initiator else self._mackey_r, encrypted)
        confirm = cls(confirm_mac=mac, cfb_iv=iv, encrypted=encrypted)
        self._confirm_sent = confirm
        if reliably:
            self._send_reliably(confirm, now)
        else:
            self._send(confirm)

    def _open_confirm(self, confirm: p.Confirm1 | p.Confirm2) -> p.ConfirmPlaintext:
        """Check the peer's confirm_mac, decrypt, and check its H0 (§4.6, §9)."""
        assert self._hash is not None
        peer_is_initiator = self._role == RESPONDER
        mackey = self._mackey_i if peer_is_initiator else self._mackey_r
        zrtpkey = self._zrtpkey_i if peer_is_initiator else self._zrtpkey_r
        if not constant_time_equal(self._hash.mac(mackey, confirm.encrypted), confirm.confirm_mac):
            # Not fatal: a forged Confirm must not end the exchange, and a real MiTM
            # (different keys on each side) shows as a time-out that names this count.
            self.stats["bad_confirm_mac"] += 1
            raise _Drop("Confirm with a bad MAC")
        plaintext = p.ConfirmPlaintext.parse(
            aes_cfb(zrtpkey, confirm.cfb_iv, confirm.encrypted, encrypt=False)
        )
        h1 = IMPLICIT_HASH.digest(plaintext.h0)
        if self._key_agreement_type == MULTISTREAM:
            # DHPart messages were skipped: climb the chain to what we know (§9).
            h2 = IMPLICIT_HASH.digest(h1)
            if self._role == INITIATOR:
                assert self._peer_hello is not None
                self._check_preimage(h2, self._peer_hello.h3, "Confirm1 H0")
                self._check_mac(
                    implicit_mac(h2, self._peer_hello_bytes[:-8]), self._peer_hello.mac, "Hello"
                )
            else:
                assert self._peer_commit is not None and self._peer_h2 is not None
                self._check_preimage(h1, self._peer_h2, "Confirm2 H0")
                self._check_mac(
                    implicit_mac(h1, self._commit_bytes[:-8]), self._peer_commit.mac, "Commit"
                )
        else:
            assert self._peer_h1 is not None and self._peer_dhpart is not None
            self._check_preimage(plaintext.h0, self._peer_h1, "Confirm H0")
            peer_part = self._dhpart2_bytes if peer_is_initiator else self._dhpart1_bytes
            self._check_mac(
                implicit_mac(plaintext.h0, peer_part[:-8]), self._peer_dhpart.mac, "DHPart"
            )
        return plaintext

    def _on_confirm1(self, packet: p.ZrtpPacket, raw: bytes, now: float) -> None:
        confirm = packet.message
        assert isinstance(confirm, p.Confirm1)
        if self._state is State.COMMIT_SENT and self._key_agreement_type != MULTISTREAM:
            raise _Drop("Confirm1 before DHPart1 in a DH exchange")
        plaintext = self._open_confirm(confirm)
        self._peer_confirm = plaintext
        self._peer_confirm_bytes = raw
        self._send_confirm(p.Confirm2, now, reliably=True)
        self._state = State.CONFIRM2_SENT
        assert self._srtp_keys is not None
        self._events.append(SrtpKeysReady(self._srtp_keys))

    def _on_confirm2(self, packet: p.ZrtpPacket, raw: bytes, now: float) -> None:
        confirm = packet.message
        assert isinstance(confirm, p.Confirm2)
        plaintext = self._open_confirm(confirm)
        self._peer_confirm = plaintext
        self._peer_confirm_bytes = raw
        self._inactivity_deadline = None
        self._send(p.Conf2Ack())
        self._state = State.SECURE
        assert self._srtp_keys is not None
        self._events.append(SrtpKeysReady(self._srtp_keys))
        self._secure()

    def _on_confirm2_repeat(self, packet: p.ZrtpPacket, raw: bytes, now: float) -> None:
        if raw == self._peer_confirm_bytes and self._role == RESPONDER:
            self._send(p.Conf2Ack())

    def _on_conf2ack(self, packet: p.ZrtpPacket, raw: bytes, now: float) -> None:
        self._complete_initiator(now)

    def _complete_initiator(self, now: float) -> None:
        self._retransmission = None
        self._state = State.SECURE
        self._secure()

    def _secure(self) -> None:
        """Both sides confirmed: update the cache (§4.6.1) and report."""
        peer_confirm = self._peer_confirm
        assert peer_confirm is not None and self._peer_hello is not None
        assert self._srtp_keys is not None and self._hash is not None
        multistream = self._key_agreement_type == MULTISTREAM
        previously_verified = self._previously_verified and peer_confirm.sas_verified
        if not multistream:
            lifetime = min(self._config.cache_expiration, peer_confirm.cache_expiration)
            self._cache_lifetime = lifetime
            key = self._cache_key()
            if key is not None and self._cached.sas_verified and not self._secret_matched:
                # A V flag with no matching secret behind it (a mismatch, expired or
                # erased secrets) is void: the users must compare the SAS again.
                self._write(SasVerifiedWrite(key, False))
            if self._cache_mismatch and self._has_cache:
                self._pending_cache_update = True  # §4.6.1.1: wait for a SAS verify
            else:
                self._update_cache()
        self._retransmission = None
        self._wipe_confirm_keys()
        event = Secured(
            role=self._role or "",
            sas=self._sas,
            sas_type=_name(self._sas_type),
            key_agreement=_name(self._key_agreement_type),
            hash=_name(self._hash.name),
            cipher=self._srtp_keys.cipher,
            auth_tag=self._srtp_keys.auth_tag,
            peer_zid=self._peer_hello.zid,
            peer_client_id=self._peer_hello.client_id.decode("ascii", "replace").strip(),
            keys=self._srtp_keys,
            cache_mismatch=self._cache_mismatch,
            previously_verified=previously_verified,
            peer_mitm=self._peer_hello.mitm,
            peer_disclosure=peer_confirm.disclosure,
            peer_allows_clear=peer_confirm.allow_clear and not peer_confirm.enrollment,  # §7.3.1
            peer_enrollment=peer_confirm.enrollment and self._peer_hello.mitm,
            multistream=multistream,
            pbx_secret_matched=self._pbx_secret_matched,
            sas_hash=self._sas_hash,
            cache_error=self.cache_error,
        )
        self._secured_event = event
        self._events.append(event)

    def _wipe_confirm_keys(self) -> None:
        """Drop the ZRTP keys nothing will use; mac keys stay for GoClear.

        SASrelay (§5.13) is encrypted with the sender's ZRTP key, so a MiTM keeps
        its own and a phone talking to a MiTM keeps the peer's.
        """
        assert self._peer_hello is not None
        initiator = self._role == INITIATOR
        keep_own = self._config.mitm
        keep_peer = self._peer_hello.mitm
        if not (keep_own if initiator else keep_peer):
            self._zrtpkey_i = b""
        if not (keep_peer if initiator else keep_own):
            self._zrtpkey_r = b""
        self._key_agreement = None
        self._kem = None
        self._kem_secret = b""

    def _update_cache(self) -> None:
        key = self._cache_key()
        if not self._has_cache or key is None or self._new_rs1 is None:
            return
        if self._cache_unreadable:
            self._new_rs1 = None
            self.cache_error = "key continuity not saved: " + self.cache_error
            return
        self._write(RetainedSecretWrite(key, self._new_rs1, self._cache_lifetime))
        self._new_rs1 = None

    def _write(self, write: CacheWrite, *, strict: bool = False) -> None:
        """Hand a write to the host, or apply it to a directly called store.

        A failure is recorded in ``cache_error``; with ``strict`` (an explicit user
        action on a directly called store) it raises ValueError instead.
        """
        if self._awaiting_name:  # no key yet: the empty URIs are no call's
            if strict:
                raise ValueError(f"{write.failure}: the call is not named")
            self.cache_error = f"{write.failure}: the call is not named"
            self.stats["cache_errors"] += 1
            return
        if self._host_cache:
            self._events.append(CacheWriteNeeded(write))
            return
        if self._cache is None:
            return
        try:
            write.apply(self._cache)
        except CacheError as exc:
            if strict:
                raise ValueError(f"{write.failure}: {exc}") from None
            self._cache_failed(write.failure, exc)

    def _cache_failed(self, what: str, exc: CacheError) -> None:
        self.cache_error = f"{what}: {exc}"
        self.stats["cache_errors"] += 1

    def _cache_key(self) -> CacheKey | None:
        if self._peer_hello is None:
            return None
        return CacheKey(
            self._config.zid, self._peer_hello.zid, self._config.self_uri, self._config.peer_uri
        )

    # ------------------------------------------------------------------ errors, clear, ping

    def _on_error(self, packet: p.ZrtpPacket, raw: bytes, now: float) -> None:
        error = packet.message
        assert isinstance(error, p.Error)
        self._send(p.ErrorAck())
        if self._state in (State.SECURE, State.CLEAR):
            self._events.append(
                SecurityWarning(f"peer sent Error 0x{error.code:x} after going secure")
            )
            return
        try:
            name = ErrorCode(error.code).name.lower().replace("_", " ")
        except ValueError:
            name = "unknown error"
        self._fail(
            f"peer sent Error 0x{error.code:x} ({name})",
            error.code,
            now,
            send_error=False,
            by_peer=True,
        )

    def _on_error_in_failed(self, packet: p.ZrtpPacket, raw: bytes, now: float) -> None:
        self._send(p.ErrorAck())

    def _on_error_ack(self, packet: p.ZrtpPacket, raw: bytes, now: float) -> None:
        if self._retransmission is not None and isinstance(self._retransmission.message, p.Error):
            self._retransmission = None

    def _on_goclear(self, packet: p.ZrtpPacket, raw: bytes, now: float) -> None:
        self._check_goclear_mac(packet)
        if self._key_agreement_type == MULTISTREAM:
            # §4.7.2.1 replaces ZRTPSess, which belongs to the call's first (DH)
            # stream and keys every other stream; a Multistream stream does not own
            # it, so going clear here would leave the old ZRTPSess alive elsewhere.
            self._events.append(
                GoClearRefused(
                    "GoClear on a Multistream stream is refused: ZRTPSess belongs to the"
                    " call's first stream (RFC 6189 §4.7.2.1)"
                )
            )
            self._send(p.Error(code=int(ErrorCode.GOCLEAR_NOT_ALLOWED)))
            return
        if not self._config.allow_clear:
            self._events.append(GoClearRefused())
            self._send(p.Error(code=int(ErrorCode.GOCLEAR_NOT_ALLOWED)))
            return
        self._send(p.ClearAck())
        self._state = State.CLEAR
        self._srtp_keys = None
        if self._session is not None and self._hash is not None:
            # §4.7.2.1: keep only a one-way successor of ZRTPSess, for a later Mult.
            successor = self._hash.kdf(
                self._session.zrtp_sess,
                b"New ZRTP Session",
                self._zidi + self._zidr,
                self._hash.digest_size * 8,
            )
            self._session = replace(self._session, zrtp_sess=successor)
        self._events.append(WentClear())

    def _on_goclear_repeat(self, packet: p.ZrtpPacket, raw: bytes, now: float) -> None:
        """Our ClearACK was lost; a GoClear with a bad MAC gets none (§4.7.2)."""
        self._check_goclear_mac(packet)
        self._send(p.ClearAck())

    def _check_goclear_mac(self, packet: p.ZrtpPacket) -> None:
        goclear = packet.message
        assert isinstance(goclear, p.GoClear) and self._hash is not None
        peer_mackey = self._mackey_i if self._role == RESPONDER else self._mackey_r
        expected = self._hash.mac(peer_mackey, p.GoClear.MESSAGE_TYPE)
        if not peer_mackey or not constant_time_equal(expected, goclear.clear_mac):
            raise _Drop("GoClear with a bad MAC")  # §4.7.2: no ClearACK, not acted on

    def _on_sas_relay(self, packet: p.ZrtpPacket, raw: bytes, now: float) -> None:
        """Phone side of §7.3: render a relayed SAS only from a trusted MiTM."""
        relay = packet.message
        assert isinstance(relay, p.SasRelay) and self._hash is not None
        peer_initiator = self._role == RESPONDER
        mackey = self._mackey_i if peer_initiator else self._mackey_r
        if not mackey or not constant_time_equal(
            self._hash.mac(mackey, relay.encrypted), relay.mac
        ):
            self.stats["bad_sasrelay_mac"] += 1
            raise _Drop("SASrelay with a bad MAC")  # forged: no RelayACK, nothing shown
        if raw == self._sas_relay_received:
            self._send(p.RelayAck())  # our RelayACK was lost
            return
        zrtpkey = self._zrtpkey_i if peer_initiator else self._zrtpkey_r
        sas_type = _name(self._sas_type)
        if not zrtpkey:  # kept only when the peer's Hello had the M flag
            self._send(p.RelayAck())  # §5.13: acknowledged, not rendered, no Error
            self._sas_relay_received = raw
            self._events.append(
                SasRelayed(self._sas, sas_type, False, False, "the peer is not a MiTM (no M flag)")
            )
            return
        try:
            plaintext = p.SasRelayPlaintext.parse(
                aes_cfb(zrtpkey, relay.cfb_iv, relay.encrypted, encrypt=False)
            )
        except ZrtpProtocolError as exc:
            raise _Drop(f"undecodable SASrelay: {exc}") from None
        scheme = plaintext.rendering_scheme
        if scheme not in SAS_TYPES:
            raise _Drop(f"SASrelay with an unknown rendering scheme {scheme!r}")
        self._send(p.RelayAck())
        self._sas_relay_received = raw
        own = render_sas(scheme, self._sas_hash[:4])
        if not any(plaintext.trusted_sas_hash):
            event = SasRelayed(
                own, _name(scheme), False, plaintext.sas_verified, "no sashash relayed to us"
            )
        elif not self._pbx_secret_matched:
            # §7.3: MUST NOT render a relayed SAS from a MiTM we are not enrolled with.
            self.stats["untrusted_sasrelay"] += 1
            event = SasRelayed(
                own,
                _name(scheme),
                False,
                plaintext.sas_verified,
                "not enrolled with this MiTM (no shared pbxsecret): relayed SAS ignored",
            )
        else:
            relayed = render_sas(scheme, plaintext.trusted_sas_hash[:4])
            event = SasRelayed(relayed, _name(scheme), True, plaintext.sas_verified)
        self._events.append(event)

    def _on_relay_ack(self, packet: p.ZrtpPacket, raw: bytes, now: float) -> None:
        rtx = self._retransmission
        if rtx is not None and isinstance(rtx.message, p.SasRelay):
            self._retransmission = None
            self._events.append(SasRelayAcknowledged())

    def _on_ping(self, packet: p.ZrtpPacket, raw: bytes, now: float) -> None:
        ping = packet.message
        assert isinstance(ping, p.Ping)
        own = hashlib.sha256(self._config.zid + self._config.self_uri.encode()).digest()[:8]
        self._send(
            p.PingAck(
                version=PROTOCOL_VERSION,
                sender_endpoint_hash=own,
                received_endpoint_hash=ping.endpoint_hash,
                ssrc=packet.ssrc,
            )
        )

    # ------------------------------------------------------------------ checks

    @staticmethod
    def _check_preimage(image: bytes, expected: bytes, what: str) -> None:
        """A wrong hash image means a false packet: drop it, keep going (§9)."""
        if not constant_time_equal(IMPLICIT_HASH.digest(image), expected):
            raise _Drop(f"{what} is not the preimage of what the peer sent before")

    @staticmethod
    def _check_mac(expected: bytes, received: bytes, what: str) -> None:
        """A bad MAC on an earlier message is a MiTM alarm (§8.1.1)."""
        if not constant_time_equal(expected, received):
            raise ZrtpProtocolError(f"bad MAC on the peer's {what}", ErrorCode.BAD_CONFIRM_MAC)


_M = TypeVar("_M", bound=p.Hello | p.Commit | p.DHPart1 | p.DHPart2)


def _replace_mac(message: _M, mac: bytes) -> _M:
    return replace(message, mac=mac)


_PRE_SECURE = (
    State.DISCOVERY,
    State.COMMIT_SENT,
    State.DHPART2_SENT,
    State.CONFIRM2_SENT,
    State.DHPART1_SENT,
    State.CONFIRM1_SENT,
)

Handler = Callable[[ZrtpConnection, p.ZrtpPacket, bytes, float], None]
C = ZrtpConnection
S = State

#: Every transition of the state machine: (state, message) -> (handler, states it may lead to).
#: Any handler may also end in FAILED. Pairs that are absent are ignored.
TRANSITIONS: dict[tuple[State, type[p.Message]], tuple[Handler, frozenset[State]]] = {
    **{(s, p.Hello): (C._on_hello, frozenset({S.COMMIT_SENT})) for s in (*_PRE_SECURE, S.SECURE)},
    (S.DISCOVERY, p.HelloAck): (C._on_hello_ack, frozenset({S.COMMIT_SENT})),
    (S.DISCOVERY, p.Commit): (C._on_commit, frozenset({S.DHPART1_SENT, S.CONFIRM1_SENT})),
    (S.COMMIT_SENT, p.Commit): (C._on_commit, frozenset({S.DHPART1_SENT, S.CONFIRM1_SENT})),
    (S.DHPART1_SENT, p.Commit): (C._on_commit_repeat, frozenset()),
    (S.CONFIRM1_SENT, p.Commit): (C._on_commit_repeat, frozenset()),
    (S.COMMIT_SENT, p.DHPart1): (C._on_dhpart1, frozenset({S.DHPART2_SENT})),
    (S.DHPART1_SENT, p.DHPart2): (C._on_dhpart2, frozenset({S.CONFIRM1_SENT})),
    (S.CONFIRM1_SENT, p.DHPart2): (C._on_dhpart2_repeat, frozenset()),
    (S.COMMIT_SENT, p.Confirm1): (C._on_confirm1, frozenset({S.CONFIRM2_SENT})),  # Multistream
    (S.DHPART2_SENT, p.Confirm1): (C._on_confirm1, frozenset({S.CONFIRM2_SENT})),
    (S.CONFIRM1_SENT, p.Confirm2): (C._on_confirm2, frozenset({S.SECURE})),
    (S.SECURE, p.Confirm2): (C._on_confirm2_repeat, frozenset()),
    (S.CONFIRM2_SENT, p.Conf2Ack): (C._on_conf2ack, frozenset({S.SECURE})),
    **{
        (s, p.Error): (C._on_error, frozenset({S.FAILED}))
        for s in (*_PRE_SECURE, S.SECURE, S.CLEAR)
    },
    (S.FAILED, p.Error): (C._on_error_in_failed, frozenset()),
    (S.FAILED, p.ErrorAck): (C._on_error_ack, frozenset()),
    (S.SECURE, p.ErrorAck): (C._on_error_ack, frozenset()),
    (S.SECURE, p.GoClear): (C._on_goclear, frozenset({S.CLEAR})),
    (S.CLEAR, p.GoClear): (C._on_goclear_repeat, frozenset()),
    (S.SECURE, p.SasRelay): (C._on_sas_relay, frozenset()),
    (S.SECURE, p.RelayAck): (C._on_relay_ack, frozenset()),
    **{(s, p.Ping): (C._on_ping, frozenset()) for s in (*_PRE_SECURE, S.SECURE, S.CLEAR, S.FAILED)},
}
