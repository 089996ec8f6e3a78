"""Scenario 5: latency at a steady rate, from the server's send to the callback's entry.

The server stamps each frame with ``time.monotonic()`` just before writing it; the
callback subtracts it from its own ``time.monotonic()`` on entry (one clock per host).
The first 10 % of samples are dropped as warm-up.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from ..harness import Row, Scenario, ServerProcess, check, installed, percentile, run_client
from ..scale import Scale

CONTENDERS: Tuple[Tuple[str, Dict[str, Any]], ...] = (
    ("baseline", {"kind": "baseline"}),
    ("IbkrFeed dispatch=thread", {"kind": "ibkrfeed", "dispatch": "thread"}),
    ("IbkrFeed dispatch=inline", {"kind": "ibkrfeed", "dispatch": "inline"}),
    ("IbkrFeed dispatch=queue (tight process_events loop)", {"kind": "ibkrfeed", "dispatch": "queue"}),
)
TARGETS = {"IbkrFeed dispatch=thread": 2.0, "IbkrFeed dispatch=inline": 1.0}  # p99, ms


def run_latency(scale: Scale) -> Scenario:
    """p50 / p99 / max per dispatch mode at ``scale.rate`` messages per second."""
    scenario = Scenario(5, f"Latency at {scale.rate:,.0f} msg/s (server send -> callback entry)")
    expected = int(scale.rate * scale.latency_seconds)
    skip = expected // 10
    contenders = CONTENDERS[:3] if scale.few else CONTENDERS
    stats: Dict[str, Dict[str, List[float]]] = {name: {"p50": [], "p99": [], "max": []} for name, _ in contenders}
    errors: Dict[str, str] = {}
    with ServerProcess(mode="paced", rate=scale.rate, duration=scale.latency_seconds, trigger_prefix="sor+") as server:
        scenario.facts["JSON decoder"] = "orjson" if installed("orjson") else "stdlib json (the 'fast' extra is not installed)"
        scenario.facts["samples per run"] = f"{expected - skip:,} (first {skip:,} dropped as warm-up)"
        for _ in range(scale.reps):
            for name, spec in contenders:
                spec = dict(spec, url=server.url, rest_url=server.rest_url, topic="sor", measure="latency",
                            expected=expected, timeout=scale.timeout)
                result = run_client(spec, timeout=scale.timeout + 30)
                samples = sorted(result.get("latencies", [])[skip:])
                if "error" in result or not samples:
                    errors[name] = result.get("error", "no samples")
                    continue
                stats[name]["p50"].append(percentile(samples, 50) * 1e3)
                stats[name]["p99"].append(percentile(samples, 99) * 1e3)
                stats[name]["max"].append(samples[-1] * 1e3)
    for name, _ in contenders:
        for stat in ("p50", "p99", "max"):
            row = scenario.add(Row(f"{name}  {stat}", stats[name][stat], "ms", higher_is_better=False,
                                   note=errors.get(name, "") if stat == "p50" else "", digits=3))
            if stat == "p99" and name in TARGETS and row.values:
                check(row, (row.stats["median"] or 0) <= TARGETS[name], f"<={TARGETS[name]:g} ms")
    return scenario
