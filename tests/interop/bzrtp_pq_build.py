"""Build bzrtp with its post-quantum engine, and ``bzrtp_peer`` against it, in the test setup.

Debian's libbzrtp (5.1) has no post-quantum key agreement. The current one is in
the public repository BelledonneCommunications/linphone-sdk (directories
bctoolbox, postquantumcryptoengine, bzrtp; tested at commit c1956534f267) over
open-quantum-safe/liboqs (tested at 8979276ad1eb). Point ``PBX_ZRTP_LINPHONE_SDK_SRC``
and ``PBX_ZRTP_LIBOQS_SRC`` at the two trees and they are built once, by
``build_bzrtp_pq.sh`` (next to this file; cmake, g++, libssl-dev, libdecaf-dev,
libsqlite3-dev), into ``PBX_ZRTP_BZRTP_PQ_PREFIX`` (default ``/opt/bzrtp-pq``).
A prefix that already holds the build is used as is; without either, the tests
skip and say how to get it. Nothing is downloaded and nothing is vendored.

Build fixes (the script applies them to a copy of bctoolbox; the engine's HQC
names are bridged by a forced-in header): see ``build_bzrtp_pq.sh``. The two
bctoolbox fixes make its OpenSSL backend compute an HKDF with an empty salt and
an HMAC with an empty key as RFC 5869 / RFC 2104 define them, which is what its
mbedTLS backend (the one Linphone ships) already does.
"""

from __future__ import annotations

import functools
import os
import pathlib
import shutil

from .source_build import DONE_MARK, BuildError, Found, build_peer, missing_tools, run

SCRIPT = pathlib.Path(__file__).with_name("build_bzrtp_pq.sh")
SOURCE = pathlib.Path(__file__).with_name("bzrtp_peer.c")
SDK_ENV = "PBX_ZRTP_LINPHONE_SDK_SRC"
OQS_ENV = "PBX_ZRTP_LIBOQS_SRC"
PREFIX_ENV = "PBX_ZRTP_BZRTP_PQ_PREFIX"
DEFAULT_PREFIX = pathlib.Path("/opt/bzrtp-pq")


def _complete(prefix: pathlib.Path) -> bool:
    header = prefix / "include/bzrtp/bzrtp.h"
    return (
        (prefix / DONE_MARK).is_file()
        and header.is_file()
        and "ZRTP_KEYAGREEMENT_K255_MLK512" in header.read_text(errors="replace")
        and (prefix / "lib/libbzrtp.so").exists()
    )


def bzrtp_pq_prefix() -> Found:
    """(prefix, None, _) when the PQ build is usable, else (None, reason, sources_given)."""
    prefix = pathlib.Path(os.environ.get(PREFIX_ENV) or DEFAULT_PREFIX)
    sdk, oqs = os.environ.get(SDK_ENV), os.environ.get(OQS_ENV)
    given = bool(sdk and oqs)
    if _complete(prefix):
        return prefix, None, given
    if not given:
        return (
            None,
            f"bzrtp with post-quantum engine not found in {prefix}: set {SDK_ENV} (public "
            f"repository BelledonneCommunications/linphone-sdk) and {OQS_ENV} "
            "(open-quantum-safe/liboqs) to build it (docs/zrtp.md)",
            False,
        )
    assert sdk is not None and oqs is not None
    for tree, sub in ((sdk, "bzrtp/CMakeLists.txt"), (oqs, "CMakeLists.txt")):
        if not (pathlib.Path(tree) / sub).is_file():
            return None, f"{tree} has no {sub}", True
    reason = missing_tools("cmake", "g++", "gcc")
    if reason is not None:
        return None, reason, True
    prefix.mkdir(parents=True, exist_ok=True)
    log = prefix / "build.log"
    try:
        run(["sh", str(SCRIPT), str(prefix), sdk, oqs], prefix, log, timeout=3600)
    except BuildError as exc:
        return None, str(exc), True
    if not _complete(prefix):
        return None, f"build finished but {prefix} is incomplete; see {log}", True
    return prefix, None, True


@functools.lru_cache(maxsize=1)
def _prefix_or_reason() -> Found:
    return bzrtp_pq_prefix()


def build_bzrtp_pq_peer(out_dir: pathlib.Path) -> pathlib.Path:
    """bzrtp_peer.c compiled against the post-quantum bzrtp; BuildError if impossible."""

    def command(prefix: pathlib.Path, output: pathlib.Path) -> list[str]:
        return [
            shutil.which("gcc") or "gcc",
            "-O2",
            "-Wall",
            "-std=gnu11",
            f"-I{prefix}/include",
            "-o",
            str(output),
            str(SOURCE),
            f"-L{prefix}/lib",
            f"-Wl,-rpath,{prefix}/lib",
            "-lbzrtp",
            "-lbctoolbox",
            "-lsrtp2",
            "-lsqlite3",
        ]

    return build_peer(_prefix_or_reason(), out_dir, "bzrtp_pq_peer", command)
