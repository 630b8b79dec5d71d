"""Post-quantum ZRTP (KEM mode) against bzrtp with its post-quantum engine.

``bzrtp_peer`` built against current bzrtp + postquantumcryptoengine + liboqs
(``bzrtp_pq_build.py``) and ``pbx-zrtp endpoint`` negotiate the X25519+ML-KEM-512
(X1M1) and X448+ML-KEM-1024 (X3M3) hybrids in both roles: same SAS, same SRTP
keys, SRTP both ways. X3M3's Commit and DHPart1 exceed bzrtp's 1452-octet MTU,
so both sides fragment and reassemble. A bzrtp phone also secures X3M3 through
a required mirror of the relay.
"""

from __future__ import annotations

import asyncio
import pathlib

import pytest

from pbx_zrtp.relay.mirror import Policy
from tests.relay.helpers import PHONE_HOST, RELAY_HOST, EchoPbx, create_call, pq_relay

from .bzrtp_build import finish, run_bzrtp_peer
from .test_bzrtp_interop import N_SRTP, assert_interop, interop

pytestmark = pytest.mark.interop

#: What current Linphone offers with post-quantum on: hybrids first (its own order).
LINPHONE_PQ = ["--key-agreement", "X1M1,X3M3,X255,X448,DH3k", "--hash", "S512,S384,S256"]


@pytest.mark.parametrize("role", ["initiator", "responder"])
@pytest.mark.parametrize("ka", ["X1M1", "X3M3"])
def test_hybrid_both_roles_same_sas_keys_and_srtp(
    bzrtp_pq_peer_bin: pathlib.Path, tmp_path: pathlib.Path, ka: str, role: str
) -> None:
    theirs_args = ["--key-agreement", ka, "--hash", "S512,S256", "--srtp", str(N_SRTP)]
    ours_args = ["--key-agreement", ka, "--hash", "S256,S512", "--role", role]
    ours, theirs = interop(
        bzrtp_pq_peer_bin, tmp_path, theirs_args, [*ours_args, "--srtp", str(N_SRTP)]
    )
    assert_interop(ours, theirs)
    assert ours["role"] == role
    assert ours["key_agreement"] == ka and ours["hash"] == "S512"


@pytest.mark.parametrize("role", ["initiator", "responder"])
@pytest.mark.parametrize("ka", ["X1M1", "X3M3"])
def test_hybrid_with_aes3_keys_match(
    bzrtp_pq_peer_bin: pathlib.Path, tmp_path: pathlib.Path, ka: str, role: str
) -> None:
    """Linphone forces AES3 with its hybrids when both list it: the 256-bit keys
    agree and AES-256 SRTP flows both ways."""
    algos = ["--key-agreement", ka, "--hash", "S512", "--cipher", "AES3,AES1", "--srtp", "20"]
    ours, theirs = interop(bzrtp_pq_peer_bin, tmp_path, algos, [*algos, "--role", role])
    assert_interop(ours, theirs, srtp=20)
    assert ours["cipher"] == "AES3" and len(bytes.fromhex(ours["srtp_self_key"])) == 32


def test_linphone_pq_first_list_negotiates_pq_with_our_defaults(
    bzrtp_pq_peer_bin: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    ours, theirs = interop(
        bzrtp_pq_peer_bin, tmp_path, [*LINPHONE_PQ, "--srtp", "5"], ["--srtp", "5"]
    )
    assert_interop(ours, theirs, srtp=5)
    assert ours["key_agreement"] == "X1M1"


def test_dh_only_peer_negotiates_dh_with_the_same_configuration(
    bzrtp_pq_peer_bin: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    theirs = ["--key-agreement", "X255,DH3k", "--srtp", "5"]
    ours, peer = interop(bzrtp_pq_peer_bin, tmp_path, theirs, ["--srtp", "5"])
    assert_interop(ours, peer, srtp=5)
    assert ours["key_agreement"] == "X255"


def test_bzrtp_pq_phone_secures_x448_mlkem1024_through_a_required_mirror(
    bzrtp_pq_peer_bin: pathlib.Path,
) -> None:
    async def scenario() -> None:
        relay = pq_relay(required_timeout=8.0)
        await relay.start()
        port = await create_call(
            relay, "pq-bz", Policy.REQUIRED, self_uri="sip:100@pbx", peer_uri="sip:linphone@lan"
        )
        pbx = EchoPbx(port)
        await pbx.start()
        try:
            proc = run_bzrtp_peer(
                bzrtp_pq_peer_bin,
                [
                    "--bind",
                    f"{PHONE_HOST}:0",
                    "--peer",
                    f"{RELAY_HOST}:{port}",
                    "--key-agreement",
                    "X3M3",
                    "--hash",
                    "S512",
                    "--srtp",
                    "30",
                    "--timeout",
                    "10",
                ],
            )
            loop = asyncio.get_running_loop()
            phone = await loop.run_in_executor(None, finish, proc, 20.0)
            assert phone["ok"], phone
            report = relay.get("pq-bz")
            assert report.state == "secure" and report.sas == phone["sas"]
            assert report.key_agreement == "X3M3" == phone["key_agreement"]
            assert phone["srtp"]["received_ok"] == 30, phone["srtp"]
        finally:
            pbx.close()
            await relay.close()

    asyncio.run(scenario())
