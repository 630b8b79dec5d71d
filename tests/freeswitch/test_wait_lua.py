"""The shipped dialplan/freeswitch/pbx_zrtp_wait.lua, run by a real Lua (lupa: Lua 5.3, as
in FreeSWITCH 1.10's mod_lua) against the fake FreeSWITCH, the real adapter and relay:
a call whose policy is or resolves to `required` never goes on unsecured, whatever the
adapter's timing (issue 11, item 4)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from pbx_zrtp.relay.mirror import Policy
from tests.freeswitch.fake_esl import FakeEsl, FakeFsChannel, str2cause
from tests.freeswitch.test_adapter import _until, lab, phone, run
from tests.relay.helpers import RELAY_HOST, free_even_port

try:
    from lupa.lua53 import LuaRuntime
except ImportError:  # pragma: no cover - lupa builds without 5.3
    from lupa import LuaRuntime

SCRIPT = Path(__file__).resolve().parents[2] / "dialplan" / "freeswitch" / "pbx_zrtp_wait.lua"

_SESSION = """
function(get, ready, sleep, hangup, log)
  return {
    getVariable = function(self, name) return get(name) end,
    ready = function(self) return ready() end,
    sleep = function(self, ms) sleep(ms) end,
    hangup = function(self, cause) hangup(cause) end,
    consoleLog = function(self, level, text) log(level, text) end,
  }
end
"""


async def wait_lua(channel: FakeFsChannel, *args: str, log: list[str] | None = None) -> str | None:
    """``<action application="lua" data="pbx_zrtp_wait.lua ARGS"/>`` on ``channel``:
    the hangup cause the script gave, or None when the dialplan goes on. Console
    lines go to ``log``."""
    loop = asyncio.get_running_loop()
    causes: list[str] = []
    lines = log if log is not None else []

    def hangup(cause: str) -> None:
        causes.append(cause)

        async def hang_up() -> None:
            channel._hangup(str2cause(cause), local=True, complete_now=True)
            await channel._fs._drain()

        asyncio.run_coroutine_threadsafe(hang_up(), loop).result(5)

    def script() -> None:
        lua = LuaRuntime()
        session = lua.eval(_SESSION)(
            channel.variables.get,
            lambda: channel.alive,
            lambda ms: time.sleep(ms / 1000),
            hangup,
            lambda level, text: lines.append(f"[{level}] {text}"),
        )
        globals_: Any = lua.globals()
        globals_.session = session
        globals_.argv = lua.table_from({0: "pbx_zrtp_wait.lua", **dict(enumerate(args, 1))})
        lua.execute(SCRIPT.read_text())

    await asyncio.to_thread(script)
    return causes[0] if causes else None


async def bare_call(fake: FakeEsl, **variables: str) -> FakeFsChannel:
    channel = fake.new_call(local_media_port=free_even_port(), destination="9400")
    for name, value in variables.items():
        await channel.set_var(name, value)
    await channel.answer()
    return channel


@pytest.mark.parametrize(
    ("variables", "goes_on"),
    [
        ({"pbx_zrtp_policy": "auto"}, False),
        ({"pbx_zrtp_policy": "required"}, False),
        ({"pbx_zrtp_policy": "optional"}, True),  # the dialplan itself accepted clear
        ({"pbx_zrtp_policy": "off"}, True),
        ({"zrtp_secure_media": "true"}, True),  # legacy: optional
    ],
)
def test_without_an_answer_from_pbx_zrtp_only_off_and_optional_go_on(
    variables: dict[str, str], goes_on: bool
) -> None:
    async def scenario() -> None:
        fake = FakeEsl()
        await fake.start()
        try:
            channel = await bare_call(fake, rtp_adv_audio_ip=RELAY_HOST, **variables)
            log: list[str] = []
            cause = await wait_lua(channel, "0.3", log=log)
            assert (cause is None) is goes_on
            assert channel.alive is goes_on
            if not goes_on:
                assert cause == "BEARERCAPABILITY_NOTAVAIL"
                assert log == [
                    f"[WARNING] pbx_zrtp: {channel.uuid} required ZRTP but is not answered"
                    " by pbx-zrtp: ; hanging up\n"
                ]
        finally:
            await fake.close()

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_auto_resolving_to_required_without_zrtp_is_hung_up_by_the_script() -> None:
    async def scenario() -> None:
        async with lab(default_policy=Policy.REQUIRED, required_timeout=1.0) as t:
            channel, _ = await t.call("auto", destination="9402")
            cause = await wait_lua(channel, "12")
            assert cause == "BEARERCAPABILITY_NOTAVAIL" and not channel.alive
            assert channel.variables["pbx_zrtp_active_policy"] == "required"

    run(scenario())


def test_a_secured_call_and_an_optional_clear_call_go_on() -> None:
    async def scenario() -> None:
        async with lab(default_policy=Policy.OPTIONAL) as t:
            t.fake.global_vars["pbx_zrtp_policy_9401"] = "required"
            channel, port = await t.call("auto", destination="9401")
            result, cause = await asyncio.gather(phone(port), wait_lua(channel, "12"))
            assert result["ok"] and cause is None and channel.alive
            assert channel.variables["pbx_zrtp_state"] == "secure"
            clear, _ = await t.call("auto", destination="9402")  # resolves to optional
            assert await wait_lua(clear, "0.5") is None and clear.alive
            assert clear.variables["pbx_zrtp_active_policy"] == "optional"
            # the enrollment extension's wait never hangs up
            assert await wait_lua(clear, "0.1", "pbx_zrtp_enroll_result") is None

    run(scenario())


def test_auto_policy_that_cannot_be_read_is_treated_as_required() -> None:
    async def scenario() -> None:
        async with lab(default_policy=Policy.OFF) as t:
            t.fake.global_vars["pbx_zrtp_policy_9401"] = "requried"  # a typo
            channel, _ = await t.call("auto", destination="9401")
            await _until(lambda: channel.variables.get("pbx_zrtp_state") is not None)
            assert channel.variables["pbx_zrtp_active_policy"] == "required"
            # the lookup itself fails (an unset global is "-ERR no reply": not a failure)
            t.fake._apis["global_getvar"] = lambda _arg: "-ERR permission denied\n"
            other, _ = await t.call("auto", destination="9402")
            await _until(lambda: other.variables.get("pbx_zrtp_state") is not None)
            assert other.variables["pbx_zrtp_active_policy"] == "required"

    run(scenario())


def test_required_call_is_secured_or_refused_before_answer() -> None:
    """Issue 13, defect 7: pbx_zrtp.xml's `required` extensions pre_answer, wait, and
    answer only a secure call; a call that is not secure is hung up unanswered."""

    async def scenario() -> None:
        async with lab(required_timeout=1.0) as t:
            channel, port = await t.call("required", answer=False)
            await channel.pre_answer()  # CHANNEL_PROGRESS_MEDIA: the adapter names the call
            result, cause = await asyncio.gather(phone(port), wait_lua(channel, "12"))
            assert result["ok"] and cause is None and channel.alive
            assert channel.variables["pbx_zrtp_state"] == "secure"
            clear, _ = await t.call("required", answer=False)
            await clear.pre_answer()
            assert await wait_lua(clear, "12") == "BEARERCAPABILITY_NOTAVAIL"
            assert not clear.alive and clear.variables["pbx_zrtp_state"] == "failed"
            answered = {e.get("Unique-ID") for e in t.fake.fired if e.name == "CHANNEL_ANSWER"}
            assert not answered & {channel.uuid, clear.uuid}, "answered before it was secure"

    run(scenario())
