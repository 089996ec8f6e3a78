"""Proof from the other side: the official Firstock SDK, unmodified, against FirstockSimulator.

The client is ``firstock`` (PyPI, the ``conformance`` extra); the tests skip when it is
absent. How it is pointed at the simulator, and why this way:

* Socket: ``Firstock.initialize_websockets(user_id, model, config)`` takes ``scheme``,
  ``host`` and ``path`` in ``config`` (``firstock/websockets/websockets.py``; the default
  host ``socket.firstock.in/V2`` carries the path's first half), so the socket needs no
  patching at all. ``max_websocket_connection_retries=0`` turns off the SDK's reconnect,
  whose race with ``close_websocket`` would otherwise dial the simulator again after a test
  (docs/firstock.md).
* REST: every endpoint is a module-level constant (``firstock/Variables/enums.py``:
  ``LOGIN = 'https://api.firstock.in/V1/login'`` ...), star-imported into each module that
  posts to it, and read when the call is made. The only patch is that URL: each constant
  that starts with ``https://api.firstock.in/V1`` is set to the simulator's REST base (and
  restored after the test). The SDK's code runs as shipped.
* The SDK keeps its jKey in ``./config.json`` (written by its ``login``, read by the
  socket and REST calls), so each test runs in its own temporary directory.

What the SDK checks of the simulator (and so of our adapter, which shares its beliefs):
login's body (SHA-256 password, ``TOTP``, ``vendorCode``, ``apiKey``) and reply envelope
(``data.susertoken``), parsed with ``ast.literal_eval``, so REST JSON must hold no
``true``/``false``/``null``; the socket query (``userId``, ``jKey``,
``source=developer-api``) with two ``Origin`` headers; the first frame's
``Authentication successful`` / ``Maximum sessions limit`` texts and both refusal styles;
its ``|``-joined subscribe and unsubscribe frames; routing by ``norenordno`` / ``brkname``
(a mid-session ``status``+``message`` notice never reaches a data callback); V2 ticks
keyed by ``EXCH:TOKEN``. The SDK decodes no field of a message, so the field *shapes*
are checked here against the other independent source, the Go SDK
(github.com/the-firstock/firstock-developer-sdk-golang, ``Firstock/models.go`` and
``websocket_functions.go``): order updates decode as ``map[string]string`` (every value a
string), ``orderBook`` rows as ``OrderBookEntry``, ``positionBook`` rows as
``PositionBookData``.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

from brokerfeeds.brokers.firstock import FirstockFeed
from brokerfeeds.errors import SessionLimitError
from brokerfeeds.events import OrderStatus
from brokerfeeds.testing.firstock import FirstockSimulator
from helpers import FAST_RECONNECT, Recorder, official_client, wait_until

official_client("firstock")
from firstock import firstock as sdk  # noqa: E402 - only once the client is known to be there
from firstock.websockets.websockets import Firstock, FirstockWebSocket  # noqa: E402

pytestmark = pytest.mark.timeout(30)

API = "https://api.firstock.in/V1"
#: ``OrderBookEntry`` and ``PositionBookData`` of the Go SDK (``Firstock/models.go``): the
#: JSON names of their fields.
GO_ORDER_BOOK_ENTRY = {
    "averagePrice", "exchange", "fillShares", "lotSize", "orderNumber", "orderTime", "price", "priceType",
    "product", "quantity", "rejectReason", "remarks", "retention", "status", "tickSize", "token",
    "tradingSymbol", "transactionType", "userId",
}
GO_POSITION_BOOK_DATA = {
    "RealizedPNL", "dayBuyAmount", "dayBuyAveragePrice", "dayBuyQuantity", "daySellAveragePrice",
    "daySellQuantity", "exchange", "lotSize", "netAveragePrice", "netQuantity", "netUploadPrice", "product",
    "tickSize", "token", "totalMTM", "totalPNL", "tradingSymbol", "uploadPrice", "userId",
}


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FirstockSimulator]:
    """A simulator, the SDK's REST URLs pointed at it, and a fresh working directory for
    the SDK's ``config.json``."""
    monkeypatch.chdir(tmp_path)
    with FirstockSimulator(ping_every=0.2, pong_deadline=1.0) as simulator:
        for name, module in list(sys.modules.items()):
            if name.split(".")[0] != "firstock" or module is None:
                continue
            for attr, value in list(vars(module).items()):
                if isinstance(value, str) and value.startswith(API):
                    monkeypatch.setattr(module, attr, simulator.rest_url + value[len(API):])
        yield simulator


class Client:
    """One SDK socket and what its callbacks received."""

    def __init__(self, sim: FirstockSimulator, tokens: Optional[List[str]] = None) -> None:
        self.orders: List[Dict[str, Any]] = []
        self.positions: List[Dict[str, Any]] = []
        self.feed: List[Dict[str, Any]] = []
        self._changed = threading.Condition()
        model = FirstockWebSocket(tokens=tokens or [], order_data=self._record(self.orders),
                                  position_data=self._record(self.positions),
                                  subscribe_feed_data=self._record(self.feed))
        config = {"scheme": "ws", "host": sim.ws_base.split("://", 1)[1], "path": sim.ws_path,
                  "max_websocket_connection_retries": 0}
        self.ws, self.error = Firstock.initialize_websockets(sim.user_id, model, config)

    def _record(self, into: List[Dict[str, Any]]) -> Callable[[Dict[str, Any]], None]:
        def record(data: Dict[str, Any]) -> None:
            with self._changed:
                into.append(data)
                self._changed.notify_all()
        return record

    def wait(self, items: List[Dict[str, Any]], predicate: Callable[[Dict[str, Any]], bool]) -> Dict[str, Any]:
        """The first item received that matches ``predicate`` (asserts within 5 s)."""
        with self._changed:
            assert self._changed.wait_for(lambda: any(predicate(i) for i in items), timeout=5), items[-5:]
            return next(i for i in items if predicate(i))

    def close(self) -> None:
        if self.ws is not None:
            assert Firstock.close_websocket(self.ws) is None
            self.ws = None


def login(sim: FirstockSimulator) -> Dict[str, Any]:
    reply = sdk.login(userId=sim.user_id, password=sim.password, TOTP=sim.totp, vendorCode=sim.vendor_code,
                      apiKey=sim.api_key)
    assert isinstance(reply, dict)
    return reply


def test_sdk_logs_in_and_receives_orders_positions_and_v2_ticks(sim: FirstockSimulator) -> None:
    reply = login(sim)
    assert reply["status"] == "success" and reply["data"]["susertoken"] == sim.jkey
    assert json.loads(Path("config.json").read_text()) == {sim.user_id: {"jKey": sim.jkey}}
    body = sim.login_bodies[-1]
    assert body["password"] == hashlib.sha256(sim.password.encode()).hexdigest() and body["TOTP"] == sim.totp

    sim.set_quote("NSE:26000", i_last_traded_price=2532065)
    client = Client(sim, tokens=["NSE:26000"])
    feed = FirstockFeed(sim.user_id, sim.jkey, url=sim.url, rest_url=sim.rest_url, stale_after=2.0,
                        ping_interval=0.5, reconnect=FAST_RECONNECT, order_refresh_interval=0.1)
    rec = Recorder(feed)
    feed.subscribe_quotes("NSE:26000", "NSE:2885")
    try:
        assert client.error is None and client.ws is not None
        assert sim.handshakes[0] == {"userId": sim.user_id, "jKey": sim.jkey, "source": "developer-api"}
        assert len(sim.origin_headers[0]) == 2  # the SDK's origin and websocket-client's own
        feed.start()
        assert feed.wait_connected(5)
        wait_until(lambda: sim.sessions == 2)

        # V2 ticks: one object keyed by EXCH:TOKEN, prices in paise.
        snapshot = client.wait(client.feed, lambda f: "NSE:26000" in f)
        assert set(snapshot) == {"NSE:26000"} and snapshot["NSE:26000"]["i_last_traded_price"] == 2532065
        assert snapshot["NSE:26000"]["c_exch_seg"] == "NSE" and snapshot["NSE:26000"]["c_symbol"] == "26000"
        assert Firstock.subscribe(client.ws, ["NSE:2885|BSE:1"]) is None
        wait_until(lambda: ("subscribe", ["NSE:2885", "BSE:1"]) in sim.sub_frames)
        client.wait(client.feed, lambda f: set(f) == {"NSE:2885", "BSE:1"})
        sim.ticks({"NSE:2885": {"i_last_traded_price": 139700}, "NSE:26000": {"i_last_traded_price": 2532100}})
        tick = client.wait(client.feed, lambda f: "NSE:2885" in f and len(f["NSE:2885"]) == 1)
        assert tick == {"NSE:2885": {"i_last_traded_price": 139700},  # deltas of two instruments, one frame
                        "NSE:26000": {"i_last_traded_price": 2532100}}
        quote = rec.wait_for("quote", lambda q: q.instrument == "NSE:2885" and q.last == Decimal("1397.00"))[0]
        assert quote.raw == tick["NSE:2885"]
        assert Firstock.unsubscribe(client.ws, ["NSE:26000"]) is None
        wait_until(lambda: ("unsubscribe", ["NSE:26000"]) in sim.sub_frames)

        # Orders: routed by norenordno, every value a string (the Go SDK's map[string]string).
        order_id = sim.place_order("RELIANCE-EQ", "B", 10, 1395.40, token="2885")
        sim.fill(order_id, 4, 1395.40)
        sim.fill(order_id, 6, 1395.70, fill_fields=False)
        client.wait(client.orders, lambda o: o["status"] == "COMPLETE")
        mine = [o for o in client.orders if o["norenordno"] == order_id]
        assert [o["status"] for o in mine] == ["ORDER ACK", "PENDING", "OPEN", "OPEN", "COMPLETE"]
        assert all(isinstance(value, str) for o in mine for value in o.values())
        assert mine[3]["fillshares"] == "4" and "fillshares" not in mine[4]
        filled = rec.wait_for("order", lambda o: o.order_id == order_id and o.avg_price is not None
                              and o.status is OrderStatus.FILLED)[0]
        assert filled.filled_quantity == 10 and filled.avg_price == Decimal("1395.58")
        assert [(t.quantity, t.price) for t in rec.wait_for("trade", count=2)] == [
            (4, Decimal("1395.40")), (6, Decimal("1395.70"))]

        # Positions: routed by brkname; the real exchange and token are in child_orders.
        sim.set_position("RELIANCE-EQ", 10, 1395.58, token="2885", ltp=1396.0, rpnl=12.5)
        pushed = client.wait(client.positions, lambda p: p.get("brkname") == "FIRSTOCK")
        assert pushed["exch"] == "EQT" and pushed["child_orders"][0]["token"] == "2885"
        position = rec.wait_for("position", lambda p: p.instrument == "NSE:2885")[0]
        assert position.quantity == 10 and position.realized_pnl == Decimal("12.50")

        # A mid-session notice: the SDK drops status+message frames; no data callback gets it.
        sim.notice("Exchange session will close at 15:30")
        rec.wait_for("notice")
        sim.place_order("IDEA-EQ", "S", 1, 9.5, token="14366")  # sent after the notice
        client.wait(client.orders, lambda o: o["tsym"] == "IDEA-EQ")
        assert not [f for f in client.feed + client.positions if "message" in f]

        # REST, as the SDK reads it (ast.literal_eval), in the Go SDK's row shapes.
        book = sdk.orderBook(sim.user_id)
        assert book["status"] == "success"
        row = next(r for r in book["data"] if r["orderNumber"] == order_id)
        assert set(row) >= GO_ORDER_BOOK_ENTRY
        assert (row["status"], row["fillShares"], row["averagePrice"]) == ("COMPLETE", "10", "1395.58")
        positions = sdk.positionBook(sim.user_id)
        assert positions["status"] == "success" and set(positions["data"][0]) == GO_POSITION_BOOK_DATA
        assert positions["data"][0]["totalPNL"] == "16.70" and positions["data"][0]["RealizedPNL"] == "12.50"
    finally:
        client.close()
        feed.stop()
    wait_until(lambda: sim.sessions == 0)


@pytest.mark.parametrize("style", ["frame", "http"])
def test_sdk_sees_both_refusal_styles(sim: FirstockSimulator, style: str) -> None:
    """A jKey the server no longer accepts: a failed first frame then a close, or HTTP 401
    on the upgrade. The SDK reports either as an error and opens no session."""
    login(sim)
    sim.jkey = sim.jkey[::-1]  # the session ended on the server side
    sim.reject_style = style
    client = Client(sim)
    try:
        assert client.ws is None and client.error is not None
        message = client.error["error"]["message"]
        if style == "frame":
            assert message.startswith("Unexpected authentication response:")
            assert json.loads(message.split(":", 1)[1]) == {"status": "failed", "message": "unauthenticated"}
            assert sim.connections == 1 and sim.rejected == 0
        else:
            assert "401" in message and "Unauthorized" in message
            assert sim.connections == 0 and sim.rejected == 1
        assert sim.sessions == 0 and len(sim.handshakes) == 1
    finally:
        client.close()


def test_sdk_meets_the_session_limit(sim: FirstockSimulator) -> None:
    login(sim)
    clients: List[Client] = []
    try:
        for _ in range(3):
            clients.append(Client(sim))
            assert clients[-1].error is None
        assert sim.sessions == 3
        fourth = Client(sim)
        assert fourth.ws is None
        assert fourth.error == {"error": {"message": "Maximum sessions limit (3) reached"}}
        assert sim.sessions == 3
        feed = FirstockFeed(sim.user_id, sim.jkey, url=sim.url, rest_url=None, reconnect=FAST_RECONNECT)
        try:
            feed.start()
            with pytest.raises(SessionLimitError) as caught:
                feed.wait_connected(5)
            assert str(caught.value).startswith(f"Firstock refused the session: {fourth.error['error']['message']}")
        finally:
            feed.stop()
        clients.pop().close()
        wait_until(lambda: sim.sessions == 2)
        again = Client(sim)  # a freed place can be taken
        clients.append(again)
        assert again.error is None
    finally:
        for client in clients:
            client.close()
    wait_until(lambda: sim.sessions == 0)
