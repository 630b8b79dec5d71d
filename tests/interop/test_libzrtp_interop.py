"""Our engine against Zfone's libzrtp (the protocol author's reference library) over UDP.

``pbx-zrtp endpoint`` talks to ``libzrtp_peer`` (built by the test setup from
libzrtp's public sources, see libzrtp_build.py). Same SAS, same four SRTP
keys/salts, and SRTP (ours over libsrtp, libzrtp's own engine) both ways.
"""

from __future__ import annotations

import itertools
import os
import pathlib
import sqlite3

import pytest

from .multistream import ours_first, two_streams_with_peer
from .test_bzrtp_interop import assert_interop, check_suite, interop

pytestmark = pytest.mark.interop

N_SRTP = 10

#: libzrtp has no Curve25519 (X255/E255) and no X448; EC38 goes with S384 only (§5.1.5).
MATRIX = [
    combo
    for combo in itertools.product(
        ["DH3k", "DH2k", "EC25", "EC38"], ["S256", "S384"], ["HS32", "HS80"], ["B32", "B256"]
    )
    if combo[:2] != ("EC38", "S256")
]


@pytest.mark.parametrize("role", ["initiator", "responder"])
@pytest.mark.parametrize(("ka", "hash_", "auth", "sas"), MATRIX)
def test_interop_matrix(
    libzrtp_peer_bin: pathlib.Path,
    tmp_path: pathlib.Path,
    role: str,
    ka: str,
    hash_: str,
    auth: str,
    sas: str,
) -> None:
    check_suite(libzrtp_peer_bin, tmp_path, role, (ka, hash_, "AES1", auth, sas))


@pytest.mark.parametrize("role", ["initiator", "responder"])
@pytest.mark.parametrize("auth", ["HS80", "HS32"])
@pytest.mark.parametrize("ka", ["DH3k", "EC38"])
def test_aes3_srtp_both_ways(
    libzrtp_peer_bin: pathlib.Path, tmp_path: pathlib.Path, role: str, auth: str, ka: str
) -> None:
    """AES3 (AES_CM_256 SRTP, RFC 6188): 256-bit keys agree and SRTP decrypts both ways."""
    ours = check_suite(libzrtp_peer_bin, tmp_path, role, (ka, "S384", "AES3", auth, "B32"))
    assert ours["cipher"] == "AES3"


@pytest.mark.parametrize("role", ["auto", "initiator", "responder"])
def test_stock_libzrtp_profile_gets_what_it_lists(
    libzrtp_peer_bin: pathlib.Path, tmp_path: pathlib.Path, role: str
) -> None:
    """libzrtp's stock profile lists only HS32 (and S256, AES3/AES1, EC25/DH3k/DH2k):
    we preferring HS80 must still commit HS32, or libzrtp answers Error 0x54 even
    when it would lose the Commit contention (issue 16, item 1)."""
    ours, theirs = interop(
        libzrtp_peer_bin,
        tmp_path,
        ["--srtp", str(N_SRTP)],
        ["--auth-tag", "HS80,HS32", "--role", role, "--srtp", str(N_SRTP)],
    )
    assert_interop(ours, theirs, srtp=N_SRTP)
    assert ours["auth_tag"] == "HS32" and ours["key_agreement"] == "EC25"
    # libzrtp lists AES3 first: as initiator it picks it from our default offer (and
    # its own SRTP engine decrypts ours); as responder it gets our first, AES1.
    if role != "auto":
        assert ours["cipher"] == {"initiator": "AES1", "responder": "AES3"}[role]


def test_our_default_hello_with_both_curve25519_names_does_not_disturb_libzrtp(
    libzrtp_peer_bin: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    for role in ("initiator", "responder"):
        ours, theirs = interop(libzrtp_peer_bin, tmp_path, [], ["--role", role])
        assert_interop(ours, theirs, srtp=0)
        assert ours["key_agreement"] == "EC25"


def _tamper(path: pathlib.Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("UPDATE retained_secrets SET rs1 = ?, rs2 = ?", (os.urandom(32), os.urandom(32)))


def test_cache_continuity_over_three_calls(
    libzrtp_peer_bin: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    ours_db, theirs_cache = tmp_path / "ours.db", tmp_path / "libzrtp.cache"
    ours_args = ["--cache", str(ours_db), "--self-uri", "sip:pbx@x", "--peer-uri", "sip:zfone@x"]
    theirs_args = ["--cache", str(theirs_cache)]
    # 1: nothing cached; both users compare the SAS and say so.
    ours, theirs = interop(
        libzrtp_peer_bin,
        tmp_path,
        [*theirs_args, "--mark-verified"],
        [*ours_args, "--mark-verified"],
    )
    assert_interop(ours, theirs, srtp=0)
    assert not ours["cache_mismatch"] and not theirs["cache_mismatch"]
    assert not ours["previously_verified"] and not theirs["previously_verified"]
    # 2: rs1 matches on both sides, the V flag comes back.
    ours, theirs = interop(libzrtp_peer_bin, tmp_path, theirs_args, ours_args)
    assert_interop(ours, theirs, srtp=0)
    assert not ours["cache_mismatch"] and not theirs["cache_mismatch"]
    assert theirs["matches_flags"] & 0x02  # libzrtp's ZRTP_BIT_RS1
    assert ours["previously_verified"] and theirs["previously_verified"]
    # 3: our cache tampered with: both sides see the mismatch, V is gone.
    _tamper(ours_db)
    ours, theirs = interop(libzrtp_peer_bin, tmp_path, theirs_args, ours_args)
    assert_interop(ours, theirs, srtp=0)
    assert ours["cache_mismatch"] and theirs["cache_mismatch"]
    assert not ours["previously_verified"] and not theirs["previously_verified"]


def test_multistream_second_stream(libzrtp_peer_bin: pathlib.Path, tmp_path: pathlib.Path) -> None:
    first, second, ms, _ = two_streams_with_peer(libzrtp_peer_bin, tmp_path, srtp=N_SRTP)
    assert second.keys.remote_key.hex() == ms["srtp_self_key"]
    assert second.keys.local_key != first.keys.local_key


def test_passive_license_refuses_a_mitm_but_not_a_phone(
    libzrtp_peer_bin: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """Documented behaviour of libzrtp's default (passive) license mode: a plain
    endpoint still secures (we commit), and libzrtp never commits itself."""
    ours, theirs = interop(libzrtp_peer_bin, tmp_path, ["--license", "passive"], [])
    assert_interop(ours, theirs, srtp=0)
    assert ours["role"] == "initiator"


def test_forced_responder_started_first_still_secures(
    libzrtp_peer_bin: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """The start order that deadlocks GNU ZRTP (test_zrtpcpp_interop) with libzrtp."""
    ours, theirs = ours_first(libzrtp_peer_bin, tmp_path, ["--role", "responder"], [], delay=0.6)
    assert_interop(ours, theirs, srtp=0)
