"""Fixtures for the interoperability tests against bzrtp (Linphone's ZRTP library)."""

from __future__ import annotations

import os
import pathlib

import pytest

from .bzrtp_build import (
    build_bzrtp_peer,
    bzrtp_available,
    finish,
    run_bzrtp_peer,
    run_pair,
    wait_port_file,
)

__all__ = ["bzrtp_peer_bin", "finish", "run_bzrtp_peer", "run_pair", "wait_port_file"]


@pytest.fixture(scope="session")
def bzrtp_peer_bin(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Path of the compiled bzrtp_peer binary (built once per session); skips if unavailable."""
    reason = bzrtp_available()
    if reason is not None:
        if os.environ.get("CI"):
            # CI installs libbzrtp-dev (install.sh --dev): interop must run there.
            pytest.fail(f"bzrtp peer cannot be built in CI: {reason}")
        pytest.skip(f"bzrtp peer unavailable ({reason}); run `bash install.sh --dev`")
    return build_bzrtp_peer(tmp_path_factory.mktemp("bzrtp_peer"))
