"""Interactive Brokers Client Portal WebSocket: the sans-I/O adapter, :class:`IbkrProtocol` (frames → outputs).

How the feed connects, keeps the brokerage session and reconciles from REST:
:mod:`brokerfeeds.brokers.ibkr.feed`.

Protocol notes (see the project's docs/ibkr.md for sources):

* Client frames are text ``TOPIC+ARG+{json}``; server frames are JSON, often in *binary*
  frames, occasionally with invalid UTF-8, plus the bare text ``ech+hb`` echo.
* ``sor`` (orders) and ``smd`` (quotes) send only changed fields: we keep a merged
  snapshot per order / per conid and every event is the complete state. An ``smd`` frame
  with no field values (only ``conid``, ``_updated``, the ``6119`` marker: the gateway's
  answer to a subscription before any data) is no tick and makes no :class:`Quote`.
* ``smd`` streams expire after 10 minutes: each is re-sent every ``quote_refresh`` s.
* Keep-alive: ``ech+hb`` every ``heartbeat_interval`` s, REST ``/tickle`` every
  ``tickle_interval`` s; the server's ``system`` heartbeat (~10 s) proves liveness.

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
from collections import OrderedDict, deque
from decimal import Decimal
from typing import Any, Deque, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

import attrs

from ...errors import ProtocolError
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
from ...values import from_epoch_ms, loads, to_decimal, to_text

__all__ = ["IbkrProtocol", "STATUS_MAP", "DEFAULT_QUOTE_FIELDS"]

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
