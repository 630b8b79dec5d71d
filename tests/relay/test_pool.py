"""A pool of relays: placement by group, weight and load; a relay that goes away,
comes back with its calls, or comes back restarted without them. Real relays behind
real control servers on Unix sockets; no mocks."""

from __future__ import annotations

import asyncio
import os
import pathlib
from collections.abc import Callable
from typing import Any

import pytest

from pbx_zrtp.calls import CallReport, CallRequest, Policy, RelayUnavailable
from pbx_zrtp.config import ConfigError
from pbx_zrtp.config.relays import RelayEntry, parse_relays
from pbx_zrtp.relay.control import ControlClient
from pbx_zrtp.relay.control.server import ControlServer
from pbx_zrtp.relay.core import Relay
from pbx_zrtp.relay.handle import RemoteRelay
from pbx_zrtp.relay.pool import RelayPool
from tests.relay.helpers import RELAY_HOST, free_even_port, make_relay


def run(coro: Any) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))


async def until(predicate: Callable[[], bool], timeout: float = 8.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


class Site:
    """One relay process's worth: a relay and its control socket (restartable)."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = str(path)
        self.relay: Relay = make_relay()
        self.server: ControlServer | None = None

    async def up(self, *, fresh: bool = False) -> None:
        if fresh:  # a restarted relay: same address and socket, no calls
            self.relay = make_relay()
        self.server = ControlServer(self.relay)
        await self.server.start_unix(self.path)

    async def control_down(self) -> None:
        assert self.server is not None
        await self.server.close()
        self.server = None

    async def down(self) -> None:
        if self.server is not None:
            await self.control_down()
        await self.relay.close()


def pool_of(sites: dict[str, tuple[Site, str, float]], **kwargs: Any) -> RelayPool:
    members = [
        (RelayEntry(name, f"unix:{site.path}", RELAY_HOST, group, weight), None)
        for name, (site, group, weight) in sites.items()
    ]
    return RelayPool(
        [(entry, RemoteRelay(entry.control, entry.address)) for entry, _ in members], **kwargs
    )


def test_parse_relays_checks_every_field(tmp_path: pathlib.Path) -> None:
    entries = parse_relays(
        "asterisk",
        [
            {"name": "a", "control": "unix:/run/a.sock", "address": "192.0.2.2"},
            {"control": "unix:/run/b.sock", "address": "192.0.2.3", "group": "gold", "weight": 3},
        ],
    )
    assert [(e.name, e.group, e.weight) for e in entries] == [
        ("a", "default", 1.0),
        ("relay2", "gold", 3.0),
    ]
    token = tmp_path / "token"
    token.write_text("x" * 20)
    os.chmod(token, 0o600)
    tcp = parse_relays(
        "freeswitch",
        [{"control": "tcp:127.0.0.1:5097", "address": "::1", "token_file": str(token)}],
    )
    assert tcp[0].token == "x" * 20 and "x" * 20 not in repr(tcp[0])
    bad: list[tuple[object, str]] = [
        ([], "one [[asterisk.relays]] table per relay"),
        ([{"control": "/run/a.sock", "address": "192.0.2.2"}], "relays[0].control"),
        ([{"control": "unix:/a", "address": "relay.example"}], "relays[0].address"),
        ([{"control": "unix:/a", "address": "192.0.2.2", "weight": 0}], "relays[0].weight"),
        ([{"control": "unix:/a", "address": "192.0.2.2", "group": "a b"}], "relays[0].group"),
        ([{"control": "unix:/a", "address": "192.0.2.2", "colour": 1}], "relays[0].colour"),
        ([{"control": "tcp:127.0.0.1:1", "address": "192.0.2.2"}], "relays[0].token_file"),
        (
            [{"name": "a", "control": "unix:/a", "address": "192.0.2.2"}] * 2,
            "'a' is used twice",
        ),
    ]
    for value, message in bad:
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            parse_relays("asterisk", value)
    os.chmod(token, 0o644)
    with pytest.raises(ConfigError, match="readable by other users"):
        parse_relays(
            "asterisk", [{"control": "tcp:h:1", "address": "192.0.2.2", "token_file": str(token)}]
        )


def test_calls_spread_by_group_weight_and_the_relays_own_load(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        a, b, c = Site(tmp_path / "a.sock"), Site(tmp_path / "b.sock"), Site(tmp_path / "c.sock")
        for site in (a, b, c):
            await site.up()
        pool = pool_of(
            {"a": (a, "default", 1), "b": (b, "default", 2), "c": (c, "gold", 1)},
            stats_interval=0.1,
        )
        await pool.start()
        try:
            assert [s["up"] for s in pool.status()] == [True, True, True]
            for n in range(6):
                await pool.create(CallRequest(f"d{n}", free_even_port(), Policy.OPTIONAL))
            # weight 2 takes twice the calls of weight 1
            assert len(a.relay.calls()) == 2 and len(b.relay.calls()) == 4
            pool.choose("g1", group="gold")
            await pool.create(CallRequest("g1", free_even_port(), Policy.OPTIONAL))
            assert [r.call_id for r in c.relay.calls()] == ["g1"]
            with pytest.raises(RelayUnavailable, match="no relay in group silver"):
                pool.choose("s1", group="silver")
            # another adapter loads relay b: the pool learns it from b's stats
            async with ControlClient(f"unix:{b.path}") as other:
                for n in range(4):
                    await other.request(
                        "create", call_id=f"o{n}", port=free_even_port(), policy="off"
                    )
                await until(lambda: pool.status()[1]["other_calls"] == 4)
                await pool.create(CallRequest("d6", free_even_port(), Policy.OPTIONAL))
                assert pool.holder("d6") == "a"  # a: 3 calls/1, b: 8 calls/2
            lines = pool.status_lines()
            assert lines["a"].startswith("up group=default") and "calls=3" in lines["a"]
            # every operation reaches the relay that holds the call, and only that one
            await pool.update("d6", Policy.REQUIRED)
            assert a.relay.get("d6").policy == "required"
            final = await pool.delete("d6", "hangup")
            assert final is not None and final.state == "ended"
            assert await pool.show("d6") is None
            # a mirror deleted behind the adapter's back: its call is lost, and said so
            reports: list[CallReport] = []
            pool.on_state(reports.append)
            assert pool.holder("d0") == "a"
            async with ControlClient(f"unix:{a.path}") as admin:
                await admin.request("delete", call_id="d0")
            await until(lambda: any(r.state == "failed" for r in reports))
            assert [r for r in reports if r.state == "failed"] == [
                CallReport.lost("d0", "relay a ended the call")
            ]
        finally:
            await pool.close()
            for site in (a, b, c):
                await site.down()

    run(scenario())


def test_a_relay_that_goes_away_and_comes_back(tmp_path: pathlib.Path) -> None:
    """Control connection lost, relay alive: the call carries on. Relay restarted:
    its calls are reported failed at once, naming the relay."""

    async def scenario() -> None:
        a, b = Site(tmp_path / "a.sock"), Site(tmp_path / "b.sock")
        await a.up()
        await b.up()
        pool = pool_of({"a": (a, "default", 1), "b": (b, "default", 1)}, grace=10)
        reports: list[CallReport] = []
        pool.on_state(reports.append)
        await pool.start()
        try:
            await pool.create(
                CallRequest("x", free_even_port(), Policy.OFF)
            )  # no time-out of its own
            assert pool.holder("x") == "a"
            await a.control_down()  # the connection drops; the relay keeps the mirror
            await until(lambda: not pool.status()[0]["up"])
            await pool.create(CallRequest("y", free_even_port(), Policy.OFF))
            assert pool.holder("y") == "b"  # new calls avoid a relay that is down
            await a.up()
            await until(lambda: pool.status()[0]["up"])
            assert not [r for r in reports if r.call_id == "x" and r.state == "failed"]
            assert pool.holder("x") == "a"
            assert any(r.call_id == "x" for r in reports)  # state re-sent on reconnect

            await a.down()  # kill: the relay and its mirrors are gone...
            await until(lambda: not pool.status()[0]["up"])
            await a.up(fresh=True)  # ...and it comes back empty
            await until(lambda: any(r.state == "failed" for r in reports))
            (lost,) = [r for r in reports if r.state == "failed"]
            assert lost.call_id == "x"
            assert lost.reason == "relay a restarted and lost the call"
            assert pool.holder("x") is None and pool.holder("y") == "b"
            assert await pool.delete("x", "hangup") is None  # the PBX hangs up later: fine
        finally:
            await pool.close()
            await a.down()
            await b.down()

    run(scenario())


def test_an_unreachable_relay_loses_its_calls_after_the_grace_time(
    tmp_path: pathlib.Path,
) -> None:
    async def scenario() -> None:
        a = Site(tmp_path / "a.sock")
        await a.up()
        pool = pool_of({"a": (a, "default", 1)}, grace=0.5)
        reports: list[CallReport] = []
        pool.on_state(reports.append)
        await pool.start()
        try:
            await pool.create(CallRequest("x", free_even_port(), Policy.OFF))
            closing = asyncio.ensure_future(a.control_down())
            await until(lambda: not pool.status()[0]["up"])
            loop = asyncio.get_running_loop()
            lost_from = loop.time()
            await until(lambda: any(r.state == "failed" for r in reports))
            assert 0.45 <= loop.time() - lost_from < 3
            await closing
            failed = [r for r in reports if r.state == "failed"]
            assert failed == [CallReport.lost("x", "relay a unreachable for 0.5 s")]
            with pytest.raises(RelayUnavailable, match=r"no relay of group default is up"):
                pool.choose("z")
            await pool.delete("x", "hangup")  # the PBX hung up meanwhile
            assert [r.call_id for r in a.relay.calls()] == ["x"]
            await a.up()  # back, still holding the mirror of a call declared lost
            await until(lambda: not a.relay.calls())  # deleted, not resurrected
            assert pool.status()[0]["up"]
        finally:
            await pool.close()
            await a.down()

    run(scenario())


def test_the_adapter_sections_take_relays_and_a_grace_time() -> None:
    from pbx_zrtp.asterisk.config import parse_asterisk
    from pbx_zrtp.freeswitch.config import parse_freeswitch

    relays = [{"name": "a", "control": "unix:/run/a.sock", "address": "192.0.2.2"}]
    ast = parse_asterisk({"secret": "s", "relays": relays, "relay_grace": 0.5})
    assert [e.name for e in ast.relays] == ["a"] and ast.relay_grace == 0.5
    fs = parse_freeswitch({"relays": relays})
    assert fs.relays[0].address == "192.0.2.2" and fs.relay_grace == 2.0
    with pytest.raises(ConfigError, match=r"freeswitch\.relay_grace"):
        parse_freeswitch({"relay_grace": -1})
    assert parse_asterisk({"secret": "s"}).relays == []  # one relay, as before


def test_legs_of_one_bridge_go_to_the_same_relay(tmp_path: pathlib.Path) -> None:
    """Only a relay that holds both legs can relay the SAS between them (§7.3)."""

    async def scenario() -> None:
        a, b = Site(tmp_path / "a.sock"), Site(tmp_path / "b.sock")
        for site in (a, b):
            await site.up()
        pool = pool_of({"a": (a, "default", 1), "b": (b, "default", 1)}, stats_interval=0.1)
        await pool.start()
        try:
            await pool.create(CallRequest("leg-a", free_even_port(), Policy.OFF, bridge="call-1"))
            first = pool.holder("leg-a")
            busy = a if first == "a" else b
            index = 0 if first == "a" else 1
            async with ControlClient(f"unix:{busy.path}") as other:  # another adapter's calls
                for n in range(4):
                    await other.request(
                        "create", call_id=f"o{n}", port=free_even_port(), policy="off"
                    )
                await until(lambda: pool.status()[index]["other_calls"] == 4)
                await pool.create(CallRequest("solo", free_even_port(), Policy.OFF))
                assert pool.holder("solo") != first  # load alone would avoid the busy relay
                await pool.create(
                    CallRequest("leg-b", free_even_port(), Policy.OFF, bridge="call-1")
                )
                assert pool.holder("leg-b") == first  # but the bridge keeps the legs together
                assert busy.relay.get("leg-b").bridge == "call-1"
        finally:
            await pool.close()
            for site in (a, b):
                await site.down()

    run(scenario())


def test_reconfigure_changes_the_relays_under_live_calls(tmp_path: pathlib.Path) -> None:
    """SIGHUP's new relay list: a relay that left keeps its live call (and only that)
    until it ends, then is disconnected; a new one takes the next calls; one that stays
    keeps its connection and takes its new weight."""

    async def scenario() -> None:
        a, b, c = Site(tmp_path / "a.sock"), Site(tmp_path / "b.sock"), Site(tmp_path / "c.sock")
        for site in (a, b, c):
            await site.up()
        pool = pool_of({"a": (a, "default", 1), "b": (b, "default", 1)}, grace=10)
        reports: list[CallReport] = []
        pool.on_state(reports.append)
        await pool.start()
        try:
            await pool.create(CallRequest("x", free_even_port(), Policy.OFF))
            await pool.create(CallRequest("y", free_even_port(), Policy.OFF))
            assert (pool.holder("x"), pool.holder("y")) == ("a", "b")
            assert b.server is not None and b.server.client_count == 1
            entries = [
                RelayEntry("b", f"unix:{b.path}", RELAY_HOST, weight=5),
                RelayEntry("c", f"unix:{c.path}", RELAY_HOST),
            ]
            await pool.reconfigure(entries, grace=3)
            assert [(s["name"], s["up"], s["weight"]) for s in pool.status()] == [
                ("b", True, 5),
                ("c", True, 1),
            ]
            assert pool.grace == 3
            assert b.server.client_count == 1  # b kept its connection
            # a takes no new call; c and b (weight 5, one call) take the next ones
            for n in range(3):
                await pool.create(CallRequest(f"n{n}", free_even_port(), Policy.OFF))
            assert [pool.holder(f"n{n}") for n in range(3)] == ["c", "b", "b"]
            # a's live call still works there
            assert pool.holder("x") == "a" and a.relay.get("x") is not None
            await pool.update("x", Policy.OPTIONAL)
            assert a.relay.get("x").policy == "optional"
            assert not [r for r in reports if r.state == "failed"]
            assert a.server is not None and a.server.client_count == 1
            # its last call ends: a is disconnected
            await pool.delete("x", "hangup")
            await until(lambda: a.server is not None and a.server.client_count == 0)
            assert pool.holder("y") == "b" and await pool.show("y") is not None
            # the list can change again, back to a (a fresh connection)
            await pool.reconfigure([RelayEntry("a", f"unix:{a.path}", RELAY_HOST)])
            await pool.create(CallRequest("z", free_even_port(), Policy.OFF))
            assert pool.holder("z") == "a"
            assert await pool.show("y") is not None  # b's call: still served
            with pytest.raises(ValueError, match="at least one relay"):
                await pool.reconfigure([])
        finally:
            await pool.close()
            for site in (a, b, c):
                await site.down()

    run(scenario())
