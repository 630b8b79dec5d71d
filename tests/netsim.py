"""A hostile network in process: two ZRTP engines, an explicit clock, a seeded RNG.

Used by ``tests/test_hostile.py`` (a fixed-seed CI run) and ``bench/hostile.py``
(1000-trial campaigns). Virtual time only moves from one event to the next
(datagram delivery, an engine timer, a media tick), so a trial that takes 12 s of
protocol time runs in a few milliseconds and is reproducible from its seed.

Each datagram, in each direction independently, is lost with probability
``loss``; otherwise it is duplicated with probability ``duplicate`` and every
copy is delayed by ``delay`` + uniform(0, ``jitter``), or sent at once
(``reorder``, like netem's reorder, which sends some packets without the delay).
After its ``Secured`` event each side sends one media packet every 20 ms over
the same impaired path, as a phone does; a media packet that arrives at a side
holding matching keys counts as valid SRTP (``srtp_authenticated``), which per
RFC 6189 §6 also ends the initiator's Confirm2 retransmissions.
"""

from __future__ import annotations

import heapq
import random
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pbx_zrtp.zrtp.config import ZrtpConfiguration
from pbx_zrtp.zrtp.connection import State, ZrtpConnection
from pbx_zrtp.zrtp.events import HandshakeFailed, Secured, SrtpKeys, SrtpKeysReady

MEDIA_INTERVAL = 0.020

#: RFC 6189 §6 with this engine's defaults (``ZrtpConfiguration``): how long after
#: the last progress each kind of wait may last before the engine gives up.
#: Hello: the extended schedule spans 12 s from start. T2 (Commit, DHPart2,
#: Confirm2): 150+300+600+7*1200 ms = 9.45 s of retransmissions, then one more
#: 1.2 s interval for the answer to the last one. Responder: 10 s without a
#: message from the initiator.
T1_LIMIT = 12.0
T2_LIMIT = 9.45 + 1.2
RESPONDER_LIMIT = 10.0
_INITIATOR_WAITS = (State.COMMIT_SENT, State.DHPART2_SENT, State.CONFIRM2_SENT)
_RESPONDER_WAITS = (State.DHPART1_SENT, State.CONFIRM1_SENT)


@dataclass(frozen=True)
class Conditions:
    """Per-direction impairment, netem style."""

    loss: float = 0.20
    duplicate: float = 0.05
    reorder: float = 0.10
    delay: float = 0.0
    jitter: float = 0.200

    def describe(self) -> str:
        return (
            f"loss {self.loss:.0%}, duplicate {self.duplicate:.0%}, reorder {self.reorder:.0%}, "
            f"delay {self.delay * 1000:.0f} ms + 0..{self.jitter * 1000:.0f} ms jitter"
        )


HOSTILE = Conditions()
#: Harsher than the issue asks: shows what failure looks like.
HARSH = Conditions(loss=0.5, duplicate=0.10, reorder=0.10, delay=0.1, jitter=0.6)


@dataclass
class Side:
    name: str
    conn: ZrtpConnection
    started: float = 0.0
    secured_at: float | None = None
    secured: Secured | None = None
    failed: HandshakeFailed | None = None
    failed_at: float | None = None
    failed_in: State | None = None
    keys: SrtpKeys | None = None
    last_change: float = 0.0
    last_received: float = 0.0
    media_sent: int = 0

    @property
    def done(self) -> bool:
        return self.secured is not None or self.failed is not None


@dataclass
class TrialResult:
    seed: int
    label: str
    secured: bool
    time_to_secure: float | None
    failures: list[tuple[str, str, float, str, bool]]  # side, reason, time, state, in limits
    datagrams: int
    sas_agree: bool

    @property
    def within_limits(self) -> bool:
        return all(ok for *_, ok in self.failures)


def _limit_ok(side: Side, at: float, state: State) -> bool:
    """Did ``side`` give up within the RFC 6189 §6 bound for the wait it was in?"""
    slack = 1e-6
    if state is State.DISCOVERY:
        return at - side.started <= T1_LIMIT + slack
    if state in _INITIATOR_WAITS:
        return at - side.last_change <= T2_LIMIT + slack
    if state in _RESPONDER_WAITS:
        return at - side.last_received <= RESPONDER_LIMIT + slack
    return True  # failures on a received message are immediate


def _valid_srtp(sender: SrtpKeys | None, receiver: SrtpKeys | None) -> bool:
    """Media authenticates only when the sender's keys are the ones we unprotect with."""
    if sender is None or receiver is None:
        return False
    return (sender.local_key, sender.local_salt) == (receiver.remote_key, receiver.remote_salt)


def make_engine(name: str, seed: int, ssrc: int, zid: bytes, **config: Any) -> ZrtpConnection:
    rng = random.Random(f"{name}:{seed}")
    return ZrtpConnection(ZrtpConfiguration(zid=zid, **config), ssrc=ssrc, random=rng.randbytes)


def run_trial(
    seed: int,
    conditions: Conditions = HOSTILE,
    *,
    a_config: dict[str, Any] | None = None,
    b_config: dict[str, Any] | None = None,
    start_b_at: float = 0.0,
    label: str = "",
    until: float = 60.0,
) -> TrialResult:
    """One handshake between two engines over the impaired path, in virtual time."""
    rng = random.Random(seed)
    a = Side("a", make_engine("a", seed, 0x1000 + seed % 0xFFFF, b"A" * 12, **(a_config or {})))
    b = Side("b", make_engine("b", seed, 0x20000 + seed % 0xFFFF, b"B" * 12, **(b_config or {})))
    peer = {"a": b, "b": a}
    queue: list[tuple[float, int, str, str, Any]] = []  # (time, order, target, kind, payload)
    order = 0
    datagrams = 0
    now = 0.0

    def transmit(target: str, kind: str, payload: Any) -> None:
        nonlocal order
        if rng.random() < conditions.loss:
            return
        copies = 2 if rng.random() < conditions.duplicate else 1
        for _ in range(copies):
            if rng.random() < conditions.reorder:
                delay = 0.0
            else:
                delay = conditions.delay + rng.uniform(0.0, conditions.jitter)
            order += 1
            heapq.heappush(queue, (now + delay, order, target, kind, payload))

    def pump(side: Side, before: State) -> None:
        nonlocal datagrams, order
        conn = side.conn
        if conn.state is not before:
            side.last_change = now
            if conn.state is State.FAILED and side.failed_in is None:
                side.failed_in = before
        for datagram in conn.datagrams_to_send():
            datagrams += 1
            transmit(peer[side.name].name, "zrtp", datagram)
        while (event := conn.next_event()) is not None:
            if isinstance(event, SrtpKeysReady):
                side.keys = event.keys
            elif isinstance(event, Secured) and side.secured is None:
                side.secured, side.secured_at, side.keys = event, now, event.keys
                order += 1
                heapq.heappush(queue, (now, order, side.name, "tick", None))
            elif isinstance(event, HandshakeFailed) and side.failed is None:
                side.failed, side.failed_at = event, now

    def start(side: Side) -> None:
        side.started = side.last_change = side.last_received = now
        before = side.conn.state
        side.conn.start(now)
        pump(side, before)

    start(a)
    b_started = False
    while now <= until and not (a.done and b.done and b_started):
        if not b_started and now >= start_b_at:
            start(b)
            b_started = True
        deadlines = [t for s in (a, b) if (t := s.conn.get_timer()) is not None]
        if queue:
            deadlines.append(queue[0][0])
        if not b_started:
            deadlines.append(start_b_at)
        if not deadlines:
            break
        now = max(now, min(deadlines))
        while queue and queue[0][0] <= now:
            _, _, target, kind, payload = heapq.heappop(queue)
            side = a if target == "a" else b
            if kind == "tick":
                if side.failed is None and side.conn.state is State.SECURE and side.media_sent < 50:
                    side.media_sent += 1
                    transmit(peer[target].name, "media", side.keys)
                    order += 1
                    heapq.heappush(queue, (now + MEDIA_INTERVAL, order, target, "tick", None))
                continue
            if target == "b" and not b_started:
                continue
            before = side.conn.state
            if kind == "zrtp":
                side.last_received = now
                side.conn.receive_datagram(payload, now)
            elif _valid_srtp(payload, side.keys):
                side.conn.srtp_authenticated(now)
            pump(side, before)
        for side in (a, b) if b_started else (a,):
            timer = side.conn.get_timer()
            if timer is not None and timer <= now:
                before = side.conn.state
                side.conn.handle_timer(now)
                pump(side, before)

    secured = a.secured is not None and b.secured is not None
    sas_agree = (
        secured
        and a.secured is not None
        and b.secured is not None
        and (
            a.secured.sas == b.secured.sas and a.secured.keys.local_key == b.secured.keys.remote_key
        )
    )
    failures = []
    for side in (a, b):
        if side.failed is not None and side.failed_at is not None:
            state = side.failed_in or State.IDLE
            failures.append(
                (
                    side.name,
                    side.failed.reason,
                    side.failed_at,
                    state.value,
                    _limit_ok(side, side.failed_at, state),
                )
            )
        elif not side.done:
            failures.append((side.name, "no verdict (hung)", now, side.conn.state.value, False))
    tts = None
    if secured and a.secured_at is not None and b.secured_at is not None:
        tts = max(a.secured_at, b.secured_at)
    return TrialResult(seed, label, secured, tts, failures, datagrams, sas_agree)


#: (label, a's configuration, b's configuration): key agreements and roles the campaigns
#: cycle through. Both sides offer one key agreement so that each is really used.
def _ka(name: str, **extra: Any) -> dict[str, Any]:
    return {"key_agreement_types": (name.encode(),), **extra}


SCENARIOS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("X255 auto/auto", _ka("X255"), _ka("X255")),
    ("X255 initiator/responder", _ka("X255", role="initiator"), _ka("X255", role="responder")),
    ("EC25 auto/auto", _ka("EC25"), _ka("EC25")),
    ("DH3k auto/auto", _ka("DH3k"), _ka("DH3k")),
    ("X448 responder/initiator", _ka("X448", role="responder"), _ka("X448", role="initiator")),
    ("DH2k auto/auto", _ka("DH2k"), _ka("DH2k")),
    (
        "EC38 auto/auto",
        _ka("EC38", hash_types=(b"S384",)),
        _ka("EC38", hash_types=(b"S384",)),
    ),
    ("defaults auto/auto", {}, {}),
]


def run_campaign(
    trials: int,
    conditions: Conditions = HOSTILE,
    *,
    first_seed: int = 0,
    scenarios: Sequence[tuple[str, dict[str, Any], dict[str, Any]]] = SCENARIOS,
) -> list[TrialResult]:
    results = []
    for i in range(trials):
        seed = first_seed + i
        label, a_cfg, b_cfg = scenarios[i % len(scenarios)]
        # The second side starts 0-300 ms later, as when the callee's media starts late.
        start_b = random.Random(-seed - 1).uniform(0.0, 0.3)
        results.append(
            run_trial(
                seed, conditions, a_config=a_cfg, b_config=b_cfg, start_b_at=start_b, label=label
            )
        )
    return results


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass
class Summary:
    trials: int
    secured: int
    tts_p50: float
    tts_p99: float
    tts_max: float
    tts_mean: float
    reasons: Counter[str] = field(default_factory=Counter)
    worst_failure_time: float = 0.0
    out_of_limits: int = 0
    sas_disagree: int = 0

    @property
    def ratio(self) -> float:
        return self.secured / self.trials if self.trials else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "trials": self.trials,
            "secured": self.secured,
            "secured_pct": round(100 * self.ratio, 2),
            "time_to_secure_s": {
                "p50": round(self.tts_p50, 3),
                "p99": round(self.tts_p99, 3),
                "max": round(self.tts_max, 3),
                "mean": round(self.tts_mean, 3),
            },
            "failure_reasons": dict(self.reasons.most_common()),
            "latest_failure_s": round(self.worst_failure_time, 3),
            "failures_outside_rfc_limits": self.out_of_limits,
            "secured_with_disagreeing_keys": self.sas_disagree,
        }


def summarize(results: Iterable[TrialResult]) -> Summary:
    results = list(results)
    times = [r.time_to_secure for r in results if r.time_to_secure is not None]
    reasons: Counter[str] = Counter()
    worst = 0.0
    out = 0
    for r in results:
        for _side, reason, at, state, ok in r.failures:
            reasons[f"{reason} [{state}]"] += 1
            worst = max(worst, at)
            out += not ok
    return Summary(
        trials=len(results),
        secured=sum(r.secured for r in results),
        tts_p50=percentile(times, 50),
        tts_p99=percentile(times, 99),
        tts_max=max(times, default=float("nan")),
        tts_mean=statistics.fmean(times) if times else float("nan"),
        reasons=reasons,
        worst_failure_time=worst,
        out_of_limits=out,
        sas_disagree=sum(r.secured and not r.sas_agree for r in results),
    )
