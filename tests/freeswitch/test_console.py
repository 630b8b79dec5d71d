"""`zrtp …` at fs_cli (issue 13): pbx_zrtp_admin.lua fires CUSTOM pbx_zrtp::admin and
prints the adapter's pbx_zrtp::admin_reply; the adapter acts and answers. The Lua side
runs on the real FreeSWITCH (tests/integration/test_freeswitch_real.py); here the
adapter's side, over the fake ESL, with a real relay and a real ZRTP phone."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from pbx_zrtp.config import ConfigError
from pbx_zrtp.freeswitch.config import parse
from tests.freeswitch.test_adapter import SETTLED, _until, lab, phone, run


async def zrtp(t: Any, line: str) -> str:
    """`fs_cli> zrtp <line>`: the reply pbx_zrtp_admin.lua would print."""
    request = f"req-{len(t.fake.fired)}"
    await t.fake.lua_event("pbx_zrtp::admin", pbx_zrtp_request=request, pbx_zrtp_command=line)

    def reply() -> str | None:
        for event in t.fake.fired:
            if event.subclass == "pbx_zrtp::admin_reply" and (
                event.get("pbx_zrtp_request") == request
            ):
                return unquote(event.get("pbx_zrtp_reply") or "")
        return None

    await _until(lambda: reply() is not None)
    text = reply()
    assert text is not None
    return text


def test_console_commands_answer_in_the_console(tmp_path: Path) -> None:
    store = tmp_path / "policies.json"

    async def scenario() -> None:
        async with lab(policy_file=str(store)) as t:
            assert await zrtp(t, "show calls") == "+OK no ZRTP calls"
            channel, port = await t.call("optional")
            await asyncio.gather(
                phone(port, srtp=0), channel.wait_for_var("pbx_zrtp_state", SETTLED, 10)
            )
            sas = channel.variables["pbx_zrtp_sas"].replace(" ", "_")
            call = t.adapter.calls[channel.uuid]
            await _until(lambda: call.written.get("pbx_zrtp_state") == "secure")
            listing = (await zrtp(t, "show calls")).splitlines()
            assert listing[1] == f"{channel.uuid} secure {sas} false optional", listing
            assert await zrtp(t, f"verify {channel.uuid}") == (
                f"+OK SAS of {channel.uuid} marked verified"
            )
            assert channel.variables["pbx_zrtp_sas_verified"] == "true"
            shown = await zrtp(t, f"show call fs-{channel.uuid}")
            assert "pbx_zrtp_sas_verified=true" in shown.splitlines()
            assert await zrtp(t, f"unverify {channel.uuid}") == (
                f"+OK SAS of {channel.uuid} marked unverified"
            )
            assert (await zrtp(t, "verify nope")).startswith("-ERR no ZRTP call nope")
            assert (await zrtp(t, "frobnicate")).startswith("-ERR unknown command: zrtp frobnicate")
            assert (await zrtp(t, "policy 9400 requried")).startswith("-ERR 'requried': use off")
            assert (await zrtp(t, f"enroll {channel.uuid} maybe")).startswith("-ERR enroll:")
            # per-extension policy: the global auto reads, kept in the policy file
            assert await zrtp(t, "policy 9400 required") == "+OK 9400: required"
            assert t.fake.global_vars["pbx_zrtp_policy_9400"] == "required"
            assert json.loads(store.read_text()) == {"9400": "required"}
            assert await zrtp(t, "policy 9400") == "+OK 9400: required"
            # a FreeSWITCH restart loses its globals; pbx-zrtp writes them back
            t.fake.global_vars.pop("pbx_zrtp_policy_9400", None)  # gone with the restart
            await t.fake.restart()
            await _until(lambda: t.fake.global_vars.get("pbx_zrtp_policy_9400") == "required")
            assert await zrtp(t, "policy 9400 auto") == "+OK 9400: auto"
            assert "pbx_zrtp_policy_9400" not in t.fake.global_vars
            assert json.loads(store.read_text()) == {}

    run(scenario())


def test_a_policy_set_at_the_console_survives_a_pbx_zrtp_restart(tmp_path: Path) -> None:
    store = tmp_path / "policies.json"
    store.write_text('{"9401": "required"}\n')

    async def scenario() -> None:
        async with lab(policy_file=str(store)) as t:
            await _until(lambda: t.fake.global_vars.get("pbx_zrtp_policy_9401") == "required")
            channel, _ = await t.call("auto", destination="9401")
            await _until(lambda: channel.variables.get("pbx_zrtp_active_policy") == "required")

    run(scenario())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "is not JSON: fix it or remove it"),
        ('{"9400": "requried"}', "must map extensions to off, optional or required"),
    ],
)
def test_a_bad_policy_file_is_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    store = tmp_path / "policies.json"
    store.write_text(text)
    with pytest.raises(ConfigError, match=f"freeswitch.policy_file: .*{message}"):
        parse({"password": "p", "policy_file": str(store)})
