"""An admin's mistakes get one clear line and an exit status, never a traceback.
(A missing extra's library: tests/test_packaging.py, in a venv without extras.)"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from tests.install_check import clean_env, relay_config, running_relay
from tests.relay.helpers import free_even_port

ROOT = pathlib.Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "pbx_zrtp.cli"]


def _cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=clean_env(PYTHONPATH=str(ROOT)),
        cwd="/",
    )


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The error: the last line, the only one that is not an INFO log line."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if " INFO " not in line]
    assert len(lines) == 1, result.stderr
    assert result.stderr.splitlines()[-1] == lines[0]
    return lines[0]


@pytest.mark.parametrize("command", ["run", "relay", "asterisk", "freeswitch"])
def test_config_that_is_a_directory_or_not_a_path(tmp_path: pathlib.Path, command: str) -> None:
    for check in ([], ["--check"]):
        result = _cli(command, "--config", str(tmp_path), *check)
        assert result.returncode == 2
        line = _one_line(result)
        assert line == (
            f"pbx-zrtp: configuration error: {tmp_path}: cannot read the configuration: "
            "Is a directory"
        )
    result = _cli(command, "--config", "/dev/null/relay.toml")
    assert result.returncode == 2
    assert "cannot read the configuration: Not a directory" in _one_line(result)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a mode-000 file anyway")
def test_config_that_cannot_be_read(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text("[relay]\n")
    config.chmod(0)
    result = _cli("run", "--config", str(config))
    assert result.returncode == 2
    assert "cannot read the configuration: Permission denied" in _one_line(result)


def test_a_second_relay_on_the_same_control_socket(tmp_path: pathlib.Path) -> None:
    env = clean_env(PYTHONPATH=str(ROOT))
    with running_relay(CLI, tmp_path, env) as first:
        second = _cli("relay", "--config", str(first.config))
        assert second.returncode == 1
        line = _one_line(second)
        assert line.startswith("pbx-zrtp: cannot start the relay: another process is serving")
        assert f"{tmp_path}/control.sock" in line
        # the first relay was not disturbed: its socket still answers
        ping = _cli("ctl", "--control", first.control, "ping")
        assert ping.returncode == 0, ping.stdout + ping.stderr
    # a file in the way that is not a socket
    other = tmp_path / "other"
    other.mkdir()
    config = relay_config(other, free_even_port())
    (other / "control.sock").write_text("not a socket")
    result = _cli("relay", "--config", str(config))
    assert result.returncode == 1
    assert "exists and is not a socket" in _one_line(result)


@pytest.mark.parametrize("kind", ["asterisk", "freeswitch"])
def test_a_bogus_relay_address_is_an_argument_error(tmp_path: pathlib.Path, kind: str) -> None:
    config = tmp_path / "pbx.toml"
    secret = 'secret = "s"' if kind == "asterisk" else 'password = "p"'
    config.write_text(f'[{kind}]\nhost = "127.0.0.1"\n{secret}\n')
    result = _cli(kind, "--config", str(config), "--relay", "bogus")  # never starts
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"pbx-zrtp {kind}: error: argument --relay: 'bogus' is neither unix:/PATH nor tcp:HOST:PORT"
    )


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "soon"])
def test_ctl_timeout_must_be_positive_seconds(value: str) -> None:
    result = _cli("ctl", "--timeout", value, "list")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith("pbx-zrtp ctl: error: argument --timeout: "), (
        result.stderr
    )
