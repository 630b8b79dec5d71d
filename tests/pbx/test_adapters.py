"""One suite for every PBX adapter: the flows CallBook owns (pbx_zrtp.pbx.book),
run through whole calls against each PBX's fake (which replays the real
transcripts in ../shared/fixtures), a real relay, a real ZRTP phone (our engine)
and an echo 'PBX'. What only one PBX does stays in tests/<pbx>/test_adapter.py."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import pytest

from pbx_zrtp.asterisk.adapter import AsteriskAdapter
from pbx_zrtp.asterisk.config import AsteriskConfig
from pbx_zrtp.cache.memory import MemorySecretCache
from pbx_zrtp.calls import Policy
from pbx_zrtp.endpoint import EndpointOptions, run_endpoint
from pbx_zrtp.freeswitch.adapter import FreeswitchAdapter
from pbx_zrtp.freeswitch.config import FreeswitchConfig
from pbx_zrtp.pbx.book import CallBook
from pbx_zrtp.pbx.variables import CallView
from pbx_zrtp.relay.core import Relay
from pbx_zrtp.relay.handle import LocalRelay
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from tests.asterisk.fake_ami import FakeAmi
from tests.freeswitch.fake_esl import FakeEsl
from tests.relay.helpers import PHONE_HOST, RELAY_HOST, EchoPbx, free_even_port, make_relay, rtp

SETTLED: Callable[[str | None], bool] = lambda v: v not in (None, "", "pending")  # noqa: E731


class Channel(Protocol):
    variables: dict[str, str]
    alive: bool

    async def wait_for_var(
        self, name: str, predicate: Callable[[str | None], bool], timeout: float
    ) -> str | None: ...

    async def hangup(self) -> None: ...


@dataclass
class Placed:
    channel: Any
    port: int
    key: str  # the PBX's id (Uniqueid, UUID)


class Pbx(Protocol):
    """One PBX's fake, driven the way its dialplan samples drive the real one."""

    name: str
    failed_cause: object  # the hang-up cause of a failed `required` call, as the fake shows it

    async def start(self) -> int: ...

    async def close(self) -> None: ...

    def adapter(self, port: int, relay: Relay, **config: Any) -> CallBook: ...

    async def call(self, policy: str, target: str, rtp_port: int) -> Placed: ...

    def store_policy(self, target: str, policy: str) -> None: ...

    #: The calling phone's name in the PBX (its per-phone policy key).
    phone: str

    def store_phone_policy(self, phone: str, policy: str) -> None: ...

    async def verify(self, placed: Placed, book: CallBook) -> None: ...

    async def drop(self) -> None: ...

    async def restart(self) -> None: ...

    def connections(self, book: CallBook) -> int: ...


class AsteriskPbx:
    """dialplan/asterisk/extensions_pbx_zrtp.conf: Set, Progress(), UserEvent(PbxZrtp)."""

    name = "asterisk"
    failed_cause: object = 58

    def __init__(self) -> None:
        self.fake = FakeAmi()

    async def start(self) -> int:
        return await self.fake.start()

    async def close(self) -> None:
        await self.fake.close()

    def adapter(self, port: int, relay: Relay, **config: Any) -> CallBook:
        settings = AsteriskConfig(
            host="127.0.0.1", port=port, username="ctl", secret="ctlpass", **config
        )
        return AsteriskAdapter(settings, LocalRelay(relay))

    async def call(self, policy: str, target: str, rtp_port: int) -> Placed:
        channel = self.fake.new_call(rtp_port=rtp_port, exten=target)
        await channel.set_var("PBX_ZRTP_POLICY", policy)
        await channel.set_var("PBX_ZRTP_TARGET", target)
        await channel.progress()
        await channel.user_event(
            "PbxZrtp",
            Policy=policy,
            Target=target,
            Endpoint=channel.endpoint,
            RtpSrc=f"127.0.0.1:{rtp_port}",
        )
        return Placed(channel, rtp_port, channel.uniqueid)

    def store_policy(self, target: str, policy: str) -> None:
        self.fake.astdb[("pbx_zrtp/policy", target)] = policy

    phone = "zalice"  # the fake's endpoint: CHANNEL(endpoint), the event's Endpoint

    def store_phone_policy(self, phone: str, policy: str) -> None:
        # zrtp phone policy <endpoint> <policy> = database put pbx_zrtp/endpoint …
        self.fake.astdb[("pbx_zrtp/endpoint", phone)] = policy

    async def verify(self, placed: Placed, book: CallBook) -> None:
        # channel originate Local/s@pbx-zrtp-admin application UserEvent \
        #     PbxZrtpAdmin,Command: verify,Call: <uniqueid>
        admin = self.fake.new_call(rtp_port=free_even_port(), endpoint="Local/s@pbx-zrtp-admin")
        await admin.user_event("PbxZrtpAdmin", Command="verify", Call=placed.key)

    async def drop(self) -> None:
        await self.fake.drop_connections()

    async def restart(self) -> None:
        await self.fake.restart(down_for=0.5)

    def connections(self, book: CallBook) -> int:
        return self.fake.logins


class FreeswitchPbx:
    """dialplan/freeswitch/pbx_zrtp.xml: set pbx_zrtp_policy, rtp_adv_audio_ip, answer."""

    name = "freeswitch"
    failed_cause: object = "BEARERCAPABILITY_NOTAVAIL"

    def __init__(self) -> None:
        self.fake = FakeEsl()

    async def start(self) -> int:
        return await self.fake.start()

    async def close(self) -> None:
        await self.fake.close()

    def adapter(self, port: int, relay: Relay, **config: Any) -> CallBook:
        settings = FreeswitchConfig(host="127.0.0.1", port=port, password="ClueCon", **config)
        return FreeswitchAdapter(settings, LocalRelay(relay))

    async def call(self, policy: str, target: str, rtp_port: int) -> Placed:
        channel = self.fake.new_call(local_media_port=rtp_port, destination=target)
        await channel.set_var("pbx_zrtp_policy", policy)
        await channel.set_var("rtp_adv_audio_ip", RELAY_HOST)
        await channel.answer()
        return Placed(channel, rtp_port, channel.uuid)

    def store_policy(self, target: str, policy: str) -> None:
        self.fake.global_vars[f"pbx_zrtp_policy_{target}"] = policy

    phone = "1001"  # the fake's caller: Caller-Username of the inbound leg

    def store_phone_policy(self, phone: str, policy: str) -> None:
        self.fake.global_vars[f"pbx_zrtp_phone_policy_{phone}"] = policy

    async def verify(self, placed: Placed, book: CallBook) -> None:
        # fs_cli> uuid_setvar <uuid> pbx_zrtp_verified true
        await self.fake.fs_cli("uuid_setvar", f"{placed.key} pbx_zrtp_verified true")

    async def drop(self) -> None:
        await self.fake.drop_connections()

    async def restart(self) -> None:
        await self.fake.restart(down_for=0.5)

    def connections(self, book: CallBook) -> int:
        return book.link.connections


class Lab:
    def __init__(self, pbx: Pbx, relay: Relay, book: CallBook, ports: list[int]) -> None:
        self.pbx = pbx
        self.relay = relay
        self.book = book
        self.free_ports = ports
        self.echoes: list[EchoPbx] = []

    def var(self, placed: Placed, field: str) -> str:
        """The channel's variable showing the view's ``field`` ("" when unset)."""
        value: str = placed.channel.variables.get(self.book.variables.name_of(field), "")
        return value

    @property
    def true(self) -> str:
        return self.book.variables.true

    async def settled(self, placed: Placed) -> str | None:
        state: str | None = await placed.channel.wait_for_var(
            self.book.variables.state, SETTLED, 10
        )
        return state

    async def call(self, policy: str = "required", target: str = "600") -> Placed:
        port = self.free_ports.pop()
        echo = EchoPbx(port)
        await echo.start()
        self.echoes.append(echo)
        return await self.pbx.call(policy, target, port)

    def our_mirrors(self) -> list[str]:
        return [c.call_id for c in self.relay.calls() if c.call_id.startswith(self.book.prefix)]


@pytest.fixture(params=["asterisk", "freeswitch"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextlib.asynccontextmanager
async def lab(kind: str, calls: int = 4, **config: Any) -> AsyncIterator[Lab]:
    pbx: Pbx = AsteriskPbx() if kind == "asterisk" else FreeswitchPbx()
    port = await pbx.start()
    ports = [free_even_port() for _ in range(calls)]
    relay = make_relay(
        # FreeSWITCH learns its port too late: the relay pre-binds its range.
        prebind=tuple(ports) if kind == "freeswitch" else (),
        required_timeout=config.pop("required_timeout", 3.0),
        optional_timeout=config.pop("optional_timeout", 1.0),
    )
    await relay.start()
    book = pbx.adapter(port, relay, **config)
    assert await book.start()
    the_lab = Lab(pbx, relay, book, ports)
    try:
        yield the_lab
    finally:
        await book.close()
        await relay.close()
        for echo in the_lab.echoes:
            echo.close()
        await pbx.close()


def phone(port: int, zid: bytes = b"P" * 12, srtp: int = 10) -> Any:
    return run_endpoint(
        ZrtpConfiguration(zid=zid),
        EndpointOptions(bind=(PHONE_HOST, 0), peer=(RELAY_HOST, port), srtp_count=srtp, timeout=10),
    )


def run(coro: Any) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))


async def until(predicate: Callable[[], bool], timeout: float = 8.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def test_a_secure_call_shows_every_variable_of_the_table(kind: str) -> None:
    async def scenario() -> None:
        async with lab(kind) as t:
            placed = await t.call("required")
            result, state = await asyncio.gather(phone(placed.port), t.settled(placed))
            assert state == "secure" and result["ok"] and result["srtp"]["received_ok"] == 10
            # every variable of the table, as the table renders the relay's report
            # (a PBX may drop a variable set to "": FreeSWITCH unsets it)
            report = t.relay.get(t.book.prefix + placed.key)
            expected = t.book.variables.render(CallView.of(report, Policy.REQUIRED))
            assert {n: placed.channel.variables.get(n, "") for n in expected} == expected
            assert t.var(placed, "secure") == t.true and t.var(placed, "sas") == result["sas"]
            assert t.var(placed, "policy") == "required"
            assert t.var(placed, "cipher") == result["cipher"]
            assert t.var(placed, "peer_zid") == (b"P" * 12).hex()
            assert t.var(placed, "sas_verified") != t.true and t.var(placed, "fail_reason") == ""
            await placed.channel.hangup()
            await until(lambda: not t.our_mirrors() and not t.book.calls)

    run(scenario())


def test_an_optional_call_without_zrtp_reports_clear_and_goes_on(kind: str) -> None:
    async def scenario() -> None:
        async with lab(kind) as t:
            placed = await t.call("optional")
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((PHONE_HOST, 0))
            for i in range(10):
                sock.sendto(rtp(i), (RELAY_HOST, placed.port))
            state = await t.settled(placed)
            sock.close()
            assert state == "clear" and t.var(placed, "secure") != t.true
            assert "no ZRTP" in t.var(placed, "fail_reason")
            assert placed.channel.alive

    run(scenario())


def test_a_failed_required_call_is_reported_then_hung_up(kind: str) -> None:
    async def scenario() -> None:
        async with lab(kind, required_timeout=0.6, hangup_failed_after=0.3) as t:
            placed = await t.call("required")  # no phone ever sends
            assert await t.settled(placed) == "failed"
            assert "not secure within" in t.var(placed, "fail_reason")
            # the dialplan here "forgot" to hang up: the adapter's safety net does
            await until(lambda: not placed.channel.alive)
            assert placed.channel.hangup_cause == t.pbx.failed_cause
            await until(lambda: not t.our_mirrors() and not t.book.calls)

    run(scenario())


@pytest.mark.parametrize("when", ["at_once", "during_handshake", "after_secure"])
def test_a_hangup_at_any_moment_leaves_nothing_behind(kind: str, when: str) -> None:
    async def scenario() -> None:
        async with lab(kind) as t:
            placed = await t.call("required")
            if when == "during_handshake":
                await until(lambda: bool(t.our_mirrors()))
                task = asyncio.ensure_future(phone(placed.port, srtp=0))
                await asyncio.sleep(0.01)
                await placed.channel.hangup()
                with contextlib.suppress(Exception):
                    await task
            elif when == "after_secure":
                await asyncio.gather(phone(placed.port, srtp=0), t.settled(placed))
                await placed.channel.hangup()
            else:
                await placed.channel.hangup()
            await until(lambda: not t.our_mirrors() and not t.book.calls)
            await asyncio.sleep(0.2)  # a late event must not resurrect anything
            assert not t.our_mirrors() and not t.book.calls

    run(scenario())


def test_a_link_drop_mid_call_reconnects_and_rewrites_the_state(kind: str) -> None:
    async def scenario() -> None:
        async with lab(kind) as t:
            placed = await t.call("required")
            await asyncio.gather(phone(placed.port, srtp=0), t.settled(placed))
            before = t.pbx.connections(t.book)
            sas = t.book.variables.name_of("sas")
            placed.channel.variables[sas] = "lost"  # as if a write had not arrived
            await t.pbx.drop()
            await until(lambda: t.pbx.connections(t.book) > before, timeout=10)
            await until(lambda: placed.channel.variables.get(sas) != "lost")
            assert placed.channel.variables[t.book.variables.state] == "secure"
            assert len(t.our_mirrors()) == 1  # no duplicate mirror

    run(scenario())


def test_a_pbx_restart_ends_the_calls_of_vanished_channels(kind: str) -> None:
    async def scenario() -> None:
        async with lab(kind) as t:
            placed = await t.call("required")
            await asyncio.gather(phone(placed.port, srtp=0), t.settled(placed))
            before = t.pbx.connections(t.book)
            await t.pbx.restart()  # the channels are gone with the old PBX
            await until(lambda: t.pbx.connections(t.book) > before, timeout=10)
            await until(lambda: not t.our_mirrors() and not t.book.calls)

    run(scenario())


def test_a_call_announced_while_the_link_was_down_is_picked_up(kind: str) -> None:
    async def scenario() -> None:
        async with lab(kind) as t:
            before = t.pbx.connections(t.book)
            await t.pbx.drop()
            placed = await t.call("required")  # its event reaches nobody
            await until(lambda: t.pbx.connections(t.book) > before, timeout=10)
            result, state = await asyncio.gather(phone(placed.port, srtp=0), t.settled(placed))
            assert state == "secure" and t.var(placed, "sas") == result["sas"]

    run(scenario())


def test_auto_takes_the_stored_policy_then_the_default(kind: str) -> None:
    async def scenario() -> None:
        async with lab(kind, default_policy=Policy.OFF) as t:
            t.pbx.store_policy("601", "required")
            stored = await t.call("auto", target="601")
            await until(lambda: stored.channel.variables.get(t.book.variables.state) is not None)
            assert t.var(stored, "policy") == "required"
            default = await t.call("auto", target="602")
            await until(lambda: default.channel.variables.get(t.book.variables.state) is not None)
            assert t.var(default, "policy") == "off" and t.var(default, "state") == "off"

    run(scenario())


def test_an_admin_marks_the_sas_verified(kind: str) -> None:
    async def scenario() -> None:
        async with lab(kind) as t:
            placed = await t.call("required")
            await asyncio.gather(phone(placed.port, srtp=0), t.settled(placed))
            await t.pbx.verify(placed, t.book)
            await until(lambda: t.var(placed, "sas_verified") == t.true)
            report = t.relay.get(t.book.prefix + placed.key)
            assert report.sas_verified

    run(scenario())


def test_a_stored_policy_that_is_no_policy_is_treated_as_required(kind: str) -> None:
    """Issue 11 item 4, for every PBX: the stored value may have meant `required`."""

    async def scenario() -> None:
        async with lab(kind, default_policy=Policy.OFF) as t:
            t.pbx.store_policy("601", "requried")  # a typo
            placed = await t.call("auto", target="601")
            await until(lambda: placed.channel.variables.get(t.book.variables.state) is not None)
            assert t.var(placed, "policy") == "required"

    run(scenario())


def test_continuity_shows_the_sas_verified_on_the_next_call_until_unverified(kind: str) -> None:
    """Issue 13 defect 4: after both sides verified, the next call's variable says
    verified (the relay's previously_verified: V flags on both sides and a retained
    secret that matched); an unverify during that call takes it back."""

    async def scenario() -> None:
        phone_cache = MemorySecretCache()
        zid = b"V" * 12

        def verified_phone(port: int) -> Any:
            return run_endpoint(
                ZrtpConfiguration(zid=zid),
                EndpointOptions(
                    bind=(PHONE_HOST, 0), peer=(RELAY_HOST, port), timeout=10, mark_verified=True
                ),
                cache=phone_cache,
            )

        # On FreeSWITCH's pre-bound ports the phone may start before or after the
        # adapter names the call: continuity must hold either way (both orders pinned
        # in tests/relay/test_prebound_continuity.py).
        async with lab(kind) as t:
            first = await t.call("required")
            await asyncio.gather(verified_phone(first.port), t.settled(first))
            assert t.var(first, "sas_verified") != t.true  # nobody compared it yet
            await t.pbx.verify(first, t.book)
            await until(lambda: t.var(first, "sas_verified") == t.true)
            await first.channel.hangup()
            await until(lambda: first.key not in t.book.calls)

            second = await t.call("required")
            results = await asyncio.gather(verified_phone(second.port), t.settled(second))
            assert results[0]["previously_verified"] is True  # the phone says so too
            assert t.var(second, "state") == "secure"
            assert t.var(second, "sas_verified") == t.true
            assert t.relay.get(t.book.prefix + second.key).previously_verified

            await t.book.verify(t.book.calls[second.key], second.key, False)
            await until(lambda: t.var(second, "sas_verified") != t.true)

    run(scenario())


def test_an_auto_call_takes_the_strongest_of_its_phones_and_the_dialled_number(
    kind: str,
) -> None:
    """Issue 13 (per-phone policy): "ZRTP for phone 1001" means calls from and to it.
    An `auto` call takes the strongest of the dialled number's policy (stored, patterns,
    default), this leg's phone's and the dialled phone's (stored per phone); a phone
    policy only strengthens, and one that is no policy counts as required."""

    async def policy_of(t: Lab, target: str) -> str:
        placed = await t.call("auto", target=target)
        await until(lambda: placed.channel.variables.get(t.book.variables.state) is not None)
        policy = t.var(placed, "policy")
        await placed.channel.hangup()
        return policy

    async def scenario() -> None:
        async with lab(kind, calls=8, default_policy=Policy.OFF) as t:
            assert await policy_of(t, "650") == "off"  # nothing stored: the default
            t.pbx.store_phone_policy(t.pbx.phone, "optional")  # the calling phone
            assert await policy_of(t, "650") == "optional"
            t.pbx.store_policy("651", "required")  # the number is stronger
            assert await policy_of(t, "651") == "required"
            t.pbx.store_policy("652", "off")  # a number cannot weaken the phone's
            assert await policy_of(t, "652") == "optional"
            t.pbx.store_phone_policy("653", "required")  # calls to phone 653
            assert await policy_of(t, "653") == "required"
            t.pbx.store_phone_policy(t.pbx.phone, "requried")  # a typo: fail closed
            assert await policy_of(t, "650") == "required"
            placed = await t.call("off", target="653")  # the dialplan's own word wins
            await until(lambda: placed.channel.variables.get(t.book.variables.state) is not None)
            assert t.var(placed, "policy") == "off"

    run(scenario())
