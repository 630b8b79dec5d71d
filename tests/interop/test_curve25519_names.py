"""Curve25519 under both names (issue 16, item 2): bzrtp keeps X255 with our Hello
listing X255 and E255, in both roles (bzrtp as responder pre-computes its DH part
from its own reading of §4.1.2, so any disagreement would fail the exchange).
GNU ZRTP gets E255 from the same Hello (test_zrtpcpp_interop): identical SAS,
keys and SRTP against both libraries show E255 and X255 are one computation."""

from __future__ import annotations

import pathlib

import pytest

from .test_bzrtp_interop import assert_interop, interop

pytestmark = pytest.mark.interop


@pytest.mark.parametrize("role", ["auto", "initiator", "responder"])
def test_bzrtp_gets_x255_from_our_default_offer(
    bzrtp_peer_bin: pathlib.Path, tmp_path: pathlib.Path, role: str
) -> None:
    ours, theirs = interop(
        bzrtp_peer_bin, tmp_path, ["--srtp", "10"], ["--role", role, "--srtp", "10"]
    )
    assert_interop(ours, theirs, srtp=10)
    assert ours["key_agreement"] == theirs["key_agreement"] == "X255"
