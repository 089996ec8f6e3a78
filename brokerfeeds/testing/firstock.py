"""A local Firstock: the V2 (and deprecated V1) socket plus REST login/orderBook/positionBook.

Behaves as docs/firstock.md describes:

* Query-string auth (``userId``, ``jKey``, ``source=developer-api``). A bad jKey is
  refused either with a first frame ``{"status": "failed", "message": "unauthenticated"}``
  and a close (``reject_style="frame"``, the default) or with HTTP 401 on the upgrade
  (``reject_style="http"``). At most ``max_sessions`` (3) sockets per user: the next one
  gets the text ``Maximum sessions limit (3) reached`` and a close.
* Server pings every ``ping_every`` s; a client whose pong is later than
  ``pong_deadline`` s is disconnected (``pongs`` and ``pong_timeouts`` count them).
* Orders (``norenordno``) and positions (``brkname``) are pushed to every authenticated
  client, as strings (the Go SDK decodes an order update as ``map[string]string``), in
  compact JSON (``{"status":"failed",...}``: the docs' samples, and what the SDKs' substring
  checks expect). Whether fills carry the Noren fill fields (``fillshares``, ``avgprc``,
  ``flqty``, ``flprc``, ``flid``, ``fltm``) on this socket is not known: ``fill_fields``
  (default True; per call ``fill(..., fill_fields=False)``) chooses. REST ``orderBook``
  always knows the fills (``fillShares``, ``averagePrice``); :meth:`freeze_order_book`
  makes it lag behind the socket.
* REST ``positionBook`` rows: ``position_shape="go"`` (default) as the Go SDK's
  ``PositionBookData`` (github.com/the-firstock/firstock-developer-sdk-golang,
  ``Firstock/models.go``): ``RealizedPNL``, ``totalMTM``, ``totalPNL``, no unrealized P&L,
  no last price; ``position_shape="openalgo"`` as openalgo's Firstock mapping reads them
  (``unrealizedMTOM``, ``lastTradedPrice``, no totals).
* ``subscribe``/``unsubscribe`` actions with ``|``-joined ``EXCH:TOKEN``; a full snapshot
  on subscribe, then deltas from :meth:`tick` / :meth:`ticks`: keyed by instrument on
  ``/V2/ws``, flat on ``/ws`` (V1). Prices in paise.
* REST under ``/V1``: ``login`` (SHA-256 password; ``TOTP`` or the Go SDK's ``totp``),
  ``orderBook``, ``positionBook``, ``logout``.
* Faults: everything :class:`SimulatorBase` offers (``drop``, ``stall``, ``close_all``,
  ``restart``, ``send_raw``) plus :meth:`unauthenticate` (mid-session, optionally rotating
  the jKey), :attr:`silent` (never answer auth), :meth:`send_before_auth` (garbage ahead
  of the authentication answer), :meth:`send_malformed`, :meth:`notice`.
* Accepts handshakes with several ``Origin`` headers (the official SDK sends two), which
  the ``websockets`` library would otherwise refuse with HTTP 400.

    with FirstockSimulator() as sim:
        feed = FirstockFeed(sim.user_id, sim.jkey, url=sim.url, rest_url=sim.rest_url)
        ...
        order_id = sim.place_order("RELIANCE-EQ", "B", 10, 1395.40, token="2885")
        sim.fill(order_id, 4, 1395.40)
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import time
from decimal import Decimal
from typing import Any, Dict, List, Optional, Tuple, Union

from ._server import Client, HttpRequest, SimulatorBase, query_of

__all__ = ["FirstockSimulator", "default_snapshot"]

_ORDER_IDS = itertools.count(26042400010001)
SENTINEL = 9223372036854775808


def default_snapshot(instrument: str, ltp: int = 100000) -> Dict[str, Any]:
    """A full V2 tick object for ``instrument`` around ``ltp`` paise (5 depth levels a side)."""
    exchange, token = instrument.split(":")
    now = int(time.time())
    return {
        "c_exch_seg": exchange, "c_symbol": token, "c_exch_feed_time": time.strftime("%d-%b-%Y %H:%M:%S"),
        "i_last_traded_price": ltp, "i_open_price": ltp - 500, "i_high_price": ltp + 700, "i_low_price": ltp - 900,
        "i_closing_price": ltp - 300, "close_price": ltp - 300, "i_average_trade_price": ltp - 50,
        "i_last_trade_quantity": 1, "i_last_trade_time": now, "i_volume_traded_today": 11238602,
        "i_total_open_interest": 0, "i_total_buy_quantity": 5000, "i_total_sell_quantity": 4000,
        "i_total_tradevalue": 1561491186388, "i_net_price_change_from_closing_price": 300,
        "c_net_change_indicator": "43", "i_upper_circuit_limit": ltp * 1.1 + 0.00000000001,
        "i_lower_circuit_limit": ltp * 0.9 + 0.00000000001, "i_yearly_high_price": ltp * 1.2,
        "i_yearly_low_price": ltp * 0.8, "i_feed_time": now, "i_seconds_since_boe": now * 1_000_000_000,
        "i_usecs": 52296028, "i_buy_depth_size": 5, "i_sell_depth_size": 5,
        "best_buy": [{"price": ltp - 5 * (i + 1), "quantity": 10 * (i + 1), "orders": i + 1} for i in range(5)],
        "best_sell": [{"price": ltp + 5 * (i + 1), "quantity": 12 * (i + 1), "orders": i + 1} for i in range(5)],
    }


class FirstockSimulator(SimulatorBase):
    """A faithful local stand-in for Firstock's socket and the REST calls the feed uses."""

    ws_path = "/V2/ws"
    v1_path = "/ws"

    def __init__(
        self,
        user_id: str = "AB1234",
        jkey: str = "0f3c1b7e9a2d4c6f8e0a1b2c3d4e5f60",
        password: str = "s3cret-Pass!",
        totp: str = "123456",
        vendor_code: str = "AB1234_API",
        api_key: str = "api-key-7d1f0c9b2e",
        *,
        ping_every: float = 5.0,
        pong_deadline: float = 10.0,
        max_sessions: int = 3,
        reject_style: str = "frame",
        fill_fields: bool = True,
        position_shape: str = "go",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if reject_style not in ("frame", "http"):
            raise ValueError("reject_style must be 'frame' or 'http'")
        if position_shape not in ("go", "openalgo"):
            raise ValueError("position_shape must be 'go' or 'openalgo'")
        self.user_id = user_id
        self.jkey = jkey
        self.password = password
        self.totp = totp
        self.vendor_code = vendor_code
        self.api_key = api_key
        self.ping_every = ping_every
        self.pong_deadline = pong_deadline
        self.max_sessions = max_sessions
        self.reject_style = reject_style
        self.fill_fields = fill_fields
        self.position_shape = position_shape
        self._frozen_book: Optional[List[Dict[str, Any]]] = None  # fault: orderBook lags behind
        self.silent = False  # fault: accept the upgrade, never answer the authentication
        self._before_auth: List[Union[str, bytes]] = []  # fault: frames sent ahead of the answer
        self.session_limit_text = f"Maximum sessions limit ({max_sessions}) reached"
        self.orders: Dict[str, Dict[str, Any]] = {}  # socket format, full
        self.positions: Dict[Tuple[str, str], Dict[str, Any]] = {}  # socket format
        self.position_rows: Dict[Tuple[str, str], Dict[str, Any]] = {}  # REST positionBook format
        self.quotes: Dict[str, Dict[str, Any]] = {}  # full snapshots (paise)
        self.handshakes: List[Dict[str, str]] = []  # the query of every handshake
        self.origin_headers: List[List[str]] = []  # the Origin headers of every handshake
        self.login_bodies: List[Any] = []
        self.sub_frames: List[Tuple[str, List[str]]] = []  # (action, tokens) received
        self.pongs = 0
        self.pong_timeouts = 0
        self.route("POST", "/V1/login", self._login)
        self.route("POST", "/V1/logout", lambda r: (200, {"status": "success", "message": "Logged out"}))
        self.route("POST", "/V1/orderBook", self._order_book)
        self.route("POST", "/V1/positionBook", self._position_book)

    # ----------------------------------------------------------------- addresses
    @property
    def url(self) -> str:
        """The V2 socket URL to give ``FirstockFeed(url=...)``."""
        return self.ws_base + self.ws_path

    @property
    def url_v1(self) -> str:
        """The deprecated V1 socket URL (flat ticks)."""
        return self.ws_base + self.v1_path

    @property
    def rest_url(self) -> str:
        """The REST base URL to give ``FirstockFeed(rest_url=...)``."""
        return self.rest_base + "/V1"

    @property
    def sessions(self) -> int:
        """Authenticated sockets open now."""
        return sum(1 for c in list(self.clients) if c.info.get("auth") == "ok")

    # ----------------------------------------------------------------- scripting: orders
    def place_order(self, symbol: str, side: str, quantity: float, price: Optional[float] = None,
                    order_type: str = "LMT", exchange: str = "NSE", token: str = "2885", product: str = "C") -> str:
        """A new order (ORDER ACK → PENDING → OPEN); returns its ``norenordno``."""
        order_id = str(next(_ORDER_IDS))
        order = {
            "norenordno": order_id, "status": "ORDER ACK", "reporttype": "NewAck", "tsym": symbol, "exch": exchange,
            "token": token, "trantype": "B" if side.upper() in ("B", "BUY") else "S", "qty": f"{quantity:g}",
            "prc": f"{price or 0:.2f}", "prctyp": order_type, "pcode": product, "ret": "DAY", "rejreason": " ",
            "remarks": "", "dscqty": "0", "uid": self.user_id, "actid": self.user_id, "tm": str(int(time.time())),
            "ntm": str(time.time_ns()), "kidid": "1", "handlinst": "", "ls": "1", "ti": "0.05", "pp": "2",
            "mult": "1", "prcftr": "1.000000", "fillshares": "0", "avgprc": "0.00",
        }
        self.orders[order_id] = order
        self._push_order(order, fill_fields=False)
        for status, report in (("PENDING", "PendingNew"), ("OPEN", "New")):
            order.update(status=status, reporttype=report, tm=str(int(time.time())))
            self._push_order(order, fill_fields=False)
        return order_id

    def fill(self, order_id: str, quantity: float, price: float, fill_fields: Optional[bool] = None) -> None:
        """Fill ``quantity`` at ``price`` (OPEN while partial, COMPLETE when done). Without
        ``fill_fields`` (default: the simulator's) the socket message carries only the
        status (REST knows the fill)."""
        order = self.orders[order_id]
        before = Decimal(order["fillshares"])
        avg_before = Decimal(order["avgprc"])
        qty = Decimal(str(quantity))
        filled = before + qty
        avg = (avg_before * before + Decimal(str(price)) * qty) / filled
        done = filled >= Decimal(order["qty"])
        order.update(
            fillshares=f"{filled:f}", avgprc=f"{avg.quantize(Decimal('0.01')):f}", flqty=f"{qty:f}",
            flprc=f"{Decimal(str(price)):.2f}", flid=f"F{order_id[-6:]}{int(filled)}", fltm=str(int(time.time())),
            status="COMPLETE" if done else "OPEN", reporttype="Fill" if done else "PartialFill",
            tm=str(int(time.time())),
        )
        self._push_order(order, fill_fields=self.fill_fields if fill_fields is None else fill_fields)

    def cancel(self, order_id: str, fill_fields: Optional[bool] = None) -> None:
        """Cancel a working order (``fill_fields``: as for :meth:`fill`)."""
        order = self.orders[order_id]
        order.update(status="CANCELED", reporttype="Canceled", tm=str(int(time.time())))
        self._push_order(order, fill_fields=self.fill_fields if fill_fields is None else fill_fields)

    def freeze_order_book(self) -> None:
        """REST ``orderBook`` serves the orders as they are now until :meth:`thaw_order_book`
        (a book that lags behind the socket)."""
        with self.lock:
            self._frozen_book = self._order_rows()

    def thaw_order_book(self) -> None:
        """REST ``orderBook`` is current again."""
        with self.lock:
            self._frozen_book = None

    def reject(self, order_id: str, reason: str = "RMS:Margin Exceeds") -> None:
        """Reject an order."""
        order = self.orders[order_id]
        order.update(status="REJECTED", reporttype="Rejected", rejreason=reason, tm=str(int(time.time())))
        self._push_order(order, fill_fields=False)

    def set_position(self, symbol: str, netqty: float, avg_price: float, *, exchange: str = "NSE",
                     token: str = "2885", product: str = "C", rpnl: float = 0.0,
                     ltp: Optional[float] = None, push: bool = True) -> None:
        """Set a position (pushed as a ``brkname`` message; served by ``positionBook``)."""
        base = symbol.split("-")[0]
        qty = Decimal(str(netqty))
        avg = f"{avg_price:.2f}"
        long_ = qty > 0
        message = {
            "brkname": "FIRSTOCK", "uid": self.user_id, "actid": self.user_id, "tsym": base, "token": base,
            "exch": "EQT", "pcode": product, "instname": "EQ", "netqty": f"{qty:f}",
            "daybuyqty": f"{max(qty, Decimal(0)):f}", "daybuyamt": f"{max(qty, Decimal(0)) * Decimal(avg):.2f}",
            "daybuyavgprc": avg if long_ else "0.00", "buyavgprc": avg if long_ else "0.00",
            "sellavgprc": "0.00" if long_ else avg, "totbuyamt": "0.00", "totsellamt": "0.00",
            "totbuyavgprc": avg if long_ else "0.00", "totsellavgprc": "0.00" if long_ else avg,
            "openbuyqty": "00", "opensellqty": "00", "openbuyamt": "0.00", "opensellamt": "0.00",
            "rpnl": f"{rpnl:.2f}", "upload_prc": "0.00", "uptm": str(int(time.time())), "ls": "1", "ti": "0.05",
            "pp": "2", "mult": "1", "prcftr": "1.000000",
            "child_orders": [{"exch": exchange, "token": token, "tsym": symbol, "netqty": f"{qty:f}",
                              "daybuyavgprc": avg if long_ else "0.00", "rpnl": f"{rpnl:.2f}"}],
        }
        key = (f"{exchange}:{token}", product)
        self.positions[key] = message
        last = Decimal(str(ltp if ltp is not None else avg_price))
        unrealized = (last - Decimal(avg)) * qty
        realized = Decimal(str(rpnl))
        bought, sold = max(qty, Decimal(0)), max(-qty, Decimal(0))
        row: Dict[str, Any] = {
            "userId": self.user_id, "tradingSymbol": symbol, "exchange": exchange, "token": token,
            "product": product, "netQuantity": f"{qty:f}", "netAveragePrice": avg,
            "dayBuyQuantity": f"{bought:f}", "daySellQuantity": f"{sold:f}",
            "dayBuyAmount": f"{bought * Decimal(avg):.2f}", "dayBuyAveragePrice": avg if long_ else "0.00",
            "daySellAveragePrice": "0.00" if long_ else avg, "RealizedPNL": f"{realized:.2f}",
        }
        if self.position_shape == "go":
            # Firstock/models.go PositionBookData. What totalMTM means beside totalPNL is not
            # documented; for a position opened today (all this simulator has) both are the
            # realized plus the unrealized P&L.
            total = f"{unrealized + realized:.2f}"
            row.update(lotSize="1", tickSize="0.05", uploadPrice="0.00", netUploadPrice="0.00",
                       totalMTM=total, totalPNL=total)
        else:
            # openalgo broker/firstock/mapping/order_data.py map_position_data reads these.
            row.update(daySellAmount=f"{sold * Decimal(avg):.2f}", unrealizedMTOM=f"{unrealized:.2f}",
                       lastTradedPrice=f"{last:.2f}")
        self.position_rows[key] = row
        if push:
            self._push(message)

    # ----------------------------------------------------------------- scripting: market data
    def set_quote(self, instrument: str, **fields: Any) -> Dict[str, Any]:
        """Set ``instrument``'s full snapshot (``default_snapshot`` plus ``fields``, in paise); not sent."""
        snapshot = default_snapshot(instrument, int(fields.pop("i_last_traded_price", 100000)))
        snapshot.update(fields)
        self.quotes[instrument] = snapshot
        return snapshot

    def tick(self, instrument: str, **delta: Any) -> int:
        """Send a delta for one instrument to its subscribers; returns how many got it."""
        return self.ticks({instrument: delta})

    def ticks(self, deltas: Dict[str, Dict[str, Any]]) -> int:
        """Deltas for several instruments: one keyed frame for V2 clients, one flat frame
        per instrument for V1 clients. Returns how many frames were sent."""
        for instrument, delta in deltas.items():
            snapshot = self.quotes.setdefault(instrument, default_snapshot(instrument))
            for name, value in delta.items():
                if name in ("best_buy", "best_sell") or value is None or value == SENTINEL:
                    continue
                snapshot[name] = value

        async def send() -> int:
            sent = 0
            for client in list(self.clients):
                subs = client.info.get("subs", set())
                mine = {k: v for k, v in deltas.items() if k in subs}
                if not mine:
                    continue
                for frame in self._tick_frames(client, mine):
                    sent += await self.send_to(client, frame)
            return sent

        return self.call(send())

    # ----------------------------------------------------------------- scripting: faults, notices
    def notice(self, message: str, status: str = "success") -> int:
        """A mid-session ``{"status", "message"}`` frame to every authenticated client."""
        return self._push({"status": status, "message": message})

    def unauthenticate(self, rotate: bool = True) -> None:
        """The session is revoked mid-session: a failed frame, then a close. ``rotate``
        changes the valid jKey, so reconnecting with the old one is refused."""
        if rotate:
            self.jkey = self.jkey[::-1] + "x"

        async def kick() -> None:
            for client in list(self.clients):
                await self.send_to(client, {"status": "failed", "message": "unauthenticated"})
                try:
                    await client.connection.close(1008, "unauthenticated")
                except Exception:  # noqa: BLE001
                    pass

        self.call(kick())

    def send_malformed(self) -> int:
        """A frame that is not JSON."""
        return self.send_raw('{"norenordno": "1", "status": ')

    def send_before_auth(self, frame: Union[str, bytes] = b"\x00\xffgarbage{", count: int = 1) -> None:
        """The next ``count`` connections with a valid jKey get ``frame`` (text; bytes may be
        invalid UTF-8) before the authentication answer, which follows as usual."""
        with self.lock:
            self._before_auth.extend([frame] * count)

    def send_unknown(self) -> int:
        """A JSON message nobody knows."""
        return self.broadcast({"future_feature": {"x": 1}})

    # ----------------------------------------------------------------- server side
    def check_handshake(self, request: Any) -> Union[Dict[str, Any], Tuple[int, str]]:
        origins = list(request.headers.get_all("Origin"))
        with self.lock:
            self.origin_headers.append(origins)
        if len(origins) > 1:  # tolerate clients that send two (the official SDK does)
            del request.headers["Origin"]
            request.headers["Origin"] = origins[0]
        path = request.path.split("?")[0]
        if path not in (self.ws_path, self.v1_path):
            return 404, "not found"
        query = query_of(request)
        with self.lock:
            self.handshakes.append(query)
        valid = (query.get("userId") == self.user_id and query.get("jKey") == self.jkey
                 and query.get("source") == "developer-api")
        if not valid:
            if self.reject_style == "http":
                return 401, json.dumps({"status": "failed", "message": "unauthenticated"})
            return {"auth": "failed"}
        if self.sessions >= self.max_sessions:
            return {"auth": "limit"}
        return {"auth": "ok", "v1": path == self.v1_path, "subs": set()}

    async def serve_client(self, client: Client) -> None:
        ws = client.connection
        verdict = client.info.get("auth")
        if verdict == "failed":
            await self.send_to(client, {"status": "failed", "message": "unauthenticated"})
            await ws.close(1008, "unauthenticated")
            return
        if verdict == "limit":
            await self.send_to(client, self.session_limit_text)
            await ws.close(1008, "session limit")
            return
        with self.lock:
            early = self._before_auth.pop(0) if self._before_auth else None
        if early is not None:
            await self.send_to(client, early, text=True)
        tasks = []
        if self.silent:
            client.info["auth"] = "silent"
        else:
            await self.send_to(client, {"status": "success", "message": "Authentication successful"})
            tasks.append(asyncio.ensure_future(self._pinger(client)))
        await self.read_messages(client, self._on_client_message, tasks)

    async def _pinger(self, client: Client) -> None:
        while True:
            await asyncio.sleep(self.ping_every)
            if client.stalled:
                continue
            try:
                waiter = await client.connection.ping()
            except Exception:  # noqa: BLE001 - the client is gone
                return
            try:
                await asyncio.wait_for(waiter, self.pong_deadline)
            except asyncio.TimeoutError:
                with self.lock:
                    self.pong_timeouts += 1
                client.connection.transport.abort()  # as the real server: the session ends
                return
            except Exception:  # noqa: BLE001
                return
            with self.lock:
                self.pongs += 1

    async def _on_client_message(self, client: Client, text: str) -> None:
        if client.info.get("auth") != "ok":
            return
        try:
            message = json.loads(text)
            action = str(message["action"])
            tokens = [t.strip() for t in str(message.get("tokens", "")).split("|") if t.strip()]
        except (ValueError, KeyError, TypeError):
            await self.send_to(client, {"status": "failed", "message": "invalid request"})
            return
        with self.lock:
            self.sub_frames.append((action, tokens))
        subs = client.info.setdefault("subs", set())
        if action == "subscribe":
            fresh = [t for t in tokens if t not in subs]
            subs.update(tokens)
            snapshots = {t: self.quotes.setdefault(t, default_snapshot(t)) for t in fresh}
            for frame in self._tick_frames(client, snapshots):
                await self.send_to(client, frame)
        elif action == "unsubscribe":
            subs.difference_update(tokens)
        elif action not in ("subscribe-option-greeks", "unsubscribe-option-greeks"):
            await self.send_to(client, {"status": "failed", "message": f"unknown action {action}"})

    def _tick_frames(self, client: Client, ticks: Dict[str, Dict[str, Any]]) -> List[str]:
        if not ticks:
            return []
        if client.info.get("v1"):
            frames = []
            for instrument, fields in ticks.items():
                exchange, token = instrument.split(":")
                frames.append(_compact({**fields, "c_exch_seg": exchange, "c_symbol": token}))
            return frames
        return [_compact(ticks)]

    def _push_order(self, order: Dict[str, Any], fill_fields: bool) -> None:
        hidden = () if fill_fields else ("fillshares", "avgprc", "flqty", "flprc", "flid", "fltm")
        self._push({k: v for k, v in order.items() if k not in hidden})

    def _push(self, message: Dict[str, Any]) -> int:
        """Send to every authenticated client (nobody connected: the state still changed)."""
        if self._loop is None:
            return 0
        data = _compact(message)

        async def push() -> int:
            sent = 0
            for client in list(self.clients):
                if client.info.get("auth") == "ok":
                    sent += await self.send_to(client, data)
            return sent

        return self.call(push())

    # ----------------------------------------------------------------- REST
    def _login(self, request: HttpRequest) -> Tuple[int, Any]:
        raw = request.json() or {}
        with self.lock:
            self.login_bodies.append(raw)
        # Field names are matched without regard to case: the docs and the Python SDK send
        # "TOTP", the Go SDK's LoginRequest sends "totp" (Firstock/models.go).
        body = {str(k).lower(): v for k, v in raw.items()} if isinstance(raw, dict) else {}
        for field in ("userId", "password", "TOTP", "vendorCode", "apiKey"):
            if not body.get(field.lower()):
                return 400, {"status": "failed", "code": "400", "name": "MISSING_FIELD",
                             "error": {"field": field, "message": f"{field} is required"}}
        expected = hashlib.sha256(self.password.encode()).hexdigest()
        if (body["userid"] != self.user_id or body["password"] != expected or body["totp"] != self.totp
                or body["vendorcode"] != self.vendor_code or body["apikey"] != self.api_key):
            return 401, {"status": "failed", "code": "401", "name": "INVALID_CREDENTIALS",
                         "error": {"field": "password", "message": "Invalid credentials"}}
        return 200, {"status": "success", "message": "Login successful",
                     "data": {"actid": self.user_id, "userName": "SIM USER", "susertoken": self.jkey,
                              "email": "sim@example.com"}}

    def _authorised(self, request: HttpRequest) -> Optional[Tuple[int, Any]]:
        body = request.json() or {}
        if body.get("userId") != self.user_id or body.get("jKey") != self.jkey:
            return 401, {"status": "failed", "code": "401", "name": "INVALID_JKEY",
                         "error": {"field": "jKey", "message": "Invalid jKey"}}
        return None

    def _order_rows(self) -> List[Dict[str, Any]]:
        """The orders as REST ``orderBook`` rows (the Go SDK's ``OrderBookEntry``, plus
        ``triggerPrice``, which openalgo reads)."""
        return [{
            "userId": o["uid"], "orderNumber": o["norenordno"], "status": o["status"], "tradingSymbol": o["tsym"],
            "exchange": o["exch"], "token": o["token"], "transactionType": o["trantype"], "quantity": o["qty"],
            "price": o["prc"], "priceType": o["prctyp"], "product": o["pcode"], "retention": o["ret"],
            "triggerPrice": "0.00", "fillShares": o["fillshares"], "averagePrice": o["avgprc"],
            "rejectReason": o["rejreason"].strip(), "remarks": o["remarks"], "lotSize": o["ls"],
            "tickSize": o["ti"], "orderTime": time.strftime("%H:%M:%S %d-%m-%Y"),
        } for o in list(self.orders.values())]

    def _order_book(self, request: HttpRequest) -> Tuple[int, Any]:
        refused = self._authorised(request)
        if refused:
            return refused
        with self.lock:
            frozen = self._frozen_book
        rows = frozen if frozen is not None else self._order_rows()
        if not rows:
            return 200, {"status": "failed", "code": "404", "name": "NO_DATA",
                         "error": {"message": "No data available"}}
        return 200, {"status": "success", "data": rows}

    def _position_book(self, request: HttpRequest) -> Tuple[int, Any]:
        refused = self._authorised(request)
        if refused:
            return refused
        rows = list(self.position_rows.values())
        if not rows:
            return 200, {"status": "failed", "code": "404", "name": "NO_DATA",
                         "error": {"message": "No data available"}}
        return 200, {"status": "success", "data": rows}


def _compact(message: Any) -> str:
    """JSON without spaces, as Firstock's server writes it (the docs' samples)."""
    return json.dumps(message, separators=(",", ":"))
