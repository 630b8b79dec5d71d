"""Hostile-network handshake campaigns (figures in docs/reliability.md, "Hostile network").

Run from the repository root, under nice (the real-socket sections keep both
cores busy for minutes):

    nice -n 19 .venv/bin/python bench/hostile.py            # every section, 1000 trials each
    nice -n 19 .venv/bin/python bench/hostile.py --only sim --trials 1000
    nice -n 19 .venv/bin/python bench/hostile.py --only udp-bzrtp,udp-ours --parallel 16
    nice -n 19 .venv/bin/python bench/hostile.py --json

Sections:

* ``sim``: our engine <-> our engine in ``tests/netsim.py`` (explicit clock,
  seeded): 20 % loss, 5 % duplication, 10 % reordering, 0-200 ms jitter each
  way, key agreements and roles cycling (X255, EC25, DH3k, X448, DH2k, EC38).
* ``sim-harsh``: the same at 50 % loss, 10 % duplication, 100-700 ms delay.
* ``udp-bzrtp`` / ``udp-ours``: real UDP on 127.0.0.1 through the userspace
  impairment relay (``tests/lossy.ImpairedPath``), same conditions as ``sim``;
  our endpoint (in this process) against the bzrtp peer (a process) or against
  our own endpoint; our role cycles auto/initiator/responder, key agreement
  X255/DH3k/X448/DH2k.
* ``netem-bzrtp`` / ``netem-ours``: the same across a veth pair between two
  network namespaces with ``tc netem`` on both ends (root and sch_netem needed;
  the section prints why it did not run otherwise).

Time-to-secure: virtual seconds until both sides are secure (sim); our
endpoint's bind-to-Secured time (real sockets).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import sys
import tempfile
import time
from collections import Counter
from typing import Any

BENCH_DIR = pathlib.Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.lossy import (  # noqa: E402
    RealTrial,
    netem_args,
    netem_unavailable,
    run_netem,
    run_userspace,
)
from tests.netsim import HARSH, HOSTILE, percentile, run_campaign, summarize  # noqa: E402

SECTIONS = ("sim", "sim-harsh", "udp-bzrtp", "udp-ours", "netem-bzrtp", "netem-ours")


def real_summary(results: list[RealTrial], wall: float) -> dict[str, Any]:
    times = [r.time_to_secure for r in results if r.time_to_secure is not None]
    reasons: Counter[str] = Counter(reason for r in results for reason in r.reasons)
    secured = sum(r.secured for r in results)
    by_label: Counter[str] = Counter(r.label for r in results if not r.secured)
    return {
        "trials": len(results),
        "secured": secured,
        "secured_pct": round(100 * secured / len(results), 2) if results else 0.0,
        "time_to_secure_s": {
            "p50": round(percentile(times, 50), 3),
            "p99": round(percentile(times, 99), 3),
            "max": round(max(times, default=float("nan")), 3),
        },
        "failure_reasons": dict(reasons.most_common()),
        "failed_scenarios": dict(by_label.most_common()),
        "wall_s": round(wall, 1),
    }


def bzrtp_binary(work: pathlib.Path) -> pathlib.Path | None:
    from tests.interop.bzrtp_build import build_bzrtp_peer, bzrtp_available

    reason = bzrtp_available()
    if reason is not None:
        print(f"bzrtp peer unavailable: {reason}", file=sys.stderr)
        return None
    return build_bzrtp_peer(work)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--parallel", type=int, default=16, help="real-socket trials at a time")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--seed", type=int, default=0, help="first seed (sim sections)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(wanted) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    out: dict[str, Any] = {
        "conditions": HOSTILE.describe(),
        "harsh_conditions": HARSH.describe(),
        "netem": " ".join(netem_args(HOSTILE)),
    }
    with tempfile.TemporaryDirectory(prefix="pbxzrtp-hostile-") as tmp:
        work = pathlib.Path(tmp)
        binary = None
        if any(s.endswith("bzrtp") for s in wanted):
            binary = bzrtp_binary(work)
        for section in wanted:
            started = time.monotonic()
            if section in ("sim", "sim-harsh"):
                conditions = HOSTILE if section == "sim" else HARSH
                results = run_campaign(args.trials, conditions, first_seed=args.seed)
                figures = summarize(results).as_dict()
                figures["wall_s"] = round(time.monotonic() - started, 1)
            elif section.endswith("bzrtp") and binary is None:
                figures = {"skipped": "bzrtp peer unavailable"}
            elif section.startswith("udp"):
                peer = binary if section == "udp-bzrtp" else None
                trials = asyncio.run(
                    run_userspace(args.trials, binary=peer, work=work, parallel=args.parallel)
                )
                figures = real_summary(trials, time.monotonic() - started)
            else:
                reason = netem_unavailable()
                if reason is not None:
                    figures = {"skipped": reason}
                else:
                    peer = binary if section == "netem-bzrtp" else None
                    trials = asyncio.run(
                        run_netem(args.trials, binary=peer, work=work, parallel=args.parallel)
                    )
                    figures = real_summary(trials, time.monotonic() - started)
            out[section] = figures
            if not args.json:
                print(f"== {section}")
                print(json.dumps(figures, indent=2), flush=True)
    if args.json:
        print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
