"""The engine of an unnamed pre-bound port (``await_name``) facing a further stream.

Sans-I/O, virtual time: a phone engine with a first stream's session sends its
Multistream Hello and Commit to an engine that does not know yet whose port it is
(tests/relay/test_prebound_video.py runs the same over the relay's sockets).
"""

from __future__ import annotations

import pytest

from pbx_zrtp.cache.memory import MemorySecretCache
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from pbx_zrtp.zrtp.connection import State, ZrtpConnection, ZrtpSession
from pbx_zrtp.zrtp.events import HandshakeFailed, Secured

PHONE_ZID = b"P" * 12
RELAY = ZrtpConfiguration(zid=b"R" * 12, mitm=True, cache_timeout=0.5)


def _kind(data: bytes) -> str:
    return data[16:24].decode("ascii", "replace").strip()


def _run(
    a: ZrtpConnection, b: ZrtpConnection, now: float, until: float
) -> tuple[float, list[tuple[str, str]]]:
    """Shuttle datagrams and fire timers until ``until`` (virtual seconds)."""
    seen: list[tuple[str, str]] = []
    while now < until:
        for x, y, tag in ((a, b, "a->b"), (b, a, "b->a")):
            for datagram in x.datagrams_to_send():
                seen.append((tag, _kind(datagram)))
                y.receive_datagram(datagram, now)
        for c in (a, b):
            timer = c.get_timer()
            if timer is not None and timer <= now:
                c.handle_timer(now)
        now += 0.01
    return now, seen


def _session() -> tuple[ZrtpSession, ZrtpSession]:
    phone = ZrtpConnection(ZrtpConfiguration(zid=PHONE_ZID), ssrc=1)
    relay = ZrtpConnection(RELAY, ssrc=2, cache=MemorySecretCache())
    phone.start(0.0)
    relay.start(0.0)
    _run(phone, relay, 0.0, 1.0)
    assert phone.session is not None and relay.session is not None
    return phone.session, relay.session


def _events(conn: ZrtpConnection) -> list[object]:
    out: list[object] = []
    while (event := conn.next_event()) is not None:
        out.append(event)
    return out


def _unnamed() -> ZrtpConnection:
    return ZrtpConnection(RELAY, ssrc=4, host_cache=True, await_name=True)


def test_a_held_multistream_commit_is_answered_once_the_session_is_adopted() -> None:
    phone_session, relay_session = _session()
    phone = ZrtpConnection(ZrtpConfiguration(zid=PHONE_ZID), ssrc=3, session=phone_session)
    unnamed = _unnamed()
    phone.start(0.0)
    unnamed.start(0.0)
    now, seen = _run(phone, unnamed, 0.0, 4.0)  # past cache_timeout too
    assert unnamed.holds_multistream_commit and unnamed.state is State.DISCOVERY
    assert ("b->a", "Error") not in seen and ("b->a", "Commit") not in seen
    assert unnamed.stats["commit_held_for_session"] >= 2  # and its retransmissions
    unnamed.adopt_session(relay_session, now)
    _run(phone, unnamed, now, now + 1.0)
    ours = [e for e in _events(unnamed) if isinstance(e, Secured)]
    theirs = [e for e in _events(phone) if isinstance(e, Secured)]
    assert ours and theirs and ours[0].multistream and ours[0].sas == theirs[0].sas


def test_a_held_multistream_commit_is_refused_when_named_as_a_first_stream() -> None:
    phone_session, _ = _session()
    phone = ZrtpConnection(ZrtpConfiguration(zid=PHONE_ZID), ssrc=3, session=phone_session)
    unnamed = _unnamed()
    phone.start(0.0)
    unnamed.start(0.0)
    now, _ = _run(phone, unnamed, 0.0, 0.3)
    assert unnamed.holds_multistream_commit
    unnamed.name_call("sip:9400@pbx", "sip:alice@pbx", now)
    failed = [e for e in _events(unnamed) if isinstance(e, HandshakeFailed)]
    assert failed and failed[0].error_code == 0x56 and "without a ZRTP session" in failed[0].reason
    assert [_kind(d) for d in unnamed.datagrams_to_send()] == ["Error"]


def test_an_exchange_past_discovery_cannot_become_a_stream() -> None:
    phone = ZrtpConnection(ZrtpConfiguration(zid=PHONE_ZID), ssrc=3)
    unnamed = _unnamed()
    phone.start(0.0)
    unnamed.start(0.0)
    _run(phone, unnamed, 0.0, 2.0)  # past cache_timeout: our DH Commit went out
    assert unnamed.state is not State.DISCOVERY and not unnamed.awaits_session
    with pytest.raises(ValueError, match="past discovery"):
        unnamed.adopt_session(_session()[1], 2.0)


def test_waiting_for_the_name_holds_dh_both_ways_past_cache_timeout() -> None:
    """wait_for_name: neither our DH Commit nor the answer to the phone's before
    the name; named as a call, the exchange goes on (the phone's Commit answered)."""
    phone = ZrtpConnection(
        ZrtpConfiguration(zid=PHONE_ZID, role="responder", responder_commit_wait=1.0), ssrc=3
    )
    unnamed = _unnamed()
    phone.start(0.0)
    unnamed.start(0.0)
    now, seen = _run(phone, unnamed, 0.0, 0.05)
    unnamed.wait_for_name()
    now, seen = _run(phone, unnamed, now, 3.0)  # the phone commits by DH at 1 s
    assert ("a->b", "Commit") in seen and ("b->a", "DHPart1") not in seen
    assert ("b->a", "Commit") not in seen and unnamed.state is State.DISCOVERY
    unnamed.name_call("sip:9400@pbx", "sip:alice@pbx", now)
    _run(phone, unnamed, now, now + 1.0)
    secured = [e for e in _events(unnamed) if isinstance(e, Secured)]
    assert secured and not secured[0].multistream


def test_wait_for_name_is_a_no_op_on_a_named_engine() -> None:
    engine = ZrtpConnection(RELAY, ssrc=5, cache=MemorySecretCache())
    engine.wait_for_name()
    assert not engine._dh_held
