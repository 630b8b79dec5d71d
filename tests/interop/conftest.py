"""Fixtures for the interoperability tests: bzrtp (Linphone's ZRTP library, a Debian
package), Zfone's libzrtp and GNU ZRTP (built from their public sources, see
libzrtp_build.py and zrtpcpp_build.py)."""

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
from .bzrtp_pq_build import build_bzrtp_pq_peer, bzrtp_pq_prefix
from .libzrtp_build import build_libzrtp_peer, libzrtp_prefix
from .source_build import BuildError
from .zrtpcpp_build import build_zrtpcpp_peer, zrtpcpp_prefix

__all__ = [
    "bzrtp_peer_bin",
    "bzrtp_pq_peer_bin",
    "finish",
    "libzrtp_peer_bin",
    "run_bzrtp_peer",
    "run_pair",
    "wait_port_file",
    "zrtpcpp_peer_bin",
    "zrtpcpp_sasrelay_peer_bin",
]


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


def _source_peer(
    found: tuple[pathlib.Path | None, str | None, bool],
    build: object,
    out_dir: pathlib.Path,
) -> pathlib.Path:
    """Skip when the library is simply absent; fail when its given source does not build."""
    prefix, reason, source_given = found
    if prefix is None:
        if source_given:
            pytest.fail(f"the source tree given does not build: {reason}")
        pytest.skip(str(reason))
    try:
        return build(out_dir)  # type: ignore[operator, no-any-return]
    except BuildError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def libzrtp_peer_bin(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """libzrtp_peer built against Zfone's libzrtp; skips when libzrtp is not available."""
    return _source_peer(libzrtp_prefix(), build_libzrtp_peer, tmp_path_factory.mktemp("libzrtp"))


@pytest.fixture(scope="session")
def zrtpcpp_peer_bin(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """zrtpcpp_peer built against stock GNU ZRTP; skips when it is not available."""
    return _source_peer(
        zrtpcpp_prefix(False), build_zrtpcpp_peer, tmp_path_factory.mktemp("zrtpcpp")
    )


@pytest.fixture(scope="session")
def zrtpcpp_sasrelay_peer_bin(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """zrtpcpp_peer against GNU ZRTP built with ZRTP_SAS_RELAY_SUPPORT (phone side of §7.3)."""
    return _source_peer(
        zrtpcpp_prefix(True),
        lambda out: build_zrtpcpp_peer(out, sas_relay=True),
        tmp_path_factory.mktemp("zrtpcpp-sasrelay"),
    )


@pytest.fixture(scope="session")
def bzrtp_pq_peer_bin(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """bzrtp_peer built against bzrtp with its post-quantum engine; skips when absent."""
    return _source_peer(bzrtp_pq_prefix(), build_bzrtp_pq_peer, tmp_path_factory.mktemp("bzrtp-pq"))
