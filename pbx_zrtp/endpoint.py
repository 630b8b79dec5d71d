"""``pbx-zrtp endpoint``: one ZRTP endpoint over UDP, for admins and tests.

The engine on one UDP socket (like ``openssl s_client`` for TLS), through the
same host as the relay's mirrors (enginehost.py): it runs one ZRTP exchange
with a peer, optionally sends SRTP, and reports the outcome as one JSON-ready
dict.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from pbx_zrtp.cache.base import SecretCache
from pbx_zrtp.cache.worker import StoreWorker
from pbx_zrtp.enginehost import EngineHost
from pbx_zrtp.srtp import SrtpContext
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from pbx_zrtp.zrtp.events import (
    Event,
    HandshakeFailed,
    SasRelayed,
    Secured,
    SrtpKeys,
    SrtpKeysReady,
)
from pbx_zrtp.zrtp.packets import is_zrtp_fragment, is_zrtp_packet
from pbx_zrtp.zrtp.warmup import warm_up

Address = tuple[str, int]

#: SRTP test stream: one packet every 20 ms, PT 0 (PCMU), 160 bytes of silence.
SRTP_INTERVAL = 0.020
SRTP_PAYLOAD = b"\xff" * 160
#: After our last SRTP packet, how long to wait for the peer's.
SRTP_LINGER = 1.5
#: Before returning, how long the exchange's cache writes may take to land.
STORE_DRAIN_TIMEOUT = 10.0


class EndpointError(Exception):
    """The exchange failed; the message says what failed, without secrets."""


@dataclass
class EndpointOptions:
    bind: Address
    peer: Address | None
    srtp_count: int = 0
    timeout: float = 10.0
    mark_verified: bool = False
    #: The user consents to enroll with a PBX that invites it (E flag, §7.3.1).
    accept_enrollment: bool = False
    #: Once secure, wait this long for a PBX's SASrelay (§7.3).
    sas_relay_wait: float = 0.0
    #: After securing, keep answering the peer this long: a responder whose last
    #: Conf2ACK was lost must still be there for the initiator's Confirm2 repeat (§6).
    linger: float = 0.0


@dataclass
class _Outcome:
    secured: Secured | None = None
    failure: str | None = None
    srtp_sent: int = 0
    srtp_received_ok: int = 0
    enrolled: bool = False
    sas_relay: SasRelayed | None = None
    relayed: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class _EndpointProtocol(asyncio.DatagramProtocol):
    """Feeds the engine host from the socket; acts on the engine's events."""

    def __init__(
        self,
        configuration: ZrtpConfiguration,
        ssrc: int,
        options: EndpointOptions,
        outcome: _Outcome,
        cache: SecretCache | None = None,
        store: StoreWorker | None = None,
    ) -> None:
        self.options = options
        self.outcome = outcome
        self.peer = options.peer
        self.transport: asyncio.DatagramTransport | None = None
        self.srtp: SrtpContext | None = None
        self.secure = asyncio.Event()
        self.host = EngineHost(
            configuration,
            loop=asyncio.get_running_loop(),
            ssrc=ssrc,
            send=self._send,
            on_event=self._on_event,
            cache=cache,
            store=store,
        )
        self.connection = self.host.engine

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.peer is not None:
            self.host.start()

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        source = (addr[0], addr[1])
        if self.peer is None:
            self.peer = source  # no --peer: answer whoever speaks first
        elif source != self.peer:
            return
        if is_zrtp_packet(data) or is_zrtp_fragment(data):  # 0x11: a KEM-mode fragment
            self.host.receive(data)
        elif self.srtp is not None and self.srtp.unprotect(data) is not None:
            self.outcome.srtp_received_ok += 1
            self.host.srtp_authenticated()

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable etc.
        pass

    def _send(self, datagram: bytes) -> None:
        if self.transport is not None and self.peer is not None:
            self.transport.sendto(datagram, self.peer)

    def _on_event(self, event: Event) -> None:
        if isinstance(event, SrtpKeysReady) and self.srtp is None:
            self.srtp = self._srtp_context(event.keys)
        elif isinstance(event, Secured):
            if self.srtp is None:
                self.srtp = self._srtp_context(event.keys)
            if self.options.mark_verified:
                self.connection.set_sas_verified(True)
            if self.options.accept_enrollment and event.peer_enrollment:
                self.connection.enroll()
                self.outcome.enrolled = True
            self.outcome.secured = event
            self.secure.set()
        elif isinstance(event, SasRelayed):
            self.outcome.sas_relay = event
            self.outcome.relayed.set()
        elif isinstance(event, HandshakeFailed):
            self.outcome.failure = event.reason
            self.outcome.done.set()

    def _srtp_context(self, keys: SrtpKeys) -> SrtpContext | None:
        """An SRTP context, or None for keys our SRTP layer cannot use (none the
        engine negotiates today; a failure when --srtp asks for media).

        Without --srtp the exchange is still useful: it shows the derived keys.
        """
        try:
            return SrtpContext(keys)
        except ValueError:
            if self.options.srtp_count:
                self.outcome.failure = f"no SRTP profile for {keys.cipher}/{keys.auth_tag}"
                self.outcome.done.set()
            return None

    def send_srtp(self, sequence: int, ssrc: int) -> bool:
        assert self.transport is not None and self.peer is not None
        if self.srtp is None:
            return False
        header = struct.pack(
            "!BBHII", 0x80, 0, sequence & 0xFFFF, (sequence * 160) & 0xFFFFFFFF, ssrc
        )
        packet = self.srtp.protect(header + SRTP_PAYLOAD)
        if packet is None:
            return False
        self.transport.sendto(packet, self.peer)
        return True

    def close(self) -> None:
        self.host.close()  # store answers after this drive nothing
        if self.transport is not None:
            self.transport.close()


async def run_endpoint(
    configuration: ZrtpConfiguration,
    options: EndpointOptions,
    *,
    cache: SecretCache | None = None,
    ssrc: int | None = None,
    ready: asyncio.Future[Address] | None = None,
) -> dict[str, Any]:
    """Run one exchange; returns the JSON-ready result or raises EndpointError."""
    loop = asyncio.get_running_loop()
    warm_up(configuration.key_agreement_types[:1])  # one-time process set-up, before the clock
    started = time.perf_counter()
    if ssrc is None:
        ssrc = int.from_bytes(os.urandom(4), "big")
    # A store on disk runs on a worker thread, as in the relay: the engine only asks.
    store = StoreWorker(cache) if cache is not None and cache.blocking else None
    outcome = _Outcome()
    try:
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _EndpointProtocol(configuration, ssrc, options, outcome, cache, store),
            local_addr=options.bind,
        )
    except OSError as exc:
        raise EndpointError(
            f"cannot bind {options.bind[0]}:{options.bind[1]}: {exc.strerror}"
        ) from None
    bound = transport.get_extra_info("sockname")
    if ready is not None and not ready.done():
        ready.set_result((bound[0], bound[1]))
    deadline = loop.time() + options.timeout
    try:
        secure_wait = asyncio.ensure_future(protocol.secure.wait())
        fail_wait = asyncio.ensure_future(outcome.done.wait())
        await asyncio.wait(
            {secure_wait, fail_wait}, timeout=options.timeout, return_when=asyncio.FIRST_COMPLETED
        )
        secure_wait.cancel()
        fail_wait.cancel()
        if outcome.secured is None or outcome.failure:
            if outcome.failure:
                raise EndpointError(outcome.failure)
            state = protocol.connection.state.value
            raise EndpointError(f"time-out after {options.timeout:g} s in state {state}")
        secured = outcome.secured
        elapsed_ms = (time.perf_counter() - started) * 1000
        for sequence in range(1, options.srtp_count + 1):
            if protocol.send_srtp(sequence, ssrc):
                outcome.srtp_sent += 1
            await asyncio.sleep(SRTP_INTERVAL)
        linger_until = min(deadline + SRTP_LINGER, loop.time() + SRTP_LINGER)
        while outcome.srtp_received_ok < options.srtp_count and loop.time() < linger_until:
            await asyncio.sleep(0.01)
        if options.sas_relay_wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(outcome.relayed.wait(), options.sas_relay_wait)
        if options.linger > 0:
            await asyncio.sleep(options.linger)
    finally:
        protocol.close()
        if store is not None:
            # rs1 and the V flag must be stored before the caller closes the cache.
            await store.drain(STORE_DRAIN_TIMEOUT)
            store.close()
    keys = secured.keys
    relay = outcome.sas_relay
    return {
        "ok": True,
        "sas": secured.sas,
        "sas_type": secured.sas_type,
        "key_agreement": secured.key_agreement,
        "hash": secured.hash,
        "cipher": secured.cipher,
        "auth_tag": secured.auth_tag,
        "role": secured.role,
        "zid_self": configuration.zid.hex(),
        "zid_peer": secured.peer_zid.hex(),
        "srtp_self_key": keys.local_key.hex(),
        "srtp_self_salt": keys.local_salt.hex(),
        "srtp_peer_key": keys.remote_key.hex(),
        "srtp_peer_salt": keys.remote_salt.hex(),
        "cache_mismatch": secured.cache_mismatch,
        "previously_verified": secured.previously_verified,
        "srtp": {"sent": outcome.srtp_sent, "received_ok": outcome.srtp_received_ok},
        "peer_mitm": secured.peer_mitm,
        "peer_disclosure": secured.peer_disclosure,
        "pbx_enrollment_offered": secured.peer_enrollment,
        "enrolled": outcome.enrolled,
        "pbx_trusted": secured.pbx_secret_matched,
        "sas_relay": None
        if relay is None
        else {
            "sas": relay.sas,
            "sas_type": relay.sas_type,
            "relayed": relay.relayed,
            "far_end_verified": relay.far_end_verified,
            "ignored_reason": relay.ignored_reason,
        },
        # What the user reads: the far end's SAS when a trusted PBX relayed it.
        "displayed_sas": relay.sas if relay is not None else secured.sas,
        "elapsed_ms": round(elapsed_ms, 1),
    }
