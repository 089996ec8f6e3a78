"""The typed ``on_*`` registrars shared by everything that delivers events to callbacks:
a :class:`~brokerfeeds.feed.Feed` and a :class:`~brokerfeeds.bus.RedisEvents` consumer.

Each registrar returns the function it was given, so it works as a decorator, and is
typed per kind: a type checker catches a ``Quote`` handler passed to ``on_order``.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from . import events as ev
from .dispatch import CallbackRegistry
from .errors import BrokerFeedsError

__all__ = ["EventCallbacks"]

F = TypeVar("F", bound=Callable[..., Any])
OrderHandler = TypeVar("OrderHandler", bound=Callable[[ev.Order], Any])
TradeHandler = TypeVar("TradeHandler", bound=Callable[[ev.Trade], Any])
PositionHandler = TypeVar("PositionHandler", bound=Callable[[ev.Position], Any])
PnLHandler = TypeVar("PnLHandler", bound=Callable[[ev.PnL], Any])
HoldingHandler = TypeVar("HoldingHandler", bound=Callable[[ev.Holding], Any])
BalanceHandler = TypeVar("BalanceHandler", bound=Callable[[ev.Balance], Any])
QuoteHandler = TypeVar("QuoteHandler", bound=Callable[[ev.Quote], Any])
NoticeHandler = TypeVar("NoticeHandler", bound=Callable[[ev.Notice], Any])
ErrorHandler = TypeVar("ErrorHandler", bound=Callable[[BrokerFeedsError], Any])


class EventCallbacks:
    """``on(kind, fn)``, ``remove_callback(fn)`` and the typed registrars of the account
    and market events.

    A subclass sets ``self._callbacks`` (a :class:`~brokerfeeds.dispatch.CallbackRegistry`)
    and adds its own kinds.
    """

    _callbacks: CallbackRegistry

    def on(self, kind: str, fn: F) -> F:
        """Register ``fn`` for callback kind ``kind`` (``"order"``, ``"error"``, ...)."""
        self._callbacks.add(kind, fn)
        return fn

    def remove_callback(self, fn: Callable[..., Any]) -> bool:
        """Unregister ``fn`` from every kind; True if it was registered."""
        return self._callbacks.remove(fn)

    def on_order(self, fn: OrderHandler) -> OrderHandler:
        """Call ``fn(order: Order)`` with the full, merged order after every change."""
        return self.on("order", fn)

    def on_trade(self, fn: TradeHandler) -> TradeHandler:
        """Call ``fn(trade: Trade)`` for every fill."""
        return self.on("trade", fn)

    def on_position(self, fn: PositionHandler) -> PositionHandler:
        """Call ``fn(position: Position)`` when a position changes."""
        return self.on("position", fn)

    def on_pnl(self, fn: PnLHandler) -> PnLHandler:
        """Call ``fn(pnl: PnL)`` when account P&L figures change."""
        return self.on("pnl", fn)

    def on_holding(self, fn: HoldingHandler) -> HoldingHandler:
        """Call ``fn(holding: Holding)`` when a holding changes."""
        return self.on("holding", fn)

    def on_balance(self, fn: BalanceHandler) -> BalanceHandler:
        """Call ``fn(balance: Balance)`` when cash / buying power figures change."""
        return self.on("balance", fn)

    def on_quote(self, fn: QuoteHandler) -> QuoteHandler:
        """Call ``fn(quote: Quote)`` with the merged snapshot after every tick."""
        return self.on("quote", fn)

    def on_notice(self, fn: NoticeHandler) -> NoticeHandler:
        """Call ``fn(notice: Notice)`` for broker messages meant for humans."""
        return self.on("notice", fn)

    def on_error(self, fn: ErrorHandler) -> ErrorHandler:
        """Call ``fn(error: BrokerFeedsError)`` for every problem (what follows depends
        on the error: a feed carries on unless it is fatal, e.g. an authentication refusal)."""
        return self.on("error", fn)
