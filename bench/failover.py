"""How fast a pool of relays notices a relay killed with live calls, and takes it back.

Two `pbx-zrtp relay` processes (same address R, own control sockets), a RelayPool
with ``--calls`` mirrors spread over them by load, then ``--rounds`` times: kill -9
relay a, time until the pool marks it down and until its calls are reported lost
(``--grace``), start it again, time until the pool has it up again.

    python bench/failover.py --rounds 5 --calls 40
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pbx_zrtp.calls import CallRequest, Policy
from pbx_zrtp.relay.control import ControlClient, ControlError
from pbx_zrtp.relay.pool import RelayEntry, RelayPool

ROOT = Path(__file__).resolve().parents[1]


def write_config(directory: Path, name: str) -> Path:
    config = directory / f"{name}.toml"
    config.write_text(
        f'[relay]\naddress = "127.0.0.2"\npbx_address = "127.0.0.3"\nports = "20000-40000"\n'
        f'fastpath = "off"\n[cache]\npath = "{directory / name}.db"\n'
        f'[control]\nsocket = "{directory / name}.sock"\n[metrics]\nlisten = ""\n'
        '[log]\nlevel = "warning"\n'
    )
    return config


async def start(config: Path, socket: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pbx_zrtp.cli", "relay", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    for _ in range(300):
        try:
            async with ControlClient(f"unix:{socket}", timeout=2) as client:
                await client.request("ping")
            return proc
        except ControlError:
            await asyncio.sleep(0.05)
    raise RuntimeError(f"relay {config} did not start")


async def until(predicate: Any, timeout: float = 30) -> float:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise RuntimeError("timed out")
        await asyncio.sleep(0.001)
    return time.monotonic() - t0


async def main(args: argparse.Namespace) -> None:
    directory = Path(tempfile.mkdtemp(prefix="pbx-zrtp-failover-"))
    configs = {n: write_config(directory, n) for n in ("a", "b")}
    sockets = {n: directory / f"{n}.sock" for n in configs}
    procs = {n: await start(configs[n], sockets[n]) for n in configs}
    entries = [RelayEntry(n, f"unix:{sockets[n]}", "127.0.0.2") for n in configs]
    pool = RelayPool.connect(entries, grace=args.grace)
    lost: list[float] = []
    pool.on_state(lambda r: lost.append(time.monotonic()) if r.get("state") == "failed" else None)
    await pool.start()
    port = 20000
    down, failed, back = [], [], []
    try:
        for n in range(args.calls):
            await pool.create(CallRequest(f"c{n}", port, Policy.OFF))
            port += 2
        spread = {s["name"]: s["calls"] for s in pool.status()}
        for _ in range(args.rounds):
            on_a = pool.status()[0]["calls"]
            lost.clear()
            killed = time.monotonic()
            procs["a"].kill()
            procs["a"].wait()
            down.append(await until(lambda: not pool.status()[0]["up"]))
            await until(lambda n=on_a: len(lost) >= n)
            failed.append(max(lost) - killed)
            procs["a"] = await start(configs["a"], sockets["a"])
            ready = time.monotonic()
            await until(lambda: pool.status()[0]["up"])
            back.append(time.monotonic() - ready)
            for _ in range(on_a):  # refill a: the pool sends new calls to the emptier relay
                await pool.create(CallRequest(f"c{port}", port, Policy.OFF))
                port += 2
    finally:
        await pool.close()
        for proc in procs.values():
            proc.kill()
            proc.wait()

    def ms(values: list[float]) -> str:
        return (
            f"median {statistics.median(values) * 1000:.1f} ms,"
            f" max {max(values) * 1000:.1f} ms (n={len(values)})"
        )

    print(f"calls spread over relays a, b (weights 1, 1): {spread}")
    print(f"kill -9 -> relay marked down:           {ms(down)}")
    print(f"kill -9 -> every call on it failed:     {ms(failed)} (grace {args.grace:g} s)")
    print(f"relay answering again -> back in pool:  {ms(back)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--grace", type=float, default=1.0)
    asyncio.run(main(parser.parse_args()))
