"""One way to print events as text: ``brokerfeeds watch``, the demo and the examples use it.

Numbers print the same way for every broker:

* quantities without a meaningless fraction or exponent: ``100``, ``1.5``, ``0`` (IBKR
  sends ``100.0``, Upstox ``100``: both print ``100``);
* money as the broker sent it (a :class:`~decimal.Decimal` keeps the broker's digits:
  ``190.10`` stays ``190.10``), never in exponent form;
* a figure the broker did not send as ``-``;
* an order's progress as ``filled/quantity``, e.g. ``0/10``: a broker that sends no filled
  quantity for an order means nothing was filled yet (``0``), unless the order is FILLED
  (then it is the whole quantity).

:func:`describe` turns any event (or a lifecycle event, or an error) into one line with
aligned columns: the kind, a key (order id, symbol, account, instrument), then details.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any, Optional

from .events import (
    Balance,
    Connected,
    Disconnected,
    Event,
    GttOrder,
    Holding,
    LocateInventory,
    Notice,
    Order,
    OrderStatus,
    PnL,
    Position,
    Quote,
    ReplayComplete,
    Side,
    Trade,
)

__all__ = ["quantity", "money", "filled", "progress", "side", "describe", "connection_line", "Describer"]

MISSING = "-"


def _decimal(value: Any) -> Optional[Decimal]:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, Decimal):
        return value
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None


def quantity(value: Any) -> str:
    """A quantity: ``Decimal("100.0")`` → ``100``, ``Decimal("1.50")`` → ``1.5``; None → ``-``."""
    number = _decimal(value)
    if number is None:
        return MISSING if value is None else str(value)
    if not number.is_finite():
        return str(number)
    text = f"{number:f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def money(value: Any) -> str:
    """A price or amount as the broker sent it (``190.10`` stays ``190.10``); None → ``-``."""
    number = _decimal(value)
    if number is None:
        return MISSING if value is None else str(value)
    return f"{number:f}" if number.is_finite() else str(number)


def filled(order: Order) -> str:
    """How much of an order is filled: the broker's figure, or (when it sent none) ``0``,
    or the whole quantity for a FILLED order."""
    done = order.filled_quantity
    if done is None:
        done = order.quantity if order.status is OrderStatus.FILLED else Decimal(0)
    return quantity(done)


def progress(order: Order) -> str:
    """``filled/quantity`` of an order, e.g. ``0/10`` or ``4/10``."""
    return f"{filled(order)}/{quantity(order.quantity)}"


def side(value: Optional[Side]) -> str:
    """``BUY`` / ``SELL``, or ``?`` when the broker did not say."""
    return value.value if value is not None else "?"


def _size(value: Any) -> str:
    return "" if value is None else f" x {quantity(value)}"


def _row(kind: str, key: Any, rest: str, replayed: bool = False) -> str:
    line = f"{kind:<8} {str(key) if key not in (None, '') else '?':<16} {rest}"
    return (line + "  (replayed)") if replayed else line.rstrip()


def describe(item: Any) -> str:
    """One readable line for an event, a lifecycle event (connect / disconnect) or an error."""
    if isinstance(item, Order):
        return _row("ORDER", item.order_id,
                    f"{side(item.side):<4} {item.symbol or '?':<12} {item.status.value:<16} "
                    f"{progress(item)} @ {money(item.avg_price)}  [{item.broker_status or '?'}]",
                    item.replayed)
    if isinstance(item, Trade):
        return _row("FILL", item.order_id,
                    f"{side(item.side):<4} {item.symbol or '?':<12} {quantity(item.quantity)} @ {money(item.price)}",
                    item.replayed)
    if isinstance(item, Position):
        return _row("POSITION", item.symbol,
                    f"qty {quantity(item.quantity)} avg {money(item.avg_price)} "
                    f"uPnL {money(item.unrealized_pnl)} rPnL {money(item.realized_pnl)}", item.replayed)
    if isinstance(item, PnL):
        return _row("PNL", item.account,
                    f"daily {money(item.daily_pnl)} unrealized {money(item.unrealized_pnl)} "
                    f"realized {money(item.realized_pnl)} netliq {money(item.net_liquidation)}")
    if isinstance(item, Holding):
        return _row("HOLDING", item.symbol, f"qty {quantity(item.quantity)} avg {money(item.avg_price)}")
    if isinstance(item, Balance):
        return _row("BALANCE", item.account,
                    f"buying power {money(item.buying_power)} cash {money(item.cash)} "
                    f"netliq {money(item.net_liquidation)}{' ' + item.currency if item.currency else ''}",
                    item.replayed)
    if isinstance(item, Quote):
        return _row("QUOTE", item.instrument,
                    f"last {money(item.last)} bid {money(item.bid)}{_size(item.bid_size)} "
                    f"ask {money(item.ask)}{_size(item.ask_size)} vol {quantity(item.volume)}")
    if isinstance(item, GttOrder):
        return _row("GTT", item.gtt_order_id,
                    f"{side(item.side):<4} {item.symbol or '?':<12} {item.status or '?':<16} "
                    f"qty {quantity(item.quantity)}")
    if isinstance(item, LocateInventory):
        return _row("LOCATE", item.symbol, f"qty {quantity(item.quantity)}", item.replayed)
    if isinstance(item, ReplayComplete):
        return _row("REPLAY", item.account, "replay complete" + (" (timed out)" if item.timed_out else ""))
    if isinstance(item, Notice):
        return _row("NOTICE", item.kind, item.text)
    if isinstance(item, (Connected, Disconnected)):
        return connection_line(item)
    if isinstance(item, BaseException):
        return f"!! {type(item).__name__}: {item}"
    if isinstance(item, Event):
        return f"EVENT    {item!r}"
    return f"MESSAGE  {item!r}"


def connection_line(item: Any, after: Optional[str] = None) -> str:
    """The line for a connect, reconnect or disconnect; ``after`` is the reason of the
    disconnect a reconnect follows, when known."""
    if isinstance(item, Connected):
        word = "reconnected" if item.reconnect else "connected"
        why = f" after: {after}" if item.reconnect and after else ""
        return f"-- {word}{why} ({item.subscriptions} subscription(s) sent)"
    if isinstance(item, Disconnected):
        return f"-- disconnected: {item.reason}{'' if item.will_reconnect else ' (not reconnecting)'}"
    return describe(item)


class Describer:
    """:func:`describe` with a memory: a reconnect line names why the connection was lost
    (``-- reconnected after: connection closed by peer (4 subscription(s) sent)``).

    Call it from one thread at a time (a feed's callbacks run one at a time).
    """

    def __init__(self) -> None:
        self._last_reason: Optional[str] = None

    def __call__(self, item: Any) -> str:
        if isinstance(item, Disconnected):
            self._last_reason = item.reason
        if isinstance(item, Connected):
            return connection_line(item, self._last_reason)
        return describe(item)
