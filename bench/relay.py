"""Relay data-plane benchmark: N concurrent secured G.711 calls through `pbx-zrtp relay`.

Run from the repository root (figures and method: docs/performance.md, "Relay"):

    .venv/bin/python bench/relay.py                        # sweep 50..700 calls, ~3-4 min
    .venv/bin/python bench/relay.py --calls 200 --uvloop   # one point, relay on uvloop
    .venv/bin/python bench/relay.py --calls 200 --profile  # + py-spy / perf of the relay
    .venv/bin/python bench/relay.py --json                 # one JSON object

For each N the bench starts a fresh relay process (config in a temporary
directory: in-memory cache, control on a Unix socket, no metrics) pinned to one
core, and sets up N calls through its control API (policy "required"). Each
call's ZRTP handshake is run by our own engine (``run_endpoint``) from a phone
socket on 127.0.0.4:P toward the relay's 127.0.0.2:P, many at once in one
asyncio loop. A stand-in PBX socket on 127.0.0.3:P answers the relay's first
priming packet (so priming stops, as with a real PBX) and learns the relay's
PBX-side port. Once every call is secure, the Python sockets are closed and
``rtpload`` (bench/rtpload.c, built here with gcc and libsrtp2) binds the same
addresses, pinned to the other core, and carries the media: per call 50
packets/s each way (12-byte RTP header + 160 bytes), SRTP with the ZRTP keys on
the phone side, plain RTP on the PBX side. It measures loss and one-way latency
per direction, and samples the relay's CPU time (/proc/PID/stat) over the
steady-state window after the warm-up.

The raw pylibsrtp cost (protect + unprotect of a 172-byte RTP packet in a
tight loop, on the relay's core, before the relay starts) is the reference.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import importlib
import json
import os
import pathlib
import platform
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

BENCH_DIR = pathlib.Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import pylibsrtp  # noqa: E402

from pbx_zrtp.endpoint import EndpointOptions, run_endpoint  # noqa: E402
from pbx_zrtp.relay.control import ControlClient  # noqa: E402
from pbx_zrtp.srtp import SrtpContext  # noqa: E402
from pbx_zrtp.zrtp.config import ZrtpConfiguration  # noqa: E402
from pbx_zrtp.zrtp.events import SrtpKeys  # noqa: E402

RELAY_HOST = "127.0.0.2"
PBX_HOST = "127.0.0.3"
PHONE_HOST = "127.0.0.4"
#: Even ports P for the calls: outside the kernel's ephemeral range (32768-60999),
#: which the relay's PBX-side sockets use.
PORT_LOW, PORT_HIGH = 20000, 32000
RTPLOAD_SOURCE = BENCH_DIR / "rtpload.c"
DEFAULT_SWEEP = "50,100,200,300,400,550,700"
#: The goals stated in the issue.
GOAL_US_PER_PACKET = 20.0
GOAL_CALLS = 550
GOAL_P99_US = 2000.0
#: How the relay process is started: the normal CLI entry point, optionally on uvloop.
RELAY_LAUNCHER = """
import asyncio, sys
if sys.argv[3]:
    sys.path.insert(0, sys.argv[3])
if sys.argv[2] == "uvloop":
    import uvloop
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
import pbx_zrtp
from pbx_zrtp.cli import main
print("relay code:", pbx_zrtp.__file__, "loop:", sys.argv[2], file=sys.stderr, flush=True)
sys.exit(main(["relay", "--config", sys.argv[1]]))
"""


class BenchError(Exception):
    """The bench could not run a point; the message says why."""


# ---------------------------------------------------------------------------
# building rtpload


def build_rtpload_pylibsrtp(out_dir: pathlib.Path) -> pathlib.Path:
    """bench/rtpload.c linked against pylibsrtp's bundled libsrtp (OpenSSL) instead."""
    import sysconfig

    binding = importlib.import_module("pylibsrtp._binding")
    lib = pathlib.Path(str(binding.__file__)).resolve()
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    pylib = (sysconfig.get_config_var("LDVERSION") or "").strip()
    out_dir.mkdir(parents=True, exist_ok=True)
    binary = out_dir / "rtpload-pylibsrtp"
    source = RTPLOAD_SOURCE
    if binary.is_file() and binary.stat().st_mtime >= source.stat().st_mtime:
        return binary
    cflags = subprocess.run(
        ["pkg-config", "--cflags", "libsrtp2"], capture_output=True, text=True, check=False
    ).stdout.split()
    cmd = ["gcc", "-O2", "-std=gnu11", "-o", str(binary), str(source), *cflags, str(lib)]
    cmd += [f"-L{libdir}", f"-lpython{pylib}", f"-Wl,-rpath,{lib.parent}:{libdir}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
    if proc.returncode != 0:
        raise OSError(f"building rtpload on pylibsrtp failed: {proc.stderr[-1500:]}")
    return binary


def build_rtpload(out_dir: pathlib.Path) -> pathlib.Path:
    """Compile bench/rtpload.c into ``out_dir`` (skipped if up to date)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    binary = out_dir / "rtpload"
    if binary.is_file() and binary.stat().st_mtime >= RTPLOAD_SOURCE.stat().st_mtime:
        return binary
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise BenchError("no C compiler (gcc) on PATH")
    flags = ["-lsrtp2"]
    if shutil.which("pkg-config"):
        proc = subprocess.run(
            ["pkg-config", "--cflags", "--libs", "libsrtp2"],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        if proc.returncode == 0:
            flags = proc.stdout.split()
    tmp = binary.with_name(f"rtpload.{os.getpid()}.tmp")
    cmd = [gcc, "-O2", "-Wall", "-std=gnu11", "-o", str(tmp), str(RTPLOAD_SOURCE), *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        hint = " (apt-get install libsrtp2-dev)" if "srtp2/srtp.h" in proc.stderr else ""
        raise BenchError(f"compiling rtpload failed{hint}:\n{proc.stderr[-2000:]}")
    os.replace(tmp, binary)
    return binary


# ---------------------------------------------------------------------------
# the pylibsrtp reference


def _rtp(seq: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, (seq * 160) & 0xFFFFFFFF, 0x1234) + (
        b"\xff" * 160
    )


def srtp_reference(auth_tag: str, seconds: float = 1.0) -> dict[str, float]:
    """µs per operation on a 172-byte RTP packet: raw pylibsrtp, and our SrtpContext."""
    profile = {
        "HS32": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
        "HS80": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    }[auth_tag]
    key = os.urandom(30)

    def session(inbound: bool) -> pylibsrtp.Session:
        ssrc_type = (
            pylibsrtp.Policy.SSRC_ANY_INBOUND if inbound else pylibsrtp.Policy.SSRC_ANY_OUTBOUND
        )
        return pylibsrtp.Session(
            pylibsrtp.Policy(key=key, ssrc_type=ssrc_type, srtp_profile=profile)
        )

    def timed(run: Any, count: int) -> float:
        best = float("inf")
        deadline = time.perf_counter() + seconds
        while True:
            start = time.process_time()
            run()
            best = min(best, (time.process_time() - start) / count * 1e6)
            if time.perf_counter() > deadline:
                return best

    result: dict[str, float] = {}
    chunk = [_rtp(seq) for seq in range(1, 8193)]  # fresh sessions per run: no wrap
    tx = session(False)
    protected = [tx.protect(p) for p in chunk]

    def raw_protect() -> None:
        t = session(False)
        for p in chunk:
            t.protect(p)

    def raw_unprotect() -> None:
        r = session(True)
        for p in protected:
            r.unprotect(p)

    def raw_pair() -> None:
        t, r = session(False), session(True)
        for p in chunk:
            r.unprotect(t.protect(p))

    keys = SrtpKeys("AES1", auth_tag, key[:16], key[16:], key[:16], key[16:])

    def ours_pair() -> None:
        context = SrtpContext(keys)  # same key both ways: it unprotects its own output
        for p in chunk:
            context.unprotect(context.protect(p))  # type: ignore[arg-type]

    result["pylibsrtp_protect_us"] = timed(raw_protect, len(chunk))
    result["pylibsrtp_unprotect_us"] = timed(raw_unprotect, len(chunk))
    result["pylibsrtp_pair_us"] = timed(raw_pair, len(chunk))
    result["srtpcontext_pair_us"] = timed(ours_pair, len(chunk))
    return {k: round(v, 3) for k, v in result.items()}


# ---------------------------------------------------------------------------
# the relay process


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def pick_ports(
    count: int, hosts: tuple[str, str, str] = (RELAY_HOST, PBX_HOST, PHONE_HOST)
) -> list[int]:
    """Even ports P with P, P+1 free on the relay and PBX addresses and P on the phone's."""
    relay_host, pbx_host, phone_host = hosts
    ports: list[int] = []
    for port in range(PORT_LOW, PORT_HIGH, 2):
        if all(_port_free(h, p) for h in (relay_host, pbx_host) for p in (port, port + 1)) and (
            _port_free(phone_host, port)
        ):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise BenchError(f"only {len(ports)} free port pairs in {PORT_LOW}-{PORT_HIGH}")


def _read_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def _terminate(proc: subprocess.Popen[Any] | None, timeout: float = 10.0) -> None:
    """Stop one child we started (SIGTERM, then SIGKILL), by its own pid only."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@contextlib.contextmanager
def relay_process(
    work: pathlib.Path, *, core: int, auth_tag: str, use_uvloop: bool, source: str = ""
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A `pbx-zrtp relay` pinned to ``core``; yields (process, control address)."""
    control = work / "control.sock"
    config = work / "relay.toml"
    config.write_text(
        "[relay]\n"
        f'address = "{RELAY_HOST}"\n'
        f'pbx_address = "{PBX_HOST}"\n'
        f'ports = "{PORT_LOW}-{PORT_HIGH}"\n'
        "[zrtp]\n"
        f'auth_tags = ["{auth_tag}"]\n'
        "[cache]\n"
        'path = "memory"\n'
        "[timeouts]\n"
        "optional = 120\n"
        "required = 120\n"
        "[control]\n"
        f'socket = "{control}"\n'
        "[metrics]\n"
        'listen = ""\n'
        "[log]\n"
        'level = "warning"\n'
    )
    log = open(work / "relay.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            RELAY_LAUNCHER,
            str(config),
            "uvloop" if use_uvloop else "asyncio",
            source,
        ],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,  # Ctrl-C reaches only us; we stop it in order
        preexec_fn=lambda: os.sched_setaffinity(0, {core}),
    )
    try:
        deadline = time.monotonic() + 20
        address = f"unix:{control}"
        while not control.exists():
            if proc.poll() is not None:
                raise BenchError(
                    f"the relay exited ({proc.returncode}): {(work / 'relay.log').read_text()}"
                )
            if time.monotonic() > deadline:
                raise BenchError("the relay did not open its control socket within 20 s")
            time.sleep(0.05)
        yield proc, address
    finally:
        _terminate(proc)
        log.close()


# ---------------------------------------------------------------------------
# call set-up: ZRTP through the relay, with our engine as the phone


@dataclass
class SecuredCall:
    port: int
    relay_pbx_port: int
    self_key: str
    self_salt: str
    peer_key: str
    peer_salt: str
    handshake_ms: float


class _PbxStandIn(asyncio.DatagramProtocol):
    """On A:P during set-up: learns the relay's PBX-side address from its first
    priming packet and answers it once, so the relay stops priming (closed loop)."""

    def __init__(self) -> None:
        self.relay: tuple[str, int] | None = None
        self.heard = asyncio.Event()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if self.relay is None and self.transport is not None:
            self.relay = (addr[0], addr[1])
            self.transport.sendto(_rtp(1), self.relay)
            self.heard.set()

    def error_received(self, exc: Exception) -> None:
        pass


async def _secure_one(
    client: ControlClient, port: int, auth_tag: str, timeout: float
) -> SecuredCall:
    loop = asyncio.get_running_loop()
    await client.request(
        "create",
        call_id=f"bench-{port}",
        port=port,
        policy="required",
        self_uri="sip:bench@relay",
        peer_uri=f"sip:phone-{port}@bench",
    )
    transport, pbx = await loop.create_datagram_endpoint(_PbxStandIn, local_addr=(PBX_HOST, port))
    try:
        configuration = ZrtpConfiguration(
            zid=os.urandom(12), cipher_types=(b"AES1",), auth_tag_types=(auth_tag.encode(),)
        )
        result = await run_endpoint(
            configuration,
            EndpointOptions(
                bind=(PHONE_HOST, port), peer=(RELAY_HOST, port), srtp_count=0, timeout=timeout
            ),
        )
        await asyncio.wait_for(pbx.heard.wait(), timeout)
    finally:
        transport.close()
    assert pbx.relay is not None
    if result["auth_tag"] != auth_tag or result["cipher"] != "AES1":
        raise BenchError(f"call {port} negotiated {result['cipher']}/{result['auth_tag']}")
    return SecuredCall(
        port,
        pbx.relay[1],
        result["srtp_self_key"],
        result["srtp_self_salt"],
        result["srtp_peer_key"],
        result["srtp_peer_salt"],
        result["elapsed_ms"],
    )


async def secure_calls(
    address: str, ports: Sequence[int], auth_tag: str, *, batch: int = 25, timeout: float = 30
) -> tuple[list[SecuredCall], dict[str, Any]]:
    """Create and secure one call per port; returns them and the relay's stats after."""
    calls: list[SecuredCall] = []
    async with ControlClient(address, timeout=timeout) as client:
        for i in range(0, len(ports), batch):
            group = ports[i : i + batch]
            calls += await asyncio.gather(
                *(_secure_one(client, port, auth_tag, timeout) for port in group)
            )
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            states = collections.Counter(
                c["state"]
                for c in await client.request("list")
                if c["call_id"].startswith("bench-")
            )
            if states.get("secure", 0) == len(ports):
                break
            if asyncio.get_running_loop().time() > deadline:
                raise BenchError(f"not every call became secure on the relay: {dict(states)}")
            await asyncio.sleep(0.1)
        stats = await client.request("stats")
    return calls, stats


async def _control(address: str, op: str) -> Any:
    async with ControlClient(address) as client:
        return await client.request(op)


# ---------------------------------------------------------------------------
# one point of the sweep


@dataclass
class Options:
    duration: float
    warmup: float
    drain: float
    auth_tag: str
    use_uvloop: bool
    relay_core: int
    load_core: int
    profile: bool = False
    profile_seconds: float = 5.0
    relay_source: str = ""  # a directory holding another pbx_zrtp (A/B of a patch)
    busy_poll: bool = False
    cipher: str = "AES1"  # bench/fastpath.py: AES3 = AES_CM_256 keys
    family: str = "ipv4"  # bench/fastpath.py: ipv6 in a network namespace


def _run_rtpload(
    binary: pathlib.Path,
    calls_file: pathlib.Path,
    options: Options,
    *,
    relay_pid: int = 0,
    direct: bool = False,
    duration: float | None = None,
    hosts: tuple[str, str, str] | None = None,
) -> tuple[subprocess.Popen[str], float]:
    args = [
        str(binary),
        "--calls",
        str(calls_file),
        "--duration",
        str(duration if duration is not None else options.duration),
        "--warmup",
        str(options.warmup),
        "--drain",
        str(options.drain),
        "--auth-tag",
        options.auth_tag,
    ]
    if options.busy_poll:
        args.append("--busy")
    if hosts is not None:
        args += ["--relay", hosts[0], "--pbx", hosts[1], "--phone", hosts[2]]
    if direct:
        args.append("--direct")
    else:
        args += ["--relay-pid", str(relay_pid)]
    core = options.load_core
    proc = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {core}),
    )
    return proc, options.warmup + (duration or options.duration) + options.drain + 60


def _finish_rtpload(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _terminate(proc, 5)
        raise BenchError("rtpload did not finish in time") from None
    finally:
        _terminate(proc, 5)
    if proc.returncode != 0 or not out.strip():
        raise BenchError(f"rtpload failed ({proc.returncode}): {err.strip()[-2000:]}")
    return dict(json.loads(out))


def _start_pinned(cmd: list[str], core: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {core}),
    )


def _profile_relay(pid: int, seconds: float, out_dir: pathlib.Path, core: int) -> dict[str, Any]:
    """py-spy (Python functions) and perf (kernel / libpython / libsrtp split), if present.

    The profilers run on ``core`` (rtpload's, which has headroom at moderate N)."""
    report: dict[str, Any] = {}
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    pyspy = shutil.which("py-spy") or str(pathlib.Path(sys.executable).with_name("py-spy"))
    if pathlib.Path(pyspy).exists():
        raw = out_dir / "pyspy.txt"
        cmd = [pyspy, "record", "--pid", str(pid), "--duration", str(int(seconds))]
        cmd += ["--rate", "250", "--format", "raw", "--nonblocking", "--output", str(raw)]
        procs.append(("py-spy", _start_pinned(cmd, core)))
    else:
        report["py_spy"] = "not installed (.venv/bin/pip install py-spy)"
    perf = shutil.which("perf")
    perf_data = out_dir / "perf.data"
    if perf:
        cmd = [perf, "record", "-F", "999", "-g", "-p", str(pid), "-o", str(perf_data)]
        cmd += ["--", "sleep", str(seconds)]
        procs.append(("perf", _start_pinned(cmd, core)))
    else:
        report["perf"] = "not installed"
    for name, proc in procs:
        try:
            _, err = proc.communicate(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            _terminate(proc)
            report[name] = "timed out"
            continue
        if proc.returncode != 0:
            report[name] = f"failed: {err.decode(errors='replace').strip()[-500:]}"
    if (out_dir / "pyspy.txt").exists():
        report["py_spy"] = _summarise_pyspy(out_dir / "pyspy.txt")
    if perf and perf_data.exists():
        report["perf"] = _summarise_perf(perf, perf_data)
    return report


def _summarise_pyspy(path: pathlib.Path, top: int = 15) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short_frame(f) for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    share = lambda n: round(100 * n / total, 1) if total else 0.0  # noqa: E731
    return {
        "samples": total,
        "self_pct": [(f, share(n)) for f, n in own.most_common(top)],
        "inclusive_pct": [(f, share(n)) for f, n in inclusive.most_common(top + 10)],
    }


def _short_frame(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file, _, _line = where.rpartition(":")
    return f"{name} ({pathlib.Path(file).name})" if file else name


def _summarise_perf(perf: str, data: pathlib.Path) -> dict[str, Any]:
    proc = subprocess.run(
        [perf, "report", "-i", str(data), "--no-children", "--sort", "dso", "--stdio"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    by_dso = []
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].endswith("%"):
            by_dso.append((parts[1], float(parts[0].rstrip("%"))))
    sym = subprocess.run(
        [
            perf,
            "report",
            "-i",
            str(data),
            "--no-children",
            "--sort",
            "dso,sym",
            "--stdio",
            "-g",
            "none",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    symbols = []
    for line in sym.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0].endswith("%"):
            symbols.append((f"{parts[1]} {' '.join(parts[3:])}", float(parts[0].rstrip("%"))))
    return {"by_dso_pct": by_dso[:12], "top_symbols_pct": symbols[:25]}


def reference_on(core: int, auth_tag: str, seconds: float) -> dict[str, float]:
    """srtp_reference() on ``core`` (the host's speed drifts: measure it beside each point)."""
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        return srtp_reference(auth_tag, seconds)
    finally:
        os.sched_setaffinity(0, previous)


def run_point(n: int, options: Options, binary: pathlib.Path, work: pathlib.Path) -> dict[str, Any]:
    """Secure N calls through a fresh relay, then load them; returns the figures."""
    work.mkdir(parents=True, exist_ok=True)
    ports = pick_ports(n)
    reference = reference_on(options.relay_core, options.auth_tag, 0.3)
    with relay_process(
        work,
        core=options.relay_core,
        auth_tag=options.auth_tag,
        use_uvloop=options.use_uvloop,
        source=options.relay_source,
    ) as (relay, address):
        rss_idle = _read_rss_kib(relay.pid)
        started = time.perf_counter()
        calls, stats_before = asyncio.run(secure_calls(address, ports, options.auth_tag))
        setup_s = time.perf_counter() - started
        rss_secured = _read_rss_kib(relay.pid)
        calls_file = work / "calls.txt"
        lines = (
            f"{c.port} {c.relay_pbx_port} {c.self_key} {c.self_salt} {c.peer_key} {c.peer_salt}"
            for c in calls
        )
        calls_file.write_text("".join(f"{line}\n" for line in lines))
        load, timeout = _run_rtpload(binary, calls_file, options, relay_pid=relay.pid)
        profile: dict[str, Any] | None = None
        try:
            if options.profile:
                time.sleep(options.warmup + 1)
                seconds = min(options.profile_seconds, max(1.0, options.duration - 2))
                profile = _profile_relay(relay.pid, seconds, work, options.load_core)
            result = _finish_rtpload(load, timeout)
        finally:
            _terminate(load, 5)
        if relay.poll() is not None:
            raise BenchError(f"the relay died during the load: {(work / 'relay.log').read_text()}")
        stats_after = asyncio.run(_control(address, "stats"))
        final_states = collections.Counter(
            c["state"] for c in asyncio.run(_control(address, "list"))
        )
    drops = collections.Counter(stats_after.get("drops", {}))
    drops.subtract(stats_before.get("drops", {}))
    handshakes = sorted(c.handshake_ms for c in calls)
    point = _figures(n, result, options)
    point.update(
        setup_s=round(setup_s, 1),
        handshake_ms_median=handshakes[len(handshakes) // 2],
        rss_idle_kib=rss_idle,
        rss_secured_kib=rss_secured,
        rss_loaded_kib=result["relay_rss_kib"],
        rss_per_call_kib=round((result["relay_rss_kib"] - rss_idle) / n, 1),
        relay_drops={k: v for k, v in drops.items() if v},
        ref_pair_us=reference["pylibsrtp_pair_us"],
        final_states=dict(final_states),
        raw=result,
    )
    if profile is not None:
        point["profile"] = profile
    return point


def _figures(n: int, result: dict[str, Any], options: Options) -> dict[str, Any]:
    window = result["window_s"]
    directions = result["directions"]
    sent = sum(d["sent"] for d in directions.values())
    received = sum(d["received"] for d in directions.values())
    forwarded = result["received_in_window"]
    cpu = result["relay_utime_s"] + result["relay_stime_s"]
    us_per_packet = cpu / forwarded * 1e6 if forwarded else float("nan")
    p50 = max(d["p50_us"] for d in directions.values())
    p99 = max(d["p99_us"] for d in directions.values())
    loss_pct = 100 * (sent - received) / sent if sent else 0.0
    core = result["cores"][options.relay_core] if options.relay_core < 2 else {}
    return {
        "calls": n,
        "pps": round(result["pps"]),
        "loss_pct": round(loss_pct, 4),
        "lost": sent - received,
        "p50_us": p50,
        "p99_us": p99,
        "p999_us": max(d["p999_us"] for d in directions.values()),
        "relay_cpu_s": round(cpu, 2),
        "relay_cpu_share": round(cpu / window, 3),
        "relay_user_share": round(result["relay_utime_s"] / window, 3),
        "us_per_packet": round(us_per_packet, 1),
        # User-space part only: loopback also bills the relay's kernel time for
        # delivering its sends into rtpload's sockets and waking rtpload up.
        "user_us_per_packet": round(result["relay_utime_s"] / forwarded * 1e6, 1)
        if forwarded
        else float("nan"),
        "cpu_s_per_call_minute": round(cpu / (n * window / 60), 3),
        "relay_core_busy": core.get("busy"),
        "auth_fail": directions["pbx_to_phone"]["auth_fail"],
        # rtpload's CPU (with --busy-poll it spins: then gen_work_share is its real load)
        "gen_cpu_share": round(result["gen_cpu_s"] / window, 3),
        "gen_work_share": round(result["gen_work_s"] / window, 3),
        "send_late_max_us": result["send_late_max_us"],
        # Preemptions in the window: other processes on the relay's or rtpload's core.
        "relay_preempted": result["relay_nivcsw"],
        "gen_preempted": result["gen_nivcsw"],
        "meets_latency_and_loss": sent > 0 and received == sent and p99 < GOAL_P99_US,
    }


def _saturated(point: dict[str, Any]) -> bool:
    """The relay could not keep up: packets lost, or a standing queue (p50 > 20 ms)."""
    return "error" in point or point["lost"] > 0 or point["p50_us"] > 20000


def run_baseline(
    n: int, options: Options, binary: pathlib.Path, work: pathlib.Path
) -> dict[str, Any]:
    """rtpload talking to itself (no relay, no SRTP): the generator's and kernel's floor."""
    work.mkdir(parents=True, exist_ok=True)
    ports = pick_ports(n)
    calls_file = work / "direct.txt"
    zero = "00" * 16 + " " + "00" * 14
    calls_file.write_text("".join(f"{p} 0 {zero} {zero}\n" for p in ports))
    proc, timeout = _run_rtpload(binary, calls_file, options, direct=True, duration=5)
    result = _finish_rtpload(proc, timeout)
    directions = result["directions"]
    return {
        "calls": n,
        "pps": round(result["pps"]),
        "p50_us": max(d["p50_us"] for d in directions.values()),
        "p99_us": max(d["p99_us"] for d in directions.values()),
        "lost": sum(d["sent"] - d["received"] for d in directions.values()),
        "gen_work_share": round(result["gen_work_s"] / result["window_s"], 3),
    }


# ---------------------------------------------------------------------------
# output


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for name in ("pylibsrtp", "uvloop"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[name] = version(name)
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        **versions,
    }


def print_table(report: dict[str, Any]) -> None:
    o = report["options"]
    print(
        f"relay loop: {'uvloop' if o['uvloop'] else 'asyncio (default)'}, auth tag {o['auth_tag']},"
        f" relay on core {o['relay_core']}, rtpload on core {o['load_core']},"
        f" {o['duration']:g} s window after {o['warmup']:g} s warm-up"
    )
    ref = report["srtp_reference"]
    print(
        f"pylibsrtp reference (172-byte RTP): protect {ref['pylibsrtp_protect_us']} µs,"
        f" unprotect {ref['pylibsrtp_unprotect_us']} µs, pair {ref['pylibsrtp_pair_us']} µs;"
        f" SrtpContext pair {ref['srtpcontext_pair_us']} µs"
    )
    if report.get("baseline"):
        b = report["baseline"]
        print(
            f"baseline without relay ({b['calls']} calls, {b['pps']} pps): p50 {b['p50_us']} µs,"
            f" p99 {b['p99_us']} µs, lost {b['lost']}"
        )
    header = (
        f"{'N':>5} {'pps':>7} {'loss%':>7} {'p50µs':>7} {'p99µs':>8} {'relayCPU':>8} {'core':>5}"
        f" {'µs/pkt':>7} {'user':>6} {'s/call-min':>10} {'KiB/call':>8} {'ref':>5}"
        f" {'preempt':>7} {'ok':>3}"
    )
    print(header)
    for p in report["points"]:
        if "error" in p:
            print(f"{p['calls']:>5} error: {p['error']}")
            continue
        print(
            f"{p['calls']:>5} {p['pps']:>7} {p['loss_pct']:>7.3f} {p['p50_us']:>7.1f}"
            f" {p['p99_us']:>8.1f} {p['relay_cpu_share']:>8.2f} {p['relay_core_busy']:>5.2f}"
            f" {p['us_per_packet']:>7.1f} {p['user_us_per_packet']:>6.1f}"
            f" {p['cpu_s_per_call_minute']:>10.3f} {p['rss_per_call_kib']:>8.1f}"
            f" {p['ref_pair_us']:>5.1f} {p['relay_preempted']:>7}"
            f" {'yes' if p['meets_latency_and_loss'] else 'no':>3}"
        )
        if p["relay_drops"] or p["auth_fail"]:
            print(f"      relay drops {p['relay_drops']}, auth failures {p['auth_fail']}")
    best = report["largest_n_meeting_goal"]
    print("runs meeting zero loss and p99 < 2 ms, per N:", report["met"])
    print(
        f"largest N with zero loss and p99 < {GOAL_P99_US / 1000:g} ms in every run: {best}"
        f" (goal: ≥ {GOAL_CALLS} calls, ≤ {GOAL_US_PER_PACKET:g} µs/packet)"
    )
    for p in report["points"]:
        if "profile" in p:
            print(json.dumps(p["profile"], indent=1))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", default=DEFAULT_SWEEP, help="N, or a comma-separated sweep")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per N")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--drain", type=float, default=0.5, help="seconds to wait for stragglers")
    parser.add_argument("--auth-tag", choices=("HS32", "HS80"), default="HS32")
    parser.add_argument("--uvloop", action="store_true", help="run the relay on uvloop")
    parser.add_argument(
        "--relay-src",
        default="",
        metavar="DIR",
        help="run the relay from DIR/pbx_zrtp instead of this tree (to measure a patch)",
    )
    parser.add_argument("--relay-core", type=int, default=0)
    parser.add_argument("--load-core", type=int, default=1)
    parser.add_argument(
        "--profile", action="store_true", help="py-spy and perf the relay in each point's window"
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the run without relay")
    parser.add_argument(
        "--stop-after-saturated",
        type=int,
        default=2,
        help="end the sweep after this many N in a row saturate the relay (loss, or p50 > 20 ms)",
    )
    parser.add_argument(
        "--gen-srtp",
        choices=("pylibsrtp", "system"),
        default="pylibsrtp",
        help="libsrtp the load generator links: pylibsrtp's (OpenSSL) or Debian's (NSS, slower)",
    )
    parser.add_argument(
        "--busy-poll",
        action="store_true",
        help="rtpload polls instead of sleeping (cheaper per packet, but keeps its core at 100%%)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per N (the host is noisy)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so every child (relay, rtpload, profilers) is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        sweep = [int(v) for v in str(args.calls).split(",") if v.strip()]
    except ValueError:
        parser.error("--calls: N or N1,N2,...")
    if args.repeat < 1:
        parser.error("--repeat: at least 1")
    if not sweep or min(sweep) < 1:
        parser.error("--calls: at least one call")
    cores = os.sched_getaffinity(0)
    if args.relay_core == args.load_core or not {args.relay_core, args.load_core} <= cores:
        parser.error(f"--relay-core and --load-core must be two different cores of {sorted(cores)}")
    if args.uvloop:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            parser.error("--uvloop: uvloop is not installed (.venv/bin/pip install uvloop)")
    options = Options(
        duration=args.duration,
        warmup=args.warmup,
        drain=args.drain,
        auth_tag=args.auth_tag,
        use_uvloop=args.uvloop,
        relay_core=args.relay_core,
        load_core=args.load_core,
        profile=args.profile,
        busy_poll=args.busy_poll,
        relay_source=str(pathlib.Path(args.relay_src).resolve()) if args.relay_src else "",
    )
    report: dict[str, Any] = {
        "machine": machine(),
        "options": {
            "duration": args.duration,
            "warmup": args.warmup,
            "auth_tag": args.auth_tag,
            "uvloop": args.uvloop,
            "relay_src": args.relay_src or None,
            "relay_core": args.relay_core,
            "load_core": args.load_core,
        },
        "points": [],
    }
    work_root = pathlib.Path(tempfile.gettempdir()) / f"pbx_zrtp-bench-{os.getuid()}"
    # Debian's libsrtp2 (NSS) costs ~7.4 µs per protect+unprotect and saturates the
    # generator at ~300 calls: by default link it to pylibsrtp's libsrtp (OpenSSL, ~2 µs).
    if args.gen_srtp == "pylibsrtp":
        binary = build_rtpload_pylibsrtp(work_root)
    else:
        binary = build_rtpload(work_root)
    # The reference runs on the relay's core, before any relay exists.
    os.sched_setaffinity(0, {args.relay_core})
    report["srtp_reference"] = srtp_reference(args.auth_tag)
    os.sched_setaffinity(0, {args.load_core})  # the phones' handshakes run beside rtpload
    failures = 0
    with tempfile.TemporaryDirectory(prefix="relay-", dir=work_root) as tmp:
        for n in sweep:
            met = saturated = 0
            for run in range(args.repeat):
                if not args.json:
                    print(f"... {n} calls, run {run + 1}", file=sys.stderr, flush=True)
                try:
                    point = run_point(n, options, binary, pathlib.Path(tmp) / f"n{n}-{run}")
                except BenchError as exc:
                    point = {"calls": n, "error": str(exc)}
                report["points"].append(point)
                met += bool(point.get("meets_latency_and_loss"))
                saturated += _saturated(point)
            report.setdefault("met", {})[str(n)] = f"{met}/{args.repeat}"
            failures = failures + 1 if saturated == args.repeat else 0
            if failures >= args.stop_after_saturated:
                break
        if not args.no_baseline:
            n = max(p["calls"] for p in report["points"])
            report["baseline"] = run_baseline(n, options, binary, pathlib.Path(tmp) / "base")
    every = [int(n) for n, m in report["met"].items() if m.split("/")[0] == m.split("/")[1]]
    report["largest_n_meeting_goal"] = max(every) if every else None
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
