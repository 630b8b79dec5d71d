"""Shared pieces of the real-PBX integration tests: child processes (output
collected line by line and logged, bounded waits for a line, stopped by pid only),
free ports, a test tone for linphonec, and the phone's hang-up."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class Proc:
    """A child process whose merged stdout/stderr is collected line by line (and logged)."""

    def __init__(
        self,
        name: str,
        args: list[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        stdin: bool = False,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self.lines: list[str] = []
        self.times: list[float] = []
        self.eof = False
        self._cond = threading.Condition()
        self._log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed by _read
        self.popen = subprocess.Popen(
            args,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
            env=env,
            cwd=cwd,
        )
        self._thread = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        try:
            for line in self.popen.stdout:
                self._log.write(line)
                self._log.flush()
                with self._cond:
                    self.lines.append(line.rstrip("\n"))
                    self.times.append(time.monotonic())
                    self._cond.notify_all()
        finally:
            self._log.close()
            with self._cond:
                self.eof = True
                self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float, start: int = 0) -> tuple[re.Match[str], int]:
        """The first line (from index ``start``) matching ``pattern``, and its index."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        index = start
        with self._cond:
            while True:
                while index < len(self.lines):
                    match = rx.search(self.lines[index])
                    if match:
                        return match, index
                    index += 1
                if self.eof:
                    raise AssertionError(
                        f"{self.name} ended before printing {pattern!r}:\n{self.tail()}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"{self.name} did not print {pattern!r} within {timeout} s:\n{self.tail()}"
                    )
                self._cond.wait(remaining)

    def tail(self, count: int = 40) -> str:
        return "\n".join(f"  | {line}" for line in self.lines[-count:])

    def send(self, text: str) -> None:
        if self.popen.stdin is not None and self.popen.poll() is None:
            self.popen.stdin.write(text + "\n")
            self.popen.stdin.flush()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; only this process (by its pid)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        if self.popen.stdin is not None:
            self.popen.stdin.close()
        self._thread.join(5)


def free_tcp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def write_tone(path: Path, seconds: float = 5.0) -> Path:
    """A 440 Hz tone, 8 kHz mono 16-bit: what linphonec sends as its microphone."""
    rate = 8000
    frames = b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate)))
        for i in range(int(rate * seconds))
    )
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(frames)
    return path


def wait_port(host: str, port: int, timeout: float, proc: Proc) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise AssertionError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.tail()}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{host}:{port} not accepting within {timeout} s:\n{proc.tail()}")


def hangup_phone(phone: Proc) -> None:
    phone.send("terminate all")
    time.sleep(0.5)
    phone.send("quit")
    try:
        phone.popen.wait(10)
    except subprocess.TimeoutExpired:
        phone.stop()


ROOT = Path(__file__).resolve().parent.parent.parent
CTL = (sys.executable, "-m", "pbx_zrtp.cli", "ctl")
GUARD = (sys.executable, "-m", "pbx_zrtp.cli", "guard")


def start_relay(
    base: Path, relay_conf: Path, linked: str, started: list[Proc]
) -> tuple[Proc, Proc]:
    """A lab's ``pbx-zrtp run`` (its config in ``base``), once its log says ``linked``
    (the PBX link is up) and its control socket exists, and a ``ctl watch --json`` on
    that socket; both appended to ``started``, which the lab stops."""
    relay = Proc(
        "pbx-zrtp",
        [sys.executable, "-m", "pbx_zrtp.cli", "run", "--config", str(relay_conf)],
        base / "pbx-zrtp.log",
        cwd=ROOT,
    )
    started.append(relay)
    relay.wait_for(linked, 20)
    deadline = time.monotonic() + 10
    while not (base / "control.sock").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    watch = Proc(
        "ctl-watch",
        [*CTL, "--control", f"unix:{base / 'control.sock'}", "watch", "--json"],
        base / "ctl-watch.log",
        cwd=ROOT,
    )
    started.append(watch)
    return relay, watch


def ctl_json(control: str, *args: str) -> Any:
    """`pbx-zrtp ctl --json …` against a relay's control socket, parsed."""
    result = subprocess.run(
        [*CTL, "--control", control, "--json", *args],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def guard_unavailable() -> str | None:
    """Why this host cannot load the PBX egress guard (``pbx-zrtp guard``), or None."""
    if shutil.which("nft") is None:
        return "needs nft (Debian's nftables) for the PBX egress guard"
    if os.geteuid() != 0:
        return "needs root to load the PBX egress guard"
    return None


class LabGuard:
    """The lab's PBX egress guard: ``pbx-zrtp guard --config … --table …`` loaded with
    ``nft -f -`` into this host's ruleset, exactly as docs/asterisk.md has the admin do
    it. Its rules only match the lab's own PBX address, so other labs are untouched; the
    table is deleted when the lab ends."""

    def __init__(self, relay_conf: Path, table: str) -> None:
        self.table = table
        rules = subprocess.run(
            [*GUARD, "--config", str(relay_conf), "--table", table],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout
        subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True)

    def dropped(self) -> dict[str, int]:
        """Packets each rule dropped so far: ``egress`` (the PBX's RTP that would have
        gone past the relay) and ``ingress`` (RTP to the PBX not from the relay)."""
        listing = subprocess.run(
            ["nft", "list", "table", "inet", self.table], capture_output=True, text=True, check=True
        ).stdout
        counts: dict[str, int] = {}
        chain = ""
        for line in listing.splitlines():
            found = re.match(r"\s*chain (\w+)", line)
            if found:
                chain = found.group(1)
            packets = re.search(r"counter packets (\d+)", line)
            if packets:
                counts[chain] = counts.get(chain, 0) + int(packets.group(1))
        return counts

    def remove(self) -> None:
        subprocess.run(["nft", "delete", "table", "inet", self.table], check=False)


@contextmanager
def link_down(relay: Proc, port: int, keep: int, lost: str, logged_in: str) -> Iterator[None]:
    """Cut the adapter's TCP session to the PBX's control port ``port`` (AMI, ESL) with
    ``ss -K``, and refuse its new ones (an nftables rule for new TCP connections to
    ``port``: the test's own session, from local port ``keep``, stays up) until the
    block ends; then wait for the adapter's next ``logged_in`` line (its resync).
    ``lost`` is the adapter's log line for the cut."""
    table = f"pbx_zrtp_lab_link{port}"
    rules = (
        f"table inet {table} {{\n chain out {{\n  type filter hook output priority filter;\n"
        f"  tcp dport {port} tcp flags & (syn | ack) == syn drop\n }}\n}}\n"
    )
    subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True)
    logins = sum(bool(re.search(logged_in, line)) for line in relay.lines)
    try:
        cut = subprocess.run(
            ["ss", "-K", "-t", f"( dport = :{port} and sport != :{keep} )"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert f":{port}" in cut.stdout, cut.stdout  # the adapter's session was there
        relay.wait_for(lost, 10)
        yield
    finally:
        subprocess.run(["nft", "delete", "table", "inet", table], check=False)
    deadline = time.monotonic() + 20
    while sum(bool(re.search(logged_in, line)) for line in relay.lines) <= logins:
        assert time.monotonic() < deadline, f"the adapter did not log in again ({logged_in})"
        time.sleep(0.1)
