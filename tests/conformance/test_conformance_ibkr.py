"""Conformance: code written by others for the real IBKR gateway, unmodified, against IbkrSimulator.

Our simulator and our adapter were written from the same beliefs, so a mistake they share is
invisible to our own tests. These run clients we did not write:

* ibind's ``IbkrWsClient`` (github.com/Voyz/ibind, the well-used peer client), only its URLs
  and ``cacert`` pointed at the simulator: every subscription must be confirmed and the
  events it delivers must carry what the simulator did;
* the client of IBKR Campus's WebSocket lesson
  (interactivebrokers.com/campus/trading-lessons/websockets/): a bare
  ``websocket.WebSocketApp(url=..., on_open=..., on_message=...)`` with no cookie, run with
  ``sslopt={"cert_reqs": ssl.CERT_NONE}``, that sends ``smd+265598+{"fields":[...]}`` and
  ``sor+{}`` and reads the answers. (The simulator speaks plain ``ws://``, so ``sslopt`` is
  there as in the lesson but has nothing to do.)

* ibind's OAuth 1.0a client (``IbkrClient(use_oauth=True, oauth_config=OAuth1aConfig(...))``,
  its live session token handshake, brokerage session and tickler, then ``IbkrWsClient``
  with ``use_oauth=True``) against the simulator's OAuth mode: only its URLs point at the
  simulator (and its keys are the simulator's test keys).

What they revealed was fixed in the simulator (and the adapter where it shared the belief):
a socket without cookie was refused; ``ssd`` had no ``AccountCode`` row (ibind's router needs it
to name the account: no event, the subscription never confirmed); an ``smd`` subscription to
an instrument without a tick yet went unanswered (ibind re-sent it every 5 s). ibind's OAuth
client sends ``Host: api.ibkr.com`` wherever it connects: the simulator's signature check
takes the URL as it knows itself, as IBKR does, not from the ``Host`` header.
"""

from __future__ import annotations

import json
import os
import ssl
import threading
import time
from typing import Any, Callable, Dict, List

import pytest

from brokerfeeds.testing import IbkrSimulator
from helpers import official_client, wait_until

# ibind logs to daily files in the temp folder unless told otherwise (read when it is imported).
os.environ.setdefault("IBIND_LOG_TO_FILE", "False")


class Received:
    """What a client handed to its user, by kind, thread-safely."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items: Dict[str, List[Any]] = {}

    def add(self, kind: str) -> Callable[[Any], None]:
        def record(item: Any) -> None:
            with self._lock:
                self.items.setdefault(kind, []).append(item)
        return record

    def of(self, kind: str) -> List[Any]:
        with self._lock:
            return list(self.items.get(kind, ()))


def test_ibind_ws_client_confirms_every_subscription_and_receives_the_events() -> None:
    ibind = official_client("ibind")
    from ibind import events
    from ibind.subscriptions import (AccountSummarySubscription, MarketDataSubscription, OrdersSubscription,
                                     PnlSubscription, TradesSubscription)

    with IbkrSimulator(hb_interval=1.0) as sim:
        earlier = sim.place_order("AAPL", "BUY", 10, 190.0, coid="earlier-aapl")
        sim.fill(earlier, 4, 190.0)  # history for the str subscription's first frame
        got = Received()
        sink = ibind.CallbackSink()
        for kind, cls in (("orders", events.Orders), ("trades", events.Trades), ("pnl", events.Pnl),
                          ("market", events.MarketData), ("summary", events.AccountSummary)):
            sink.on(cls, got.add(kind))
        rest = ibind.IbkrClient(url=sim.rest_url + "/", cacert=False, auto_register_shutdown=False)
        client = ibind.IbkrWsClient(account_id=sim.account, url=sim.url, ibkr_client=rest, cacert=False, sink=sink)
        try:
            assert client.start(), "ibind never saw the session authenticated"
            handles = [client.subscribe(OrdersSubscription()), client.subscribe(TradesSubscription()),
                       client.subscribe(PnlSubscription()),
                       client.subscribe(MarketDataSubscription(conid="265598", fields=["31", "84", "86"])),
                       client.subscribe(AccountSummarySubscription(account_id=sim.account))]
            assert client.wait_all(handles, timeout_each=15) == [], "subscriptions ibind could not confirm"
            assert all(h.active for h in handles)

            # First frames: the order book, the execution history, P&L, the account summary.
            wait_until(lambda: got.of("orders") and got.of("trades") and got.of("pnl") and got.of("summary"),
                       timeout=10, message=f"ibind received {sorted(got.items)}")
            first_orders = got.of("orders")[0].data["args"]
            assert [(o["orderId"], o["status"]) for o in first_orders] == [(int(earlier), "Submitted")]
            history = got.of("trades")[0].data["args"]
            assert [(e["order_ref"], e["size"]) for e in history] == [("earlier-aapl", "4")]
            core = got.of("pnl")[0].data["args"][f"{sim.account}.Core"]
            assert core["nl"] == 100000.0 and set(core) <= {"rowType", "dpl", "nl", "upl", "el", "mv"}
            summary = got.of("summary")[0]
            assert summary.account_id == sim.account
            assert summary.data["NetLiquidation"] == {"value": "100000"}

            # Live events.
            sim.tick(265598, last="190.10", bid="190.05", ask="190.15")
            placed = sim.place_order("MSFT", "SELL", 5, 400.0)
            sim.fill(placed, 5, 400.5)
            sim.set_pnl(dpl=12.5, mv=2500.0)
            wait_until(lambda: any(m.data.get("last_price") == "190.10" for m in got.of("market")), timeout=10)
            quote = [m for m in got.of("market") if m.data.get("last_price") == "190.10"][0]
            assert quote.conid == "265598" and quote.data["bid_price"] == "190.05"
            wait_until(lambda: any(o.get("status") == "Filled" and o.get("orderId") == int(placed)
                                   for e in got.of("orders") for o in e.data["args"]), timeout=10)
            wait_until(lambda: any(e.get("symbol") == "MSFT" for t in got.of("trades") for e in t.data["args"]),
                       timeout=10)
            fill = [e for t in got.of("trades") for e in t.data["args"] if e.get("symbol") == "MSFT"][0]
            assert fill["order_ref"] == sim.orders[placed]["order_ref"] != placed
            wait_until(lambda: any(p.data["args"].get(f"{sim.account}.Core", {}).get("dpl") == 12.5
                                   for p in got.of("pnl")), timeout=10)
        finally:
            client.shutdown()
            rest.close()


def test_the_ibkr_campus_lesson_client_receives_orders_and_market_data() -> None:
    websocket = pytest.importorskip("websocket")
    with IbkrSimulator(hb_interval=1.0) as sim:
        order_id = sim.place_order("AAPL", "BUY", 100, 190.5)
        sim.tick(265598, last="190.10", bid="190.05", ask="190.15")
        messages: List[Dict[str, Any]] = []

        # The lesson's shape: callbacks, no cookie, certificate checks off; it waits a moment
        # after the socket opens, then sends its requests.
        def on_message(ws: Any, message: Any) -> None:
            text = message.decode("utf-8") if isinstance(message, bytes) else message
            if text.startswith("{"):
                messages.append(json.loads(text))

        def on_open(ws: Any) -> None:
            time.sleep(0.2)
            ws.send('smd+265598+{"fields":["31","84","86"]}')
            ws.send("sor+{}")

        app = websocket.WebSocketApp(url=sim.url, on_open=on_open, on_message=on_message)
        runner = threading.Thread(target=app.run_forever, kwargs={"sslopt": {"cert_reqs": ssl.CERT_NONE}},
                                  name="campus-lesson", daemon=True)
        runner.start()
        try:
            wait_until(lambda: any(m.get("topic") == "sor" for m in messages)
                       and any(m.get("topic") == "smd+265598" for m in messages), timeout=10,
                       message=f"the lesson client got only {[m.get('topic') for m in messages]}")
        finally:
            # The gateway goes away (app.close() from another thread can leave run_forever
            # blocked in select on the socket it closed).
            sim.drop()
            runner.join(5)
        assert not runner.is_alive()
        orders = [o for m in messages if m.get("topic") == "sor" for o in m["args"]]
        assert [(o["orderId"], o["ticker"], o["status"]) for o in orders] == [(int(order_id), "AAPL", "Submitted")]
        quote = [m for m in messages if m.get("topic") == "smd+265598"][0]
        assert (quote["31"], quote["84"], quote["86"]) == ("190.10", "190.05", "190.15")
        assert sim.rejected == 0 and sim.connections == 1


def test_ibind_oauth_client_handshakes_and_subscribes_to_orders() -> None:
    ibind = official_client("ibind")
    pytest.importorskip("Crypto", reason="ibind's OAuth needs pycryptodome: pip install 'ibind[oauth]'")
    pytest.importorskip("cryptography")
    from ibind import events
    from ibind.oauth.oauth1a import OAuth1aConfig
    from ibind.subscriptions import OrdersSubscription

    with IbkrSimulator(hb_interval=1.0, oauth=True) as sim:
        creds = sim.oauth_credentials()
        earlier = sim.place_order("AAPL", "BUY", 10, 190.0)
        config = OAuth1aConfig(
            oauth_rest_url=sim.rest_url + "/", access_token=creds.access_token,
            access_token_secret=creds.access_token_secret, consumer_key=creds.consumer_key,
            dh_prime=creds.dh_prime, encryption_key=creds.encryption_key, signature_key=creds.signature_key,
            dh_generator="2", realm=creds.realm, init_oauth=True, init_brokerage_session=True,
            maintain_oauth=True, shutdown_oauth=True)
        got = Received()
        sink = ibind.CallbackSink()
        sink.on(events.Orders, got.add("orders"))
        rest = ibind.IbkrClient(use_oauth=True, oauth_config=config, auto_register_shutdown=False)
        client = ibind.IbkrWsClient(account_id=sim.account, url=sim.url, ibkr_client=rest, use_oauth=True,
                                    access_token=creds.access_token, cacert=False, sink=sink)
        try:
            # The handshake: one live session token, every signed call accepted, the brokerage
            # session opened (ibind competes, as IBKR's samples do).
            assert sim.oauth.lst_issued == 1 and sim.oauth.refusals == []
            assert sim.ssodh_inits == [{"publish": True, "compete": True}] and sim.authenticated
            assert client.start(), "ibind never saw the session authenticated"
            handle = client.subscribe(OrdersSubscription())
            assert client.wait_all([handle], timeout_each=15) == [], "ibind could not confirm its orders subscription"
            handshake = sim.handshakes[-1]
            assert handshake["path"] == f"/v1/api/ws?oauth_token={creds.access_token}"
            assert handshake["cookie"] == f"api={sim.session}" and handshake["user_agent"]
            wait_until(lambda: got.of("orders"), timeout=10)
            assert [o["orderId"] for o in got.of("orders")[0].data["args"]] == [int(earlier)]
            placed = sim.place_order("MSFT", "SELL", 5, 400.0)
            sim.fill(placed, 5, 400.5)
            wait_until(lambda: any(o.get("status") == "Filled" and o.get("orderId") == int(placed)
                                   for e in got.of("orders") for o in e.data["args"]), timeout=10)
            assert sim.oauth.refusals == [] and sim.oauth.accepted >= 3
        finally:
            client.shutdown()
            rest.close()  # ibind's OAuth shutdown: stops its tickler, POST /logout
        assert not sim.authenticated
