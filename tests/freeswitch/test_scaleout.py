"""Several relays behind one FreeSWITCH adapter: the adapter publishes, per group,
the relay the dialplan should advertise next (``${pbx_zrtp_relay_ip}``), so calls
spread by load; a relay that goes away with a live call. Fake ESL (real transcripts),
real relays (pre-bound, on two addresses) behind real control sockets, real phones."""

from __future__ import annotations

import asyncio
import pathlib
from typing import Any

from pbx_zrtp.endpoint import EndpointOptions, run_endpoint
from pbx_zrtp.freeswitch.adapter import FreeswitchAdapter
from pbx_zrtp.freeswitch.config import FreeswitchConfig
from pbx_zrtp.relay.control.server import ControlServer
from pbx_zrtp.relay.core import Relay
from pbx_zrtp.relay.handle import LocalRelay
from pbx_zrtp.relay.pool import RelayEntry, RelayPool
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from tests.freeswitch.fake_esl import FakeEsl, FakeFsChannel
from tests.freeswitch.test_adapter import SETTLED, _until, lab, run
from tests.freeswitch.test_adapter import phone as fs_phone
from tests.relay.helpers import PHONE_HOST, RELAY_HOST, EchoPbx, free_even_port, make_relay

OTHER_RELAY_HOST = "127.0.0.6"


def test_calls_follow_the_published_relay_and_survive_one_going_away(
    tmp_path: pathlib.Path,
) -> None:
    async def scenario() -> None:
        fake = FakeEsl()
        esl_port = await fake.start()
        ports = [free_even_port() for _ in range(3)]
        sites: dict[str, tuple[Relay, ControlServer]] = {}
        for name, host in (("a", RELAY_HOST), ("b", OTHER_RELAY_HOST)):
            relay = make_relay(prebind=tuple(ports), relay_host=host, required_timeout=5)
            await relay.start()
            server = ControlServer(relay)
            await server.start_unix(str(tmp_path / f"{name}.sock"))
            sites[name] = (relay, server)
        entries = [
            RelayEntry("a", f"unix:{tmp_path / 'a.sock'}", RELAY_HOST),
            RelayEntry("b", f"unix:{tmp_path / 'b.sock'}", OTHER_RELAY_HOST),
        ]
        pool = RelayPool.connect(entries, grace=0.5)
        await pool.start()
        adapter = FreeswitchAdapter(
            FreeswitchConfig(
                host="127.0.0.1", port=esl_port, password="ClueCon", hangup_failed_after=0.2
            ),
            pool,
        )
        assert await adapter.start()
        pbxs: list[EchoPbx] = []
        globals_ = fake.global_vars

        async def call(policy: str) -> tuple[FakeFsChannel, int, str]:
            """The dialplan of pbx_zrtp.xml: rtp_adv_audio_ip=${pbx_zrtp_relay_ip}."""
            port = ports.pop()
            pbxs.append(EchoPbx(port))
            await pbxs[-1].start()
            channel = fake.new_call(local_media_port=port, destination="9400")
            await channel.set_var("pbx_zrtp_policy", policy)
            advertised = globals_["pbx_zrtp_relay_ip"]
            await channel.set_var("rtp_adv_audio_ip", advertised)
            await channel.answer()
            return channel, port, advertised

        def phone(host: str, port: int, zid: bytes) -> Any:
            return run_endpoint(
                ZrtpConfiguration(zid=zid),
                EndpointOptions(bind=(PHONE_HOST, 0), peer=(host, port), srtp_count=3, timeout=10),
            )

        try:
            await _until(lambda: globals_.get("pbx_zrtp_relay_ip") == RELAY_HOST)
            assert globals_["pbx_zrtp_relay_ip_default"] == RELAY_HOST
            c1, p1, at1 = await call("required")
            assert at1 == RELAY_HOST
            # a holds a call now: the next one is sent to b
            await _until(lambda: globals_.get("pbx_zrtp_relay_ip") == OTHER_RELAY_HOST)
            c2, p2, at2 = await call("required")
            assert at2 == OTHER_RELAY_HOST
            r1, r2, s1, s2 = await asyncio.gather(
                phone(at1, p1, b"1" * 12),
                phone(at2, p2, b"2" * 12),
                c1.wait_for_var("pbx_zrtp_state", SETTLED, 10),
                c2.wait_for_var("pbx_zrtp_state", SETTLED, 10),
            )
            assert (s1, s2) == ("secure", "secure")
            assert c1.variables["pbx_zrtp_sas"] == r1["sas"]
            assert c2.variables["pbx_zrtp_sas"] == r2["sas"]
            assert [r.call_id for r in sites["a"][0].calls()] == [f"fs-{c1.uuid}"]
            assert [r.call_id for r in sites["b"][0].calls()] == [f"fs-{c2.uuid}"]
            # no "=" in the value: global_setvar would take it as a conditional set
            assert "a up group:default address:" in globals_["pbx_zrtp_relays"]

            # relay a goes away for good (its control socket and its mirrors)
            relay_a, server_a = sites.pop("a")
            await server_a.close()
            await relay_a.close()
            await _until(lambda: "a DOWN" in globals_.get("pbx_zrtp_relays", ""))
            assert globals_["pbx_zrtp_relay_ip"] == OTHER_RELAY_HOST
            await _until(lambda: c1.variables.get("pbx_zrtp_state") == "failed")
            assert c1.variables["pbx_zrtp_fail_reason"] == "relay a unreachable for 0.5 s"
            assert c1.variables["zrtp_secure_media_confirmed_audio"] == "false"
            await _until(lambda: not c1.alive)  # required: hung up
            assert c1.hangup_cause == "BEARERCAPABILITY_NOTAVAIL"
            assert c2.alive and c2.variables["pbx_zrtp_state"] == "secure"

            # a dialplan that still advertised a (read before it went away) gets a named
            # failure instead of a call with no relay behind R
            port = ports.pop()
            stale = fake.new_call(local_media_port=port, destination="9400")
            await stale.set_var("pbx_zrtp_policy", "optional")
            await stale.set_var("rtp_adv_audio_ip", RELAY_HOST)
            await stale.answer()
            assert await stale.wait_for_var("pbx_zrtp_state", SETTLED, 10) == "failed"
            assert stale.variables["pbx_zrtp_fail_reason"] == (
                "relay: no relay of group default is up (a down)"
            )
            await stale.hangup()
            await c2.hangup()
            await _until(lambda: not adapter.calls and not sites["b"][0].calls())
        finally:
            await adapter.close()
            await pool.close()
            for relay, server in sites.values():
                await server.close()
                await relay.close()
            for pbx in pbxs:
                pbx.close()
            await fake.close()

    run(scenario())


def test_pbx_zrtp_restarted_with_its_relay_tells_freeswitch() -> None:
    """`pbx-zrtp run` killed and started again: a call that was secure has no mirror
    in the new relay; the new adapter says so and hangs the required call up."""

    async def scenario() -> None:
        async with lab(hangup_failed_after=0.2) as t:
            channel, port = await t.call("required")
            await asyncio.gather(
                fs_phone(port, srtp=0), channel.wait_for_var("pbx_zrtp_state", SETTLED, 10)
            )
            await t.adapter.esl.close()  # the process dies: no clean-up of any kind
            await t.relay.close()
            relay = make_relay(prebind=(port,))
            await relay.start()
            adapter = FreeswitchAdapter(
                FreeswitchConfig(
                    host="127.0.0.1", port=t.fake.port, password="ClueCon", hangup_failed_after=0.2
                ),
                LocalRelay(relay),
            )
            try:
                assert await adapter.start()
                await _until(lambda: channel.variables.get("pbx_zrtp_state") == "failed")
                assert channel.variables["pbx_zrtp_fail_reason"] == (
                    "the relay lost this call (it restarted)"
                )
                assert channel.variables["zrtp_secure_media_confirmed_audio"] == "false"
                await _until(lambda: not channel.alive)
                assert channel.hangup_cause == "BEARERCAPABILITY_NOTAVAIL"
            finally:
                await adapter.close()
                await relay.close()

    run(scenario())
