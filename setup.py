"""Build of the native worker (everything else is in pyproject.toml).

``pbx_zrtp/relay/_fastpath_build.py`` compiles ``_fastpath.c`` into the extension
module ``pbx_zrtp.relay._fastpath_lib`` (cffi, API mode) when the wheel is built.
It needs a C compiler, Python's headers and libsrtp2's headers (Debian:
``apt install build-essential python3-dev libsrtp2-dev``). Without them the
package still builds and installs, with a clear message, and forwards secured
media in Python (``relay.fastpath = "auto"``; ``"on"`` then refuses to start).
``PBX_ZRTP_REQUIRE_FASTPATH=1`` makes that a build error instead (the Debian
package and CI set it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

REQUIRE = os.environ.get("PBX_ZRTP_REQUIRE_FASTPATH", "") not in ("", "0")
BUILDER = "pbx_zrtp/relay/_fastpath_build.py:ffibuilder"
#: Shipped inside the package, under pbx_zrtp/_share/ (``pbx-zrtp samples``).
SHARED = ("docs", "dialplan", "examples")
WITHOUT = (
    "pbx-zrtp: building WITHOUT the native fast path ({why}). The relay works, "
    "forwarding secured media in Python (about 200 calls per core instead of 450-550); "
    'relay.fastpath = "on" will refuse to start. To build it: '
    "apt install build-essential python3-dev libsrtp2-dev, then reinstall."
)


def _say(text: str) -> None:
    bar = "*" * 78
    sys.stderr.write(f"\n{bar}\n{text}\n{bar}\n\n")
    sys.stderr.flush()


def _without(why: str) -> None:
    if REQUIRE:
        raise SystemExit(
            f"pbx-zrtp: cannot build the native fast path ({why}) and "
            "PBX_ZRTP_REQUIRE_FASTPATH is set"
        )
    _say(WITHOUT.format(why=why))


def _srtp_headers() -> bool:
    """libsrtp2's headers: pkg-config's answer, else the usual include directories."""
    if shutil.which("pkg-config"):
        probe = subprocess.run(
            ["pkg-config", "--exists", "libsrtp2"], capture_output=True, check=False
        )
        if probe.returncode == 0:
            return True
    dirs = ["/usr/include", "/usr/local/include", sysconfig.get_config_var("INCLUDEDIR") or ""]
    multiarch = sysconfig.get_config_var("MULTIARCH")
    if multiarch:
        dirs.append(f"/usr/include/{multiarch}")
    return any(os.path.isfile(os.path.join(d, "srtp2", "srtp.h")) for d in dirs if d)


class BuildExt(build_ext):
    """A native worker that fails to compile leaves a working pure-Python package."""

    def build_extension(self, ext: object) -> None:
        try:
            super().build_extension(ext)  # type: ignore[arg-type]
        except Exception as exc:  # CompileError, LinkError, no compiler...
            _without(f"compiling it failed: {exc}")
            # then the wheel is pure Python: say so in its name (py3-none-any)
            self.distribution.get_command_obj("bdist_wheel").root_is_pure = True


class BuildPy(build_py):
    """The docs, dialplan snippets and example units go into the wheel as package data
    (``pbx-zrtp samples list|show|copy``); a checkout reads them where they are."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        for name in SHARED:
            for folder, _dirs, files in os.walk(name):
                for file in sorted(files):
                    source = os.path.join(folder, file)
                    target = os.path.join(self.build_lib, "pbx_zrtp", "_share", source)
                    self.mkpath(os.path.dirname(target))
                    self.copy_file(source, target, preserve_mode=False)


cffi_modules: list[str] = []
if _srtp_headers():
    cffi_modules.append(BUILDER)
else:
    _without("libsrtp2's headers were not found: srtp2/srtp.h")

setup(
    cffi_modules=cffi_modules,
    cmdclass={"build_ext": BuildExt, "build_py": BuildPy},
    # the module uses only CPython's stable ABI (cffi): one wheel for 3.11 and later
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
)
