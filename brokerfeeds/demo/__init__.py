"""``brokerfeeds demo``: a scripted trading session against a built-in simulator.

Each broker has a module here with ``run(out, duration) -> int``: it starts that broker's
simulator, connects the broker's feed to it, scripts a short session (orders, fills, a
forced disconnect and the automatic recovery) and writes one readable line per event
through ``out``. The return value is the process exit code.
"""

from __future__ import annotations

import importlib
import time
from typing import TYPE_CHECKING, Any, Callable, Tuple

from ..events import (
    Balance,
    Connected,
    Disconnected,
    Event,
    GttOrder,
    Holding,
    LocateInventory,
    Notice,
    Order,
    PnL,
    Position,
    Quote,
    ReplayComplete,
    Trade,
)

if TYPE_CHECKING:
    from ..feed import Feed

__all__ = ["BROKERS", "run", "describe", "attach", "wait_until"]

BROKERS = ("ibkr", "upstox", "firstock", "clearstreet")

Out = Callable[[str], None]


def run(broker: str, out: Out = print, duration: float = 10.0) -> int:
    """Run ``broker``'s demo; returns an exit code."""
    if broker not in BROKERS:
        raise ValueError(f"unknown broker {broker!r}; choose from {', '.join(BROKERS)}")
    module = importlib.import_module(f"{__name__}.{broker}")
    return int(module.run(out, duration))


def _n(value: Any) -> str:
    return "-" if value is None else f"{value:f}" if hasattr(value, "as_tuple") else str(value)


def describe(item: Any) -> str:
    """One readable line for an event, a lifecycle notice or an error."""
    if isinstance(item, Order):
        side = item.side.value if item.side else "?"
        return (f"ORDER    {item.order_id:<12} {side:<4} {item.symbol or '?':<8} {item.status.value:<16} "
                f"filled {_n(item.filled_quantity)}/{_n(item.quantity)} @ {_n(item.avg_price)}"
                f"  [{item.broker_status or '?'}]"
                f"{'  (replayed)' if item.replayed else ''}")
    if isinstance(item, Trade):
        side = item.side.value if item.side else "?"
        return (f"FILL     {item.order_id or '?':<12} {side:<4} {item.symbol or '?':<8} "
                f"{_n(item.quantity)} @ {_n(item.price)}{'  (replayed)' if item.replayed else ''}")
    if isinstance(item, Position):
        return (f"POSITION {item.symbol:<21} qty {_n(item.quantity)} avg {_n(item.avg_price)} "
                f"uPnL {_n(item.unrealized_pnl)} rPnL {_n(item.realized_pnl)}{'  (replayed)' if item.replayed else ''}")
    if isinstance(item, PnL):
        return (f"PNL      {item.account or '':<21} daily {_n(item.daily_pnl)} unrealized {_n(item.unrealized_pnl)} "
                f"realized {_n(item.realized_pnl)} netliq {_n(item.net_liquidation)}")
    if isinstance(item, Holding):
        return f"HOLDING  {item.symbol:<21} qty {_n(item.quantity)} avg {_n(item.avg_price)}"
    if isinstance(item, Balance):
        return (f"BALANCE  {item.account or '':<21} buying power {_n(item.buying_power)} cash {_n(item.cash)}"
                f"{'  (replayed)' if item.replayed else ''}")
    if isinstance(item, Quote):
        return (f"QUOTE    {item.instrument:<21} last {_n(item.last)} bid {_n(item.bid)} ask {_n(item.ask)} "
                f"vol {_n(item.volume)}")
    if isinstance(item, GttOrder):
        return f"GTT      {item.gtt_order_id:<12} {item.symbol or '?':<8} {item.status or '?'}"
    if isinstance(item, LocateInventory):
        return f"LOCATE   {item.symbol or '?':<21} qty {_n(item.quantity)}"
    if isinstance(item, ReplayComplete):
        return f"REPLAY   account {item.account} replay complete{' (timed out)' if item.timed_out else ''}"
    if isinstance(item, Notice):
        return f"NOTICE   [{item.kind}] {item.text}"
    if isinstance(item, Connected):
        return f"-- {'reconnected' if item.reconnect else 'connected'}, {item.subscriptions} subscription(s) sent"
    if isinstance(item, Disconnected):
        return f"-- disconnected: {item.reason}"
    if isinstance(item, BaseException):
        return f"!! {type(item).__name__}: {item}"
    if isinstance(item, Event):
        return f"EVENT    {item!r}"
    return f"MESSAGE  {item!r}"


def attach(feed: "Feed[Any]", out: Out,
           kinds: Tuple[str, ...] = ("order", "trade", "position", "pnl", "holding", "balance",
                                     "quote", "notice", "connect", "disconnect", "error",
                                     "gtt_order", "locate", "replay_complete")) -> None:
    """Print every event of ``kinds`` from ``feed`` through ``out``."""
    for kind in kinds:
        feed.on(kind, lambda item: out(describe(item)))


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll ``predicate`` until it is true (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False
