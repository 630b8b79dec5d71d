"""The call vocabulary: what the relay, the PBX adapters and the control API say
about a call, and the contract between an adapter and "the relay".

It sits below the relay and the adapters and imports nothing of theirs (no
sockets, no crypto, no SRTP): naming a policy or parsing a configuration must not
load the media path. Values are typed here once so no ``dict[str, Any]`` crosses
the relay/adapter boundary; the control API's JSON is made and read only by
``CallRequest.to_wire``, ``CallReport.to_wire`` and ``CallReport.from_wire``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Protocol, TypedDict

Address = tuple[str, int]


class Policy(enum.StrEnum):
    """What the dialplan asked for (a ``str`` so a report compares with its wire form)."""

    OFF = "off"  # pure pass-through, byte-exact, no ZRTP
    OPTIONAL = "optional"  # secure if the phone speaks ZRTP, else clear after a time-out
    REQUIRED = "required"  # nothing clear ever flows; "failed" if not secure in time

    @classmethod
    def named(cls, value: object) -> Policy:
        """The policy ``value`` names exactly; ValueError for anything else."""
        if not isinstance(value, str):
            raise ValueError(f"{value!r} is not a policy")
        return cls(value)


class CallState(enum.StrEnum):
    IDLE = "idle"  # a pre-bound port without a call
    OFF = "off"
    PENDING = "pending"
    SECURE = "secure"
    CLEAR = "clear"
    FAILED = "failed"
    ENDED = "ended"


# ---------------------------------------------------------------------- errors


class RelayError(Exception):
    """A relay request that did not happen; the message is safe to show the caller."""


class NoSuchCall(RelayError):
    """The relay has no call by that id (never created, ended, or lost in a restart)."""


class BadRequest(RelayError):
    """The relay refuses the request as asked: a bad value, a port already in use,
    or a step the call's state does not allow (verifying a SAS before secure)."""


class RelayUnavailable(RelayError):
    """No relay can take the request: not connected, not answering, none up."""


# ---------------------------------------------------------------------- requests


@dataclass
class CallIdentity:
    """What the adapter tells the relay about the call (the mirror keeps it, and a
    pre-bound port's call gets its real name and details later)."""

    call_id: str
    policy: Policy
    self_uri: str = ""  # the extension the phone talks to (cache key, like bzrtp)
    peer_uri: str = ""  # the phone
    payload_type: int = 0  # codec for priming: 0 PCMU, 8 PCMA
    phone_hint: Address | None = None  # the phone's SDP address, if known
    #: Legs of one bridged call share a bridge id (Asterisk's Linkedid, FreeSWITCH's
    #: Channel-Call-UUID): the relay relays the SAS between them (§7.3).
    bridge: str = ""
    #: Invite the phone to enroll with this PBX (E flag in Confirm, §7.3.1).
    enroll: bool = False


@dataclass(frozen=True)
class CallRequest:
    """An adapter asks the relay to mirror the PBX's RTP port ``port`` for a call."""

    call_id: str
    port: int
    policy: Policy
    self_uri: str = ""
    peer_uri: str = ""
    #: Accept the phone's media only from this host (its SIP signalling address).
    phone_hint: Address | None = None
    bridge: str = ""
    enroll: bool = False
    #: Where the PBX's RTP is, when not the relay's configured PBX address and port.
    pbx_host: str | None = None
    pbx_port: int | None = None
    payload_type: int = 0
    #: "" for the call's first stream (audio); a name ("video") adds a further
    #: stream of the existing call ``call_id`` on ``port``, keyed by Multistream.
    stream: str = ""

    def identity(self) -> CallIdentity:
        return CallIdentity(
            self.call_id,
            self.policy,
            self.self_uri,
            self.peer_uri,
            self.payload_type,
            self.phone_hint,
            self.bridge,
            self.enroll,
        )

    def to_wire(self) -> dict[str, object]:
        """The control API's ``create`` fields (defaults left out, as old clients sent)."""
        wire: dict[str, object] = {
            "call_id": self.call_id,
            "port": self.port,
            "policy": self.policy.value,
            "self_uri": self.self_uri,
            "peer_uri": self.peer_uri,
        }
        if self.bridge:
            wire["bridge"] = self.bridge
        if self.enroll:
            wire["enroll"] = True
        if self.phone_hint is not None:
            wire["phone_host"], wire["phone_port"] = self.phone_hint
        if self.pbx_host is not None:
            wire["pbx_host"] = self.pbx_host
        if self.pbx_port is not None:
            wire["pbx_port"] = self.pbx_port
        if self.payload_type:
            wire["payload_type"] = self.payload_type
        if self.stream:
            wire["stream"] = self.stream
        return wire


# ---------------------------------------------------------------------- reports


class TrafficCounters(TypedDict):
    """A call's packets and drops (a dict on the wire and in reports)."""

    phone_in: int
    phone_in_bytes: int
    phone_out: int
    phone_out_bytes: int
    pbx_in: int
    pbx_in_bytes: int
    pbx_out: int
    pbx_out_bytes: int
    priming_sent: int
    drops: dict[str, int]


TRAFFIC_FIELDS = (
    "phone_in",
    "phone_in_bytes",
    "phone_out",
    "phone_out_bytes",
    "pbx_in",
    "pbx_in_bytes",
    "pbx_out",
    "pbx_out_bytes",
    "priming_sent",
)


def no_traffic() -> TrafficCounters:
    return TrafficCounters(
        phone_in=0,
        phone_in_bytes=0,
        phone_out=0,
        phone_out_bytes=0,
        pbx_in=0,
        pbx_in_bytes=0,
        pbx_out=0,
        pbx_out_bytes=0,
        priming_sent=0,
        drops={},
    )


def _traffic_from_wire(value: object) -> TrafficCounters:
    counters = no_traffic()
    if not isinstance(value, Mapping):
        return counters
    for name in TRAFFIC_FIELDS:
        number = value.get(name, 0)
        if type(number) is int:
            counters[name] = number  # type: ignore[literal-required]
    drops = value.get("drops", {})
    if isinstance(drops, Mapping):
        counters["drops"] = {
            str(k): v for k, v in drops.items() if isinstance(k, str) and type(v) is int
        }
    return counters


@dataclass(frozen=True)
class StreamReport:
    """A further stream of a call (video): its own port, latch, SRTP state and
    counters, keyed by Multistream from the call's first stream (never any key)."""

    name: str
    port: int
    state: CallState
    reason: str = ""
    #: "Mult" once secure: keyed from the first stream's session (RFC 6189 §4.4.3).
    key_agreement: str = ""
    cipher: str = ""
    auth_tag: str = ""
    #: The call's SAS (a Multistream stream has the first stream's).
    sas: str = ""
    phone: str = ""
    handshake_ms: float | None = None
    counters: TrafficCounters = field(default_factory=no_traffic)

    @property
    def secure(self) -> bool:
        return self.state is CallState.SECURE

    def to_wire(self) -> dict[str, object]:
        wire: dict[str, object] = {f.name: getattr(self, f.name) for f in fields(self)}
        wire["state"] = self.state.value
        wire["counters"] = {**self.counters, "drops": dict(self.counters["drops"])}
        return wire

    @classmethod
    def from_wire(cls, data: object) -> StreamReport:
        if not isinstance(data, Mapping):
            raise ValueError("a stream report must be an object")
        name, port = data.get("name"), data.get("port")
        if not isinstance(name, str) or not name:
            raise ValueError("a stream report needs a name")
        if type(port) is not int:
            raise ValueError("a stream's port must be an integer")
        value = data.get("state")
        try:
            state = CallState(str(value))
        except ValueError:
            raise ValueError(f"unknown stream state {value!r}") from None
        texts: dict[str, str] = {}
        for key in ("reason", "key_agreement", "cipher", "auth_tag", "sas", "phone"):
            value = data.get(key, "")
            if not isinstance(value, str):
                raise ValueError(f"stream {key} must be a string")
            texts[key] = value
        handshake = data.get("handshake_ms")
        if handshake is not None and not isinstance(handshake, int | float):
            raise ValueError("stream handshake_ms must be a number or null")
        return cls(
            name=name,
            port=port,
            state=state,
            handshake_ms=None if handshake is None else float(handshake),
            counters=_traffic_from_wire(data.get("counters")),
            **texts,
        )


@dataclass(frozen=True)
class CallReport:
    """A call's state as reported to adapters and admins (never any key)."""

    call_id: str
    port: int
    state: CallState
    policy: Policy | None  # None: no call on this (pre-bound) port
    reason: str = ""
    sas: str = ""
    sas_type: str = ""
    sas_verified: bool = False
    key_agreement: str = ""
    #: The key agreement is post-quantum (a KEM-mode hybrid such as X1M1).
    pq: bool = False
    hash: str = ""
    cipher: str = ""
    auth_tag: str = ""
    peer_zid: str = ""
    peer_client_id: str = ""
    cache_mismatch: bool = False
    previously_verified: bool = False
    handshake_ms: float | None = None
    #: A pending call: seconds from this report until the relay's time-out decides it
    #: (``clear`` or ``failed``) at the latest; None once decided (or from an older relay).
    decides_in: float | None = None
    phone: str = ""
    #: In an ``ended`` report: the state the call had reached before it ended.
    last_state: str = ""
    bridge: str = ""
    #: The phone proved a pbxsecret shared with us (it trusts this PBX, §7.3),
    #: or enrolled during this call.
    enrolled: bool = False
    enrollment_offered: bool = False
    #: What the user on this leg reads, and whether the far end reads the same:
    #: "end-to-end" (SAS relayed between the legs) or "pbx-leg" (this leg only).
    displayed_sas: str = ""
    sas_scope: str = ""
    #: This leg's part in the SAS relay: "", "none" (no leg enrolled), "target"
    #: (this phone shows the far end's SAS) or "source" (the far end shows ours),
    #: then ":pending", ":acknowledged" or ":unacknowledged" for what we sent.
    sas_relay: str = ""
    #: The retained-secret store failed for this call (disk full, database down):
    #: the call is secure but key continuity with the phone was not saved.
    cache_error: str = ""
    counters: TrafficCounters = field(default_factory=no_traffic)
    #: The call's further streams (video), in the order they were added.
    streams: tuple[StreamReport, ...] = ()

    @property
    def secure(self) -> bool:
        return self.state is CallState.SECURE

    def stream(self, name: str) -> StreamReport | None:
        """The further stream ``name`` of this call, if it has one."""
        return next((s for s in self.streams if s.name == name), None)

    @classmethod
    def failed(cls, call_id: str, reason: str, policy: Policy | None = None) -> CallReport:
        """The adapter could not set the call up (no port, no relay): ``failed``, or
        ``off`` for a call that asked for no ZRTP (nothing failed that it wanted)."""
        state = CallState.OFF if policy is Policy.OFF else CallState.FAILED
        return cls(call_id=call_id, port=0, state=state, policy=policy, reason=reason)

    @classmethod
    def lost(cls, call_id: str, reason: str) -> CallReport:
        """The relay holding the call went away with it (restarted, unreachable)."""
        return cls(call_id=call_id, port=0, state=CallState.FAILED, policy=None, reason=reason)

    def to_wire(self) -> dict[str, object]:
        """The control API's JSON object for this report (version 1 field names)."""
        wire: dict[str, object] = {f.name: getattr(self, f.name) for f in fields(self)}
        wire["state"] = self.state.value
        wire["policy"] = self.policy.value if self.policy is not None else ""
        wire["counters"] = {**self.counters, "drops": dict(self.counters["drops"])}
        wire["streams"] = [stream.to_wire() for stream in self.streams]
        return wire

    @classmethod
    def from_wire(cls, data: object) -> CallReport:
        """A report read from the control API; ValueError names what is wrong.
        Fields a newer relay adds are ignored; missing optional ones take defaults."""
        if not isinstance(data, Mapping):
            raise ValueError("a call report must be an object")
        values: dict[str, object] = {}
        for spec in fields(cls):
            if spec.name not in data:
                continue
            value = data[spec.name]
            if spec.name == "state":
                try:
                    values["state"] = CallState(value)
                except ValueError:
                    raise ValueError(f"unknown call state {value!r}") from None
            elif spec.name == "policy":
                try:
                    values["policy"] = Policy(value) if value else None
                except ValueError:
                    raise ValueError(f"unknown policy {value!r}") from None
            elif spec.name == "counters":
                values["counters"] = _traffic_from_wire(value)
            elif spec.name == "streams":
                if not isinstance(value, list):
                    raise ValueError("streams must be a list")
                values["streams"] = tuple(StreamReport.from_wire(item) for item in value)
            elif spec.name in ("handshake_ms", "decides_in"):
                if value is not None and not isinstance(value, int | float):
                    raise ValueError(f"{spec.name} must be a number or null")
                values[spec.name] = None if value is None else float(value)
            elif spec.name == "port":
                if type(value) is not int:
                    raise ValueError("port must be an integer")
                values["port"] = value
            else:
                expected = bool if isinstance(spec.default, bool) else str
                if not isinstance(value, expected):
                    raise ValueError(f"{spec.name} must be a {expected.__name__}")
                values[spec.name] = value
        for required in ("call_id", "state"):
            if required not in values:
                raise ValueError(f"a call report needs {required}")
        values.setdefault("port", 0)
        values.setdefault("policy", None)
        return cls(**values)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- the relay, for an adapter

StateCallback = Callable[[CallReport], None]
LinkCallback = Callable[[bool], None]


class RelayDirectory(Protocol):
    """Several relays behind one handle: what a PBX shows its admins and dialplan."""

    def on_status(self, callback: Callable[[], None]) -> None:
        """Told whenever a relay goes up or down or its load changes."""

    def status_lines(self) -> dict[str, str]:
        """One human line per relay, by name."""

    def advertise(self) -> dict[str, str]:
        """Per group, the relay address a PBX should advertise for its next call."""


class RelayHandle(Protocol):
    """How an adapter talks to "the relay": in this process, over the control API,
    or a pool of relays. Every state change of a call is pushed to ``on_state``."""

    @property
    def relay_host(self) -> str:
        """R, the address the PBX advertises to phones."""

    @property
    def connected(self) -> bool: ...

    @property
    def directory(self) -> RelayDirectory | None:
        """The relays' status, when this handle stands for several (a pool)."""

    def serves(self, address: str) -> bool:
        """Whether a phone sent to ``address`` reaches this relay (or one of a pool)."""

    def choose(self, call_id: str, *, group: str = "", address: str = "", bridge: str = "") -> None:
        """Place a new call on a relay of ``group`` (at ``address`` when the PBX
        already advertised one); raises RelayUnavailable."""

    def on_state(self, callback: StateCallback) -> None: ...

    def on_link(self, callback: LinkCallback) -> None:
        """Told True when the control connection comes up, False when it is lost."""

    async def create(self, request: CallRequest) -> CallReport: ...

    async def update(self, call_id: str, policy: Policy) -> CallReport: ...

    async def rebridge(self, call_id: str, bridge: str) -> CallReport:
        """The call's leg now shares bridge id ``bridge`` with the leg it talks to
        ("" for none): the relay re-links the SAS relay (transfer, pickup, park)."""

    async def delete(self, call_id: str, reason: str) -> CallReport | None:
        """The final report; None if the relay has no such call or cannot be
        reached (a mirror left behind is deleted by the next resync)."""

    async def verify(self, call_id: str, verified: bool) -> CallReport: ...

    async def enroll(self, call_id: str) -> CallReport:
        """The user confirmed the SAS on an enrollment call: store the pbxsecret."""

    async def unenroll(self, call_id: str) -> None:
        """Forget the pbxsecret of this call's phone."""

    async def show(self, call_id: str) -> CallReport | None:
        """The call's report; None if the relay has no such call."""

    async def calls(self) -> list[CallReport]: ...

    async def live_calls(self) -> int:
        """Calls on the relay from any adapter (a pool's load figure)."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


__all__ = [
    "Address",
    "BadRequest",
    "CallIdentity",
    "CallReport",
    "CallRequest",
    "CallState",
    "LinkCallback",
    "NoSuchCall",
    "Policy",
    "RelayDirectory",
    "RelayError",
    "RelayHandle",
    "RelayUnavailable",
    "StateCallback",
    "StreamReport",
    "TrafficCounters",
    "no_traffic",
]
