"""Scenario 8: recovery after the server goes away and comes back.

Measured per feed: time from the server listening again to the feed's connection being
accepted, and to the last subscription re-sent; and events lost across the reconnect
(orders that changed while the feed was away and whose latest state never reached
``on_order``; for Clear Street, sequenced messages pushed during the outage that never
arrived). The simulators run in this process: nothing here is CPU-bound.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from ..harness import Row, Scenario, check

def _policies(few: bool) -> List[Tuple[str, Any]]:
    from brokerfeeds import ReconnectPolicy

    fast = ("initial=0.05", ReconnectPolicy(initial=0.05, factor=2.0, maximum=0.2))
    return [fast] if few else [("default policy", None), fast]


def _ibkr_once(policy: Any, down_for: float) -> Dict[str, Any]:
    from brokerfeeds import IbkrFeed
    from brokerfeeds.testing import IbkrSimulator

    class Sim(IbkrSimulator):
        accepted: List[float] = []

        async def serve_client(self, client: Any) -> None:
            self.accepted.append(time.monotonic())
            await super().serve_client(client)

    latest: Dict[str, Any] = {}
    lock = threading.Lock()

    def on_order(order: Any) -> None:
        with lock:
            latest[order.order_id] = order

    with Sim(hb_interval=1.0) as sim:
        sim.accepted = []
        feed = IbkrFeed(url=sim.url, rest_url=sim.rest_url, stale_after=5.0, reconnect=policy)
        feed.on_order(on_order)
        feed.subscribe_orders()
        feed.subscribe_trades()
        feed.subscribe_pnl()
        for conid in (265598, 8314, 4815747):
            feed.subscribe_quotes(conid)
        feed.subscribe_account_summary("DU123456")
        expected_subs = len(feed.subscriptions)
        try:
            feed.start()
            if not feed.wait_connected(10):
                raise RuntimeError("feed did not connect")
            ids = [sim.place_order("AAPL", "BUY", 100, 190.0 + i) for i in range(4)]
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and len(latest) < len(ids):
                time.sleep(0.01)
            outage = threading.Thread(target=sim.restart, kwargs={"down_for": down_for})
            outage.start()
            time.sleep(min(0.2, down_for / 3))
            # While the feed is away: fills, a cancel, a new order.
            sim.fill(ids[0], 100, 190.0)
            sim.fill(ids[1], 40, 191.0)
            sim.cancel(ids[2])
            ids.append(sim.place_order("MSFT", "SELL", 10, 410.0))
            changed = {ids[0]: "Filled", ids[1]: "PreSubmitted|Submitted", ids[2]: "Cancelled", ids[4]: "Submitted"}
            outage.join()
            back = time.monotonic()
            deadline = back + 30
            sent: List[float] = []
            while time.monotonic() < deadline:
                with sim.lock:
                    sent = [t for t, data in sim.received
                            if t >= back and str(data if isinstance(data, str) else data.decode())[:4]
                            in ("sor+", "str+", "spl+", "smd+", "ssd+")]
                if len(sent) >= expected_subs:
                    break
                time.sleep(0.005)
            accepted = next((t for t in sim.accepted if t >= back), None)
            deadline = time.monotonic() + 5
            lost = len(changed)
            while time.monotonic() < deadline:
                with lock:
                    lost = sum(1 for oid, want in changed.items()
                               if oid not in latest or latest[oid].broker_status not in want.split("|")
                               or (oid == ids[1] and latest[oid].filled_quantity != 40))
                if not lost:
                    break
                time.sleep(0.02)
        finally:
            feed.stop()
    if len(sent) < expected_subs or accepted is None:
        return {"error": f"only {len(sent)} of {expected_subs} subscriptions re-sent"}
    return {"connect": accepted - back, "resubscribed": max(sent[:expected_subs]) - back,
            "engine": max(sent[:expected_subs]) - accepted, "lost": lost, "subscriptions": expected_subs}


def run_recovery(scale: Any, clearstreet: Optional[Any] = None) -> Scenario:
    """IBKR (and Clear Street when available) recovery figures, ``scale.recovery_reps`` times."""
    scenario = Scenario(8, f"Recovery (server down {scale.down_for:g}s, then back; default policy = "
                           "ReconnectPolicy() 0.5 s x2 full jitter)")
    for label, policy in _policies(scale.few):
        values: Dict[str, List[float]] = {"connect": [], "resubscribed": [], "engine": [], "lost": []}
        error = ""
        for _ in range(scale.recovery_reps):
            result = _ibkr_once(policy, scale.down_for)
            if "error" in result:
                error = result["error"]
                continue
            for key in values:
                values[key].append(result[key] * (1e3 if key != "lost" else 1))
        scenario.add(Row(f"IBKR, {label}: back -> connected", values["connect"], "ms", higher_is_better=False,
                         digits=1, note=error))
        scenario.add(Row(f"IBKR, {label}: back -> last resubscribe", values["resubscribed"], "ms",
                         higher_is_better=False, digits=1))
        scenario.add(Row(f"IBKR, {label}: connected -> last resubscribe", values["engine"], "ms",
                         higher_is_better=False, digits=1))
        row = scenario.add(Row(f"IBKR, {label}: orders with latest state lost", values["lost"], "orders",
                               higher_is_better=False))
        if row.values:
            check(row, max(row.values) == 0, "0 (REST reconcile)")
    if clearstreet is not None:
        clearstreet(scenario, scale)
    else:
        scenario.notes.append("Clear Street recovery skipped: brokerfeeds.brokers.clearstreet not importable")
    return scenario
