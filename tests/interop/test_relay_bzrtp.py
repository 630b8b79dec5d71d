"""A bzrtp phone (Linphone's ZRTP library) through the relay to a plain-RTP PBX."""

from __future__ import annotations

import asyncio
import os
import pathlib

import pytest

from pbx_zrtp.calls import Policy
from pbx_zrtp.relay.fastpath import available
from tests.relay.helpers import PHONE_HOST, RELAY_HOST, EchoPbx, Recorder, create_call, make_relay

from .bzrtp_build import finish, run_bzrtp_peer

pytestmark = pytest.mark.interop


_WHY = available()
if _WHY is not None and os.environ.get("CI"):
    raise RuntimeError(f"the fast path must work in CI: {_WHY}")
_NO_FAST = pytest.mark.skipif(_WHY is not None, reason=f"no fast path: {_WHY}")


def _case(key_agreement: str, cipher: str, auth_tag: str, fast: bool) -> object:
    return pytest.param(key_agreement, cipher, auth_tag, fast, marks=[_NO_FAST] if fast else [])


@pytest.mark.parametrize(
    ("key_agreement", "cipher", "auth_tag", "fast"),
    [
        _case("X255", "AES1", "HS80", False),
        _case("DH3k", "AES1", "HS80", False),
        _case("DH3k", "AES1", "HS80", True),
        # AES3 (AES_CM_256 SRTP) both ways, in Python and in the native worker
        *[_case("X255", "AES3", tag, fast) for tag in ("HS80", "HS32") for fast in (False, True)],
    ],
)
def test_bzrtp_phone_secures_through_a_mirror(
    bzrtp_peer_bin: pathlib.Path, key_agreement: str, cipher: str, auth_tag: str, fast: bool
) -> None:
    async def scenario() -> None:
        # both sides put the cipher and tag first: whichever initiates picks them
        relay = make_relay(
            fastpath=fast,
            ciphers=tuple(dict.fromkeys((cipher.encode(), b"AES1"))),
            auth_tags=tuple(dict.fromkeys((auth_tag.encode(), b"HS32", b"HS80"))),
        )
        recorder = Recorder(relay)
        port = await create_call(
            relay, "bz-1", Policy.REQUIRED, self_uri="sip:100@pbx", peer_uri="sip:linphone@lan"
        )
        pbx = EchoPbx(port)
        await pbx.start()
        try:
            proc = run_bzrtp_peer(
                bzrtp_peer_bin,
                [
                    "--bind",
                    f"{PHONE_HOST}:0",
                    "--peer",
                    f"{RELAY_HOST}:{port}",
                    "--key-agreement",
                    key_agreement,
                    "--cipher",
                    cipher,
                    "--auth-tag",
                    auth_tag,
                    "--srtp",
                    "30",
                    "--timeout",
                    "10",
                ],
            )
            loop = asyncio.get_running_loop()
            phone = await loop.run_in_executor(None, finish, proc, 20.0)
            assert phone["ok"], phone
            await recorder.wait_for(lambda: "secure" in recorder.states("bz-1"))
            report = relay.get("bz-1")
            assert report.state == "secure" and report.sas == phone["sas"]
            assert report.key_agreement == key_agreement == phone["key_agreement"]
            assert report.cipher == cipher == phone["cipher"]
            assert report.auth_tag == auth_tag == phone["auth_tag"]
            # The phone's SRTP came back through the PBX echo, re-encrypted by the relay.
            assert phone["srtp"]["received_ok"] == 30, phone["srtp"]
            assert report.counters["drops"].get("srtp_auth", 0) == 0
            mirror = next(iter(relay.mirrors()))
            assert (mirror.fast.handle is not None) is fast  # the path under test
        finally:
            pbx.close()
            await relay.close()

    asyncio.run(scenario())
