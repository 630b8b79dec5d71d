"""Our engine against bzrtp (Linphone's ZRTP library) over UDP on loopback.

``pbx-zrtp endpoint`` (our engine, as a user runs it) talks to ``bzrtp_peer``
(a small C host of Debian's libbzrtp, built by the test setup). Both print one
JSON line; the SAS and all four SRTP keys/salts must be identical, and SRTP
must decrypt in both directions.
"""

from __future__ import annotations

import itertools
import os
import pathlib
import sqlite3
import subprocess
import sys
import time
from typing import Any

import pytest

from .bzrtp_build import finish, run_bzrtp_peer, wait_port_file
from .multistream import two_streams_with_peer

pytestmark = pytest.mark.interop

N_SRTP = 20


def run_ours(args: list[str], timeout: float = 20.0) -> dict[str, Any]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pbx_zrtp.cli", "endpoint", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    report = finish(proc, timeout)  # same JSON-line contract as bzrtp_peer
    return report


def interop(
    binary: pathlib.Path, tmp: pathlib.Path, bzrtp_args: list[str], our_args: list[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Start bzrtp first (it answers whoever speaks), then our endpoint towards it."""
    port_file = tmp / f"bzrtp-port-{time.monotonic_ns()}"
    proc = run_bzrtp_peer(
        binary,
        ["--bind", "127.0.0.1:0", "--port-file", str(port_file), "--linger-ms", "500", *bzrtp_args],
    )
    try:
        port = wait_port_file(port_file, proc)
        ours = run_ours(["--bind", "127.0.0.1:0", "--peer", f"127.0.0.1:{port}", *our_args])
        theirs = finish(proc, 20.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return ours, theirs


def assert_interop(ours: dict[str, Any], theirs: dict[str, Any], srtp: int = N_SRTP) -> None:
    assert ours.get("ok"), ours
    assert theirs.get("ok"), theirs
    assert ours["sas"] == theirs["sas"]
    for field in ("key_agreement", "hash", "cipher", "auth_tag", "sas_type"):
        assert ours[field] == theirs[field], field
    assert {ours["role"], theirs["role"]} == {"initiator", "responder"}
    assert ours["zid_self"] == theirs["zid_peer"] and ours["zid_peer"] == theirs["zid_self"]
    assert ours["srtp_self_key"] == theirs["srtp_peer_key"]
    assert ours["srtp_self_salt"] == theirs["srtp_peer_salt"]
    assert ours["srtp_peer_key"] == theirs["srtp_self_key"]
    assert ours["srtp_peer_salt"] == theirs["srtp_self_salt"]
    if srtp:
        assert ours["srtp"]["received_ok"] == srtp, ours["srtp"]
        assert theirs["srtp"]["received_ok"] == srtp, theirs["srtp"]


def algorithms(ka: str, hash_: str, cipher: str, auth: str, sas: str) -> list[str]:
    return [
        "--key-agreement",
        ka,
        "--hash",
        hash_,
        "--cipher",
        cipher,
        "--auth-tag",
        auth,
        "--sas",
        sas,
    ]


def check_suite(
    peer_bin: pathlib.Path,
    tmp_path: pathlib.Path,
    role: str,
    suite: tuple[str, str, str, str, str],
) -> dict[str, Any]:
    """One call with ``suite`` (key agreement, hash, cipher, auth tag, SAS) forced on
    both sides, ``role`` ours: same SAS, keys and SRTP both ways, and the suite asked
    for is the one agreed. Our result, for further checks."""
    algos = algorithms(*suite)
    ours, theirs = interop(
        peer_bin,
        tmp_path,
        [*algos, "--srtp", str(N_SRTP)],
        [*algos, "--role", role, "--srtp", str(N_SRTP)],
    )
    assert_interop(ours, theirs)
    assert ours["role"] == role
    agreed = tuple(ours[f] for f in ("key_agreement", "hash", "cipher", "auth_tag", "sas_type"))
    assert agreed == suite
    if suite[2] == "AES3":  # AES_CM_256 (RFC 6188): 256-bit SRTP keys
        assert len(bytes.fromhex(ours["srtp_self_key"])) == 32
    return ours


MATRIX = list(
    itertools.product(
        ["X255", "X448", "DH3k", "DH2k"], ["S256", "S384"], ["HS32", "HS80"], ["B32", "B256"]
    )
)


@pytest.mark.parametrize("role", ["initiator", "responder"])
@pytest.mark.parametrize(("ka", "hash_", "auth", "sas"), MATRIX)
def test_interop_matrix(
    bzrtp_peer_bin: pathlib.Path,
    tmp_path: pathlib.Path,
    role: str,
    ka: str,
    hash_: str,
    auth: str,
    sas: str,
) -> None:
    check_suite(bzrtp_peer_bin, tmp_path, role, (ka, hash_, "AES1", auth, sas))


@pytest.mark.parametrize("role", ["initiator", "responder"])
@pytest.mark.parametrize("auth", ["HS80", "HS32"])
@pytest.mark.parametrize("ka", ["X255", "DH3k"])
def test_aes3_srtp_both_ways_with_bzrtp(
    bzrtp_peer_bin: pathlib.Path, tmp_path: pathlib.Path, role: str, auth: str, ka: str
) -> None:
    """AES3: 256-bit keys agree and SRTP (AES_CM_256, RFC 6188) decrypts both ways,
    bzrtp's side on Debian's libsrtp2, ours on pylibsrtp's."""
    check_suite(bzrtp_peer_bin, tmp_path, role, (ka, "S384", "AES3", auth, "B32"))


def test_a_phone_preferring_aes3_gets_it_from_our_default_offer(
    bzrtp_peer_bin: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """A phone that puts AES3 first (as Linphone does with its post-quantum key
    agreements) and initiates gets AES3 from our default offer, SRTP both ways."""
    ours, theirs = interop(
        bzrtp_peer_bin,
        tmp_path,
        ["--cipher", "AES3", "--srtp", str(N_SRTP)],
        ["--role", "responder", "--srtp", str(N_SRTP)],
    )
    assert_interop(ours, theirs)
    assert ours["cipher"] == "AES3" and ours["role"] == "responder"


def test_multistream_second_channel(bzrtp_peer_bin: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """bzrtp's second channel (bzrtp_addChannel, as Linphone keys video) against our
    engine: Multistream from the first stream's session, SRTP both ways on it."""
    first, second, ms, _ = two_streams_with_peer(bzrtp_peer_bin, tmp_path, srtp=N_SRTP)
    assert second.keys.remote_key.hex() == ms["srtp_self_key"]
    assert second.keys.local_key != first.keys.local_key


def test_default_offers_agree(bzrtp_peer_bin: pathlib.Path, tmp_path: pathlib.Path) -> None:
    ours, theirs = interop(bzrtp_peer_bin, tmp_path, ["--srtp", "5"], ["--srtp", "5"])
    assert_interop(ours, theirs, srtp=5)


def _tamper_our_cache(path: pathlib.Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("UPDATE retained_secrets SET rs1 = ?, rs2 = ?", (os.urandom(32), os.urandom(32)))


def test_caches_retained_secrets_verified_flag_and_mismatch(
    bzrtp_peer_bin: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    ours_db, theirs_db = tmp_path / "ours.db", tmp_path / "bzrtp.db"
    ours_args = [
        "--cache",
        str(ours_db),
        "--self-uri",
        "sip:pbx@example",
        "--peer-uri",
        "sip:phone@example",
    ]
    theirs_args = [
        "--cache",
        str(theirs_db),
        "--self-uri",
        "sip:phone@example",
        "--peer-uri",
        "sip:pbx@example",
    ]

    # First call: nothing cached, no mismatch; both mark the SAS verified.
    ours, theirs = interop(
        bzrtp_peer_bin, tmp_path, [*theirs_args, "--mark-verified"], [*ours_args, "--mark-verified"]
    )
    assert_interop(ours, theirs, srtp=0)
    assert not ours["cache_mismatch"] and not theirs["cache_mismatch"]
    assert not ours["previously_verified"] and not theirs["previously_verified"]
    assert oct(ours_db.stat().st_mode & 0o777) == "0o600"

    # Second call: retained secrets match (rs1 on both sides), V flag comes back.
    ours, theirs = interop(bzrtp_peer_bin, tmp_path, theirs_args, ours_args)
    assert_interop(ours, theirs, srtp=0)
    assert not ours["cache_mismatch"] and not theirs["cache_mismatch"]
    assert ours["previously_verified"] and theirs["previously_verified"]

    # Third call after our cache was tampered with: both sides must see the mismatch.
    _tamper_our_cache(ours_db)
    ours, theirs = interop(bzrtp_peer_bin, tmp_path, theirs_args, ours_args)
    assert_interop(ours, theirs, srtp=0)
    assert ours["cache_mismatch"] and theirs["cache_mismatch"]
    assert not ours["previously_verified"] and not theirs["previously_verified"]


def test_one_phone_calling_two_extensions_keeps_continuity(
    bzrtp_peer_bin: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """The PBX has one ZID; bzrtp keys its cache per (ZID, self URI, peer URI)."""
    ours_db, theirs_db = tmp_path / "pbx.db", tmp_path / "phone.db"
    for extension in ["sip:100@pbx", "sip:200@pbx", "sip:100@pbx", "sip:200@pbx", "sip:100@pbx"]:
        ours, theirs = interop(
            bzrtp_peer_bin,
            tmp_path,
            ["--cache", str(theirs_db), "--self-uri", "sip:phone@lan", "--peer-uri", extension],
            ["--cache", str(ours_db), "--self-uri", extension, "--peer-uri", "sip:phone@lan"],
        )
        assert_interop(ours, theirs, srtp=0)
        assert not ours["cache_mismatch"] and not theirs["cache_mismatch"], extension
