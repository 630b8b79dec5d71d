"""Build Zfone's libzrtp and ``libzrtp_peer`` (next to this file) in the test setup.

libzrtp is not packaged by Debian. Get its public sources (repository
traviscross/libzrtp; tested at commit 4cb5110147d2bb7e0466eec8ec838d8372ef54c9)
and either point ``PBX_ZRTP_LIBZRTP_SRC`` at the tree, or have it installed in
``PBX_ZRTP_LIBZRTP_PREFIX`` (default ``/opt/libzrtp``). With both set, the tree
is built into that prefix once. Needs gcc, make, autoconf, automake, libtool.

Build fixes applied here, to a copy of the tree (the sources are never changed
or committed):

- the bundled bignum library (third_party/bnlib) links ``lbn00.o`` with
  ``-Wl,-r -nostdlib`` to pre-link libgcc, which Debian 12's default PIE gcc
  refuses ("-r and -pie may not be used together"): compile it like every
  other object (``GCCMAGIC1=-c``);
- ``bootstrap.sh`` regenerates every configure script (bnlib's shipped
  configure is stale);
- ``make install`` leaves out ``libbn.a``, which ``libzrtp.a`` only nests as
  an archive member: it is installed next to ``libzrtp.a``.
"""

from __future__ import annotations

import functools
import os
import pathlib
import shutil

from .source_build import Found, SourceLibrary, build_peer, replace_in_file, run

SOURCE = pathlib.Path(__file__).with_name("libzrtp_peer.c")
SRC_ENV = "PBX_ZRTP_LIBZRTP_SRC"
PREFIX_ENV = "PBX_ZRTP_LIBZRTP_PREFIX"
DEFAULT_PREFIX = pathlib.Path("/opt/libzrtp")
#: Bump when the build steps change, so cached builds are redone.
RECIPE = "libzrtp-recipe-1"


def _complete(prefix: pathlib.Path) -> bool:
    return all(
        (prefix / rel).is_file()
        for rel in ("include/libzrtp/zrtp.h", "lib/libzrtp.a", "lib/libbn.a")
    )


def _build(work: pathlib.Path, prefix: pathlib.Path, log: pathlib.Path) -> None:
    replace_in_file(
        work / "third_party/bnlib/configure.in",
        "GCCMAGIC1='-Wl,-r -nostdlib'\n  GCCMAGIC2=-lgcc",
        "GCCMAGIC1=-c\n  GCCMAGIC2=",
    )
    run(["sh", "bootstrap.sh"], work, log)
    run(["./configure", f"--prefix={prefix}"], work, log)
    run(["make", f"-j{os.cpu_count() or 2}"], work, log)
    run(["make", "install"], work, log)
    shutil.copy2(work / "third_party/bnlib/libbn.a", prefix / "lib/libbn.a")


LIBZRTP = SourceLibrary(
    name="libzrtp",
    title="libzrtp",
    repository="traviscross/libzrtp",
    src_env=SRC_ENV,
    prefix_env=PREFIX_ENV,
    default_prefix=DEFAULT_PREFIX,
    recipe=RECIPE,
    marker="configure.in",
    tools=("gcc", "make", "autoconf", "automake", "libtoolize"),
    complete=_complete,
    build=_build,
)


def libzrtp_prefix() -> Found:
    """(prefix, None, _) when libzrtp is usable, else (None, reason, source_given)."""
    return LIBZRTP.locate()


@functools.lru_cache(maxsize=1)
def _prefix_or_reason() -> Found:
    return libzrtp_prefix()


def build_libzrtp_peer(out_dir: pathlib.Path) -> pathlib.Path:
    """Compile libzrtp_peer.c against the libzrtp install; BuildError if impossible."""

    def command(prefix: pathlib.Path, output: pathlib.Path) -> list[str]:
        return [
            shutil.which("gcc") or "gcc",
            "-O2",
            "-Wall",
            "-std=gnu11",
            f"-I{prefix}/include/libzrtp",
            "-o",
            str(output),
            str(SOURCE),
            # libzrtp keeps the SRTP keys to itself: catch them on their way to its SRTP engine.
            "-Wl,--wrap=zrtp_srtp_create",
            f"{prefix}/lib/libzrtp.a",
            f"{prefix}/lib/libbn.a",
            "-lpthread",
        ]

    return build_peer(_prefix_or_reason(), out_dir, "libzrtp_peer", command)
