"""SIGHUP's re-read of the PBX sections (``systemctl reload``): each adapter's
``reconfigure`` takes what applies to new calls and names what needs a restart; the
app reconfigures the adapters' relay pools and names sections it cannot change live.
The whole path against a running ``pbx-zrtp run``: tests/test_signals.py; against a
real Asterisk: tests/integration/test_asterisk_reload_real.py."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from pbx_zrtp import app
from pbx_zrtp.asterisk.adapter import AsteriskAdapter
from pbx_zrtp.asterisk.config import AsteriskConfig
from pbx_zrtp.calls import Policy
from pbx_zrtp.config.relays import RelayEntry
from pbx_zrtp.freeswitch.adapter import FreeswitchAdapter
from pbx_zrtp.freeswitch.config import FreeswitchConfig
from pbx_zrtp.relay.config import RelayConfig
from pbx_zrtp.relay.handle import LocalRelay
from tests.relay.helpers import make_relay


def test_the_freeswitch_adapter_takes_policy_timeout_and_cause_live() -> None:
    async def scenario() -> None:
        relay = make_relay()
        config = FreeswitchConfig(password="ClueCon")
        adapter = FreeswitchAdapter(config, LocalRelay(relay))
        try:
            new = replace(
                config,
                default_policy=Policy.REQUIRED,
                hangup_failed_after=7.0,
                hangup_cause="NORMAL_TEMPORARY_FAILURE",
                require_advertised_relay=False,
            )
            assert adapter.reconfigure(new) == []
            assert adapter.default_policy is Policy.REQUIRED
            assert await adapter.resolve_policy("auto", "") is Policy.REQUIRED
            assert adapter.hangup_failed_after == 7.0
            assert adapter.failed_cause == "NORMAL_TEMPORARY_FAILURE"
            assert adapter.config.require_advertised_relay is False
            # the ESL session's own settings: named (never their values), and kept
            moved = replace(new, host="192.0.2.9", password="s3cr3t-pw")
            assert adapter.reconfigure(moved) == ["freeswitch.host", "freeswitch.password"]
            assert adapter.esl.address == "127.0.0.1:8021"
            with pytest.raises(TypeError):
                adapter.reconfigure(AsteriskConfig(secret="s"))
        finally:
            await relay.close()

    asyncio.run(scenario())


def test_the_asterisk_adapter_takes_patterns_live_and_names_ami_settings() -> None:
    async def scenario() -> None:
        relay = make_relay()
        config = AsteriskConfig(secret="s", policies=[("_6XX", Policy.OPTIONAL)])
        adapter = AsteriskAdapter(config, LocalRelay(relay))
        try:
            assert adapter._matched_policy("610") is Policy.OPTIONAL
            new = replace(config, policies=[("610", Policy.OFF)], hangup_failed_after=0.0)
            assert adapter.reconfigure(new) == []
            assert adapter._matched_policy("610") is Policy.OFF
            assert adapter._matched_policy("620") is None
            assert adapter.hangup_failed_after == 0.0
            changed = replace(new, port=5039, username="other", secret="t")
            assert adapter.reconfigure(changed) == [
                "asterisk.port",
                "asterisk.username",
                "asterisk.secret",
            ]
        finally:
            await relay.close()

    asyncio.run(scenario())


class _Adapter:
    def __init__(self) -> None:
        self.configs: list[object] = []

    def reconfigure(self, config: object) -> list[str]:
        self.configs.append(config)
        return []


class _Pool:
    def __init__(self) -> None:
        self.lists: list[tuple[list[RelayEntry], float]] = []

    async def reconfigure(self, entries: list[RelayEntry], *, grace: float) -> None:
        self.lists.append((entries, grace))


def test_the_app_reconfigures_pools_and_names_what_it_cannot_change() -> None:
    entry = RelayEntry("r1", "unix:/run/r1.sock", "192.0.2.2")
    adapter, pooled, pool = _Adapter(), _Adapter(), _Pool()
    running = app._Running(
        adapters={"asterisk": pooled, "freeswitch": adapter},  # type: ignore[dict-item]
        pools={"asterisk": pool},  # type: ignore[dict-item]
    )

    def reload(**pbxs: Any) -> list[str]:
        settings = app.Settings(RelayConfig.defaults(), pbxs)
        return asyncio.run(app._reload_pbxs(settings, running))

    ast = AsteriskConfig(secret="s", relays=[entry], relay_grace=4.0)
    fs = FreeswitchConfig()
    assert reload(asterisk=ast, freeswitch=fs) == []
    assert pooled.configs == [ast] and adapter.configs == [fs]
    assert pool.lists == [([entry], 4.0)]
    # a pool cannot appear or vanish under an adapter; nor can a section
    assert reload(asterisk=replace(ast, relays=[]), freeswitch=replace(fs, relays=[entry])) == [
        "asterisk.relays (removed)",
        "freeswitch.relays (added)",
    ]
    assert reload(asterisk=ast) == ["[freeswitch] (removed)"]
    running.adapters.pop("freeswitch")
    assert reload(asterisk=ast, freeswitch=fs) == ["[freeswitch] (added)"]
    running.chosen = ("asterisk",)  # `pbx-zrtp asterisk`: [freeswitch] is not ours
    assert reload(asterisk=ast, freeswitch=fs) == []


def test_an_adapter_alone_names_a_changed_way_to_its_relay(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """``pbx-zrtp asterisk`` (no relay in the process): its section applies live; the
    control socket it reaches the relay by waits for a restart, and stays as it runs."""
    config = tmp_path / "adapter.toml"

    def write(socket: str, policy: str) -> None:
        config.write_text(
            f'[control]\nsocket = "{socket}"\n\n'
            f'[asterisk]\nsecret = "s"\ndefault_policy = "{policy}"\n'
        )

    write("/run/pbx-zrtp/control.sock", "optional")
    current = app.load_settings(str(config))
    adapter = _Adapter()
    running = app._Running(adapters={"asterisk": adapter})  # type: ignore[dict-item]
    write("/run/other.sock", "required")
    with caplog.at_level("INFO", logger="pbx_zrtp"):
        new = asyncio.run(app._reload(str(config), current, None, running))
    assert new.relay.control_socket == "/run/pbx-zrtp/control.sock"  # as it runs
    assert new.pbxs["asterisk"].default_policy is Policy.REQUIRED  # type: ignore[attr-defined]
    assert adapter.configs == [new.pbxs["asterisk"]]
    assert (
        "reloaded; changed but applied only by a restart (systemctl restart): control.socket"
        in caplog.text
    )


def test_freeswitch_next_call_takes_the_reloaded_default_policy_the_live_one_keeps_its() -> None:
    """A fake ESL (replaying FreeSWITCH), a real relay: ``auto`` resolves to the
    reloaded default for the next call; the call in progress keeps its policy."""
    from tests.freeswitch.test_adapter import lab

    async def scenario() -> None:
        async with lab(default_policy=Policy.OPTIONAL) as t:
            live, _ = await t.call("auto")
            await live.wait_for_var("pbx_zrtp_active_policy", bool, 10)
            assert live.variables["pbx_zrtp_active_policy"] == "optional"
            config = replace(t.adapter.config, default_policy=Policy.REQUIRED)
            assert t.adapter.reconfigure(config) == []
            after, _ = await t.call("auto")
            await after.wait_for_var("pbx_zrtp_active_policy", bool, 10)
            assert after.variables["pbx_zrtp_active_policy"] == "required"
            policies = {r.call_id: str(r.policy and r.policy.value) for r in t.relay.calls()}
            assert sorted(policies.values()) == ["optional", "required"], policies
            assert live.variables["pbx_zrtp_active_policy"] == "optional"

    asyncio.run(asyncio.wait_for(scenario(), 60))
