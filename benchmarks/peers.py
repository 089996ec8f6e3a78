"""Client runners for scenarios 3 and 4 (subprocess side, see :mod:`benchmarks.clients`).

Scenario 4 kinds (``up_*`` Upstox, ``fs_*`` Firstock): ``*_baseline`` (websocket-client
``recv()`` + ``json.loads`` after the broker's own handshake), ``*_feed`` (our feed, a
counting ``on_order``) and ``*_sdk`` (the official SDK, counting its message callback).
Each counts ``expected`` order updates and reports the time of the last one.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import urllib.parse
from typing import Any, Callable, Dict, List

from .clients import Counter, json_mode

monotonic = time.monotonic
#: The instrument every Firstock contender subscribes to (the burst starts on the subscribe).
FIRSTOCK_INSTRUMENT = "NSE:2885"


def _count_messages(ws: Any, counter: Counter, is_item: Callable[[Dict[str, Any]], bool], timeout: float) -> None:
    """``recv()`` + stdlib ``json.loads`` until ``counter`` saw every item or ``timeout``."""
    deadline = monotonic() + timeout
    loads = json.loads
    recv = ws.recv
    while counter.count < counter.expected and monotonic() < deadline:
        if is_item(loads(recv())):
            counter.hit()


def _finish(counter: Counter, ok: bool, **extra: Any) -> Dict[str, Any]:
    result = counter.result()
    result.update(ok=ok, **extra)
    return result


# ------------------------------------------------------------------ scenario 3: Clear Street
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
    json_mode(spec)
    from brokerfeeds.brokers.clearstreet import ClearStreetFeed

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


# ------------------------------------------------------------------ scenario 4: our feeds
def _run_order_feed(spec: Dict[str, Any], make: Callable[[], Any]) -> Dict[str, Any]:
    """A feed built by ``make`` (after :func:`json_mode`), counting ``on_order`` until ``expected``."""
    json_mode(spec)
    counter = Counter(spec["expected"])
    feed = make()
    feed.on_order(lambda order: counter.hit())
    feed.start()
    try:
        ok = counter.wait(spec.get("timeout", 60))
        stats = feed.stats
        return _finish(counter, ok, callback_errors=stats.callback_errors, malformed=stats.malformed)
    finally:
        feed.stop()


def run_up_feed(spec: Dict[str, Any]) -> Dict[str, Any]:
    """UpstoxFeed (REST authorize, one-time URI) with a counting ``on_order``."""

    def make() -> Any:
        from brokerfeeds.brokers.upstox import UpstoxFeed

        feed = UpstoxFeed(access_token=spec["token"], rest_url=spec["rest_url"],
                          dispatch=spec.get("dispatch", "thread"))
        feed.subscribe_orders()
        return feed

    return _run_order_feed(spec, make)


def run_fs_feed(spec: Dict[str, Any]) -> Dict[str, Any]:
    """FirstockFeed (query-string auth, one quote subscription) with a counting ``on_order``."""

    def make() -> Any:
        from brokerfeeds.brokers.firstock import FirstockFeed

        feed = FirstockFeed(spec["user_id"], spec["jkey"], url=spec["url"], rest_url=spec["rest_url"],
                            dispatch=spec.get("dispatch", "thread"))
        feed.subscribe_quotes(FIRSTOCK_INSTRUMENT)
        return feed

    return _run_order_feed(spec, make)


# ------------------------------------------------------------------ scenario 4: baselines
def run_up_baseline(spec: Dict[str, Any]) -> Dict[str, Any]:
    """REST authorize, then websocket-client ``recv()`` + ``json.loads`` on the one-time URI."""
    import requests
    import websocket

    reply = requests.get(spec["rest_url"] + "/v2/feed/portfolio-stream-feed/authorize",
                         params={"update_types": "order"}, timeout=10,
                         headers={"Authorization": f"Bearer {spec['token']}", "Accept": "application/json"})
    reply.raise_for_status()
    ws = websocket.create_connection(reply.json()["data"]["authorized_redirect_uri"], timeout=30,
                                     skip_utf8_validation=True)
    counter = Counter(spec["expected"])
    try:
        _count_messages(ws, counter, lambda m: m.get("update_type") == "order", spec.get("timeout", 60))
    finally:
        ws.close()
    return _finish(counter, counter.count >= counter.expected)


def run_fs_baseline(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Query-string auth, the success frame, one subscribe; then ``recv()`` + ``json.loads``."""
    import websocket

    query = urllib.parse.urlencode({"userId": spec["user_id"], "jKey": spec["jkey"], "source": "developer-api"})
    ws = websocket.create_connection(f"{spec['url']}?{query}", timeout=30, skip_utf8_validation=True)
    counter = Counter(spec["expected"])
    try:
        auth = json.loads(ws.recv())
        if auth.get("status") != "success":
            raise RuntimeError(f"authentication refused: {auth}")
        ws.send(json.dumps({"action": "subscribe", "tokens": FIRSTOCK_INSTRUMENT}))
        _count_messages(ws, counter, lambda m: "norenordno" in m, spec.get("timeout", 60))
    finally:
        ws.close()
    return _finish(counter, counter.count >= counter.expected)


# ------------------------------------------------------------------ scenario 4: official SDKs
def run_up_sdk(spec: Dict[str, Any]) -> Dict[str, Any]:
    """upstox-python-sdk ``PortfolioDataStreamer`` (docs/upstox.md): its hard-coded
    ``wss://api.upstox.com`` is pointed at the simulator, which answers the Bearer upgrade
    with a 302 to a one-time URI, as Upstox does. Messages arrive as raw strings.

    The streamer's socket thread is not a daemon: run with ``hard_exit``.
    """
    import upstox_client  # type: ignore[import-untyped]
    from upstox_client.feeder.portfolio_data_feeder import PortfolioDataFeeder  # type: ignore[import-untyped]

    here = "ws://" + urllib.parse.urlsplit(spec["url"]).netloc
    original = PortfolioDataFeeder.get_websocket_url
    PortfolioDataFeeder.get_websocket_url = lambda self: original(self).replace("wss://api.upstox.com", here)
    conf = upstox_client.Configuration()
    conf.host = spec["rest_url"]  # after construction (the class keeps a process-wide default)
    conf.access_token = spec["token"]
    counter = Counter(spec["expected"])
    errors: List[str] = []
    streamer = upstox_client.PortfolioDataStreamer(upstox_client.ApiClient(conf), order_update=True)
    streamer.on("message", lambda message: counter.hit())
    streamer.on("error", lambda error: errors.append(str(error)))
    streamer.connect()
    try:
        ok = counter.wait(spec.get("timeout", 60))
    finally:
        streamer.disconnect()
    return _finish(counter, ok, **({"sdk_errors": errors[:3]} if errors else {}))


def run_fs_sdk(spec: Dict[str, Any]) -> Dict[str, Any]:
    """The ``firstock`` SDK's websocket (docs/firstock.md): ``initialize_websockets`` with
    a loopback config, its jKey read from ``./config.json`` (written to a temporary working
    directory); one instrument subscribed; counting ``order_data`` (one dict per message)."""
    from firstock import Firstock, FirstockWebSocket  # type: ignore[import-untyped]

    counter = Counter(spec["expected"])
    netloc = urllib.parse.urlsplit(spec["url"])
    with tempfile.TemporaryDirectory(prefix="bench-firstock-") as workdir:
        os.chdir(workdir)
        with open("config.json", "w") as f:
            json.dump({spec["user_id"]: {"jKey": spec["jkey"]}}, f)
        model = FirstockWebSocket(tokens=[FIRSTOCK_INSTRUMENT], order_data=lambda order: counter.hit())
        ws, error = Firstock.initialize_websockets(spec["user_id"], model, {
            "scheme": "ws", "host": netloc.netloc, "path": netloc.path})
        if error:
            raise RuntimeError(f"initialize_websockets: {error}")
        try:
            ok = counter.wait(spec.get("timeout", 60))
        finally:
            Firstock.close_websocket(ws)
    return _finish(counter, ok)


RUNNERS: Dict[str, Callable[[Dict[str, Any]], Dict[str, Any]]] = {
    "cs_baseline": run_cs_baseline,
    "cs_feed": run_cs_feed,
    "up_baseline": run_up_baseline,
    "up_feed": run_up_feed,
    "up_sdk": run_up_sdk,
    "fs_baseline": run_fs_baseline,
    "fs_feed": run_fs_feed,
    "fs_sdk": run_fs_sdk,
}
