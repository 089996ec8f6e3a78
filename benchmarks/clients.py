"""Contenders, each run in a fresh subprocess: ``python -m benchmarks.clients '<json spec>'``.

The last stdout line is a JSON object: ``count`` (items delivered to user code),
``first`` / ``last`` (monotonic time of the first / last delivery), plus what the
contender measures (latencies, RSS, CPU). Monotonic time is one clock for every
process on the host, so the parent compares it with the server's send times.

Spec keys: ``kind`` (``baseline``, ``ibkrfeed``, ``ibind``), ``url``, ``rest_url``,
``topic`` (``sor`` or ``smd``), ``conids``, ``expected``, ``dispatch``, ``fast``
(False hides orjson before brokerfeeds is imported), ``measure`` (``throughput``,
``latency``, ``soak``, ``idle``, ``memory``), ``timeout``, ``hard_exit`` (end with
``os._exit`` once the result is written). Scenarios 3 and 4 add their own kinds
(:mod:`benchmarks.peers`).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional

monotonic = time.monotonic


class Counter:
    """The user callback of every contender: counts, stamps, optionally measures."""

    def __init__(self, expected: int, latency: bool = False, checkpoints: Optional[List[int]] = None) -> None:
        self.expected = expected
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.done = threading.Event()
        self.latencies: List[float] = []
        self.checkpoints = sorted(checkpoints or [])
        self.rss: Dict[int, int] = {}
        self._probe: Optional[Callable[[], int]] = None

    def hit(self) -> None:
        now = monotonic()
        self.count += 1
        if self.count == 1:
            self.first = now
        self.last = now
        if self.checkpoints and self.count == self.checkpoints[0]:
            self.checkpoints.pop(0)
            self.rss[self.count] = self._probe() if self._probe else 0
        if self.count >= self.expected:
            self.done.set()

    def stamp(self, sent: float) -> None:
        now = monotonic()
        self.latencies.append(now - sent)
        self.count += 1
        self.last = now
        if self.count >= self.expected:
            self.done.set()

    def wait(self, timeout: float, extra: Callable[[], int] = lambda: 0) -> bool:
        deadline = monotonic() + timeout
        while not self.done.wait(0.02):
            if self.count + extra() >= self.expected:
                return True
            if monotonic() > deadline:
                return False
        return True

    def result(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"count": self.count, "first": self.first, "last": self.last}
        if self.latencies:
            out["latencies"] = self.latencies
        if self.rss:
            out["rss"] = {str(k): v for k, v in self.rss.items()}
        return out


# ------------------------------------------------------------------ baseline
def run_baseline(spec: Dict[str, Any]) -> Dict[str, Any]:
    """A bare websocket-client ``recv()`` loop with stdlib ``json.loads`` (the practical limit).

    UTF-8 validation is skipped, as in brokerfeeds (websocket-client validates text frames
    in pure Python by default, which would make the baseline several times slower).
    """
    import json as stdjson

    import websocket

    counter = Counter(spec["expected"], latency=spec.get("measure") == "latency")
    # skip_utf8_validation: the fastest setting of the stack (brokerfeeds uses it too).
    ws = websocket.create_connection(spec["url"], cookie='api={"session":"bench-session-0001"}', timeout=30,
                                     skip_utf8_validation=True)
    topic = spec["topic"]
    if topic == "sor":
        ws.send("sor+{}")
    else:
        for conid in spec["conids"]:
            ws.send(f"smd+{conid}+" + stdjson.dumps({"fields": ["31", "84", "86", "88", "85", "7762"]}))
    prefix = topic if topic == "sor" else "smd+"
    latency = spec.get("measure") == "latency"
    deadline = monotonic() + spec.get("timeout", 60)
    loads = stdjson.loads
    recv = ws.recv
    while counter.count < counter.expected and monotonic() < deadline:
        message = loads(recv())
        t = message.get("topic")
        if t is None or not t.startswith(prefix):
            continue
        if latency:
            counter.stamp(message["args"][0]["bench_ts"])
        else:
            counter.hit()
    ws.close()
    return counter.result()


# ------------------------------------------------------------------ IbkrFeed
def json_mode(spec: Dict[str, Any]) -> None:
    """Before brokerfeeds is imported: ``"fast": True`` needs orjson, False hides it (the
    ``fast`` extra absent), absent means "whatever is installed"."""
    fast = spec.get("fast")
    if fast is False:
        sys.modules["orjson"] = None  # type: ignore[assignment]
    from brokerfeeds.values import FAST_JSON

    if fast is not None and FAST_JSON != fast:
        raise RuntimeError(f"orjson {'missing' if fast else 'still used'}")


def _feed(spec: Dict[str, Any]) -> Any:
    json_mode(spec)
    from brokerfeeds import IbkrFeed

    kwargs = dict(spec.get("feed_kwargs", {}))
    return IbkrFeed(url=spec["url"], rest_url=spec["rest_url"], dispatch=spec.get("dispatch", "thread"), **kwargs)


def _pump(feed: Any, counter: Counter) -> threading.Thread:
    """For ``dispatch="queue"``: what a GUI timer would do, as tightly as possible."""

    def pump() -> None:
        while not counter.done.is_set() and feed.state != "stopped":
            feed.process_events(timeout=0.05)

    thread = threading.Thread(target=pump, name="bench-pump", daemon=True)
    thread.start()
    return thread


def run_ibkrfeed(spec: Dict[str, Any]) -> Dict[str, Any]:
    """IbkrFeed with a counting ``on_order`` / ``on_quote`` callback."""
    feed = _feed(spec)
    measure = spec.get("measure", "throughput")
    counter = Counter(spec["expected"], checkpoints=spec.get("checkpoints"))
    if measure == "soak":
        import psutil

        proc = psutil.Process()
        counter._probe = lambda: proc.memory_info().rss
    if measure == "latency":
        feed.on_order(lambda order: counter.stamp(order.raw["bench_ts"]))
    else:
        if spec["topic"] in ("sor", "soak"):
            feed.on_order(lambda order: counter.hit())
        if spec["topic"] in ("smd", "soak"):
            feed.on_quote(lambda quote: counter.hit())
    if spec["topic"] in ("sor", "soak"):
        feed.subscribe_orders()
    if spec["topic"] in ("smd", "soak"):
        for conid in spec["conids"]:
            feed.subscribe_quotes(conid)
    feed.start()
    pump = _pump(feed, counter) if spec.get("dispatch") == "queue" else None
    try:
        ok = counter.wait(spec.get("timeout", 60), extra=lambda: feed._dispatcher.quotes_coalesced)
        result = counter.result()
        stats = feed.stats
        result.update(ok=ok, coalesced=stats.quotes_coalesced, malformed=stats.malformed,
                      callback_errors=stats.callback_errors, reconnects=stats.reconnects)
    finally:
        counter.done.set()
        feed.stop()
        if pump is not None:
            pump.join(2)
    return result


# ------------------------------------------------------------------ ibind
def run_ibind(spec: Dict[str, Any]) -> Dict[str, Any]:
    """ibind's IbkrWsClient (v2) with a CallbackSink on the same server (docs/ibkr.md)."""
    import logging

    logging.disable(logging.CRITICAL)
    from ibind import CallbackSink, IbkrClient, IbkrWsClient, events, subscriptions

    counter = Counter(spec["expected"])
    rest = IbkrClient(url=spec["rest_url"] + "/", cacert=False, auto_register_shutdown=False)
    sink = CallbackSink()
    if spec["topic"] == "sor":
        sink.on(events.Orders, lambda event: counter.hit())
    else:
        sink.on(events.MarketData, lambda event: counter.hit())
    ws = IbkrWsClient(url=spec["url"], ibkr_client=rest, account_id="DU123456", cacert=False, sink=sink,
                      synchronous_output_events=bool(spec.get("synchronous", False)))
    ws.start()
    try:
        if spec["topic"] == "sor":
            ws.subscribe(subscriptions.OrdersSubscription())
        else:
            for conid in spec["conids"]:
                ws.subscribe(subscriptions.MarketDataSubscription(
                    conid=str(conid), fields=["31", "84", "86", "88", "85", "7762"]))
        ok = counter.wait(spec.get("timeout", 60))
        result = counter.result()
        result["ok"] = ok
    finally:
        ws.shutdown()
    return result


# ------------------------------------------------------------------ idle / memory
def run_idle(spec: Dict[str, Any]) -> Dict[str, Any]:
    """One connected, idle IbkrFeed: CPU seconds used over ``seconds``."""
    import psutil

    feed = _feed(spec)
    feed.subscribe_orders()
    feed.subscribe_pnl()
    feed.start()
    try:
        if not feed.wait_connected(15):
            raise RuntimeError("feed did not connect")
        time.sleep(spec.get("settle", 1.0))  # let the reconcile finish
        proc = psutil.Process()
        before = proc.cpu_times()
        wall0 = monotonic()
        ctx0 = proc.num_ctx_switches()
        time.sleep(spec["seconds"])
        after = proc.cpu_times()
        ctx1 = proc.num_ctx_switches()
        wall = monotonic() - wall0
        cpu = (after.user - before.user) + (after.system - before.system)
        return {"count": 0, "cpu_seconds": cpu, "wall": wall, "cpu_percent": 100.0 * cpu / wall,
                "wakeups_per_s": ((ctx1.voluntary - ctx0.voluntary) + (ctx1.involuntary - ctx0.involuntary)) / wall,
                "threads": proc.num_threads(), "messages": feed.stats.messages}
    finally:
        feed.stop()


def run_memory(spec: Dict[str, Any]) -> Dict[str, Any]:
    """``feeds`` connected IbkrFeeds in one process: RSS with 1 and with all of them."""
    import gc

    import psutil

    proc = psutil.Process()
    feeds = []
    rss: Dict[str, int] = {}
    try:
        for n in range(1, spec["feeds"] + 1):
            feed = _feed(spec)
            feed.subscribe_orders()
            feed.subscribe_pnl()
            feed.start()
            feeds.append(feed)
            if n in (1, spec["feeds"]):
                for f in feeds:
                    if not f.wait_connected(30):
                        raise RuntimeError("a feed did not connect")
                time.sleep(spec.get("settle", 1.0))
                gc.collect()
                rss[str(n)] = proc.memory_info().rss
        threads = proc.num_threads()
        connected = sum(1 for f in feeds if f.state == "connected")
    finally:
        for f in feeds:
            f.stop()
    return {"count": 0, "rss": rss, "threads": threads, "connected": connected}


RUNNERS: Dict[str, Callable[[Dict[str, Any]], Dict[str, Any]]] = {
    "baseline": run_baseline,
    "ibkrfeed": run_ibkrfeed,
    "ibind": run_ibind,
    "idle": run_idle,
    "memory": run_memory,
}


def main(argv: List[str]) -> int:
    spec = json.loads(argv[1])
    runner = RUNNERS.get(spec["kind"])
    if runner is None:
        from . import peers

        runner = peers.RUNNERS[spec["kind"]]
    try:
        result = runner(spec)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which shows it
        result = {"error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    if spec.get("hard_exit"):  # a peer SDK that leaves non-daemon threads behind
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
