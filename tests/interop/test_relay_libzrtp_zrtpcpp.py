"""libzrtp and GNU ZRTP phones through the relay (a trusted MiTM, RFC 6189 §7.3).

The relay sets the M flag. A libzrtp phone with its stock profile must go secure
(issue 16, item 1); an enrolled libzrtp or GNU ZRTP phone bridged to an enrolled
phone of ours must show the same SAS as that phone (SASrelay rendering).
"""

from __future__ import annotations

import asyncio
import os
import pathlib
from typing import Any

import pytest

from pbx_zrtp.cache.memory import MemorySecretCache
from pbx_zrtp.relay.core import Relay
from pbx_zrtp.relay.mirror import Policy
from tests.relay.helpers import PHONE_HOST, RELAY_HOST, EchoPbx, Recorder, create_call, make_relay
from tests.relay.test_trusted_mitm import BOB, Phone, enroll

from .bzrtp_build import finish, run_bzrtp_peer

pytestmark = pytest.mark.interop


async def _phone(
    binary: pathlib.Path, port: int, *args: str, timeout: float = 30.0
) -> dict[str, Any]:
    proc = run_bzrtp_peer(
        binary,
        ["--bind", f"{PHONE_HOST}:0", "--peer", f"{RELAY_HOST}:{port}", "--timeout", "15", *args],
    )
    return await asyncio.get_running_loop().run_in_executor(None, finish, proc, timeout)


def test_stock_libzrtp_phone_secures_through_a_required_mirror(
    libzrtp_peer_bin: pathlib.Path,
) -> None:
    """6 of 6 calls failed before issue 16: the relay committed HS80, which a stock
    libzrtp profile does not list, and libzrtp answered Error 0x54."""

    async def scenario() -> None:
        relay = make_relay()
        recorder = Recorder(relay)
        try:
            for n in range(3):
                call = f"zfone-{n}"
                port = await create_call(relay, call, Policy.REQUIRED)
                # The relay's priming echoed back would reach libzrtp as a second SSRC
                # first, and its SRTP receiver then refuses the phone's own stream
                # (seen: 1 ok, 20 bad): echo only what a PBX would send back.
                mirror = next(
                    m for m in relay.mirrors() if m.identity and m.identity.call_id == call
                )
                pbx = EchoPbx(port, ignore_ssrcs={mirror._prime_ssrc})
                await pbx.start()
                try:
                    phone = await _phone(libzrtp_peer_bin, port, "--srtp", "20")
                    assert phone["ok"], phone
                    await recorder.wait_for(lambda call=call: "secure" in recorder.states(call))
                    report = relay.get(call)
                    assert report.sas == phone["sas"] and report.auth_tag == "HS32"
                    assert phone["peer_mitm"]  # the relay's M flag reached libzrtp
                    assert phone["srtp"]["received_ok"] == 20, phone["srtp"]
                finally:
                    relay.delete(call)
                    pbx.close()
        finally:
            await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 120))


async def _enroll_phone(
    relay: Relay, recorder: Recorder, binary: pathlib.Path, cache: pathlib.Path
) -> dict[str, Any]:
    call = f"enroll-{os.urandom(3).hex()}"
    port = await create_call(relay, call, Policy.REQUIRED, enroll=True)
    pbx = EchoPbx(port)
    await pbx.start()
    try:
        task = asyncio.ensure_future(
            _phone(binary, port, "--cache", str(cache), "--accept-enrollment", "--linger-ms", "300")
        )
        await recorder.wait_for(lambda: "secure" in recorder.states(call))
        report = await relay.enroll(call)  # the user confirmed the SAS on the enrollment extension
        assert report.enrolled and report.enrollment_offered
        return await task
    finally:
        relay.delete(call)
        pbx.close()


async def _bridged(
    relay: Relay, recorder: Recorder, binary: pathlib.Path, cache: pathlib.Path, bob: Phone
) -> tuple[dict[str, Any], dict[str, Any], list[Any]]:
    group = f"bridge-{os.urandom(3).hex()}"
    legs = [f"{group}-a", f"{group}-b"]
    ports = [await create_call(relay, leg, Policy.REQUIRED, bridge=group) for leg in legs]
    pbxs = [EchoPbx(port) for port in ports]
    for pbx in pbxs:
        await pbx.start()
    try:
        theirs_task = asyncio.ensure_future(
            _phone(
                binary,
                ports[0],
                "--cache",
                str(cache),
                "--sas-relay-wait",
                "4000",
                "--linger-ms",
                "500",
            )
        )
        ours = await bob.call(ports[1], sas_relay_wait=4)
        theirs = await theirs_task

        def settled() -> bool:
            reports = [relay.get(leg) for leg in legs]
            return all(
                r.sas_relay == "none" or r.sas_relay.endswith("acknowledged") for r in reports
            )

        await recorder.wait_for(settled)
        return theirs, ours, [relay.get(leg) for leg in legs]
    finally:
        for leg in legs:
            relay.delete(leg)
        for pbx in pbxs:
            pbx.close()


def _trusted_mitm(binary: pathlib.Path, tmp_path: pathlib.Path) -> tuple[Any, ...]:
    async def scenario() -> tuple[Any, ...]:
        relay = make_relay(cache=MemorySecretCache())
        await relay.start()
        recorder = Recorder(relay)
        try:
            bob = Phone(BOB)
            await enroll(relay, recorder, bob)
            cache = tmp_path / "phone.cache"
            enrolled = await _enroll_phone(relay, recorder, binary, cache)
            theirs, ours, reports = await _bridged(relay, recorder, binary, cache, bob)
            return enrolled, theirs, ours, reports
        finally:
            await relay.close()

    return asyncio.run(asyncio.wait_for(scenario(), 120))


def test_libzrtp_phone_enrolls_and_renders_the_relayed_sas(
    libzrtp_peer_bin: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    enrolled, theirs, ours, reports = _trusted_mitm(libzrtp_peer_bin, tmp_path)
    assert enrolled["ok"] and enrolled["peer_mitm"] and enrolled["enrollment_offered"]  # E flag
    assert enrolled["enrolled"], enrolled
    assert theirs["ok"] and ours["ok"], (theirs, ours)
    assert theirs["pbx_trusted"] and ours["pbx_trusted"]
    # The two humans read the same words, whichever leg got the other's SAS relayed.
    assert theirs["displayed_sas"] == ours["displayed_sas"], (theirs, ours)
    assert theirs["sas"] != ours["sas"]  # two legs, two exchanges
    assert all(r.sas_scope == "end-to-end" for r in reports), reports
    if ours["sas_relay"] and ours["sas_relay"]["relayed"]:
        assert ours["displayed_sas"] == theirs["sas"]
    else:
        assert theirs["sas_updated"] and theirs["displayed_sas"] == ours["sas"]


def test_gnu_zrtp_phone_with_sas_relay_support_renders_the_relayed_sas(
    zrtpcpp_sasrelay_peer_bin: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    enrolled, theirs, ours, reports = _trusted_mitm(zrtpcpp_sasrelay_peer_bin, tmp_path)
    assert enrolled["ok"] and enrolled["enrollment_offered"] and enrolled["enrolled"], enrolled
    assert theirs["ok"] and ours["ok"] and theirs["sas_relay_support"], (theirs, ours)
    assert theirs["pbx_trusted"] and ours["pbx_trusted"]
    assert theirs["displayed_sas"] == ours["displayed_sas"], (theirs, ours)
    assert all(r.sas_scope == "end-to-end" for r in reports), reports


def test_stock_gnu_zrtp_cannot_enroll_but_the_enrolled_far_end_reads_its_sas(
    zrtpcpp_peer_bin: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """Without ZRTP_SAS_RELAY_SUPPORT GNU ZRTP ignores the E flag (no enrollment
    prompt, no pbxsecret) and would not render a SASrelay; one enrolled leg is
    enough: the relay sends the GNU leg's SAS to our enrolled phone."""
    enrolled, theirs, ours, reports = _trusted_mitm(zrtpcpp_peer_bin, tmp_path)
    assert enrolled["ok"] and not enrolled["enrollment_offered"] and not enrolled["enrolled"]
    assert theirs["ok"] and ours["ok"] and not theirs["sas_relay_support"]
    assert not theirs["pbx_trusted"] and not theirs["sas_relay_seen"]
    assert ours["sas_relay"]["relayed"] and ours["displayed_sas"] == theirs["sas"]
    assert theirs["displayed_sas"] == theirs["sas"] == ours["displayed_sas"]
    assert all(r.sas_scope == "end-to-end" for r in reports), reports
