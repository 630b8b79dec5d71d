"""Adapter health exported by the adapter's own process: AMI connected (a refused
login reads 0), the relays of its pool up; ``pbx-zrtp asterisk --metrics``."""

from __future__ import annotations

import asyncio
import pathlib
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client.parser import text_string_to_metric_families

from pbx_zrtp.health import AdapterHealth, adapter_registry
from pbx_zrtp.relay.metrics import MetricsServer
from tests.asterisk.fake_ami import FakeAmi
from tests.install_check import clean_env, running_relay

ROOT = pathlib.Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "pbx_zrtp.cli"]


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_health_collector_reads_adapters_and_pools() -> None:
    health = AdapterHealth()
    up = [False]
    health.add_adapter("asterisk", lambda: up[0])
    health.add_pool("asterisk", lambda: [{"name": "a", "up": True}, {"name": "b", "up": False}])

    async def scenario() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        server = MetricsServer(adapter_registry(health))
        port = await server.serve("127.0.0.1", 0)
        try:
            first = await asyncio.to_thread(_scrape, port)
            up[0] = True
            second = await asyncio.to_thread(_scrape, port)
        finally:
            await server.close()
        assert first[("pbx_zrtp_adapter_connected", (("pbx", "asterisk"),))] == 0
        return second

    samples = asyncio.run(scenario())
    assert samples[("pbx_zrtp_adapter_connected", (("pbx", "asterisk"),))] == 1
    assert samples[("pbx_zrtp_relays", (("pool", "asterisk"),))] == 2
    assert samples[("pbx_zrtp_relays_up", (("pool", "asterisk"),))] == 1
    assert samples[("pbx_zrtp_relay_up", (("pool", "asterisk"), ("relay", "b")))] == 0
    assert any(name == "process_open_fds" for name, _ in samples)
    assert any(name == "pbx_zrtp_build_info" for name, _ in samples)


@contextmanager
def fake_asterisk(secret: str) -> Iterator[tuple[FakeAmi, int, asyncio.AbstractEventLoop]]:
    """The fake AMI on its own loop, in a thread (the adapter is another process)."""
    loop = asyncio.new_event_loop()
    fake = FakeAmi(secret=secret)
    port = loop.run_until_complete(fake.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield fake, port, loop
    finally:
        asyncio.run_coroutine_threadsafe(fake.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_the_asterisk_adapter_alone_serves_its_health(tmp_path: pathlib.Path) -> None:
    env = clean_env(PYTHONPATH=str(ROOT))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        metrics_port = probe.getsockname()[1]
    with (
        running_relay(CLI, tmp_path, env) as relay,
        fake_asterisk("ctlpass") as (_, ami_port, _loop),
    ):
        config = tmp_path / "adapter.toml"
        config.write_text(
            relay.config.read_text() + f'\n[asterisk]\nhost = "127.0.0.1"\nport = {ami_port}\n'
            'username = "ctl"\nsecret = "not-ctlpass"\n'
        )
        adapter = subprocess.Popen(
            [*CLI, "asterisk", "--config", str(config), "--metrics", f"127.0.0.1:{metrics_port}"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd="/",
        )
        try:
            deadline = time.monotonic() + 20
            samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
            while time.monotonic() < deadline:
                try:
                    samples = _scrape(metrics_port)
                except OSError:
                    time.sleep(0.2)
                    continue
                if samples.get(("pbx_zrtp_relays_up", (("pool", "relay"),))) == 1:
                    break
                time.sleep(0.2)
            # the login is refused (wrong secret): not connected; its one relay is up
            assert samples[("pbx_zrtp_adapter_connected", (("pbx", "asterisk"),))] == 0
            assert samples[("pbx_zrtp_relays", (("pool", "relay"),))] == 1
            assert samples[("pbx_zrtp_relays_up", (("pool", "relay"),))] == 1
        finally:
            adapter.terminate()
            _, err = adapter.communicate(timeout=30)
    assert "refused the login of 'ctl'" in err and "Traceback" not in err
