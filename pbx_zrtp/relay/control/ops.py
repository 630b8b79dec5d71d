"""The control API's operations, in one table (``OPS``).

Each op is one function: it reads its fields with the one field reader
(``pbx_zrtp.config.fields``; a bad or unknown field is a ``BadRequest`` naming
it) and does its work on the relay. Adding an op is one function here and, for
``pbx-zrtp ctl``, one entry in ``pbx_zrtp.relay.ctl.COMMANDS``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from pbx_zrtp.calls import Address, BadRequest, CallReport, CallRequest, Policy
from pbx_zrtp.config.fields import (
    Converter,
    FieldReader,
    Invalid,
    flag,
    integer,
    policy,
    text,
)
from pbx_zrtp.relay.control.protocol import AUTH_FAILURE_DELAY
from pbx_zrtp.relay.core import Relay, Subscription

log = logging.getLogger("pbx_zrtp.relay.control")


def short(value: str, limit: int = 40) -> str:
    """A client-supplied name, shortened for an error message."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


class Request(FieldReader):
    """The fields of one request: the first problem is a BadRequest naming the field."""

    def __init__(self, op: str, fields: dict[str, object]) -> None:
        super().__init__(
            fields,
            label=lambda key: f"field {key!r} ",
            error=BadRequest,
            absent=lambda key: f"missing field {key!r} for op {op!r}",
        )
        self.op = op

    def finish(self, unknown: object = None) -> None:
        leftovers = self.leftovers()
        if leftovers:
            names = ", ".join(short(name) for name in leftovers[:5])
            raise BadRequest(f"unknown field {names} for op {self.op!r}")

    def call_id(self) -> str:
        return self.take("call_id", _NAME, "", missing="")


_NAME = text(max_length=200, empty=False, control_characters=False)
_URI = text(max_length=1024, control_characters=False)


def _ip_address(like: str | None) -> Converter[str]:
    """An IP address, canonical (the relay compares it with packet sources); ``like``:
    of that address's family."""
    as_text = text(max_length=64, control_characters=False)

    def convert(value: object) -> str:
        try:
            address = ipaddress.ip_address(as_text(value))
        except ValueError:
            raise Invalid("must be an IP address (not a host name)") from None
        if like is not None:
            try:
                version = ipaddress.ip_address(like).version
            except ValueError:
                version = address.version  # the relay's address is a name: cannot tell
            if version != address.version:
                raise Invalid(f"must be an IPv{version} address, like the relay's own")
        return str(address)

    return convert


class Session(Protocol):
    """What an op sees of the connection it arrived on."""

    relay: Relay
    peer: str
    authenticated: bool
    close_after_reply: bool
    subscription: Subscription | None

    def check_token(self, token: str) -> bool: ...


Op = Callable[[Session, Request], Awaitable[object]]
#: Every op of the protocol, by name.
OPS: dict[str, Op] = {}


def op(name: str) -> Callable[[Op], Op]:
    def register(function: Op) -> Op:
        OPS[name] = function
        return function

    return register


def _report(report: CallReport) -> dict[str, object]:
    return report.to_wire()


@op("auth")
async def _auth(session: Session, args: Request) -> object:
    token = args.take("token", text(max_length=4096), "", missing="")
    args.finish()
    if session.check_token(token):
        session.authenticated = True
        return "authenticated"
    log.warning("control client %s sent a wrong token: disconnected", session.peer)
    await asyncio.sleep(AUTH_FAILURE_DELAY)
    session.close_after_reply = True
    raise BadRequest("authentication failed: closing")


@op("ping")
async def _ping(session: Session, args: Request) -> object:
    args.finish()
    return "pong"


@op("create")
async def _create(session: Session, args: Request) -> object:
    relay = session.relay
    call_id = args.call_id()
    port = args.take("port", integer(1, 65535), 0, missing="")
    wanted = args.take("policy", _policy, Policy.REQUIRED, missing="")
    pbx_host = args.take("pbx_host", _ip_address(relay.layout.relay_host), None)
    # The PBX's RTCP goes to pbx_port + 1, which must be a port too.
    pbx_port = args.take("pbx_port", integer(1, 65534), None)
    self_uri = args.take("self_uri", _URI, "")
    peer_uri = args.take("peer_uri", _URI, "")
    payload_type = args.take("payload_type", integer(0, 127), 0)
    phone_host = args.take("phone_host", _ip_address(None), None)
    phone_port = args.take("phone_port", integer(1, 65535), None)
    bridge = args.take("bridge", text(max_length=200, control_characters=False), "")
    enroll = args.take("enroll", flag(), False)
    stream = args.take("stream", text(max_length=16, control_characters=False), "")
    args.finish()
    if (phone_host is None) != (phone_port is None):
        raise BadRequest("fields 'phone_host' and 'phone_port' go together: give both or none")
    phone_hint: Address | None = None
    if phone_host is not None and phone_port is not None:
        phone_hint = (phone_host, phone_port)
    request = CallRequest(
        call_id,
        port,
        wanted,
        self_uri=self_uri,
        peer_uri=peer_uri,
        phone_hint=phone_hint,
        bridge=bridge,
        enroll=enroll,
        pbx_host=pbx_host,
        pbx_port=pbx_port,
        payload_type=payload_type,
        stream=stream,
    )
    return _report(await relay.admit(request))


def _policy(value: object) -> Policy:
    if value is None:
        raise Invalid(f"must be one of {_POLICIES}, got null")
    return policy()(value)


_POLICIES = ", ".join(repr(p.value) for p in Policy)


@op("update")
async def _update(session: Session, args: Request) -> object:
    call_id = args.call_id()
    wanted = args.take("policy", _policy, Policy.REQUIRED, missing="")
    args.finish()
    return _report(session.relay.update(call_id, policy=wanted))


@op("rebridge")
async def _rebridge(session: Session, args: Request) -> object:
    call_id = args.call_id()
    bridge = args.take("bridge", text(max_length=200, control_characters=False), "", missing="")
    args.finish()
    return _report(session.relay.rebridge(call_id, bridge))


@op("delete")
async def _delete(session: Session, args: Request) -> object:
    call_id = args.call_id()
    reason = args.take("reason", text(max_length=200, control_characters=False), "")
    args.finish()
    return _report(session.relay.delete(call_id, reason or "hangup"))


@op("show")
async def _show(session: Session, args: Request) -> object:
    call_id = args.call_id()
    args.finish()
    return _report(session.relay.get(call_id))


@op("list")
async def _list(session: Session, args: Request) -> object:
    args.finish()
    return [_report(report) for report in session.relay.calls()]


@op("verify")
async def _verify(session: Session, args: Request) -> object:
    call_id = args.call_id()
    verified = args.take("verified", flag(), True)
    args.finish()
    session.relay.verify(call_id, verified)
    return _report(await session.relay.stored(call_id))  # once the V flag is saved


@op("enroll")
async def _enroll(session: Session, args: Request) -> object:
    call_id = args.call_id()
    args.finish()
    return _report(await session.relay.enroll(call_id))


@op("unenroll")
async def _unenroll(session: Session, args: Request) -> object:
    call_id = args.take("call_id", text(max_length=200, control_characters=False), None)
    peer_zid = args.take("peer_zid", text(max_length=24, control_characters=False), None)
    args.finish()
    if (call_id is None) == (peer_zid is None):
        raise BadRequest("unenroll takes 'call_id' or 'peer_zid' (24 hex digits), not both")
    zid: bytes | None = None
    if peer_zid is not None:
        try:
            zid = bytes.fromhex(peer_zid)
        except ValueError:
            zid = b""
        if len(zid) != 12:
            raise BadRequest("field 'peer_zid' must be 24 hex digits")
    return {"erased": await session.relay.unenroll(call_id=call_id, peer_zid=zid)}


@op("enrolled")
async def _enrolled(session: Session, args: Request) -> object:
    args.finish()
    return [
        {"self_zid": own.hex(), "peer_zid": peer.hex(), "expires": expires}
        for own, peer, expires in await session.relay.enrolled_phones()
    ]


@op("stats")
async def _stats(session: Session, args: Request) -> object:
    args.finish()
    return session.relay.stats()


@op("subscribe")
async def _subscribe(session: Session, args: Request) -> object:
    args.finish()
    if session.subscription is not None:
        raise BadRequest("this connection is already subscribed")
    session.subscription = session.relay.subscribe()  # events queue until the reply is out
    return "subscribed"


__all__ = ["OPS", "Request", "Session", "op", "short"]
