"""Normalised, immutable event objects shared by every broker.

Every event carries ``broker`` (``"ibkr"``, ``"upstox"``, ...), the ``account`` it
belongs to where the broker says so, and ``raw``: the broker's own message the event
was built from, untouched, for anything the normalised fields do not cover.

Money and quantities are :class:`decimal.Decimal`; a field the broker did not send is
``None``. Times are timezone-aware :class:`datetime.datetime` objects (UTC unless the
broker states another zone).
"""

from __future__ import annotations

import datetime as _dt
import enum
from decimal import Decimal
from typing import Any, Mapping, Optional

import attrs

__all__ = [
    "Side",
    "OrderStatus",
    "Event",
    "Order",
    "Trade",
    "Position",
    "PnL",
    "Holding",
    "Balance",
    "Quote",
    "Notice",
    "GttOrder",
    "LocateInventory",
    "ReplayComplete",
    "Connected",
    "Disconnected",
    "ACCOUNT_EVENTS",
]


class Side(str, enum.Enum):
    """Direction of an order or fill."""

    BUY = "BUY"
    SELL = "SELL"


class OrderStatus(str, enum.Enum):
    """One order-status vocabulary for all brokers (each adapter maps its own words)."""

    PENDING = "PENDING"
    OPEN = "OPEN"
    #: Accepted by the broker but not working (IBKR ``Inactive``: a system, exchange or
    #: other issue). Not final: a later update may bring it back to OPEN or fill it.
    INACTIVE = "INACTIVE"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    CANCELLED = "CANCELLED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"
    UNKNOWN = "UNKNOWN"

    @property
    def is_final(self) -> bool:
        """True for states an order never leaves (filled, cancelled, rejected, expired)."""
        return self in _FINAL_STATUSES


_FINAL_STATUSES = frozenset(
    {OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.REJECTED, OrderStatus.EXPIRED}
)

_opt_decimal = attrs.field(default=None, kw_only=True)


@attrs.frozen(slots=True, kw_only=True)
class Event:
    """Base class of every data event."""

    broker: str
    raw: Any = attrs.field(default=None, repr=False, eq=False)


@attrs.frozen(slots=True, kw_only=True)
class Order(Event):
    """The complete, merged state of one order after a change.

    ``order_id`` is the broker's own id; ``client_order_id`` is the id the client gave
    the order when placing it (IBKR's ``order_ref`` / cOID), where the broker sends one.
    """

    account: Optional[str] = None
    order_id: str
    client_order_id: Optional[str] = None
    symbol: Optional[str] = None
    side: Optional[Side] = None
    quantity: Optional[Decimal] = None
    filled_quantity: Optional[Decimal] = None
    remaining_quantity: Optional[Decimal] = None
    price: Optional[Decimal] = None
    avg_price: Optional[Decimal] = None
    order_type: Optional[str] = None
    status: OrderStatus = OrderStatus.UNKNOWN
    broker_status: Optional[str] = None
    time: Optional[_dt.datetime] = None
    exchange: Optional[str] = None
    replayed: bool = False


@attrs.frozen(slots=True, kw_only=True)
class Trade(Event):
    """One fill (execution).

    ``order_id`` is the broker's id of the order the fill belongs to, or None when the
    broker did not say and it could not be resolved; it is never the client's id, which
    is ``client_order_id``.
    """

    account: Optional[str] = None
    trade_id: Optional[str] = None
    order_id: Optional[str] = None
    client_order_id: Optional[str] = None
    symbol: Optional[str] = None
    side: Optional[Side] = None
    quantity: Optional[Decimal] = None
    price: Optional[Decimal] = None
    time: Optional[_dt.datetime] = None
    exchange: Optional[str] = None
    replayed: bool = False


@attrs.frozen(slots=True, kw_only=True)
class Position(Event):
    """A position's current size and figures."""

    account: Optional[str] = None
    symbol: str
    quantity: Optional[Decimal] = None
    avg_price: Optional[Decimal] = None
    realized_pnl: Optional[Decimal] = None
    unrealized_pnl: Optional[Decimal] = None
    exchange: Optional[str] = None
    instrument: Optional[str] = None
    replayed: bool = False


@attrs.frozen(slots=True, kw_only=True)
class PnL(Event):
    """Account-level profit and loss totals.

    A figure the broker does not send is None, never 0: IBKR's ``spl`` has no realized
    P&L, so there ``realized_pnl`` is None; its ``mv`` is the *margin* value
    (``margin_value``), not a market value.
    """

    account: Optional[str] = None
    daily_pnl: Optional[Decimal] = None
    unrealized_pnl: Optional[Decimal] = None
    realized_pnl: Optional[Decimal] = None
    net_liquidation: Optional[Decimal] = None
    market_value: Optional[Decimal] = None
    margin_value: Optional[Decimal] = None
    excess_liquidity: Optional[Decimal] = None


@attrs.frozen(slots=True, kw_only=True)
class Holding(Event):
    """A long-term (delivery) holding."""

    account: Optional[str] = None
    symbol: str
    quantity: Optional[Decimal] = None
    avg_price: Optional[Decimal] = None
    exchange: Optional[str] = None
    instrument: Optional[str] = None


@attrs.frozen(slots=True, kw_only=True)
class Balance(Event):
    """Cash and buying-power figures; ``values`` holds every figure received."""

    account: Optional[str] = None
    buying_power: Optional[Decimal] = None
    cash: Optional[Decimal] = None
    net_liquidation: Optional[Decimal] = None
    currency: Optional[str] = None
    values: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False)
    replayed: bool = False


@attrs.frozen(slots=True, kw_only=True)
class Quote(Event):
    """The merged market-data snapshot of one instrument after a tick.

    Prices are :class:`Decimal`. ``fields`` holds every field received so far for the
    instrument, under the broker's own names.
    """

    instrument: str
    last: Optional[Decimal] = None
    bid: Optional[Decimal] = None
    ask: Optional[Decimal] = None
    bid_size: Optional[Decimal] = None
    ask_size: Optional[Decimal] = None
    volume: Optional[Decimal] = None
    time: Optional[_dt.datetime] = None
    fields: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False)


@attrs.frozen(slots=True, kw_only=True)
class Notice(Event):
    """A message from the broker meant for humans (notification, bulletin, status, error)."""

    kind: str
    text: str
    account: Optional[str] = None


@attrs.frozen(slots=True, kw_only=True)
class GttOrder(Event):
    """An Upstox good-till-triggered order update (register with ``on_gtt_order``)."""

    account: Optional[str] = None
    gtt_order_id: str
    symbol: Optional[str] = None
    side: Optional[Side] = None
    quantity: Optional[Decimal] = None
    gtt_type: Optional[str] = None
    status: Optional[str] = None
    rules: Any = attrs.field(default=None, repr=False, eq=False)
    time: Optional[_dt.datetime] = None


@attrs.frozen(slots=True, kw_only=True)
class LocateInventory(Event):
    """A Clear Street locate-inventory change (register with ``on_locate``)."""

    account: Optional[str] = None
    symbol: Optional[str] = None
    quantity: Optional[Decimal] = None
    values: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False)
    replayed: bool = False


@attrs.frozen(slots=True, kw_only=True)
class ReplayComplete(Event):
    """A broker finished replaying an account's history after (re)subscribing."""

    account: str
    timed_out: bool = False


@attrs.frozen(slots=True, kw_only=True)
class Connected(Event):
    """Passed to ``on_connect``: the feed is connected and subscriptions were (re)sent."""

    reconnect: bool = False
    subscriptions: int = 0


@attrs.frozen(slots=True, kw_only=True)
class Disconnected(Event):
    """Passed to ``on_disconnect``: the connection was lost or closed, and why."""

    reason: str
    will_reconnect: bool = True


#: Events that concern the trader's account: never dropped or coalesced by a dispatcher.
ACCOUNT_EVENTS = (Order, Trade, Position, PnL, Holding, Balance, GttOrder, LocateInventory)
