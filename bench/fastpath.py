"""Micro-benchmark of the native fast path (pbx_zrtp/relay/_fastpath.c).

Run from the repository root:

    .venv/bin/python bench/fastpath.py                          # sweep, stops once saturated
    .venv/bin/python bench/fastpath.py --calls 550 --duration 20
    .venv/bin/python bench/fastpath.py --json
    .venv/bin/python bench/fastpath.py --calls 400 --cipher AES3 --family ipv6

Same load and figures as bench/relay.py (it reuses its rtpload generator and
its arithmetic), without ZRTP: for each N a fresh "relay" process pinned to
--relay-core binds N calls' sockets on 127.0.0.2 (phone side P, PBX side P+1)
and attaches them to one FastPath with random keys written to rtpload's calls
file; rtpload, pinned to --load-core, plays the phones (127.0.0.4:P, SRTP) and
the PBX (127.0.0.3:P, plain RTP) at 50 packets/s per call each way and samples
the relay process's utime + stime over the window (its Python main thread
only sleeps in a read of stdin; the worker thread does the work).

--cipher AES3 uses AES_CM_256 keys (ZRTP AES3) instead of AES_CM_128. --family
ipv6 runs the whole measurement in a user+network namespace (``unshare -rn``, as
tests/netns.py does) whose loopback carries ::2 (relay), ::3 (PBX), ::4 (phones).

The generator: Debian's libsrtp2 does AES/HMAC through NSS (~7 µs per
protect + unprotect, against ~2 µs with OpenSSL), which makes rtpload itself
the bottleneck at 300-400 calls on this VM. So by default rtpload is built
here against the libsrtp 2.7 (OpenSSL) bundled in pylibsrtp's wheel (plus
libpython, whose symbols that module references); --gen-srtp system uses
bench/relay.py's rtpload on the system libsrtp2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
from typing import Any

BENCH_DIR = pathlib.Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_SWEEP = "100,200,400,550,700,1000,1400,2000"
HOSTS = {"ipv4": ("127.0.0.2", "127.0.0.3", "127.0.0.4"), "ipv6": ("::2", "::3", "::4")}
KEY_LENGTH = {"AES1": 16, "AES3": 32}
#: Set inside the IPv6 namespace (the lab addresses are there).
_INSIDE = "PBX_ZRTP_BENCH_NETNS"


def _relay_bench() -> Any:
    """bench/relay.py as a module (rtpload build and run, port picking, figures)."""
    spec = importlib.util.spec_from_file_location("relay_bench", BENCH_DIR / "relay.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["relay_bench"] = module
    spec.loader.exec_module(module)
    return module


def serve(
    calls_file: str, auth_tag: str, cipher: str, relay_host: str, pbx_host: str, phone_host: str
) -> int:
    """The measured process: attach every call of calls_file, wait for EOF on stdin."""
    from pbx_zrtp.relay.fastpath import FastPath
    from pbx_zrtp.srtp import SrtpContext
    from pbx_zrtp.zrtp.events import SrtpKeys

    fp = FastPath()
    sockets: list[socket.socket] = []
    handles: list[int] = []
    for line in pathlib.Path(calls_file).read_text().splitlines():
        port_s, pbx_port_s, self_key, self_salt, peer_key, peer_salt = line.split()
        port, pbx_port = int(port_s), int(pbx_port_s)
        family = socket.AF_INET6 if ":" in relay_host else socket.AF_INET
        phone_side = socket.socket(family, socket.SOCK_DGRAM)
        pbx_side = socket.socket(family, socket.SOCK_DGRAM)
        phone_side.bind((relay_host, port))
        pbx_side.bind((relay_host, pbx_port))
        phone_side.setblocking(False)
        pbx_side.setblocking(False)
        sockets += (phone_side, pbx_side)
        handles.append(
            fp.attach(
                phone_fd=phone_side.fileno(),
                pbx_fd=pbx_side.fileno(),
                phone_addr=(phone_host, port),
                pbx_addr=(pbx_host, port),
                # rtpload's phone protects with its SELF key: what we unprotect.
                srtp=SrtpContext(
                    SrtpKeys(
                        cipher,
                        auth_tag,
                        bytes.fromhex(peer_key),
                        bytes.fromhex(peer_salt),
                        bytes.fromhex(self_key),
                        bytes.fromhex(self_salt),
                    )
                ),
            )
        )
    print("ready", flush=True)
    sys.stdin.read()
    totals: dict[str, int] = {}
    for handle in handles:
        for name, value in fp.detach(handle).items():
            totals[name] = totals.get(name, 0) + value
    fp.close()
    for s in sockets:
        s.close()
    print(json.dumps(totals), flush=True)
    return 0


def run_point(
    rb: Any, n: int, options: Any, binary: pathlib.Path, work: pathlib.Path
) -> dict[str, Any]:
    hosts = HOSTS[options.family]
    ports = rb.pick_ports(n, hosts)
    size = KEY_LENGTH[options.cipher]
    lines = []
    for p in ports:
        self_key, self_salt, peer_key, peer_salt = (os.urandom(k).hex() for k in (size, 14) * 2)
        lines.append(f"{p} {p + 1} {self_key} {self_salt} {peer_key} {peer_salt}\n")
    calls_file = work / f"calls-{n}.txt"
    calls_file.write_text("".join(lines))
    core = options.relay_core
    relay = subprocess.Popen(
        [
            *(sys.executable, __file__, "--serve", str(calls_file)),
            *("--auth-tag", options.auth_tag, "--cipher", options.cipher),
            *("--family", options.family),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {core}),
    )
    load = None
    try:
        assert relay.stdout is not None and relay.stdin is not None
        if relay.stdout.readline().strip() != "ready":
            relay.kill()
            err = relay.stderr.read() if relay.stderr else ""
            raise rb.BenchError(f"fast path process failed: {err[-2000:]}")
        load, timeout = rb._run_rtpload(
            binary, calls_file, options, relay_pid=relay.pid, hosts=hosts
        )
        result = rb._finish_rtpload(load, timeout)
        out, err = relay.communicate("", timeout=30)
        counters = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"error": err}
    finally:
        rb._terminate(load, 5)
        rb._terminate(relay, 5)
    point: dict[str, Any] = rb._figures(n, result, options)
    point["fastpath"] = {k: v for k, v in counters.items() if v and not k.endswith("_bytes")}
    return point


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", default=DEFAULT_SWEEP, help="N or a comma list")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--drain", type=float, default=1.0)
    parser.add_argument("--auth-tag", choices=("HS80", "HS32"), default="HS80")
    parser.add_argument("--relay-core", type=int, default=0)
    parser.add_argument("--load-core", type=int, default=1)
    parser.add_argument("--stop-after-saturated", type=int, default=2)
    parser.add_argument("--gen-srtp", choices=("pylibsrtp", "system"), default="pylibsrtp")
    parser.add_argument("--cipher", choices=tuple(KEY_LENGTH), default="AES1")
    parser.add_argument("--family", choices=tuple(HOSTS), default="ipv4")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args.serve, args.auth_tag, args.cipher, *HOSTS[args.family])
    if args.family == "ipv6" and os.environ.get(_INSIDE) != "1":
        return _in_namespace(argv if argv is not None else sys.argv[1:])

    from pbx_zrtp.relay.fastpath import available

    why = available()
    if why is not None:
        print(f"fast path unavailable: {why}", file=sys.stderr)
        return 2
    rb = _relay_bench()
    options = rb.Options(
        duration=args.duration,
        warmup=args.warmup,
        drain=args.drain,
        auth_tag=args.auth_tag,
        use_uvloop=False,
        relay_core=args.relay_core,
        load_core=args.load_core,
        cipher=args.cipher,
        family=args.family,
    )
    work_root = pathlib.Path(tempfile.gettempdir()) / f"pbx_zrtp-bench-{os.getuid()}"
    if args.gen_srtp == "pylibsrtp":
        binary = rb.build_rtpload_pylibsrtp(work_root)
    else:
        binary = rb.build_rtpload(work_root)
    points: list[dict[str, Any]] = []
    saturated_in_a_row = 0
    with tempfile.TemporaryDirectory(prefix="fastpath-bench-") as tmp:
        for n in [int(x) for x in args.calls.split(",")]:
            try:
                point = run_point(rb, n, options, binary, pathlib.Path(tmp))
            except rb.BenchError as exc:
                point = {"calls": n, "error": str(exc)}
            points.append(point)
            if not args.json:
                _print_row(point, header=len(points) == 1)
            saturated_in_a_row = saturated_in_a_row + 1 if rb._saturated(point) else 0
            if saturated_in_a_row >= args.stop_after_saturated:
                break
    clean = [p["calls"] for p in points if not rb._saturated(p)]
    good = [p["calls"] for p in points if "error" not in p and p["meets_latency_and_loss"]]
    summary = {
        "max_calls_zero_loss": max(clean) if clean else None,  # and p50 <= 20 ms
        "max_calls_zero_loss_p99_2ms": max(good) if good else None,
        "points": points,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"max N at zero loss (p50 <= 20 ms): {summary['max_calls_zero_loss']}; "
            f"with p99 < 2 ms too: {summary['max_calls_zero_loss_p99_2ms']}"
            "  (goals: 550 calls, <= 20 us/packet, p99 < 2 ms)"
        )
    return 0


def _in_namespace(argv: list[str]) -> int:
    """Run this benchmark again in a user+network namespace with ::2-::4 on its lo."""
    import shutil

    ip = shutil.which("ip") or "/usr/sbin/ip"
    unshare = shutil.which("unshare")
    if unshare is None:
        print("--family ipv6 needs unshare (util-linux)", file=sys.stderr)
        return 2
    adds = " && ".join(f"{ip} -6 addr add {a}/128 dev lo nodad" for a in HOSTS["ipv6"])
    script = f'{ip} link set lo up && {adds} && exec "$@"'
    env = dict(os.environ, **{_INSIDE: "1"})
    with tempfile.TemporaryDirectory(prefix="fastpath-bench-cache-") as cache:
        # inside, this user is uid 0: the fast path's per-uid build cache would be another's
        env.setdefault("XDG_CACHE_HOME", cache)
        cmd = [unshare, "-rn", "sh", "-c", script, "sh", sys.executable, __file__, *argv]
        return subprocess.run(cmd, env=env, check=False).returncode


def _print_row(p: dict[str, Any], header: bool) -> None:
    if header:
        print(
            f"{'calls':>6} {'pps':>7} {'us/pkt':>7} {'user':>6} {'cpu%':>6} {'lost':>6} "
            f"{'loss%':>7} {'p50us':>7} {'p99us':>8}  fast-path drops"
        )
    if "error" in p:
        print(f"{p['calls']:>6} error: {p['error'][:200]}")
        return
    drops = {
        k: v
        for k, v in p["fastpath"].items()
        if k not in {"phone_in", "phone_out", "pbx_in", "pbx_out"}
    }
    print(
        f"{p['calls']:>6} {p['pps']:>7} {p['us_per_packet']:>7} {p['user_us_per_packet']:>6} "
        f"{100 * p['relay_cpu_share']:>5.1f}% {p['lost']:>6} {p['loss_pct']:>7} "
        f"{p['p50_us']:>7} {p['p99_us']:>8}  {drops or '-'}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
