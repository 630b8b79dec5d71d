"""The native worker's tests under AddressSanitizer and UndefinedBehaviorSanitizer.

``_fastpath.c`` is the only C in the project and it parses attacker input, so its
unit tests, the relay tests that run calls through it (fast-path variants) and
the security regression tests run again here in a child process with the sanitizer build of
the library (``PBX_ZRTP_FASTPATH_SANITIZE=1``: ``-fsanitize=address,undefined``,
its own cache key) and gcc's sanitizer runtimes preloaded. Any sanitizer report
fails the test, even one that does not fail the child's tests. A canary first
proves that this set-up does catch a heap overflow and an undefined operation.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from pbx_zrtp.relay.fastpath import SANITIZE_ENV, SANITIZER_RUNTIMES, available

ROOT = pathlib.Path(__file__).resolve().parents[2]
TESTS = (
    "tests/relay/test_fastpath.py",
    "tests/relay/test_mirror_fastpath.py",
    "tests/relay/test_fastpath_security.py",
    # the relay tests that also run calls through the worker
    "tests/relay/test_rtcp_latch.py",
    "tests/relay/test_trusted_mitm.py",
)
REPORTS = (
    "ERROR: AddressSanitizer",
    "runtime error:",
    "UndefinedBehaviorSanitizer",
    "LeakSanitizer",
)

_WHY = available()
if _WHY is not None and os.environ.get("CI"):
    raise RuntimeError(f"the fast path must work in CI: {_WHY}")
pytestmark = pytest.mark.skipif(_WHY is not None, reason=f"fast path unavailable: {_WHY}")

_CANARY = r"""
#include <limits.h>
#include <stdlib.h>
#include <string.h>
int overflow(int n) {
    char *p = malloc(8);
    memset(p, 1, (size_t)n);
    int r = p[0];
    free(p);
    return r;
}
int ub(int x) { return x + INT_MAX; }
"""


def _runtimes() -> list[str]:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc is needed (bash install.sh)")
    paths = []
    for name in SANITIZER_RUNTIMES:
        path = subprocess.run(
            [gcc, f"-print-file-name={name}"], capture_output=True, text=True, check=True
        ).stdout.strip()
        if not os.path.isabs(path):
            pytest.fail(f"gcc has no {name} (Debian: libasan8 / libubsan1, from build-essential)")
        paths.append(path)
    return paths


def _env(logs: pathlib.Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            SANITIZE_ENV: "1",
            "LD_PRELOAD": ":".join(_runtimes()),
            # Python itself is not built for LeakSanitizer: its arenas look like leaks.
            # Reports go to files too: pytest captures fd 2 and loses it on an abort.
            "ASAN_OPTIONS": f"detect_leaks=0:halt_on_error=1:log_path={logs}/asan",
            "UBSAN_OPTIONS": f"print_stacktrace=1:halt_on_error=1:log_path={logs}/ubsan",
            "PYTHONFAULTHANDLER": "1",
        }
    )
    return env


def _run(args: list[str], timeout: float, logs: pathlib.Path) -> tuple[int, str]:
    """Run Python in the sanitizer set-up: (exit code, its output and every report)."""
    logs.mkdir(exist_ok=True)
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=_env(logs),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    reports = "".join(f.read_text(errors="replace") for f in sorted(logs.iterdir()))
    return proc.returncode, proc.stdout + proc.stderr + reports


def test_the_sanitizer_set_up_catches_an_overflow_and_undefined_behaviour(
    tmp_path: pathlib.Path,
) -> None:
    source = tmp_path / "canary.c"
    source.write_text(_CANARY)
    library = tmp_path / "canary.so"
    flags = ["-O1", "-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-shared", "-fPIC"]
    subprocess.run(
        ["gcc", *flags, "-o", str(library), str(source)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    for call, report in (("overflow(64)", "heap-buffer-overflow"), ("ub(1)", "signed integer")):
        code = f"import ctypes; print(ctypes.CDLL({str(library)!r}).{call})"
        status, output = _run(["-c", code], 60, tmp_path / call[:2])
        assert status != 0 and report in output, output[-2000:]
    code = f"import ctypes; print(ctypes.CDLL({str(library)!r}).overflow(8))"
    status, output = _run(["-c", code], 60, tmp_path / "fine")
    assert status == 0 and not any(r in output for r in REPORTS), output


@pytest.mark.timeout(900)
def test_fast_path_tests_run_clean_under_asan_and_ubsan(tmp_path: pathlib.Path) -> None:
    code = "from pbx_zrtp.relay import fastpath; print('build', fastpath.build())"
    status, output = _run(["-c", code], 300, tmp_path / "probe")
    assert status == 0 and "build asan" in output, output[-4000:]
    args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *TESTS]
    status, output = _run(args, 840, tmp_path / "tests")
    found = [r for r in REPORTS if r in output]
    assert status == 0 and not found, output[-6000:]
    assert " passed" in output and " skipped" not in output, output[-2000:]
