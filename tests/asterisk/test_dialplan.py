"""The shipped [pbx-zrtp] subroutine, run line by line (tests/asterisk/dialplan.py) on the
fake Asterisk with the real adapter and relay: a call whose policy is or resolves to
`required` never leaves it unsecured, whatever the adapter's timing (issue 11, item 4)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from pbx_zrtp.relay.mirror import Policy
from tests.asterisk.dialplan import Outcome, Runner, evaluate, load
from tests.asterisk.fake_ami import FakeAmi, FakeChannel
from tests.asterisk.test_adapter import lab, phone, run
from tests.relay.helpers import EchoPbx, free_even_port


async def gosub(channel: FakeChannel, *args: str) -> Outcome:
    return await Runner(channel, list(args)).run()


@pytest.mark.parametrize(
    ("args", "goes_on"),
    [
        (("auto", "", "0.3"), False),
        (("", "", "0.3"), False),  # no argument is auto
        (("required", "", "0.3"), False),
        (("optional", "", "0.3"), True),  # the dialplan itself accepted a clear call
        (("off", "", "0.3"), True),
    ],
)
def test_without_an_answer_from_pbx_zrtp_only_off_and_optional_go_on(
    args: tuple[str, ...], goes_on: bool
) -> None:
    """pbx-zrtp not running (or AMI down, or slower than the wait): ZRTP_STATE stays
    empty. An `auto` call may have been meant as required: it is refused."""

    async def scenario() -> None:
        fake = FakeAmi()
        await fake.start()
        try:
            channel = fake.new_call(rtp_port=free_even_port(), exten="700")
            outcome = await gosub(channel, *args)
            assert outcome.returned is goes_on, outcome
            if not goes_on:
                assert outcome.cause == 58 and not channel.alive
                assert "not answered by pbx-zrtp" in outcome.log[0]
        finally:
            await fake.close()

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_auto_resolving_to_required_never_continues_unsecured() -> None:
    """The finding: `auto`, no AstDB key, a pattern says required, the phone does
    not speak ZRTP. The subroutine must hang up, never return (default waits)."""

    async def scenario() -> None:
        async with lab(policies=[("_6XX", Policy.REQUIRED)], required_timeout=2.0) as t:
            port = free_even_port()
            pbx = EchoPbx(port)
            await pbx.start()
            t.pbxs.append(pbx)
            channel = t.fake.new_call(rtp_port=port, exten="602")
            outcome = await gosub(channel, "auto")
            assert not outcome.returned and outcome.cause == 58
            assert channel.variables["ZRTP_POLICY"] == "required"
            assert channel.variables["ZRTP_STATE"] == "failed"

    run(scenario())


def test_auto_resolving_to_required_is_held_for_the_required_wait_and_secured() -> None:
    """Still pending after the 3 s `auto` wait but resolved to required: held up to
    12 s in all, so a phone that secures late (here after 4 s) gets its call."""

    async def scenario() -> None:
        async with lab(policies=[("_6XX", Policy.REQUIRED)], required_timeout=10.0) as t:
            port = free_even_port()
            pbx = EchoPbx(port)
            await pbx.start()
            t.pbxs.append(pbx)
            channel = t.fake.new_call(rtp_port=port, exten="603")
            subroutine = asyncio.ensure_future(gosub(channel, "auto"))
            await asyncio.sleep(4.0)
            assert not subroutine.done() and channel.variables["ZRTP_STATE"] == "pending"
            result = await phone(port)
            outcome = await subroutine
            assert result["ok"] and outcome.returned
            assert channel.variables["ZRTP_STATE"] == "secure"
            assert channel.variables["ZRTP_SAS"] == result["sas"]
            await channel.hangup()

    run(scenario())


def test_auto_resolving_to_optional_goes_on_with_a_clear_phone() -> None:
    async def scenario() -> None:
        async with lab(default_policy=Policy.OPTIONAL) as t:
            port = free_even_port()
            channel = t.fake.new_call(rtp_port=port, exten="604")
            outcome = await gosub(channel, "auto", "", "0.5")
            assert outcome.returned
            assert channel.variables["ZRTP_POLICY"] == "optional"
            assert channel.variables["ZRTP_STATE"] == "pending"  # the relay exists
            assert [m.port for m in t.relay.mirrors()] == [port]
            await channel.hangup()

    run(scenario())


def test_the_runner_reads_the_real_file_and_asterisk_precedence() -> None:
    steps = load()
    assert steps[0].app == "NoOp" and any(s.label == "refuse" for s in steps)
    assert evaluate('"a" = "a" | "a" = "b" & "c" = "d"') == "1"  # & binds tighter
    assert evaluate('"" != "" & "x" = "x"') == "0"


RELAY = "127.0.0.2"  # make_relay's address: the endpoint's media_address
PHONE_SDP = "127.0.10.3"  # where Asterisk sends before it has learnt the relay


def test_a_secure_call_is_held_until_asterisk_sends_its_media_to_the_relay() -> None:
    """Early media: Asterisk sends to the phone's SDP address until its strict RTP has
    learnt the relay (a few packets, read only while the dialplan services the
    channel). Measured on Asterisk 22: a Playback right after the Gosub sent its first
    2 packets straight to the phone, in the clear. The subroutine returns only once
    CHANNEL(rtp,dest) is the relay's."""

    async def scenario() -> None:
        async with lab(required_timeout=10.0) as t:
            port = free_even_port()
            pbx = EchoPbx(port)
            await pbx.start()
            t.pbxs.append(pbx)
            channel = t.fake.new_call(rtp_port=port, exten="620", rtp_dest_ip=PHONE_SDP)
            runner = Runner(channel, ["required"], media_address=RELAY)
            subroutine = asyncio.ensure_future(runner.run())
            result = await phone(port)
            assert result["ok"]
            await channel.wait_for_var("ZRTP_STATE", lambda v: v == "secure", 5)
            await asyncio.sleep(0.5)
            assert not subroutine.done()  # secure, but Asterisk still sends to the phone
            channel.send_media_to(RELAY)
            outcome = await asyncio.wait_for(subroutine, 5)
            assert outcome.returned and outcome.log == []
            assert channel.channel_function("rtp,dest").startswith(f"{RELAY}:")
            await channel.hangup()

    run(scenario())


@pytest.mark.parametrize(("policy", "goes_on"), [("required", False), ("optional", True)])
def test_a_secure_call_whose_media_never_reaches_the_relay(policy: str, goes_on: bool) -> None:
    """Asterisk never sends to the relay within 2 s: `required` is hung up (cause 58),
    never played to in the clear; `optional` goes on with a WARNING."""

    async def scenario() -> None:
        async with lab(required_timeout=10.0) as t:
            port = free_even_port()
            pbx = EchoPbx(port)
            await pbx.start()
            t.pbxs.append(pbx)
            channel = t.fake.new_call(rtp_port=port, exten="621", rtp_dest_ip=PHONE_SDP)
            subroutine = asyncio.ensure_future(Runner(channel, [policy], media_address=RELAY).run())
            result = await phone(port)
            assert result["ok"]
            outcome = await asyncio.wait_for(subroutine, 10)
            assert channel.variables["ZRTP_STATE"] == "secure"
            assert outcome.returned is goes_on, outcome
            assert len(outcome.log) == 1 and "not to the relay" in outcome.log[0]
            if goes_on:
                await channel.hangup()
            else:
                assert outcome.cause == 58 and not channel.alive
                assert outcome.log[0].endswith("hanging up")

    run(scenario())


@pytest.mark.parametrize(("policy", "refused"), [("required", True), ("optional", False)])
def test_a_required_call_from_an_endpoint_without_media_address_is_refused_before_progress(
    policy: str, refused: bool
) -> None:
    """Issue 13 defect 6: a plain endpoint (no media_address) sends its media straight
    to Asterisk. `required`: refused before Progress() (no 183, no media, nothing
    answered), the reason in ZRTP_FAIL_REASON and a WARNING, cause 58; pbx-zrtp is not
    even asked. Other policies announce the call with "MediaAddress: none"."""

    async def scenario() -> None:
        async with lab(required_timeout=10.0) as t:
            channel = t.fake.new_call(rtp_port=free_even_port(), exten="600")
            sent: list[dict[str, str]] = []
            raise_event = channel.user_event

            async def user_event(name: str, **headers: str) -> None:
                sent.append({"UserEvent": name, **headers})
                await raise_event(name, **headers)

            channel.user_event = user_event  # type: ignore[method-assign]
            runner = Runner(channel, [policy, "", "0.3"], media_address="")
            outcome = await runner.run()
            if refused:
                assert outcome.cause == 58 and not channel.alive
                assert not channel.media_active  # Progress() never ran
                assert channel.variables["ZRTP_STATE"] == "failed"
                reason = channel.variables["ZRTP_FAIL_REASON"]
                assert reason.startswith(f"endpoint {channel.endpoint} has no media_address")
                assert len(outcome.log) == 1 and outcome.log[0].startswith("WARNING,")
                assert outcome.log[0].endswith("hanging up before answer"), outcome.log
                assert not t.relay.calls() and sent == []
            else:
                assert channel.media_active
                assert [e.get("MediaAddress") for e in sent] == ["none"], sent
                await channel.hangup()

    run(scenario())


@pytest.mark.parametrize(("policy", "decided"), [("optional", "clear"), ("auto", "failed")])
def test_the_wait_lasts_as_long_as_the_relay_takes_to_decide(policy: str, decided: str) -> None:
    """Issue 13 defect 9: the subroutine waited 3 s for an optional call while the
    relay decided `clear` later (its [timeouts] optional), so the dialplan after it
    saw `pending`. pbx-zrtp now writes the relay's time left as ZRTP_TIMEOUT with the
    pending state, and the subroutine waits that long: it returns (or refuses) on the
    relay's decision, for `auto` resolved to required as well (phone silent)."""

    async def scenario() -> None:
        async with lab(
            policies=[("_6XX", Policy.REQUIRED)], optional_timeout=3.5, required_timeout=3.5
        ) as t:
            channel = t.fake.new_call(rtp_port=free_even_port(), exten="600")
            timeouts: list[str] = []
            store = channel._store

            def spy(name: str, value: str) -> None:
                if name == "ZRTP_TIMEOUT":
                    timeouts.append(value)
                store(name, value)

            channel._store = spy  # type: ignore[method-assign]
            outcome = await Runner(channel, [policy], media_address=RELAY).run()
            assert channel.variables["ZRTP_STATE"] == decided, channel.variables
            # ceil(3.5) + 1 s for the write, with every pending write; "" once decided
            assert timeouts == ["5", ""], timeouts
            assert outcome.returned is (decided == "clear"), outcome
            if outcome.returned:
                await channel.hangup()

    run(scenario())


def test_the_admin_lines_in_the_docs_are_the_aliases_and_quoted_originates() -> None:
    """Issue 13: the docs' `channel originate … UserEvent …` lines lost everything after
    the first space (the CLI splits on spaces): the application data must be quoted.
    cli_aliases_pbx_zrtp.conf had its own [general], so appended to the stock file its
    aliases were not loaded: it adds to the stock [general] with [general](+). Every
    `zrtp …` line in docs/asterisk.md is one of its aliases (checked on Asterisk 22.10.1
    by tests/integration/test_asterisk_real.py)."""
    root = Path(__file__).resolve().parents[2]
    aliases_text = (root / "dialplan/asterisk/cli_aliases_pbx_zrtp.conf").read_text()
    sections = re.findall(r"(?m)^\[([^\]]*)\](\S*)", aliases_text)
    assert sections == [("general", "(+)"), ("pbx_zrtp", "")], sections
    aliases = {
        key.strip(): value.strip()
        for key, _, value in (
            line.partition("=")
            for line in aliases_text.splitlines()
            if line.startswith("zrtp ") and "=" in line
        )
    }
    docs = (root / "docs/asterisk.md").read_text()
    typed = set(re.findall(r"`(zrtp [^`…]+)`", docs))
    assert typed, "no zrtp lines in docs/asterisk.md"
    for line in typed:
        words = line.split()
        assert any(words[: len(a.split())] == a.split() for a in aliases), line
    originates = re.findall(r"`(channel originate [^`]+)`", docs)
    assert originates
    for line in originates:
        assert re.fullmatch(r'channel originate \S+ application UserEvent "[^"]+"', line), line
