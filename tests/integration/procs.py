"""Child processes for the real-PBX integration tests: output collected line by
line (and logged), bounded waits for a line, stop by pid only."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from pathlib import Path


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
