"""Our engine against GNU ZRTP (ZRTPCPP) over UDP on loopback.

``pbx-zrtp endpoint`` talks to ``zrtpcpp_peer`` (built by the test setup from
GNU ZRTP's public sources, see zrtpcpp_build.py). Same SAS, same four SRTP
keys/salts, SRTP (libsrtp on both sides) both ways.
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

#: GNU ZRTP names Curve25519 E255; it has no X448; EC38 needs S384 (else Error 0x51).
MATRIX = [
    combo
    for combo in itertools.product(
        ["E255", "DH3k", "DH2k", "EC25", "EC38"],
        ["S256", "S384"],
        ["HS32", "HS80"],
        ["B32", "B256"],
    )
    if combo[:2] != ("EC38", "S256")
]


@pytest.mark.parametrize("role", ["initiator", "responder"])
@pytest.mark.parametrize(("ka", "hash_", "auth", "sas"), MATRIX)
def test_interop_matrix(
    zrtpcpp_peer_bin: pathlib.Path,
    tmp_path: pathlib.Path,
    role: str,
    ka: str,
    hash_: str,
    auth: str,
    sas: str,
) -> None:
    check_suite(zrtpcpp_peer_bin, tmp_path, role, (ka, hash_, "AES1", auth, sas))


@pytest.mark.parametrize("role", ["initiator", "responder"])
@pytest.mark.parametrize("auth", ["HS80", "HS32"])
@pytest.mark.parametrize("ka", ["E255", "EC38"])
def test_aes3_srtp_both_ways(
    zrtpcpp_peer_bin: pathlib.Path, tmp_path: pathlib.Path, role: str, auth: str, ka: str
) -> None:
    """AES3 (AES_CM_256 SRTP, RFC 6188): 256-bit keys agree and SRTP decrypts both ways."""
    ours = check_suite(zrtpcpp_peer_bin, tmp_path, role, (ka, "S384", "AES3", auth, "B32"))
    assert ours["cipher"] == "AES3"


@pytest.mark.parametrize("role", ["auto", "initiator", "responder"])
def test_curve25519_with_gnu_zrtp_from_our_default_offer(
    zrtpcpp_peer_bin: pathlib.Path, tmp_path: pathlib.Path, role: str
) -> None:
    """A GNU ZRTP phone that enables E255 gets Curve25519 from our stock Hello (which
    lists X255 and E255), not DH3k (issue 16, item 2). Same SAS, keys and SRTP:
    E255 is the X25519 computation bzrtp calls X255 (test_bzrtp_interop)."""
    ours, theirs = interop(
        zrtpcpp_peer_bin,
        tmp_path,
        ["--key-agreement", "E255,EC25,DH3k,DH2k", "--srtp", str(N_SRTP)],
        ["--role", role, "--srtp", str(N_SRTP)],
    )
    assert_interop(ours, theirs, srtp=N_SRTP)
    assert ours["key_agreement"] == theirs["key_agreement"] == "E255"


def test_stock_gnu_zrtp_configuration_secures(
    zrtpcpp_peer_bin: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    for role in ("initiator", "responder"):
        ours, theirs = interop(
            zrtpcpp_peer_bin, tmp_path, ["--srtp", "5"], ["--role", role, "--srtp", "5"]
        )
        assert_interop(ours, theirs, srtp=5)
        assert ours["key_agreement"] == "EC25"  # GNU ZRTP's standard list has no E255


def test_forced_responder_started_before_gnu_zrtp_does_not_deadlock(
    zrtpcpp_peer_bin: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """GNU ZRTP's Hello gets our HelloACK before it sees our Hello: it then only
    waits for a Commit. Our forced responder commits after its grace period
    instead of both timing out (issue 16, item 3)."""
    ours, theirs = ours_first(
        zrtpcpp_peer_bin,
        tmp_path,
        ["--role", "responder", "--srtp", "5"],
        ["--srtp", "5"],
        delay=0.6,
    )
    assert_interop(ours, theirs, srtp=5)
    # Either GNU ZRTP committed after all, or we did after the grace period.
    if ours["role"] == "initiator":
        assert ours["elapsed_ms"] >= 2000


def _tamper(path: pathlib.Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("UPDATE retained_secrets SET rs1 = ?, rs2 = ?", (os.urandom(32), os.urandom(32)))


def test_cache_continuity_over_three_calls(
    zrtpcpp_peer_bin: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    ours_db, theirs_db = tmp_path / "ours.db", tmp_path / "gnu.db"
    ours_args = ["--cache", str(ours_db), "--self-uri", "sip:pbx@x", "--peer-uri", "sip:gnu@x"]
    theirs_args = ["--cache", str(theirs_db)]
    ours, theirs = interop(
        zrtpcpp_peer_bin,
        tmp_path,
        [*theirs_args, "--mark-verified"],
        [*ours_args, "--mark-verified"],
    )
    assert_interop(ours, theirs, srtp=0)
    assert not ours["cache_mismatch"] and not theirs["cache_mismatch"]
    assert not ours["previously_verified"] and not theirs["previously_verified"]
    ours, theirs = interop(zrtpcpp_peer_bin, tmp_path, theirs_args, ours_args)
    assert_interop(ours, theirs, srtp=0)
    assert not ours["cache_mismatch"] and not theirs["cache_mismatch"]
    assert theirs["secrets_matched"] & 1  # GNU ZRTP's Rs1 bit
    assert ours["previously_verified"] and theirs["previously_verified"]
    _tamper(ours_db)
    ours, theirs = interop(zrtpcpp_peer_bin, tmp_path, theirs_args, ours_args)
    assert_interop(ours, theirs, srtp=0)
    assert ours["cache_mismatch"] and theirs["cache_mismatch"]
    assert not ours["previously_verified"] and not theirs["previously_verified"]


def test_multistream_second_stream(zrtpcpp_peer_bin: pathlib.Path, tmp_path: pathlib.Path) -> None:
    _, second, ms, _ = two_streams_with_peer(zrtpcpp_peer_bin, tmp_path, srtp=N_SRTP)
    assert second.keys.remote_key.hex() == ms["srtp_self_key"]
