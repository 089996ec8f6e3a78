"""How big each scenario is: ``full`` (the published table), ``quick`` and ``tiny`` (the smoke test)."""

from __future__ import annotations

from typing import Dict

import attrs


@attrs.frozen(kw_only=True)
class Scale:
    """Sizes and durations for one run of the benchmarks."""

    name: str
    reps: int
    orders: int  # scenario 1: sor frames per burst
    quotes: int  # scenario 2: smd frames per burst
    conids: int  # scenario 2 / 7: instruments
    replay: int  # scenario 3: Clear Street messages replayed
    india: int  # scenario 4: Upstox / Firstock messages per burst
    rate: float  # scenario 5: messages per second
    latency_seconds: float
    idle_seconds: float  # scenario 6 (measured once)
    feeds: int  # scenario 6: feeds in one process
    soak: int  # scenario 7: messages in total (10 blocks)
    recovery_reps: int  # scenario 8
    down_for: float  # scenario 8: seconds the server is gone
    timeout: float  # per client run
    few: bool = False  # fewer contenders (the smoke test)
    settle: float = 1.0  # seconds to let connections settle before measuring (scenario 6)


SCALES: Dict[str, Scale] = {
    "full": Scale(name="full", reps=3, orders=100_000, quotes=100_000, conids=20, replay=100_000, india=15_000,
                  rate=2000.0, latency_seconds=2.0, idle_seconds=30.0, feeds=100, soak=1_000_000,
                  recovery_reps=3, down_for=1.0, timeout=120.0),
    "quick": Scale(name="quick", reps=3, orders=20_000, quotes=20_000, conids=20, replay=20_000, india=5_000,
                   rate=2000.0, latency_seconds=1.0, idle_seconds=5.0, feeds=20, soak=200_000,
                   recovery_reps=3, down_for=1.0, timeout=60.0),
    "tiny": Scale(name="tiny", reps=1, orders=1_000, quotes=1_000, conids=4, replay=1_000, india=500,
                  rate=500.0, latency_seconds=0.3, idle_seconds=0.5, feeds=2, soak=4_000,
                  recovery_reps=1, down_for=0.3, timeout=30.0, few=True, settle=0.1),
}
