"""systemd readiness (Type=notify): READY=1 only once the control socket and the
metrics endpoint answer, sent over NOTIFY_SOCKET (a path or an abstract name)."""

from __future__ import annotations

import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest

from pbx_zrtp import sdnotify
from tests.install_check import clean_env
from tests.relay.helpers import PBX_HOST, RELAY_HOST, free_even_port

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _listener(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(30)
    return sock


def test_notify_speaks_to_a_path_and_an_abstract_socket(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "notify")
    with _listener(path) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert sdnotify.ready("up")
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"
    name = f"pbx-zrtp-test-{os.getpid()}"
    with _listener("\0" + name) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.stopping("draining")
        assert sock.recv(4096) == b"STOPPING=1\nSTATUS=draining"
        assert sdnotify.reloading()
        assert re.fullmatch(rb"RELOADING=1\nMONOTONIC_USEC=\d+", sock.recv(4096))


def test_without_systemd_or_with_a_dead_socket_nothing_breaks(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not sdnotify.ready("up")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert not sdnotify.ready("up")  # logged once, never raised
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert not sdnotify.ready("up")


def test_ready_only_once_control_and_metrics_listen(tmp_path: pathlib.Path) -> None:
    port = free_even_port()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        metrics_port = probe.getsockname()[1]
    config = tmp_path / "relay.toml"
    control = tmp_path / "control.sock"
    config.write_text(
        f'[relay]\naddress = "{RELAY_HOST}"\npbx_address = "{PBX_HOST}"\n'
        f'ports = "{port}-{port + 100}"\n'
        f'[cache]\npath = "{tmp_path}/cache.db"\n'
        f'[control]\nsocket = "{control}"\n'
        f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n'
    )
    notify = tmp_path / "notify"
    with _listener(str(notify)) as sock:
        process = subprocess.Popen(
            [sys.executable, "-m", "pbx_zrtp.cli", "run", "--config", str(config)],
            env=clean_env(NOTIFY_SOCKET=str(notify), PYTHONPATH=str(ROOT)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            message = sock.recv(4096).decode()
            # at that moment both answer, with no waiting
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(str(control))
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
                assert r.status == 200
            assert message.startswith("READY=1\nSTATUS=running: relay"), message
        finally:
            process.send_signal(signal.SIGTERM)
            _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "Traceback" not in err
