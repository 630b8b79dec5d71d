"""The shipped [pbx-zrtp] subroutine, run line by line (tests/asterisk/dialplan.py) on the
fake Asterisk with the real adapter and relay: a call whose policy is or resolves to
`required` never leaves it unsecured, whatever the adapter's timing (issue 11, item 4)."""

from __future__ import annotations

import asyncio

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
