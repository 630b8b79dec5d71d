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

from .source_build import (
    BuildError,
    cache_root,
    compile_peer,
    ensure_built,
    missing_tools,
    replace_in_file,
    run,
    tree_key,
)

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


def libzrtp_prefix() -> tuple[pathlib.Path | None, str | None, bool]:
    """(prefix, None, _) when libzrtp is usable, else (None, reason, source_given)."""
    src = os.environ.get(SRC_ENV)
    source = pathlib.Path(src) if src else None
    if source is not None and not (source / "configure.in").is_file():
        return None, f"{SRC_ENV}={src} is not a libzrtp source tree (no configure.in)", True
    if os.environ.get(PREFIX_ENV):
        prefix = pathlib.Path(os.environ[PREFIX_ENV])
    elif _complete(DEFAULT_PREFIX) or source is None:
        prefix = DEFAULT_PREFIX
    else:
        prefix = cache_root() / f"libzrtp-{tree_key(source, RECIPE)}"
    if source is None and not _complete(prefix):
        return (
            None,
            f"libzrtp not found in {prefix}: set {SRC_ENV} to a libzrtp source tree "
            "(public repository traviscross/libzrtp) to build it (docs/zrtp.md)",
            False,
        )
    reason = missing_tools("gcc", "make", "autoconf", "automake", "libtoolize")
    if reason is not None and source is not None and not _complete(prefix):
        return None, reason, True
    try:
        return ensure_built("libzrtp", prefix, source, _build, _complete), None, source is not None
    except BuildError as exc:
        return None, str(exc), source is not None


@functools.lru_cache(maxsize=1)
def _prefix_or_reason() -> tuple[pathlib.Path | None, str | None, bool]:
    return libzrtp_prefix()


def build_libzrtp_peer(out_dir: pathlib.Path) -> pathlib.Path:
    """Compile libzrtp_peer.c against the libzrtp install; BuildError if impossible."""
    prefix, reason, _ = _prefix_or_reason()
    if prefix is None:
        raise BuildError(reason or "libzrtp unavailable")
    out_dir.mkdir(parents=True, exist_ok=True)
    binary = out_dir / "libzrtp_peer"
    gcc = shutil.which("gcc") or "gcc"
    compile_peer(
        [
            gcc,
            "-O2",
            "-Wall",
            "-std=gnu11",
            f"-I{prefix}/include/libzrtp",
            "-o",
            f"{binary}.tmp",
            str(SOURCE),
            # libzrtp keeps the SRTP keys to itself: catch them on their way to its SRTP engine.
            "-Wl,--wrap=zrtp_srtp_create",
            f"{prefix}/lib/libzrtp.a",
            f"{prefix}/lib/libbn.a",
            "-lpthread",
        ],
        binary,
    )
    return binary
