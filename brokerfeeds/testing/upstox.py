"""A local Upstox: the portfolio-stream authorize endpoint, the feed socket and REST books.

Behaves as docs/upstox.md describes:

* ``GET /v2/feed/portfolio-stream-feed/authorize?update_types=...`` checks the bearer
  token and mints a single-use ``authorized_redirect_uri``
  (``ws://127.0.0.1:<port>/upstox-developer-api/order-updates/feed?requestId=..&code=..``,
  or on ``public_ws_url`` when the simulator sits behind a TLS front); the socket accepts
  each code once and refuses a reused or unknown code (403, or ``refuse_status``).
* The official SDK's way in (upstox-python-sdk ``upstox_client/feeder/portfolio_data_feeder.py``):
  a socket handshake on ``/v2/feed/portfolio-stream-feed?update_types=...`` with the bearer
  token, answered with a 302 to a freshly minted one-time URI.
* The socket sends one flat JSON text frame per update, only for the ``update_types``
  the code was minted for (default ``order``), never expects a client frame, and sends
  WebSocket pings every ``ping_every`` seconds.
* REST: order book (``/v2/order/retrieve-all``), positions, holdings, GTT orders and the
  user profile, in Upstox's ``{"status": "success", "data": ...}`` envelope; errors use
  the ``{"status": "error", "errors": [...]}`` envelope with both spellings.
* The books change even while no client is connected, so tests can check the
  reconciliation after a reconnect.

Faults: :meth:`drop`, :meth:`close_all` (1000, 1011, ...), :meth:`stall` / :meth:`resume`,
:meth:`expire_token` (401 on the next authorize; optionally drop sockets at once),
:meth:`rate_limit` (429 with ``Retry-After`` on authorize), :meth:`reject_handshakes`,
:meth:`redirect_next` (a 302 to a given, e.g. spent, one-time URI),
:meth:`send_unknown` (an unknown ``update_type``) and :meth:`send_malformed`.

    with UpstoxSimulator() as sim:
        feed = UpstoxFeed(access_token=sim.token, rest_url=sim.rest_url)
        ...
        order_id = sim.place_order("NHPC-EQ", "BUY", 10, 92.5)
        sim.fill(order_id, 4, 92.45)
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import itertools
import json
import time
import uuid
import zlib
from decimal import Decimal
from http import HTTPStatus
from typing import Any, Dict, List, Optional, Set, Tuple, Union

from ._server import Client, HttpRequest, Refusal, SimulatorBase, query_of

__all__ = ["UpstoxSimulator"]

_ORDER_IDS = itertools.count(240221025997024)
_GTT_IDS = itertools.count(24002)
_IST = _dt.timezone(_dt.timedelta(hours=5, minutes=30))
FEED_PATH = "/upstox-developer-api/order-updates/feed"
#: The socket URL that answers 302 to a one-time ``FEED_PATH`` URI (what the official SDK opens).
REDIRECT_PATH = "/v2/feed/portfolio-stream-feed"
#: The keys of the authorize reply's ``data`` (current spelling, deprecated spelling).
AUTHORIZE_FIELDS = ("authorized_redirect_uri", "authorizedRedirectUri")


def _now_ist() -> str:
    return _dt.datetime.now(_IST).strftime("%Y-%m-%d %H:%M:%S")


def _error(code: str, message: str) -> Dict[str, Any]:
    """Upstox's error envelope, with the current and the deprecated spellings."""
    return {"status": "error", "errors": [{
        "error_code": code, "message": message, "property_path": None, "invalid_value": None,
        "errorCode": code, "propertyPath": None, "invalidValue": None}]}


def _num(value: Decimal) -> Union[int, float]:
    return int(value) if value == value.to_integral_value() else float(value)


class UpstoxSimulator(SimulatorBase):
    """A faithful local stand-in for Upstox's portfolio stream feed and REST API."""

    def __init__(
        self,
        token: str = "eyJ0eXAiOiJKV1Qi.sim-access-token.4f1c2e9a7b",
        user_id: str = "7AB123",
        ping_every: Optional[float] = 5.0,
        public_ws_url: Optional[str] = None,
        authorize_fields: Tuple[str, ...] = AUTHORIZE_FIELDS,
        refuse_status: int = 403,
        **kwargs: Any,
    ) -> None:
        """``public_ws_url`` (``scheme://host[:port]``) is the base of the one-time URIs the
        simulator mints (default its own ``ws://`` address): Upstox's are ``wss://``, and
        websocket-client keeps the dispatcher chosen for the *first* URL across a redirect
        (``websocket/_app.py``: ``create_dispatcher(..., parse_url(self.url)[3])``), so a
        client that starts on ``wss://`` (the official SDK) needs a ``wss://`` redirect target.
        ``authorize_fields`` are the keys of the authorize reply's ``data``: Upstox documents
        ``authorized_redirect_uri`` and calls ``authorizedRedirectUri`` deprecated, yet the
        official SDK reads only the camelCase one (``upstox_client/models/
        websocket_auth_redirect_response_data.py``), so which the live server sends is open:
        both by default, either alone on request. ``refuse_status`` answers a reused or
        unknown code (undocumented: 403 by default, 401 possible)."""
        super().__init__(**kwargs)
        unknown = set(authorize_fields) - set(AUTHORIZE_FIELDS)
        if unknown or not authorize_fields:
            raise ValueError(f"authorize_fields must be some of {AUTHORIZE_FIELDS}, got {authorize_fields!r}")
        self.token = token
        self.user_id = user_id
        self.ping_every = ping_every  # server WebSocket pings (None: never ping)
        self.public_ws_url = public_ws_url.rstrip("/") if public_ws_url else None
        self.authorize_fields = tuple(authorize_fields)
        self.refuse_status = refuse_status
        self._redirect_next: List[str] = []  # URIs the next 302s point at instead of fresh ones
        self.valid_tokens: Set[str] = {token}
        self.codes: Dict[str, Tuple[str, ...]] = {}  # unused code -> update_types
        self.issued_codes: List[str] = []  # every code minted, in order
        self.used_codes: List[str] = []  # every code a socket was opened with
        self.authorizations = 0  # authorize calls answered 200
        self.authorize_calls = 0  # every authorize call, whatever the answer
        self.authorize_times: List[float] = []  # monotonic time of every authorize call
        self.reused_codes = 0  # handshakes refused for a reused or unknown code
        self.pings_sent = 0
        self._rate_limited = 0
        self._retry_after: Optional[float] = None
        self._reject_handshakes = 0
        self.orders: Dict[str, Dict[str, Any]] = {}
        self.positions: Dict[Tuple[str, str], Dict[str, Any]] = {}
        self.holdings: Dict[str, Dict[str, Any]] = {}
        self.gtt_orders: Dict[str, Dict[str, Any]] = {}
        self.last_prices: Dict[str, float] = {}
        self.route("GET", "/v2/feed/portfolio-stream-feed/authorize", self._authorize)
        self.route("GET", "/v3/feed/portfolio-stream-feed/authorize",
                   lambda r: (404, _error("UDAPI10000", "This request is not supported by Upstox API")))
        self.route("GET", "/v2/order/retrieve-all", self._authed(lambda r: list(self.orders.values())))
        self.route("GET", "/v2/portfolio/short-term-positions", self._authed(self._positions_rest))
        self.route("GET", "/v2/portfolio/long-term-holdings", self._authed(self._holdings_rest))
        self.route("GET", "/v3/order/gtt", self._authed(lambda r: list(self.gtt_orders.values())))
        self.route("GET", "/v2/user/profile", self._authed(lambda r: {
            "email": "trader@example.com", "exchanges": ["NSE", "NFO", "BSE"], "products": ["D", "I"],
            "broker": "UPSTOX", "user_id": self.user_id, "user_name": "Sim Trader", "user_type": "individual",
            "poa": False, "is_active": True}))

    # ----------------------------------------------------------------- addresses
    @property
    def rest_url(self) -> str:
        """The REST base URL to give ``UpstoxFeed(rest_url=...)``."""
        return self.rest_base

    @property
    def feed_url(self) -> str:
        """The socket endpoint the minted one-time URIs point at (without a code)."""
        return (self.public_ws_url or self.ws_base) + FEED_PATH

    # ----------------------------------------------------------------- faults
    def expire_token(self, drop: bool = False, new_token: Optional[str] = None) -> None:
        """The access token dies: later authorize / REST calls answer 401 ``UDAPI100050``.

        ``drop`` also cuts the open sockets (one of the two plausible real behaviours;
        the other keeps them open until the next reconnect). ``new_token`` becomes valid.
        """
        with self.lock:
            self.valid_tokens.discard(self.token)
            if new_token is not None:
                self.valid_tokens.add(new_token)
                self.token = new_token
        if drop:
            self.drop()

    def rate_limit(self, times: int = 1, retry_after: Optional[float] = 1.0) -> None:
        """Answer the next ``times`` authorize calls with 429 ``UDAPI10005`` (and ``Retry-After``)."""
        with self.lock:
            self._rate_limited = times
            self._retry_after = retry_after

    def reject_handshakes(self, times: int = 1) -> None:
        """Refuse the next ``times`` socket handshakes (``refuse_status``) although their codes are fresh."""
        with self.lock:
            self._reject_handshakes = times

    def redirect_next(self, uri: str) -> None:
        """The next 302 from ``REDIRECT_PATH`` points at ``uri`` (e.g. a one-time URI already
        spent) instead of a freshly minted one: how a client is made to reuse a code."""
        with self.lock:
            self._redirect_next.append(uri)

    def send_unknown(self) -> int:
        """A frame with an ``update_type`` nobody knows (to every client)."""
        return self.broadcast({"update_type": "margin_alert", "user_id": self.user_id, "level": "warning"})

    def send_malformed(self) -> int:
        """A text frame that is not JSON (to every client)."""
        return self.send_raw('{"update_type":"order","order_id":')

    # ----------------------------------------------------------------- scripting: orders
    def place_order(self, symbol: str, side: str, quantity: int, price: Optional[float] = None,
                    order_type: Optional[str] = None, instrument_key: Optional[str] = None,
                    product: str = "D", exchange: str = "NSE") -> str:
        """A new order: ``put order req received`` → ``validation pending`` → ``open pending``
        → ``open`` (pushed to ``order`` subscribers); returns its id."""
        order_id = str(next(_ORDER_IDS))
        key = instrument_key or f"NSE_EQ|INE{zlib.crc32(symbol.encode()) % 10**7:07d}01"
        order = {
            "update_type": "order", "user_id": self.user_id, "userId": self.user_id, "exchange": exchange,
            "instrument_token": key, "instrument_key": key, "trading_symbol": symbol, "tradingsymbol": symbol,
            "product": product, "order_type": order_type or ("LIMIT" if price is not None else "MARKET"),
            "average_price": 0, "price": price or 0, "trigger_price": 0, "quantity": quantity,
            "disclosed_quantity": 0, "pending_quantity": quantity, "transaction_type": side.upper(),
            "order_ref_id": str(uuid.uuid4().int)[:14], "exchange_order_id": "", "parent_order_id": None,
            "validity": "DAY", "status": "put order req received", "is_amo": False, "variety": "SIMPLE",
            "tag": None, "exchange_timestamp": None, "status_message": "", "order_id": order_id,
            "order_request_id": "1", "order_timestamp": _now_ist(), "filled_quantity": 0, "guid": None,
            "placed_by": self.user_id, "status_message_raw": None,
        }
        self.orders[order_id] = order
        for status in ("put order req received", "validation pending", "open pending", "open"):
            order["status"] = status
            if status == "open":
                order["exchange_order_id"] = f"1100000{order_id[-8:]}"
                order["exchange_timestamp"] = _now_ist()
            self._push_order(order)
        return order_id

    def fill(self, order_id: str, quantity: int, price: float) -> None:
        """Fill ``quantity`` of an order at ``price``: the order update (``open`` or
        ``complete``) and the position update that follows."""
        order = self.orders[str(order_id)]
        before = Decimal(str(order["filled_quantity"]))
        avg_before = Decimal(str(order["average_price"] or 0))
        qty = Decimal(str(quantity))
        filled = before + qty
        avg = (avg_before * before + Decimal(str(price)) * qty) / filled
        order.update({
            "filled_quantity": _num(filled),
            "pending_quantity": _num(Decimal(str(order["quantity"])) - filled),
            "average_price": float(round(avg, 4)),
            "status": "complete" if filled >= Decimal(str(order["quantity"])) else "open",
            "exchange_timestamp": _now_ist(),
        })
        self._push_order(order)
        self._apply_fill(order, qty, Decimal(str(price)))

    def modify(self, order_id: str, price: Optional[float] = None, quantity: Optional[int] = None) -> None:
        """Modify a working order: ``modify pending`` → ``open`` with the new terms."""
        order = self.orders[str(order_id)]
        order["order_request_id"] = str(int(order["order_request_id"]) + 1)
        order["status"] = "modify pending"
        self._push_order(order)
        if price is not None:
            order["price"] = price
        if quantity is not None:
            order["quantity"] = quantity
            order["pending_quantity"] = quantity - int(order["filled_quantity"])
        order["status"] = "open"
        self._push_order(order)

    def cancel(self, order_id: str) -> None:
        """Cancel a working order: ``cancel pending`` → ``cancelled``."""
        order = self.orders[str(order_id)]
        order["status"] = "cancel pending"
        self._push_order(order)
        order["status"] = "cancelled"
        order["status_message"] = "Cancelled by user"
        self._push_order(order)

    def reject(self, order_id: str, message: str = "Insufficient funds") -> None:
        """Reject an order (``rejected`` with ``status_message``)."""
        order = self.orders[str(order_id)]
        order.update({"status": "rejected", "status_message": message, "status_message_raw": message,
                      "pending_quantity": 0})
        self._push_order(order)

    def push_order(self, order_id: str, **changes: Any) -> None:
        """Change any fields of an order and push the result (duplicates included)."""
        order = self.orders[str(order_id)]
        order.update(changes)
        self._push_order(order)

    # ----------------------------------------------------------------- scripting: portfolio
    def set_last_price(self, instrument_key: str, price: float) -> None:
        """The market price REST positions and holdings use for P&L."""
        self.last_prices[instrument_key] = price

    def set_position(self, instrument_key: str, symbol: str, quantity: int, buy_price: float,
                     product: str = "D", push: bool = True) -> None:
        """Set a day position outright (and push a ``position`` update)."""
        position = self._position(instrument_key, symbol, product)
        position.update({"quantity": quantity, "day_buy_quantity": max(quantity, 0),
                         "day_buy_price": buy_price, "buy_price": buy_price,
                         "day_buy_value": round(max(quantity, 0) * buy_price, 2),
                         "buy_value": round(max(quantity, 0) * buy_price, 2)})
        if push:
            self._push("position", self._ws_position(position))

    def set_holding(self, instrument_key: str, symbol: str, quantity: int, average_price: float,
                    isin: Optional[str] = None, push: bool = True) -> None:
        """Set a long-term holding (and push a ``holding`` update)."""
        holding = {
            "update_type": "holding", "instrument_token": instrument_key, "instrument_key": instrument_key,
            "average_price": average_price, "isin": isin or instrument_key.split("|")[-1],
            "cnc_used_quantity": 0, "collateral_quantity": 0, "collateral_type": "WC",
            "collateral_update_quantity": 0, "company_name": f"{symbol} LTD", "haircut": 0.21, "product": "D",
            "quantity": quantity, "t1_quantity": 0, "exchange": "NSE", "trading_symbol": symbol,
        }
        if quantity:
            self.holdings[instrument_key] = holding
        else:
            self.holdings.pop(instrument_key, None)
        if push:
            ws = {k: v for k, v in holding.items() if k != "trading_symbol"}  # the feed has no symbol
            self._push("holding", ws)

    def place_gtt(self, instrument_key: str, quantity: int, side: str, trigger_price: float,
                  target: Optional[float] = None, stoploss: Optional[float] = None,
                  symbol: Optional[str] = None) -> str:
        """A new GTT order (SINGLE, or MULTIPLE with target/stoploss rules); returns its id."""
        gtt_id = f"GTT-CU2527020{next(_GTT_IDS):07d}"
        opposite = "SELL" if side.upper() == "BUY" else "BUY"
        rules = [{"strategy": "ENTRY", "status": "PENDING", "trigger_type": "BELOW", "trigger_price": trigger_price,
                  "transaction_type": side.upper(), "message": None, "order_id": None, "trailing_gap": None}]
        for strategy, price in (("TARGET", target), ("STOPLOSS", stoploss)):
            if price is not None:
                rules.append({"strategy": strategy, "status": "PENDING", "trigger_type": "IMMEDIATE",
                              "trigger_price": price, "transaction_type": opposite, "message": None,
                              "order_id": None, "trailing_gap": None})
        now_us = int(time.time() * 1_000_000)
        gtt = {"update_type": "gtt_order", "type": "MULTIPLE" if len(rules) > 1 else "SINGLE",
               "exchange": "NSE_EQ", "instrument_token": instrument_key, "quantity": quantity, "product": "D",
               "gtt_order_id": gtt_id, "expires_at": now_us + 365 * 86400 * 1_000_000, "created_at": now_us,
               "rules": rules}
        if symbol:
            gtt["trading_symbol"] = symbol
        self.gtt_orders[gtt_id] = gtt
        self._push("gtt_order", gtt)
        return gtt_id

    def set_gtt_rule(self, gtt_order_id: str, strategy: str, status: str, order_id: Optional[str] = None,
                     message: Optional[str] = None) -> None:
        """Move one rule of a GTT order (``ENTRY`` / ``TARGET`` / ``STOPLOSS``) to ``status``."""
        gtt = self.gtt_orders[gtt_order_id]
        for rule in gtt["rules"]:
            if rule["strategy"] == strategy.upper():
                rule["status"] = status
                if order_id is not None:
                    rule["order_id"] = order_id
                if message is not None:
                    rule["message"] = message
        self._push("gtt_order", gtt)

    def subscribers(self, update_type: str) -> int:
        """How many connected clients receive ``update_type``."""
        return sum(1 for c in list(self.clients) if update_type in c.info.get("types", ()))

    # ----------------------------------------------------------------- REST
    def _token_ok(self, request: HttpRequest) -> bool:
        auth = request.header("Authorization") or ""
        with self.lock:
            return auth.startswith("Bearer ") and auth[7:] in self.valid_tokens

    def _authed(self, data: Any) -> Any:
        def handler(request: HttpRequest) -> Tuple[int, Any]:
            if not self._token_ok(request):
                return 401, _error("UDAPI100050", "Invalid token used to access API")
            return 200, {"status": "success", "data": data(request)}
        return handler

    def _authorize(self, request: HttpRequest) -> Tuple[int, Any, Dict[str, str]]:
        with self.lock:
            self.authorize_calls += 1
            self.authorize_times.append(time.monotonic())
            if self._rate_limited > 0:
                self._rate_limited -= 1
                headers = {} if self._retry_after is None else {"Retry-After": f"{self._retry_after:g}"}
                return 429, _error("UDAPI10005", "Too Many Request Sent"), headers
        if not self._token_ok(request):
            return 401, _error("UDAPI100050", "Invalid token used to access API"), {}
        raw = request.query.get("update_types", "")
        types = tuple(t for t in raw.replace("%2C", ",").split(",") if t) or ("order",)
        unknown = [t for t in types if t not in ("order", "position", "holding", "gtt_order")]
        if unknown:
            return 400, _error("UDAPI1126", f"Invalid update_types: {','.join(unknown)}"), {}
        code = str(uuid.uuid4())
        uri = f"{self.feed_url}?requestId={uuid.uuid4()}&code={code}"
        with self.lock:
            self.codes[code] = types
            self.issued_codes.append(code)
            self.authorizations += 1
        return 200, {"status": "success", "data": {field: uri for field in self.authorize_fields}}, {}

    def _position(self, instrument_key: str, symbol: str, product: str) -> Dict[str, Any]:
        key = (instrument_key, product)
        position = self.positions.get(key)
        if position is None:
            position = self.positions[key] = {
                "instrument_token": instrument_key, "instrument_key": instrument_key, "trading_symbol": symbol,
                "tradingsymbol": symbol, "exchange": instrument_key.split("|")[0], "product": product,
                "multiplier": 1, "average_price": 0, "quantity": 0, "overnight_quantity": 0,
                "buy_value": 0, "sell_value": 0, "buy_price": 0, "sell_price": 0,
                "day_buy_value": 0, "day_buy_price": 0, "day_buy_quantity": 0,
                "day_sell_value": 0, "day_sell_price": 0, "day_sell_quantity": 0,
                "overnight_buy_amount": 0, "overnight_buy_quantity": 0,
                "overnight_sell_amount": 0, "overnight_sell_quantity": 0,
            }
        return position

    def _apply_fill(self, order: Dict[str, Any], qty: Decimal, price: Decimal) -> None:
        key = order["instrument_key"]
        position = self._position(key, order["trading_symbol"], order["product"])
        side = "buy" if order["transaction_type"] == "BUY" else "sell"
        count = Decimal(str(position[f"day_{side}_quantity"])) + qty
        value = Decimal(str(position[f"day_{side}_value"])) + qty * price
        position[f"day_{side}_quantity"] = _num(count)
        position[f"day_{side}_value"] = float(round(value, 2))
        position[f"day_{side}_price"] = float(round(value / count, 4))
        position[f"{side}_value"] = position[f"day_{side}_value"]
        position[f"{side}_price"] = position[f"day_{side}_price"]
        position["quantity"] = position["day_buy_quantity"] - position["day_sell_quantity"]
        self.last_prices.setdefault(key, float(price))
        self._push("position", self._ws_position(position))

    @staticmethod
    def _ws_position(position: Dict[str, Any]) -> Dict[str, Any]:
        """The feed's position update: no symbol, no P&L, no last price (as Upstox sends)."""
        ws = {k: v for k, v in position.items() if k not in ("trading_symbol", "tradingsymbol")}
        ws["update_type"] = "position"
        return ws

    def _positions_rest(self, request: HttpRequest) -> List[Dict[str, Any]]:
        rows = []
        for position in self.positions.values():
            row = dict(position)
            quantity = Decimal(str(row["quantity"]))
            last = Decimal(str(self.last_prices.get(row["instrument_key"], 0)))
            buy, sell = Decimal(str(row["buy_value"])), Decimal(str(row["sell_value"]))
            matched = min(Decimal(str(row["day_buy_quantity"])), Decimal(str(row["day_sell_quantity"])))
            realised = matched * (Decimal(str(row["sell_price"] or 0)) - Decimal(str(row["buy_price"] or 0))) \
                if matched else Decimal(0)
            pnl = sell - buy + quantity * last
            row.update({"last_price": float(last), "close_price": float(last), "value": float(buy - sell),
                        "realised": float(round(realised, 2)), "unrealised": float(round(pnl - realised, 2)),
                        "pnl": float(round(pnl, 2))})
            rows.append(row)
        return rows

    def _holdings_rest(self, request: HttpRequest) -> List[Dict[str, Any]]:
        rows = []
        for holding in self.holdings.values():
            row = {k: v for k, v in holding.items() if k != "update_type"}
            row["tradingsymbol"] = row["trading_symbol"]
            last = self.last_prices.get(row["instrument_key"], row["average_price"])
            row.update({"last_price": last, "close_price": last,
                        "pnl": round((last - row["average_price"]) * row["quantity"], 2),
                        "day_change": 0, "day_change_percentage": 0})
            rows.append(row)
        return rows

    # ----------------------------------------------------------------- the socket
    def check_handshake(self, request: Any) -> Union[Dict[str, Any], Refusal]:
        path = request.path.split("?")[0]
        if path == REDIRECT_PATH:
            # What the official SDK opens: authorized like the REST call, answered with a 302
            # to a freshly minted one-time URI (websocket-client follows it).
            authed = HttpRequest("GET", path, query_of(request),
                                 {"Authorization": request.headers.get("Authorization", "")}, b"")
            with self.lock:
                replay = self._redirect_next.pop(0) if self._redirect_next else None
            if replay is not None:
                if not self._token_ok(authed):
                    return 401, "Unauthorized"
                return 302, "", {"Location": replay}
            status, body, _ = self._authorize(authed)
            if status != 200:
                return status, "Unauthorized" if status == 401 else json.dumps(body)
            return 302, "", {"Location": body["data"][self.authorize_fields[0]]}
        if path != FEED_PATH:
            return 404, "Not Found"
        code = query_of(request).get("code", "")
        with self.lock:
            if self._reject_handshakes > 0:
                self._reject_handshakes -= 1
                return self._refusal()
            types = self.codes.pop(code, None)
            if types is None:
                self.reused_codes += 1
                return self._refusal()
            self.used_codes.append(code)
        return {"types": set(types), "code": code}

    def _refusal(self) -> Refusal:
        return self.refuse_status, HTTPStatus(self.refuse_status).phrase

    async def serve_client(self, client: Client) -> None:
        pinger = [asyncio.ensure_future(self._pings(client))] if self.ping_every else []
        await self.read_messages(client, tasks=pinger)  # Upstox expects nothing from clients

    async def _pings(self, client: Client) -> None:
        assert self.ping_every is not None
        while True:
            await asyncio.sleep(self.ping_every)
            if client.stalled:
                continue
            try:
                await client.connection.ping()
            except Exception:  # noqa: BLE001 - the client went away
                return
            self.pings_sent += 1

    def _push_order(self, order: Dict[str, Any]) -> None:
        self._push("order", dict(order))

    def _push(self, update_type: str, message: Dict[str, Any]) -> None:
        """Send ``message`` to every client whose code covers ``update_type``."""
        if self._loop is None:
            return
        message = {"update_type": update_type, **{k: v for k, v in message.items() if k != "update_type"}}

        async def push() -> None:
            for client in list(self.clients):
                if update_type in client.info.get("types", ()):
                    await self.send_to(client, message)

        self.call(push())
