"""IbkrFeed against the IBKR simulator: the Client Portal protocol and its traps."""

from __future__ import annotations

import json
import logging
import time
from decimal import Decimal

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
    ("Inactive", 0, 10, OrderStatus.REJECTED), ("filled", 10, 10, OrderStatus.FILLED),
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
