"""ZRTP handshake benchmarks: engine throughput in memory and time-to-secure on loopback.

Run from the repository root (figures and method: docs/performance.md):

    .venv/bin/python bench/handshake.py              # everything, about 80 s
    .venv/bin/python bench/handshake.py --json       # one JSON object instead of tables
    .venv/bin/python bench/handshake.py --profile    # cProfile of one in-memory DH3k handshake

Sections:

1. ``memory``: full handshakes (both engines from ``start`` to ``Secured``) with
   the datagrams handed over in memory, zero latency, no timer ever firing, on
   one core. Both sides' CPU is counted, since the one core runs both.
2. ``loopback``: time-to-secure over UDP on 127.0.0.1.

   a. ours<->ours in one asyncio loop (``pbx_zrtp.endpoint.run_endpoint`` for
      both sides), from just before the initiator binds its socket (the
      responder is already bound) until both sides reported ``Secured``.
   b. process pairs with one method for all: side A binds 127.0.0.1:0 without a
      peer and writes its port file; then B starts with ``--peer`` A, sends
      first, and its own ``elapsed_ms`` (socket bind to secure, so process
      start-up is excluded) is the figure. ``bzrtp_peer`` is the C endpoint on
      Debian's libbzrtp built by ``tests/interop/bzrtp_build.py``; ours is
      ``python -m pbx_zrtp.cli endpoint``. Both use their default role (auto).
      "wire" is B's first Hello -> Secured: bzrtp_peer's clock starts before its
      libsrtp2/bzrtp set-up (30-45 ms), ours sends its Hello right after bind.
      ``--ours-warm`` runs ours after an in-memory handshake, like a PBX would be.

Only 127.0.0.1 is used. Each section stays under 60 s with the defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pathlib
import platform
import pstats
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

BENCH_DIR = pathlib.Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pbx_zrtp.endpoint import EndpointOptions, run_endpoint  # noqa: E402
from pbx_zrtp.zrtp.config import ZrtpConfiguration  # noqa: E402
from pbx_zrtp.zrtp.connection import ZrtpConnection  # noqa: E402
from pbx_zrtp.zrtp.events import HandshakeFailed, Secured  # noqa: E402

MAIN_TYPES = ("DH3k", "X255", "EC25")
EXTRA_TYPES = ("DH2k", "X448", "EC38")
LOOPBACK_TYPES = ("X255", "DH3k")
#: Post-quantum hybrids (KEM mode) next to the classical types, for section "pq".
PQ_TYPES = ("X255", "DH3k", "X1M1", "X3M3")
PAIRS = (("bzrtp", "bzrtp"), ("bzrtp", "ours"), ("ours", "bzrtp"))
#: The goal stated in the issue, for the printed verdict.
GOAL_DH3K_PER_CORE = 300


# ---------------------------------------------------------------------------
# 1. engine throughput in memory


def _configs(ka: str) -> tuple[ZrtpConfiguration, ZrtpConfiguration]:
    kas = (ka.encode(),)
    initiator = ZrtpConfiguration(zid=os.urandom(12), role="initiator", key_agreement_types=kas)
    responder = ZrtpConfiguration(zid=os.urandom(12), role="responder", key_agreement_types=kas)
    return initiator, responder


def memory_handshake(initiator: ZrtpConfiguration, responder: ZrtpConfiguration) -> str:
    """One full exchange between two fresh engines, datagrams passed in memory.

    The clock stands still at 0: nothing is lost, so no timer is ever due.
    Returns the SAS (checked equal on both sides).
    """
    a = ZrtpConnection(initiator, ssrc=0x1111, random=os.urandom)
    b = ZrtpConnection(responder, ssrc=0x2222, random=os.urandom)
    secured: dict[int, Secured] = {}
    wire: deque[tuple[ZrtpConnection, bytes]] = deque()
    a.start(0.0)
    b.start(0.0)
    for _ in range(64):  # a DH exchange takes 9 datagrams; this only bounds a bug
        for source, target in ((a, b), (b, a)):
            wire.extend((target, d) for d in source.datagrams_to_send())
            while (event := source.next_event()) is not None:
                if isinstance(event, Secured):
                    secured[id(source)] = event
                elif isinstance(event, HandshakeFailed):
                    raise RuntimeError(f"handshake failed: {event.reason}")
        if len(secured) == 2:
            sa, sb = secured[id(a)], secured[id(b)]
            if sa.sas != sb.sas or sa.keys.local_key != sb.keys.remote_key:
                raise RuntimeError("the two sides derived different keys")
            return sa.sas
        if not wire:
            break
        target, datagram = wire.popleft()
        target.receive_datagram(datagram, 0.0)
    raise RuntimeError(f"no Secured on both sides: {a.state} / {b.state}")


def side_costs(ka: str, runs: int) -> dict[str, Any]:
    """CPU per side (initiator, responder), bytes and packets on the wire for one
    in-memory exchange of ``ka`` (medians over ``runs``; hashes as by default, so
    the hybrids run with S512 and the classical types with S256)."""
    kas = (ka.encode(),)
    cpu_i: list[float] = []
    cpu_r: list[float] = []
    wire: list[tuple[int, int, int, int]] = []
    for run in range(runs + 1):  # the first run warms up
        a = ZrtpConnection(
            ZrtpConfiguration(zid=os.urandom(12), role="initiator", key_agreement_types=kas),
            ssrc=0x1111,
        )
        b = ZrtpConnection(
            ZrtpConfiguration(zid=os.urandom(12), role="responder", key_agreement_types=kas),
            ssrc=0x2222,
        )
        spent = {id(a): 0.0, id(b): 0.0}
        sent = {id(a): [0, 0], id(b): [0, 0]}  # packets, bytes
        queue: deque[tuple[ZrtpConnection, ZrtpConnection, bytes]] = deque()
        for conn in (a, b):
            t0 = time.process_time()
            conn.start(0.0)
            spent[id(conn)] += time.process_time() - t0
        steps = 0
        while not (a.state.value == "secure" and b.state.value == "secure"):
            for source, target in ((a, b), (b, a)):
                for datagram in source.datagrams_to_send():
                    sent[id(source)][0] += 1
                    sent[id(source)][1] += len(datagram)
                    queue.append((source, target, datagram))
            if not queue or steps > 200:
                raise RuntimeError(f"{ka}: no secure exchange ({a.state}, {b.state})")
            _, target, datagram = queue.popleft()
            t0 = time.process_time()
            target.receive_datagram(datagram, 0.0)
            spent[id(target)] += time.process_time() - t0
            steps += 1
        if run:
            cpu_i.append(spent[id(a)] * 1000)
            cpu_r.append(spent[id(b)] * 1000)
            wire.append((*sent[id(a)], *sent[id(b)]))  # type: ignore[arg-type]
    packets_i, bytes_i, packets_r, bytes_r = (
        statistics.median(w[k] for w in wire) for k in range(4)
    )
    return {
        "key_agreement": ka,
        "initiator_cpu_ms": round(statistics.median(cpu_i), 2),
        "responder_cpu_ms": round(statistics.median(cpu_r), 2),
        "packets": f"{packets_i:g} + {packets_r:g}",
        "bytes": f"{bytes_i:g} + {bytes_r:g}",
    }


def bench_memory(ka: str, duration: float) -> dict[str, Any]:
    initiator, responder = _configs(ka)
    memory_handshake(initiator, responder)  # warm-up (imports, OpenSSL tables)
    count = 0
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    deadline = t0 + duration
    while True:
        memory_handshake(initiator, responder)
        count += 1
        now = time.perf_counter()
        if now >= deadline:
            break
    wall = now - t0
    cpu = time.process_time() - cpu0
    rate = count / wall
    return {
        "key_agreement": ka,
        "handshakes": count,
        "wall_s": round(wall, 3),
        "handshakes_per_s": round(rate, 1),
        "sides_per_s": round(2 * rate, 1),
        "cpu_ms_per_handshake": round(cpu / count * 1000, 3),
        "wall_ms_per_handshake": round(wall / count * 1000, 3),
    }


def profile_memory(ka: str = "DH3k", handshakes: int = 1, top: int = 15) -> str:
    """cProfile of in-memory handshakes (after a warm-up), by cumulative time.

    Times are printed in ms per handshake (pstats' own table rounds to 1 ms).
    """
    initiator, responder = _configs(ka)
    memory_handshake(initiator, responder)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(handshakes):
        memory_handshake(initiator, responder)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = sum(tt for _, _, tt, _, _ in stats.values())
    rows = sorted(stats.items(), key=lambda item: item[1][3], reverse=True)[:top]
    out = [
        f"cProfile, {handshakes} in-memory {ka} handshake(s); ms per handshake, "
        f"total {total / handshakes * 1000:.3f} ms (profiler overhead included)",
        f"{'calls':>6} {'tottime':>8} {'cumtime':>8}  function",
    ]
    for (filename, line, name), (_, ncalls, tt, ct, _) in rows:
        where = name if filename == "~" else f"{_short(filename)}:{line}({name})"
        out.append(
            f"{ncalls / handshakes:6.1f} {tt / handshakes * 1000:8.3f} "
            f"{ct / handshakes * 1000:8.3f}  {where}"
        )
    return "\n".join(out)


def _short(filename: str) -> str:
    path = pathlib.Path(filename)
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return path.name


# ---------------------------------------------------------------------------
# 2a. ours <-> ours in one asyncio loop


async def _inprocess_once(ka: str) -> tuple[float, float]:
    """(ms from the initiator's bind to both Secured, initiator's own elapsed_ms)."""
    loop = asyncio.get_running_loop()
    initiator, responder = _configs(ka)
    ready: asyncio.Future[tuple[str, int]] = loop.create_future()
    done_at: list[float] = []
    resp_task = asyncio.ensure_future(
        run_endpoint(
            responder,
            EndpointOptions(bind=("127.0.0.1", 0), peer=None, timeout=10.0),
            ready=ready,
        )
    )
    resp_task.add_done_callback(lambda _: done_at.append(time.perf_counter()))
    address = await ready
    t0 = time.perf_counter()
    init_task = asyncio.ensure_future(
        run_endpoint(initiator, EndpointOptions(bind=("127.0.0.1", 0), peer=address, timeout=10.0))
    )
    init_task.add_done_callback(lambda _: done_at.append(time.perf_counter()))
    try:
        init_result, resp_result = await asyncio.gather(init_task, resp_task)
    finally:
        for task in (init_task, resp_task):
            task.cancel()
    if init_result["sas"] != resp_result["sas"]:
        raise RuntimeError("SAS differ")
    return (max(done_at) - t0) * 1000, float(init_result["elapsed_ms"])


def bench_inprocess(ka: str, runs: int) -> dict[str, Any]:
    async def main() -> list[tuple[float, float]]:
        await _inprocess_once(ka)  # warm-up
        return [await _inprocess_once(ka) for _ in range(runs)]

    results = asyncio.run(main())
    both = [r[0] for r in results]
    return {
        "pair": "ours<->ours (in-process)",
        "key_agreement": ka,
        "runs": runs,
        **_stats(both),
        "initiator_elapsed_median_ms": round(statistics.median(r[1] for r in results), 2),
    }


# ---------------------------------------------------------------------------
# 2b. process pairs


def _stats(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, max(0, round(0.9 * len(ordered)) - 1))]
    return {
        "median_ms": round(statistics.median(ordered), 2),
        "p90_ms": round(p90, 2),
        "min_ms": round(ordered[0], 2),
        "max_ms": round(ordered[-1], 2),
    }


@dataclass
class PairSetup:
    binary: pathlib.Path
    helpers: Any  # the tests.interop.bzrtp_build module
    warm: bool = False

    def command(self, kind: str) -> list[str]:
        if kind == "ours" and self.warm:
            code = f"import sys; sys.path.insert(0, {str(BENCH_DIR)!r}); import handshake; "
            code += "sys.exit(handshake.warm_endpoint(sys.argv[1:]))"
            return [sys.executable, "-c", code, "endpoint"]
        if kind == "ours":
            return [sys.executable, "-m", "pbx_zrtp.cli", "endpoint"]
        return [str(self.binary), "--verbose"]  # its timeline gives first Hello -> secure


def warm_endpoint(argv: list[str]) -> int:
    """``pbx-zrtp endpoint`` after one in-memory handshake of the same type.

    Emulates a long-running host (a PBX) that has already loaded the OpenSSL
    algorithms: the first X25519 key of a process costs ~15 ms more than the next.
    """
    from pbx_zrtp.cli import main as cli_main

    ka = argv[argv.index("--key-agreement") + 1] if "--key-agreement" in argv else "DH3k"
    memory_handshake(*_configs(ka.split(",")[0]))
    return cli_main(argv)


_BZRTP_LINE = re.compile(r"^\[bzrtp_peer\s+([0-9.]+)\] (send Hello|secure:)", re.MULTILINE)


def _bzrtp_wire_ms(stderr: str) -> float | None:
    """First Hello sent -> secure, from bzrtp_peer's --verbose timeline (0.1 ms steps)."""
    first = secure = None
    for match in _BZRTP_LINE.finditer(stderr):
        stamp = float(match.group(1))
        if match.group(2) == "secure:":
            secure = stamp
        elif (
            first is None and "[dropped" not in stderr[match.end() : stderr.find("\n", match.end())]
        ):
            first = stamp
    return None if first is None or secure is None else secure - first


def _spawn(cmd: list[str]) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(REPO), env.get("PYTHONPATH"))))
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env
    )


def _pair_once(
    a_kind: str, b_kind: str, ka: str, setup: PairSetup, work: pathlib.Path
) -> dict[str, Any]:
    helpers = setup.helpers
    port_file = work / f"port-{time.monotonic_ns()}"
    common = ["--key-agreement", ka, "--srtp", "0", "--timeout", "10"]
    a_cmd = [*setup.command(a_kind), "--bind", "127.0.0.1:0", "--port-file", str(port_file)]
    if a_kind == "bzrtp":
        a_cmd += ["--linger-ms", "100"]  # answer a late retransmission, then leave
    proc_a = _spawn([*a_cmd, *common])
    proc_b: subprocess.Popen[str] | None = None
    try:
        port = helpers.wait_port_file(port_file, proc_a, timeout=15.0)
        b_cmd = [*setup.command(b_kind), "--bind", "127.0.0.1:0"]
        proc_b = _spawn([*b_cmd, "--peer", f"127.0.0.1:{port}", *common])
        report_b = helpers.finish(proc_b, 20.0)
        report_a = helpers.finish(proc_a, 20.0)
    finally:
        for proc in (proc_a, proc_b):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
        port_file.unlink(missing_ok=True)
    if not (report_a.get("ok") and report_b.get("ok")):
        raise RuntimeError(
            f"{a_kind}(A)<->{b_kind}(B) {ka} failed: A={report_a.get('error')!r} "
            f"B={report_b.get('error')!r} {report_b.get('stderr', '')[-300:]}"
        )
    if report_a["sas"] != report_b["sas"]:
        raise RuntimeError(f"{a_kind}<->{b_kind}: SAS differ")
    elapsed = float(report_b["elapsed_ms"])
    # ours sends its Hello right after bind, so its elapsed_ms already is "wire" time.
    wire = _bzrtp_wire_ms(report_b["stderr"]) if b_kind == "bzrtp" else elapsed
    return {"elapsed_ms": elapsed, "wire_ms": wire, "b_role": report_b["role"]}


def bench_pair(a_kind: str, b_kind: str, ka: str, runs: int, setup: PairSetup) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="zrtp-bench-") as tmp:
        results = [_pair_once(a_kind, b_kind, ka, setup, pathlib.Path(tmp)) for _ in range(runs)]
    roles = sorted({r["b_role"] for r in results})
    wire = [r["wire_ms"] for r in results if r["wire_ms"] is not None]
    ours = "ours-warm" if setup.warm else "ours"
    return {
        "pair": f"{a_kind}(A)<->{b_kind}(B)".replace("ours", ours),
        "key_agreement": ka,
        "runs": runs,
        **_stats([r["elapsed_ms"] for r in results]),
        "wire_median_ms": round(statistics.median(wire), 2) if wire else None,
        "wire_p90_ms": _stats(wire)["p90_ms"] if wire else None,
        "b_role": "/".join(roles),
    }


def prepare_bzrtp(warm: bool) -> tuple[PairSetup | None, str | None]:
    """(setup, None), or (None, the reason the bzrtp pairs are skipped)."""
    try:
        from tests.interop import bzrtp_build
    except ImportError as exc:
        return None, f"cannot import tests.interop.bzrtp_build: {exc}"
    out_dir = pathlib.Path(tempfile.gettempdir()) / f"pbx_zrtp-bench-{os.getuid()}"
    try:
        binary = bzrtp_build.build_bzrtp_peer(out_dir)
    except (RuntimeError, OSError) as exc:
        return None, f"bzrtp_peer cannot be built: {exc}"
    return PairSetup(binary, bzrtp_build, warm), None


# ---------------------------------------------------------------------------
# reporting


def machine_info() -> dict[str, Any]:
    from cryptography import __version__ as cryptography_version
    from cryptography.hazmat.backends.openssl import backend

    cpu = "unknown"
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "cryptography": cryptography_version,
        "openssl": backend.openssl_version_text(),
    }


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    header = [title for title, _ in columns]
    body = [
        [str(row.get(key)) if row.get(key) is not None else "-" for _, key in columns]
        for row in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(header, *body, strict=True)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--duration", type=float, default=5.0, help="seconds per key agreement in memory (5)"
    )
    parser.add_argument("--runs", type=int, default=20, help="loopback runs per pair (20)")
    parser.add_argument(
        "--sections", default="memory,loopback", help="comma list of memory, loopback, pq"
    )
    parser.add_argument("--no-extra", action="store_true", help="skip DH2k, X448, EC38")
    parser.add_argument("--no-bzrtp", action="store_true", help="skip the bzrtp pairs")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--ours-warm",
        action="store_true",
        help="in the bzrtp pairs, run our endpoint after an in-memory warm-up handshake",
    )
    parser.add_argument(
        "--profile",
        metavar="KA",
        nargs="?",
        const="DH3k",
        help="only cProfile one in-memory handshake of KA (DH3k) and print the top entries",
    )
    parser.add_argument(
        "--profile-handshakes", type=int, default=1, metavar="N", help="average --profile over N"
    )
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.runs < 1:
        parser.error("--duration must be > 0 and --runs >= 1")
    if args.profile:
        print(profile_memory(args.profile, max(1, args.profile_handshakes)))
        return 0
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    say: Callable[[str], None] = (lambda _: None) if args.json else print
    report: dict[str, Any] = {"machine": machine_info()}
    say("machine: " + ", ".join(f"{k}={v}" for k, v in report["machine"].items()))

    seconds: dict[str, float] = {}
    if "memory" in sections:
        started = time.perf_counter()
        types = MAIN_TYPES + (() if args.no_extra else EXTRA_TYPES)
        say(f"\n1. engine in memory, one core, {args.duration:g} s per type")
        rows = []
        for ka in types:
            rows.append(bench_memory(ka, args.duration))
            print(f"   {ka} done", file=sys.stderr, flush=True)
        report["memory"] = rows
        seconds["memory"] = round(time.perf_counter() - started, 1)
        say(
            table(
                rows,
                [
                    ("key agreement", "key_agreement"),
                    ("handshakes", "handshakes"),
                    ("handshakes/s/core", "handshakes_per_s"),
                    ("sides/s/core", "sides_per_s"),
                    ("CPU ms/handshake", "cpu_ms_per_handshake"),
                ],
            )
        )
        dh3k = next((r for r in rows if r["key_agreement"] == "DH3k"), None)
        if dh3k is not None:
            say(
                f"goal >= {GOAL_DH3K_PER_CORE} DH3k handshakes/s/core: "
                f"{dh3k['handshakes_per_s']} full (both sides), {dh3k['sides_per_s']} per side"
            )

    if "loopback" in sections:
        started = time.perf_counter()
        say(f"\n2. time-to-secure on 127.0.0.1 UDP, {args.runs} runs each (ms)")
        rows = [bench_inprocess(ka, args.runs) for ka in LOOPBACK_TYPES]
        print("   in-process pair done", file=sys.stderr, flush=True)
        setup, reason = (
            (None, "--no-bzrtp given") if args.no_bzrtp else prepare_bzrtp(args.ours_warm)
        )
        if setup is None:
            say(f"bzrtp pairs skipped: {reason}")
            report["bzrtp_skipped"] = reason
        else:
            for ka in LOOPBACK_TYPES:
                for a_kind, b_kind in PAIRS:
                    rows.append(bench_pair(a_kind, b_kind, ka, args.runs, setup))
                    print(f"   {a_kind}<->{b_kind} {ka} done", file=sys.stderr, flush=True)
        report["loopback"] = rows
        seconds["loopback"] = round(time.perf_counter() - started, 1)
        say(
            table(
                rows,
                [
                    ("pair", "pair"),
                    ("key agreement", "key_agreement"),
                    ("median", "median_ms"),
                    ("p90", "p90_ms"),
                    ("min", "min_ms"),
                    ("max", "max_ms"),
                    ("wire median", "wire_median_ms"),
                    ("wire p90", "wire_p90_ms"),
                    ("B role", "b_role"),
                ],
            )
        )
        say(
            "in-process: initiator bind -> both Secured, both sides on one core.\n"
            "process pairs: median..max = B's elapsed_ms (its socket bind -> Secured);\n"
            "wire = B's first Hello -> Secured (bzrtp_peer: from its --verbose timeline, "
            "leaving out its libsrtp2/bzrtp set-up; ours: = elapsed_ms)"
        )

    if "pq" in sections:
        started = time.perf_counter()
        say(
            f"\n3. post-quantum hybrids next to X255 and DH3k: CPU per side, wire, "
            f"time to secure on 127.0.0.1 ({args.runs} runs each)"
        )
        rows = []
        for ka in PQ_TYPES:
            row = side_costs(ka, args.runs)
            row["secure_median_ms"] = bench_inprocess(ka, args.runs)["median_ms"]
            rows.append(row)
            print(f"   {ka} done", file=sys.stderr, flush=True)
        report["pq"] = rows
        seconds["pq"] = round(time.perf_counter() - started, 1)
        say(
            table(
                rows,
                [
                    ("key agreement", "key_agreement"),
                    ("initiator CPU ms", "initiator_cpu_ms"),
                    ("responder CPU ms", "responder_cpu_ms"),
                    ("packets (i + r)", "packets"),
                    ("bytes (i + r)", "bytes"),
                    ("time to secure median ms", "secure_median_ms"),
                ],
            )
        )
        say(
            "CPU: process time inside each engine for one in-memory exchange (Hello to "
            "Conf2ACK), median;\npackets/bytes: ZRTP datagrams each side sent with no "
            "loss (X3M3's Commit and DHPart1 go as fragments at the 1452-octet MTU);\n"
            "time to secure: two endpoints in one process over UDP on loopback, "
            "initiator bind -> both Secured"
        )

    report["section_seconds"] = seconds
    say("\nsection wall time (s): " + ", ".join(f"{k} {v}" for k, v in seconds.items()))
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
