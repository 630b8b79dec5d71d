"""IPv6 relay tests on their own loopback: one test, re-run in a network namespace.

A relay test needs the relay and the PBX on two different addresses (the relay
binds R:P, the PBX A:P), but a host has one IPv6 loopback address, ::1. So a test
marked ``ipv6_netns`` (``tests/conftest.py``) runs again in a child pytest inside a
new user and network namespace (``unshare -rn``: no privileges needed on Debian),
whose loopback also carries ::2 (relay), ::3 (PBX), ::4 (phone) and ::5 (an
attacker). Nothing outside the namespace sees its traffic or its addresses.
"""

from __future__ import annotations

import atexit
import functools
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

#: Set in the child: the test body runs here, with the addresses below.
INSIDE_ENV = "PBX_ZRTP_TEST_NETNS"
ADDRESSES = ("::2", "::3", "::4", "::5")
RELAY6, PBX6, PHONE6, ATTACKER6 = ADDRESSES

ROOT = pathlib.Path(__file__).resolve().parents[1]


def inside() -> bool:
    return os.environ.get(INSIDE_ENV) == "1"


def _ip() -> str | None:
    return shutil.which("ip") or next(
        (p for p in ("/usr/sbin/ip", "/sbin/ip") if os.access(p, os.X_OK)), None
    )


def _setup_script() -> str:
    ip = _ip()
    assert ip is not None
    adds = " && ".join(f"{ip} -6 addr add {a}/128 dev lo nodad" for a in ADDRESSES)
    return f'{ip} link set lo up && {adds} && exec "$@"'


@functools.cache
def unavailable() -> str | None:
    """None if a namespace with the lab's addresses can be made here, else why not."""
    unshare, ip = shutil.which("unshare"), _ip()
    if unshare is None or ip is None:
        return "needs unshare (util-linux) and ip (iproute2)"
    try:
        proc = subprocess.run(
            [unshare, "-rn", "sh", "-c", _setup_script(), "sh", "true"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare -rn failed: {exc}"
    if proc.returncode != 0:
        return f"cannot make a user+network namespace here: {proc.stderr.strip()[-300:]}"
    return None


@functools.cache
def _cache_home() -> str:
    """One build cache for every child of this session: inside, this user is uid 0,
    so the fast path's default cache directory (per uid) would be another one."""
    path = tempfile.mkdtemp(prefix="pbx-zrtp-netns-")
    atexit.register(shutil.rmtree, path, True)
    return path


def run(nodeid: str, timeout: float) -> tuple[int, str]:
    """Run one test in a fresh namespace: (exit status, its output)."""
    env = dict(os.environ)
    env[INSIDE_ENV] = "1"
    env.setdefault("XDG_CACHE_HOME", _cache_home())
    unshare = shutil.which("unshare")
    assert unshare is not None
    cmd = [unshare, "-rn", "sh", "-c", _setup_script(), "sh"]
    cmd += [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", nodeid]
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        return -1, f"timed out after {timeout:g} s\n{out}"
    return proc.returncode, proc.stdout + proc.stderr
