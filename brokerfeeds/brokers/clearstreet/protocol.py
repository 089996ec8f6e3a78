"""Clear Street Studio API v2 activity channel: the sans-I/O adapter (frames -> outputs).

:class:`ClearStreetProtocol` and the helpers it decodes with; the feed around it is in
:mod:`brokerfeeds.brokers.clearstreet.feed`.

Protocol notes (see the project's docs/clearstreet.md for sources):

* One WebSocket (``wss://api.clearstreet.io/studio/v2/ws``); no auth on the handshake.
  The OAuth2 bearer token travels in the ``authorization`` field of every
  ``subscribe-activity`` message, one per account, which must be sent within 30 s of
  connecting. The socket lives as long as that token: when it expires the server drops
  the connection, and the feed reconnects with a fresh token.
* The server acks each subscribe (``subscribe-activity-ack``, ``account_id`` optional:
  acks without one are matched to pending subscribes in order), then **replays every
  sequenced message of the trading day**, then sends ``replay-complete`` (no account id:
  matched to the oldest replaying account).
* Sequenced messages carry a top-level ``sequence``: ``order-update`` → :class:`Order`,
  ``trade-notice`` → :class:`Trade`, ``position-update`` → :class:`Position`,
  ``buying-power-update`` → :class:`Balance`, ``locate-inventory-update`` →
  :class:`LocateInventory` (``on_locate``). ``heartbeat`` proves liveness and reaches no
  callback; ``error-notice`` → ``on_error`` and a :class:`Notice`; anything else →
  ``on_message``.

What ``sequence`` numbers is not documented. The Activity channel reference
(https://docs.clearstreet.io/studio/reference/orders-websocket) says only that it is "a
monotonic sequence number you can use to detect gaps and validate ordering", and that a
subscribe replays "all sequenced messages from the beginning of the day"; whether it
counts per account or per connection is not stated, and no official client reads it
(``studio_sdk``, PyPI ``clear-street-studio-sdk``, has no WebSocket code). The adapter is
right under both, and learns which one the server uses:

* per account, each account's messages are 1, 2, 3, ... per trading day, the same
  numbers in every replay; per connection, the connection's sequenced frames are 1, 2,
  3, ... whatever their account (A=1, B=2, A=3), a replay's frames included;
* while only one account has had frames on a connection, both read the same, and its
  numbers must run on without a hole, as both require. The first frame of a second
  account (or of a new trading day) tells them apart: it starts its account's numbers
  (per account: a replay starts the account's day) or continues the connection's (per
  connection). Starting or continuing its account's numbering tells "per account" for
  sure (per connection, that number was another account's frame). Continuing the
  connection's tells "per connection" in a replay (read from the server's journal);
  live, it may as well be a gap of the account's own numbering, so the feed reconnects
  once (``stats.extra["scope_untold"]``) and the replay tells. The scope, once told, is
  kept for the feed's run. Numbers count from 1 (from 0 once a 0 shows: not documented).

Exactly once, in order. The adapter keeps a per-account *mark*: the position in the
account's trading day (America/New_York) of the last message delivered. Per account that
position is the ``sequence``; per connection it is counted on the connection (its n-th
frame of the account, as the replay starts the day). Then:

* a frame at or below the mark is a duplicate (a replay after a reconnect), and so is a
  number the connection had already (a repeat/late frame on a live connection):
  dropped, counted in ``stats.extra``;
* the frame right above the mark (or the day's first, without one) is delivered; during
  a replay it carries ``replayed=True``;
* a number skipped is a *gap*: :class:`GapDetected` goes to ``on_error``, nothing more of
  that account (per account) or of the connection (per connection, or not told yet: the
  lost frame may be any account's; ``expected`` and ``got`` are the connection's
  numbers then) is delivered on this connection, and the feed reconnects; the replay
  then delivers the missing frames in order. (A hole that survives two replays is in
  the server's journal: accepted, so it cannot cause a reconnect loop.)
* a frame of a later trading day than the mark (positions restart at 1 each day)
  resets the mark.

A ``trade-notice`` may come without ``account_id`` (studio_sdk ``Trade.account_id`` is
Optional: ``src/studio_sdk/types/shared/trade.py`` in github.com/clear-street/studio-sdk-python,
while ``Order.account_id`` is required). It belongs to its order's account (learned from
the order's ``order-update``s, which come first: an order is placed before it fills),
else to the connection's only account. Never by its number: where numbers count per
account, the account whose numbering it continues need not be its own when a frame was
lost. A trade of an order never seen, on a connection of several accounts, most likely
lost its order's ``order-update``: per connection it is delivered without an account (in
the connection's order); otherwise the feed reconnects (the replay attributes it), and
the same frame a third time is delivered without an account, its number no gap for the
account that skips it. ``stats.extra`` counts ``scope_account`` / ``scope_connection``
(the scope told) and ``unattributed``; ``feed.sequence_scope`` says which.

Values that cannot be real never move a mark (one bogus frame must not silence an
account: a mark dated 2286 would make every real event look old, for good once
persisted). The adapter reads no clock; it knows the server's clock from the server's
own frames: every frame carries ``timestamp`` (ms), and the engine passes ``now``
(monotonic seconds) with it, so ``timestamp - now`` is the offset between the two
clocks, the same for every frame sent now (replayed frames give a smaller one: they are
older). The offsets of a connection's recent believable frames (acks, heartbeats,
replay-complete, and the sequenced frames that set or change an account's day), median
taken, say what time it is on the server at any ``now``. The first is the ack of our own
subscribe; a frame more than ``max_skew`` off is not believed and not learned from (three
such in a row that agree with each other replace the estimate: it was the earlier ones
that were wrong). Offsets are kept per connection (a monotonic clock stops while the
machine sleeps).
Then, per account, only where a frame would set or change the mark's trading day (the
hot path compares two strings, as before):

* a frame whose timestamp is more than ``max_skew`` (2 days) from the server's clock is
  reported (:class:`Report` of a :class:`ProtocolError`), not delivered, and moves no mark;
* a mark whose day lies after the server's present (restored from a store written by a
  bad frame) is discarded with a report when the server's frames of today arrive (the
  replay), so those are delivered;
* a sequence that jumps more than ``max_sequence_jump`` (a million) past the mark, or
  past 0 for an account or day without one, is reported, not delivered, never taken for
  a gap to heal, and moves no mark.

Status mapping (Clear Street ``status`` → :class:`~brokerfeeds.events.OrderStatus`):

=========================================================  ================
Clear Street                                               OrderStatus
=========================================================  ================
pending-new                                                PENDING
new, accepted-for-bidding, calculated, stopped, suspended  OPEN
pending-cancel, pending-replace, replaced                  OPEN
partially-filled                                           PARTIALLY_FILLED
filled                                                     FILLED
canceled, cancelled                                        CANCELLED
rejected                                                   REJECTED
expired, done-for-day                                      EXPIRED
anything else                                              from ``state``
=========================================================  ================
"""

from __future__ import annotations

import json
from collections import OrderedDict, deque
from typing import (
    Any,
    Callable,
    Deque,
    Dict,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
    cast,
)

import attrs

from ...errors import (
    AuthenticationError,
    BrokerFeedsError,
    GapDetected,
    ProtocolError,
)
from ...events import (
    Balance,
    Event,
    LocateInventory,
    Notice,
    Order,
    OrderStatus,
    PnL,
    Position,
    ReplayComplete,
    Trade,
)
from ...marks import MAX_SEQUENCE_JUMP, NEW_YORK, Mark
from ...protocol import (
    Fatal,
    Output,
    Protocol,
    RawMessage,
    Reconnect,
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
from ...state import ChangeTracker, SeenIds, map_order_status, side_of, status_table
from ...values import from_epoch_ms, to_decimal, to_text

__all__ = [
    "BROKER",
    "EVENT_ROUTES",
    "ROUTES",
    "STATUS_MAP",
    "ClearStreetProtocol",
    "map_status",
    "order_from",
    "pnl_from",
    "trade_from",
    "trading_day",
]

BROKER = "clearstreet"
_ACTIVITY = "activity"

STATUS_MAP: Dict[str, OrderStatus] = status_table({
    "pending-new": OrderStatus.PENDING,
    "new": OrderStatus.OPEN,
    "accepted-for-bidding": OrderStatus.OPEN,
    "calculated": OrderStatus.OPEN,
    "stopped": OrderStatus.OPEN,
    "suspended": OrderStatus.OPEN,
    "pending-cancel": OrderStatus.OPEN,
    "pending-replace": OrderStatus.OPEN,
    "replaced": OrderStatus.OPEN,
    "partially-filled": OrderStatus.PARTIALLY_FILLED,
    "filled": OrderStatus.FILLED,
    "canceled": OrderStatus.CANCELLED,
    "cancelled": OrderStatus.CANCELLED,
    "rejected": OrderStatus.REJECTED,
    "expired": OrderStatus.EXPIRED,
    "done-for-day": OrderStatus.EXPIRED,
})
_AUTH_WORDS = ("auth", "token", "expired", "forbidden", "credential", "401", "403", "jwt", "permission")


def _route_key(message: Dict[str, Any]) -> Optional[str]:
    """The route of a frame (see ``ROUTES`` and ``EVENT_ROUTES``, after the adapter): its
    payload ``type`` as text; None when it has no payload object."""
    payload = message.get("payload")
    return str(payload.get("type")) if isinstance(payload, dict) else None


_NEW_YORK = NEW_YORK
_ACCOUNT, _CONNECTION = "account", "connection"  # the scopes a sequence may number (module docs)
_ORDER_KINDS = ("order-update", "trade-notice")  # sequenced frames whose data names an order
_ORDER_ACCOUNTS_LIMIT = 200_000  # order ids remembered to attribute trades (far more than a day's)
_NO_ACCOUNT = "(unattributed)"
_UNTOLD = "untold"  # a live frame that fits a connection-wide numbering or a gap (see _learn_scope)
_DAY_MS = 86_400_000.0
_FIRST_MS, _LAST_MS = -62_135_596_800_000.0, 253_402_300_800_000.0  # 0001-01-01 .. 9999-12-31 (UTC)


def trading_day(timestamp_ms: Any) -> Optional[str]:
    """The America/New_York date (``"YYYY-MM-DD"``) of a frame's ``timestamp`` (ms), or None."""
    moment = from_epoch_ms(timestamp_ms)
    return moment.astimezone(_NEW_YORK).date().isoformat() if moment is not None else None


def _epoch_ms(value: Any) -> Optional[float]:
    """A frame's ``timestamp`` as float ms (None if it is not a usable number)."""
    if type(value) is int:
        return float(value)
    number = to_decimal(value)
    return float(number) if number is not None else None


def map_status(status: Optional[str], state: Optional[str], filled: Any = None, quantity: Any = None) -> OrderStatus:
    """Clear Street's ``status`` (falling back to the simplified ``state``) as an :class:`OrderStatus`."""
    mapped = map_order_status(STATUS_MAP, status, None, None)
    if mapped is not OrderStatus.UNKNOWN:
        return mapped
    state = (state or "").lower()
    if state == "open":
        return OrderStatus.OPEN
    if state == "rejected":
        return OrderStatus.REJECTED
    if state == "closed":
        return OrderStatus.FILLED if filled is not None and quantity and filled >= quantity else OrderStatus.CANCELLED
    return OrderStatus.UNKNOWN



def _order_id(value: Any) -> str:
    order_id = to_text(value)
    if order_id is None:
        raise ProtocolError("order without a usable order_id")
    return order_id


def order_from(data: Mapping[str, Any], raw: Any = None, replayed: bool = False) -> Order:
    """An :class:`Order` from a Clear Street Order object (``order-update`` data or REST)."""
    quantity = to_decimal(data.get("quantity"))
    filled = to_decimal(data.get("filled_quantity"))
    remaining = quantity - filled if quantity is not None and filled is not None else None
    status = to_text(data.get("status"))
    return Order(
        broker=BROKER,
        account=to_text(data.get("account_id")),
        order_id=_order_id(data["order_id"]),
        symbol=to_text(data.get("symbol")),
        side=side_of(data.get("side")),
        quantity=quantity,
        filled_quantity=filled,
        remaining_quantity=remaining,
        price=to_decimal(data.get("price")),
        avg_price=to_decimal(data.get("average_price")),
        order_type=to_text(data.get("order_type")),
        status=map_status(status, to_text(data.get("state")), filled, quantity),
        broker_status=status or to_text(data.get("state")),
        time=from_epoch_ms(first(data.get("updated_at"), data.get("created_at"))),
        replayed=replayed,
        raw=raw if raw is not None else dict(data),
    )


def trade_from(data: Mapping[str, Any], raw: Any = None, replayed: bool = False) -> Trade:
    """A :class:`Trade` from a Clear Street Trade object."""
    return Trade(
        broker=BROKER,
        account=to_text(data.get("account_id")),
        trade_id=to_text(data.get("trade_id")),
        order_id=to_text(data.get("order_id")),
        symbol=to_text(data.get("symbol")),
        side=side_of(data.get("side")),
        quantity=to_decimal(data.get("quantity")),
        price=to_decimal(data.get("price")),
        time=from_epoch_ms(data.get("created_at")),
        replayed=replayed,
        raw=raw if raw is not None else dict(data),
    )


def pnl_from(account: str, body: Mapping[str, Any]) -> PnL:
    """A :class:`PnL` from REST ``/accounts/{id}/pnl-summary``."""
    return PnL(
        broker=BROKER,
        account=to_text(first(body.get("account_id"), account)),
        daily_pnl=to_decimal(body.get("day_pnl")),
        unrealized_pnl=to_decimal(body.get("unrealized_pnl")),
        realized_pnl=to_decimal(body.get("realized_pnl")),
        net_liquidation=to_decimal(body.get("equity")),
        market_value=to_decimal(first(body.get("net_market_value"), body.get("gross_market_value"))),
        raw=dict(body),
    )


def _notes_gap(notes: Sequence[Output]) -> bool:
    """Whether ``notes`` reports a gap already (one accepted for this frame)."""
    return any(isinstance(note, Report) and isinstance(note.error, GapDetected) for note in notes)


class _Run:
    """One account's sequenced frames on the current connection, in its current trading day:
    the last sequence placed (None: none yet) and the last position given (see ``_on_sequenced``;
    positions count from the server's first number, like its sequences)."""

    __slots__ = ("seq", "key", "day")

    def __init__(self, day: Optional[str], first: int) -> None:
        self.seq: Optional[int] = None
        self.key = first - 1
        self.day = day


class ClearStreetProtocol(Protocol):
    """Sans-I/O adapter for the activity channel (sequence marks, replay, acks).

    The feed gives it the token with :meth:`use_token` before every connection;
    :meth:`subscribe` puts it in each ``subscribe-activity`` message. Marks survive reconnects (this object lives for
    one run of the feed) and can be exported / restored with :meth:`export_marks` /
    :meth:`restore_marks`.
    """

    broker = BROKER
    ready_on_open = True

    def __init__(self, replay_timeout: float = 30.0, marks: Optional[Mapping[str, Any]] = None, *,
                 max_skew: float = 2 * 86_400.0, max_sequence_jump: int = MAX_SEQUENCE_JUMP) -> None:
        self.replay_timeout = replay_timeout
        #: How far (seconds) a frame's timestamp may lie from the server's clock (module docs).
        self.max_skew = max_skew
        #: How far a sequence may move past the mark in one step (module docs).
        self.max_sequence_jump = max_sequence_jump
        self._token: Optional[str] = None
        self.marks: Dict[str, int] = {}
        self.mark_days: Dict[str, Optional[str]] = {}
        # Per connection.
        self.accounts: List[str] = []  # subscribed on this connection, in order
        self._pending: Deque[str] = deque()  # subscribes awaiting their ack
        self._replaying: Dict[str, None] = {}  # accounts replaying, oldest first (ordered set)
        self._acked: Set[str] = set()
        self._broken: Set[str] = set()  # a gap was seen: ignore the account until reconnected
        self._all_broken = False  # a gap in a connection-wide numbering: ignore every account until reconnected
        self._removed: Set[str] = set()  # unsubscribed while this connection lives
        self._scope: Optional[str] = None  # the sequence scope this connection showed (module docs)
        self._conn_seq: Optional[int] = None  # the last sequence placed in this connection's order
        self._runs: Dict[str, _Run] = {}  # each account's frames on this connection
        self._loose: Set[int] = set()  # per-account numbers of frames of no known account
        self._last_progress = 0.0
        self._clock: Deque[float] = deque(maxlen=7)  # server ms - monotonic ms, of recent frames
        self._dissent: Deque[float] = deque(maxlen=3)  # the same, of frames not believed, in a row
        # Per run.
        self._auth_retried: Set[str] = set()
        self.failed: Set[str] = set()  # accounts stopped after repeated auth failures
        self._gap_tries: Dict[Tuple[str, int], int] = {}
        #: The sequence scope the server showed last: "account", "connection", or None (not told yet).
        self.sequence_scope: Optional[str] = None
        self._order_accounts: "OrderedDict[str, str]" = OrderedDict()  # order id -> account, to attribute trades
        self._first = 1  # the first number of a day (or of a connection's numbering)
        self._order_versions: Dict[str, Any] = {}
        self._trade_ids = SeenIds()
        self._pnl = ChangeTracker[PnL]()
        self._counters: Dict[str, int] = {
            "duplicates": 0, "replayed": 0, "gaps": 0, "gap_held_back": 0, "day_resets": 0,
            "replay_timeouts": 0, "unattributed": 0, "implausible": 0, "marks_discarded": 0,
            "scope_account": 0, "scope_connection": 0, "scope_untold": 0,
        }
        if marks:
            self.restore_marks(marks)

    # ------------------------------------------------------------- marks
    def export_marks(self) -> Dict[str, Mark]:
        """``{account: {"sequence": n, "trading_day": "YYYY-MM-DD" or None}}`` (JSON-friendly)."""
        return {acct: {"sequence": seq, "trading_day": self.mark_days.get(acct)} for acct, seq in self.marks.items()}

    def use_token(self, token: str) -> List[Output]:
        """The bearer token for the next ``subscribe-activity`` messages."""
        self._token = token
        return []

    @property
    def token(self) -> Optional[str]:
        """The token in use (read-only: give a new one with :meth:`use_token`)."""
        return self._token

    def counters(self) -> Mapping[str, int]:
        return dict(self._counters)

    def restore_marks(self, marks: Mapping[str, Any]) -> List[Output]:
        """Adopt marks saved earlier (a mark of a later day, or higher on the same day, wins).

        Values may be ``{"sequence": n, "trading_day": day}`` dicts or bare integers.
        """
        for acct, value in marks.items():
            if isinstance(value, Mapping):
                seq, day = value.get("sequence"), value.get("trading_day")
            else:
                seq, day = value, None
            try:
                seq = int(seq)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise ValueError(f"bad mark for account {acct!r}: {value!r}") from None
            acct = str(acct)
            day = to_text(day)
            have, have_day = self.marks.get(acct), self.mark_days.get(acct)
            if have is None or (day or "") > (have_day or "") or (day == have_day and seq > have):
                self.marks[acct] = seq
                self.mark_days[acct] = day
        return []

    # ------------------------------------------------------------- connection
    def on_open(self, now: float) -> List[Output]:
        self._reset_connection(now)
        return super().on_open(now)

    def on_close(self) -> None:
        self._reset_connection(0.0)

    def _reset_connection(self, now: float) -> None:
        self.accounts = []
        self._pending.clear()
        self._replaying.clear()
        self._acked.clear()
        self._broken.clear()
        self._all_broken = False
        self._removed.clear()
        self._scope = self.sequence_scope  # the server's numbering does not change between connections
        self._conn_seq = None
        self._runs.clear()
        self._loose.clear()
        self._last_progress = now
        self._clock.clear()
        self._dissent.clear()

    # ------------------------------------------------------------- outgoing
    def subscribe(self, subs: Sequence[Subscription], now: float) -> List[Output]:
        out: List[Output] = []
        for sub in subs:
            if sub.kind != _ACTIVITY or not sub.key:
                continue
            acct = sub.key
            if acct in self.failed or acct in self.accounts:
                continue
            if self._token is None:
                out.append(Report(AuthenticationError("no access token: cannot subscribe")))
                continue
            self.accounts.append(acct)
            self._removed.discard(acct)
            self._pending.append(acct)
            if not self._replaying:
                self._last_progress = now
            self._replaying[acct] = None
            out.append(Send(json.dumps({"authorization": self._token,
                                        "payload": {"type": "subscribe-activity", "account_id": acct}})))
        return out

    def unsubscribe(self, subs: Sequence[Subscription], now: float) -> List[Output]:
        """No unsubscribe message exists: forget the accounts and recycle the connection."""
        removed = [s.key for s in subs if s.kind == _ACTIVITY and s.key in self.accounts]
        if not removed:
            return []
        for acct in removed:
            self.accounts.remove(acct)
            self._removed.add(acct)
        return [Reconnect(f"unsubscribed account(s) {', '.join(removed)}: recycling the connection",
                          immediate=True)]

    def maintain(self, now: float) -> List[Output]:
        """A replay that stops making progress for ``replay_timeout`` s is declared complete."""
        if not self._replaying or now - self._last_progress <= self.replay_timeout:
            return []
        out: List[Output] = []
        for acct in list(self._replaying):
            self._finish_replay(acct)
            self._counters["replay_timeouts"] += 1
            out.append(Report(BrokerFeedsError(
                f"account {acct}: replay made no progress for {self.replay_timeout:g}s and "
                "replay-complete never came; treating the account as live")))
            out.append(ReplayComplete(broker=BROKER, account=acct, timed_out=True))
        self._last_progress = now
        return out

    # ------------------------------------------------------------- the server's clock
    def _observe(self, message: Dict[str, Any], now: float) -> Optional[Report]:
        """Learn the server's clock from ``message``'s timestamp; a Report if that timestamp
        lies more than ``max_skew`` from what the connection's other frames say."""
        stamp = _epoch_ms(message.get("timestamp"))
        if stamp is None:
            return None
        offset = stamp - now * 1000.0
        known = self._offset()
        skew = self.max_skew * 1000.0
        if not _FIRST_MS < stamp < _LAST_MS:  # not even a date (years 1 to 9999): never learned from
            self._counters["implausible"] += 1
            return Report(ProtocolError("frame timestamp is no time at all: ignored", item_excerpt(message)))
        if known is None or abs(offset - known) <= skew:
            self._clock.append(offset)
            self._dissent.clear()
            return None
        # Not believed, and not learned from. But three in a row that agree with each other
        # and not with what came before say the earlier frames were the wrong ones (a
        # connection whose first frame was bogus): believe them from now on.
        self._dissent.append(offset)
        if len(self._dissent) == self._dissent.maxlen and max(self._dissent) - min(self._dissent) <= skew:
            self._clock.clear()
            self._clock.extend(self._dissent)
            self._dissent.clear()
            return None
        self._counters["implausible"] += 1
        days = (offset - known) / _DAY_MS
        return Report(ProtocolError(
            f"frame timestamp {trading_day(stamp) or stamp} is {days:+.1f} days from the server's clock "
            "(as its other frames show): it cannot be real, so it moves no mark and is not delivered",
            item_excerpt(message)))

    def _offset(self) -> Optional[float]:
        """The median offset (server ms - monotonic ms) of this connection's recent frames."""
        samples = self._clock
        if not samples:
            return None
        return sorted(samples)[(len(samples) - 1) // 2]

    def _after_server_today(self, day: str, now: float) -> bool:
        """Whether trading day ``day`` lies after the server's present (plus ``max_skew``)."""
        offset = self._offset()
        if offset is None:
            return False  # nothing to judge by yet
        latest = trading_day(int(offset + now * 1000.0 + self.max_skew * 1000.0))
        return latest is not None and day > latest

    # ------------------------------------------------------------- incoming
    @only_protocol_errors
    def on_frame(self, data: bytes, binary: bool, now: float) -> List[Output]:
        message = parse_json(data)
        kind = ROUTES.key(message) if isinstance(message, dict) else None
        if kind is None:
            return [RawMessage(message)]  # not an object, or no payload object
        if kind == "heartbeat":
            bad = self._observe(message, now)
            return [bad] if bad is not None else []
        payload: Dict[str, Any] = message["payload"]
        if message.get("sequence") is not None:
            return self._on_sequenced(message, payload, kind, now)
        out: List[Output] = [RawMessage(message)]
        bad = self._observe(message, now)
        if bad is not None:
            out.append(bad)
        handler = ROUTES.get(kind)
        if handler is not None:
            out.extend(handler(self, message, payload, now))
        return out  # unknown types: on_message only

    def _on_ack(self, message: Dict[str, Any], payload: Dict[str, Any], now: float) -> List[Output]:
        acct = to_text(payload.get("account_id"))
        if acct is not None and acct in self._pending:
            self._pending.remove(acct)
        elif self._pending:
            acct = self._pending.popleft()  # the older guide's ack has no account_id: FIFO
        if acct is None:
            return [Report(ProtocolError("subscribe-activity-ack for no pending subscribe",
                                         item_excerpt(payload)))]
        self._last_progress = now
        details = to_text(payload.get("details")) or ""
        if payload.get("success") is True or (to_text(payload.get("success")) or "").lower() == "true":
            self._acked.add(acct)
            self._auth_retried.discard(acct)
            return []
        self._finish_replay(acct)
        if acct in self.accounts:
            self.accounts.remove(acct)
        text = f"subscribe to account {acct} refused: {details or 'no details'}"
        if not any(word in details.lower() for word in _AUTH_WORDS):
            return [Report(BrokerFeedsError(text))]
        if acct not in self._auth_retried:
            self._auth_retried.add(acct)
            return [Report(AuthenticationError(text + " (retrying once with a fresh token)")),
                    Reconnect(f"account {acct}: token refused; reconnecting with a fresh token", immediate=True,
                              fresh_credentials=True)]
        self.failed.add(acct)
        error = AuthenticationError(text + " (again after a token refresh: account stopped)")
        if self.accounts:  # other accounts on this connection go on
            return [Report(error)]
        return [Fatal(error)]

    def _on_replay_complete(self, message: Dict[str, Any], payload: Dict[str, Any], now: float) -> List[Output]:
        acct = to_text(payload.get("account_id"))
        if acct is None or acct not in self._replaying:
            acked = [a for a in self._replaying if a in self._acked]
            acct = acked[0] if acked else next(iter(self._replaying), None)
        if acct is None:
            return []  # late (after a timeout) or unsolicited: on_message only
        self._finish_replay(acct)
        self._last_progress = now
        return [ReplayComplete(broker=BROKER, account=acct, raw=payload)]

    def _on_error_notice(self, message: Dict[str, Any], payload: Dict[str, Any], now: float) -> List[Output]:
        details = to_text(first(payload.get("details"), payload.get("message"))) or "error notice without details"
        acct = self._pending.popleft() if self._pending else None
        if acct is not None:
            self._finish_replay(acct)
            if acct in self.accounts:
                self.accounts.remove(acct)
        where = f" (subscribe to account {acct} failed)" if acct is not None else ""
        return [Notice(broker=BROKER, kind="error", text=details, account=acct, raw=message),
                Report(BrokerFeedsError(f"Clear Street error notice{where}: {details}"))]

    def _finish_replay(self, acct: str) -> None:
        self._replaying.pop(acct, None)
        if acct in self._pending:
            self._pending.remove(acct)

    # ------------------------------------------------------------- sequenced messages
    def _account_of(self, payload: Dict[str, Any], kind: str) -> Optional[str]:
        """The account a sequenced frame belongs to: its ``account_id``; else (a ``trade-notice``
        may lack it: studio_sdk ``Trade.account_id`` is Optional) the account of its order;
        else the only account of this connection."""
        data = payload.get("data")
        if not isinstance(data, dict):
            data = {}
        acct = to_text(first(data.get("account_id"), payload.get("account_id")))
        order_id = to_text(data.get("order_id")) if kind in _ORDER_KINDS else None
        if acct is not None:
            if order_id is not None and order_id not in self._order_accounts:
                self._order_accounts[order_id] = acct  # oldest forgotten first: orders live a day
                if len(self._order_accounts) > _ORDER_ACCOUNTS_LIMIT:
                    self._order_accounts.popitem(last=False)
            return acct
        if order_id is not None:
            acct = self._order_accounts.get(order_id)
            if acct is not None:
                return acct
        # (Not by its number: where numbers count per account, the one account it continues
        # may not be its own when a frame was lost.)
        return self.accounts[0] if len(self.accounts) == 1 else None

    def _on_sequenced(self, message: Dict[str, Any], payload: Dict[str, Any], kind: str, now: float) -> List[Output]:
        seq = message["sequence"]
        if type(seq) is not int:
            try:
                if isinstance(seq, bool):
                    raise TypeError(seq)
                seq = int(seq)
            except (TypeError, ValueError, OverflowError):
                raise ProtocolError("sequence is not an integer", item_excerpt(message)) from None
        if seq == 0:
            self._first = 0  # the server counts from 0 (the docs do not say; 1 until a 0 shows)
        acct = self._account_of(payload, kind)
        if self._all_broken:  # a gap on a connection-wide numbering: nothing more until the replay
            self._counters["gap_held_back"] += 1
            return []
        if acct is None:
            return self._unattributed(message, payload, kind, seq)
        if acct in self._broken:
            self._counters["gap_held_back"] += 1
            return []
        replaying = acct in self._replaying
        if replaying:
            self._last_progress = now
        day = trading_day(message.get("timestamp"))
        mark = self.marks.get(acct)
        mark_day = self.mark_days.get(acct)
        notes: List[Output] = []  # reports that go with the frame's event (rare)
        new_day = discard = stale = False
        if day is not None and day != mark_day:
            # The frame would set or change the account's trading day: only on a timestamp
            # the server's clock (its other frames) agrees with.
            bad = self._observe(message, now)
            if bad is not None:
                return [bad]
            if mark is not None and mark_day is not None:
                if day > mark_day:  # a new trading day: the server's sequences restarted
                    new_day = True
                elif self._after_server_today(mark_day, now):
                    discard = True
                else:  # a frame of an earlier day than what was delivered: stale
                    stale = True
        run = self._runs.get(acct)
        if run is None or (day is not None and run.day is not None and day > run.day):
            run = _Run(day, self._first)  # the account's first frame of this connection, or of a new day
        scope = self._learn_scope(acct, seq, run, replaying)
        if scope == _UNTOLD:
            return self._untold(acct, seq)
        if new_day:
            self._counters["day_resets"] += 1
            mark = None
            self._forget_day()
        elif discard:
            # A mark dated after the server's present (restored from a store that a bogus
            # frame wrote): the server's own frames of today win.
            self._counters["marks_discarded"] += 1
            notes.append(Report(ProtocolError(
                f"account {acct}: discarding mark {mark} of trading day {mark_day}, which lies after the "
                f"server's present (its frames are of {day}): it cannot have been real")))
            mark = None
            del self.marks[acct]
            self.mark_days.pop(acct, None)
            self._forget_day()
        if scope == _ACCOUNT:
            if stale:
                self._counters["duplicates"] += 1
                return []
            key = seq
            self._runs[acct] = run
            if run.seq is None or seq > run.seq:
                run.seq = seq
        else:
            # The connection's own order: the numbering of a connection-wide scope, and the
            # same as the account's while only one account has had frames on it.
            held = self._connection_order(acct, seq, run, scope, mark, message, notes)
            if held is not None:
                return held
            if stale:
                self._counters["duplicates"] += 1
                return []
            key = run.key + 1 if scope == _CONNECTION else seq
            run.key = key
        if acct in self._removed:
            return []
        # The account's mark: the position of its last delivered message in its day.
        if mark is None and (key < 0 or key > self.max_sequence_jump):
            return notes + [self._implausible_sequence(acct, key, 0, message)]
        if mark is not None and key <= mark:
            self._counters["duplicates"] += 1
            return []
        last = mark if mark is not None else self._first - 1  # none yet: the day's first is due
        if key > last + 1 and not _notes_gap(notes) and not self._filled_by_loose(scope, last, key):
            if mark is not None and key - mark > self.max_sequence_jump:
                return [self._implausible_sequence(acct, key, mark, message)]
            held = self._gap(acct, last + 1, key, scope != _ACCOUNT, notes)
            if held is not None:
                return held
        self._advance(acct, key, day)
        return notes + self._deliver(message, payload, kind, replaying, acct)

    def _filled_by_loose(self, scope: Optional[str], last: int, key: int) -> bool:
        """Whether the numbers between ``last`` and ``key`` of a per-account numbering (or one
        not told yet) all went to frames of no known account on this connection (then they were this
        account's, already delivered: no gap). Each is used once."""
        missing = range(last + 1, key)
        if scope == _CONNECTION or len(missing) > len(self._loose) or not all(n in self._loose for n in missing):
            return False
        self._loose.difference_update(missing)
        return True

    def _learn_scope(self, acct: str, seq: int, run: "_Run", replaying: bool) -> Optional[str]:
        """The scope of the server's sequences (module docs): learned from the first frame
        that fits one scope and not the other, and kept for the run. A frame that starts or
        continues its account's numbering but not the connection's tells "per account" for
        sure (per connection, that number was another account's). One that continues the
        connection's numbering but not its account's tells "per connection" only in a
        replay (read from the server's journal); live, it may as well be a gap in the
        account's numbering: ``_UNTOLD``."""
        if self._scope is not None or self._conn_seq is None:
            return self._scope
        account_next = run.seq + 1 if run.seq is not None else self._first  # a replay starts the account's day
        while account_next < seq and account_next in self._loose:
            account_next += 1  # a number a frame of no known account took: this account's, maybe
        connection_next = self._conn_seq + 1
        if account_next == connection_next:
            return None  # both scopes expect this number: nothing learned yet
        if seq == connection_next:
            if not replaying and self._counters["scope_untold"] < 2:
                return _UNTOLD
            scope = _CONNECTION  # (live, after two reconnects told nothing: the likelier reading)
        elif seq == account_next:
            scope = _ACCOUNT
        else:
            return None
        self._scope = self.sequence_scope = scope
        self._counters["scope_" + scope] += 1
        return scope

    def _untold(self, acct: str, seq: int) -> List[Output]:
        """A live frame that continues the connection's numbering but not its account's:
        nothing more is delivered on this connection, whose replays will tell the scope."""
        self._counters["scope_untold"] += 1
        self._all_broken = True
        return [Reconnect(f"account {acct}: sequence {seq} continues this connection's numbering, not the "
                          "account's: reconnecting, the replay tells which the server uses", immediate=False)]

    def _connection_order(self, acct: str, seq: int, run: "_Run", scope: Optional[str], mark: Optional[int],
                          message: Dict[str, Any], notes: List[Output]) -> Optional[List[Output]]:
        """Place ``seq`` in this connection's order (a connection-wide scope, or one not yet
        told); what to return instead of delivering (a duplicate, a gap), or None."""
        previous = self._conn_seq
        if previous is None:  # the connection's first sequenced frame
            if mark is None and (seq < 0 or seq > self.max_sequence_jump):
                return [self._implausible_sequence(acct, seq, 0, message)]
            if mark is not None and seq - mark > self.max_sequence_jump:
                return [self._implausible_sequence(acct, seq, mark, message)]
            if scope == _CONNECTION and seq != self._first:  # the connection's first numbers never came
                held = self._gap(acct, self._first, seq, True, notes)
                if held is not None:
                    return held
            # (Not told yet: the account's mark judges it, below.)
        else:
            expected = previous + 1
            if seq - previous > self.max_sequence_jump:
                return [self._implausible_sequence(acct, seq, previous, message)]
            # Below what both scopes expect (or, once told, what this one expects): a repeat.
            account_next = self._first if run.seq is None else run.seq + 1
            lowest = expected if scope == _CONNECTION else min(expected, account_next)
            if seq < lowest:
                self._counters["duplicates"] += 1
                return []
            if seq != expected:
                held = self._gap(acct, expected, seq, True, notes, accept=scope != _CONNECTION)
                if held is not None:
                    return held
        self._conn_seq = seq
        run.seq = seq
        self._runs[acct] = run
        return None

    def _gap(self, acct: str, expected: int, got: int, wide: bool, notes: List[Output],
             accept: bool = True) -> Optional[List[Output]]:
        """A gap: held back (the account's frames, or with ``wide`` the whole connection's,
        until the reconnect's replay delivers the missing ones) and a Reconnect. The same
        hole a third time is in the server's journal: ``accept``-ed (reported, added to
        ``notes``; None returned), so it cannot cause a reconnect loop. (A hole in a
        connection-wide numbering is never the same twice: each replay is numbered anew.)"""
        self._counters["gaps"] += 1
        error = GapDetected(acct, expected, got)
        tries = self._gap_tries.get((acct, expected), 0)
        if tries < 2 or not accept:
            if accept:
                self._gap_tries[(acct, expected)] = tries + 1  # kept: replays show the same hole again
            if wide:
                self._all_broken = True
            else:
                self._broken.add(acct)
            self._counters["gap_held_back"] += 1
            where = "this connection's sequence" if wide else f"account {acct}"
            return [Report(error), Reconnect(f"sequence gap on {where}", immediate=False)]
        notes.append(Report(error))
        return None

    def _unattributed(self, message: Dict[str, Any], payload: Dict[str, Any], kind: str, seq: int) -> List[Output]:
        """A sequenced frame of no known account on a connection of several (a trade of an
        order whose ``order-update`` never came). Per connection it takes its place in the
        connection's order and is delivered without an account. Otherwise its order's
        ``order-update`` was lost, most likely: nothing more is delivered on this connection
        and the feed reconnects, the replay attributes it. The same frame a third time is
        delivered without an account, and its number is no gap for the account that skips
        it (``_loose``)."""
        notes: List[Output] = []
        previous = self._conn_seq
        if self._scope == _CONNECTION:
            if previous is not None and seq <= previous:
                self._counters["duplicates"] += 1
                return []
            expected = self._first if previous is None else previous + 1
            if seq > expected:
                held = self._gap(_NO_ACCOUNT, expected, seq, True, notes, accept=False)
                if held is not None:
                    return held
            self._conn_seq = seq
        else:
            data = payload.get("data")
            ident = to_text(first(data.get("trade_id"), data.get("order_id"))) if isinstance(data, dict) else None
            key = (f"{kind}:{ident or seq}", seq)
            tries = self._gap_tries.get(key, 0)
            if tries < 2:
                self._gap_tries[key] = tries + 1
                self._all_broken = True
                self._counters["gap_held_back"] += 1
                return [Report(ProtocolError(f"{kind} {ident or ''} of no known account (its order was never seen): "
                                             "reconnecting, the replay tells whose it is", item_excerpt(message))),
                        Reconnect(f"{kind} of no known account", immediate=False)]
            if self._scope is None and seq == (self._first if previous is None else previous + 1):
                self._conn_seq = seq
            self._loose.add(seq)  # some account's own number: not a gap when that account skips it
        self._counters["unattributed"] += 1
        return notes + self._deliver(message, payload, kind, replayed=False, account=None)

    def _forget_day(self) -> None:
        """A new trading day: sequences and versions restart (the secondary de-duplication too)."""
        self._order_versions.clear()
        self._trade_ids = SeenIds()
        self._gap_tries.clear()

    def _implausible_sequence(self, acct: str, seq: int, mark: int, message: Dict[str, Any]) -> Report:
        self._counters["implausible"] += 1
        return Report(ProtocolError(
            f"account {acct}: sequence {seq} after {mark} cannot be real (a jump of more than "
            f"{self.max_sequence_jump}): not delivered, the mark stays", item_excerpt(message)))

    def _advance(self, acct: str, seq: int, day: Optional[str]) -> None:
        self.marks[acct] = seq
        if day is not None or acct not in self.mark_days:
            self.mark_days[acct] = day

    def _deliver(self, message: Dict[str, Any], payload: Dict[str, Any], kind: str, replayed: bool,
                 account: Optional[str]) -> List[Output]:
        if replayed:
            self._counters["replayed"] += 1
        out: List[Output] = [RawMessage(message)]
        data = payload.get("data")
        if not isinstance(data, dict):
            if kind in EVENT_ROUTES.table:
                out.append(Report(ProtocolError(f"{kind} without a data object", item_excerpt(message))))
            return out
        decoder = EVENT_ROUTES.get(kind)
        if decoder is not None:
            try:
                event = decoder(self, data, message, replayed)
            except Exception as exc:  # noqa: BLE001 - reported; the sequence was consumed, the stream goes on
                out.append(skipped(f"Clear Street {kind}", data, exc))
                return out
            if event is not None:
                if account is not None and getattr(event, "account", account) is None:
                    event = attrs.evolve(cast(Any, event), account=account)  # attributed by its order (see _account_of)
                out.append(event)
        return out

    def _order(self, data: Dict[str, Any], message: Dict[str, Any], replayed: bool) -> Optional[Order]:
        order_id = to_text(data.get("order_id"))
        if order_id is None:
            raise ProtocolError("order-update without order_id", item_excerpt(message))
        version = data.get("version")
        order = order_from(data, message, replayed)
        if version is not None:
            if self._order_versions.get(order_id) == version:
                self._counters["duplicates"] += 1
                return None  # the same version under another sequence number
            self._order_versions[order_id] = version
        return order

    def _trade(self, data: Dict[str, Any], message: Dict[str, Any], replayed: bool) -> Optional[Trade]:
        trade_id = to_text(data.get("trade_id"))
        trade = trade_from(data, message, replayed)
        if trade_id is not None and not self._trade_ids.first_time(trade_id):
            self._counters["duplicates"] += 1
            return None
        return trade

    def _position(self, data: Dict[str, Any], message: Dict[str, Any], replayed: bool) -> Optional[Position]:
        return Position(
            broker=BROKER,
            account=to_text(data.get("account_id")),
            symbol=to_text(data.get("symbol")) or "",
            quantity=to_decimal(data.get("quantity")),
            avg_price=to_decimal(data.get("average_cost")),
            replayed=replayed,
            raw=message,
        )

    def _buying_power(self, data: Dict[str, Any], message: Dict[str, Any], replayed: bool) -> Optional[Balance]:
        # The spec's schema names the figure "amount" but requires "buying_power": accept both.
        return Balance(
            broker=BROKER,
            account=to_text(data.get("account_id")),
            buying_power=to_decimal(first(data.get("amount"), data.get("buying_power"))),
            currency="USD",
            values=dict(data),
            replayed=replayed,
            raw=message,
        )

    def _locate(self, data: Dict[str, Any], message: Dict[str, Any], replayed: bool) -> Optional[LocateInventory]:
        return LocateInventory(
            broker=BROKER,
            account=to_text(data.get("account_id")),
            symbol=to_text(data.get("symbol")),
            quantity=to_decimal(data.get("available")),
            values=dict(data),
            replayed=replayed,
            raw=message,
        )

    # ------------------------------------------------------------- REST results
    @only_protocol_errors
    def pnl_update(self, account: str, body: Any) -> List[Output]:
        """A :class:`PnL` for a pnl-summary body, if it changed since the last poll."""
        if not isinstance(body, dict):
            return [Report(ProtocolError(f"pnl-summary for account {account} is not a JSON object"))]
        pnl = pnl_from(account, body)
        return [pnl] if self._pnl.update(account, pnl) is not None else []


#: A handler of a frame without a sequence: ``(adapter, message, payload, now) -> outputs``.
_ControlHandler = Callable[[ClearStreetProtocol, Dict[str, Any], Dict[str, Any], float], List[Output]]
#: A decoder of a sequenced frame the marks let through: ``(adapter, data, message, replayed)``
#: → its event (None: a duplicate).
_EventDecoder = Callable[[ClearStreetProtocol, Dict[str, Any], Dict[str, Any], bool], Optional[Event]]

#: Frames without a sequence, by payload type; other types reach ``on_message`` only.
ROUTES: Routes[_ControlHandler] = Routes(key=_route_key, table={
    "subscribe-activity-ack": ClearStreetProtocol._on_ack,
    "replay-complete": ClearStreetProtocol._on_replay_complete,
    "error-notice": ClearStreetProtocol._on_error_notice,
})

#: Sequenced frames, by payload type; other types reach ``on_message`` only.
EVENT_ROUTES: Routes[_EventDecoder] = Routes(key=_route_key, table={
    "order-update": ClearStreetProtocol._order,
    "trade-notice": ClearStreetProtocol._trade,
    "position-update": ClearStreetProtocol._position,
    "buying-power-update": ClearStreetProtocol._buying_power,
    "locate-inventory-update": ClearStreetProtocol._locate,
})
