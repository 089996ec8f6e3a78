"""Scenarios 3 (Clear Street replay) and 4 (Upstox / Firstock vs official SDKs), and the
Clear Street part of scenario 8. Each runs on the broker's own simulator (in burst mode,
in the server process) and is skipped with a reason when the broker module is missing.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

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


Contender = Tuple[str, Dict[str, Any]]


class _Runs:
    """Figures of contenders run round-robin against one burst server (scenarios 3 and 4)."""

    def __init__(self, contenders: Sequence[Contender]) -> None:
        self.rates: Dict[str, List[float]] = {name: [] for name, _ in contenders}
        self.seconds: Dict[str, List[float]] = {name: [] for name, _ in contenders}
        self.delivered: Dict[str, List[int]] = {name: [] for name, _ in contenders}
        self.errors: Dict[str, str] = {}

    def row(self, name: str, baseline: bool = False, note: str = "") -> Row:
        """The table row of contender ``name`` (its error, if any, as the note)."""
        return Row(name, self.rates[name], "msg/s", baseline=baseline, note=self.errors.get(name, note),
                   extra={"seconds": self.seconds[name], "delivered": self.delivered[name]})


def _burst_runs(scale: Scale, contenders: Sequence[Contender], count: int,
                **server_config: Any) -> Tuple[_Runs, Dict[str, Any]]:
    """Run every contender ``scale.reps`` times (round-robin, each in a fresh subprocess) against
    one burst server of ``count`` messages; rate = ``count`` / (last delivery - burst start).

    Returns the figures and the server's addresses (with ``payload_bytes``).
    """
    runs = _Runs(contenders)
    with ServerProcess(count=count, **server_config) as server:
        addresses = {k: v for k, v in server.info.items() if k not in ("count", "payload_bytes")}
        for _ in range(scale.reps):
            for name, spec in contenders:
                spec = dict(spec, **addresses, expected=count, timeout=scale.timeout)
                result = run_client(spec, timeout=scale.timeout + 30)
                blast = server.last_blast()
                if "error" in result or not result.get("ok") or not blast:
                    runs.errors[name] = result.get("error") or \
                        f"not done before the timeout ({result.get('count', 0):,} delivered)"
                    continue
                elapsed = result["last"] - blast["start"]
                runs.rates[name].append(count / elapsed)
                runs.seconds[name].append(elapsed)
                runs.delivered[name].append(int(result.get("count", 0)))
        return runs, server.info


def _feed_contenders(label: str, kind: str, few: bool) -> Tuple[List[Contender], List[str]]:
    """Our feed in the default ``thread`` mode with orjson and with stdlib json, and ``inline``
    with orjson unless ``few``; the orjson ones only when orjson is installed (else a note says so)."""
    out: List[Contender] = [
        (f"{label} dispatch=thread, orjson", {"kind": kind, "dispatch": "thread", "fast": True}),
        (f"{label} dispatch=thread, stdlib json", {"kind": kind, "dispatch": "thread", "fast": False}),
    ]
    if not few:
        out.append((f"{label} dispatch=inline, orjson", {"kind": kind, "dispatch": "inline", "fast": True}))
    if installed("orjson"):
        return out, []
    return ([c for c in out if not c[1]["fast"]],
            ["orjson (the 'fast' extra) is not installed: contenders with orjson skipped"])


# ------------------------------------------------------------------ scenario 3
def run_clearstreet(scale: Scale) -> Scenario:
    """Time until ``replay-complete`` is delivered after ``scale.replay`` replayed messages."""
    scenario = Scenario(3, f"Clear Street replay ({scale.replay:,} sequenced messages after subscribe)")
    why = _missing("brokerfeeds.brokers.clearstreet") or _missing("brokerfeeds.testing.clearstreet")
    if why:
        scenario.skipped = why
        return scenario
    feeds, notes = _feed_contenders("ClearStreetFeed", "cs_feed", few=False)
    contenders = [("baseline: websocket-client recv() + json.loads", {"kind": "cs_baseline"}), *feeds]
    if notes:
        scenario.facts["note"] = notes[0]
    if scale.few:
        contenders = contenders[:2]
    runs, info = _burst_runs(scale, contenders, scale.replay, sim="clearstreet")
    scenario.facts["payload bytes"] = info["payload_bytes"]
    for name, spec in contenders:
        seconds = runs.seconds[name]
        scenario.add(runs.row(name, baseline=spec["kind"] == "cs_baseline",
                              note=f"replay-complete after {min(seconds):.2f}-{max(seconds):.2f} s" if seconds else ""))
    scenario.ratios()
    for row in scenario.rows:
        if row.name.startswith("ClearStreetFeed dispatch=thread") and row.ratio is not None:
            check(row, row.ratio >= 0.7, ">=0.7x base")
    return scenario


# ------------------------------------------------------------------ scenario 4
class IndiaBroker(NamedTuple):
    """One broker of scenario 4: our feed, its modules, the official SDK, the client kinds' prefix."""

    name: str
    feed: str
    modules: Tuple[str, ...]
    sdk_label: str
    sdk_module: str
    sdk_pip: str
    kind: str  # client kinds are <kind>_baseline, <kind>_feed, <kind>_sdk (benchmarks.peers)


INDIA = (
    IndiaBroker("Upstox", "UpstoxFeed", ("brokerfeeds.brokers.upstox", "brokerfeeds.testing.upstox"),
                "upstox-python-sdk PortfolioDataStreamer (raw str)", "upstox_client", "upstox-python-sdk", "up"),
    IndiaBroker("Firstock", "FirstockFeed", ("brokerfeeds.brokers.firstock", "brokerfeeds.testing.firstock"),
                "firstock SDK websocket (order_data dict)", "firstock", "firstock", "fs"),
)


def _india_broker(scenario: Scenario, scale: Scale, broker: IndiaBroker) -> None:
    """One broker's rows of scenario 4: baseline, our feed, the official SDK (each if available)."""
    why = next((w for w in map(_missing, broker.modules) if w), None)
    if why:
        scenario.notes.append(f"{broker.name} skipped: {why}")
        return
    feeds, notes = _feed_contenders(f"{broker.name}: {broker.feed}", f"{broker.kind}_feed", scale.few)
    contenders: List[Contender] = [
        (f"{broker.name}: baseline recv() + json.loads", {"kind": f"{broker.kind}_baseline"}), *feeds]
    if installed(broker.sdk_module):
        # hard_exit: the SDKs leave threads behind (Upstox: a non-daemon socket thread).
        contenders.append((f"{broker.name}: {broker.sdk_label}", {"kind": f"{broker.kind}_sdk", "hard_exit": True}))
    else:
        notes.append(f"{broker.sdk_pip} is not installed (pip install -e '.[bench]'): "
                     f"{broker.name}'s official SDK skipped")
    scenario.notes.extend(n for n in notes if n not in scenario.notes)
    runs, info = _burst_runs(scale, contenders, scale.india, sim=broker.name.lower())
    scenario.facts[f"{broker.name} payload bytes"] = info["payload_bytes"]
    rows = [scenario.add(runs.row(name, baseline=spec["kind"].endswith("_baseline"))) for name, spec in contenders]
    scenario.ratios(rows)
    sdk = rows[-1] if contenders[-1][1]["kind"].endswith("_sdk") else None
    if sdk is not None and sdk.values:
        for row in rows[1:-1]:
            if row.values and "dispatch=thread" in row.name:
                times = (row.stats["median"] or 0.0) / (sdk.stats["median"] or 1.0)
                scenario.facts[f"{row.name} vs SDK"] = f"{times:.2f}x"


def run_india(scale: Scale) -> Scenario:
    """Scenario 4: Upstox / Firstock order updates per second through our feeds vs the
    official SDKs' streamers, on each broker's own simulator in burst mode."""
    scenario = Scenario(4, f"Upstox / Firstock vs official SDKs ({scale.india:,} order updates per burst)")
    scenario.facts["burst"] = ("order updates as text frames, 50 orders in flight: placed, 2 partial fills, "
                               "complete; 1 in 5 cancelled after a partial fill, 1 in 10 rejected")
    for broker in INDIA:
        _india_broker(scenario, scale, broker)
    if not scenario.rows:
        scenario.skipped = "; ".join(scenario.notes) or "no broker available"
        return scenario
    if any(row.name.endswith(broker.sdk_label) for row in scenario.rows for broker in INDIA):
        scenario.notes[:0] = [
            ("what reaches the callback differs: the SDKs hand out the raw message (Upstox: the str; "
             "Firstock: the json.loads'd dict), brokerfeeds a normalised Order (typed, Decimal, status mapped, "
             "fills derived)"),
            ("the SDKs' websocket-client validates the UTF-8 of text frames in pure Python (no wsaccel); "
             "baseline and brokerfeeds skip that"),
        ]
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
