"""Events leave in the order the adapter's state changed, whatever the threads do.

Two kinds of proof:

* the discipline itself: many threads drive one adapter through its owner while a hook
  sleeps between each state change and its hand-over; the delivered sequence numbers
  must still be exactly the order of the changes (without the one-lock discipline the
  sleep reorders them at once);
* each broker, over real sockets against its simulator: orders placed and filled right
  after ``wait_connected()`` while the REST reconciliation runs, with the same hook
  widening the window; per order, what the user sees never moves backwards and the
  last event is the broker's final state.
"""

from __future__ import annotations

import random
import threading
import time
from decimal import Decimal
from typing import Any, Dict, List, Sequence

import pytest

from brokerfeeds import ClearStreetFeed, FirstockFeed, IbkrFeed, UpstoxFeed
from brokerfeeds.dispatch import CallbackRegistry, Dispatcher
from brokerfeeds.events import Notice, Order, OrderStatus
from brokerfeeds.owner import AdapterOwner
from brokerfeeds.protocol import Control, Output, Protocol
from brokerfeeds.redact import Redactor, RedactingLogger
from brokerfeeds.state import OrderTracker
from brokerfeeds.testing import ClearStreetSimulator, FirstockSimulator, IbkrSimulator, UpstoxSimulator
from helpers import FAST_RECONNECT, Recorder, wait_until

import logging

pytestmark = pytest.mark.timeout(60)


# ----------------------------------------------------------------------------- the discipline
class _Counter(Protocol):
    """An adapter whose state is one counter; each change emits a Notice carrying it."""

    def __init__(self) -> None:
        self.value = 0

    def on_frame(self, data: bytes, binary: bool, now: float) -> List[Output]:
        return self.bump()

    def bump(self) -> List[Output]:
        self.value += 1
        return [Notice(broker="test", kind="n", text=str(self.value))]


@pytest.mark.parametrize("mode", ["thread", "inline"])
def test_delivery_order_is_state_change_order_under_any_interleaving(mode: str) -> None:
    log = RedactingLogger(logging.getLogger("brokerfeeds"), Redactor())
    callbacks = CallbackRegistry()
    dispatcher = Dispatcher(mode, callbacks, log, "order-test")
    seen: List[int] = []
    callbacks.add("notice", lambda notice: seen.append(int(notice.text)))

    def hand_over(outputs: Sequence[Output]) -> List[Control]:
        for out in outputs:
            dispatcher.put("notice", out)
        return []

    owner: AdapterOwner[_Counter] = AdapterOwner(hand_over, lambda late: None)
    owner.install(_Counter())
    rng = random.Random(7)
    owner.between_change_and_hand_over = lambda: time.sleep(rng.random() * 0.001)  # type: ignore[method-assign]
    dispatcher.start()
    threads = [threading.Thread(target=lambda: [owner.drive(lambda a: a.bump()) for _ in range(50)])
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert dispatcher.stop(5.0)
    assert seen == list(range(1, 201))


# ----------------------------------------------------------------------------- order regressions
def _order(status: OrderStatus, filled: str = "0", **kw: Any) -> Order:
    return Order(broker="t", order_id="1", status=status, filled_quantity=Decimal(filled), quantity=Decimal(10), **kw)


@pytest.mark.parametrize("before, after", [
    (_order(OrderStatus.OPEN), _order(OrderStatus.PENDING)),
    (_order(OrderStatus.PARTIALLY_FILLED, "4"), _order(OrderStatus.PENDING, "4")),
    (_order(OrderStatus.FILLED, "10"), _order(OrderStatus.OPEN, "10")),
    (_order(OrderStatus.CANCELLED, "4"), _order(OrderStatus.PARTIALLY_FILLED, "4")),
    (_order(OrderStatus.PARTIALLY_FILLED, "6"), _order(OrderStatus.PARTIALLY_FILLED, "4")),
])
def test_an_update_that_would_move_an_order_backwards_changes_nothing(before: Order, after: Order) -> None:
    tracker = OrderTracker()
    assert tracker.update_order(before) is before
    assert tracker.update_order(after) is None
    assert tracker.get("1") is before and tracker.refused == 1


def test_forward_moves_are_accepted() -> None:
    tracker = OrderTracker()
    steps = [_order(OrderStatus.PENDING), _order(OrderStatus.OPEN), _order(OrderStatus.PARTIALLY_FILLED, "4"),
             _order(OrderStatus.FILLED, "10")]
    assert [tracker.update_order(o) for o in steps] == steps and tracker.refused == 0


def test_ibkr_refused_snapshot_is_not_merged_and_the_cancel_still_arrives() -> None:
    from brokerfeeds.brokers.ibkr import IbkrProtocol

    p = IbkrProtocol("U1")
    p.merge_orders([{"orderId": 1, "status": "Submitted", "totalSize": 100, "filledQuantity": 40,
                     "remainingQuantity": 60}])
    # A late REST snapshot from before the fills: refused, and its fields are not merged...
    assert p.merge_orders([{"orderId": 1, "status": "Submitted", "totalSize": 100, "filledQuantity": 0,
                            "remainingQuantity": 100, "price": "1.5"}]) == []
    assert p.counters()["stale_order_updates"] == 1
    # ...so the status-only cancel that follows is built on what the user last saw.
    (cancelled,) = p.merge_orders([{"orderId": 1, "status": "Cancelled"}])
    assert isinstance(cancelled, Order)
    assert cancelled.status is OrderStatus.CANCELLED and cancelled.filled_quantity == 40
    assert cancelled.price is None


# ----------------------------------------------------------------------------- every broker, real sockets
def _widen(feed: Any, seed: int) -> None:
    rng = random.Random(seed)
    feed._owner.between_change_and_hand_over = lambda: time.sleep(rng.random() * 0.002)


def _check_history(orders: List[Order]) -> None:
    """Per order: filled never decreases, nothing after a final status but final ones,
    and no PENDING after OPEN / PARTIALLY_FILLED."""
    by_id: Dict[str, List[Order]] = {}
    for order in orders:
        by_id.setdefault(order.order_id, []).append(order)
    for order_id, history in by_id.items():
        for before, after in zip(history, history[1:]):
            where = f"order {order_id}: {before.status.value} {before.filled_quantity} -> " \
                    f"{after.status.value} {after.filled_quantity}"
            if before.filled_quantity is not None and after.filled_quantity is not None:
                assert after.filled_quantity >= before.filled_quantity, where
            assert not (before.status.is_final and not after.status.is_final), where
            assert not (before.status in (OrderStatus.OPEN, OrderStatus.PARTIALLY_FILLED)
                        and after.status is OrderStatus.PENDING), where


def _final(rec: Recorder, order_id: str) -> Order:
    return [o for o in rec.of("order") if o.order_id == order_id][-1]


def _ended(rec: Recorder, **expected: OrderStatus) -> bool:
    """Whether the last event of each order id (keyword) has the expected status."""
    last: Dict[str, Order] = {o.order_id: o for o in rec.of("order")}
    return all(order_id in last and last[order_id].status is status for order_id, status in expected.items())


@pytest.mark.parametrize("dispatch", ["thread", "inline"])
def test_ibkr_orders_never_move_backwards_while_reconciling(dispatch: str) -> None:
    with IbkrSimulator(hb_interval=0.1) as sim:
        for round_ in range(3):
            feed = IbkrFeed(url=sim.url, rest_url=sim.rest_url, heartbeat_interval=0.5, stale_after=2.0,
                            reconnect=FAST_RECONNECT, dispatch=dispatch)
            _widen(feed, round_)
            rec = Recorder(feed)
            feed.subscribe_orders()
            with feed:
                assert feed.wait_connected(5)
                filled = sim.place_order("AAPL", "BUY", 10, 1.0)
                cancelled = sim.place_order("MSFT", "SELL", 10, 2.0)
                sim.fill(filled, 4, 1.0)
                sim.fill(cancelled, 4, 2.0)
                sim.fill(filled, 6, 1.1)
                sim.cancel(cancelled)
                wait_until(lambda: _ended(rec, **{filled: OrderStatus.FILLED, cancelled: OrderStatus.CANCELLED}), timeout=5)
                wait_until(lambda: sum("iserver/account/orders" in p for _, p in sim.requests) >= 2 * (round_ + 1),
                           timeout=5)
                time.sleep(0.2)  # let any late reconciliation land: it must change nothing
            _check_history(rec.of("order"))
            assert _final(rec, filled).filled_quantity == 10
            assert _final(rec, cancelled).filled_quantity == 4


def test_upstox_orders_never_move_backwards_while_reconciling() -> None:
    with UpstoxSimulator(ping_every=0.1) as sim:
        feed = UpstoxFeed(access_token=sim.token, rest_url=sim.rest_url, reconnect=FAST_RECONNECT,
                          ping_interval=0.1, stale_after=2.0)
        _widen(feed, 1)
        rec = Recorder(feed)
        feed.subscribe_orders()
        with feed:
            assert feed.wait_connected(5)
            filled = sim.place_order("NHPC", "BUY", 10, 80.0)
            cancelled = sim.place_order("SBIN", "SELL", 10, 700.0)
            sim.fill(filled, 4, 80.0)
            sim.fill(cancelled, 4, 700.0)
            sim.fill(filled, 6, 80.5)
            sim.cancel(cancelled)
            wait_until(lambda: _ended(rec, **{filled: OrderStatus.FILLED, cancelled: OrderStatus.CANCELLED}), timeout=5)
            time.sleep(0.2)
        _check_history(rec.of("order"))
        assert _final(rec, cancelled).filled_quantity == 4


def test_firstock_orders_never_move_backwards_while_reconciling() -> None:
    with FirstockSimulator(ping_every=0.2, pong_deadline=1.0) as sim:
        feed = FirstockFeed(sim.user_id, sim.jkey, url=sim.url, rest_url=sim.rest_url, stale_after=2.0,
                            ping_interval=0.5, reconnect=FAST_RECONNECT, order_refresh_interval=0.05)
        _widen(feed, 2)
        rec = Recorder(feed)
        with feed:
            assert feed.wait_connected(5)
            filled = sim.place_order("IDEA-EQ", "B", 10, 8.0)
            cancelled = sim.place_order("SBIN-EQ", "S", 10, 700.0)
            sim.fill(filled, 4, 8.0, fill_fields=False)
            sim.fill(cancelled, 4, 700.0)
            sim.fill(filled, 6, 8.1, fill_fields=False)
            sim.cancel(cancelled)
            wait_until(lambda: _ended(rec, **{filled: OrderStatus.FILLED, cancelled: OrderStatus.CANCELLED}), timeout=5)
            time.sleep(0.3)  # the order book refresh the missing fill fields asked for
        _check_history(rec.of("order"))
        assert _final(rec, filled).filled_quantity == 10


def test_clearstreet_orders_never_move_backwards_while_polling() -> None:
    with ClearStreetSimulator() as sim:
        feed = ClearStreetFeed(access_token=sim.token, url=sim.url, rest_url=sim.rest_url,
                               reconnect=FAST_RECONNECT, stale_after=5.0, ping_interval=None, poll_pnl=0.05)
        _widen(feed, 3)
        rec = Recorder(feed)
        feed.subscribe_activity(sim.account)
        with feed:
            rec.wait_for("replay_complete")
            filled = sim.place_order("AAPL", quantity=10, price=190.0)
            cancelled = sim.place_order("MSFT", side="sell", quantity=10, price=400.0)
            sim.fill(filled, 4, 190.0)
            sim.fill(cancelled, 4, 400.0)
            sim.set_pnl(day_pnl=12.5)
            sim.fill(filled, 6, 190.5)
            sim.cancel(cancelled)
            wait_until(lambda: _ended(rec, **{filled: OrderStatus.FILLED, cancelled: OrderStatus.CANCELLED}), timeout=5)
            rec.wait_for("pnl", lambda p: p.daily_pnl == Decimal("12.5"))
        _check_history(rec.of("order"))
        assert _final(rec, cancelled).filled_quantity == 4
