"""Scenarios 3 (Clear Street replay) and 4 (Upstox / Firstock vs official SDKs), and the
Clear Street part of scenario 8. Each runs on the broker's own simulator (in burst mode,
in the server process) and is skipped with a reason when the broker module is missing.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from ..harness import Row, Scenario, ServerProcess, check, installed, run_client
from ..scale import Scale


def _missing(module: str) -> Optional[str]:
    try:
        __import__(module)
    except Exception as exc:  # noqa: BLE001 - another engineer's module may be half-written
        return f"{module} not importable ({type(exc).__name__}: {exc})"
    return None


def clearstreet_available() -> bool:
    """Whether the Clear Street feed and simulator import."""
    return _missing("brokerfeeds.brokers.clearstreet") is None and _missing("brokerfeeds.testing.clearstreet") is None


# ------------------------------------------------------------------ scenario 3
def run_clearstreet(scale: Scale) -> Scenario:
    """Time until ``replay-complete`` is delivered after ``scale.replay`` replayed messages."""
    scenario = Scenario(3, f"Clear Street replay ({scale.replay:,} sequenced messages after subscribe)")
    why = _missing("brokerfeeds.brokers.clearstreet") or _missing("brokerfeeds.testing.clearstreet")
    if why:
        scenario.skipped = why
        return scenario
    contenders: List[Tuple[str, Dict[str, Any]]] = [
        ("baseline: websocket-client recv() + json.loads", {"kind": "cs_baseline"}),
        ("ClearStreetFeed dispatch=thread, orjson", {"kind": "cs_feed", "dispatch": "thread", "fast": True}),
        ("ClearStreetFeed dispatch=thread, stdlib json", {"kind": "cs_feed", "dispatch": "thread", "fast": False}),
        ("ClearStreetFeed dispatch=inline, orjson", {"kind": "cs_feed", "dispatch": "inline", "fast": True}),
    ]
    if not installed("orjson"):
        contenders = [c for c in contenders if not c[1].get("fast")]
        scenario.facts["note"] = "orjson (the 'fast' extra) is not installed: contenders with orjson skipped"
    if scale.few:
        contenders = contenders[:2]
    values: Dict[str, List[float]] = {name: [] for name, _ in contenders}
    seconds: Dict[str, List[float]] = {name: [] for name, _ in contenders}
    errors: Dict[str, str] = {}
    with ServerProcess(sim="clearstreet", count=scale.replay) as server:
        scenario.facts["payload bytes"] = server.info["payload_bytes"]
        for _ in range(scale.reps):
            for name, spec in contenders:
                spec = dict(spec, url=server.url, rest_url=server.rest_url, token=server.info["token"],
                            account=server.info["account"], timeout=scale.timeout)
                result = run_client(spec, timeout=scale.timeout + 30)
                blast = server.last_blast()
                if "error" in result or not result.get("ok") or not blast:
                    errors[name] = result.get("error") or f"replay-complete not seen ({result.get('count', 0):,})"
                    continue
                elapsed = result["last"] - blast["start"]
                values[name].append(scale.replay / elapsed)
                seconds[name].append(elapsed)
    for name, spec in contenders:
        row = scenario.add(Row(name, values[name], "msg/s", baseline=spec["kind"] == "cs_baseline",
                               note=errors.get(name, ""), extra={"seconds": seconds[name]}))
        row.note = row.note or (f"replay-complete after {min(seconds[name]):.2f}-{max(seconds[name]):.2f} s"
                                if seconds[name] else "")
    scenario.ratios()
    for row in scenario.rows:
        if row.name.startswith("ClearStreetFeed dispatch=thread") and row.ratio is not None:
            check(row, row.ratio >= 0.7, ">=0.7x base")
    return scenario


# ------------------------------------------------------------------ scenario 4
def run_india(scale: Scale) -> Scenario:
    """Upstox / Firstock: our feeds vs the official SDKs' streamers on the same simulator."""
    scenario = Scenario(4, "Upstox / Firstock vs official SDKs")
    scenario.skipped = ("not built yet: UpstoxFeed / FirstockFeed and their simulators exist, but the drivers for "
                        "the official SDKs (upstox-python-sdk PortfolioDataStreamer, firstock websockets) and "
                        "burst modes of those simulators are still to write (see protocols/upstox.md and "
                        "protocols/firstock.md section d)")
    return scenario


# ------------------------------------------------------------------ scenario 8 (Clear Street)
def _cs_once(policy: Any, down_for: float) -> Dict[str, Any]:
    from brokerfeeds.brokers.clearstreet import ClearStreetFeed
    from brokerfeeds.testing.clearstreet import ClearStreetSimulator

    seen: Dict[Tuple[str, Any], int] = {}
    lock = threading.Lock()

    def record(event: Any) -> None:
        ident = (type(event).__name__, getattr(event, "order_id", None), getattr(event, "trade_id", None),
                 str(getattr(event, "filled_quantity", "")), getattr(event, "broker_status", None))
        with lock:
            seen[ident] = seen.get(ident, 0) + 1

    with ClearStreetSimulator(accounts=("100000",), hb_interval=1.0) as sim:
        feed = ClearStreetFeed(access_token=sim.token, url=sim.url, rest_url=sim.rest_url, stale_after=5.0,
                               reconnect=policy)
        feed.on_order(record)
        feed.on_trade(record)
        feed.subscribe_activity("100000")
        try:
            feed.start()
            if not feed.wait_connected(10):
                raise RuntimeError("feed did not connect")
            ids = [sim.place_order("AAPL", "buy", 100, 190.0 + i) for i in range(3)]
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and len(seen) < 3:
                time.sleep(0.01)
            before = dict(seen)
            outage = threading.Thread(target=sim.restart, kwargs={"down_for": down_for})
            outage.start()
            time.sleep(min(0.2, down_for / 3))
            sim.fill(ids[0], 100, 190.0)  # order-update + trade-notice (+ position, buying power)
            sim.fill(ids[1], 40, 191.0)
            sim.cancel(ids[2])
            outage.join()
            back = time.monotonic()
            expected = 5  # 2 fills x (order + trade) + 1 cancel
            deadline = back + 30
            new: Dict[Any, int] = {}
            while time.monotonic() < deadline:
                with lock:
                    new = {k: v for k, v in seen.items() if k not in before}
                if len(new) >= expected:
                    break
                time.sleep(0.01)
            done = time.monotonic() - back
            time.sleep(0.3)
            with lock:
                new = {k: v for k, v in seen.items() if k not in before}
                duplicates = sum(v - 1 for v in seen.values() if v > 1)
        finally:
            feed.stop()
    return {"lost": max(0, expected - len(new)), "duplicates": duplicates, "caught_up": done}


def clearstreet_recovery(scenario: Scenario, scale: Any) -> None:
    """Add Clear Street rows to scenario 8: events lost / duplicated across a reconnect (must be 0)."""
    from brokerfeeds import ReconnectPolicy

    lost: List[float] = []
    dups: List[float] = []
    caught: List[float] = []
    error = ""
    for _ in range(scale.recovery_reps):
        try:
            result = _cs_once(ReconnectPolicy(initial=0.05, factor=2.0, maximum=0.2), scale.down_for)
        except Exception as exc:  # noqa: BLE001
            error = f"{type(exc).__name__}: {exc}"
            continue
        lost.append(result["lost"])
        dups.append(result["duplicates"])
        caught.append(result["caught_up"] * 1e3)
    scenario.add(Row("Clear Street, initial=0.05: back -> missed events delivered", caught, "ms",
                     higher_is_better=False, digits=1, note=error))
    row = scenario.add(Row("Clear Street: events lost across the reconnect", lost, "events", higher_is_better=False))
    if row.values:
        check(row, max(row.values) == 0, "0")
    row = scenario.add(Row("Clear Street: duplicate events after the replay", dups, "events", higher_is_better=False))
    if row.values:
        check(row, max(row.values) == 0, "0")
