"""Client runners for scenarios 3 and 4 (subprocess side, see :mod:`benchmarks.clients`)."""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Dict

from .clients import Counter

monotonic = time.monotonic


def run_cs_baseline(spec: Dict[str, Any]) -> Dict[str, Any]:
    """websocket-client ``recv()`` + ``json.loads`` until ``replay-complete`` (UTF-8 validation
    skipped, as in brokerfeeds)."""
    import websocket

    ws = websocket.create_connection(spec["url"], timeout=30, skip_utf8_validation=True)
    ws.send(json.dumps({"authorization": spec["token"],
                        "payload": {"type": "subscribe-activity", "account_id": spec["account"]}}))
    count = 0
    deadline = monotonic() + spec.get("timeout", 60)
    loads = json.loads
    done_at = 0.0
    while monotonic() < deadline:
        message = loads(ws.recv())
        kind = message["payload"]["type"]
        if "sequence" in message:
            count += 1
        elif kind == "replay-complete":
            done_at = monotonic()
            break
    ws.close()
    return {"count": count, "last": done_at, "ok": bool(done_at)}


def run_cs_feed(spec: Dict[str, Any]) -> Dict[str, Any]:
    """ClearStreetFeed: counting ``on_order`` / ``on_trade``; done at ``on_replay_complete``."""
    fast = spec.get("fast")
    if fast is False:
        import sys

        sys.modules["orjson"] = None  # type: ignore[assignment]
    from brokerfeeds.brokers.clearstreet import ClearStreetFeed
    from brokerfeeds.values import FAST_JSON

    if fast is not None and FAST_JSON != fast:
        raise RuntimeError(f"orjson {'missing' if fast else 'still used'}")

    counter = Counter(1)
    events = [0]

    def count(_: Any) -> None:
        events[0] += 1

    feed = ClearStreetFeed(access_token=spec["token"], url=spec["url"], rest_url=spec["rest_url"],
                           dispatch=spec.get("dispatch", "thread"))
    feed.on_order(count)
    feed.on_trade(count)
    feed.on_replay_complete(lambda done: counter.hit())
    feed.subscribe_activity(spec["account"])
    feed.start()
    try:
        ok = counter.wait(spec.get("timeout", 60))
        return {"count": events[0], "last": counter.last, "ok": ok, "callback_errors": feed.stats.callback_errors}
    finally:
        feed.stop()


RUNNERS: Dict[str, Callable[[Dict[str, Any]], Dict[str, Any]]] = {
    "cs_baseline": run_cs_baseline,
    "cs_feed": run_cs_feed,
}
