"""FirstockFeed against the Firstock simulator (real sockets), plus adapter unit tests."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest
import websocket

from brokerfeeds.brokers.firstock import (
    BOOK_RETRIES,
    FirstockFeed,
    FirstockProtocol,
    map_status,
    merge_depth,
    quote_prices,
    split_instruments,
)
from brokerfeeds.errors import AuthenticationError, ConnectionFailed, ProtocolError, SessionLimitError
from brokerfeeds.events import Notice, Order, OrderStatus, Quote, Side, Trade
from brokerfeeds.protocol import Fatal, RawMessage, Ready, Reconnect, Refresh, Send, Subscription
from brokerfeeds.testing.firstock import SENTINEL, FirstockSimulator
from helpers import FAST_RECONNECT, Recorder, feed_threads, wait_until

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def sim():
    with FirstockSimulator(ping_every=0.2, pong_deadline=1.0) as simulator:
        yield simulator


@pytest.fixture
def make_feed(sim):
    feeds = []

    def make(**kwargs):
        options = dict(url=sim.url, rest_url=sim.rest_url, stale_after=2.0, ping_interval=0.5,
                       reconnect=FAST_RECONNECT, order_refresh_interval=0.1)
        options.update(kwargs)
        user_id = options.pop("user_id", sim.user_id)
        jkey = options.pop("jkey", sim.jkey)
        feed = FirstockFeed(user_id, jkey, **options)
        feeds.append(feed)
        return feed

    yield make
    for feed in feeds:
        feed.stop()


def reconciled(feed, sim, count=1):
    """Connected, and the REST reconciliation after it is done (positionBook comes last)."""
    assert feed.wait_connected(5)
    wait_until(lambda: sum(1 for _, path in list(sim.requests) if path.endswith("/positionBook")) >= count)


def frames(sim, action):
    """The token lists of every ``action`` frame the simulator received."""
    return [tokens for a, tokens in list(sim.sub_frames) if a == action]


# ============================================================================ auth
def test_auth_in_query_and_ready_only_after_the_success_frame(make_feed, sim):
    feed = make_feed()
    rec = Recorder(feed)
    feed.subscribe_quotes("NSE:26000")
    feed.start()
    assert feed.wait_connected(5)
    query = sim.handshakes[-1]
    assert query == {"userId": sim.user_id, "jKey": sim.jkey, "source": "developer-api"}
    rec.wait_for("quote", lambda q: q.instrument == "NSE:26000")
    messages = rec.of("message")
    assert messages[0] == {"status": "success", "message": "Authentication successful"}
    assert rec.of("connect")[0].subscriptions == 1


@pytest.mark.parametrize("style", ["frame", "http"])
def test_bad_jkey_is_fatal_without_reconnect(make_feed, sim, style):
    sim.reject_style = style
    feed = make_feed(jkey="not-the-right-jkey")
    rec = Recorder(feed)
    feed.start()
    with pytest.raises(AuthenticationError) as caught:
        feed.wait_connected(5)
    assert not isinstance(caught.value, SessionLimitError)
    wait_until(lambda: not feed_threads())  # the feed stopped itself: nothing left to reconnect
    assert feed.state == "stopped" and feed.error is caught.value
    assert len(sim.handshakes) == 1
    if style == "http":
        assert "401" in str(caught.value) and sim.rejected == 1 and sim.connections == 0
    else:
        assert "unauthenticated" in str(caught.value) and sim.connections == 1
    assert isinstance(rec.wait_for("error")[0], AuthenticationError)


def test_session_limit_is_fatal_without_reconnect(make_feed, sim):
    query = f"?userId={sim.user_id}&jKey={sim.jkey}&source=developer-api"
    others = [websocket.create_connection(sim.url + query, timeout=5) for _ in range(3)]
    try:
        for ws in others:
            assert "Authentication successful" in ws.recv()
        feed = make_feed()
        feed.start()
        with pytest.raises(SessionLimitError) as caught:
            feed.wait_connected(5)
        assert "Maximum sessions limit (3) reached" in str(caught.value)
        wait_until(lambda: not feed_threads())
        assert len(sim.handshakes) == 4 and sim.sessions == 3
    finally:
        for ws in others:
            ws.close()


def test_server_that_never_answers_auth_times_out_and_stop_is_prompt(make_feed, sim):
    sim.silent = True
    feed = make_feed(auth_timeout=0.3, stale_after=5.0)
    rec = Recorder(feed)
    started = time.monotonic()
    feed.start()
    assert time.monotonic() - started < 1.0  # start() never blocks
    assert not feed.wait_connected(0.2)
    disconnect = rec.wait_for("disconnect", timeout=5)[0]
    assert "not authenticated within 0.3s" in disconnect.reason
    wait_until(lambda: sim.connections >= 2)  # retried with backoff, as documented
    assert feed.stop(timeout=5)
    assert feed.state == "stopped"


def test_unauthenticated_mid_session_ends_in_an_auth_error(make_feed, sim):
    feed = make_feed()
    rec = Recorder(feed)
    feed.start()
    assert feed.wait_connected(5)
    sim.unauthenticate(rotate=True)
    notice = rec.wait_for("notice")[0]
    assert notice.kind == "error" and notice.text == "unauthenticated"
    wait_until(lambda: not feed_threads())  # the reconnect was refused: the feed stopped itself
    assert isinstance(feed.error, AuthenticationError) and "unauthenticated" in str(feed.error)
    assert feed.state == "stopped" and len(sim.handshakes) == 2
    assert feed.error in rec.of("error")


def test_duplicate_origin_headers_are_accepted(sim):
    query = f"?userId={sim.user_id}&jKey={sim.jkey}&source=developer-api"
    ws = websocket.create_connection(sim.url + query, timeout=5,
                                     header=["Origin: https://firstock.in", "Origin: https://socket.firstock.in"])
    try:
        assert json.loads(ws.recv()) == {"status": "success", "message": "Authentication successful"}
    finally:
        ws.close()
    assert len(sim.origin_headers[-1]) >= 2  # websocket-client adds its own on top of ours


# ============================================================================ orders, positions, notices
def test_orders_fills_positions_and_notices_are_routed(make_feed, sim):
    feed = make_feed()
    rec = Recorder(feed)
    feed.start()
    reconciled(feed, sim)
    order_id = sim.place_order("RELIANCE-EQ", "B", 10, 1395.40, token="2885")
    sim.fill(order_id, 4, 1395.40)
    sim.fill(order_id, 6, 1395.70)
    filled = rec.wait_for("order", lambda o: o.status is OrderStatus.FILLED)[0]
    assert filled.order_id == order_id and filled.side is Side.BUY and filled.symbol == "RELIANCE-EQ"
    assert filled.filled_quantity == 10 and filled.remaining_quantity == 0
    assert filled.avg_price == Decimal("1395.58") and filled.broker_status == "COMPLETE"
    statuses = [o.status for o in rec.of("order")]
    assert statuses[:3] == [OrderStatus.PENDING, OrderStatus.PENDING, OrderStatus.OPEN]
    assert OrderStatus.PARTIALLY_FILLED in statuses
    trades = rec.wait_for("trade", count=2)
    assert [(t.quantity, t.price) for t in trades] == [(4, Decimal("1395.40")), (6, Decimal("1395.70"))]
    assert trades[0].trade_id and trades[0].order_id == order_id

    sim.set_position("RELIANCE-EQ", 10, 1395.58, token="2885", rpnl=12.5)
    position = rec.wait_for("position")[0]
    assert position.instrument == "NSE:2885" and position.exchange == "NSE"  # not the top-level "EQT"
    assert position.symbol == "RELIANCE-EQ" and position.quantity == 10
    assert position.avg_price == Decimal("1395.58") and position.realized_pnl == Decimal("12.50")

    sim.notice("Exchange session will close at 15:30")
    notice = rec.wait_for("notice")[0]
    assert isinstance(notice, Notice) and notice.kind == "status" and "15:30" in notice.text

    rejected = sim.place_order("IDEA-EQ", "S", 1, 9.5, token="14366")
    sim.reject(rejected, "RMS:Margin Exceeds")
    reject = rec.wait_for("order", lambda o: o.status is OrderStatus.REJECTED)[0]
    assert reject.side is Side.SELL
    assert feed.stats.reconnects == 0


def test_fill_without_fill_fields_is_completed_from_the_order_book(make_feed, sim):
    feed = make_feed()
    rec = Recorder(feed)
    feed.start()
    reconciled(feed, sim)
    order_id = sim.place_order("SBIN-EQ", "B", 5, 800.0, token="3045")
    sim.fill(order_id, 5, 801.25, fill_fields=False)
    done = rec.wait_for("order", lambda o: o.status is OrderStatus.FILLED and o.avg_price is not None)[0]
    assert done.filled_quantity == 5 and done.avg_price == Decimal("801.25")
    trade = rec.wait_for("trade")[0]
    assert trade.quantity == 5 and trade.price == Decimal("801.25")
    assert len(rec.of("trade")) == 1


def settled(sim, rec):
    """Every order book read asked for so far has been applied: a fill without fill fields
    on a fresh order is only learnt through a later read, and reads run one after another."""
    marker = sim.place_order("MARKER-EQ", "B", 1, 1.0, token="1")
    sim.fill(marker, 1, 1.0, fill_fields=False)
    rec.wait_for("trade", lambda t: t.order_id == marker)
    return marker


@pytest.mark.parametrize("fill_fields", [True, False], ids=["fill-fields", "no-fill-fields"])
def test_every_partial_fill_yields_its_order_and_trade_exactly_once(make_feed, sim, fill_fields):
    """With or without the Noren fill fields on the socket (unknown for the new socket),
    each fill gives one Order with the right filled quantity and one Trade."""
    sim.fill_fields = fill_fields
    feed = make_feed()
    rec = Recorder(feed)
    feed.start()
    reconciled(feed, sim)
    order_id = sim.place_order("INFY-EQ", "B", 10, 101.0, token="1594")
    rec.wait_for("order", lambda o: o.order_id == order_id and o.status is OrderStatus.OPEN)
    mine = lambda item: item.order_id == order_id  # noqa: E731
    for quantity, price, filled, avg in ((4, 100.0, 4, "100.00"), (4, 101.0, 8, "100.50"), (2, 100.5, 10, "100.50")):
        sim.fill(order_id, quantity, price)
        order = rec.wait_for("order", lambda o: mine(o) and o.filled_quantity == filled and o.avg_price is not None)[0]
        assert order.avg_price == Decimal(avg) and order.remaining_quantity == 10 - filled
        assert order.status is (OrderStatus.FILLED if filled == 10 else OrderStatus.PARTIALLY_FILLED)
        trade = rec.wait_for("trade", lambda t: mine(t) and t.quantity == quantity)[-1]
        assert trade.price == Decimal(str(price)) and trade.side is Side.BUY and trade.symbol == "INFY-EQ"
        assert (trade.trade_id is not None) is fill_fields  # flid only comes with the fill fields
    settled(sim, rec)
    trades = [(t.quantity, t.price) for t in rec.of("trade") if mine(t)]
    assert trades == [(4, Decimal("100")), (4, Decimal("101")), (2, Decimal("100.5"))]
    partials = [o.filled_quantity for o in rec.of("order") if mine(o) and o.status is OrderStatus.PARTIALLY_FILLED]
    assert partials == [4, 8]  # each partial fill's Order exactly once
    statuses = [o.status for o in rec.of("order") if mine(o)]
    assert statuses.index(OrderStatus.FILLED) == len(statuses) - (1 if fill_fields else 2)  # then the average


@pytest.mark.parametrize("fill_fields", [True, False], ids=["fill-fields", "no-fill-fields"])
def test_fills_before_a_cancel_are_all_reported(make_feed, sim, fill_fields):
    sim.fill_fields = fill_fields
    feed = make_feed()
    rec = Recorder(feed)
    feed.start()
    reconciled(feed, sim)
    order_id = sim.place_order("TCS-EQ", "S", 10, 4000.0, token="11536")
    sim.fill(order_id, 4, 4000.0)
    rec.wait_for("trade", lambda t: t.order_id == order_id)
    sim.fill(order_id, 2, 4003.0)
    sim.cancel(order_id)  # the second fill may reach us only with the cancel
    done = rec.wait_for("order", lambda o: o.order_id == order_id and o.status is OrderStatus.CANCELLED
                        and o.filled_quantity == 6)[0]
    assert done.avg_price == Decimal("4001.00") and done.side is Side.SELL
    settled(sim, rec)
    assert [(t.quantity, t.price) for t in rec.of("trade") if t.order_id == order_id] == [
        (4, Decimal("4000")), (2, Decimal("4003"))]


def test_an_order_book_behind_the_socket_is_read_again(make_feed, sim):
    sim.fill_fields = False
    feed = make_feed()
    rec = Recorder(feed)
    feed.start()
    reconciled(feed, sim)
    order_id = sim.place_order("SBIN-EQ", "B", 5, 800.0, token="3045")
    rec.wait_for("order", lambda o: o.order_id == order_id and o.status is OrderStatus.OPEN)
    sim.freeze_order_book()  # REST still says OPEN, nothing filled
    reads = lambda: sum(1 for _, path in list(sim.requests) if path.endswith("/orderBook"))  # noqa: E731
    before = reads()
    sim.fill(order_id, 5, 801.25)
    done = rec.wait_for("order", lambda o: o.order_id == order_id and o.status is OrderStatus.FILLED)[0]
    assert done.filled_quantity == 5 and done.avg_price is None  # COMPLETE, at a price not known yet
    wait_until(lambda: reads() >= before + 2)  # the stale book was read, and read again
    assert not rec.of("trade")
    sim.thaw_order_book()
    trade = rec.wait_for("trade")[0]
    assert trade.quantity == 5 and trade.price == Decimal("801.25")
    rec.wait_for("order", lambda o: o.order_id == order_id and o.avg_price == Decimal("801.25"))


def test_reconnect_reconciles_orders_and_derives_missed_fills(make_feed, sim):
    feed = make_feed()
    rec = Recorder(feed)
    working = sim.place_order("INFY-EQ", "B", 10, 1500.0, token="1594")
    untouched = sim.place_order("TCS-EQ", "S", 3, 4000.0, token="11536")
    feed.start()
    assert feed.wait_connected(5)
    rec.wait_for("order", lambda o: o.order_id == untouched)
    rec.wait_for("order", lambda o: o.order_id == working)
    before = len([o for o in rec.of("order") if o.order_id == untouched])
    sim.drop()
    sim.fill(working, 10, 1499.5, fill_fields=True)  # while we are away: nobody receives the push
    rec.wait_for("connect", lambda c: c.reconnect)
    done = rec.wait_for("order", lambda o: o.order_id == working and o.status is OrderStatus.FILLED)[0]
    assert done.filled_quantity == 10
    trade = rec.wait_for("trade")[0]
    assert trade.order_id == working and trade.quantity == 10 and trade.price == Decimal("1499.50")
    assert len([o for o in rec.of("order") if o.order_id == untouched]) == before  # no duplicate


@pytest.mark.parametrize("shape", ["go", "openalgo"])
def test_poll_pnl_emits_pnl_from_position_book(make_feed, sim, shape):
    """Go SDK rows (RealizedPNL, totalMTM, totalPNL; no unrealized figure): the unrealized
    P&L is unknown (None), never 0. openalgo's rows (unrealizedMTOM, no totals): the daily
    P&L is realized + unrealized."""
    sim.position_shape = shape
    sim.set_position("RELIANCE-EQ", 10, 1395.00, token="2885", ltp=1400.00, rpnl=20.0, push=False)
    feed = make_feed(poll_pnl=0.1)
    rec = Recorder(feed)
    feed.start()
    assert feed.wait_connected(5)
    pnl = rec.wait_for("pnl")[0]
    unrealized = None if shape == "go" else Decimal("50.00")
    assert pnl.unrealized_pnl == unrealized and pnl.realized_pnl == Decimal("20.00")
    assert pnl.daily_pnl == Decimal("70.00") and pnl.account == sim.user_id
    sim.set_position("RELIANCE-EQ", 10, 1395.00, token="2885", ltp=1390.00, rpnl=20.0, push=False)
    changed = rec.wait_for("pnl", lambda p: p.daily_pnl == Decimal("-30.00"))[0]
    assert changed.unrealized_pnl == (None if shape == "go" else Decimal("-50.00"))
    assert len(rec.of("pnl")) == 2  # unchanged polls emit nothing


@pytest.mark.parametrize("shape", ["go", "openalgo"])
def test_position_book_rows_of_either_shape(make_feed, sim, shape):
    sim.position_shape = shape
    sim.set_position("RELIANCE-EQ", -5, 1395.00, token="2885", ltp=1390.00, rpnl=7.5, push=False)
    feed = make_feed()
    rec = Recorder(feed)
    feed.start()
    position = rec.wait_for("position")[0]
    assert set(position.raw) >= ({"totalMTM", "totalPNL"} if shape == "go" else {"unrealizedMTOM"})
    assert position.instrument == "NSE:2885" and position.quantity == -5
    assert position.avg_price == Decimal("1395.00") and position.realized_pnl == Decimal("7.50")
    assert position.unrealized_pnl == (None if shape == "go" else Decimal("25.00"))


# ============================================================================ quotes
def test_v2_ticks_merge_deltas_without_zero_or_sentinel_overwrites(make_feed, sim):
    sim.set_quote("NSE:2885", i_last_traded_price=139540)
    feed = make_feed()
    rec = Recorder(feed)
    feed.subscribe_quotes("NSE:2885", "NSE:26000")
    feed.start()
    assert feed.wait_connected(5)
    first = rec.wait_for("quote", lambda q: q.instrument == "NSE:2885")[0]
    assert first.last == Decimal("1395.40") and first.bid == Decimal("1395.35") and first.ask == Decimal("1395.45")
    assert quote_prices(first)["i_upper_circuit_limit"] == Decimal("1534.94")  # float noise rounded away
    rec.wait_for("quote", lambda q: q.instrument == "NSE:26000")
    assert frames(sim, "subscribe") == [["NSE:2885", "NSE:26000"]]  # one frame for both

    sim.tick("NSE:2885", i_last_traded_price=0, i_volume_traded_today=SENTINEL, i_high_price=None,
             i_open_price=139000, i_net_price_change_from_closing_price=0,
             best_buy=[{}, {"quantity": 7}, {"price": 0}], best_sell=[{"price": 139600}])
    quote = rec.wait_for("quote", lambda q: q.instrument == "NSE:2885" and q.ask == Decimal("1396.00"))[0]
    assert quote.last == Decimal("1395.40")  # zero LTP ignored
    assert quote.volume == Decimal("11238602")  # sentinel ignored
    assert quote_prices(quote)["i_high_price"] == Decimal("1402.40")  # null ignored
    assert quote_prices(quote)["i_open_price"] == Decimal("1390.00")
    assert quote.fields["i_net_price_change_from_closing_price"] == 0  # a real zero is kept
    depth = quote.fields["best_buy"]
    assert depth[0] == {"price": 139535, "quantity": 10, "orders": 1}  # {} keeps the level
    assert depth[1] == {"price": 139530, "quantity": 7, "orders": 2}  # partial level merged
    assert depth[2]["price"] == 139525  # zero price kept out

    sim.ticks({"NSE:2885": {"i_last_traded_price": 139700}, "NSE:26000": {"i_last_traded_price": 2532065}})
    rec.wait_for("quote", lambda q: q.instrument == "NSE:2885" and q.last == Decimal("1397.00"))
    nifty = rec.wait_for("quote", lambda q: q.instrument == "NSE:26000" and q.last == Decimal("25320.65"))[0]
    assert isinstance(nifty, Quote) and nifty.time is not None


def test_v1_flat_ticks_are_understood(make_feed, sim):
    sim.set_quote("NSE:26000", i_last_traded_price=2532065)
    feed = make_feed(url=sim.url_v1)
    rec = Recorder(feed)
    feed.subscribe_quotes("NSE:26000", "BSE:1")
    feed.start()
    assert feed.wait_connected(5)
    rec.wait_for("quote", lambda q: q.instrument == "NSE:26000" and q.last == Decimal("25320.65"))
    rec.wait_for("quote", lambda q: q.instrument == "BSE:1")
    sim.tick("NSE:26000", i_last_traded_price=2532100, i_volume_traded_today=0)
    quote = rec.wait_for("quote", lambda q: q.instrument == "NSE:26000" and q.last == Decimal("25321.00"))[0]
    assert quote.volume == Decimal("11238602")
    assert "c_symbol" in quote.raw  # it was a flat V1 frame


def test_subscription_bookkeeping_across_reconnect(make_feed, sim):
    feed = make_feed()
    rec = Recorder(feed)
    feed.subscribe_quotes("NSE:26000|BSE:1", "nse:2885")
    assert feed.quote_instruments == ("NSE:26000", "BSE:1", "NSE:2885")
    feed.start()
    assert feed.wait_connected(5)
    wait_until(lambda: frames(sim, "subscribe"))
    assert feed.unsubscribe_quotes("NSE:26000") == ["NSE:26000"]
    wait_until(lambda: frames(sim, "unsubscribe") == [["NSE:26000"]])
    assert feed.subscribe_quotes("NSE:2885", "NSE:1594") == ["NSE:1594"]  # only the new one is sent
    wait_until(lambda: frames(sim, "subscribe")[-1] == ["NSE:1594"])
    sim.drop()
    rec.wait_for("connect", lambda c: c.reconnect)
    wait_until(lambda: len(frames(sim, "subscribe")) == 3)
    assert sorted(frames(sim, "subscribe")[-1]) == ["BSE:1", "NSE:1594", "NSE:2885"]  # no NSE:26000
    sim.tick("NSE:26000", i_last_traded_price=2600000)
    sim.tick("NSE:1594", i_last_traded_price=150000)
    rec.wait_for("quote", lambda q: q.instrument == "NSE:1594" and q.last == Decimal("1500.00"))
    assert not [q for q in rec.of("quote") if q.instrument == "NSE:26000" and q.last == Decimal("26000.00")]


def test_bad_input_never_takes_the_feed_down(make_feed, sim):
    feed = make_feed()
    rec = Recorder(feed)
    feed.start()
    assert feed.wait_connected(5)
    sim.send_malformed()
    error = rec.wait_for("error")[0]
    assert isinstance(error, ProtocolError)
    sim.send_unknown()
    rec.wait_for("message", lambda m: isinstance(m, dict) and "future_feature" in m)
    sim.broadcast({"NFO:35085": {"c_exch_seg": "NFO", "c_symbol": "35085", "gamma": 12, "delta": 51}})
    rec.wait_for("message", lambda m: isinstance(m, dict) and "NFO:35085" in m)
    order_id = sim.place_order("RELIANCE-EQ", "B", 1, 1395.0)
    rec.wait_for("order", lambda o: o.order_id == order_id)
    assert feed.stats.malformed == 1 and feed.stats.reconnects == 0 and not rec.of("quote")


# ============================================================================ lifecycle
def test_stop_is_never_followed_by_a_reconnect(make_feed, sim):
    feed = make_feed()
    feed.start()
    assert feed.wait_connected(5)
    sim.close_all(1001)  # the server goes away just as the user stops (the official SDK's zombie)
    assert feed.stop(timeout=5)
    assert not feed_threads()  # nothing is left that could dial again
    wait_until(lambda: not sim.clients)
    handshakes = len(sim.handshakes)
    assert feed.state == "stopped" and sim.sessions == 0
    assert handshakes <= 2 and len(sim.handshakes) == handshakes


def test_stop_during_backoff_ends_everything(make_feed, sim):
    feed = make_feed(reconnect=FAST_RECONNECT.__class__(initial=5.0, maximum=5.0, jitter=False))
    rec = Recorder(feed)
    feed.start()
    assert feed.wait_connected(5)
    sim.drop()
    rec.wait_for("disconnect")
    assert feed.stop(timeout=2)
    assert not feed_threads() and len(sim.handshakes) == 1


@pytest.mark.timeout(20)
def test_slow_callback_does_not_miss_the_pong_deadline(make_feed, sim):
    """The server pings every 0.2 s and drops a client that pongs later than 1 s; a
    callback that sleeps 1.6 s must not cost the connection."""
    feed = make_feed()
    rec = Recorder(feed)
    during = []

    def slow(order):
        if not during:
            before = sim.pongs
            time.sleep(1.6)
            during.append(sim.pongs - before)

    feed.on_order(slow)
    feed.start()
    assert feed.wait_connected(5)
    sim.place_order("RELIANCE-EQ", "B", 1, 1395.0)
    # Until the order works (ORDER ACK / PENDING before it may be folded into a REST
    # snapshot that is newer, depending on timing) and the slow callback returned.
    wait_until(lambda: any(o.status is OrderStatus.OPEN for o in rec.of("order")) and during, timeout=10,
               message="the order never reached OPEN, or the slow callback never returned")
    assert during[0] >= 3  # pings kept being answered while the callback slept
    assert sim.pong_timeouts == 0 and sim.connections == 1 and feed.stats.reconnects == 0


@pytest.mark.timeout(20)
def test_inline_slow_callback_would_miss_the_deadline(make_feed, sim):
    """The control experiment: the simulator does enforce its pong deadline."""
    feed = make_feed(dispatch="inline", stale_after=5.0)
    entered = threading.Event()

    def slow(order):
        if not entered.is_set():
            entered.set()
            time.sleep(1.6)

    feed.on_order(slow)
    feed.start()
    reconciled(feed, sim)  # so the order arrives on the socket, not through the REST thread
    sim.place_order("RELIANCE-EQ", "B", 1, 1395.0)
    wait_until(lambda: sim.pong_timeouts >= 1, timeout=5)


def test_jkey_never_reaches_logs_or_reprs(make_feed, sim, debug_log):
    feed = make_feed()
    rec = Recorder(feed)
    feed.subscribe_quotes("NSE:26000")
    feed.start()
    reconciled(feed, sim)
    sim.http_fault = (500, {"status": "failed", "message": f"bad request jKey={sim.jkey} {sim.jkey}"}, {})
    sim.drop()
    error = rec.wait_for("error", lambda e: "HTTP 500" in str(e))[0]  # the reconcile after the reconnect
    feed.stop()
    assert "connecting to" in debug_log.text and "recv" in debug_log.text and "HTTP 500" in debug_log.text
    assert sim.jkey not in debug_log.text
    assert sim.jkey not in str(error) and "***" in str(error)
    assert all(sim.jkey not in str(e) for e in rec.of("error"))
    assert sim.jkey not in repr(feed)


def test_login_hashes_the_password_and_never_leaks_it(sim):
    jkey = FirstockFeed.login(sim.user_id, sim.password, sim.totp, sim.vendor_code, sim.api_key,
                              rest_url=sim.rest_url)
    assert jkey == sim.jkey
    body = sim.login_bodies[-1]
    assert body["password"] == hashlib.sha256(sim.password.encode()).hexdigest()
    assert body["TOTP"] == sim.totp and body["vendorCode"] == sim.vendor_code
    with pytest.raises(AuthenticationError) as caught:
        FirstockFeed.login(sim.user_id, "wrong-password", sim.totp, sim.vendor_code, sim.api_key,
                           rest_url=sim.rest_url)
    message = str(caught.value)
    assert "INVALID_CREDENTIALS" in message and "wrong-password" not in message
    assert hashlib.sha256(b"wrong-password").hexdigest() not in message
    with pytest.raises(ConnectionFailed):
        FirstockFeed.login(sim.user_id, "x", "1", "v", "k", rest_url="http://127.0.0.1:9/V1", timeout=2)


def test_simulator_login_accepts_the_go_sdks_field_names(sim):
    """The Go SDK's LoginRequest sends ``totp`` where the docs and the Python SDK send ``TOTP``."""
    import requests

    body = {"userId": sim.user_id, "password": hashlib.sha256(sim.password.encode()).hexdigest(),
            "totp": sim.totp, "vendorCode": sim.vendor_code, "apiKey": sim.api_key}
    reply = requests.post(sim.rest_url + "/login", json=body, timeout=5)
    assert reply.status_code == 200 and reply.json()["data"]["susertoken"] == sim.jkey
    reply = requests.post(sim.rest_url + "/login", json=dict(body, totp="000000"), timeout=5)
    assert reply.status_code == 401


def test_constructor_validates_and_does_no_io():
    with pytest.raises(ValueError):
        FirstockFeed("", "jkey")
    with pytest.raises(ValueError):
        FirstockFeed("AB1234", "")
    feed = FirstockFeed("AB1234", "secret-jkey-value", url="ws://127.0.0.1:9/V2/ws")
    assert feed.url == "ws://127.0.0.1:9/V2/ws" and feed.state == "idle"
    assert "secret-jkey-value" not in repr(feed)
    with pytest.raises(ValueError):
        feed.subscribe_quotes("NIFTY")


# ============================================================================ example and demo
@pytest.mark.timeout(30)
def test_example_runs_against_the_simulator():
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("FIRSTOCK_")}
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "firstock_quotes_and_orders.py"),
                             "--seconds", "2"], cwd=ROOT, capture_output=True, text=True, timeout=25, env=env)
    assert result.returncode == 0, result.stderr
    assert "FILLED 10/10 @ 1395.66" in result.stdout
    assert "fill     " in result.stdout and "quote    NSE:2885" in result.stdout


@pytest.mark.timeout(30)
def test_demo_runs_and_recovers():
    from brokerfeeds.demo import run

    lines = []
    assert run("firstock", lines.append, 2.0) == 0
    text = "\n".join(lines)
    assert "-- reconnected" in text and "FILLED" in text and "1 reconnect(s)" in text
    assert "FILL     26" in text


# ============================================================================ adapter unit tests
def test_split_instruments():
    assert split_instruments("NSE:26000|bse:1", ["NSE:2885", "NSE:26000"], " NFO:35085 ") == [
        "NSE:26000", "BSE:1", "NSE:2885", "NFO:35085"]
    for bad in ("NIFTY", "NSE:", ":1", "NSE:1:2"):
        with pytest.raises(ValueError):
            split_instruments(bad)


def test_status_map():
    assert map_status("ORDER ACK", None, None) is OrderStatus.PENDING
    assert map_status("TRIGGER_PENDING", None, None) is OrderStatus.OPEN
    assert map_status("open", Decimal(3), Decimal(10)) is OrderStatus.PARTIALLY_FILLED
    assert map_status("COMPLETE", None, None) is OrderStatus.FILLED
    assert map_status("AMO CANCELED", None, None) is OrderStatus.CANCELLED
    assert map_status("REJECTED", None, None) is OrderStatus.REJECTED
    assert map_status("SOMETHING NEW", None, None) is OrderStatus.UNKNOWN


def test_merge_depth_by_position():
    old = [{"price": 100, "quantity": 1, "orders": 1}, {"price": 99, "quantity": 2, "orders": 1}]
    assert merge_depth(old, [{}, {"quantity": 5, "orders": SENTINEL}, {"price": 98, "quantity": 1}]) == [
        {"price": 100, "quantity": 1, "orders": 1}, {"price": 99, "quantity": 5, "orders": 1},
        {"price": 98, "quantity": 1}]
    assert merge_depth(old, [{"price": 0, "quantity": 0}])[0] == {"price": 100, "quantity": 0, "orders": 1}


def _feed(protocol, message):
    data = message if isinstance(message, bytes) else json.dumps(message).encode()
    return protocol.on_frame(data, False, 0.0)


def test_protocol_auth_outcomes():
    p = FirstockProtocol("AB1234")
    assert p.on_open(0.0) == []
    out = _feed(p, {"status": "success", "message": "Authentication successful"})
    assert isinstance(out[0], RawMessage) and isinstance(out[1], Ready) and p.authenticated

    for message in ({"status": "failed", "message": "Maximum sessions limit (3) reached"},
                    b"Maximum sessions limit (3) reached"):
        fatal = _feed(FirstockProtocol("AB1234"), message)[-1]
        assert isinstance(fatal, Fatal) and isinstance(fatal.error, SessionLimitError)
    fatal = _feed(FirstockProtocol("AB1234"), {"status": "failed", "message": "unauthenticated"})[-1]
    assert isinstance(fatal, Fatal) and type(fatal.error) is AuthenticationError

    out = _feed(p, {"status": "failed", "message": "unauthenticated"})  # mid-session
    assert isinstance(out[1], Notice) and isinstance(out[2], Reconnect)
    with pytest.raises(ProtocolError):
        p.on_frame(b"not json", False, 0.0)


def test_protocol_subscribe_frames_batch():
    p = FirstockProtocol("AB1234")
    subs = [Subscription("quotes", "NSE:26000"), Subscription("quotes", "BSE:1")]
    [send] = p.subscribe(subs, 0.0)
    assert isinstance(send, Send) and json.loads(send.frame) == {"action": "subscribe", "tokens": "NSE:26000|BSE:1"}
    [send] = p.unsubscribe(subs[:1], 0.0)
    assert json.loads(send.frame) == {"action": "unsubscribe", "tokens": "NSE:26000"}
    assert p.subscribe([], 0.0) == []


def test_protocol_stale_rest_snapshot_does_not_regress_an_order():
    p = FirstockProtocol("AB1234", can_refresh=True)
    p.authenticated = True
    stream = {"norenordno": "1", "status": "COMPLETE", "tsym": "X-EQ", "exch": "NSE", "trantype": "S", "qty": "5",
              "prc": "10.00", "prctyp": "LMT", "fillshares": "5", "avgprc": "10.10", "tm": "1745483337"}
    out = _feed(p, stream)
    assert out[1].status is OrderStatus.FILLED and out[2].quantity == 5
    stale = {"orderNumber": "1", "status": "OPEN", "quantity": "5", "fillShares": "2", "averagePrice": "10.00"}
    assert p.merge_orders([stale], rest=True) == []
    assert p.orders.get("1").filled_quantity == 5


def _order_frame(**fields):
    frame = {"norenordno": "7", "status": "OPEN", "tsym": "X-EQ", "exch": "NSE", "trantype": "B", "qty": "10",
             "prc": "10.00", "prctyp": "LMT", "tm": "1745483337"}
    frame.update(fields)
    return frame


def _refreshes(out):
    return [o for o in out if isinstance(o, Refresh)]


def test_protocol_asks_for_the_order_book_when_the_fill_state_is_not_in_the_frame():
    p = FirstockProtocol("AB1234", can_refresh=True)
    p.authenticated = True
    out = _feed(p, _order_frame(status="ORDER ACK"))
    assert out[1].filled_quantity == 0 and not _refreshes(out)  # not working yet: nothing filled
    out = _feed(p, _order_frame(status="OPEN"))
    assert out[1].status is OrderStatus.OPEN and _refreshes(out) == [Refresh("orders")]
    out = _feed(p, _order_frame(status="OPEN", tm="1745483399"))  # a fill without fill fields looks like this
    assert _refreshes(out) == [Refresh("orders")] and not [o for o in out if isinstance(o, (Order, Trade))]
    out = _feed(p, _order_frame(fillshares="4"))  # a quantity without its average
    assert _refreshes(out) and not [o for o in out if isinstance(o, Trade)]
    book = [{"orderNumber": "7", "status": "OPEN", "quantity": "10", "fillShares": "4", "averagePrice": "10.05"}]
    out = p.merge_orders(book, rest=True)
    order, trade = out
    assert order.filled_quantity == 4 and order.status is OrderStatus.PARTIALLY_FILLED
    assert (trade.quantity, trade.price) == (4, Decimal("10.05"))
    assert p.merge_orders(book, rest=True) == []  # nothing new; and not asked again
    out = _feed(p, _order_frame(fillshares="6", avgprc="10.10", flqty="2", flprc="10.20", flid="F9"))
    assert not _refreshes(out) and out[-1].quantity == 2 and out[-1].trade_id == "F9"
    assert FirstockProtocol("AB1234", can_refresh=False).merge_orders([_order_frame()]) != []  # REST off


def test_protocol_reads_a_lagging_order_book_a_bounded_number_of_times():
    p = FirstockProtocol("AB1234", can_refresh=True)
    p.authenticated = True
    _feed(p, _order_frame(fillshares="4", avgprc="10.00"))
    out = _feed(p, _order_frame(status="COMPLETE"))
    assert out[1].status is OrderStatus.FILLED and out[1].avg_price is None and _refreshes(out)
    stale = [{"orderNumber": "7", "status": "OPEN", "quantity": "10", "fillShares": "4", "averagePrice": "10.00"}]
    fresh = [dict(stale[0], status="COMPLETE", fillShares="10", averagePrice="10.06")]
    out = p.merge_orders(stale, rest=True)
    assert _refreshes(out) and not [t for t in out if isinstance(t, Trade)]  # behind: read again
    out = p.merge_orders(fresh, rest=True)
    assert not _refreshes(out) and [(t.quantity, t.price) for t in out if isinstance(t, Trade)] == [
        (6, Decimal("10.1"))]

    _feed(p, _order_frame(norenordno="9", fillshares="4", avgprc="10.00", flqty="4", flprc="10.00"))
    _feed(p, _order_frame(norenordno="9", status="COMPLETE"))
    outs = [p.merge_orders([dict(stale[0], orderNumber="9")], rest=True) for _ in range(BOOK_RETRIES)]
    assert all(_refreshes(out) for out in outs[:-1]) and not _refreshes(outs[-1])  # bounded
    trades = [t for out in outs for t in out if isinstance(t, Trade)]
    assert [(t.quantity, t.price) for t in trades] == [(6, None)]  # given up on the price, not on the fill
    # A book row with the quantity but not yet the price: read again; given up, the fill still counts.
    row = {"orderNumber": "8", "status": "COMPLETE", "quantity": "3", "fillShares": "3", "averagePrice": "0.00"}
    outs = [p.merge_orders([row], rest=True) for _ in range(BOOK_RETRIES)]
    assert all(_refreshes(out) for out in outs[:-1]) and not _refreshes(outs[-1])
    trades = [t for out in outs for t in out if isinstance(t, Trade)]
    assert [(t.order_id, t.quantity, t.price) for t in trades] == [("8", 3, None)]


def test_protocol_pnl_totals_are_unknown_when_a_row_lacks_them():
    p = FirstockProtocol("AB1234")
    go = {"RealizedPNL": "10.00", "totalMTM": "15.00", "totalPNL": "15.00", "netQuantity": "1"}
    [pnl] = p.pnl_from_rest([go, dict(go, RealizedPNL="-2.50", totalPNL="1.00")])
    assert (pnl.realized_pnl, pnl.unrealized_pnl, pnl.daily_pnl) == (Decimal("7.50"), None, Decimal("16.00"))
    [pnl] = p.pnl_from_rest([go, {"netQuantity": "1"}])
    assert (pnl.realized_pnl, pnl.unrealized_pnl, pnl.daily_pnl) == (None, None, None)
    [pnl] = p.pnl_from_rest([{"RealizedPNL": "1.00", "unrealizedMTOM": "2.00"}])
    assert (pnl.realized_pnl, pnl.unrealized_pnl, pnl.daily_pnl) == (Decimal(1), Decimal(2), Decimal(3))
    [pnl] = p.pnl_from_rest([])
    assert pnl.daily_pnl == 0 and pnl.unrealized_pnl == 0  # no positions at all today
