"""Build and drive ``bzrtp_peer``, a ZRTP endpoint built on Linphone's bzrtp.

``bzrtp_peer.c`` (next to this file) is compiled with gcc against the Debian
packages ``libbzrtp-dev``, ``libsrtp2-dev`` and ``libsqlite3-dev``. Tests call
:func:`bzrtp_available` to learn whether that is possible here (``None``) or why
not (a reason for ``pytest.skip``), and :func:`build_bzrtp_peer` to get the binary.

The process helpers (:func:`run_bzrtp_peer`, :func:`wait_port_file`,
:func:`finish`, :func:`run_pair`) start the binary and parse its one-line JSON
report. See the header comment of ``bzrtp_peer.c`` for the CLI.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from typing import Any

SOURCE = pathlib.Path(__file__).with_name("bzrtp_peer.c")
BINARY_NAME = "bzrtp_peer"


def _pkg_config(*args: str) -> list[str] | None:
    """Flags from pkg-config, or None when pkg-config or the package is missing."""
    pkg_config = shutil.which("pkg-config")
    if pkg_config is None:
        return None
    proc = subprocess.run(
        [pkg_config, *args], capture_output=True, text=True, check=False, timeout=30
    )
    if proc.returncode != 0:
        return None
    return proc.stdout.split()


def _compile_command(output: pathlib.Path) -> tuple[list[str] | None, str | None]:
    """The gcc command line for ``output``, or (None, reason) if it cannot be built."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        return None, "no C compiler (gcc) on PATH"
    if shutil.which("pkg-config") is None:
        return None, "pkg-config not found (apt-get install pkg-config)"
    bzrtp = _pkg_config("--cflags", "--libs", "libbzrtp")
    if bzrtp is None:
        return None, "pkg-config cannot find libbzrtp (apt-get install libbzrtp-dev)"
    # libsrtp2 and sqlite3 ship .pc files on Debian, but fall back to plain -l flags.
    srtp = _pkg_config("--cflags", "--libs", "libsrtp2") or ["-lsrtp2"]
    sqlite = _pkg_config("--cflags", "--libs", "sqlite3") or ["-lsqlite3"]
    if not SOURCE.is_file():
        return None, f"{SOURCE} is missing"
    cmd = [
        gcc,
        "-O2",
        "-Wall",
        "-std=gnu11",
        "-o",
        str(output),
        str(SOURCE),
        *bzrtp,
        *srtp,
        *sqlite,
    ]
    return cmd, None


def _compile(output: pathlib.Path) -> str | None:
    """Compile into ``output``; None on success, else the reason."""
    tmp_out = output.with_name(output.name + f".{os.getpid()}.tmp")
    cmd, reason = _compile_command(tmp_out)
    if cmd is None:
        return reason
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"compiling bzrtp_peer failed: {exc}"
    if proc.returncode != 0:
        tmp_out.unlink(missing_ok=True)
        missing = [
            hdr
            for hdr in ("bzrtp/bzrtp.h", "srtp2/srtp.h", "sqlite3.h")
            if f"{hdr}: No such file" in proc.stderr
        ]
        if missing:
            return (
                f"missing header(s) {', '.join(missing)} "
                "(apt-get install libbzrtp-dev libsrtp2-dev libsqlite3-dev)"
            )
        return "compiling bzrtp_peer failed:\n" + proc.stderr[-2000:]
    os.replace(tmp_out, output)
    return None


@functools.lru_cache(maxsize=1)
def bzrtp_available() -> str | None:
    """None when bzrtp_peer can be built on this machine, else a human-readable reason."""
    with tempfile.TemporaryDirectory(prefix="bzrtp-probe-") as tmp:
        return _compile(pathlib.Path(tmp) / BINARY_NAME)


def build_bzrtp_peer(out_dir: pathlib.Path) -> pathlib.Path:
    """Compile bzrtp_peer.c into ``out_dir`` (skipped if up to date) and return the binary.

    Raises RuntimeError with the reason when it cannot be built.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    binary = out_dir / BINARY_NAME
    if binary.is_file() and binary.stat().st_mtime >= SOURCE.stat().st_mtime:
        return binary
    reason = _compile(binary)
    if reason is not None:
        raise RuntimeError(reason)
    return binary


# ---------------------------------------------------------------------------
# running it


def run_bzrtp_peer(
    binary: pathlib.Path | str, args: Sequence[str], *, verbose: bool = False
) -> subprocess.Popen[str]:
    """Start bzrtp_peer with ``args``; stdout/stderr are pipes (text)."""
    cmd = [str(binary), *args]
    if verbose:
        cmd.append("--verbose")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_port_file(
    path: pathlib.Path, proc: subprocess.Popen[str] | None = None, timeout: float = 5.0
) -> int:
    """Wait (bounded) until bzrtp_peer wrote its bound port to ``path``; return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            text = ""
        if text:
            return int(text)
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise RuntimeError(f"bzrtp_peer exited early ({proc.returncode}): {out} {err}")
        time.sleep(0.005)
    raise TimeoutError(f"bzrtp_peer did not write {path} within {timeout} s")


def finish(proc: subprocess.Popen[str], timeout: float = 20.0) -> dict[str, Any]:
    """Wait for bzrtp_peer to exit and return its JSON report.

    Adds ``"returncode"`` and ``"stderr"`` to the dict. A process that does not
    exit within ``timeout`` is killed and reported as ``{"ok": False, ...}``.
    """
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return {"ok": False, "error": "harness timeout", "returncode": None, "stderr": err}
    lines = [line for line in out.splitlines() if line.strip()]
    report: dict[str, Any]
    if len(lines) != 1:
        report = {"ok": False, "error": f"expected one JSON line, got {out!r}"}
    else:
        try:
            report = json.loads(lines[0])
        except json.JSONDecodeError as exc:
            report = {"ok": False, "error": f"bad JSON ({exc}): {lines[0]!r}"}
    report["returncode"] = proc.returncode
    report["stderr"] = err
    return report


def run_pair(
    binary: pathlib.Path | str,
    work_dir: pathlib.Path,
    args_a: Sequence[str] = (),
    args_b: Sequence[str] = (),
    *,
    timeout: float = 20.0,
    verbose: bool = False,
    start_b_after: float = 0.0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run two bzrtp_peer processes against each other on 127.0.0.1.

    A binds an ephemeral port, has no ``--peer`` (it answers whoever sends the
    first ZRTP datagram) and writes its port to a file; B is then started with
    ``--peer`` A (``start_b_after`` seconds after A bound its port).
    Returns (report_a, report_b).
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    port_file = work_dir / f"port-a-{time.monotonic_ns()}"
    proc_a = run_bzrtp_peer(
        binary,
        ["--bind", "127.0.0.1:0", "--port-file", str(port_file), *args_a],
        verbose=verbose,
    )
    proc_b: subprocess.Popen[str] | None = None
    try:
        port = wait_port_file(port_file, proc_a)
        if start_b_after > 0:
            time.sleep(start_b_after)
        proc_b = run_bzrtp_peer(
            binary,
            ["--bind", "127.0.0.1:0", "--peer", f"127.0.0.1:{port}", *args_b],
            verbose=verbose,
        )
        report_b = finish(proc_b, timeout)
        report_a = finish(proc_a, timeout)
    finally:
        for proc in (proc_a, proc_b):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
    return report_a, report_b
