"""Restarting without cutting audio more than needed: SIGHUP (systemctl reload)
applies what can change live and names what needs a restart; SIGTERM (systemctl
stop/restart) drains: no new calls, those in progress keep flowing up to
``[timeouts] drain``, then the relay stops."""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tests.install_check import clean_env, relay_config
from tests.relay.helpers import PBX_HOST, RELAY_HOST, free_even_port

ROOT = pathlib.Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "pbx_zrtp.cli"]
PHONE_HOST = "127.0.0.4"


@dataclass
class Relay:
    process: subprocess.Popen[bytes]
    config: pathlib.Path
    log: pathlib.Path
    notify: socket.socket
    port: int
    control: str

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_log(self, needle: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            assert time.monotonic() < deadline, f"no {needle!r} in:\n{self.text()}"
            time.sleep(0.05)

    def notified(self, timeout: float = 15) -> str:
        self.notify.settimeout(timeout)
        return self.notify.recv(4096).decode()

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, "ctl", "--control", self.control, *args],
            capture_output=True,
            text=True,
            timeout=30,
            env=clean_env(PYTHONPATH=str(ROOT)),
        )


@contextmanager
def relay(tmp_path: pathlib.Path, extra: str = "") -> Iterator[Relay]:
    port = free_even_port()
    config = relay_config(tmp_path, port, fastpath="auto")
    config.write_text(config.read_text() + extra)
    log = tmp_path / "relay.log"
    notify_path = tmp_path / "notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    with open(log, "w") as sink:
        process = subprocess.Popen(
            [*CLI, "run", "--config", str(config)],
            stdout=sink,
            stderr=sink,
            env=clean_env(PYTHONPATH=str(ROOT), NOTIFY_SOCKET=str(notify_path)),
            cwd="/",
        )
    running = Relay(process, config, log, notify, port, f"unix:{tmp_path}/control.sock")
    try:
        assert running.notified().startswith("READY=1")
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        notify.close()


def test_sighup_applies_timeouts_and_log_level_and_names_what_needs_a_restart(
    tmp_path: pathlib.Path,
) -> None:
    with relay(tmp_path) as r:
        text = r.config.read_text()
        text = text.replace(f'address = "{RELAY_HOST}"', 'address = "127.0.0.9"')
        text += '\n[timeouts]\nrequired = 0.5\n\n[log]\nlevel = "debug"\n'
        r.config.write_text(text)
        r.process.send_signal(signal.SIGHUP)
        assert r.notified().startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert r.notified().startswith("READY=1")
        r.wait_log(
            "reloaded; changed but applied only by a restart (systemctl restart): relay.address"
        )
        # the new required time-out applies to the next call (it was 10 s)
        assert r.ctl("create", "c1", str(r.port), "--policy", "required").returncode == 0
        time.sleep(1.5)
        shown = r.ctl("show", "c1")
        assert "failed" in shown.stdout and "not secure within 0.5 s" in shown.stdout, shown
        # a file with an error changes nothing and stops nothing
        r.config.write_text(text + "\n[timeouts]\nrequired = 'soon'\n")
        r.process.send_signal(signal.SIGHUP)
        assert r.notified().startswith("RELOADING=1")
        assert r.notified().startswith("READY=1")
        r.wait_log("reload refused, the running configuration stays: configuration error")
        assert r.ctl("ping").returncode == 0
        assert r.process.poll() is None
    assert "Traceback" not in r.text()


def _rtp(seq: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 0x1234) + bytes(160)


def test_sigterm_drains_calls_in_progress_then_stops(tmp_path: pathlib.Path) -> None:
    with relay(tmp_path, "\n[timeouts]\ndrain = 20\n") as r:
        # a call in progress ("off": plain RTP passes), with a PBX and a phone
        assert r.ctl("create", "c1", str(r.port), "--policy", "off").returncode == 0
        pbx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        pbx.bind((PBX_HOST, r.port))
        pbx.settimeout(5)
        phone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        phone.bind((PHONE_HOST, 0))
        phone.sendto(_rtp(1), (RELAY_HOST, r.port))
        assert pbx.recv(2048) == _rtp(1)
        started = time.monotonic()
        r.process.send_signal(signal.SIGTERM)
        r.wait_log("stopping: no new calls; 1 in progress keep flowing for up to 20 s")
        assert r.notified().startswith("STOPPING=1\nSTATUS=draining 1 calls")
        assert r.notified() == f"EXTEND_TIMEOUT_USEC={35 * 1_000_000}"
        # ...its audio still flows
        for seq in range(2, 6):
            phone.sendto(_rtp(seq), (RELAY_HOST, r.port))
            assert pbx.recv(2048) == _rtp(seq)
        # ...no new call
        refused = r.ctl("create", "c2", str(r.port + 2), "--policy", "required")
        assert refused.returncode != 0 and "the relay is stopping" in refused.stderr, refused
        # the PBX hangs up the last call: the relay stops at once, well before 20 s
        assert r.ctl("delete", "c1").returncode == 0
        assert r.process.wait(10) == 0
        assert time.monotonic() - started < 10
        pbx.close()
        phone.close()
    assert "every call ended" in r.text() and "Traceback" not in r.text()


def test_drain_ends_after_its_time_and_a_second_sigterm_at_once(tmp_path: pathlib.Path) -> None:
    with relay(tmp_path, "\n[timeouts]\ndrain = 1\n") as r:
        assert r.ctl("create", "c1", str(r.port), "--policy", "off").returncode == 0
        r.process.send_signal(signal.SIGTERM)
        assert r.process.wait(10) == 0
    assert "drain time over: 1 calls cut" in r.text()
    other = tmp_path / "second"
    other.mkdir()
    with relay(other, "\n[timeouts]\ndrain = 600\n") as r:
        assert r.ctl("create", "c1", str(r.port), "--policy", "off").returncode == 0
        r.process.send_signal(signal.SIGTERM)
        r.wait_log("keep flowing for up to 600 s")
        r.process.send_signal(signal.SIGTERM)
        assert r.process.wait(10) == 0
    assert "stopping now: 1 calls cut" in r.text()


def test_sigint_stops_at_once(tmp_path: pathlib.Path) -> None:
    with relay(tmp_path, "\n[timeouts]\ndrain = 600\n") as r:
        assert r.ctl("create", "c1", str(r.port), "--policy", "off").returncode == 0
        r.process.send_signal(signal.SIGINT)
        assert r.process.wait(10) == 0
    assert "keep flowing" not in r.text()


def test_sighup_applies_an_adapters_policy_to_the_next_call_not_to_a_live_one(
    tmp_path: pathlib.Path,
) -> None:
    """``systemctl reload`` with a new [asterisk] default policy: the next call takes it,
    the call in progress keeps its own; a changed AMI secret is named as needing a
    restart (by name, never by value) and the session keeps running."""
    from tests.test_adapter_health import fake_asterisk

    with fake_asterisk("ctlpass") as (fake, ami_port, loop), contextlib.ExitStack() as stack:
        section = (
            f'\n[asterisk]\nhost = "127.0.0.1"\nport = {ami_port}\nusername = "ctl"\n'
            'secret = "ctlpass"\ndefault_policy = "optional"\n'
        )
        r = stack.enter_context(relay(tmp_path, section))

        def on_fake(coro: Any) -> Any:
            return asyncio.run_coroutine_threadsafe(coro, loop).result(20)

        async def call(port: int) -> Any:
            channel = fake.new_call(rtp_port=port, exten="600")
            await channel.set_var("PBX_ZRTP_POLICY", "auto")
            await channel.progress()
            await channel.user_event(
                "PbxZrtp",
                Policy="auto",
                Target="600",
                Endpoint=channel.endpoint,
                RtpSrc=f"127.0.0.1:{port}",
            )
            await channel.wait_for_var("ZRTP_POLICY", bool, 15)
            return channel

        deadline = time.monotonic() + 20
        while not fake.logins:
            assert time.monotonic() < deadline and r.process.poll() is None, r.text()
            time.sleep(0.05)
        live = on_fake(call(r.port))
        assert live.variables["ZRTP_POLICY"] == "optional"

        r.config.write_text(r.config.read_text().replace('"optional"', '"required"'))
        r.process.send_signal(signal.SIGHUP)
        assert r.notified().startswith("RELOADING=1")
        assert r.notified().startswith("READY=1")
        r.wait_log("reloaded: log level, timeouts, the ZRTP offer, the adapters' policies")
        assert "applied only by a restart" not in r.text()

        after = on_fake(call(r.port + 2))
        assert after.variables["ZRTP_POLICY"] == "required"
        # the call in progress: still mirrored, under the policy it started with
        shown = r.ctl("--json", "show", f"ast-{live.uniqueid}")
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["policy"] == "optional"
        assert live.alive and live.variables["ZRTP_POLICY"] == "optional"

        # the AMI session's own settings need a restart: named, and the session stays
        r.config.write_text(r.config.read_text().replace('"ctlpass"', '"n3w-s3cret"'))
        r.process.send_signal(signal.SIGHUP)
        r.wait_log("applied only by a restart (systemctl restart): asterisk.secret")
        assert fake.logins == 1 and r.process.poll() is None
    assert "n3w-s3cret" not in r.text() and "Traceback" not in r.text()
