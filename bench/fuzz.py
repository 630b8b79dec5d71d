"""Coverage-guided fuzzing campaign (atheris / libFuzzer) over bench/fuzz_targets.py.

The ``fastpath`` target is the native worker's libFuzzer harness in C
(bench/fuzz_fastpath.c, built with clang, ASan and UBSan); the others are Python
under atheris. Both print libFuzzer's figures, read the same way here.

    .venv/bin/python bench/fuzz.py                      # the full campaign (>= 10 M inputs)
    .venv/bin/python bench/fuzz.py engine --runs 20000  # one target
    .venv/bin/python bench/fuzz.py --scale 0.01         # 1 % of every target's budget
    .venv/bin/python bench/fuzz.py --write-seeds        # regenerate tests/fuzz_corpus

Each target runs in its own process (libFuzzer exits the process when done) with a
fixed seed, starting from tests/fuzz_corpus/<target> (never written to: new inputs
go to a scratch directory). Per target it prints inputs executed, exec/s, the
final libFuzzer coverage (``cov:`` edges, ``ft:`` features) and crashes; crash
inputs are kept under --artifacts. Run it under ``nice -n 19``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: Inputs per target in the full campaign (10.12 M in total): the wire parser runs at
#: ~15 k inputs/s, the others (whole engine, mirror, adapter paths) at 0.7-3 k/s.
BUDGET = {
    "packets": 8_800_000,
    "esl": 500_000,
    "ami": 250_000,
    "relay": 200_000,
    "engine": 150_000,
    "kem": 100_000,
    "control": 120_000,
    "fastpath": 2_000_000,
}
SEED = 20260509
#: libFuzzer binaries (C harnesses), run directly instead of through atheris.
NATIVE = ("fastpath",)
#: Instrumented for coverage: our code and the third-party parsers we fuzz through.
INSTRUMENT = ["pbx_zrtp", "panoramisk", "greenswitch", "tomllib", "json"]


def worker(name: str, libfuzzer_args: list[str]) -> None:
    """Inside the child: instrument, build the target, hand it to libFuzzer."""
    import atheris

    with atheris.instrument_imports(include=INSTRUMENT):
        import bench.fuzz_targets as targets

        target = targets.make_target(name)
    atheris.Setup([sys.argv[0], *libfuzzer_args], target)
    atheris.Fuzz()


_STAT = re.compile(r"^stat::(\w+):\s+(\d+)", re.M)
_COV = re.compile(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+)")


def run_target(
    name: str, runs: int, seed: int, artifacts: Path, *, timeout: int | None = None
) -> dict[str, object]:
    """One target in a child process; returns its figures."""
    artifacts.mkdir(parents=True, exist_ok=True)
    seeds = ROOT / "tests" / "fuzz_corpus" / name
    if name in NATIVE:
        import bench.fuzz_targets as targets

        command = [str(targets.build_fastpath_fuzzer())]
    else:
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--"]
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as scratch:
        args = [
            *command,
            f"-runs={runs}",
            f"-seed={seed}",
            "-max_len=4096",
            "-rss_limit_mb=4096",
            "-timeout=30",
            "-print_final_stats=1",
            f"-artifact_prefix={artifacts}/{name}-",
            scratch,
            str(seeds),
        ]
        started = time.monotonic()
        proc = subprocess.run(
            args, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False
        )
        elapsed = time.monotonic() - started
    log = proc.stderr
    stats = {k: int(v) for k, v in _STAT.findall(log)}
    coverage = _COV.findall(log)
    crashes = sorted(str(p) for p in artifacts.glob(f"{name}-*"))
    executed = stats.get("number_of_executed_units", 0)
    result: dict[str, object] = {
        "target": name,
        "inputs": executed,
        "seconds": round(elapsed, 1),
        "exec_per_s": int(executed / elapsed) if elapsed else 0,
        "cov": int(coverage[-1][1]) if coverage else 0,
        "ft": int(coverage[-1][2]) if coverage else 0,
        "corpus_added": stats.get("new_units_added", 0),
        "peak_rss_mb": stats.get("peak_rss_mb", 0),
        "exit_code": proc.returncode,
        "crashes": crashes,
    }
    if proc.returncode != 0:
        result["log_tail"] = log[-3000:]
    return result


def write_seeds() -> None:
    """(Re)generate tests/fuzz_corpus/<target>/seed-NNN from real traffic."""
    import hashlib

    import bench.fuzz_targets as targets

    for name, seeds in targets.generate_seeds().items():
        directory = ROOT / "tests" / "fuzz_corpus" / name
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob("seed-*"):
            old.unlink()
        for data in seeds:
            digest = hashlib.sha1(data).hexdigest()[:12]
            (directory / f"seed-{digest}").write_bytes(data)
        print(f"{name}: {len(seeds)} seeds in {directory.relative_to(ROOT)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", help=f"default: all of {', '.join(BUDGET)}")
    parser.add_argument("--runs", type=int, help="inputs per target (default: its budget)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every budget")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--artifacts", type=Path, default=ROOT / "bench" / "fuzz-artifacts")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--write-seeds", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    if "--worker" in sys.argv:
        index = sys.argv.index("--worker")
        rest = sys.argv[index + 2 :]
        worker(sys.argv[index + 1], rest[1:] if rest[:1] == ["--"] else rest)
        return 0
    args = parser.parse_args()
    if args.write_seeds:
        write_seeds()
        return 0
    names = args.targets or list(BUDGET)
    unknown = [n for n in names if n not in BUDGET]
    if unknown:
        parser.error(f"unknown target(s): {', '.join(unknown)}")
    results = []
    print(f"{'target':<8} {'inputs':>10} {'s':>7} {'exec/s':>7} {'cov':>6} {'ft':>6} crashes")
    for name in names:
        runs = args.runs if args.runs is not None else int(BUDGET[name] * args.scale)
        result = run_target(name, max(runs, 1), args.seed, args.artifacts)
        results.append(result)
        crashes = result["crashes"]
        print(
            f"{name:<8} {result['inputs']:>10} {result['seconds']:>7} {result['exec_per_s']:>7}"
            f" {result['cov']:>6} {result['ft']:>6} {len(crashes)}",  # type: ignore[arg-type]
            flush=True,
        )
        if result["exit_code"] != 0:
            print(result.get("log_tail", ""), file=sys.stderr)
    total = sum(int(r["inputs"]) for r in results)  # type: ignore[call-overload]
    print(f"total    {total:>10}")
    if args.json:
        args.json.write_text(json.dumps({"seed": args.seed, "results": results}, indent=1))
    failed = any(r["crashes"] or r["exit_code"] != 0 for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
