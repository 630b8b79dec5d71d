"""A mirror: one call's media path through the relay (DESIGN §1, §3).

The PBX advertises the relay address R with its own port P to the phone. The
mirror binds R:P (and R:P+1 for RTCP) toward the phone and forwards to the PBX's
A:P (and A:P+1) from its own sockets on the PBX side. Toward the phone it is a
ZRTP endpoint and speaks SRTP once secure; toward the PBX always plain RTP.

Until the PBX's first packet reaches the relay, the mirror sends silence RTP to
A:P (closed-loop priming) so the PBX's symmetric RTP latches onto the relay
instead of sending clear audio straight to the phone. Only a call that still
needs it primes: pending or secure, not off, clear or failed.

Media on a pre-bound port before the adapter names its call comes from a source
nobody vouched for (its address may be spoofed): until the call is named or the
source completes ZRTP, the mirror sends it at most the bytes it sent (no Hello
schedule), and primes the PBX with at most the bytes the port received.

Nothing that arrives on a socket can raise out of the datagram path: every
packet is forwarded, or dropped and counted under a reason.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from pbx_zrtp.cache.base import CacheKey, CacheWrite, PbxSecretWrite, SecretCache
from pbx_zrtp.cache.worker import StoreWorker
from pbx_zrtp.calls import (
    TRAFFIC_FIELDS,
    Address,
    CallIdentity,
    CallReport,
    CallState,
    Policy,
    StreamReport,
    TrafficCounters,
    no_traffic,
)
from pbx_zrtp.enginehost import EngineHost
from pbx_zrtp.logs import call_tag
from pbx_zrtp.relay.fastlink import FAST_DROPS, FAST_TRAFFIC, FastLink, FastWorkers
from pbx_zrtp.relay.fastpath import FastPath
from pbx_zrtp.srtp import Refusal, SrtpContext, is_rtcp
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from pbx_zrtp.zrtp.connection import ZrtpConnection
from pbx_zrtp.zrtp.events import (
    Event,
    GoClearRefused,
    HandshakeFailed,
    PeerHelloReceived,
    SasRelayAcknowledged,
    SasRelayUnacknowledged,
    Secured,
    SecurityWarning,
    SrtpKeysReady,
    WentClear,
)
from pbx_zrtp.zrtp.kem import is_kem
from pbx_zrtp.zrtp.packets import Hello, ZrtpPacket

log = logging.getLogger("pbx_zrtp.relay")

#: Largest datagram a mirror accepts; anything bigger is dropped as oversize.
MAX_DATAGRAM = 1500
#: Priming: one silence packet per 20 ms, for at most this long.
PRIMING_INTERVAL = 0.020
PRIMING_LIMIT = 60.0
#: Silence payloads for the codecs a PBX offers first (160 samples = 20 ms).
SILENCE = {0: b"\xff" * 160, 8: b"\xd5" * 160}
#: A further stream (video) primes in its own payload type with an empty payload:
#: the PBX latches on the header; a decoder behind it ignores an empty packet.
#: Its timestamp steps one 30 fps frame of the 90 kHz video clock.
STREAM_PRIMING_STEP = 3000


@dataclass
class MirrorSettings:
    """What the relay decides for every mirror (from its configuration)."""

    zrtp: Callable[[str, str], ZrtpConfiguration]  # (self_uri, peer_uri) -> configuration
    cache: SecretCache  # the relay always has one (cache.path = "memory": in memory)
    optional_timeout: float = 5.0  # optional: report "clear" after this long without ZRTP
    required_timeout: float = 10.0  # required: report "failed" after this long
    #: Runs a blocking ``cache`` (SQLite, PostgreSQL) on worker threads: the loop
    #: that forwards every call's media never waits on the store. One per relay
    #: (made from ``cache`` if not given), so one phone's lookups and writes stay in
    #: order across its calls. None for an in-memory store, called inline.
    store: StoreWorker | None = None

    def __post_init__(self) -> None:
        if self.store is None and self.cache.blocking:
            self.store = StoreWorker(self.cache)


@dataclass
class Counters:
    phone_in: int = 0
    phone_in_bytes: int = 0
    phone_out: int = 0
    phone_out_bytes: int = 0
    pbx_in: int = 0
    pbx_in_bytes: int = 0
    pbx_out: int = 0
    pbx_out_bytes: int = 0
    priming_sent: int = 0
    drops: Counter[str] = field(default_factory=Counter)

    def snapshot(self) -> TrafficCounters:
        """The counters as a report carries them (a copy)."""
        counters = no_traffic()
        for name in TRAFFIC_FIELDS:
            counters[name] = getattr(self, name)  # type: ignore[literal-required]
        counters["drops"] = dict(self.drops)
        return counters

    def plus(self, fast: dict[str, int]) -> Counters:
        """These counters with the native worker's added (a new object)."""
        total = replace(self, drops=Counter(self.drops))
        for name in FAST_TRAFFIC:
            setattr(total, name, getattr(total, name) + fast.get(name, 0))
        total.drops.update({name: fast[name] for name in FAST_DROPS if fast.get(name)})
        return total


#: The engine's counters of ZRTP packets it did not act on (RFC 6189 says ignore them).
_ENGINE_IGNORED = (
    "ignored",
    "ignored_other_hello",
    "ignored_newer_version",
    "dropped_bad_crc",
    "dropped_malformed",
    "dropped_other_ssrc",
)


@dataclass
class _AmplificationGuard:
    """Byte accounts of a pre-bound port whose call nobody has named yet.

    Its source is unauthenticated and may be a forged address: answering it with
    more than it sent (a Hello schedule is 21 to 60 packets) would make the relay
    an amplifier toward whoever's address was forged. ``from_source``/``to_source``
    count the latched source only; a new source starts from zero. ``port_in``
    counts every datagram on the port and bounds the priming silence sent to the
    PBX (``primed``), so a sweep of strays cannot make the relay flood the PBX.

    Our Hello goes before our HelloACK: a phone stops repeating its Hello once it
    is acknowledged, and if its Hello is smaller than ours, nothing would then
    pay for ours (the exchange would stall until the call is named).
    """

    source: Address | None = None
    from_source: int = 0
    to_source: int = 0
    hello_sent: bool = False
    port_in: int = 0
    primed: int = 0

    def heard(self, source: Address, size: int) -> None:
        if source != self.source:
            self.source, self.from_source, self.to_source = source, 0, 0
            self.hello_sent = False
        self.from_source += size

    def may_send(self, target: Address | None, data: bytes) -> bool:
        if target is None or target != self.source:
            return False
        kind = data[16:24] if data[:1] == b"\x10" and data[4:8] == b"ZRTP" else b""
        if kind == b"HelloACK" and not self.hello_sent:
            return False
        if self.to_source + len(data) > self.from_source:
            return False
        self.to_source += len(data)
        self.hello_sent = self.hello_sent or kind == b"Hello   "
        return True


def _is_hello(data: bytes) -> bool:
    try:
        return isinstance(ZrtpPacket.parse(data).message, Hello)
    except ValueError:
        return False


def _engine_ignored(engine: ZrtpConnection) -> int:
    stats = engine.stats
    return sum(stats[name] for name in _ENGINE_IGNORED)


def _is_stun(data: bytes) -> bool:
    """RFC 5389: top two bits 0 and the magic cookie. Phones (linphone) send STUN
    checks to the relay; they are dropped, but counted under their own name."""
    return len(data) >= 20 and data[0] < 4 and data[4:8] == b"\x21\x12\xa4\x42"


def format_address(address: Address) -> str:
    """``host:port``, an IPv6 host in brackets (``[::1]:5004``), as in URLs and SDP tools."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Socket(asyncio.DatagramProtocol):
    """Calls ``handler(data, addr)`` for each datagram; swallows ICMP errors."""

    __slots__ = ("handler", "transport")

    def __init__(self, handler: Callable[[bytes, Address], None]) -> None:
        self.handler = handler
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        try:
            self.handler(data, (addr[0], addr[1]))
        except Exception:  # a bug must cost one packet, never the socket or the relay
            log.exception("internal error while handling a datagram; dropped")

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable from a peer that went away: not our problem


class Mirror:
    """One call's media path: phone side on R:P (+1), PBX side toward A:P (+1)."""

    def __init__(
        self,
        settings: MirrorSettings,
        relay_host: str,
        port: int,
        pbx_host: str,
        pbx_port: int | None = None,
        *,
        rtcp: bool = True,
        on_change: Callable[[Mirror], None] = lambda mirror: None,
        on_unclaimed: Callable[[Mirror], None] = lambda mirror: None,
        fast: FastWorkers | None = None,
    ) -> None:
        self.settings = settings
        self.relay_host = relay_host
        self.port = port
        self.pbx = (pbx_host, pbx_port if pbx_port is not None else port)
        self.pbx_rtcp = (pbx_host, self.pbx[1] + 1)
        self.with_rtcp = rtcp
        self.on_change = on_change
        #: Called when media reaches a mirror with no call (a pre-bound port): the
        #: relay attaches its default policy so nothing waits for the adapter.
        self.on_unclaimed = on_unclaimed
        #: Does this peer ZID have a secure call on the relay? (Relay sets it.) An
        #: unclaimed exchange with such a peer may be that call's further stream.
        self.peer_has_call: Callable[[bytes], bool] = lambda zid: False
        self.identity: CallIdentity | None = None
        self.state = CallState.IDLE
        self.reason = ""
        self.counters = Counters()
        self.phone: Address | None = None
        self.phone_rtcp: Address | None = None
        self._loop = asyncio.get_running_loop()
        self._sockets: list[asyncio.DatagramTransport] = []
        self._phone_rtp: asyncio.DatagramTransport | None = None
        self._phone_rtcp_sock: asyncio.DatagramTransport | None = None
        self._pbx_rtp: asyncio.DatagramTransport | None = None
        self._pbx_rtcp_sock: asyncio.DatagramTransport | None = None
        self._host: EngineHost | None = None  # the call's ZRTP engine, on the loop
        self._policy_timer: asyncio.TimerHandle | None = None
        self._protect_out = False  # True once Secured: PBX -> phone goes out as SRTP
        self._secured: Secured | None = None
        self._sas_verified = False
        self._engine_started_at = 0.0
        self._handshake_ms: float | None = None
        self._pbx_heard = False
        self._priming: asyncio.TimerHandle | None = None
        self._priming_until = 0.0
        self._last_state = ""
        self._last_forward = -1.0  # loop time of the last packet forwarded to A:P
        self._prime_seq = int.from_bytes(os.urandom(2), "big")
        self._prime_ts = int.from_bytes(os.urandom(4), "big")
        self._prime_ssrc = int.from_bytes(os.urandom(4), "big")
        self._closed = False
        #: The call's SRTP state, and the native worker (fastpath.py) that forwards
        #: the secured steady state when there is one: the fast-path glue.
        self.fast = FastLink(fast, self.punted)
        #: The other leg of the bridged call, once the relay linked them (§7.3).
        self.partner: Mirror | None = None
        self.relay_role = ""  # "", "none", "target", "source"
        self.relay_status = ""  # "", "pending", "acknowledged", "unacknowledged"
        self._enrolled_now = False
        self._cache_error = ""  # kept from the engine for the final report
        #: Writes of this call the store refused, with its error, oldest first.
        self.failed_writes: list[tuple[CacheWrite, str]] = []
        #: Set while the call is an unclaimed pre-bound port's (see _AmplificationGuard).
        self._guard: _AmplificationGuard | None = None
        #: Datagrams received from the phone side or from the PBX (the relay's idle check).
        self._heard = 0
        #: A further stream (video) of a call: the call's first stream, whose ZRTP
        #: session keys this one by Multistream, and this stream's name.
        self.first: Mirror | None = None
        self.stream_name = ""
        #: On a call's first stream: its further streams, by name.
        self.streams: dict[str, Mirror] = {}
        #: A further stream's report as it ended (for its call's final report).
        self.ended_stream: StreamReport | None = None

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Bind R:P (+1) toward the phone and two sockets on R toward the PBX."""
        try:
            self._phone_rtp = await self._bind((self.relay_host, self.port), self._from_phone)
            self._pbx_rtp = await self._bind((self.relay_host, 0), self._from_pbx)
            if self.with_rtcp:
                self._phone_rtcp_sock = await self._bind(
                    (self.relay_host, self.port + 1), self._from_phone_rtcp
                )
                self._pbx_rtcp_sock = await self._bind((self.relay_host, 0), self._from_pbx_rtcp)
        except OSError:
            self.close_sockets()
            raise

    async def _bind(
        self, address: Address, handler: Callable[[bytes, Address], None]
    ) -> asyncio.DatagramTransport:
        transport, _ = await self._loop.create_datagram_endpoint(
            lambda: _Socket(handler), local_addr=address
        )
        self._sockets.append(transport)
        return transport

    @property
    def fastpath(self) -> FastPath | None:
        """The native worker this mirror's secured RTP goes to, if any."""
        return self.fast.worker

    @property
    def pbx_side_port(self) -> int:
        """The relay port the PBX sees our packets come from (tests send PBX media there)."""
        assert self._pbx_rtp is not None
        return int(self._pbx_rtp.get_extra_info("sockname")[1])

    def attach(self, identity: CallIdentity, *, unclaimed: bool = False) -> None:
        """Give this mirror a call (at creation, or later for a pre-bound port).

        ``unclaimed``: media reached a pre-bound port before any call was named
        there; its source is unknown, so the amplification guard applies.
        """
        self.identity = identity
        if identity.phone_hint is not None and self.phone is None:
            self.phone = identity.phone_hint
        self.reason = ""
        self.ended_stream = None
        self._guard = _AmplificationGuard() if unclaimed else None
        self._apply_policy(identity.policy)

    def claim(self, identity: CallIdentity) -> None:
        """The adapter named the call whose ZRTP exchange already runs on this
        unclaimed pre-bound port: keep the exchange, lift the guard (the port now
        belongs to a call), and run the call's policy from now on."""
        self.identity = identity
        if identity.phone_hint is not None and self.phone is None:
            self.phone = identity.phone_hint
        self._guard = None
        if self._host is not None:  # the retained secrets: under this call's key
            self._host.name_call(identity.self_uri, identity.peer_uri)
        self._apply_policy(identity.policy)
        if self.state in (CallState.PENDING, CallState.SECURE):
            self._start_priming()
        self.on_change(self)

    def claim_stream(self, first: Mirror, name: str, identity: CallIdentity) -> None:
        """The adapter named this unclaimed pre-bound port as the further stream
        ``name`` of ``first``'s call, whose phone already began this stream's ZRTP
        here (its Hello, maybe its Multistream Commit, held unanswered): the same
        engine goes on, keyed by Multistream from the first stream's session only
        (``ZrtpConnection.adopt_session``), under the call's policy (``awaits_session``
        was checked by the relay)."""
        self.join(first, name)
        self.identity = identity
        if identity.phone_hint is not None and self.phone is None:
            self.phone = identity.phone_hint
        self._guard = None  # the port belongs to a call now
        self._apply_policy(identity.policy)  # pending; keyed now or once the first is
        self._adopt_first_session()
        self.on_change(self)

    def _adopt_first_session(self) -> None:
        """A held unnamed exchange becomes this stream's, once the first is keyed."""
        host, first = self._host, self.first
        engine = first._engine if first is not None else None
        if host is None or engine is None or engine.session is None or not self._first_keyed():
            return
        if host.engine.awaits_session or host.engine.holds_multistream_commit:
            host.adopt_session(engine.session)

    @property
    def speaks_zrtp(self) -> bool:
        """A ZRTP peer's Hello was accepted on this call (or it is secure)."""
        engine = self._engine
        return self.state is CallState.SECURE or (
            engine is not None and engine.peer_zid is not None
        )

    def heard(self) -> int:
        """Datagrams received so far (the native worker's included): changes while
        anything at all arrives, whether it is forwarded or dropped."""
        return self._heard + self.fast.heard()

    def set_policy(self, policy: Policy) -> None:
        """Change the policy of a live call (the dialplan decided later)."""
        if self.identity is None:
            raise ValueError("no call is attached to this mirror")
        if policy is self.identity.policy:
            return
        if self.state is CallState.SECURE and policy is Policy.OFF:
            raise ValueError("a secured call cannot be switched off; hang it up instead")
        self.identity.policy = policy
        self._apply_policy(policy)
        self.on_change(self)  # the policy is part of the report even if the state stays

    def _apply_policy(self, policy: Policy) -> None:
        self._cancel_policy_timer()
        if policy is Policy.OFF:
            self._stop_engine()
            self._set_state(CallState.OFF)
            return
        if self.state in (CallState.SECURE,):
            return  # already secure: a stricter policy changes nothing
        if self.state is CallState.FAILED and policy is Policy.OPTIONAL:
            self._set_state(CallState.CLEAR, self.reason)
            return
        if self.first is not None and not self._first_keyed():
            self._set_state(CallState.PENDING)
            self._first_changed()  # the timer starts once the first stream is secure
            return
        timeout = (
            self.settings.required_timeout
            if policy is Policy.REQUIRED
            else self.settings.optional_timeout
        )
        # armed first: the `pending` report carries the time it leaves (decides_in)
        self._policy_timer = self._loop.call_later(timeout, self._policy_timeout)
        self._set_state(CallState.PENDING)
        if self.phone is not None and self._guard is None:
            self._start_engine()

    def join(self, first: Mirror, name: str) -> None:
        """Make this mirror the further stream ``name`` of ``first``'s call."""
        self.first, self.stream_name = first, name
        first.streams[name] = self

    def _first_keyed(self) -> bool:
        """The call's first stream is secure with a session to key this one from."""
        first = self.first
        engine = first._engine if first is not None else None
        return bool(
            first is not None
            and first.state is CallState.SECURE
            and engine is not None
            and engine.session is not None
        )

    def _first_changed(self) -> None:
        """The call's first stream changed state: a pending further stream starts
        its Multistream exchange once the first is secure (its policy timer from
        then on), and cannot be keyed at all once the first failed or went clear:
        under ``required`` it fails (nothing clear ever flows on it), otherwise
        it is clear like the call."""
        first, identity = self.first, self.identity
        if first is None or identity is None or identity.policy is Policy.OFF:
            return
        if self.state is not CallState.PENDING:
            return
        if self._first_keyed():
            held = self._host is not None and self._host.engine.awaits_session
            if self._policy_timer is None and (self._host is None or held):
                timeout = (
                    self.settings.required_timeout
                    if identity.policy is Policy.REQUIRED
                    else self.settings.optional_timeout
                )
                self._policy_timer = self._loop.call_later(timeout, self._policy_timeout)
                if held:
                    self._adopt_first_session()
                elif self.phone is not None:
                    self._start_engine()
            return
        if first.state in (CallState.FAILED, CallState.CLEAR, CallState.OFF, CallState.ENDED):
            self._cancel_policy_timer()
            self._stop_engine()
            why = f"the call's first stream is {first.state.value}: no Multistream key"
            if identity.policy is Policy.REQUIRED:
                self._set_state(CallState.FAILED, why)
            else:
                self._set_state(CallState.CLEAR, why)

    def _policy_timeout(self) -> None:
        self._policy_timer = None
        if self.state is not CallState.PENDING or self.identity is None:
            return
        if self.identity.policy is Policy.REQUIRED:
            why = self._engine_progress()
            self._set_state(
                CallState.FAILED, f"not secure within {self.settings.required_timeout:g} s ({why})"
            )
        else:
            self._set_state(CallState.CLEAR, f"no ZRTP within {self.settings.optional_timeout:g} s")

    def _engine_progress(self) -> str:
        if self.phone is None:
            return "no packet from the phone"
        if self._engine is None:
            return "ZRTP not started"
        if self._engine.peer_zid is None:
            return "the phone sent no ZRTP Hello"
        return f"ZRTP stopped in state {self._engine.state.value}"

    @property
    def secured(self) -> Secured | None:
        return self._secured

    @property
    def enrolled(self) -> bool:
        secured = self._secured
        return self._enrolled_now or (secured is not None and secured.pbx_secret_matched)

    @property
    def renders_relayed_sas(self) -> bool:
        """The phone proved a pbxsecret shared with us in this DH exchange: only then
        does it render a SAS we relay (§7.3). A phone that enrolled during this call,
        or holds a pbxsecret we lack, acknowledges a SASrelay but shows its own SAS."""
        secured = self._secured
        return secured is not None and secured.pbx_secret_matched

    def _sas_view(self) -> tuple[str, str]:
        """(displayed SAS, scope) for the user on this leg: "end-to-end" only when the
        target phone can render the relayed SAS and acknowledged it (RelayACK)."""
        secured = self._secured
        if secured is None or self.state is not CallState.SECURE:
            return "", ""
        partner = self.partner
        partner_secured = partner.secured if partner is not None else None
        if (
            self.relay_role == "target"
            and self.relay_status == "acknowledged"
            and self.renders_relayed_sas
            and partner_secured is not None
        ):
            return partner_secured.sas, "end-to-end"
        if (
            self.relay_role == "source"
            and partner is not None
            and partner.relay_status == "acknowledged"
            and partner.renders_relayed_sas
        ):
            return secured.sas, "end-to-end"
        return secured.sas, "pbx-leg"

    def report(self) -> CallReport:
        identity = self.identity
        secured = self._secured
        displayed_sas, sas_scope = self._sas_view()
        relay = self.relay_role
        if relay in ("target", "source") and self.relay_status:
            relay = f"{relay}:{self.relay_status}"
        return CallReport(
            call_id=identity.call_id if identity else "",
            port=self.port,
            state=self.state,
            policy=identity.policy if identity else None,
            reason=self.reason,
            sas=secured.sas if secured else "",
            sas_type=secured.sas_type if secured else "",
            sas_verified=self._sas_verified,
            key_agreement=secured.key_agreement if secured else "",
            pq=bool(secured and is_kem(secured.key_agreement.encode())),
            hash=secured.hash if secured else "",
            cipher=secured.cipher if secured else "",
            auth_tag=secured.auth_tag if secured else "",
            peer_zid=secured.peer_zid.hex() if secured else "",
            peer_client_id=secured.peer_client_id if secured else "",
            cache_mismatch=secured.cache_mismatch if secured else False,
            previously_verified=secured.previously_verified if secured else False,
            handshake_ms=self._handshake_ms,
            decides_in=self._decides_in(),
            phone=format_address(self.phone) if self.phone else "",
            last_state=self._last_state,
            bridge=identity.bridge if identity else "",
            enrolled=self.enrolled,
            enrollment_offered=bool(identity and identity.enroll),
            displayed_sas=displayed_sas,
            sas_scope=sas_scope,
            sas_relay=relay,
            cache_error=self._engine.cache_error if self._engine else self._cache_error,
            counters=self.live_counters(),
            streams=tuple(
                stream.ended_stream or stream.stream_report() for stream in self.streams.values()
            ),
        )

    def stream_report(self) -> StreamReport:
        """This further stream's part of its call's report."""
        secured = self._secured
        return StreamReport(
            name=self.stream_name,
            port=self.port,
            state=self.state,
            reason=self.reason,
            key_agreement=secured.key_agreement if secured else "",
            cipher=secured.cipher if secured else "",
            auth_tag=secured.auth_tag if secured else "",
            sas=secured.sas if secured else "",
            phone=format_address(self.phone) if self.phone else "",
            handshake_ms=self._handshake_ms,
            counters=self.live_counters(),
        )

    def _decides_in(self) -> float | None:
        """A pending call: seconds until the policy time-out decides it at the latest."""
        timer = self._policy_timer
        if self.state is not CallState.PENDING or timer is None:
            return None
        return round(max(0.0, timer.when() - self._loop.time()), 1)

    def live_counters(self) -> TrafficCounters:
        """This call's counters now, the native worker's included while it forwards."""
        fast = self.fast.figures()
        return (self.counters.plus(fast) if fast else self.counters).snapshot()

    @property
    def cache_key(self) -> CacheKey | None:
        """This call's retained-secret key, once the phone's Hello is in."""
        return self._engine.cache_key if self._engine is not None else None

    def mark_verified(self, verified: bool) -> None:
        """The humans compared the SAS: persist it (V flag) in the cache."""
        if self._engine is None or self._secured is None:
            raise ValueError("the call is not secure: there is no SAS to verify")
        self._engine.set_sas_verified(verified)
        self._sas_verified = verified
        self._pump()  # hands the write to the store worker
        self.on_change(self)

    def offer_enrollment(self) -> None:
        """Invite the phone to enroll (a pre-bound port's call may already run ZRTP)."""
        if self.identity is None:
            raise ValueError("no call is attached to this mirror")
        if self._engine is not None:
            self._engine.offer_enrollment()
        self.identity.enroll = True

    def enroll(self) -> None:
        """The user confirmed the SAS on an enrollment call: store the pbxsecret
        (§7.3.1) and mark the SAS verified. ValueError says why it cannot be done."""
        if self._engine is None or self._secured is None:
            raise ValueError("the call is not secure: nothing to enroll")
        if self.identity is None or not self.identity.enroll:
            raise ValueError("enrollment was not offered on this call (create it with enroll)")
        self._engine.enroll()
        self._engine.set_sas_verified(True)
        self._sas_verified = True
        self._enrolled_now = True
        self._pump()
        self.on_change(self)

    def unenroll(self) -> None:
        """Forget the pbxsecret shared with this call's phone."""
        if self._engine is None or self._engine.peer_zid is None:
            raise ValueError("no ZRTP peer on this call")
        self._engine.unenroll()
        self._enrolled_now = False
        self._pump()
        self.on_change(self)

    def send_sas_relay(
        self, role: str, sas_hash: bytes | None, sas_type: str, far_end_verified: bool
    ) -> None:
        """Send SASrelay to this leg's phone (the relay's §7.3 rules chose ``role``)."""
        engine = self._engine
        if engine is None or self._secured is None:
            raise ValueError("the call is not secure")
        engine.send_sas_relay(
            self._loop.time(),
            sas_hash=sas_hash,
            sas_type=sas_type,
            far_end_verified=far_end_verified,
        )
        self.relay_role = role
        self.relay_status = "pending"
        self._pump()

    def unlink(self) -> None:
        """This leg is no longer bridged with its partner (a transfer, a pickup, a
        park, the far end hung up): forget the link. A phone that was shown the far
        end's SAS (``target``) is sent its own leg's SAS back, so it never goes on
        showing the words of a party it no longer talks to."""
        was_target = self.relay_role == "target"
        self.partner = None
        self.relay_role = self.relay_status = ""
        secured, engine = self._secured, self._engine
        if not was_target or secured is None or engine is None:
            return
        if self.state is not CallState.SECURE:
            return
        try:
            engine.send_sas_relay(
                self._loop.time(),
                sas_hash=secured.sas_hash,
                sas_type=secured.sas_type,
                far_end_verified=self._sas_verified,
            )
        except ValueError as exc:  # the stream is no longer secure: nothing is shown
            log.warning("%s own SAS not restored: %s", self.tag(), exc)
            return
        log.info("%s unlinked: the phone is shown its own leg's SAS again", self.tag())
        self._pump()

    def end(self, reason: str = "hangup") -> CallReport:
        """The call is over: report ``ended`` and go back to idle (sockets stay bound)."""
        if self._engine is not None:
            self._cache_error = self._engine.cache_error
        self._leave_fast()
        self._stop_engine()
        self._cancel_policy_timer()
        self._stop_priming()
        self._last_state = self.state.value
        self._set_state(CallState.ENDED, reason)  # subscribers' `ended` carries it too
        final = self.report()
        if self.first is not None:  # a further stream: its part of the call's final report
            self.ended_stream = self.stream_report()
        self._last_state = ""
        self.identity = None
        self.phone = self.phone_rtcp = None
        self._secured = None
        self._sas_verified = False
        self.partner = None
        self.relay_role = self.relay_status = ""
        self._enrolled_now = False
        self._cache_error = ""
        self.failed_writes = []
        self._handshake_ms = None
        self._engine_started_at = 0.0
        self._pbx_heard = False
        self._priming_until = 0.0
        self._last_forward = -1.0
        self._prime_seq = int.from_bytes(os.urandom(2), "big")  # a new stream per call
        self._prime_ts = int.from_bytes(os.urandom(4), "big")
        self._prime_ssrc = int.from_bytes(os.urandom(4), "big")
        self._guard = None
        self._heard = 0
        self.first, self.stream_name, self.streams = None, "", {}
        self.counters = Counters()
        self.state = CallState.IDLE
        self.reason = ""
        return final

    def close_sockets(self) -> None:
        self._leave_fast()
        self._closed = True
        self._stop_engine()
        self._cancel_policy_timer()
        self._stop_priming()
        for transport in self._sockets:
            transport.close()
        self._sockets.clear()

    def _set_state(self, state: CallState, reason: str = "") -> None:
        if state is self.state and reason == self.reason:
            return
        self.state = state
        self.reason = reason
        if state in (CallState.PENDING, CallState.SECURE):
            self._start_priming()  # until the PBX is heard (no-op once it was)
        else:
            self._stop_priming()  # off or clear: passing through; failed: nothing flows
        if state is CallState.FAILED:
            log.warning("%s failed: %s", self.tag(), reason)
        else:
            log.info("%s %s", self.tag(), f"{state.value} {reason}".rstrip())
        for stream in list(self.streams.values()):
            stream._first_changed()
        self.on_change(self)

    def _call_id(self) -> str:
        return self.identity.call_id if self.identity else "-"

    def tag(self) -> str:
        """``[CALLID port N]``, which starts every log line about this call."""
        tag = call_tag(self._call_id(), self.port)
        return f"{tag} {self.stream_name}" if self.stream_name else tag

    def _cancel_policy_timer(self) -> None:
        if self._policy_timer is not None:
            self._policy_timer.cancel()
            self._policy_timer = None

    # ------------------------------------------------------------------ priming

    def _start_priming(self) -> None:
        if self._pbx_heard or self._priming is not None or self._pbx_rtp is None:
            return
        self._priming_until = self._loop.time() + PRIMING_LIMIT
        self._prime()

    def _prime(self) -> None:
        """Silence to A:P until the PBX's first packet reaches us (closed loop)."""
        self._priming = None
        # While the native worker reads the PBX socket, learn from its counters.
        pbx_heard, forwarded = self.fast.pbx_progress()
        if pbx_heard:
            self._pbx_heard = True
        if forwarded:
            self._last_forward = self._loop.time()
        if self._pbx_heard or self._closed or self._pbx_rtp is None:
            return
        if self._loop.time() > self._priming_until:
            self.counters.drops["priming_gave_up"] += 1
            return
        further = self.first is not None
        if further and self._last_forward >= 0:
            # A further stream (video) comes in bursts, a frame then nothing for up to
            # a second: priming in the gaps put a second SSRC into the phone's stream,
            # and FreeSWITCH's video jitter buffer never completed a frame to bridge.
            # The phone's packets, from this same socket, latch the PBX as priming did.
            return
        if self._loop.time() - self._last_forward < 2 * PRIMING_INTERVAL:
            # The phone's own stream is flowing to A:P: one RTP stream at a time, or
            # the PBX's strict-RTP learning (sequential packets) never completes.
            self._priming = self._loop.call_later(PRIMING_INTERVAL, self._prime)
            return
        pt = self.identity.payload_type if self.identity else 0
        silence = b"" if further else SILENCE.get(pt, SILENCE[0])
        guard = self._guard
        if guard is not None:
            if guard.primed + 12 + len(silence) > guard.port_in:
                self._priming = self._loop.call_later(PRIMING_INTERVAL, self._prime)
                return  # unclaimed: no more silence than the port received
            guard.primed += 12 + len(silence)
        self._prime_seq = (self._prime_seq + 1) & 0xFFFF
        self._prime_ts = (self._prime_ts + (STREAM_PRIMING_STEP if further else 160)) & 0xFFFFFFFF
        header = struct.pack(
            "!BBHII", 0x80, pt & 0x7F, self._prime_seq, self._prime_ts, self._prime_ssrc
        )
        self._pbx_rtp.sendto(header + silence, self.pbx)
        self.counters.priming_sent += 1
        self._priming = self._loop.call_later(PRIMING_INTERVAL, self._prime)

    def _stop_priming(self) -> None:
        if self._priming is not None:
            self._priming.cancel()
            self._priming = None

    # ------------------------------------------------------------------ ZRTP engine

    @property
    def _engine(self) -> ZrtpConnection | None:
        host = self._host
        return host.engine if host is not None else None

    def _start_engine(self) -> None:
        if self._host is not None or self.identity is None or self._closed:
            return
        configuration = self.settings.zrtp(self.identity.self_uri, self.identity.peer_uri)
        if self.first is not None:
            self._start_stream_engine(configuration)
            return
        if self.identity.enroll:  # E implies a MiTM and excludes A (§7.3.1)
            configuration = replace(configuration, mitm=True, enrollment=True, allow_clear=False)
        self._host = EngineHost(
            configuration,
            loop=self._loop,
            ssrc=int.from_bytes(os.urandom(4), "big"),
            send=self._to_phone,
            on_event=self._on_engine_event,
            cache=self.settings.cache,
            store=self.settings.store,
            write_failed=self._store_write_failed,
            label=f"call {self._call_id()}",
            # Unclaimed: the secrets are keyed with the URIs of the call named here.
            await_name=self._guard is not None,
        )
        self._engine_started_at = self._host.start()

    def _start_stream_engine(self, configuration: ZrtpConfiguration) -> None:
        """A further stream: Multistream from the first stream's session, toward
        its peer ZID only (§4.4.3), never a DH exchange of its own; no store (a
        Multistream exchange reads and writes no retained secret)."""
        first = self.first
        engine = first._engine if first is not None else None
        session = engine.session if engine is not None else None
        if not self._first_keyed() or session is None:
            return  # started by _first_changed once the first stream is secure
        self._host = EngineHost(
            replace(configuration, multistream=True, enrollment=False, allow_clear=False),
            loop=self._loop,
            ssrc=int.from_bytes(os.urandom(4), "big"),
            send=self._to_phone,
            on_event=self._on_engine_event,
            label=f"call {self._call_id()} {self.stream_name}",
            session=session,
            multistream_only=True,
        )
        self._engine_started_at = self._host.start()

    def _stop_engine(self) -> None:
        self._leave_fast()
        if self._host is not None:
            self._host.close()
            self._host = None
        self._drop_srtp()

    def _store_write_failed(self, write: CacheWrite, error: str) -> None:
        """A write of this call did not reach the store: say so in the report (the
        host passes on only the writes of the engine it still runs)."""
        self.failed_writes.append((write, error))
        if isinstance(write, PbxSecretWrite) and write.lifetime:
            self._enrolled_now = False  # the pbxsecret was not stored: not enrolled
        self.on_change(self)

    def _pump(self) -> None:
        """After a command to the engine: send, act and re-arm (EngineHost.pump)."""
        if self._host is not None:
            self._host.pump()

    def _on_engine_event(self, event: Event) -> None:
        if isinstance(event, SrtpKeysReady):
            self._srtp_keys(event)
        elif isinstance(event, Secured):
            if self._srtp_keys(event) is None:
                return
            self._secured = event
            # Verified from the start only by continuity: both V flags and a retained
            # secret that matched in this exchange (the engine's previously_verified).
            self._sas_verified = event.previously_verified
            self._protect_out = True
            self._guard = None  # the source completed ZRTP: it receives what we send
            # From our first Hello (the phone's first packet) to secure.
            self._handshake_ms = round((self._loop.time() - self._engine_started_at) * 1000, 1)
            self._cancel_policy_timer()
            self._set_state(CallState.SECURE)
            self._enter_fast()
        elif isinstance(event, HandshakeFailed):
            self._drop_srtp()
            policy = self.identity.policy if self.identity else Policy.REQUIRED
            if self.state is CallState.SECURE:
                self._set_state(CallState.FAILED, f"ZRTP ended: {event.reason}")
            elif policy is Policy.REQUIRED:
                self._cancel_policy_timer()
                self._set_state(CallState.FAILED, f"ZRTP failed: {event.reason}")
            else:
                self._cancel_policy_timer()
                self._set_state(CallState.CLEAR, f"ZRTP failed: {event.reason}")
        elif isinstance(event, WentClear):
            self._drop_srtp()
            self._set_state(CallState.CLEAR, "the phone went clear (GoClear)")
        elif isinstance(event, GoClearRefused):
            self.counters.drops["goclear_refused"] += 1
        elif isinstance(event, SecurityWarning):
            self.counters.drops["zrtp_false_packet"] += 1
        elif isinstance(event, SasRelayAcknowledged | SasRelayUnacknowledged):
            ok = isinstance(event, SasRelayAcknowledged)
            if not self.relay_role:  # the SASrelay that gave the phone its own SAS back
                log.info("%s own SAS %sacknowledged", self.tag(), "" if ok else "un")
                return
            self.relay_status = "acknowledged" if ok else "unacknowledged"
            log.info("%s SASrelay %s", self.tag(), self.relay_status)
            self.on_change(self)
            if self.partner is not None:
                self.partner.on_change(self.partner)  # its scope may change too
        elif isinstance(event, PeerHelloReceived):
            host = self._host
            if self._guard is not None and host is not None and self.peer_has_call(event.peer_zid):
                # Unclaimed, from a phone with a secure call here: maybe that call's
                # video. No DH of its own before the adapter says whose it is.
                host.engine.wait_for_name()

    def _srtp_keys(self, event: SrtpKeysReady | Secured) -> SrtpContext | None:
        """The call's one SRTP state (FastLink.keys); None, and the call failed, if
        SRTP cannot run with the negotiated keys."""
        try:
            return self.fast.keys(event.keys)
        except ValueError as exc:
            self._set_state(CallState.FAILED, f"SRTP unavailable: {exc}")
            return None

    def _drop_srtp(self) -> None:
        """The call's keys are gone (GoClear, failure, end): nothing is protected."""
        self._merge_fast(self.fast.drop())
        self._protect_out = False

    # ------------------------------------------------------------------ native fast path

    def _enter_fast(self) -> None:
        """Hand the secured RTP of this call to the native worker (FastLink.enter)."""
        phone, pbx = self._phone_rtp, self._pbx_rtp
        if self._secured is None or self.phone is None or phone is None or pbx is None:
            return
        self.fast.enter(phone, pbx, self.phone, self.pbx, self.tag())

    def _leave_fast(self) -> None:
        self._merge_fast(self.fast.leave())

    def _merge_fast(self, final: dict[str, int]) -> None:
        if final:
            self.counters = self.counters.plus(final)

    def punted(self, data: bytes, addr: Address, side: str) -> None:
        """A datagram the native worker did not handle (ZRTP, RTCP, strangers)."""
        if side != "phone":
            self._from_pbx(data, addr)
            return
        self._from_phone(data, addr)
        if not self.fast.follow(self.phone):
            self._leave_fast()  # Python carries on, with the same sessions

    # ------------------------------------------------------------------ phone side

    def _from_phone(self, data: bytes, addr: Address) -> None:
        counters = self.counters
        size = len(data)
        self._heard += 1
        if size > MAX_DATAGRAM:
            counters.drops["oversize"] += 1
            return
        if size < 12:
            counters.drops["runt"] += 1
            return
        if self.identity is None:
            self.on_unclaimed(self)
            if self.identity is None:
                counters.drops["no_call"] += 1
                return
        guard = self._guard
        if guard is not None:
            guard.port_in += size
        first = data[0]
        # is_zrtp_packet / is_zrtp_fragment (0x11, post-quantum Commit and DHPart1
        # cut to the MTU), inlined: hot path
        if (first == 0x10 or first == 0x11) and data[4:8] == b"ZRTP":
            hint = self.identity.phone_hint
            if hint is not None and addr[0] != hint[0]:
                counters.drops["wrong_source"] += 1
                return
            self._zrtp_from_phone(data, addr)
            return
        if first >> 6 != 2:
            counters.drops["stun" if _is_stun(data) else "not_rtp"] += 1
            return
        hint = self.identity.phone_hint
        if hint is not None and addr[0] != hint[0]:
            counters.drops["wrong_source"] += 1  # the SDP named the phone's address
            return
        srtp = self.fast.srtp
        if addr != self.phone:
            if self.phone is not None:
                # Latched already. Only an SRTP packet that authenticates and is fresh
                # under the call's live replay window may move the phone (NAT
                # rebinding); a replay from anywhere, or anything else, is dropped.
                plain = srtp.unprotect(data) if srtp is not None else None
                if plain is None:
                    counters.drops["wrong_source"] += 1
                    return
                self.phone = addr
                counters.drops["relatched"] += 1
                counters.phone_in += 1
                counters.phone_in_bytes += size
                self._to_pbx(plain)
                return
            self.phone = addr  # symmetric-RTP latching on the first valid packet
            self._start_engine_if_due()
        counters.phone_in += 1
        counters.phone_in_bytes += size
        if guard is not None:
            guard.heard(addr, size)
        if srtp is not None:
            plain = srtp.unprotect(data)
            if plain is None:
                counters.drops["srtp_auth"] += 1
                return
            host = self._host
            if not self._protect_out and host is not None:
                host.srtp_authenticated()  # completes the initiator
            self._to_pbx(plain)
            return
        if self._clear_allowed():
            self._to_pbx(data)
        else:
            counters.drops["clear_blocked"] += 1

    def _start_engine_if_due(self) -> None:
        # Unclaimed: no Hello schedule toward a source that has not spoken ZRTP.
        if self.identity is not None and self.state is CallState.PENDING and self._guard is None:
            self._start_engine()

    def _zrtp_from_phone(self, data: bytes, addr: Address) -> None:
        counters = self.counters
        identity = self.identity
        assert identity is not None
        if identity.policy is Policy.OFF:
            if self.phone is None:
                self.phone = addr
            if addr == self.phone:
                self._to_pbx(data)  # off means byte-exact pass-through
            else:
                counters.drops["wrong_source"] += 1
            return
        guard = self._guard
        if guard is not None and self._engine is None and not _is_hello(data):
            # Unclaimed: only a genuine Hello starts ZRTP (and latches) here.
            counters.drops["zrtp_ignored"] += 1
            return
        if addr != self.phone:
            if self.phone is not None and not self._hello_may_relatch(data):
                counters.drops["wrong_source"] += 1
                return
            if self.phone is not None:
                counters.drops["relatched"] += 1
            self.phone = addr
        counters.phone_in += 1
        counters.phone_in_bytes += len(data)
        if guard is not None:
            guard.heard(addr, len(data))
        if self._host is None:
            self._start_engine()
        host = self._host
        if host is None:
            # A further stream's ZRTP waits for the first stream's session; the
            # phone repeats its Hello (Linphone starts video's only after audio's).
            counters.drops["zrtp_before_first" if self.first else "zrtp_no_engine"] += 1
            return
        engine = host.engine
        ignored = _engine_ignored(engine)
        host.receive(data)  # an ignored datagram queues nothing: counting after is exact
        if _engine_ignored(engine) != ignored:
            counters.drops["zrtp_ignored"] += 1  # replays, floods, stale repeats, junk

    def _hello_may_relatch(self, data: bytes) -> bool:
        """A ZRTP Hello from a new address moves the latch while no Hello has been
        accepted yet: whatever sent plain RTP first (a stray or hostile source) must
        not keep the real ZRTP phone out. Once a Hello is accepted the phone is
        fixed until secure; then only authenticated SRTP may move it."""
        if self._engine is not None and self._engine.peer_zid is not None:
            return False
        return _is_hello(data)

    def _from_phone_rtcp(self, data: bytes, addr: Address) -> None:
        """RTCP on R:P+1, latched by the RTP rules: only from the phone's SDP host;
        nothing clear latches or passes where clear media may not flow; once SRTP
        keys exist only SRTCP that authenticates and is fresh latches or moves it."""
        counters = self.counters
        self._heard += 1
        if len(data) > MAX_DATAGRAM or len(data) < 8 or data[0] >> 6 != 2:
            counters.drops["stun" if _is_stun(data) else "rtcp_malformed"] += 1
            return
        identity = self.identity
        if identity is None:
            counters.drops["no_call"] += 1
            return
        hint = identity.phone_hint
        if hint is not None and addr[0] != hint[0]:
            counters.drops["wrong_source"] += 1  # the SDP named the phone's address
            return
        latched = self.phone_rtcp
        if self.fast.srtp is None:
            if not self._clear_allowed():
                counters.drops["clear_blocked"] += 1  # not even the latch moves
                return
            if latched is None:
                self.phone_rtcp = addr  # symmetric RTCP, as RTP: the first packet
            elif addr != latched:
                counters.drops["wrong_source"] += 1
                return
            self._send_pbx_rtcp(data)
            return
        plain = self._srtcp_unprotect(data)
        if plain is None:
            stranger = latched is not None and addr != latched
            counters.drops["wrong_source" if stranger else "srtcp_auth"] += 1
            return
        if addr != latched:
            if latched is not None:
                counters.drops["rtcp_relatched"] += 1  # NAT rebinding, proven by SRTCP
            self.phone_rtcp = addr
        self._send_pbx_rtcp(plain)

    def _srtcp_unprotect(self, data: bytes) -> bytes | None:
        """The phone's SRTCP decrypted if it authenticates and is fresh under the
        call's live SRTCP replay state, else None. That state is the call's one
        SrtpContext's (while the native worker holds its sessions, this runs there,
        under the worker's lock)."""
        srtp = self.fast.srtp
        if srtp is None or not is_rtcp(data):
            return None  # e.g. a captured SRTP *RTP* packet replayed to P+1
        return srtp.unprotect(data)

    def _clear_allowed(self) -> bool:
        identity = self.identity
        if identity is None:
            return False
        if identity.policy is Policy.OFF:
            return True
        if identity.policy is Policy.REQUIRED:
            return False
        return self.state in (CallState.PENDING, CallState.CLEAR)

    def _to_phone(self, data: bytes) -> None:
        if self.phone is None or self._phone_rtp is None:
            self.counters.drops["phone_unknown"] += 1
            return
        guard = self._guard
        if guard is not None and not guard.may_send(self.phone, data):
            self.counters.drops["amplification_guard"] += 1
            return
        self._phone_rtp.sendto(data, self.phone)
        self.counters.phone_out += 1
        self.counters.phone_out_bytes += len(data)

    def _to_pbx(self, data: bytes) -> None:
        """RTP, and RTCP multiplexed on the RTP port (RFC 5761), go to A:P."""
        if self._pbx_rtp is None:
            return
        self._pbx_rtp.sendto(data, self.pbx)
        self._last_forward = self._loop.time()
        self.counters.pbx_out += 1
        self.counters.pbx_out_bytes += len(data)

    def _send_pbx_rtcp(self, data: bytes) -> None:
        if self._pbx_rtcp_sock is not None:
            self._pbx_rtcp_sock.sendto(data, self.pbx_rtcp)
            self.counters.pbx_out += 1
            self.counters.pbx_out_bytes += len(data)

    # ------------------------------------------------------------------ PBX side

    def _from_pbx(self, data: bytes, addr: Address) -> None:
        counters = self.counters
        if addr != self.pbx:
            counters.drops["wrong_source"] += 1
            return
        self._heard += 1
        if not self._pbx_heard:
            self._pbx_heard = True  # the PBX latched onto us: stop priming
            self._stop_priming()
        size = len(data)
        if size > MAX_DATAGRAM or size < 12:
            counters.drops["oversize" if size > MAX_DATAGRAM else "runt"] += 1
            return
        counters.pbx_in += 1
        counters.pbx_in_bytes += size
        if self.identity is None:
            counters.drops["no_call"] += 1
            return
        if self._protect_out:
            srtp = self.fast.srtp
            assert srtp is not None
            packet = srtp.protect_checked(data)
            if isinstance(packet, Refusal):
                counters.drops[packet.value] += 1  # srtp_repeat: index used already
                return
            self._to_phone(packet)
        elif self._clear_allowed():
            self._to_phone(data)
        else:
            counters.drops["clear_blocked"] += 1

    def _from_pbx_rtcp(self, data: bytes, addr: Address) -> None:
        counters = self.counters
        if addr != self.pbx_rtcp:
            counters.drops["wrong_source"] += 1
            return
        self._heard += 1
        if len(data) > MAX_DATAGRAM or len(data) < 8 or self.identity is None:
            counters.drops["rtcp_malformed"] += 1
            return
        if self._guard is not None:
            counters.drops["amplification_guard"] += 1  # nothing to an unknown source's RTCP
            return
        target = self.phone_rtcp
        if target is None or self._phone_rtcp_sock is None:
            counters.drops["phone_unknown"] += 1
            return
        if self._protect_out:
            srtp = self.fast.srtp
            assert srtp is not None
            packet = srtp.protect_checked(data)
            if isinstance(packet, Refusal):
                counters.drops[packet.value] += 1
                return
            self._phone_rtcp_sock.sendto(packet, target)
        elif self._clear_allowed():
            self._phone_rtcp_sock.sendto(data, target)
        else:
            counters.drops["clear_blocked"] += 1
            return
        counters.phone_out += 1
        counters.phone_out_bytes += len(data)
