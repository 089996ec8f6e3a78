"""IbkrFeed against the IBKR simulator: the Client Portal protocol and its traps."""

from __future__ import annotations

import json
import logging
import time
from decimal import Decimal
from typing import List

import pytest

from brokerfeeds import IbkrFeed
from brokerfeeds.brokers.ibkr import IbkrProtocol, map_status
from brokerfeeds.errors import AuthenticationError, ProtocolError
from brokerfeeds.events import Balance, Notice, OrderStatus, Side
from brokerfeeds.testing import IbkrSimulator
from helpers import FAST_RECONNECT, Recorder, feed_threads, wait_until

pytest_plugins = ("ibkr_fixtures",)  # the `sim` and `make_feed` fixtures


def connected(feed, sim, *topics):
    assert feed.wait_connected(5)
    wait_until(lambda: all(sim.subscribers(t) for t in topics))


# ----------------------------------------------------------------------------- connect / auth
def test_connects_with_the_tickle_session_cookie_and_waits_for_sts(make_feed, sim):
    sim.sts_delay = 0.3
    feed = make_feed()
    feed.subscribe_orders()
    feed.subscribe_pnl()
    feed.start()
    connected(feed, sim, "sor", "spl")
    assert sim.tickles >= 1
    subscribe_times = [t for t, data in sim.received if str(data).startswith(("sor", "spl"))]
    assert subscribe_times and min(subscribe_times) >= sim.sts_sent_at


def test_a_rejected_cookie_stops_the_feed_with_authentication_error(make_feed, sim):
    sim.reject_cookie = True
    feed = make_feed()
    rec = Recorder(feed)
    feed.start()
    with pytest.raises(AuthenticationError, match="401"):
        feed.wait_connected(5)
    assert feed.state == "stopped" and isinstance(rec.wait_for("error")[0], AuthenticationError)
    attempts = sim.rejected
    time.sleep(0.3)
    assert sim.rejected == attempts == 1  # no retry storm
    wait_until(lambda: not feed_threads())


def test_an_unauthenticated_gateway_session_is_fatal_and_run_forever_raises(make_feed, sim):
    sim.authenticated = False
    feed = make_feed()
    with pytest.raises(AuthenticationError, match="not authenticated"):
        feed.run_forever()
    assert sim.connections == 0 and feed.state == "stopped"


def test_session_lost_mid_stream_pauses_then_resubscribes(make_feed, sim):
    feed = make_feed(stale_after=2.0)
    feed.subscribe_orders()
    rec = Recorder(feed)
    feed.start()
    connected(feed, sim, "sor")
    sim.set_authenticated(False)
    rec.wait_for("notice", lambda n: n.kind == "status" and "not authenticated" in n.text)
    wait_until(lambda: feed.state == "reconnecting")  # not usable until the session is back
    sim.set_authenticated(True)
    rec.wait_for("connect", count=2)
    wait_until(lambda: sum(1 for t in sim.received_texts() if t == "sor+{}") == 2)
    assert feed.state == "connected"


def test_verify_false_warns_once(sim, caplog):
    caplog.set_level(logging.WARNING, logger="brokerfeeds")
    feed = IbkrFeed(url=sim.url, rest_url=sim.rest_url, verify=False, reconnect=FAST_RECONNECT)
    for _ in range(2):
        feed.start()
        assert feed.wait_connected(5)
        feed.stop()
    assert caplog.text.count("verification is OFF") == 1


def test_tls_verification_failure_is_a_clear_connection_error(caplog):
    # A plain-HTTP port spoken to with TLS: the handshake fails fast and is reported, not hung.
    with IbkrSimulator() as plain:
        feed = IbkrFeed(url=plain.url.replace("ws://", "wss://"), rest_url=plain.rest_url,
                        reconnect=FAST_RECONNECT, connect_timeout=1.0)
        errors = []
        feed.on_error(errors.append)
        feed.start()
        try:
            wait_until(lambda: errors)
            assert str(errors[0]).startswith(f"connect to {plain.url.replace('ws://', 'wss://')} failed: ")
        finally:
            feed.stop()


# ----------------------------------------------------------------------------- keep-alive
def test_heartbeats_and_tickles_on_their_cadence(make_feed, sim):
    feed = make_feed(heartbeat_interval=0.1, tickle_interval=0.1)
    feed.start()
    assert feed.wait_connected(5)
    tickles = sim.tickles
    time.sleep(0.8)
    assert sim.received_texts().count("ech+hb") >= 4
    assert sim.tickles >= tickles + 3


def test_quote_subscriptions_are_re_sent_before_expiry(make_feed, sim):
    feed = make_feed(quote_refresh=0.2)
    feed.subscribe_quotes(265598, fields=["31", "84"])
    feed.start()
    assert feed.wait_connected(5)
    expected = 'smd+265598+{"fields": ["31", "84"]}'
    wait_until(lambda: sim.received_texts().count(expected) >= 3, timeout=3)


# ----------------------------------------------------------------------------- subscriptions
def test_every_topic_subscribes_and_unsubscribes(make_feed, sim):
    feed = make_feed(account="DU123456")
    feed.subscribe_orders()
    feed.subscribe_trades(days=2)
    feed.subscribe_pnl()
    feed.subscribe_quotes("265598")
    feed.subscribe_account_summary()
    rec = Recorder(feed)
    feed.start()
    connected(feed, sim, "sor", "str", "spl", "smd+265598", "ssd+DU123456")
    texts = sim.received_texts()
    assert {"sor+{}", 'str+{"days": 2}', "spl+{}", "ssd+DU123456+{}"} <= set(texts)
    balance = rec.wait_for("balance")[0]
    assert isinstance(balance, Balance) and balance.net_liquidation == Decimal(100000)
    assert balance.buying_power == Decimal(400000) and balance.values["Currency"] == "USD"
    feed.unsubscribe_orders()
    feed.unsubscribe_trades()
    feed.unsubscribe_pnl()
    feed.unsubscribe_quotes(265598)
    feed.unsubscribe_account_summary()
    wait_until(lambda: {"uor+{}", "utr+{}", "upl+{}", "umd+265598+{}", "usd+DU123456+{}"}
               <= set(sim.received_texts()))
    assert feed.subscriptions == ()


def test_subscriptions_made_while_connected_are_sent_at_once(make_feed, sim):
    feed = make_feed()
    feed.start()
    assert feed.wait_connected(5)
    feed.subscribe_orders()
    wait_until(lambda: sim.subscribers("sor"))


# ----------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("binary", [True, False])
def test_text_and_binary_frames(binary):
    with IbkrSimulator(hb_interval=0.1, binary=binary) as sim:
        feed = IbkrFeed(url=sim.url, rest_url=sim.rest_url, reconnect=FAST_RECONNECT)
        feed.subscribe_pnl()
        rec = Recorder(feed)
        with feed:
            assert feed.wait_connected(5)
            pnl = rec.wait_for("pnl")[0]
        assert pnl.account == "DU123456" and pnl.net_liquidation == Decimal("100000.0")


def test_bad_frames_never_stop_the_feed(make_feed, sim):
    feed = make_feed()
    feed.subscribe_orders()
    rec = Recorder(feed)
    feed.start()
    connected(feed, sim, "sor")
    sim.send_malformed()
    sim.send_invalid_utf8()
    sim.send_unknown_topic()
    sim.send_raw(b"ech+hb", text=True)
    sim.send_raw(b"\x00\xff\xfe garbage", text=False)
    sim.send_error("zzz")
    sim.broadcast({"message": "waiting for session"})
    order_id = sim.place_order("AAPL", "BUY", 1, 1.0)
    rec.wait_for("order", lambda o: o.order_id == order_id)
    errors = rec.wait_for("error", count=3)
    assert sum(isinstance(e, ProtocolError) for e in errors) >= 3
    bulletin = rec.wait_for("notice", lambda n: n.kind == "bulletin")[0]
    assert "closed" in bulletin.text  # the message with invalid UTF-8 was still understood
    rec.wait_for("notice", lambda n: n.kind == "error" and "Topic unknown" in n.text)
    rec.wait_for("notice", lambda n: n.kind == "status" and n.text == "waiting for session")
    rec.wait_for("message", lambda m: isinstance(m, dict) and m.get("topic") == "zzz")
    assert feed.stats.malformed == 2 and feed.stats.reconnects == 0 and feed.state == "connected"


@pytest.mark.parametrize("as_list", [False, True])
def test_notifications_as_dict_or_list(make_feed, sim, as_list):
    feed = make_feed()
    rec = Recorder(feed)
    feed.start()
    assert feed.wait_connected(5)
    sim.notify("Indicative data only", as_list=as_list)
    notice = rec.wait_for("notice", lambda n: n.kind == "notification")[0]
    assert isinstance(notice, Notice) and notice.text == "Indicative data only"


# ----------------------------------------------------------------------------- merged state
def test_orders_are_complete_even_on_fill_only_updates(make_feed, sim):
    feed = make_feed()
    feed.subscribe_orders()
    feed.subscribe_trades()
    rec = Recorder(feed)
    feed.start()
    connected(feed, sim, "sor", "str")
    order_id = sim.place_order("AAPL", "BUY", 100, 190.5)
    sim.fill(order_id, 40, 190.4)
    partial = rec.wait_for("order", lambda o: o.status is OrderStatus.PARTIALLY_FILLED)[0]
    assert (partial.symbol, partial.side, partial.quantity) == ("AAPL", Side.BUY, Decimal(100))
    assert partial.filled_quantity == Decimal(40) and partial.remaining_quantity == Decimal(60)
    assert partial.avg_price == Decimal("190.4") and partial.price == Decimal("190.5")
    assert partial.broker_status == "Submitted" and partial.time is not None
    sim.fill(order_id, 60, 190.6)
    final = rec.wait_for("order", lambda o: o.status is OrderStatus.FILLED)[0]
    assert final.symbol == "AAPL" and final.filled_quantity == Decimal(100)
    trades = rec.wait_for("trade", count=2)
    assert [(t.quantity, t.price, t.side) for t in trades] == [
        (Decimal(40), Decimal("190.4"), Side.BUY), (Decimal(60), Decimal("190.6"), Side.BUY)]


def test_quotes_merge_deltas_per_conid(make_feed, sim):
    feed = make_feed()
    feed.subscribe_quotes(265598)
    feed.subscribe_quotes(8314)
    rec = Recorder(feed)
    feed.start()
    connected(feed, sim, "smd+265598", "smd+8314")
    sim.tick(265598, last="C190.10", bid="190.05")
    sim.tick(8314, last="55.5")
    sim.tick(265598, ask="190.15", volume="1.2K")
    quote = rec.wait_for("quote", lambda q: q.instrument == "265598" and q.ask is not None)[0]
    assert (quote.last, quote.bid, quote.ask, quote.volume) == (
        Decimal("190.10"), Decimal("190.05"), Decimal("190.15"), Decimal("1200.0"))
    assert quote.fields["31"] == "C190.10"
    other = rec.wait_for("quote", lambda q: q.instrument == "8314")[0]
    assert other.last == Decimal("55.5") and other.bid is None


def test_pnl_merges_partial_updates(make_feed, sim):
    feed = make_feed()
    feed.subscribe_pnl()
    rec = Recorder(feed)
    feed.start()
    connected(feed, sim, "spl")
    sim.set_pnl(dpl=-57.5)
    pnl = rec.wait_for("pnl", lambda p: p.daily_pnl == Decimal("-57.5"))[0]
    assert pnl.net_liquidation == Decimal("100000.0")  # kept from the first full frame


# ----------------------------------------------------------------------------- reconnect
def test_reconnect_resubscribes_and_reconciles_only_what_changed(make_feed, sim):
    feed = make_feed()
    feed.subscribe_orders()
    feed.subscribe_quotes(265598)
    rec = Recorder(feed)
    feed.start()
    connected(feed, sim, "sor", "smd+265598")
    unchanged = sim.place_order("AAPL", "BUY", 10, 100.0)
    filled_away = sim.place_order("MSFT", "SELL", 5, 400.0)
    cancelled_away = sim.place_order("NVDA", "BUY", 1, 900.0)
    rec.wait_for("order", lambda o: o.order_id == cancelled_away and o.broker_status == "Submitted")
    before = len(rec.of("order"))
    sim.drop()
    sim.fill(filled_away, 5, 401.0)  # happens while we are away
    sim.cancel(cancelled_away)
    rec.wait_for("connect", count=2)
    wait_until(lambda: len(sim.order_requests) >= 4)  # force=true + plain, per connect
    time.sleep(0.3)  # give any duplicate a chance to show up
    after = rec.of("order")[before:]
    assert sorted((o.order_id, o.status) for o in after) == sorted(
        [(filled_away, OrderStatus.FILLED), (cancelled_away, OrderStatus.CANCELLED)])
    assert all(o.order_id != unchanged for o in after)
    assert sum(1 for t in sim.received_texts() if t == "sor+{}") == 2
    assert sum(1 for t in sim.received_texts() if t.startswith("smd+265598")) == 2
    assert [r.get("force") for r in sim.order_requests[-2:]] == ["true", None]


def test_orders_placed_before_start_are_reported_once(make_feed, sim):
    existing = sim.place_order("AAPL", "BUY", 10, 100.0)
    feed = make_feed()
    feed.subscribe_orders()
    rec = Recorder(feed)
    feed.start()
    connected(feed, sim, "sor")
    wait_until(lambda: len(sim.order_requests) >= 2)
    time.sleep(0.2)
    assert [o.order_id for o in rec.of("order")] == [existing]


def test_positions_are_polled_and_only_changes_emitted(make_feed, sim):
    sim.set_position(265598, "AAPL", 100, 190.0)
    feed = make_feed(poll_positions=0.1)
    rec = Recorder(feed)
    feed.start()
    first = rec.wait_for("position")[0]
    assert (first.symbol, first.quantity, first.avg_price, first.instrument) == (
        "AAPL", Decimal(100), Decimal("190.0"), "265598")
    time.sleep(0.35)
    assert len(rec.of("position")) == 1  # unchanged: no repeat
    sim.set_position(265598, "AAPL", 150, 191.0)
    rec.wait_for("position", lambda p: p.quantity == Decimal(150))
    sim.set_position(265598, "AAPL", 0, 0)
    rec.wait_for("position", lambda p: p.quantity == Decimal(0))
    assert any(r[1].endswith("/positions/invalidate") for r in sim.requests)


# ----------------------------------------------------------------------------- secrets
def test_the_session_id_never_reaches_logs_reprs_or_errors(make_feed, sim, debug_log):
    feed = make_feed()
    feed.subscribe_orders()
    rec = Recorder(feed)
    feed.start()
    connected(feed, sim, "sor")
    sim.send_malformed()
    sim.drop()
    rec.wait_for("connect", count=2)
    feed.stop()
    assert "recv" in debug_log.text and "act" in debug_log.text  # frames were logged at DEBUG
    assert sim.session not in debug_log.text
    assert sim.session not in repr(feed)
    assert all(sim.session not in str(e) for e in rec.of("error"))


# ----------------------------------------------------------------------------- adapter (pure data)
@pytest.mark.parametrize("word, filled, quantity, expected", [
    ("PendingSubmit", 0, 10, OrderStatus.PENDING), ("PreSubmitted", 0, 10, OrderStatus.OPEN),
    ("Submitted", 0, 10, OrderStatus.OPEN), ("Submitted", 4, 10, OrderStatus.PARTIALLY_FILLED),
    ("PendingCancel", 0, 10, OrderStatus.OPEN), ("Filled", 10, 10, OrderStatus.FILLED),
    ("Cancelled", 0, 10, OrderStatus.CANCELLED), ("ApiCancelled", 0, 10, OrderStatus.CANCELLED),
    ("Inactive", 0, 10, OrderStatus.INACTIVE), ("filled", 10, 10, OrderStatus.FILLED),
    ("SomethingNew", 0, 10, OrderStatus.UNKNOWN), (None, None, None, OrderStatus.UNKNOWN),
])
def test_status_mapping(word, filled, quantity, expected):
    dec = lambda v: None if v is None else Decimal(v)  # noqa: E731
    assert map_status(word, dec(filled), dec(quantity)) is expected


def test_adapter_merges_several_updates_in_one_frame():
    protocol = IbkrProtocol()
    frame = {"topic": "sor", "args": [
        {"acct": "U1", "orderId": 7, "ticker": "AAPL", "side": "BUY", "totalSize": 5, "status": "PendingSubmit"},
        {"acct": "U1", "orderId": 7, "status": "PreSubmitted"},
        {"acct": "U1", "orderId": 7, "status": "PreSubmitted"},  # repeated: no new event
    ]}
    orders = [o for o in protocol.on_frame(json.dumps(frame).encode(), True, 0.0) if type(o).__name__ == "Order"]
    assert [o.broker_status for o in orders] == ["PendingSubmit", "PreSubmitted"]
    assert orders[-1].symbol == "AAPL" and orders[-1].quantity == Decimal(5)


def test_adapter_raises_protocol_error_on_garbage():
    with pytest.raises(ProtocolError):
        IbkrProtocol().on_frame(b"{not json", False, 0.0)
    assert IbkrProtocol().on_frame(b"ech+hb", False, 0.0) == []


def test_gateway_restart_is_survived(make_feed, sim):
    feed = make_feed()
    feed.subscribe_orders()
    rec = Recorder(feed)
    feed.start()
    connected(feed, sim, "sor")
    sim.restart(down_for=0.4)
    rec.wait_for("connect", count=2, timeout=10)
    connected(feed, sim, "sor")
    order_id = sim.place_order("AAPL", "SELL", 1, 1.0)
    rec.wait_for("order", lambda o: o.order_id == order_id)


# ----------------------------------------------------------------------------- fills and their orders
STR_VARIANTS = [{"str_order_id": True}, {"str_order_id": False},
                {"str_order_id": False, "sor_order_ref": True}]
STR_IDS = ["str-with-order_id", "str-without-order_id", "without-order_id-sor-with-order_ref"]


@pytest.mark.parametrize("sim", STR_VARIANTS, indirect=True, ids=STR_IDS)
def test_fills_join_their_orders_and_the_coid_is_only_the_client_order_id(make_feed, sim):
    feed = make_feed()
    feed.subscribe_orders()
    feed.subscribe_trades()
    rec = Recorder(feed)
    feed.start()
    connected(feed, sim, "sor", "str")
    first = sim.place_order("AAPL", "BUY", 100, 190.5, coid="240103-AAPL-1-BUY-L@190.5-bxv8")
    second = sim.place_order("AAPL", "BUY", 50, 190.4)  # same contract and side: matching must tell them apart
    other = sim.place_order("MSFT", "SELL", 10, 400.0)
    sim.fill(first, 40, 190.5)
    sim.fill(second, 50, 190.4)
    sim.fill(first, 60, 190.45)
    sim.fill(other, 10, 400.0)
    trades = rec.wait_for("trade", count=4)
    expected = [(first, 40), (second, 50), (first, 60), (other, 10)]
    assert [(t.order_id, t.quantity) for t in trades] == [(o, Decimal(q)) for o, q in expected]
    assert [t.client_order_id for t in trades] == [sim.orders[o]["order_ref"] for o, _ in expected]
    assert trades[0].client_order_id == "240103-AAPL-1-BUY-L@190.5-bxv8"
    assert all(t.order_id != t.client_order_id for t in trades)
    orders = {o.order_id for o in rec.of("order")}
    assert {t.order_id for t in trades} <= orders  # every fill joins an order the user saw
    # The order learns its cOID from REST (or sor where it carries order_ref).
    wait_until(lambda: feed._query(lambda p: p.orders.get(first).client_order_id, None)
               == "240103-AAPL-1-BUY-L@190.5-bxv8")


@pytest.mark.parametrize("sim", STR_VARIANTS[:2], indirect=True, ids=STR_IDS[:2])
def test_fills_without_an_order_book_are_resolved_from_rest_trades(make_feed, sim):
    feed = make_feed()
    feed.subscribe_trades()  # no orders: nothing to match against, REST /iserver/account/trades tells
    rec = Recorder(feed)
    feed.start()
    connected(feed, sim, "str")
    order_id = sim.place_order("NVDA", "SELL", 3, 900.0, coid="my-nvda-1")
    sim.fill(order_id, 3, 901.0)
    trade = rec.wait_for("trade")[0]
    assert (trade.order_id, trade.client_order_id, trade.quantity) == (order_id, "my-nvda-1", Decimal(3))
    if not sim.str_order_id:
        assert any("/iserver/account/trades" in path and "accountId=DU123456" in path for _, path in sim.requests)


def test_a_fill_nobody_can_explain_is_delivered_without_an_order_id(make_feed, sim):
    feed = make_feed(trade_wait=0.5)
    feed.subscribe_trades()
    rec = Recorder(feed)
    feed.start()
    connected(feed, sim, "str")
    sim.send_executions([{"execution_id": "x.1", "symbol": "IBM", "side": "B", "size": "1", "price": "150",
                          "order_ref": "someone-elses", "account": "DU123456", "conid": "8314",
                          "trade_time_r": 1711076850000}])
    trade = rec.wait_for("trade")[0]
    assert (trade.trade_id, trade.order_id, trade.client_order_id) == ("x.1", None, "someone-elses")


def test_history_and_live_fills_keep_their_order_while_one_waits_for_rest(make_feed, sim):
    feed = make_feed()
    feed.subscribe_orders()
    feed.subscribe_trades()
    rec = Recorder(feed)
    feed.start()
    connected(feed, sim, "sor", "str")
    order_id = sim.place_order("AAPL", "BUY", 10, 1.0)
    sim.send_executions([{"execution_id": "old.1", "symbol": "IBM", "side": "B", "size": "1", "price": "150",
                          "order_ref": "old-coid", "account": "DU123456", "conid": "8314",
                          "trade_time_r": 1711076850000}])  # not in the book, not in REST: waits, then None
    sim.fill(order_id, 10, 1.0)  # matchable at once, but must not overtake the waiting one
    trades = rec.wait_for("trade", count=2, timeout=10)
    assert [(t.trade_id, t.order_id) for t in trades] == [("old.1", None), (trades[1].trade_id, order_id)]


def test_adapter_resolves_by_coid_by_matching_and_by_rest_and_never_guesses():
    protocol = IbkrProtocol("U1", can_refresh=True)
    rows = [{"acct": "U1", "orderId": 7, "conid": 265598, "ticker": "AAPL", "side": "BUY", "totalSize": 10,
             "filledQuantity": 5, "status": "Submitted", "lastExecutionTime_r": 1711076850000, "order_ref": "c7"},
            {"acct": "U1", "orderId": 8, "conid": 265598, "ticker": "AAPL", "side": "BUY", "totalSize": 10,
             "filledQuantity": 5, "status": "Submitted", "lastExecutionTime_r": 1711076850000}]
    protocol.merge_orders(rows)
    ex = {"symbol": "AAPL", "side": "B", "size": "5", "price": "1", "account": "U1", "conid": "265598",
          "trade_time_r": 1711076850000}

    def trades(frame_args):
        out = protocol.on_frame(json.dumps({"topic": "str", "args": frame_args}).encode(), True, 1.0)
        return [o for o in out if type(o).__name__ == "Trade"], [o for o in out if type(o).__name__ == "Refresh"]

    # By cOID (order 7 said its order_ref).
    (by_coid,), _ = trades([{**ex, "execution_id": "e1", "order_ref": "c7"}])
    assert by_coid.order_id == "7"
    # Order 8 is now the only one with fills not yet taken: matched.
    (matched,), _ = trades([{**ex, "execution_id": "e2", "order_ref": "unknown"}])
    assert matched.order_id == "8"
    # Both fill again: two candidates, no guess; the feed is asked for REST trades.
    protocol.merge_orders([{"orderId": 7, "filledQuantity": 10, "status": "Filled"},
                           {"orderId": 8, "filledQuantity": 10, "status": "Filled"}])
    waiting, refresh = trades([{**ex, "execution_id": "e3", "order_ref": "x3"}])
    assert waiting == [] and [r.what for r in refresh] == ["trades"]
    (resolved,) = [o for o in protocol.trades_from_rest([{"execution_id": "e3", "order_id": 8}])
                   if type(o).__name__ == "Trade"]
    assert (resolved.trade_id, resolved.order_id, resolved.client_order_id) == ("e3", "8", "x3")
    # An explicit order_id always wins; a repeated execution is not delivered twice.
    (explicit,), _ = trades([{**ex, "execution_id": "e4", "order_id": 7, "order_ref": "c7"}])
    assert explicit.order_id == "7"
    assert trades([{**ex, "execution_id": "e4", "order_id": 7}]) == ([], [])


def test_adapter_without_rest_delivers_an_unresolved_fill_at_once():
    protocol = IbkrProtocol("U1")
    out = protocol.on_frame(json.dumps({"topic": "str", "args": [
        {"execution_id": "e1", "symbol": "AAPL", "side": "B", "size": "5", "price": "1", "order_ref": "c1"}]}).encode(),
        True, 1.0)
    (trade,) = [o for o in out if type(o).__name__ == "Trade"]
    assert (trade.order_id, trade.client_order_id) == (None, "c1")


def test_a_waiting_fill_is_delivered_after_trade_wait():
    protocol = IbkrProtocol("U1", can_refresh=True, trade_wait=2.0)
    frame = {"topic": "str", "args": [{"execution_id": "e1", "symbol": "AAPL", "side": "B", "size": "5",
                                       "price": "1", "order_ref": "c1"}]}
    assert [type(o).__name__ for o in protocol.on_frame(json.dumps(frame).encode(), True, 10.0)] == [
        "RawMessage", "Refresh"]
    assert protocol.maintain(11.0) == []
    (trade,) = protocol.maintain(12.5)
    assert (trade.trade_id, trade.order_id) == ("e1", None)


# ----------------------------------------------------------------------------- reconciliation: a real snapshot
@pytest.mark.parametrize("sim", [
    {"orders_warmup": True, "sor_snapshot": False, "orders_need_account": True},
    {"orders_warmup": True, "sor_snapshot": False, "orders_need_account": True, "snapshot_flag": False},
], indirect=True, ids=["snapshot-flag", "no-snapshot-flag"])
def test_changes_missed_while_away_are_recovered_from_a_warming_up_gateway(make_feed, sim):
    feed = make_feed(reconcile_backoff=0.05)
    reconciled: List[bool] = []
    reconcile = feed._reconcile

    def counted(reconnect: bool) -> None:
        try:
            reconcile(reconnect)
        finally:
            reconciled.append(reconnect)

    feed._reconcile = counted  # type: ignore[method-assign]
    feed.subscribe_orders()
    rec = Recorder(feed)
    feed.start()
    connected(feed, sim, "sor")
    orders = [sim.place_order("AAPL", "BUY", 10, 100.0 + i) for i in range(4)]
    rec.wait_for("order", lambda o: o.order_id == orders[-1] and o.broker_status == "Submitted")
    wait_until(lambda: bool(reconciled))  # the first run's calls are over: count from here
    before = len(rec.of("order"))
    requests = len(sim.order_requests)
    sim.drop()
    sim.fill(orders[0], 10, 100.0)  # all of it happens while we are away
    sim.cancel(orders[1])
    sim.fill(orders[3], 4, 103.0)
    rec.wait_for("connect", count=2)
    wait_until(lambda: len(rec.of("order")) - before >= 3, timeout=10)
    time.sleep(0.3)  # give any duplicate a chance to show up
    after = {(o.order_id, o.status) for o in rec.of("order")[before:]}
    assert after == {(orders[0], OrderStatus.FILLED), (orders[1], OrderStatus.CANCELLED),
                     (orders[3], OrderStatus.PARTIALLY_FILLED)}
    calls = sim.order_requests[requests:]
    assert all(c.get("accountId") == "DU123456" for c in calls)
    assert [c.get("force") for c in calls][:1] == ["true"] and len(calls) >= 4  # force, empty, partial, full
    assert feed.stats.reconnects == 1 and not rec.of("error")


def test_reconciliation_that_never_gets_a_snapshot_merges_what_it_got_and_says_so(make_feed, sim):
    sim.snapshot_flag = False
    existing = sim.place_order("AAPL", "BUY", 10, 100.0)
    calls = {"n": 0}

    def growing(request):  # every answer differs from the one before: never "the same answer twice"
        calls["n"] += 1
        rows = [dict(sim.orders[existing], filledQuantity=float(calls["n"] % 10))]
        return 200, {"orders": [] if request.query.get("force") else rows}

    sim.route("GET", "/v1/api/iserver/account/orders", growing)
    feed = make_feed(reconcile_attempts=3, reconcile_backoff=0.01)
    feed.subscribe_orders()
    rec = Recorder(feed)
    feed.start()
    error = rec.wait_for("error")[0]
    assert isinstance(error, ProtocolError) and "no complete snapshot after 3 call(s)" in str(error)
    assert calls["n"] == 4  # force + 3
    assert feed.state == "connected"


# ----------------------------------------------------------------------------- Inactive is not final
def test_an_inactive_order_comes_back_and_fills(make_feed, sim):
    feed = make_feed()
    feed.subscribe_orders()
    feed.subscribe_trades()
    rec = Recorder(feed)
    feed.start()
    connected(feed, sim, "sor", "str")
    order_id = sim.place_order("AAPL", "BUY", 10, 190.0)
    rec.wait_for("order", lambda o: o.order_id == order_id and o.broker_status == "Submitted")
    sim.deactivate(order_id)
    inactive = rec.wait_for("order", lambda o: o.status is OrderStatus.INACTIVE)[0]
    assert inactive.broker_status == "Inactive" and not inactive.status.is_final
    sim.reactivate(order_id)
    rec.wait_for("order", lambda o: o.order_id == order_id and o.status is OrderStatus.OPEN
                 and o.broker_status == "Submitted")
    sim.deactivate(order_id)
    sim.fill(order_id, 4, 190.0)  # a fill while inactive is delivered too
    partial = rec.wait_for("order", lambda o: o.filled_quantity == Decimal(4))[0]
    assert partial.status is OrderStatus.INACTIVE
    assert rec.wait_for("trade")[0].order_id == order_id
    sim.reactivate(order_id)
    sim.fill(order_id, 6, 190.0)
    rec.wait_for("order", lambda o: o.status is OrderStatus.FILLED)
    assert feed.stats.extra.get("stale_order_updates", 0) == 0


# ----------------------------------------------------------------------------- P&L as the spec names it
def test_pnl_mv_is_margin_value_and_there_is_no_realized_pnl(make_feed, sim):
    feed = make_feed()
    feed.subscribe_pnl()
    rec = Recorder(feed)
    feed.start()
    connected(feed, sim, "spl")
    sim.set_pnl(mv=2500.0, el=97500.0, upl=12.5)
    pnl = rec.wait_for("pnl", lambda p: p.margin_value == Decimal("2500.0"))[0]
    assert pnl.excess_liquidity == Decimal("97500.0") and pnl.unrealized_pnl == Decimal("12.5")
    assert pnl.net_liquidation == Decimal("100000.0") and pnl.daily_pnl == Decimal("0.0")
    assert pnl.realized_pnl is None and pnl.market_value is None
    with pytest.raises(ValueError, match="rpl"):
        sim.set_pnl(rpl=1.0)  # not a field of IBKR's spec


# ----------------------------------------------------------------------------- account summary, quotes, cookies
def test_account_summary_names_its_account_and_quotes_wait_for_data(make_feed, sim):
    feed = make_feed(account="DU123456")
    feed.subscribe_account_summary()
    feed.subscribe_quotes(8314)
    rec = Recorder(feed)
    feed.start()
    connected(feed, sim, "ssd+DU123456", "smd+8314")
    balance = rec.wait_for("balance")[0]
    assert balance.values["AccountCode"] == "DU123456" and balance.account == "DU123456"
    rec.wait_for("message", lambda m: isinstance(m, dict) and m.get("topic") == "smd+8314")
    assert rec.of("quote") == []  # the subscription's answer carries no field values: no tick
    sim.tick(8314, last="55.5")
    assert rec.wait_for("quote")[0].last == Decimal("55.5")


def test_the_feed_sends_the_session_cookie(make_feed, sim):
    feed = make_feed()
    feed.start()
    assert feed.wait_connected(5)
    assert [c.info.get("cookie") for c in sim.clients] == ["valid"]


@pytest.mark.parametrize("require_cookie", [False, True])
def test_a_socket_without_cookie_is_taken_unless_required(require_cookie):
    import websocket

    with IbkrSimulator(hb_interval=0.1, require_cookie=require_cookie) as sim:
        if require_cookie:
            with pytest.raises(websocket.WebSocketBadStatusException, match="401"):
                websocket.create_connection(sim.url, timeout=5)
            assert sim.rejected == 1
            return
        ws = websocket.create_connection(sim.url, timeout=5)
        try:
            topics = [json.loads(ws.recv()).get("topic") for _ in range(3)]
            assert topics == ["system", "act", "sts"]
            assert [c.info.get("cookie") for c in sim.clients] == ["absent"]
        finally:
            ws.close()
