"""Hostile networks with real sockets and real processes: kernel netem and a userspace path.

Two ways to impair real UDP between our endpoint and a peer (the bzrtp peer or
our own engine), shared by ``tests/test_hostile.py`` and ``bench/hostile.py``:

* ``netem``: two network namespaces joined by a veth pair, ``tc netem`` on both
  ends (loss, delay with jitter, reordering, duplication), each endpoint a
  process in its own namespace. Needs root, ``ip``/``tc`` (iproute2) and a kernel
  with ``sch_netem``; ``netem_unavailable()`` says why not.
* ``ImpairedPath``: the same impairments applied by a UDP relay in this process
  (asyncio). Works everywhere, so the trials also run on kernels without netem.

A trial is secure when both sides report ``ok`` with the same SAS and matching
SRTP keys. Both sides send SRTP after securing and linger, as phones in a call
do, so the last Confirm2/Conf2ACK exchange is not cut short by a process exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import pathlib
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pbx_zrtp.endpoint import EndpointError, EndpointOptions, run_endpoint
from pbx_zrtp.zrtp.config import ZrtpConfiguration, parse_algorithm_list
from tests.netsim import HOSTILE, Conditions

REPO = pathlib.Path(__file__).resolve().parents[1]
Address = tuple[str, int]

#: Long enough for every RFC 6189 §6 give-up (12 s Hello, ~10.7 s per T2 wait,
#: 10 s responder) to happen inside the engine rather than in the harness.
TRIAL_TIMEOUT = 40.0
SRTP_PACKETS = 25
LINGER = 3.0
#: Our side's roles and the key agreements the trials cycle through (both in bzrtp).
ROLES = ("auto", "initiator", "responder")
KEY_AGREEMENTS = ("X255", "DH3k", "X448", "DH2k")


@dataclass
class RealTrial:
    index: int
    label: str
    secured: bool
    time_to_secure: float | None  # seconds, our endpoint's bind -> Secured
    reasons: list[str] = field(default_factory=list)
    wall: float = 0.0


def _agree(ours: dict[str, Any], theirs: dict[str, Any]) -> bool:
    return bool(
        ours.get("ok")
        and theirs.get("ok")
        and ours["sas"] == theirs["sas"]
        and ours["srtp_self_key"] == theirs["srtp_peer_key"]
        and ours["srtp_peer_key"] == theirs["srtp_self_key"]
    )


def _verdict(index: int, label: str, ours: dict[str, Any], theirs: dict[str, Any]) -> RealTrial:
    secured = _agree(ours, theirs)
    reasons = []
    if not secured:
        for who, report in (("ours", ours), ("peer", theirs)):
            if not report.get("ok"):
                reasons.append(f"{who}: {report.get('error', '?')}")
        if not reasons:
            reasons.append("both ok but keys differ")
    tts = ours.get("elapsed_ms") if secured else None
    return RealTrial(index, label, secured, None if tts is None else tts / 1000, reasons)


# ---------------------------------------------------------------------- userspace path


class _Leg(asyncio.DatagramProtocol):
    def __init__(self, path: ImpairedPath, side: str) -> None:
        self.path = path
        self.side = side
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.path.forward(self.side, data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        pass


class ImpairedPath:
    """A UDP relay applying ``Conditions`` in each direction (netem in user space).

    The caller sends to ``caller_facing``; datagrams go on to ``callee`` from a
    second socket, and the callee's answers come back the same way.
    """

    def __init__(self, conditions: Conditions, seed: int, callee: Address) -> None:
        self.conditions = conditions
        self.rng = random.Random(seed)
        self.callee = callee
        self.caller: Address | None = None
        self.legs: dict[str, _Leg] = {}
        self.forwarded = 0

    async def start(self, host: str = "127.0.0.1") -> Address:
        loop = asyncio.get_running_loop()
        for side in ("caller", "callee"):
            _, leg = await loop.create_datagram_endpoint(
                lambda side=side: _Leg(self, side), local_addr=(host, 0)
            )
            self.legs[side] = leg
        transport = self.legs["caller"].transport
        assert transport is not None
        sockname = transport.get_extra_info("sockname")
        return (sockname[0], sockname[1])

    def forward(self, side: str, data: bytes, addr: Address) -> None:
        if side == "caller":
            if self.caller is None:
                self.caller = addr
            elif addr != self.caller:
                return
            out, dest = self.legs["callee"], self.callee
        else:
            if addr != self.callee or self.caller is None:
                return
            out, dest = self.legs["caller"], self.caller
        c, rng = self.conditions, self.rng
        if rng.random() < c.loss:
            return
        loop = asyncio.get_running_loop()
        for _ in range(2 if rng.random() < c.duplicate else 1):
            delay = 0.0 if rng.random() < c.reorder else c.delay + rng.uniform(0.0, c.jitter)
            loop.call_later(delay, self._send, out, data, dest)

    def _send(self, leg: _Leg, data: bytes, dest: Address) -> None:
        if leg.transport is not None and not leg.transport.is_closing():
            leg.transport.sendto(data, dest)
            self.forwarded += 1

    def close(self) -> None:
        for leg in self.legs.values():
            if leg.transport is not None:
                leg.transport.close()


def _our_config(role: str, key_agreement: str) -> ZrtpConfiguration:
    return ZrtpConfiguration(
        zid=os.urandom(12),
        role=role,  # type: ignore[arg-type]
        key_agreement_types=parse_algorithm_list(key_agreement),
    )


async def _ours(config: ZrtpConfiguration, options: EndpointOptions, **kw: Any) -> dict[str, Any]:
    try:
        return await run_endpoint(config, options, **kw)
    except EndpointError as exc:
        return {"ok": False, "error": str(exc)}


async def _wait_port_file(path: pathlib.Path, proc: asyncio.subprocess.Process) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, ValueError):
            return int(path.read_text().strip())
        if proc.returncode is not None:
            raise RuntimeError(f"peer exited early ({proc.returncode})")
        await asyncio.sleep(0.01)
    raise TimeoutError(f"no port in {path}")


async def _finish(proc: asyncio.subprocess.Process, timeout: float) -> dict[str, Any]:
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return {"ok": False, "error": "harness timeout: the peer never exited"}
    lines = [line for line in out.decode(errors="replace").splitlines() if line.strip()]
    try:
        report: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        report = {"ok": False, "error": f"no JSON report: {out[-200:]!r}"}
    return report


def _label(index: int) -> tuple[str, str]:
    return ROLES[index % len(ROLES)], KEY_AGREEMENTS[(index // len(ROLES)) % len(KEY_AGREEMENTS)]


async def userspace_bzrtp_trial(
    binary: pathlib.Path, work: pathlib.Path, index: int, seed: int, conditions: Conditions
) -> RealTrial:
    """Our endpoint (in this process) <-> bzrtp_peer (a process) through an ImpairedPath."""
    role, ka = _label(index)
    started = time.monotonic()
    port_file = work / f"bzrtp-{index}-{time.monotonic_ns()}"
    proc = await asyncio.create_subprocess_exec(
        str(binary),
        *("--bind", "127.0.0.1:0", "--port-file", str(port_file), "--key-agreement", ka),
        *("--srtp", str(SRTP_PACKETS), "--linger-ms", str(int(LINGER * 1000))),
        *("--timeout", str(TRIAL_TIMEOUT)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    path: ImpairedPath | None = None
    try:
        port = await _wait_port_file(port_file, proc)
        path = ImpairedPath(conditions, seed, ("127.0.0.1", port))
        entry = await path.start()
        ours = await _ours(
            _our_config(role, ka),
            EndpointOptions(
                bind=("127.0.0.1", 0),
                peer=entry,
                srtp_count=SRTP_PACKETS,
                timeout=TRIAL_TIMEOUT,
                linger=LINGER,
            ),
        )
        theirs = await _finish(proc, TRIAL_TIMEOUT + 10)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        if path is not None:
            path.close()
        with contextlib.suppress(FileNotFoundError):
            port_file.unlink()
    trial = _verdict(index, f"ours {role} {ka} vs bzrtp", ours, theirs)
    trial.wall = time.monotonic() - started
    return trial


async def userspace_engine_trial(index: int, seed: int, conditions: Conditions) -> RealTrial:
    """Two of our endpoints (both in this process) through an ImpairedPath."""
    role, ka = _label(index)
    other = {"auto": "auto", "initiator": "responder", "responder": "initiator"}[role]
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[Address] = loop.create_future()

    def options(peer: Address | None) -> EndpointOptions:
        return EndpointOptions(
            bind=("127.0.0.1", 0),
            peer=peer,
            srtp_count=SRTP_PACKETS,
            timeout=TRIAL_TIMEOUT,
            linger=LINGER,
        )

    callee = asyncio.ensure_future(_ours(_our_config(other, ka), options(None), ready=ready))
    path = ImpairedPath(conditions, seed, await ready)
    try:
        entry = await path.start()
        ours = await _ours(_our_config(role, ka), options(entry))
        theirs = await callee
    finally:
        path.close()
    trial = _verdict(index, f"ours {role} {ka} vs ours", ours, theirs)
    trial.wall = time.monotonic() - started
    return trial


async def run_userspace(
    trials: int,
    *,
    binary: pathlib.Path | None,
    work: pathlib.Path,
    conditions: Conditions = HOSTILE,
    parallel: int = 8,
    first_seed: int = 0,
) -> list[RealTrial]:
    """``trials`` handshakes, ``parallel`` at a time (bzrtp peer if ``binary``, else ours)."""
    gate = asyncio.Semaphore(parallel)

    async def one(index: int) -> RealTrial:
        async with gate:
            if binary is not None:
                return await userspace_bzrtp_trial(
                    binary, work, index, first_seed + index, conditions
                )
            return await userspace_engine_trial(index, first_seed + index, conditions)

    return list(await asyncio.gather(*(one(i) for i in range(trials))))


# ---------------------------------------------------------------------- kernel netem

_IP = shutil.which("ip")
_TC = shutil.which("tc")
_names = itertools.count()


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=30)


def netem_args(conditions: Conditions) -> list[str]:
    """``tc qdisc ... netem`` arguments for the same impairment as ``ImpairedPath``.

    netem's jitter is ± around the delay: delay d+j/2 ± j/2 spans d..d+j. No
    ``distribution``: iproute2 has no table for "uniform" (and the kernel draws
    uniformly when given none).
    """
    c = conditions
    mid = (c.delay + c.jitter / 2) * 1000
    args = ["delay", f"{mid:.1f}ms", f"{c.jitter / 2 * 1000:.1f}ms"]
    args += ["loss", f"{c.loss * 100:g}%", "duplicate", f"{c.duplicate * 100:g}%"]
    if c.reorder:
        args += ["reorder", f"{c.reorder * 100:g}%"]
    return args


def netem_unavailable() -> str | None:
    """None when this machine can run the netem trials, else why not."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and tc qdiscs)"
    if _IP is None or _TC is None:
        return "ip/tc not found: install iproute2 (bash install.sh --dev)"
    name = f"pbxzrtp-probe-{os.getpid()}"
    try:
        _run(_IP, "netns", "add", name)
        probe = _run(
            _IP, "netns", "exec", name, _TC, "qdisc", "add", "dev", "lo", "root", "netem",
            "delay", "1ms", check=False,
        )  # fmt: skip
        if probe.returncode != 0:
            return f"tc netem unavailable (kernel without sch_netem?): {probe.stderr.strip()}"
    except (subprocess.SubprocessError, OSError) as exc:
        return f"cannot create a network namespace: {exc}"
    finally:
        _run(_IP, "netns", "del", name, check=False)
    return None


@dataclass
class NetnsPair:
    """Two namespaces joined by a veth pair: ``a`` (10.99.0.1) and ``b`` (10.99.0.2)."""

    ns_a: str
    ns_b: str
    addr_a: str = "10.99.0.1"
    addr_b: str = "10.99.0.2"

    def exec_prefix(self, side: str) -> list[str]:
        assert _IP is not None
        return [_IP, "netns", "exec", self.ns_a if side == "a" else self.ns_b]


@contextlib.contextmanager
def netns_pair(conditions: Conditions | None) -> Iterator[NetnsPair]:
    """Create the namespaces and veth (with netem on both ends unless None); always cleaned."""
    assert _IP is not None and _TC is not None
    tag = f"{os.getpid()}-{next(_names)}"
    pair = NetnsPair(f"pbxzrtp-a-{tag}", f"pbxzrtp-b-{tag}")
    try:
        for ns in (pair.ns_a, pair.ns_b):
            _run(_IP, "netns", "add", ns)
            _run(_IP, "-n", ns, "link", "set", "lo", "up")
        _run(
            _IP, "link", "add", "zva", "netns", pair.ns_a, "type", "veth",
            "peer", "name", "zvb", "netns", pair.ns_b,
        )  # fmt: skip
        for ns, dev, addr in ((pair.ns_a, "zva", pair.addr_a), (pair.ns_b, "zvb", pair.addr_b)):
            _run(_IP, "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _run(_IP, "-n", ns, "link", "set", dev, "up")
            if conditions is not None:
                _run(_IP, "netns", "exec", ns, _TC, "qdisc", "add", "dev", dev, "root", "netem",
                     "limit", "10000", *netem_args(conditions))  # fmt: skip
        yield pair
    finally:
        for ns in (pair.ns_a, pair.ns_b):
            _run(_IP, "netns", "del", ns, check=False)


def _endpoint_cmd(args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "pbx_zrtp.cli", "endpoint", *args]


async def netem_trial(
    pair: NetnsPair,
    work: pathlib.Path,
    index: int,
    *,
    binary: pathlib.Path | None,
) -> RealTrial:
    """One handshake across the veth: our endpoint in ``a``, the peer (bzrtp or ours) in ``b``."""
    role, ka = _label(index)
    started = time.monotonic()
    port_file = work / f"netem-{index}-{time.monotonic_ns()}"
    common = ["--key-agreement", ka, "--srtp", str(SRTP_PACKETS), "--timeout", str(TRIAL_TIMEOUT)]
    bind_b = f"{pair.addr_b}:0"
    if binary is not None:
        peer_cmd = [str(binary), "--bind", bind_b, "--port-file", str(port_file), *common]
        peer_cmd += ["--linger-ms", str(int(LINGER * 1000))]
        label = f"ours {role} {ka} vs bzrtp (netem)"
    else:
        other = {"auto": "auto", "initiator": "responder", "responder": "initiator"}[role]
        peer_cmd = _endpoint_cmd(["--bind", bind_b, "--port-file", str(port_file), *common])
        peer_cmd += ["--role", other, "--linger", str(LINGER)]
        label = f"ours {role} {ka} vs ours (netem)"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    peer = await asyncio.create_subprocess_exec(
        *pair.exec_prefix("b"), *peer_cmd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=env, cwd=REPO,
    )  # fmt: skip
    ours_proc: asyncio.subprocess.Process | None = None
    try:
        port = await _wait_port_file(port_file, peer)
        ours_cmd = _endpoint_cmd(
            ["--bind", f"{pair.addr_a}:0", "--peer", f"{pair.addr_b}:{port}", "--role", role]
        )
        ours_proc = await asyncio.create_subprocess_exec(
            *pair.exec_prefix("a"), *ours_cmd, *common, "--linger", str(LINGER),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=env, cwd=REPO,
        )  # fmt: skip
        ours = await _finish(ours_proc, TRIAL_TIMEOUT + 15)
        theirs = await _finish(peer, TRIAL_TIMEOUT + 15)
    finally:
        for proc in (peer, ours_proc):
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        with contextlib.suppress(FileNotFoundError):
            port_file.unlink()
    trial = _verdict(index, label, ours, theirs)
    trial.wall = time.monotonic() - started
    return trial


async def run_netem(
    trials: int,
    *,
    binary: pathlib.Path | None,
    work: pathlib.Path,
    conditions: Conditions | None = HOSTILE,
    parallel: int = 8,
) -> list[RealTrial]:
    """``trials`` handshakes across one netem'd veth pair, ``parallel`` at a time."""
    gate = asyncio.Semaphore(parallel)
    with netns_pair(conditions) as pair:

        async def one(index: int) -> RealTrial:
            async with gate:
                return await netem_trial(pair, work, index, binary=binary)

        return list(await asyncio.gather(*(one(i) for i in range(trials))))
