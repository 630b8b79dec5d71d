"""Several relays behind one Asterisk adapter, as separate `pbx-zrtp relay` processes:
calls spread by load, one relay killed (-9) with a live call and started again.
Fake AMI (real transcripts), real relay processes, real ZRTP phones (our engine)."""

from __future__ import annotations

import asyncio
import pathlib
import subprocess
import sys
from typing import Any

from pbx_zrtp.asterisk.adapter import AsteriskAdapter
from pbx_zrtp.asterisk.config import AsteriskConfig
from pbx_zrtp.relay.control import ControlClient, ControlError
from pbx_zrtp.relay.handle import LocalRelay
from pbx_zrtp.relay.pool import RelayEntry, RelayPool
from tests.asterisk.fake_ami import FakeAmi
from tests.asterisk.test_adapter import SETTLED, Lab, _until, lab, phone, run
from tests.relay.helpers import PBX_HOST, RELAY_HOST, make_relay

ROOT = pathlib.Path(__file__).resolve().parents[2]


class RelayProcess:
    """`pbx-zrtp relay` in a child process; stopped by its pid only."""

    def __init__(self, directory: pathlib.Path, name: str) -> None:
        self.name = name
        self.socket = directory / f"{name}.sock"
        self.config = directory / f"{name}.toml"
        self.log = directory / f"{name}.log"
        self.config.write_text(
            f"""
[relay]
address = "{RELAY_HOST}"
pbx_address = "{PBX_HOST}"
ports = "1024-65534"
fastpath = "off"
[cache]
path = "{directory / name}.db"
[control]
socket = "{self.socket}"
[metrics]
listen = ""
"""
        )
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pbx_zrtp.cli", "relay", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        deadline = asyncio.get_running_loop().time() + 20
        while True:
            try:
                async with ControlClient(f"unix:{self.socket}", timeout=2) as client:
                    await client.request("ping")
                return
            except ControlError:
                if asyncio.get_running_loop().time() > deadline or self.proc.poll() is not None:
                    raise AssertionError(f"relay {self.name} did not start: {self.log}") from None
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # SIGKILL: no goodbye, no clean-up
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    async def show(self, call_id: str) -> dict[str, Any]:
        async with ControlClient(f"unix:{self.socket}") as client:
            result: dict[str, Any] = await client.request("show", call_id=call_id)
            return result


def test_calls_spread_over_relays_and_survive_one_relay_killed(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        relays = {name: RelayProcess(tmp_path, name) for name in ("a", "b")}
        fake = FakeAmi()
        ami_port = await fake.start()
        pool: RelayPool | None = None
        adapter: AsteriskAdapter | None = None
        t: Lab | None = None
        try:
            await asyncio.gather(*(r.start() for r in relays.values()))
            entries = [RelayEntry(n, f"unix:{r.socket}", RELAY_HOST) for n, r in relays.items()]
            pool = RelayPool.connect(entries, grace=1.0)
            await pool.start()
            adapter = AsteriskAdapter(
                AsteriskConfig(
                    host="127.0.0.1",
                    port=ami_port,
                    username="ctl",
                    secret="ctlpass",
                    hangup_failed_after=0.3,
                ),
                pool,
            )
            assert await adapter.start()
            t = Lab(fake, None, adapter)  # type: ignore[arg-type]  # no in-process relay

            def relays_db(name: str) -> str:
                return fake.astdb.get(("pbx_zrtp/relays", name), "")

            # two required calls: one on each relay (the least loaded takes the next call)
            (c1, p1), (c2, p2) = await t.call("required"), await t.call("required")
            _r1, _r2, s1, s2 = await asyncio.gather(
                phone(p1, srtp=3),
                phone(p2, zid=b"B" * 12, srtp=3),
                c1.wait_for_var("ZRTP_STATE", SETTLED, 10),
                c2.wait_for_var("ZRTP_STATE", SETTLED, 10),
            )
            assert (s1, s2) == ("secure", "secure")
            placed = {pool.holder(f"ast-{c.uniqueid}") for c in (c1, c2)}
            assert placed == {"a", "b"}
            on_a, on_b = (c1, c2) if pool.holder(f"ast-{c1.uniqueid}") == "a" else (c2, c1)
            await _until(lambda: relays_db("a").startswith("up") and "calls=1" in relays_db("a"))

            # kill -9 relay a: marked down at once, its call failed after the grace time
            relays["a"].kill()
            await _until(lambda: relays_db("a").startswith("DOWN"), timeout=5)
            c3, _p3 = await t.call("optional")
            await _until(lambda: c3.variables.get("ZRTP_STATE") == "pending")
            assert pool.holder(f"ast-{c3.uniqueid}") == "b"  # new calls go to the survivor
            await _until(lambda: on_a.variables.get("ZRTP_STATE") == "failed", timeout=5)
            assert on_a.variables["ZRTP_FAIL_REASON"] == "relay a unreachable for 1 s"
            assert on_a.variables["ZRTP_SECURE"] == "0" and on_a.variables["ZRTP_SAS"] == ""
            assert any(
                a.get("UserEvent") == "ZrtpFailed" and a.get("CallId") == on_a.uniqueid
                for a in fake.actions
            )
            await _until(lambda: not on_a.alive)  # required: hung up, cause 58
            assert on_a.hangup_cause == 58
            # the call on relay b never noticed
            assert on_b.alive and on_b.variables["ZRTP_STATE"] == "secure"
            assert (await relays["b"].show(f"ast-{on_b.uniqueid}"))["state"] == "secure"

            # relay a starts again: back in the pool, and the next call goes to it
            await relays["a"].start()
            await _until(lambda: relays_db("a").startswith("up"), timeout=10)
            c4, _p4 = await t.call("off")
            await c4.wait_for_var("ZRTP_STATE", SETTLED, 10)
            assert pool.holder(f"ast-{c4.uniqueid}") == "a"
            for channel in (on_b, c3, c4):
                await channel.hangup()
            await _until(lambda: not adapter.calls if adapter else True)
            # the call's AstDB row goes once the adapter has ended the call (after it
            # leaves adapter.calls), so wait for it rather than race it
            await _until(lambda: not fake.astdb.get(("pbx_zrtp/calls", on_b.uniqueid)))
        finally:
            if adapter is not None:
                await adapter.close()
            if pool is not None:
                await pool.close()
            for relay in relays.values():
                relay.stop()
            if t is not None:
                for pbx in t.pbxs:
                    pbx.close()
            await fake.close()

    run(scenario())


def test_pbx_zrtp_restarted_with_its_relay_tells_asterisk_and_hangs_up_required() -> None:
    """`pbx-zrtp run` (relay and adapter in one process) killed and started again: the
    new one finds a channel that was secure and has no mirror any more."""

    async def scenario() -> None:
        async with lab() as t:
            channel, port = await t.call("required")
            await asyncio.gather(
                phone(port, srtp=0), channel.wait_for_var("ZRTP_STATE", SETTLED, 10)
            )
            t.adapter.ami.close()  # the process dies: no clean-up of any kind
            await t.relay.close()
            relay = make_relay()
            adapter = AsteriskAdapter(
                AsteriskConfig(
                    host="127.0.0.1",
                    port=t.fake.port,
                    username="ctl",
                    secret="ctlpass",
                    hangup_failed_after=0.3,
                ),
                LocalRelay(relay),
            )
            try:
                assert await adapter.start()
                await _until(lambda: channel.variables.get("ZRTP_STATE") == "failed")
                assert channel.variables["ZRTP_FAIL_REASON"] == (
                    "the relay lost this call (it restarted)"
                )
                assert channel.variables["ZRTP_SECURE"] == "0"
                await _until(lambda: not channel.alive)
                assert channel.hangup_cause == 58
                await _until(lambda: not adapter.calls)
            finally:
                await adapter.close()
                await relay.close()

    run(scenario())


def test_an_adapter_restarted_alone_adopts_the_calls_its_relay_still_carries() -> None:
    async def scenario() -> None:
        async with lab() as t:
            channel, port = await t.call("required")
            await asyncio.gather(
                phone(port, srtp=0), channel.wait_for_var("ZRTP_STATE", SETTLED, 10)
            )
            t.adapter.ami.close()  # the adapter's process dies; the relay carries on
            channel.variables["ZRTP_SAS"] = "lost"  # as if a Setvar had not arrived
            adapter = AsteriskAdapter(
                AsteriskConfig(
                    host="127.0.0.1", port=t.fake.port, username="ctl", secret="ctlpass"
                ),
                LocalRelay(t.relay),
            )
            try:
                assert await adapter.start()
                await _until(lambda: channel.variables.get("ZRTP_SAS") != "lost")
                assert channel.variables["ZRTP_STATE"] == "secure"
                assert channel.variables["ZRTP_SAS"] == t.relay.calls()[0].sas
                assert len(t.relay.calls()) == 1  # adopted, not mirrored twice
                await channel.hangup()
                await _until(lambda: not t.relay.calls())  # and freed at hangup
            finally:
                await adapter.close()

    run(scenario())
