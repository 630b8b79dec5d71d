"""Two ZRTP engines in memory with an explicit clock and a lossy network.

Shared by the engine tests: no sockets, no real time, deterministic given a seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from pbx_zrtp.cache.base import SecretCache
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from pbx_zrtp.zrtp.connection import ZrtpConnection, ZrtpSession
from pbx_zrtp.zrtp.events import Event, HandshakeFailed, Secured


def seeded_random(seed: int) -> random.Random:
    return random.Random(seed)


def make_connection(
    zid: bytes,
    *,
    seed: int,
    ssrc: int,
    cache: SecretCache | None = None,
    session: ZrtpSession | None = None,
    multistream_only: bool = False,
    **config: object,
) -> ZrtpConnection:
    rng = random.Random(seed)
    configuration = ZrtpConfiguration(zid=zid, **config)  # type: ignore[arg-type]
    return ZrtpConnection(
        configuration,
        ssrc=ssrc,
        random=rng.randbytes,
        cache=cache,
        session=session,
        multistream_only=multistream_only,
    )


@dataclass
class Network:
    """Carries datagrams between two engines with optional loss/reorder/duplication."""

    a: ZrtpConnection
    b: ZrtpConnection
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    seed: int = 0
    latency: float = 0.005
    now: float = 0.0
    events_a: list[Event] = field(default_factory=list)
    events_b: list[Event] = field(default_factory=list)
    wire: list[tuple[str, bytes]] = field(default_factory=list)
    tamper: object = None  # callable(direction, data) -> data | None

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._in_flight: list[tuple[float, int, str, bytes]] = []
        self._counter = 0

    def _collect(self, source: ZrtpConnection, direction: str) -> None:
        for datagram in source.datagrams_to_send():
            self.wire.append((direction, datagram))
            if self._rng.random() < self.loss:
                continue
            copies = 2 if self._rng.random() < self.duplicate else 1
            for _ in range(copies):
                delay = self.latency
                if self._rng.random() < self.reorder:
                    delay += self._rng.uniform(0.0, 0.05)
                self._counter += 1
                self._in_flight.append((self.now + delay, self._counter, direction, datagram))

    def _drain_events(self) -> None:
        for conn, sink in ((self.a, self.events_a), (self.b, self.events_b)):
            while (event := conn.next_event()) is not None:
                sink.append(event)

    def run(self, until: float = 30.0, start_b_at: float = 0.0) -> None:
        self.a.start(self.now)
        b_started = False
        while self.now < until:
            if not b_started and self.now >= start_b_at:
                self.b.start(self.now)
                b_started = True
            self._collect(self.a, "a->b")
            self._collect(self.b, "b->a")
            self._drain_events()
            if self.done():
                return
            candidates = [t for t in (self.a.get_timer(), self.b.get_timer()) if t is not None]
            candidates += [item[0] for item in self._in_flight]
            candidates += self._pending_times()
            if not b_started:
                candidates.append(start_b_at)
            if not candidates:
                return
            self.now = max(self.now, min(candidates))
            due = sorted(item for item in self._in_flight if item[0] <= self.now)
            self._in_flight = [item for item in self._in_flight if item[0] > self.now]
            for _, _, direction, datagram in due:
                target = self.b if direction == "a->b" else self.a
                if self.tamper is not None:
                    datagram = self.tamper(direction, datagram)  # type: ignore[operator]
                    if datagram is None:
                        continue
                if direction == "a->b" and not b_started:
                    continue
                target.receive_datagram(datagram, self.now)
            for conn in (self.a, self.b):
                timer = conn.get_timer()
                if timer is not None and timer <= self.now:
                    conn.handle_timer(self.now)

    def settle(self, until: float) -> None:
        """After ``run``: keep carrying datagrams and timers until nothing is left
        to do or the clock would pass ``until`` (for messages sent once secure)."""
        while True:
            self._collect(self.a, "a->b")
            self._collect(self.b, "b->a")
            self._drain_events()
            candidates = [t for t in (self.a.get_timer(), self.b.get_timer()) if t is not None]
            candidates += [item[0] for item in self._in_flight]
            candidates += self._pending_times()
            if not candidates or min(candidates) > until:
                return
            self.now = max(self.now, min(candidates))
            due = sorted(item for item in self._in_flight if item[0] <= self.now)
            self._in_flight = [item for item in self._in_flight if item[0] > self.now]
            for _, _, direction, datagram in due:
                if self.tamper is not None:
                    datagram = self.tamper(direction, datagram)  # type: ignore[operator]
                    if datagram is None:
                        continue
                (self.b if direction == "a->b" else self.a).receive_datagram(datagram, self.now)
            for conn in (self.a, self.b):
                timer = conn.get_timer()
                if timer is not None and timer <= self.now:
                    conn.handle_timer(self.now)

    def _pending_times(self) -> list[float]:
        """When a subclass has something of its own due (a host's answer); none here."""
        return []

    def done(self) -> bool:
        def finished(events: list[Event]) -> bool:
            return any(isinstance(e, Secured | HandshakeFailed) for e in events)

        return finished(self.events_a) and finished(self.events_b)

    def secured(self) -> tuple[Secured, Secured]:
        sa = [e for e in self.events_a if isinstance(e, Secured)]
        sb = [e for e in self.events_b if isinstance(e, Secured)]
        assert sa and sb, f"not secured: a={self.events_a} b={self.events_b}"
        return sa[0], sb[0]

    def failures(self) -> tuple[list[HandshakeFailed], list[HandshakeFailed]]:
        return (
            [e for e in self.events_a if isinstance(e, HandshakeFailed)],
            [e for e in self.events_b if isinstance(e, HandshakeFailed)],
        )
