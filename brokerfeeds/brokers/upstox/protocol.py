"""Upstox portfolio stream feed: the adapter, :class:`UpstoxProtocol` (frames → outputs).

Protocol notes (see the project's docs/upstox.md for sources; the feed's side, authorizing
every connect, REST reconciliation and the daily token expiry, is in
:mod:`brokerfeeds.brokers.upstox.feed`):

* The subscription is fixed at authorize time by ``update_types`` (``order``,
  ``position``, ``holding``, ``gtt_order``; the broker's default is ``order`` only).
  There is no subscribe message: changing the set re-authorizes and reconnects.
* The client never sends a frame. The server sends one flat JSON object per text frame,
  keyed by ``update_type``, and WebSocket pings when idle. There is no application
  heartbeat: an idle portfolio socket can be silent for hours, so liveness is the
  server's pings plus our own pings (answered by pongs), never "no data for N s".
* Timestamps are ``"YYYY-MM-DD HH:MM:SS"`` in IST without an offset (made timezone-aware
  here); GTT times are epoch **microseconds**.

Order status mapping (Upstox's lowercase phrases → :class:`~brokerfeeds.events.OrderStatus`):

=========================================  =============================================
Upstox ``status``                          OrderStatus
=========================================  =============================================
put order req received                     PENDING
validation pending                         PENDING
open pending                               PENDING
after market order req received            PENDING
modify after market order req received     PENDING
open                                       OPEN (PARTIALLY_FILLED once something filled)
trigger pending                            OPEN (PARTIALLY_FILLED once something filled)
modify validation pending                  OPEN (PARTIALLY_FILLED once something filled)
modify pending                             OPEN (PARTIALLY_FILLED once something filled)
modified                                   OPEN (PARTIALLY_FILLED once something filled)
not modified                               OPEN (PARTIALLY_FILLED once something filled)
cancel pending                             OPEN (still working until the cancel is done)
not cancelled                              OPEN (PARTIALLY_FILLED once something filled)
complete                                   FILLED
rejected                                   REJECTED
cancelled                                  CANCELLED
cancelled after market order               CANCELLED
anything else                              UNKNOWN
=========================================  =============================================

Fills: the feed has no trade event. A :class:`~brokerfeeds.events.Trade` is derived from
every increase of an order's ``filled_quantity`` (its price from the change of
``average_price``); ``trade_id`` is ``"<order_id>:<filled quantity after the fill>"``.
"""

from __future__ import annotations

import datetime as _dt
from decimal import Decimal
from typing import Any, Dict, FrozenSet, Hashable, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from ...errors import ProtocolError
from ...events import GttOrder, Holding, Order, OrderStatus, PnL, Position, Trade
from ...protocol import (Handler, Output, Protocol, RawMessage, Reconnect, Routes, Subscription, first,
                         only_protocol_errors, parse_json, skipped)
from ...state import ChangeTracker, FillTracker, OrderTracker, SnapshotBook, map_order_status, side_of, status_table
from ...values import to_decimal, to_text

__all__ = [
    "UpstoxProtocol",
    "STATUS_MAP",
    "UPDATE_TYPES",
    "IST",
    "parse_ist",
    "order_from",
]

BROKER = "upstox"

#: India Standard Time (no daylight saving), the zone of Upstox's offset-less timestamps.
IST = _dt.timezone(_dt.timedelta(hours=5, minutes=30), "IST")

#: Subscription kind → Upstox ``update_type``, in the order they are sent.
UPDATE_TYPES: Dict[str, str] = {
    "orders": "order",
    "positions": "position",
    "holdings": "holding",
    "gtt_orders": "gtt_order",
}

_PENDING, _OPEN = OrderStatus.PENDING, OrderStatus.OPEN
STATUS_MAP: Dict[str, OrderStatus] = status_table({
    "put order req received": _PENDING,
    "validation pending": _PENDING,
    "open pending": _PENDING,
    "after market order req received": _PENDING,
    "modify after market order req received": _PENDING,
    "open": _OPEN,
    "trigger pending": _OPEN,
    "modify validation pending": _OPEN,
    "modify pending": _OPEN,
    "modified": _OPEN,
    "not modified": _OPEN,
    "cancel pending": _OPEN,
    "not cancelled": _OPEN,
    "complete": OrderStatus.FILLED,
    "rejected": OrderStatus.REJECTED,
    "cancelled": OrderStatus.CANCELLED,
    "cancelled after market order": OrderStatus.CANCELLED,
})

#: Segments (``NSE_EQ``) as sent on positions and GTT orders → the exchange names orders use.
_SEGMENT_EXCHANGE: Dict[str, str] = {
    "NSE_EQ": "NSE", "NSE_INDEX": "NSE", "NSE_FO": "NFO", "NCD_FO": "CDS", "NSE_COM": "NSE",
    "BSE_EQ": "BSE", "BSE_INDEX": "BSE", "BSE_FO": "BFO", "BCD_FO": "BCD", "MCX_FO": "MCX",
    "MCX_INDEX": "MCX",
}


def _route_key(message: Dict[str, Any]) -> Optional[str]:
    """The route of a stream message (see ``ROUTES``, after the adapter): its ``update_type``;
    ``order`` for the older webhook-style order sample, which had none."""
    if "update_type" in message:
        return str(message["update_type"])
    if "order_id" in message and "status" in message:
        return "order"
    return None


# ================================================================ value helpers
def parse_ist(value: Any) -> Optional[_dt.datetime]:
    """An Upstox timestamp as a timezone-aware datetime (offset-less values are IST)."""
    text = to_text(value)
    if text is None:
        return None
    parsed: Optional[_dt.datetime] = None
    try:
        parsed = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        for fmt in ("%d-%m-%Y %H:%M:%S", "%d-%b-%Y %H:%M:%S"):
            try:
                parsed = _dt.datetime.strptime(text, fmt)
                break
            except ValueError:
                continue
    if parsed is None:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=IST)


def from_epoch_us(value: Any) -> Optional[_dt.datetime]:
    """A UTC datetime from epoch microseconds (GTT ``created_at`` / ``expires_at``)."""
    number = to_decimal(value)
    if number is None:
        return None
    try:
        return _dt.datetime.fromtimestamp(float(number) / 1_000_000.0, tz=_dt.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None


def map_status(word: Optional[str], filled: Optional[Decimal], quantity: Optional[Decimal]) -> OrderStatus:
    """Upstox's status phrase (and fill progress) as an :class:`OrderStatus`."""
    return map_order_status(STATUS_MAP, word, filled, quantity)


def _exchange(value: Any) -> Optional[str]:
    text = to_text(value)
    if text is None:
        return None
    return _SEGMENT_EXCHANGE.get(text.upper(), text.split("_")[0].upper() if "_" in text else text)



def _nonzero(value: Any) -> Optional[Decimal]:
    number = to_decimal(value)
    return number if number else None


def _instrument(raw: Dict[str, Any]) -> Optional[str]:
    return to_text(first(raw.get("instrument_key"), raw.get("instrument_token")))


def _id_of(value: Any, name: str) -> str:
    """An id as text; a value that is no scalar (a list, an object) is refused."""
    text = to_text(value)
    if text is None:
        raise ProtocolError(f"{name} is not an id")
    return text


def order_from(raw: Dict[str, Any], account: Optional[str] = None) -> Order:
    """An :class:`Order` from an Upstox order dict (feed ``order`` update or REST order book row)."""
    quantity = to_decimal(raw.get("quantity"))
    filled = to_decimal(raw.get("filled_quantity"))
    status_word = to_text(raw.get("status"))
    return Order(
        broker=BROKER,
        account=to_text(first(raw.get("user_id"), raw.get("userId"), raw.get("placed_by"), account)),
        order_id=_id_of(raw["order_id"], "order_id"),
        symbol=to_text(first(raw.get("trading_symbol"), raw.get("tradingsymbol"), _instrument(raw))),
        side=side_of(raw.get("transaction_type")),
        quantity=quantity,
        filled_quantity=filled,
        remaining_quantity=to_decimal(raw.get("pending_quantity")),
        price=_nonzero(raw.get("price")),
        avg_price=_nonzero(raw.get("average_price")) if filled else None,
        order_type=to_text(raw.get("order_type")),
        status=map_status(status_word, filled, quantity),
        broker_status=status_word,
        time=parse_ist(first(raw.get("exchange_timestamp"), raw.get("order_timestamp"))),
        exchange=_exchange(raw.get("exchange")),
        raw=dict(raw),
    )


# ================================================================ the adapter
class UpstoxProtocol(Protocol):
    """Sans-I/O adapter for the portfolio stream feed.

    ``authorized`` is the set of ``update_types`` the current connection was authorized
    for (the feed tells it with :meth:`authorize` before each connect); asking for
    anything else while connected answers :class:`Reconnect`, since the protocol has no
    subscribe message.
    """

    broker = BROKER
    ready_on_open = True

    def __init__(self, account: Optional[str] = None) -> None:
        self.account = account
        self.authorized: FrozenSet[str] = frozenset()
        self.orders = OrderTracker()
        self.fills = FillTracker()
        self.positions = SnapshotBook[Position]()
        self.holdings = SnapshotBook[Holding]()
        self.pnl: ChangeTracker[PnL] = ChangeTracker()
        self._gtt: ChangeTracker[Tuple[Any, ...]] = ChangeTracker()
        self._symbols: Dict[str, str] = {}  # instrument_key -> trading symbol, learned as we go

    # ------------------------------------------------------------- inputs from the feed
    def authorize(self, update_types: Iterable[str]) -> List[Output]:
        """The next connection is authorized for ``update_types`` (called before each connect)."""
        self.authorized = frozenset(update_types)
        return []

    def learn_account(self, account: str) -> List[Output]:
        """The account (user id) learned from REST, if the stream has not told it yet."""
        if self.account is None:
            self.account = account
        return []

    def counters(self) -> Mapping[str, int]:
        return {"stale_order_updates": self.orders.refused}

    # ------------------------------------------------------------- subscriptions
    def subscribe(self, subs: Sequence[Subscription], now: float) -> List[Output]:
        wanted = {UPDATE_TYPES[s.kind] for s in subs if s.kind in UPDATE_TYPES}
        if wanted - self.authorized:
            return [Reconnect("update_types changed: re-authorizing", immediate=True)]
        return []

    def unsubscribe(self, subs: Sequence[Subscription], now: float) -> List[Output]:
        dropped = {UPDATE_TYPES[s.kind] for s in subs if s.kind in UPDATE_TYPES}
        if dropped & self.authorized:
            return [Reconnect("update_types changed: re-authorizing", immediate=True)]
        return []

    # ------------------------------------------------------------- incoming
    @only_protocol_errors
    def on_frame(self, data: bytes, binary: bool, now: float) -> List[Output]:
        message = parse_json(data)
        out: List[Output] = [RawMessage(message)]
        if not isinstance(message, dict):
            return out
        account = to_text(first(message.get("user_id"), message.get("userId")))
        if account is not None and self.account is None:
            self.account = account
        handler = ROUTES.get(ROUTES.key(message))
        if handler is not None:
            out.extend(handler(self, message))
        return out  # unknown update_type: on_message only

    def _on_order(self, raw: Dict[str, Any]) -> List[Output]:
        return self.merge_orders([raw], derive_fills=True)

    def _on_position(self, raw: Dict[str, Any]) -> List[Output]:
        return self._positions([raw], snapshot=False)

    def _on_holding(self, raw: Dict[str, Any]) -> List[Output]:
        return self._holdings([raw], snapshot=False)

    def _on_gtt_order(self, raw: Dict[str, Any]) -> List[Output]:
        return self.gtt_from([raw])

    # ------------------------------------------------------------- orders
    def merge_orders(self, rows: Iterable[Any], derive_fills: bool = True) -> List[Output]:
        """An :class:`Order` for each row that changed, plus a :class:`Trade` per new fill.

        With ``derive_fills=False`` (the first snapshot after start) fills already in the
        rows of orders the stream has not reported yet are recorded as known history and
        produce no :class:`Trade`. A row older than what the stream already said is
        ignored (the tracker refuses regressions).
        """
        out: List[Output] = []
        for raw in rows:
            try:
                self._merge_order(raw, derive_fills, out)
            except Exception as exc:  # noqa: BLE001 - one bad row must not cost its neighbours
                out.append(skipped("Upstox order", raw, exc))
        return out

    def _merge_order(self, raw: Any, derive_fills: bool, out: List[Output]) -> None:
        if not isinstance(raw, dict) or raw.get("order_id") in (None, ""):
            return
        candidate = order_from(raw, self.account)
        known = self.orders.get(candidate.order_id) is not None
        order = self.orders.update_order(candidate)
        if order is None:
            return
        instrument = _instrument(raw)
        if instrument and order.symbol and order.symbol != instrument:
            self._symbols.setdefault(instrument, order.symbol)
        out.append(order)
        if not derive_fills and not known:
            self.fills.seed(order)
            return
        fill = self.fills.observe(order)
        if fill is not None:
            quantity, price = fill
            out.append(Trade(
                broker=BROKER,
                account=order.account,
                trade_id=f"{order.order_id}:{order.filled_quantity}",
                order_id=order.order_id,
                symbol=order.symbol,
                side=order.side,
                quantity=quantity,
                price=price,
                time=order.time,
                exchange=order.exchange,
                raw=raw,
            ))

    # ------------------------------------------------------------- positions and P&L
    @only_protocol_errors
    def positions_from(self, rows: Iterable[Any], account: Optional[str] = None) -> List[Output]:
        """Positions from a full REST snapshot: changed ones, and closed ones once (quantity 0).

        ``account`` is accepted for the signature every adapter shares; Upstox's
        snapshot is always the one account of the token."""
        return self._positions(rows, snapshot=True)

    def _symbol(self, raw: Dict[str, Any]) -> str:
        """The symbol for a position / holding / GTT row.

        The feed's position and holding updates carry no symbol, REST rows do, and
        orders, REST positions and REST holdings may spell it differently (``NHPC-EQ``,
        ``NHPC``). The first symbol learned for an instrument is kept and used for it
        everywhere, so a REST snapshot never looks like a change only because of that.
        """
        instrument = _instrument(raw)
        symbol = to_text(first(raw.get("trading_symbol"), raw.get("tradingsymbol")))
        if instrument is None:
            return symbol or "?"
        if symbol is not None:
            self._symbols.setdefault(instrument, symbol)
        return self._symbols.get(instrument) or instrument

    def _positions(self, rows: Iterable[Any], snapshot: bool) -> List[Output]:
        items: List[Tuple[Tuple[Optional[str], Optional[str]], Position]] = []
        out: List[Output] = []
        kept: Set[Hashable] = set()  # rows we could not read: their positions are not "closed"
        for raw in rows:
            try:
                instrument = _instrument(raw) if isinstance(raw, dict) else None
                if instrument is None:
                    continue
                key = (instrument, to_text(raw.get("product")))
                kept.add(key)
                quantity = to_decimal(raw.get("quantity"))
                avg = _nonzero(raw.get("average_price"))
                if avg is None and quantity:
                    avg = _nonzero(raw.get("buy_price") if quantity > 0 else raw.get("sell_price"))
                items.append((key, Position(
                    broker=BROKER,
                    account=self.account,
                    symbol=self._symbol(raw),
                    quantity=quantity,
                    avg_price=avg,
                    realized_pnl=to_decimal(raw.get("realised")),
                    unrealized_pnl=to_decimal(raw.get("unrealised")),
                    exchange=_exchange(raw.get("exchange")),
                    instrument=instrument,
                    raw=raw,
                )))
                kept.discard(key)
            except Exception as exc:  # noqa: BLE001 - one bad row must not cost its neighbours
                out.append(skipped("Upstox position", raw, exc))
        if snapshot:
            out.extend(self.positions.apply_snapshot(items, lambda key: key not in kept))
        else:
            out.extend(self.positions.apply_updates(items))
        return out

    @only_protocol_errors
    def pnl_from(self, rows: Iterable[Any]) -> List[Output]:
        """Account P&L totals from REST position rows (a :class:`PnL` only if they changed).

        ``daily_pnl`` sums ``pnl``, ``realized_pnl`` ``realised``, ``unrealized_pnl``
        ``unrealised``; ``market_value`` sums ``quantity * last_price * multiplier``. A row
        that cannot be decoded is reported and left out of the sums.
        """
        rows = [r for r in rows if isinstance(r, dict)]
        totals: Dict[str, Optional[Decimal]] = {"pnl": None, "realised": None, "unrealised": None, "mv": None}
        out: List[Output] = []
        for raw in rows:
            try:
                values = {name: to_decimal(raw.get(name)) for name in ("pnl", "realised", "unrealised")}
                quantity, last = to_decimal(raw.get("quantity")), to_decimal(raw.get("last_price"))
                if quantity is not None and last is not None:
                    values["mv"] = quantity * last * (to_decimal(raw.get("multiplier")) or Decimal(1))
            except Exception as exc:  # noqa: BLE001 - one bad row must not cost the others
                out.append(skipped("Upstox position (P&L)", raw, exc))
                continue
            for name, value in values.items():
                if value is not None:
                    totals[name] = (totals[name] or Decimal(0)) + value
        if not rows:
            totals = {name: Decimal(0) for name in totals}
        pnl = PnL(broker=BROKER, account=self.account, daily_pnl=totals["pnl"],
                  realized_pnl=totals["realised"], unrealized_pnl=totals["unrealised"],
                  market_value=totals["mv"], raw=rows)
        return out + [pnl] if self.pnl.update(self.account, pnl) is not None else out

    # ------------------------------------------------------------- holdings
    @only_protocol_errors
    def holdings_from(self, rows: Iterable[Any]) -> List[Output]:
        """Holdings from a full REST snapshot: changed ones, and sold-out ones once (quantity 0)."""
        return self._holdings(rows, snapshot=True)

    def _holdings(self, rows: Iterable[Any], snapshot: bool) -> List[Output]:
        items: List[Tuple[str, Holding]] = []
        out: List[Output] = []
        kept: Set[Hashable] = set()  # rows we could not read: their holdings are not "sold out"
        for raw in rows:
            try:
                if not isinstance(raw, dict):
                    continue
                instrument = to_text(first(_instrument(raw), raw.get("isin")))
                if instrument is None:
                    continue
                kept.add(instrument)
                items.append((instrument, Holding(
                    broker=BROKER,
                    account=self.account,
                    symbol=self._symbol(raw),
                    quantity=to_decimal(raw.get("quantity")),
                    avg_price=to_decimal(raw.get("average_price")),
                    exchange=_exchange(raw.get("exchange")),
                    instrument=instrument,
                    raw=raw,
                )))
                kept.discard(instrument)
            except Exception as exc:  # noqa: BLE001 - one bad row must not cost its neighbours
                out.append(skipped("Upstox holding", raw, exc))
        if snapshot:
            out.extend(self.holdings.apply_snapshot(items, lambda key: key not in kept))
        else:
            out.extend(self.holdings.apply_updates(items))
        return out

    # ------------------------------------------------------------- GTT orders
    @only_protocol_errors
    def gtt_from(self, rows: Iterable[Any]) -> List[Output]:
        """A :class:`GttOrder` for each GTT order (feed update or REST row) that changed.

        ``status`` is the ENTRY rule's status (the first rule's if there is no ENTRY);
        ``side`` is that rule's ``transaction_type``; ``rules`` holds every rule as sent.
        """
        out: List[Output] = []
        for raw in rows:
            try:
                if not isinstance(raw, dict) or raw.get("gtt_order_id") in (None, ""):
                    continue
                gtt_id = _id_of(raw["gtt_order_id"], "gtt_order_id")
                listed = raw.get("rules")
                if listed is not None and not isinstance(listed, list):
                    raise ProtocolError("GTT order rules is not a list")
                rules = [r for r in listed or () if isinstance(r, dict)]
                entry = next((r for r in rules if (to_text(r.get("strategy")) or "").upper() == "ENTRY"),
                             rules[0] if rules else {})
                signature = (
                    to_text(raw.get("type")), to_decimal(raw.get("quantity")), to_text(raw.get("expires_at")),
                    tuple((to_text(r.get("strategy")), to_text(r.get("status")), to_decimal(r.get("trigger_price")),
                           to_text(r.get("order_id")), to_text(r.get("transaction_type"))) for r in rules),
                )
                gtt = GttOrder(
                    broker=BROKER,
                    account=self.account,
                    gtt_order_id=gtt_id,
                    symbol=self._symbol(raw),
                    side=side_of(entry.get("transaction_type")),
                    quantity=to_decimal(raw.get("quantity")),
                    gtt_type=to_text(raw.get("type")),
                    status=to_text(entry.get("status")),
                    rules=rules,
                    time=from_epoch_us(raw.get("created_at")),
                    raw=raw,
                )
                if self._gtt.update(gtt_id, signature) is not None:
                    out.append(gtt)
            except Exception as exc:  # noqa: BLE001 - one bad GTT order must not cost its neighbours
                out.append(skipped("Upstox GTT order", raw, exc))
        return out


#: ``update_type`` → handler; other types have no route (``on_message`` only).
ROUTES: Routes[Handler[UpstoxProtocol]] = Routes(key=_route_key, table={
    "order": UpstoxProtocol._on_order,
    "position": UpstoxProtocol._on_position,
    "holding": UpstoxProtocol._on_holding,
    "gtt_order": UpstoxProtocol._on_gtt_order,
})
