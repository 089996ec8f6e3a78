"""Scenario 7: RSS of a feed process after 100k and after 1M messages (no growth expected).

One block of frames (4 quote deltas : 1 order update, fixed instruments and orders) is
sent 10 times; every frame is still a change, so every frame reaches a callback.
"""

from __future__ import annotations

from ..harness import Row, Scenario, ServerProcess, check, installed, run_client
from ..scale import Scale
from .. import frames as fr


def run_soak(scale: Scale) -> Scenario:
    """RSS at every tenth of ``scale.soak`` delivered messages (dispatch="thread", measured once)."""
    scenario = Scenario(7, f"Soak memory ({scale.soak:,} messages, measured once)")
    if not installed("psutil"):
        scenario.skipped = "psutil is not installed (pip install -e '.[bench]')"
        return scenario
    block = scale.soak // 10
    conids = fr.quote_conids(scale.conids)
    checkpoints = [block * i for i in range(1, 11)]
    with ServerProcess(mode="soak", frames="soak", count=block, repeat=10, conids=len(conids),
                       trigger_prefix="smd+", trigger=len(conids)) as server:
        result = run_client({"kind": "ibkrfeed", "url": server.url, "rest_url": server.rest_url, "topic": "soak",
                             "measure": "soak", "conids": conids, "checkpoints": checkpoints,
                             "expected": scale.soak + len(conids), "timeout": scale.timeout * 3},
                            timeout=scale.timeout * 3 + 30)
        blast = server.last_blast()
    if "error" in result or not result.get("rss"):
        scenario.notes.append(f"soak failed: {result.get('error', 'no RSS samples')}")
        return scenario
    rss = {int(k): v for k, v in result["rss"].items()}
    first, last = rss.get(block), rss.get(scale.soak)
    if first is None or last is None:
        scenario.notes.append(f"soak incomplete: {result['count']:,} delivered")
        return scenario
    series = ", ".join(f"{rss[k] / 1e6:.1f}" for k in sorted(rss))
    scenario.facts["RSS (MB) at each tenth"] = series
    if blast:
        scenario.facts["rate"] = f"{result['count'] / (result['last'] - blast['start']):,.0f} msg/s"
    row = scenario.add(Row(f"RSS growth {block:,} -> {scale.soak:,} messages", [(last - first) / 1e6], "MB",
                           higher_is_better=False, digits=2,
                           note=f"{first / 1e6:.1f} MB -> {last / 1e6:.1f} MB; {result['count']:,} delivered"))
    check(row, (last - first) < 5e6, "<5 MB")
    return scenario
