"""``python -m benchmarks``: run the scenarios, print the table, write the JSON.

    python -m benchmarks                  # every scenario, full size (< 5 min on 2 cores)
    python -m benchmarks --quick          # smaller bursts and shorter waits
    python -m benchmarks --only 1,2,5     # some scenarios
    python -m benchmarks --json out.json  # where the figures go (default benchmarks/results.json)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Callable, Dict, List, Optional

from .harness import ROOT, Scenario, machine, render, timed
from .scale import SCALES, Scale

ALL = (1, 2, 3, 4, 5, 6, 7, 8)


def _optional(module: str) -> Optional[str]:
    """None if ``module`` imports, else why not."""
    try:
        __import__(module)
    except Exception as exc:  # noqa: BLE001 - another engineer's module may be half-written
        return f"{type(exc).__name__}: {exc}"
    return None


def scenarios(scale: Scale, only: List[int]) -> List[Scenario]:
    """Run the selected scenarios in a CPU-friendly order; returns them sorted by number."""
    from .scenarios import latency, recovery, soak, throughput

    done: Dict[int, Scenario] = {}
    jobs: Dict[int, Callable[[], Scenario]] = {
        1: lambda: throughput.run_orders(scale),
        2: lambda: throughput.run_quotes(scale),
        5: lambda: latency.run_latency(scale),
        7: lambda: soak.run_soak(scale),
    }
    peers = _optional("benchmarks.scenarios.peers")
    if peers is None:
        from .scenarios import peers as peer_mod

        jobs[3] = lambda: peer_mod.run_clearstreet(scale)
        jobs[4] = lambda: peer_mod.run_india(scale)
    for number in ALL:
        if number not in only or number in (6, 8):
            continue
        if number not in jobs:
            skipped = Scenario(number, {3: "Clear Street replay", 4: "Upstox / Firstock vs official SDKs"}[number])
            skipped.skipped = f"scenario module not importable ({peers})"
            done[number] = skipped
        else:
            done[number] = _report(timed(jobs[number]))
    # 6 (idle: mostly waiting) runs with 8 (recovery: light) inside its measurement window.
    if 6 in only:
        from .scenarios import idle

        def during() -> None:
            if 8 in only:
                done[8] = timed(lambda: recovery.run_recovery(scale, _clearstreet_recovery()))

        done[6] = _report(timed(lambda: idle.run_idle(scale, during)))
        if 8 in done:
            _report(done[8])
    elif 8 in only:
        done[8] = _report(timed(lambda: recovery.run_recovery(scale, _clearstreet_recovery())))
    return [done[n] for n in sorted(done)]


def _clearstreet_recovery() -> Optional[Callable[..., None]]:
    if _optional("benchmarks.scenarios.peers") is not None:
        return None
    from .scenarios import peers

    return peers.clearstreet_recovery if peers.clearstreet_available() else None


def _report(scenario: Scenario) -> Scenario:
    print(render(scenario), flush=True)
    print(flush=True)
    return scenario


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller bursts, shorter waits")
    parser.add_argument("--scale", choices=sorted(SCALES), help="full (default), quick or tiny")
    parser.add_argument("--only", default="", help="comma-separated scenario numbers (1-8)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per contender (default 3)")
    parser.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "results.json"),
                        help="where to write the figures ('-' for none)")
    args = parser.parse_args(argv)
    logging.getLogger("brokerfeeds").addHandler(logging.NullHandler())  # recovery's expected warnings
    scale = SCALES[args.scale or ("quick" if args.quick else "full")]
    if args.reps:
        import attrs

        scale = attrs.evolve(scale, reps=args.reps)
    only = [int(x) for x in args.only.split(",") if x.strip()] or list(ALL)
    info = machine()
    print(f"brokerfeeds benchmarks ({scale.name}, {scale.reps} reps) on {info['nproc']} x {info['cpu']}, "
          f"Python {info['python']}", flush=True)
    print(flush=True)
    start = time.monotonic()
    results = scenarios(scale, only)
    total = time.monotonic() - start
    print(f"total {total:.0f}s", flush=True)
    if args.json != "-":
        with open(args.json, "w") as f:
            json.dump({"machine": info, "scale": scale.name, "reps": scale.reps, "seconds": round(total, 1),
                       "command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
                       "scenarios": [s.as_dict() for s in results]}, f, indent=1)
        print(f"figures written to {os.path.relpath(args.json)}", flush=True)
    return 0
