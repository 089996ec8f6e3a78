"""Firstock (India) WebSocket: the adapter, :class:`FirstockProtocol` (frames → outputs).

Protocol notes (see the project's docs/firstock.md for sources; the feed's side, keep-alive
and REST reconciliation, is in :mod:`brokerfeeds.brokers.firstock.feed`):

* Connect to ``wss://socket.firstock.in/V2/ws?userId=U&jKey=K&source=developer-api``:
  authentication happens in the query string. The answer is one of: HTTP 401 on the
  upgrade; a first frame ``{"status": "success", "message": "Authentication successful"}``;
  a first frame ``{"status": "failed", "message": "unauthenticated"}`` followed by a close;
  or the text ``Maximum sessions limit (3) reached`` (at most 3 sockets per user). Every
  refusal stops the feed with :class:`~brokerfeeds.errors.AuthenticationError` (or its
  subclass :class:`~brokerfeeds.errors.SessionLimitError`): never a reconnect loop. Only
  a recognised refusal does: a short ``failed``/``error`` answer or text naming the
  credentials (``unauthenticated``, ``unauthorized``, ``jKey``, an expired session), or
  the session-limit text. Anything else before the answer (garbage, a proxy's error page,
  another failure) is a bad frame: reported (:class:`~brokerfeeds.errors.ProtocolError`)
  and the connection tried again with backoff.
* Orders (recognised by ``norenordno``) and positions (``brkname``) arrive automatically
  after authentication; all their values are strings. A mid-session frame with ``status``
  and ``message`` is a server notice (:class:`~brokerfeeds.events.Notice`); a mid-session
  ``unauthenticated`` also reconnects, which ends in an ``AuthenticationError`` if the
  jKey is no longer valid.
* Market feed: ``{"action": "subscribe", "tokens": "NSE:26000|BSE:1"}`` (one frame for
  many instruments; ``unsubscribe`` alike, no acknowledgement). V2 ticks are keyed by
  ``EXCH:TOKEN`` (several instruments per frame); deprecated V1 ticks are flat objects
  with ``c_exch_seg`` and ``c_symbol``. Prices are integer paise (divided by 100 and
  rounded to the paisa, which also removes float noise such as ``125190.00000000001``).
  Frames after the first are deltas: every frame is merged into a per-instrument
  snapshot where a missing value or the ``9223372036854775808`` placeholder never
  overwrites anything, and a zero never overwrites a good price, volume, open interest
  or time (fields such as net change or total buy quantity may legitimately be zero).
  Depth (``best_buy``/``best_sell``) merges by position: ``{}`` keeps a level, a partial
  object changes only its keys, a zero price never replaces a good one.
* Fills. The Noren fill fields (``fillshares``, ``avgprc``, ``flqty``, ``flprc``, ``flid``,
  ``fltm``) are documented for the old socket only; no independent source shows them on
  this one (the docs' order samples are acknowledgements, and the Go SDK,
  github.com/the-firstock/firstock-developer-sdk-golang ``Firstock/websocket_functions.go``,
  decodes an order update as a flat ``map[string]string`` without naming any field). So
  they are used when present, and an order update that does not say how much filled (and
  at what average) asks the feed to read REST ``orderBook`` (``fillShares``,
  ``averagePrice``: the Go SDK's ``OrderBookEntry``): the :class:`Order` and the
  :class:`Trade` derived from the increase of the filled quantity come from there,
  once. Reads are coalesced and spaced by ``order_refresh_interval``; an order book still
  behind the message (the order missing, OPEN after COMPLETE, COMPLETE without an
  average) is read again, up to ``BOOK_RETRIES`` times in all, after which a fill is
  reported with what is known (a :class:`Trade` whose price may be None). An update that
  changes nothing but its time (likely an unreadable fill) emits no :class:`Order`: the
  read does. Updates before the order works at the exchange (ORDER ACK, PENDING...), a
  rejection, and Noren's report of the acceptance itself (``reporttype`` New) of an order
  with nothing filled before them have nothing filled and cost no read. Two fills between two reads of the book arrive as one
  :class:`Trade` (their total, at their average price): the book has no per-fill rows.
* Positions: REST ``positionBook`` rows as the Go SDK's ``PositionBookData`` has them
  (``RealizedPNL``, ``totalMTM``, ``totalPNL``; no unrealized P&L, no last price); a
  figure that is not sent is None (unknown), never 0.

Status mapping (Firstock → :class:`~brokerfeeds.events.OrderStatus`; spaces, ``_`` and
``-`` are ignored, case-insensitive):

==================================================================  ===========================
Firstock                                                            OrderStatus
==================================================================  ===========================
ORDER ACK, ORDER PENDING, PENDING, PENDING NEW, VALIDATION PENDING  PENDING
OPEN, TRIGGER_PENDING, AMO OPEN, AMO MODIFIED, MODIFIED, REPLACED   OPEN (PARTIALLY_FILLED once
                                                                    something filled)
COMPLETE, COMPLETED                                                 FILLED
CANCELED, CANCELLED, AMO CANCELED, AMO CANCELLED                    CANCELLED
REJECTED                                                            REJECTED
EXPIRED                                                             EXPIRED
anything else                                                       UNKNOWN
==================================================================  ===========================
"""

from __future__ import annotations

import datetime as _dt
import json
from decimal import Decimal, InvalidOperation
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import attrs

from ...errors import AuthenticationError, ProtocolError, SessionLimitError
from ...events import Notice, Order, OrderStatus, PnL, Position, Quote, Trade
from ...protocol import (
    Fatal,
    Handler,
    Output,
    Protocol,
    RawMessage,
    Ready,
    Reconnect,
    Refresh,
    Report,
    Routes,
    Send,
    Subscription,
    excerpt,
    first,
    item_excerpt,
    only_protocol_errors,
    skipped,
)
from ...state import (
    ChangeTracker,
    FillTracker,
    OrderTracker,
    Snapshots,
    map_order_status,
    side_of,
    status_table,
)
from ...values import loads, to_decimal, to_text, utc

__all__ = [
    "FirstockProtocol",
    "STATUS_MAP",
    "map_status",
]

BROKER = "firstock"
QUOTES = "quotes"
#: How many ``orderBook`` reads one socket order message may cost while the book is still
#: behind it (each spaced by ``order_refresh_interval``).
BOOK_RETRIES = 5

STATUS_MAP: Dict[str, OrderStatus] = status_table({
    "ORDERACK": OrderStatus.PENDING,
    "ORDERPENDING": OrderStatus.PENDING,
    "PENDING": OrderStatus.PENDING,
    "PENDINGNEW": OrderStatus.PENDING,
    "VALIDATIONPENDING": OrderStatus.PENDING,
    "OPEN": OrderStatus.OPEN,
    "TRIGGERPENDING": OrderStatus.OPEN,
    "AMOOPEN": OrderStatus.OPEN,
    "AMOMODIFIED": OrderStatus.OPEN,
    "MODIFIED": OrderStatus.OPEN,
    "REPLACED": OrderStatus.OPEN,
    "COMPLETE": OrderStatus.FILLED,
    "COMPLETED": OrderStatus.FILLED,
    "CANCELED": OrderStatus.CANCELLED,
    "CANCELLED": OrderStatus.CANCELLED,
    "AMOCANCELED": OrderStatus.CANCELLED,
    "AMOCANCELLED": OrderStatus.CANCELLED,
    "REJECTED": OrderStatus.REJECTED,
    "EXPIRED": OrderStatus.EXPIRED,
})

#: Noren ``reporttype`` words of an order's acceptance (no fill can be in it).
_NEW_REPORTS = frozenset({"New", "NewAck", "PendingNew"})
#: Statuses of an order that never worked at the exchange (with no fill known before them).
_NOTHING_FILLED = frozenset({OrderStatus.PENDING, OrderStatus.REJECTED})

_SESSION_LIMIT = "maximum sessions limit"
#: ``status`` words of a refusal; and the words that make a text before the authentication
#: answer a refusal of the credentials (``unauthenticated``, ``Invalid jKey``, ...). Anything
#: else there is a bad frame: reported and the connection tried again, never fatal.
_FAILED = frozenset({"failed", "failure", "error"})
_REFUSAL_WORDS = ("unauthenticated", "unauthorized", "unauthorised", "authentication failed", "invalid jkey",
                  "invalid user", "jkey", "session expired", "invalid session")
_PAISA = Decimal("0.01")
# The placeholder Firstock sends for "no value" (2**63), and its signed neighbours.
_SENTINELS = (9223372036854775808, 9223372036854775807, -9223372036854775808)
_SENTINEL_TEXT = frozenset(str(s) for s in _SENTINELS)
# Fields where a zero is a placeholder, never a real update of a good value.
_ZERO_GUARDED = frozenset({
    "i_upper_circuit_limit", "i_lower_circuit_limit", "i_volume_traded_today", "i_total_open_interest",
    "i_total_tradevalue", "i_last_trade_time", "i_feed_time", "i_seconds_since_boe", "i_usecs",
})
_ZERO_ALLOWED = frozenset({"i_net_price_change_from_closing_price"})
_PRICE_FIELDS = (
    "i_last_traded_price", "i_open_price", "i_high_price", "i_low_price", "i_closing_price", "close_price",
    "i_average_trade_price", "i_upper_circuit_limit", "i_lower_circuit_limit", "i_yearly_high_price",
    "i_yearly_low_price",
)


def _route_key(message: Dict[str, Any]) -> str:
    """The route of a socket message (see ``ROUTES``, after the adapter). Firstock's
    messages have no type field: the keys they carry tell them apart."""
    if "norenordno" in message:
        return "order"
    if "brkname" in message:
        return "position"
    if "status" in message:
        return "status"
    return "quotes"


# ====================================================================== helpers
def map_status(word: Optional[str], filled: Optional[Decimal], quantity: Optional[Decimal]) -> OrderStatus:
    """Firstock's status word (and fill progress) as an :class:`OrderStatus`."""
    return map_order_status(STATUS_MAP, word, filled, quantity)


def _missing(value: Any) -> bool:
    """True for values that mean "nothing sent": None, "", the 2**63 placeholder."""
    if value is None or value == "":
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return abs(value) >= 9.2e18
    return isinstance(value, str) and value.strip() in _SENTINEL_TEXT


def _is_zero(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return value == 0
    number = to_decimal(value)
    return number is not None and number == 0


def _zero_guarded(name: str) -> bool:
    return name not in _ZERO_ALLOWED and (name.endswith("_price") or name in _ZERO_GUARDED)


def keep_tick_value(name: str, old: Any, new: Any) -> bool:
    """The :class:`~brokerfeeds.state.Snapshots` rule for ticks: may ``new`` replace ``old``?"""
    if _missing(new):
        return False
    if _zero_guarded(name) and _is_zero(new) and not _missing(old) and not _is_zero(old):
        return False
    return True


def merge_depth(old: Any, new: Any) -> List[Dict[str, Any]]:
    """Merge a depth delta into the stored levels, by position.

    ``{}`` keeps a level; a partial object changes only its keys; missing or placeholder
    values are ignored; a zero price never replaces a good one.
    """
    levels = [dict(level) if isinstance(level, dict) else {} for level in old] if isinstance(old, list) else []
    if not isinstance(new, list):
        return levels
    for index, level in enumerate(new):
        while len(levels) <= index:
            levels.append({})
        if not isinstance(level, dict):
            continue
        current = levels[index]
        for key, value in level.items():
            if _missing(value):
                continue
            if key == "price" and _is_zero(value) and not _is_zero(current.get("price", 0)):
                continue
            current[key] = value
    return levels


def paise(value: Any) -> Optional[Decimal]:
    """Integer paise (possibly a noisy float) as rupees rounded to the paisa, or None."""
    if _missing(value):
        return None
    number = to_decimal(value)
    if number is None:
        return None
    try:
        return (number / 100).quantize(_PAISA)
    except InvalidOperation:
        return None


def _epoch_seconds(value: Any) -> Optional[_dt.datetime]:
    if _missing(value) or _is_zero(value):
        return None
    number = to_decimal(value)
    if number is None:
        return None
    try:
        return _dt.datetime.fromtimestamp(float(number), tz=utc)
    except (OverflowError, OSError, ValueError):
        return None


def _best(levels: Any) -> Tuple[Optional[Decimal], Optional[Decimal]]:
    """(price, quantity) of the first non-empty depth level."""
    for level in levels if isinstance(levels, list) else ():
        if not isinstance(level, dict):
            continue
        price = paise(level.get("price"))
        quantity = to_decimal(level.get("quantity"))
        if price and (quantity is None or quantity > 0):
            return price, quantity
    return None, None



def _text_of(message: Any) -> str:
    if isinstance(message, dict):
        return to_text(first(message.get("message"), message.get("error"), message.get("status"))) or ""
    return to_text(message) or ""


# ====================================================================== the adapter
class FirstockProtocol(Protocol):
    """Sans-I/O adapter for Firstock's V2 (and V1) socket."""

    broker = BROKER
    ready_on_open = False

    def __init__(self, user_id: str, can_refresh: bool = False) -> None:
        self.user_id = user_id
        #: Whether the feed can re-read the order book (REST) to learn fills the socket left out.
        self.can_refresh = can_refresh
        self.authenticated = False
        self._abandoned = False  # a bad answer to the authentication: this connection is being dropped
        self.orders = OrderTracker()
        self.fills = FillTracker()
        self.positions = ChangeTracker[Position]()
        self.pnl = ChangeTracker[PnL]()
        self.quotes = Snapshots(keep=keep_tick_value)
        self._order_fields: Dict[str, Dict[str, Any]] = {}
        #: Orders whose socket message left the fill state unread: order id → [the message's
        #: status, order book reads so far].
        self._book_wanted: Dict[str, List[Any]] = {}

    def counters(self) -> Mapping[str, int]:
        return {"stale_order_updates": self.orders.refused}

    # ------------------------------------------------------------- connection
    def on_open(self, now: float) -> List[Output]:
        self.authenticated = False
        self._abandoned = False
        return []

    def on_close(self) -> None:
        self.authenticated = False
        self._abandoned = False

    # ------------------------------------------------------------- outgoing
    def subscribe(self, subs: Sequence[Subscription], now: float) -> List[Output]:
        tokens = [s.key for s in subs if s.kind == QUOTES]
        return [Send(json.dumps({"action": "subscribe", "tokens": "|".join(tokens)}))] if tokens else []

    def unsubscribe(self, subs: Sequence[Subscription], now: float) -> List[Output]:
        tokens = [s.key for s in subs if s.kind == QUOTES]
        for token in tokens:
            self.quotes.forget(token)
        return [Send(json.dumps({"action": "unsubscribe", "tokens": "|".join(tokens)}))] if tokens else []

    # ------------------------------------------------------------- incoming
    @only_protocol_errors
    def on_frame(self, data: bytes, binary: bool, now: float) -> List[Output]:
        if self._abandoned:
            return []  # what follows a bad answer on a connection being dropped is not believed
        try:
            message = loads(data)
        except (ValueError, RecursionError):  # RecursionError: the stdlib decoder, nested too deeply
            text = data.decode("utf-8", "replace").strip()
            if not self.authenticated:
                return [RawMessage(text), *self._before_auth(text, data)]
            raise ProtocolError("frame is not JSON", excerpt(data)) from None
        out: List[Output] = [RawMessage(message)]
        if not isinstance(message, dict):
            if not self.authenticated:
                out.extend(self._before_auth(message if isinstance(message, str) else "", data))
            return out
        handler = ROUTES.get(ROUTES.key(message))
        if handler is not None:
            out.extend(handler(self, message))
        return out

    def _on_status(self, message: Dict[str, Any]) -> List[Output]:
        """A message with ``status``: the answer to authentication, then a server notice
        (with ``message``) or else a quote."""
        if not self.authenticated:
            return self._on_auth(message)
        if "message" in message:
            return self._on_notice(message)
        return self._on_quotes(message)

    def _on_auth(self, message: Dict[str, Any]) -> List[Output]:
        status = (to_text(message.get("status")) or "").lower()
        text = _text_of(message)
        if status == "success" or "authentication successful" in text.lower():
            self.authenticated = True
            return [Ready()]
        if status in _FAILED or _SESSION_LIMIT in text.lower():
            return self._before_auth(text, message)
        return self._before_auth("", message)  # a status we do not know: not an answer

    def _before_auth(self, text: str, frame: Any) -> List[Output]:
        """Something other than success before the authentication answer: a recognised
        refusal is fatal (no reconnect loop with a dead jKey); anything else is a bad frame,
        reported, and the connection is tried again with backoff."""
        text = text.strip()
        lowered = text.lower() if len(text) <= 200 else ""  # a refusal is a short message, not a page
        if _SESSION_LIMIT in lowered:
            return [Fatal(SessionLimitError(
                f"Firstock refused the session: {text} (close another connection of this user)"))]
        if any(word in lowered for word in _REFUSAL_WORDS):
            return [Fatal(AuthenticationError(f"Firstock rejected the session: {text}"))]
        self._abandoned = True
        return [Report(ProtocolError("unexpected frame before the authentication answer (not a refusal): "
                                     "reconnecting", item_excerpt(frame))),
                Reconnect("unexpected frame before the authentication answer")]

    def _on_notice(self, message: Dict[str, Any]) -> List[Output]:
        status = (to_text(message.get("status")) or "").lower()
        text = _text_of(message)
        kind = "error" if status in ("failed", "error") else "status"
        out: List[Output] = [Notice(broker=BROKER, kind=kind, text=text, raw=message, account=self.user_id)]
        if "unauthenticated" in text.lower() or _SESSION_LIMIT in text.lower():
            out.append(Reconnect(f"server says: {text[:100]}"))
        return out

    # ------------------------------------------------------------- orders
    def _on_order(self, message: Dict[str, Any]) -> List[Output]:
        return self.merge_orders([message])

    def merge_orders(self, rows: Iterable[Any], rest: bool = False, seed: bool = False) -> List[Output]:
        """Order (and derived :class:`Trade`) events for socket messages or REST ``orderBook`` rows.

        ``rest`` says the rows come from ``orderBook``; ``seed`` records the fills of orders
        not seen before as already known (the first snapshot after start: history, not new fills).
        A socket message that does not say how much of its order filled asks for the order
        book (:class:`Refresh`); so does an ``orderBook`` that is still behind such a message
        (at most ``BOOK_RETRIES`` times per message).
        """
        out: List[Output] = []
        for row in rows:
            try:
                if not isinstance(row, dict):
                    continue
                fields = _rest_order_fields(row) if rest else _stream_order_fields(row)
                order_id = fields.get("order_id")
                if not order_id:
                    sent = first(row.get("orderNumber"), row.get("norenordno")) if rest else row.get("norenordno")
                    if sent is not None and sent != "":
                        raise ProtocolError("order without a usable order number")
                    continue
                out.extend(self._merge_order(str(order_id), fields, row, seed, rest))
            except Exception as exc:  # noqa: BLE001 - one bad row must not cost its neighbours
                out.append(skipped("Firstock order", row, exc))
        if rest and self._book_wanted:
            out.extend(self._still_wanted(rows))
        return out

    def _merge_order(self, order_id: str, fields: Dict[str, Any], raw: Dict[str, Any], seed: bool,
                     rest: bool) -> List[Output]:
        previous = self._order_fields.get(order_id)
        known = previous is not None
        candidate = dict(previous or {})
        word = map_status(fields.get("status"), None, None)
        unread = False  # the socket message does not say how much filled, or at what price
        if not rest and fields.get("filled") is None:
            if not candidate.get("filled") and (word in _NOTHING_FILLED or raw.get("reporttype") in _NEW_REPORTS):
                # Not working at the exchange yet (ORDER ACK, PENDING ...), rejected, or Noren's
                # report of the order's acceptance itself: nothing can have filled, no read needed.
                fields = dict(fields, filled=Decimal(0))
            else:
                unread = True
        elif not rest and fields["filled"] > 0 and fields.get("avg_price") is None:
            unread = True
        candidate.update({k: v for k, v in fields.items() if v is not None})
        if fields.get("filled") is None and word is OrderStatus.FILLED and candidate.get("filled") != candidate.get(
                "quantity"):
            # COMPLETE without fill fields: all of it filled, at an average we do not know yet.
            candidate["filled"] = candidate.get("quantity")
            candidate.pop("avg_price", None)
        order = _order_from(candidate, raw, self.user_id)
        out: List[Output] = []
        if unread and self.can_refresh:
            # The fill state is in REST orderBook (fillShares, averagePrice: the Go SDK's
            # OrderBookEntry); the engine coalesces these requests and spaces them out.
            self._book_wanted[order_id] = [word, 0]
            out.append(Refresh("orders"))
            before = self.orders.get(order_id)
            if before is not None and attrs.evolve(order, time=before.time) == before:
                # Only its time is new: most likely a fill we cannot read. Reporting the old
                # filled quantity again would be noise; the order book brings the news.
                if self.orders.update_order(order) is not None:
                    self._order_fields[order_id] = candidate
                return out
        changed = self.orders.update_order(order)
        if changed is None:
            if self.orders.get(order_id) == order:
                self._order_fields[order_id] = candidate
            return out
        self._order_fields[order_id] = candidate
        out.insert(0, order)
        if seed and not known:
            self.fills.seed(order)  # filled before we started: history, not a new fill
            return out
        filled, avg = order.filled_quantity, order.avg_price
        if filled is not None and filled > 0 and avg is None and self.can_refresh:
            if rest:  # a book row that knows the quantity but not yet the price: read again
                self._book_wanted.setdefault(order_id, [order.status, 0])
            if order_id in self._book_wanted:
                return out  # the fill's price comes with the next order book read
        trade = self._trade(order, raw)
        return out + [trade] if trade is not None else out

    def _trade(self, order: Order, raw: Any) -> Optional[Trade]:
        """The fill shown by ``order``'s filled quantity increase, if any (price: the
        message's own ``flprc`` when it is that whole fill, else from the averages)."""
        fill = self.fills.observe(order)
        if fill is None:
            return None
        quantity, price = fill
        raw = raw if isinstance(raw, dict) else {}
        fill_qty, fill_price = to_decimal(raw.get("flqty")), to_decimal(raw.get("flprc"))
        if fill_price is not None and fill_qty == quantity:
            price = fill_price
        return Trade(
            broker=BROKER, account=order.account, trade_id=to_text(raw.get("flid")), order_id=order.order_id,
            symbol=order.symbol, side=order.side, quantity=quantity, price=price,
            time=_epoch_seconds(raw.get("fltm")) or order.time, exchange=order.exchange, raw=raw,
        )

    def _still_wanted(self, rows: Iterable[Any]) -> List[Output]:
        """After an ``orderBook``: drop the orders it answered for; ask again (a bounded
        number of times) for those it is still behind on (no row, or a row older than the
        socket message, e.g. OPEN after COMPLETE, or COMPLETE without an average price)."""
        listed: Dict[str, Dict[str, Any]] = {}
        for row in rows:
            try:
                order_id = to_text(first(row.get("orderNumber"), row.get("norenordno")))
                if order_id in self._book_wanted:
                    listed[order_id] = _rest_order_fields(row)
            except Exception:  # noqa: BLE001, S112 - a row that cannot be read was reported above
                continue
        again = False
        out: List[Output] = []
        for order_id, wanted in list(self._book_wanted.items()):
            word, tries = wanted
            fields = listed.get(order_id)
            known = self.orders.get(order_id)
            filled = fields.get("filled") if fields is not None else None
            behind = (fields is None or filled is None
                      or (word.is_final and not map_status(fields.get("status"), None, None).is_final)
                      or (filled > 0 and not fields.get("avg_price"))
                      or (known is not None and known.filled_quantity is not None and filled < known.filled_quantity))
            if behind and tries + 1 < BOOK_RETRIES:
                wanted[1] = tries + 1
                again = True
                continue
            del self._book_wanted[order_id]
            if known is not None:  # given up on a price: the fill still counts, at what is known
                trade = self._trade(known, known.raw)
                if trade is not None:
                    out.append(trade)
        return out + [Refresh("orders")] if again else out

    # ------------------------------------------------------------- positions and P&L
    def _on_position(self, raw: Dict[str, Any]) -> List[Output]:
        try:
            return self._stream_position(raw)
        except Exception as exc:  # noqa: BLE001 - reported, the frames after it go on
            return [skipped("Firstock position", raw, exc)]

    def _stream_position(self, raw: Dict[str, Any]) -> List[Output]:
        listed = raw.get("child_orders")
        if listed is not None and not isinstance(listed, list):
            raise ProtocolError("child_orders is not a list")
        children = [c for c in listed or () if isinstance(c, dict)]
        child = next((c for c in children if str(c.get("token", "")).strip().isdigit()), children[0] if children else {})
        exchange = to_text(first(child.get("exch"), raw.get("exch")))
        token = to_text(first(child.get("token"), raw.get("token")))
        quantity = to_decimal(raw.get("netqty"))
        avg = None
        if quantity is not None and quantity > 0:
            avg = to_decimal(first(raw.get("totbuyavgprc"), raw.get("buyavgprc"), raw.get("daybuyavgprc")))
        elif quantity is not None and quantity < 0:
            avg = to_decimal(first(raw.get("totsellavgprc"), raw.get("sellavgprc"), raw.get("daysellavgprc")))
        return self._position(
            symbol=to_text(first(child.get("tsym"), raw.get("tsym"))) or token or "",
            exchange=exchange, token=token, product=to_text(raw.get("pcode")),
            account=to_text(first(raw.get("actid"), raw.get("uid"))), quantity=quantity, avg=avg,
            realized=to_decimal(raw.get("rpnl")), unrealized=None, raw=raw,
        )

    @only_protocol_errors
    def positions_from(self, rows: Any, account: Optional[str] = None) -> List[Output]:
        """Position events for REST ``positionBook`` rows that changed (``account`` is
        the default for rows without a ``userId``).

        Rows as the Go SDK's ``PositionBookData`` has them (``netQuantity``,
        ``netAveragePrice``, ``RealizedPNL``, ``totalMTM``, ``totalPNL``; no
        ``unrealizedMTOM``, no ``lastTradedPrice``): ``unrealized_pnl`` is then None
        (unknown), never 0; it is read when a row has ``unrealizedMTOM``.
        """
        out: List[Output] = []
        for row in rows if isinstance(rows, list) else []:
            try:
                if not isinstance(row, dict):
                    continue
                realized, unrealized, _ = _row_pnl(row)
                out.extend(self._position(
                    symbol=to_text(first(row.get("tradingSymbol"), row.get("token"))) or "",
                    exchange=to_text(row.get("exchange")), token=to_text(row.get("token")),
                    product=to_text(row.get("product")), account=to_text(first(row.get("userId"), account)),
                    quantity=to_decimal(first(row.get("netQuantity"), row.get("netqty"))),
                    avg=to_decimal(first(row.get("netAveragePrice"), row.get("netavgprc"))),
                    realized=realized, unrealized=unrealized, raw=row,
                ))
            except Exception as exc:  # noqa: BLE001 - one bad row must not cost its neighbours
                out.append(skipped("Firstock position", row, exc))
        return out

    def _position(self, *, symbol: str, exchange: Optional[str], token: Optional[str], product: Optional[str],
                  account: Optional[str], quantity: Optional[Decimal], avg: Optional[Decimal],
                  realized: Optional[Decimal], unrealized: Optional[Decimal], raw: Dict[str, Any]) -> List[Output]:
        instrument = f"{exchange}:{token}" if exchange and token else None
        position = Position(
            broker=BROKER, account=account or self.user_id, symbol=symbol, quantity=quantity,
            avg_price=avg if avg else None, realized_pnl=realized, unrealized_pnl=unrealized,
            exchange=exchange, instrument=instrument, raw=raw,
        )
        return [position] if self.positions.update((instrument or symbol, product), position) is not None else []

    @only_protocol_errors
    def pnl_from_rest(self, rows: Any) -> List[Output]:
        """An account :class:`PnL` from REST ``positionBook`` rows, if the totals changed.

        Each total is the sum over the rows, or None when a row does not send it (a
        figure Firstock did not give is unknown, never 0). The Go SDK's ``PositionBookData``
        (github.com/the-firstock/firstock-developer-sdk-golang, ``Firstock/models.go``) has
        ``RealizedPNL``, ``totalPNL`` and ``totalMTM`` and no unrealized figure, so there
        ``unrealized_pnl`` is None; ``unrealizedMTOM`` (what openalgo's
        ``broker/firstock/mapping/order_data.py`` reads) is used when present. ``daily_pnl``
        is ``totalPNL`` (else ``totalMTM``), else realized + unrealized when both are known.
        No rows at all (nothing traded today) is a P&L of 0.
        """
        realized: Optional[Decimal] = Decimal(0)
        unrealized: Optional[Decimal] = Decimal(0)
        total: Optional[Decimal] = Decimal(0)
        out: List[Output] = []
        for row in rows if isinstance(rows, list) else []:
            try:
                if not isinstance(row, dict):
                    continue
                r, u, t = _row_pnl(row)
            except Exception as exc:  # noqa: BLE001 - one bad row must not cost the others
                out.append(skipped("Firstock position (P&L)", row, exc))
                continue
            if t is None and r is not None and u is not None:
                t = r + u
            realized = _plus(realized, r)
            unrealized = _plus(unrealized, u)
            total = _plus(total, t)
        pnl = PnL(broker=BROKER, account=self.user_id, daily_pnl=total, unrealized_pnl=unrealized,
                  realized_pnl=realized, raw=rows)
        return out + [pnl] if self.pnl.update(self.user_id, pnl) is not None else out

    # ------------------------------------------------------------- quotes
    def _on_quotes(self, message: Dict[str, Any]) -> List[Output]:
        """V1: one flat tick with ``c_exch_seg`` and ``c_symbol``; V2: ticks keyed by ``EXCH:TOKEN``."""
        if "c_symbol" in message and "c_exch_seg" in message:
            try:
                exchange, symbol = to_text(message["c_exch_seg"]), to_text(message["c_symbol"])
                if exchange is None or symbol is None:
                    raise ProtocolError("V1 tick without a usable c_exch_seg / c_symbol")
                return self._on_tick(f"{exchange.upper()}:{symbol}", message)
            except Exception as exc:  # noqa: BLE001 - reported, the frames after it go on
                return [skipped("Firstock tick", message, exc)]
        out: List[Output] = []
        for key, value in message.items():
            if isinstance(value, dict) and ":" in key:
                try:
                    out.extend(self._on_tick(key, value))
                except Exception as exc:  # noqa: BLE001 - one bad instrument must not cost the others
                    out.append(skipped(f"Firstock tick for {key[:40]}", value, exc))
        return out

    def _on_tick(self, key: str, update: Dict[str, Any]) -> List[Output]:
        if "gamma" in update and "i_last_traded_price" not in update:
            return []  # option greeks (not a quote): on_message only
        current = self.quotes.get(key) or {}
        clean: Dict[str, Any] = {}
        for name, value in update.items():
            if name in ("best_buy", "best_sell"):
                clean[name] = merge_depth(current.get(name), value)
            elif not _missing(value):
                clean[name] = value
        merged = self.quotes.merge(key, clean)
        bid, bid_size = _best(merged.get("best_buy"))
        ask, ask_size = _best(merged.get("best_sell"))
        return [Quote(
            broker=BROKER, instrument=key, last=paise(merged.get("i_last_traded_price")),
            bid=bid, ask=ask, bid_size=bid_size, ask_size=ask_size,
            volume=to_decimal(merged.get("i_volume_traded_today")),
            time=_epoch_seconds(first(merged.get("i_feed_time"), merged.get("i_last_trade_time"))),
            fields=dict(merged), raw=update,
        )]


#: Message kind (told by its keys, see ``_route_key``) → handler; every message has one.
ROUTES: Routes[Handler[FirstockProtocol]] = Routes(key=_route_key, table={
    "order": FirstockProtocol._on_order,
    "position": FirstockProtocol._on_position,
    "status": FirstockProtocol._on_status,
    "quotes": FirstockProtocol._on_quotes,
})


def quote_prices(quote: Quote) -> Dict[str, Optional[Decimal]]:
    """Every paise price field of a Firstock :class:`Quote` in rupees (open, high, circuits, ...)."""
    return {name: paise(quote.fields.get(name)) for name in _PRICE_FIELDS}


def _row_pnl(row: Dict[str, Any]) -> Tuple[Optional[Decimal], Optional[Decimal], Optional[Decimal]]:
    """(realized, unrealized, total) of a ``positionBook`` row, each None when not sent."""
    realized = to_decimal(first(row.get("RealizedPNL"), row.get("realizedPNL"), row.get("rpnl")))
    unrealized = to_decimal(first(row.get("unrealizedMTOM"), row.get("unrealizedMTM"), row.get("unrealizedPNL")))
    total = to_decimal(first(row.get("totalPNL"), row.get("totalMTM")))
    return realized, unrealized, total


def _plus(total: Optional[Decimal], value: Optional[Decimal]) -> Optional[Decimal]:
    """A sum that stays unknown (None) once one of its terms is."""
    return None if total is None or value is None else total + value


def _average(value: Any, filled: Optional[Decimal]) -> Optional[Decimal]:
    """The average fill price, or None when nothing filled or the price is missing or 0 (a
    placeholder: nothing fills at 0)."""
    price = to_decimal(value) if filled else None
    return price if price else None


def _stream_order_fields(raw: Dict[str, Any]) -> Dict[str, Any]:
    filled = to_decimal(raw.get("fillshares"))
    return {
        "order_id": to_text(raw.get("norenordno")),
        "account": to_text(first(raw.get("actid"), raw.get("uid"))),
        "symbol": to_text(raw.get("tsym")),
        "exchange": to_text(raw.get("exch")),
        "side": side_of(raw.get("trantype")),
        "quantity": to_decimal(raw.get("qty")),
        "price": to_decimal(raw.get("prc")),
        "order_type": to_text(raw.get("prctyp")),
        "status": to_text(raw.get("status")),
        "filled": filled,
        "avg_price": _average(raw.get("avgprc"), filled),
        "time": _epoch_seconds(raw.get("tm")),
    }


def _rest_order_fields(row: Dict[str, Any]) -> Dict[str, Any]:
    filled = to_decimal(first(row.get("fillShares"), row.get("fillshares")))
    return {
        "order_id": to_text(first(row.get("orderNumber"), row.get("norenordno"))),
        "account": to_text(row.get("userId")),
        "symbol": to_text(first(row.get("tradingSymbol"), row.get("tsym"))),
        "exchange": to_text(first(row.get("exchange"), row.get("exch"))),
        "side": side_of(first(row.get("transactionType"), row.get("trantype"))),
        "quantity": to_decimal(first(row.get("quantity"), row.get("qty"))),
        "price": to_decimal(first(row.get("price"), row.get("prc"))),
        "order_type": to_text(first(row.get("priceType"), row.get("prctyp"))),
        "status": to_text(row.get("status")),
        "filled": filled,
        "avg_price": _average(first(row.get("averagePrice"), row.get("avgprc")), filled),
    }


def _order_from(fields: Dict[str, Any], raw: Dict[str, Any], user_id: str) -> Order:
    quantity, filled = fields.get("quantity"), fields.get("filled")
    word = fields.get("status")
    return Order(
        broker=BROKER,
        account=fields.get("account") or user_id,
        order_id=str(fields["order_id"]),
        symbol=fields.get("symbol"),
        side=fields.get("side"),
        quantity=quantity,
        filled_quantity=filled,
        remaining_quantity=quantity - filled if quantity is not None and filled is not None else None,
        price=fields.get("price"),
        avg_price=fields.get("avg_price"),
        order_type=fields.get("order_type"),
        status=map_status(word, filled, quantity),
        broker_status=word,
        time=fields.get("time"),
        exchange=fields.get("exchange"),
        raw=raw,
    )
