"""The relay: owns the mirrors, allocates ports, publishes call state.

Adapters and admins drive it through the control API (``control.py``); this
module is the in-process interface both use.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pbx_zrtp.cache.base import CacheError, CacheKey, PbxSecretWrite
from pbx_zrtp.calls import (
    Address,
    BadRequest,
    CallIdentity,
    CallReport,
    CallRequest,
    CallState,
    NoSuchCall,
    Policy,
    RelayError,
    StateCallback,
)
from pbx_zrtp.relay.fastlink import FastWorkers
from pbx_zrtp.relay.fastpath import FastPath
from pbx_zrtp.relay.mirror import Mirror, MirrorSettings

log = logging.getLogger("pbx_zrtp.relay")

#: Per-call traffic counters summed into the relay's totals (packets and bytes).
TRAFFIC = (
    "phone_in",
    "phone_out",
    "pbx_in",
    "pbx_out",
    "phone_in_bytes",
    "phone_out_bytes",
    "pbx_in_bytes",
    "pbx_out_bytes",
)

#: A further stream's name (the SDP media type, "video"): lower case, short.
STREAM_NAME = re.compile(r"[a-z][a-z0-9_-]{0,15}")
#: Events a slow subscriber may fall behind by before it is disconnected.
SUBSCRIBER_QUEUE = 1000
#: At shutdown, how long the calls' last cache writes may take to land.
STORE_DRAIN_TIMEOUT = 10.0
#: How long ``verify``/``enroll`` wait for their write before answering anyway.
STORE_SETTLE_TIMEOUT = 5.0


@dataclass
class RelayLayout:
    """Where the relay may bind and what it forwards to."""

    relay_host: str  # R: the address the PBX advertises to phones
    pbx_host: str  # A: the PBX's own RTP address
    port_min: int = 10000
    port_max: int = 20000
    #: Ports bound at start for PBXs whose port appears too late (FreeSWITCH).
    prebind: tuple[int, ...] = ()
    #: Policy for media that reaches a pre-bound port before the adapter names the call.
    prebind_policy: Policy = Policy.REQUIRED
    rtcp: bool = True
    #: Such unclaimed media's call goes back to idle after this long without a datagram.
    unclaimed_idle: float = 2.0
    #: A call named on a port with unclaimed media keeps it only if that media began at
    #: most this long before and carries a live ZRTP exchange; otherwise it starts clean.
    claim_window: float = 3.0

    def check_port(self, port: int) -> None:
        """``port_min``-``port_max`` is the PBX's RTP range as the PBX counts it
        (FreeSWITCH rtp-start-port/rtp-end-port, Asterisk rtpstart/rtpend): its last
        port is an RTP port too, with RTCP on the next one, as at the PBX. The same
        rule as ``pbx-zrtp run --check`` (``relay.config.validate``)."""
        if not self.port_min <= port <= self.port_max or (self.rtcp and port + 1 > 65535):
            raise BadRequest(
                f"port {port} is outside the relay's range {self.port_min}-{self.port_max}"
            )
        if port % 2 and self.rtcp:
            raise BadRequest(f"port {port} is odd: RTP uses even ports, RTCP the next one")


@dataclass
class Totals:
    """Counters of calls that have ended (live calls are summed at read time)."""

    calls: Counter[str] = field(default_factory=Counter)
    packets: Counter[str] = field(default_factory=Counter)
    drops: Counter[str] = field(default_factory=Counter)
    handshake_ms: list[float] = field(default_factory=list)


@dataclass
class _Unclaimed:
    """A pre-bound port's call that nobody named: media came, no adapter claimed it."""

    since: float  # loop time of its first datagram
    heard: int  # the mirror's datagram count at the last idle check
    timer: asyncio.TimerHandle | None = None


class Subscription:
    """A bounded stream of state events for one control client."""

    def __init__(self, relay: Relay) -> None:
        self._relay = relay
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self.overflowed = False

    def push(self, event: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True  # the reader is stuck: end its stream rather than block
            self.close()

    def close(self) -> None:
        self._relay._subscribers.discard(self)
        if self.overflowed:  # the reader is gone or stuck: its backlog is worthless
            while not self.queue.empty():
                self.queue.get_nowait()
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        while (event := await self.queue.get()) is not None:
            yield event


class Relay:
    """All mirrors of one relay process."""

    def __init__(
        self,
        layout: RelayLayout,
        settings: MirrorSettings,
        *,
        fastpath: FastPath | list[FastPath] | None = None,
    ) -> None:
        if layout.relay_host == layout.pbx_host:
            raise ValueError(
                "relay address and PBX address must differ:"
                " the relay would take the PBX's own ports"
            )
        self.layout = layout
        self.settings = settings
        self._by_port: dict[int, Mirror] = {}
        self._by_call: dict[str, Mirror] = {}
        self._prebound: set[int] = set()
        self._unclaimed: dict[int, _Unclaimed] = {}  # pre-bound port -> its unnamed call
        self._subscribers: set[Subscription] = set()
        self._listeners: list[StateCallback] = []  # e.g. metrics, in-process adapters
        self.totals = Totals()
        self.started_at = time.time()
        #: Native forwarding workers for secured calls (fastlink.py); none: all in Python.
        self.fast = FastWorkers(
            [] if fastpath is None else fastpath if isinstance(fastpath, list) else [fastpath]
        )
        #: Set by drain(): no new calls; the calls in progress carry on.
        self.draining = False

    def drain(self) -> None:
        """Refuse new calls from now on (the relay is stopping); calls in progress keep
        flowing until they end or the relay closes."""
        self.draining = True

    @property
    def active_calls(self) -> int:
        """Calls with a name (created, or claimed on a pre-bound port)."""
        return len(self._by_call)

    @property
    def fastpaths(self) -> list[FastPath]:
        """The native workers (empty: secured media is forwarded in Python)."""
        return self.fast.workers

    async def start(self) -> None:
        self.fast.start()
        for port in self.layout.prebind:
            self.layout.check_port(port)
            await self._open_mirror(port, self.layout.pbx_host, None)
            self._prebound.add(port)
        if self.layout.prebind:
            log.info("pre-bound %d ports on %s", len(self.layout.prebind), self.layout.relay_host)

    async def close(self) -> None:
        for call_id in list(self._by_call):
            self.delete(call_id, "relay shutting down")
        for mirror in list(self._by_port.values()):
            mirror.close_sockets()
        self._by_port.clear()
        for sub in list(self._subscribers):
            sub.close()
        self.fast.close()
        store = self.settings.store
        if store is not None:
            # The calls' last writes (rs1, V flag) land before the store is closed.
            if not await store.drain(STORE_DRAIN_TIMEOUT):
                log.warning("retained-secret store: %d writes still pending", store.pending)
            store.close()

    async def _open_mirror(self, port: int, pbx_host: str, pbx_port: int | None) -> Mirror:
        mirror = Mirror(
            self.settings,
            self.layout.relay_host,
            port,
            pbx_host,
            pbx_port,
            rtcp=self.layout.rtcp,
            on_change=self._changed,
            on_unclaimed=self._on_unclaimed,
            fast=self.fast,
        )
        mirror.peer_has_call = self._peer_has_call
        for attempt in range(3):
            try:
                await mirror.open()
                break
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE and attempt < 2:
                    # A mirror just deleted on this port closes its sockets on the
                    # loop's next turn: give it that turn before giving up.
                    await asyncio.sleep(0)
                    continue
                raise BadRequest(
                    f"cannot bind {self.layout.relay_host}:{port}: {exc.strerror or exc}"
                ) from None
        self._by_port[port] = mirror
        return mirror

    # ------------------------------------------------------------------ calls

    async def admit(self, request: CallRequest) -> CallReport:
        """``create`` for a request an adapter or the control API built (a further
        stream of an existing call when it names one)."""
        if request.stream:
            return await self.add_stream(
                request.call_id,
                request.stream,
                request.port,
                pbx_host=request.pbx_host,
                pbx_port=request.pbx_port,
                payload_type=request.payload_type,
                phone_hint=request.phone_hint,
            )
        return await self.create(
            request.call_id,
            request.port,
            request.policy,
            pbx_host=request.pbx_host,
            pbx_port=request.pbx_port,
            self_uri=request.self_uri,
            peer_uri=request.peer_uri,
            payload_type=request.payload_type,
            phone_hint=request.phone_hint,
            bridge=request.bridge,
            enroll=request.enroll,
        )

    async def create(
        self,
        call_id: str,
        port: int,
        policy: Policy,
        *,
        pbx_host: str | None = None,
        pbx_port: int | None = None,
        self_uri: str = "",
        peer_uri: str = "",
        payload_type: int = 0,
        phone_hint: Address | None = None,
        bridge: str = "",
        enroll: bool = False,
    ) -> CallReport:
        """Mirror the PBX's port ``port`` for ``call_id`` (or name the call on a
        pre-bound port that may already carry its media)."""
        if self.draining:
            raise RelayError("the relay is stopping: no new calls (systemctl restart?)")
        if not call_id or len(call_id) > 200:
            raise BadRequest("call_id must be 1-200 characters")
        if len(bridge) > 200:
            raise BadRequest("bridge must be at most 200 characters")
        if call_id in self._by_call:
            raise BadRequest(f"call {call_id!r} already has a mirror")
        if payload_type not in (0, 8):
            raise BadRequest("payload_type must be 0 (PCMU) or 8 (PCMA)")
        if pbx_host is not None:
            try:  # packets are matched on their source address: use the canonical form
                pbx_host = str(ipaddress.ip_address(pbx_host))
            except ValueError:
                raise BadRequest(f"pbx_host {pbx_host!r} is not an IP address") from None
        if pbx_port is not None and not 1 <= pbx_port <= 65534:
            raise BadRequest("pbx_port must be 1-65534 (RTCP uses the next port)")
        self.layout.check_port(port)
        identity = CallIdentity(
            call_id, policy, self_uri, peer_uri, payload_type, phone_hint, bridge, enroll
        )
        mirror = self._by_port.get(port)
        if mirror is not None:
            if port not in self._prebound:
                owner = mirror.identity.call_id if mirror.identity else "?"
                raise BadRequest(f"port {port} is already mirrored for call {owner!r}")
            if mirror.identity is not None and port not in self._unclaimed:
                raise BadRequest(
                    f"pre-bound port {port} already carries call {mirror.identity.call_id!r}"
                )
            if mirror.identity is not None and self._claimable(mirror, identity):
                # Media came first and is this call's ZRTP phone: name the call now.
                if enroll:  # before any change: a refusal leaves the port as it was
                    try:
                        mirror.offer_enrollment()
                    except ValueError as exc:
                        raise BadRequest(str(exc)) from None
                self._forget_unclaimed(port)
                self._by_call.pop(mirror.identity.call_id, None)
                self._by_call[call_id] = mirror
                mirror.claim(identity)
                return mirror.report()
            if mirror.identity is not None:  # stale or stray traffic: none of it carries over
                self._release_unclaimed(
                    mirror, f"unclaimed traffic set aside: the port was given to call {call_id!r}"
                )
        else:
            mirror = await self._open_mirror(port, pbx_host or self.layout.pbx_host, pbx_port)
        self._by_call[call_id] = mirror
        mirror.attach(identity)
        if bridge and any(
            m.partner is not None and m.identity is not None and m.identity.bridge == bridge
            for m in self._by_call.values()
        ):  # a third leg: the two linked legs no longer talk to one far end only
            self._relink(())
        return mirror.report()

    async def add_stream(
        self,
        call_id: str,
        name: str,
        port: int,
        *,
        pbx_host: str | None = None,
        pbx_port: int | None = None,
        payload_type: int = 0,
        phone_hint: Address | None = None,
    ) -> CallReport:
        """Mirror the PBX's port ``port`` as the further stream ``name`` (video) of
        the call ``call_id``: RTP and RTCP like the first stream, its own latch and
        SRTP state, keyed by Multistream from the first stream's session toward its
        peer ZID only, under the call's policy. Returns the call's report."""
        if self.draining:
            raise RelayError("the relay is stopping: no new streams")
        first = self._mirror(call_id)
        if first.identity is None or first.port in self._unclaimed:
            raise BadRequest(f"call {call_id!r} is not named yet")
        if not STREAM_NAME.fullmatch(name):
            raise BadRequest(
                f"stream {name[:20]!r}: a stream name is 1-16 lower-case letters,"
                " digits, '-' or '_' (e.g. video)"
            )
        if name in first.streams:
            raise BadRequest(
                f"call {call_id!r} already has a {name} stream on port {first.streams[name].port}"
            )
        if not 0 <= payload_type <= 127:
            raise BadRequest("payload_type must be 0-127")
        if pbx_host is not None:
            try:
                pbx_host = str(ipaddress.ip_address(pbx_host))
            except ValueError:
                raise BadRequest(f"pbx_host {pbx_host!r} is not an IP address") from None
        if pbx_port is not None and not 1 <= pbx_port <= 65534:
            raise BadRequest("pbx_port must be 1-65534 (RTCP uses the next port)")
        self.layout.check_port(port)
        mirror = self._by_port.get(port)
        if mirror is not None:
            if port not in self._prebound:
                owner = mirror.identity.call_id if mirror.identity else "?"
                raise BadRequest(f"port {port} is already mirrored for call {owner!r}")
            if mirror.identity is not None and port not in self._unclaimed:
                raise BadRequest(
                    f"pre-bound port {port} already carries call {mirror.identity.call_id!r}"
                )
        else:
            mirror = await self._open_mirror(port, pbx_host or first.pbx[0], pbx_port)
        identity = first.identity
        stream = CallIdentity(
            call_id,
            identity.policy,
            identity.self_uri,
            identity.peer_uri,
            payload_type,
            phone_hint,
            identity.bridge,
        )
        if mirror.identity is not None and self._stream_claimable(mirror, stream):
            # The phone began this stream's ZRTP before the name (its Hello, maybe
            # its Multistream Commit, held unanswered): that exchange goes on, keyed
            # by Multistream from the call's session only.
            self._forget_unclaimed(port)
            self._by_call.pop(mirror.identity.call_id, None)
            mirror.claim_stream(first, name, stream)
            log.info(
                "%s %s stream named on port %d (its ZRTP began there)", first.tag(), name, port
            )
            return first.report()
        if mirror.identity is not None:  # nobody vouched for it: none of it carries over
            self._release_unclaimed(
                mirror, f"unclaimed traffic set aside: the port was given to call {call_id!r}"
            )
        mirror.join(first, name)
        mirror.attach(stream)
        log.info("%s %s stream added on port %d", first.tag(), name, port)
        return first.report()

    def _end_streams(self, first: Mirror, reason: str) -> None:
        """End the further streams of a call whose first stream ends (the first's
        final report still lists them, ended)."""
        for stream in list(first.streams.values()):
            final = stream.end(reason)
            self._account(final, counted=False)
            if stream.port not in self._prebound:
                self._by_port.pop(stream.port, None)
                stream.close_sockets()

    def _on_unclaimed(self, mirror: Mirror) -> None:
        """Media on a pre-bound port before the adapter named the call: hold it
        under the prebind policy as ``port-P`` until a call is named there or the
        traffic stops."""
        if mirror.port not in self._prebound or mirror.identity is not None:
            return
        call_id = f"port-{mirror.port}"
        self._by_call[call_id] = mirror
        loop = asyncio.get_running_loop()
        watch = _Unclaimed(since=loop.time(), heard=mirror.heard())
        self._unclaimed[mirror.port] = watch
        mirror.attach(CallIdentity(call_id, self.layout.prebind_policy), unclaimed=True)
        watch.timer = loop.call_later(self.layout.unclaimed_idle, self._check_unclaimed, mirror)

    def _check_unclaimed(self, mirror: Mirror) -> None:
        """Release an unclaimed call once nothing has arrived for ``unclaimed_idle``."""
        watch = self._unclaimed.get(mirror.port)
        if watch is None or self._by_port.get(mirror.port) is not mirror:
            return
        heard = mirror.heard()
        if heard != watch.heard:
            watch.heard = heard
            watch.timer = asyncio.get_running_loop().call_later(
                self.layout.unclaimed_idle, self._check_unclaimed, mirror
            )
            return
        self._release_unclaimed(mirror, "unclaimed traffic stopped")

    def _claimable(self, mirror: Mirror, identity: CallIdentity, *, stream: bool = False) -> bool:
        """Is the unclaimed media on this port the named call's own early media?

        Only a live ZRTP exchange (the phone's Hello accepted, or secure) that began
        within ``claim_window`` is worth keeping; anything else (stray or late RTP, a
        failed or cleared exchange, a source the SDP does not name) would hand the
        call a foreign latch, engine, counters or state, so the call starts clean.
        """
        watch = self._unclaimed.get(mirror.port)
        if watch is None or identity.policy is Policy.OFF:
            return False  # off wants byte-exact pass-through from the first packet
        if asyncio.get_running_loop().time() - watch.since > self.layout.claim_window:
            return False
        if mirror.state not in (CallState.PENDING, CallState.SECURE) or not mirror.speaks_zrtp:
            return False
        engine = mirror._engine
        if not stream and engine is not None and engine.holds_multistream_commit:
            return False  # a further stream's exchange: no call's first stream
        hint = identity.phone_hint
        return hint is None or (mirror.phone is not None and mirror.phone[0] == hint[0])

    def _peer_has_call(self, zid: bytes) -> bool:
        """A named call's first stream is secure with this peer ZID."""
        return any(
            m.first is None
            and m.port not in self._unclaimed
            and (secured := m.secured) is not None
            and secured.peer_zid == zid
            for m in self._by_call.values()
        )

    def _stream_claimable(self, mirror: Mirror, identity: CallIdentity) -> bool:
        """Is the unclaimed exchange on this port the named call's further stream?

        ``_claimable``'s rules, and the exchange is still in discovery (the phone's
        Hello accepted, nothing keyed: at most its Multistream Commit held), so
        that it can only be keyed by Multistream from the call's session; one that
        went further (a DH Commit, secure by a DH of its own) starts clean.
        """
        engine = mirror._engine
        return (
            mirror.state is CallState.PENDING
            and engine is not None
            and engine.awaits_session
            and self._claimable(mirror, identity, stream=True)
        )

    def _forget_unclaimed(self, port: int) -> None:
        watch = self._unclaimed.pop(port, None)
        if watch is not None and watch.timer is not None:
            watch.timer.cancel()

    def _release_unclaimed(self, mirror: Mirror, reason: str) -> None:
        """End an unclaimed call: the port goes back to idle, still bound."""
        self._forget_unclaimed(mirror.port)
        if mirror.identity is not None:
            self._by_call.pop(mirror.identity.call_id, None)
        final = mirror.end(reason)
        self._account(final, "unclaimed")
        log.info("%s %s (pre-bound port back to idle)", mirror.tag(), reason)

    def _mirror(self, call_id: str) -> Mirror:
        mirror = self._by_call.get(call_id)
        if mirror is None:
            raise NoSuchCall(f"no call {call_id!r}")
        return mirror

    def update(self, call_id: str, *, policy: Policy | None = None) -> CallReport:
        mirror = self._mirror(call_id)
        if policy is not None:
            try:
                mirror.set_policy(policy)
                for stream in list(mirror.streams.values()):
                    stream.set_policy(policy)
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
        return mirror.report()

    def delete(self, call_id: str, reason: str = "hangup") -> CallReport:
        mirror = self._by_call.pop(call_id, None)
        if mirror is None:
            raise NoSuchCall(f"no call {call_id!r}")
        unclaimed = mirror.port in self._unclaimed
        self._forget_unclaimed(mirror.port)
        partner = mirror.partner
        self._end_streams(mirror, reason)
        final = mirror.end(reason)
        if partner is not None:  # the far end is gone: its leg reads its own SAS again
            self._relink(())
        self._account(final, "unclaimed" if unclaimed else None)
        if mirror.port not in self._prebound:
            self._by_port.pop(mirror.port, None)
            mirror.close_sockets()
        return final

    def get(self, call_id: str) -> CallReport:
        return self._mirror(call_id).report()

    def calls(self) -> list[CallReport]:
        return [m.report() for m in self._by_call.values()]

    def verify(self, call_id: str, verified: bool = True) -> CallReport:
        mirror = self._mirror(call_id)
        try:
            mirror.mark_verified(verified)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        return mirror.report()

    async def stored(self, call_id: str) -> CallReport:
        """The call's report once the store has taken the writes already handed to it
        for this phone (``verify``, ``enroll``): a reply then means "saved", or its
        ``cache_error`` says why not. Waits off the loop, at most a few seconds."""
        mirror = self._mirror(call_id)
        store, key = self.settings.store, mirror.cache_key
        if store is not None and key is not None:
            await store.drain(STORE_SETTLE_TIMEOUT, key)
        return self._mirror(call_id).report()

    async def enroll(self, call_id: str) -> CallReport:
        """The user confirmed the SAS of an enrollment call: store the pbxsecret.

        Answers once it is stored; RelayError if the store refused it.
        """
        mirror = self._mirror(call_id)
        failed = len(mirror.failed_writes)
        try:
            mirror.enroll()
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        return await self._stored_or_error(call_id, mirror, failed)

    async def _stored_or_error(self, call_id: str, mirror: Mirror, failed: int) -> CallReport:
        """``stored``, raising RelayError if a pbxsecret write since ``failed`` failed."""
        report = await self.stored(call_id)
        for write, error in mirror.failed_writes[failed:]:
            if isinstance(write, PbxSecretWrite):
                raise RelayError(f"{write.failure}: {error}")
        return report

    async def unenroll(self, call_id: str | None = None, peer_zid: bytes | None = None) -> int:
        """Forget pbxsecrets: of a live call's phone, or of a peer ZID (any of our ZIDs).

        The store is written on the store worker's threads, in order with the
        calls' own writes for that phone, never on the media loop.
        """
        if call_id is not None:
            mirror = self._mirror(call_id)
            failed = len(mirror.failed_writes)
            try:
                mirror.unenroll()
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
            await self._stored_or_error(call_id, mirror, failed)
            return 1
        cache, store = self.settings.cache, self.settings.store
        if peer_zid is None or len(peer_zid) != 12:
            raise BadRequest("unenroll needs a call or a 12-byte peer ZID")
        erased = 0
        for self_zid, zid, _expires in await self.enrolled_phones():
            if zid == peer_zid:
                write = PbxSecretWrite(CacheKey(self_zid, zid), os.urandom(32), 0)
                error = ""
                try:
                    if store is not None:
                        error = await store.apply(write)
                    else:
                        write.apply(cache)  # in memory: at once
                except CacheError as exc:
                    error = str(exc)
                if error:
                    raise RelayError(f"{write.failure}: {error}")
                erased += 1
        return erased

    async def enrolled_phones(self) -> list[tuple[bytes, bytes, float | None]]:
        """(our ZID, phone ZID, expiry) of every pbxsecret the cache holds (read on a
        worker thread, after the writes already handed to it)."""
        store, cache = self.settings.store, self.settings.cache
        try:
            if store is not None:
                return await store.run(cache.list_pbx_secrets)
            return cache.list_pbx_secrets()
        except CacheError as exc:
            raise BadRequest(f"the enrolled phones could not be listed: {exc}") from None

    def _relay_sas(self, mirror: Mirror) -> None:
        """Once both legs of a bridged call are secure, apply §7.3's relay rules.

        "Enrolled" here is what §7.3 says: a trusted MiTM key (pbxsecret) shared in
        this key negotiation (``renders_relayed_sas``); a phone enrolled during this
        call has none yet and would not render a relayed SAS. No such leg: nothing
        is relayed. One: the far end's SAS goes to it, an "empty" SASrelay
        (rendering scheme only) to the other (6189bis). Both: to exactly one, never
        to a leg whose phone is itself a PBX (M flag).
        """
        identity = mirror.identity
        if identity is None or not identity.bridge or mirror.relay_role:
            return
        legs = [
            m for m in self._by_call.values() if m.identity and m.identity.bridge == identity.bridge
        ]
        if len(legs) != 2 or any(m.state is not CallState.SECURE or m.relay_role for m in legs):
            return
        a, b = legs
        sa, sb = a.secured, b.secured
        if sa is None or sb is None:
            return
        a.partner, b.partner = b, a
        trusted_a, trusted_b = a.renders_relayed_sas, b.renders_relayed_sas
        if not trusted_a and not trusted_b:
            a.relay_role = b.relay_role = "none"
            log.info("bridge %s: neither leg is enrolled: each keeps its own SAS", identity.bridge)
            self._changed(a)
            self._changed(b)
            return
        if trusted_a and trusted_b:
            target, source = (a, b) if sb.peer_mitm and not sa.peer_mitm else (b, a)
        else:
            target, source = (a, b) if trusted_a else (b, a)
        ts, ss = target.secured, source.secured
        assert ts is not None and ss is not None
        try:
            target.send_sas_relay("target", ss.sas_hash, ss.sas_type, ss.previously_verified)
            source.send_sas_relay("source", None, ss.sas_type, ts.previously_verified)
        except ValueError as exc:
            log.warning("bridge %s: SAS relay not possible: %s", identity.bridge, exc)
        self._changed(a)
        self._changed(b)

    def rebridge(self, call_id: str, bridge: str) -> CallReport:
        """The PBX moved the call's leg into another bridge (a transfer, a pickup, a
        park and retrieve): ``bridge`` is the id it now shares with the leg it talks
        to ("" when it talks to no leg of this relay). The old link is undone (a phone
        shown the old far end's SAS gets its own back) and the §7.3 rules run again
        for the new bridge once both of its legs are secure."""
        if len(bridge) > 200:
            raise BadRequest("bridge must be at most 200 characters")
        mirror = self._mirror(call_id)
        identity = mirror.identity
        if identity is None or identity.bridge == bridge:
            return mirror.report()
        log.info("%s moved from bridge %r to %r", mirror.tag(), identity.bridge, bridge)
        identity.bridge = bridge
        self._relink((bridge,))
        return mirror.report()

    def _relink(self, bridges: Iterable[str]) -> None:
        """Undo every SAS relay link whose two legs no longer are the only legs of one
        bridge id, then publish those legs and the legs of ``bridges`` (``_changed``
        links a bridge of exactly two secure legs)."""
        members: dict[str, list[Mirror]] = {}
        for m in self._by_call.values():
            if m.identity is not None and m.identity.bridge:
                members.setdefault(m.identity.bridge, []).append(m)
        touched: dict[int, Mirror] = {}
        for m in list(self._by_call.values()):
            if m.partner is None and not m.relay_role:
                continue
            legs = members.get(m.identity.bridge, []) if m.identity is not None else []
            if m.partner is not None and len(legs) == 2 and m.partner in legs and m in legs:
                continue
            m.unlink()
            touched[id(m)] = m
        for bridge in bridges:
            for m in members.get(bridge, []):
                touched[id(m)] = m
        for m in touched.values():
            self._changed(m)

    def mirrors(self) -> Iterable[Mirror]:
        return self._by_port.values()

    # ------------------------------------------------------------------ events, stats

    def subscribe(self) -> Subscription:
        sub = Subscription(self)
        self._subscribers.add(sub)
        return sub

    def add_listener(self, listener: StateCallback) -> None:
        self._listeners.append(listener)

    def _changed(self, mirror: Mirror) -> None:
        if mirror.first is not None:  # a further stream: its call's report says it
            self._changed(mirror.first)
            return
        report = mirror.report()
        if not report.call_id:
            return
        if mirror.state is CallState.SECURE and not mirror.relay_role and report.bridge:
            self._relay_sas(mirror)  # publishes both legs itself once it relays
            if mirror.relay_role:
                return
        event = {"event": "state", "call": report.to_wire()}
        for sub in list(self._subscribers):
            sub.push(event)
        for listener in self._listeners:
            try:
                listener(report)
            except Exception:  # a listener bug must never reach the packet path
                log.exception("state listener failed")

    def _account(
        self, final: CallReport, label: str | None = None, *, counted: bool = True
    ) -> None:
        """Add an ended call to the totals, under ``label`` or the state it reached
        (``counted`` False: a further stream, whose traffic only is added)."""
        totals = self.totals
        if counted:
            totals.calls[label or final.last_state or final.state] += 1
        counters: Mapping[str, Any] = final.counters
        for key in TRAFFIC:
            totals.packets[key] += int(counters.get(key, 0))
        for reason, count in final.counters["drops"].items():
            totals.drops[reason] += int(count)

    def live_calls(self) -> int:
        """Calls with a mirror that has not gone back to idle."""
        idle = (CallState.IDLE, CallState.ENDED)
        return sum(1 for mirror in self._by_call.values() if mirror.state not in idle)

    def stats(self) -> dict[str, Any]:
        by_state: Counter[str] = Counter(m.state.value for m in self._by_call.values())
        traffic = Counter(self.totals.packets)
        drops = Counter(self.totals.drops)
        for mirror in self._by_port.values():
            # with what the native worker forwarded so far (not only when it detaches)
            live = mirror.live_counters()
            counts: Mapping[str, Any] = live
            traffic.update({key: int(counts.get(key, 0)) for key in TRAFFIC})
            drops.update(live["drops"])
        return {
            "calls": dict(by_state),
            "ended": dict(self.totals.calls),
            "packets": {key: traffic[key] for key in TRAFFIC if not key.endswith("_bytes")},
            "bytes": {k[: -len("_bytes")]: traffic[k] for k in TRAFFIC if k.endswith("_bytes")},
            "drops": dict(drops),
            "prebound_ports": len(self._prebound),
            "uptime_s": round(time.time() - self.started_at, 1),
        }


__all__ = ["Relay", "RelayError", "RelayLayout", "Subscription"]
