"""The V flag against bzrtp over five calls (issue 11, item 3).

Our ``pbx-zrtp endpoint`` with an SQLite cache against ``bzrtp_peer`` with its
own. Continuity gives V on both sides; our retained secrets gone (as after they
expired) voids our stored V flag instead of sending it; the users verifying
again restores continuity, and bzrtp agrees at every step.
"""

from __future__ import annotations

import pathlib
import sqlite3

import pytest

from .test_bzrtp_interop import assert_interop, interop

pytestmark = pytest.mark.interop


def _our_flag(path: pathlib.Path) -> list[tuple[bool, bool, bool]]:
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT rs1 IS NOT NULL, rs2 IS NOT NULL, sas_verified FROM retained_secrets"
        ).fetchall()
    return [(bool(a), bool(b), bool(c)) for a, b, c in rows]


def test_v_flag_continuity_with_bzrtp_and_a_void_flag_cleared(
    bzrtp_peer_bin: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    ours_db, theirs_db = tmp_path / "ours.db", tmp_path / "bzrtp.db"
    ours_args = ["--cache", str(ours_db), "--self-uri", "sip:pbx@x", "--peer-uri", "sip:ph@x"]
    theirs_args = ["--cache", str(theirs_db), "--self-uri", "sip:ph@x", "--peer-uri", "sip:pbx@x"]
    verify = ["--mark-verified"]

    def call(*, verified: bool = False) -> tuple[dict[str, object], dict[str, object]]:
        extra = verify if verified else []
        ours, theirs = interop(
            bzrtp_peer_bin, tmp_path, [*theirs_args, *extra], [*ours_args, *extra]
        )
        assert_interop(ours, theirs, srtp=0)
        return ours, theirs

    # 1. First contact; both users compare the SAS.
    ours, theirs = call(verified=True)
    assert not ours["previously_verified"] and not theirs["previously_verified"]
    # 2. Continuity: rs1 matches, V comes back on both sides.
    ours, theirs = call()
    assert not ours["cache_mismatch"] and not theirs["cache_mismatch"]
    assert ours["previously_verified"] is True and theirs["previously_verified"] is True
    assert _our_flag(ours_db) == [(True, True, True)]

    # 3. Our retained secrets are gone (expired), the stored V flag is not.
    with sqlite3.connect(ours_db) as db:
        db.execute(
            "UPDATE retained_secrets SET rs1 = NULL, rs1_expires = NULL,"
            " rs2 = NULL, rs2_expires = NULL"
        )
    assert _our_flag(ours_db) == [(False, False, True)]
    ours, theirs = call()
    assert not ours["cache_mismatch"]  # we expected nothing
    assert theirs["cache_mismatch"]  # bzrtp expected its rs1 to match
    assert ours["previously_verified"] is False and theirs["previously_verified"] is False
    rs1, _, verified = _our_flag(ours_db)[0]
    assert rs1 and not verified  # the void V flag is cleared, not carried on

    # 4. The users compare the SAS again: both sides store the new secret and V.
    ours, theirs = call(verified=True)
    assert ours["previously_verified"] is False and theirs["previously_verified"] is False
    # 5. Continuity is back, with V on both sides.
    ours, theirs = call()
    assert not ours["cache_mismatch"] and not theirs["cache_mismatch"]
    assert ours["previously_verified"] is True and theirs["previously_verified"] is True
