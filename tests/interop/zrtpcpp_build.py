"""Build GNU ZRTP (ZRTPCPP) and ``zrtpcpp_peer`` (next to this file) in the test setup.

GNU ZRTP is not packaged by Debian 12 (``apt-cache search zrtp`` lists only
bzrtp). Get its public sources (repository wernerd/ZRTPCPP; tested at commit
6b3cd8e6783642292bad0c21e3e5e5ce45ff3e03, version 4.7.0) and either point
``PBX_ZRTP_ZRTPCPP_SRC`` at the tree, or have it installed in
``PBX_ZRTP_ZRTPCPP_PREFIX`` (default ``/opt/zrtpcpp``). With both set, the tree
is built into that prefix once. Needs cmake, g++, make, libsqlite3-dev,
libsrtp2-dev. Two builds of the core library (``-DCORE_LIB=ON -DSQLITE=ON``,
its own crypto):

- ``PREFIX``: stock;
- ``PREFIX-sasrelay``: with ``ZRTP_SAS_RELAY_SUPPORT``, without which GNU ZRTP
  acknowledges a PBX's SASrelay but never renders the relayed SAS (RFC 6189
  §7.3, phone side). With it set the snapshot does not compile:
  ``ZRtp::prepareRelayAck(ZrtpPacketSASrelay*, const uint32_t* errMsg)`` writes
  through ``errMsg``; the fix drops that ``const`` (one line each in ZRtp.h and
  ZRtp.cpp).

The install also gets the library's internal headers (``include/zrtpcpp``): the
peer reads the negotiated hash and auth tag through ``ZRtp::getDetailInfo``,
which the public C wrapper does not expose.
"""

from __future__ import annotations

import functools
import os
import pathlib
import shutil

from .source_build import Found, SourceLibrary, build_peer, replace_in_file, run

SOURCE = pathlib.Path(__file__).with_name("zrtpcpp_peer.cpp")
SRC_ENV = "PBX_ZRTP_ZRTPCPP_SRC"
PREFIX_ENV = "PBX_ZRTP_ZRTPCPP_PREFIX"
DEFAULT_PREFIX = pathlib.Path("/opt/zrtpcpp")
RECIPE = "zrtpcpp-recipe-1"
SAS_RELAY = "sasrelay"


def _complete(prefix: pathlib.Path) -> bool:
    return all(
        (prefix / rel).is_file()
        for rel in (
            "lib/libzrtpcppcore.so",
            "include/libzrtpcpp/ZrtpCWrapper.h",
            "include/zrtpcpp/zrtp/libzrtpcpp/ZRtp.h",
        )
    )


def _builder(sas_relay: bool):  # type: ignore[no-untyped-def]
    def build(work: pathlib.Path, prefix: pathlib.Path, log: pathlib.Path) -> None:
        flags = ""
        if sas_relay:
            for rel in ("zrtp/ZRtp.cpp", "zrtp/libzrtpcpp/ZRtp.h"):
                replace_in_file(
                    work / rel,
                    "prepareRelayAck(ZrtpPacketSASrelay* srly, const uint32_t* errMsg)",
                    "prepareRelayAck(ZrtpPacketSASrelay* srly, uint32_t* errMsg)",
                )
            flags = "-DZRTP_SAS_RELAY_SUPPORT"
        build_dir = work / "build"
        build_dir.mkdir()
        run(
            [
                "cmake",
                "-DCORE_LIB=ON",
                "-DSQLITE=ON",
                f"-DCMAKE_CXX_FLAGS={flags}",
                f"-DCMAKE_INSTALL_PREFIX={prefix}",
                "..",
            ],
            build_dir,
            log,
        )
        run(["make", f"-j{os.cpu_count() or 2}"], build_dir, log)
        run(["make", "install"], build_dir, log)
        headers = prefix / "include/zrtpcpp"
        for top in ("zrtp", "common", "cryptcommon", "bnlib", "srtp"):
            for header in (work / top).rglob("*.h"):
                target = headers / header.relative_to(work)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(header, target)
        for generated in ("config.h", "bnconfig.h"):
            for found in build_dir.rglob(generated):
                shutil.copy2(found, headers / generated)
                break

    return build


def zrtpcpp_prefix(sas_relay: bool = False) -> Found:
    """(prefix, None, _) when GNU ZRTP is usable, else (None, reason, source_given)."""
    library = SourceLibrary(
        name="zrtpcpp",
        title="GNU ZRTP",
        repository="wernerd/ZRTPCPP",
        src_env=SRC_ENV,
        prefix_env=PREFIX_ENV,
        default_prefix=DEFAULT_PREFIX,
        recipe=RECIPE,
        marker="zrtp/ZRtp.cpp",
        tools=("cmake", "g++", "make"),
        complete=_complete,
        build=_builder(sas_relay),
    )
    return library.locate(f"-{SAS_RELAY}" if sas_relay else "")


@functools.lru_cache(maxsize=2)
def _prefix_or_reason(sas_relay: bool) -> Found:
    return zrtpcpp_prefix(sas_relay)


def build_zrtpcpp_peer(out_dir: pathlib.Path, *, sas_relay: bool = False) -> pathlib.Path:
    """Compile zrtpcpp_peer.cpp against one GNU ZRTP install; BuildError if impossible."""

    def command(prefix: pathlib.Path, output: pathlib.Path) -> list[str]:
        headers = prefix / "include/zrtpcpp"
        return [
            shutil.which("g++") or "g++",
            "-O2",
            "-Wall",
            "-Wno-unknown-pragmas",
            "-Wno-cpp",
            "-std=c++11",
            *(["-DZRTP_SAS_RELAY_SUPPORT"] if sas_relay else []),
            f"-I{headers}",
            f"-I{headers}/zrtp",
            "-o",
            str(output),
            str(SOURCE),
            f"-L{prefix}/lib",
            "-lzrtpcppcore",
            "-lsrtp2",
            "-lsqlite3",
            "-lpthread",
            f"-Wl,-rpath,{prefix}/lib",
        ]

    name = "zrtpcpp_peer" + (f"_{SAS_RELAY}" if sas_relay else "")
    return build_peer(_prefix_or_reason(sas_relay), out_dir, name, command)
