"""What an installed pbx-zrtp (a wheel in a fresh venv, an unpacked .deb) must do:
start the relay, which says "fast path on", and carry a secured call on loopback
driven by its own ``pbx-zrtp ctl`` and ``pbx-zrtp endpoint``.

The installation is a command prefix (``[python, path/to/pbx-zrtp]``) and an
environment, so the same check runs against any tree.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from tests.relay.helpers import PBX_HOST, RELAY_HOST, free_even_port

PHONE_HOST = "127.0.0.4"


@dataclass
class RunningRelay:
    process: subprocess.Popen[str]
    config: pathlib.Path
    control: str
    port: int
    log: pathlib.Path
    host: str = RELAY_HOST
    metrics: int | None = None  # the metrics port, when it listens (127.0.0.1)

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def relay_config(
    directory: pathlib.Path,
    port: int,
    *,
    fastpath: str = "on",
    host: str = RELAY_HOST,
    pbx_host: str = PBX_HOST,
    metrics: int | None = None,
) -> pathlib.Path:
    config = directory / "relay.toml"
    listen = f"127.0.0.1:{metrics}" if metrics is not None else ""
    config.write_text(
        f"""[relay]
address = "{host}"
pbx_address = "{pbx_host}"
ports = "{port}-{port + 100}"
fastpath = "{fastpath}"

[cache]
path = "{directory}/cache.db"

[control]
socket = "{directory}/control.sock"

[metrics]
listen = "{listen}"
"""
    )
    return config


@contextmanager
def running_relay(
    command: Sequence[str],
    directory: pathlib.Path,
    env: dict[str, str],
    *,
    fastpath: str = "on",
    wait: float = 30,
    host: str = RELAY_HOST,
    pbx_host: str = PBX_HOST,
    metrics: int | None = None,
) -> Iterator[RunningRelay]:
    """``pbx-zrtp run`` on a fresh config in ``directory``, until "relay ready"."""
    port = free_even_port()
    config = relay_config(
        directory, port, fastpath=fastpath, host=host, pbx_host=pbx_host, metrics=metrics
    )
    log = directory / "relay.log"
    with open(log, "w") as sink:
        process = subprocess.Popen(
            [*command, "run", "--config", str(config)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd="/",
        )
    relay = RunningRelay(
        process, config, f"unix:{directory}/control.sock", port, log, host, metrics
    )
    try:
        deadline = time.monotonic() + wait
        while "relay ready" not in relay.text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the relay did not start:\n{relay.text()}")
            time.sleep(0.1)
        yield relay
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def run(
    command: Sequence[str], *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
        cwd="/",  # never this checkout's pbx_zrtp (python -m puts the cwd first)
    )


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def secured_call(
    command: Sequence[str],
    relay: RunningRelay,
    env: dict[str, str],
    *,
    phone_host: str = PHONE_HOST,
    cipher: str | None = None,
) -> str:
    """A required mirror, a ZRTP phone through it (offering only ``cipher``, if given);
    returns the SAS both sides show."""
    ctl = ["ctl", "--control", relay.control]
    created = run(command, *ctl, "create", "demo", str(relay.port), "--policy", "required", env=env)
    assert created.returncode == 0, created.stdout + created.stderr
    phone = run(
        command,
        "endpoint",
        "--bind",
        f"{_bracketed(phone_host)}:0",
        "--peer",
        f"{_bracketed(relay.host)}:{relay.port}",
        "--srtp",
        "20",
        "--timeout",
        "15",
        *(("--cipher", cipher) if cipher else ()),
        env=env,
    )
    assert phone.returncode == 0, phone.stdout + phone.stderr
    result = json.loads(phone.stdout)
    assert result["ok"] and result["sas"], result
    shown = run(command, *ctl, "--json", "show", "demo", env=env)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    call = json.loads(shown.stdout)
    text = json.dumps(call)
    assert '"secure"' in text and result["sas"] in text, text
    if cipher:
        assert result["cipher"] == call["cipher"] == cipher, (result, call)
    return str(result["sas"])


def clean_env(**extra: str) -> dict[str, str]:
    """No variables of this checkout's venv or of the test run leak into the install."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PBX_ZRTP_", "PYTEST"))
    }
    env.update(extra)
    return env
