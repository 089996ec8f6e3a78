"""UpstoxFeed over real sockets against UpstoxSimulator, plus pure-data adapter tests."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator, List

import pytest
import requests
import websocket

from brokerfeeds.brokers.upstox import (
    IST,
    STATUS_MAP,
    UpstoxFeed,
    UpstoxProtocol,
    map_status,
    next_token_expiry,
    parse_ist,
)
from brokerfeeds.errors import AuthenticationError, ProtocolError, RateLimited
from brokerfeeds.events import GttOrder, Holding, Order, OrderStatus, PnL, Position, Side, Trade
from brokerfeeds.protocol import RawMessage, Reconnect, Subscription
from brokerfeeds.testing.upstox import UpstoxSimulator
from helpers import FAST_RECONNECT, Recorder, feed_threads, wait_until

pytestmark = pytest.mark.timeout(20)

ROOT = Path(__file__).resolve().parent.parent
NHPC = "NSE_EQ|INE848E01016"
SBIN = "NSE_EQ|INE062A01020"


@pytest.fixture
def sim() -> Iterator[UpstoxSimulator]:
    with UpstoxSimulator(ping_every=0.1) as simulator:
        yield simulator  # type: ignore[misc]


def make_feed(sim: UpstoxSimulator, **kwargs: Any) -> UpstoxFeed:
    options = dict(access_token=sim.token, rest_url=sim.rest_url, reconnect=FAST_RECONNECT,
                   ping_interval=0.1, stale_after=0.6)
    if "token_provider" in kwargs:
        options.pop("access_token")
    options.update(kwargs)
    return UpstoxFeed(**options)  # type: ignore[arg-type]


def reconciled(sim: UpstoxSimulator, count: int = 1) -> None:
    """Wait until the feed fetched the order book ``count`` times (its REST reconciliation)."""
    assert sim.wait_for(lambda: sum("retrieve-all" in p for _, p in sim.requests) >= count, timeout=5)


def authorize_queries(sim: UpstoxSimulator) -> List[str]:
    return [path for method, path in sim.requests if "portfolio-stream-feed/authorize" in path]


# ====================================================================== over real sockets
def test_happy_path_all_four_update_types(sim: UpstoxSimulator) -> None:
    feed = make_feed(sim)
    rec = Recorder(feed)
    feed.subscribe_orders()
    feed.subscribe_positions()
    feed.subscribe_holdings()
    feed.subscribe_gtt_orders()
    with feed:
        assert feed.wait_connected(5)
        assert "update_types=order%2Cposition%2Cholding%2Cgtt_order" in authorize_queries(sim)[-1]
        assert sim.wait_for(lambda: sim.subscribers("gtt_order") == 1)
        order_id = sim.place_order("NHPC-EQ", "BUY", 10, 92.5, instrument_key=NHPC)
        sim.fill(order_id, 4, 92.45)
        sim.fill(order_id, 6, 92.55)
        sim.set_holding(NHPC, "NHPC", 3, 89.22)
        gtt_id = sim.place_gtt(SBIN, 1, "BUY", 560.0, target=590.0, stoploss=550.0)
        sim.set_gtt_rule(gtt_id, "ENTRY", "FAILED", message="The price set should be within the circuit limits")

        orders = rec.wait_for("order", lambda o: o.status is OrderStatus.FILLED)
        trades = rec.wait_for("trade", count=2)
        rec.wait_for("position", lambda p: p.quantity == 10)
        holdings = rec.wait_for("holding")
        gtts = rec.wait_for("gtt_order", lambda g: g.status == "FAILED")

    statuses = [(o.status, o.broker_status) for o in rec.of("order")]
    assert statuses == [
        (OrderStatus.PENDING, "put order req received"),
        (OrderStatus.PENDING, "validation pending"),
        (OrderStatus.PENDING, "open pending"),
        (OrderStatus.OPEN, "open"),
        (OrderStatus.PARTIALLY_FILLED, "open"),
        (OrderStatus.FILLED, "complete"),
    ]
    filled = orders[-1]
    assert isinstance(filled, Order)
    assert (filled.order_id, filled.symbol, filled.side, filled.account) == (order_id, "NHPC-EQ", Side.BUY, sim.user_id)
    assert filled.quantity == 10 and filled.filled_quantity == 10 and filled.remaining_quantity == 0
    assert filled.avg_price == Decimal("92.51") and filled.exchange == "NSE"
    assert filled.time is not None and filled.time.utcoffset() == dt.timedelta(hours=5, minutes=30)
    assert [(t.quantity, t.price) for t in trades] == [(Decimal(4), Decimal("92.45")), (Decimal(6), Decimal("92.55"))]
    assert all(isinstance(t, Trade) and t.order_id == order_id and t.side is Side.BUY for t in trades)
    assert len({t.trade_id for t in trades}) == 2
    positions = rec.of("position")
    assert [p.quantity for p in positions] == [4, 10]
    assert positions[-1].symbol == "NHPC-EQ" and positions[-1].exchange == "NSE" and positions[-1].instrument == NHPC
    assert positions[-1].avg_price == Decimal("92.51")
    holding = holdings[0]
    assert isinstance(holding, Holding) and holding.quantity == 3 and holding.avg_price == Decimal("89.22")
    gtt = gtts[-1]
    assert isinstance(gtt, GttOrder) and gtt.gtt_order_id == gtt_id and gtt.gtt_type == "MULTIPLE"
    assert gtt.side is Side.BUY and gtt.quantity == 1 and len(gtt.rules) == 3
    assert gtt.time is not None and abs((gtt.time - dt.datetime.now(dt.timezone.utc)).total_seconds()) < 60
    assert [g.status for g in rec.of("gtt_order")] == ["PENDING", "FAILED"]
    assert sim.received == []  # the portfolio feed never expects a client frame
    assert not rec.of("error")


def test_every_connect_authorizes_a_fresh_single_use_uri(sim: UpstoxSimulator) -> None:
    feed = make_feed(sim)
    rec = Recorder(feed)
    feed.subscribe_orders()
    with feed:
        assert feed.wait_connected(5)
        for n in (2, 3, 4):
            if n == 3:
                sim.close_all(1011, "internal error")
            else:
                sim.drop()
            rec.wait_for("connect", count=n)
        assert feed.stats.extra["authorizations"] == 4
    assert sim.authorizations == 4
    assert len(sim.used_codes) == 4 and len(set(sim.used_codes)) == 4
    assert sim.used_codes == sim.issued_codes  # each minted code used exactly once, in order
    assert sim.reused_codes == 0
    assert [c.reconnect for c in rec.of("connect")] == [False, True, True, True]


def test_simulator_rejects_a_reused_uri(sim: UpstoxSimulator) -> None:
    headers = {"Authorization": f"Bearer {sim.token}", "Accept": "application/json"}
    reply = requests.get(sim.rest_url + "/v2/feed/portfolio-stream-feed/authorize",
                         params={"update_types": "order"}, headers=headers, timeout=5).json()
    uri = reply["data"]["authorized_redirect_uri"]
    assert reply["data"]["authorizedRedirectUri"] == uri
    ws = websocket.create_connection(uri, timeout=5)
    ws.close()
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        websocket.create_connection(uri, timeout=5)
    assert info.value.status_code == 403
    assert sim.reused_codes == 1


@pytest.mark.parametrize("code", [1000, 1001, 1011])
def test_server_close_is_retried_including_1000(sim: UpstoxSimulator, code: int) -> None:
    feed = make_feed(sim)
    rec = Recorder(feed)
    feed.subscribe_orders()
    with feed:
        assert feed.wait_connected(5)
        sim.close_all(code, "bye")
        rec.wait_for("connect", lambda c: c.reconnect)
        assert f"code {code}" in rec.of("disconnect")[0].reason
        order_id = sim.place_order("SBIN-EQ", "SELL", 5, 571.0)
        rec.wait_for("order", lambda o: o.order_id == order_id and o.status is OrderStatus.OPEN)
    assert sim.authorizations == 2


def test_401_on_reconnect_stops_cleanly_with_authentication_error(sim: UpstoxSimulator) -> None:
    feed = make_feed(sim)
    rec = Recorder(feed)
    feed.subscribe_orders()
    feed.start()
    try:
        assert feed.wait_connected(5)
        sim.expire_token(drop=True)
        wait_until(lambda: feed.state == "stopped", timeout=10)
        errors = rec.wait_for("error", lambda e: isinstance(e, AuthenticationError))
        assert "HTTP 401" in str(errors[0]) and "UDAPI100050" in str(errors[0])
        assert isinstance(feed.error, AuthenticationError)
        wait_until(lambda: not feed_threads(), timeout=5, message="feed threads outlived the fatal error")
        with pytest.raises(AuthenticationError):
            feed.wait_connected(1)
        time.sleep(0.3)  # no retry storm: nothing else reaches the authorize endpoint
        assert sim.authorize_calls == 2
    finally:
        feed.stop()


def test_401_asks_the_token_provider_once_then_continues(sim: UpstoxSimulator) -> None:
    old, new = sim.token, "fresh-token-after-expiry-0123456789"
    calls: List[str] = []

    def provider() -> str:
        token = old if len(calls) < 2 else new  # the first reconnect still offers the dead token
        calls.append(token)
        return token

    feed = make_feed(sim, token_provider=provider)
    rec = Recorder(feed)
    feed.subscribe_orders()
    with feed:
        assert feed.wait_connected(5)
        reconciled(sim)
        sim.expire_token(drop=True, new_token=new)
        rec.wait_for("connect", lambda c: c.reconnect)
        assert calls == [old, old, new, new]  # connect, reconnect (401), refresh, retry
        assert feed.state == "connected"
    assert not [e for e in rec.of("error") if isinstance(e, AuthenticationError)]


def test_token_provider_with_no_new_token_stops(sim: UpstoxSimulator) -> None:
    calls: List[int] = []
    token = sim.token

    def provider() -> str:
        calls.append(1)
        return token

    feed = make_feed(sim, token_provider=provider)
    rec = Recorder(feed)
    with feed:
        assert feed.wait_connected(5)
        sim.expire_token(drop=True)
        wait_until(lambda: feed.state == "stopped", timeout=10)
        rec.wait_for("error", lambda e: isinstance(e, AuthenticationError))
        assert len(calls) == 3  # connect, reconnect, one refresh: no loop
        assert sim.authorize_calls == 2


def test_429_on_authorize_backs_off_honouring_retry_after(sim: UpstoxSimulator) -> None:
    sim.rate_limit(times=2, retry_after=0.3)
    feed = make_feed(sim)
    rec = Recorder(feed)
    with feed:
        assert feed.wait_connected(5)
        limited = rec.wait_for("error", lambda e: isinstance(e, RateLimited), count=2)
    assert all(e.retry_after == 0.3 and "UDAPI10005" in str(e) for e in limited)
    times = sim.authorize_times
    assert sim.authorize_calls == 3
    assert times[1] - times[0] >= 0.29 and times[2] - times[1] >= 0.29
    assert feed.error is None


@pytest.mark.parametrize("server_pings, client_pings, reconnects", [
    (True, False, False),   # only the server pings: never "no data"
    (False, True, False),   # only we ping: the pongs keep it alive
    (False, False, True),   # control: nothing at all on the wire really is stale
])
def test_quiet_but_pinging_socket_is_not_reconnected(server_pings: bool, client_pings: bool,
                                                     reconnects: bool) -> None:
    with UpstoxSimulator(ping_every=0.1 if server_pings else None) as sim:
        feed = make_feed(sim, ping_interval=0.1 if client_pings else None, stale_after=0.5)
        rec = Recorder(feed)
        with feed:
            assert feed.wait_connected(5)
            if reconnects:
                rec.wait_for("disconnect", lambda d: "stale" in d.reason)
            else:
                time.sleep(1.5)  # three stale windows of silence (apart from pings)
                assert feed.stats.reconnects == 0 and sim.connections == 1
                assert feed.stats.messages == 0 and feed.state == "connected"


def test_silent_stall_is_detected_and_recovered(sim: UpstoxSimulator) -> None:
    feed = make_feed(sim, stale_after=0.5)
    rec = Recorder(feed)
    feed.subscribe_orders()
    with feed:
        assert feed.wait_connected(5)
        sim.stall()
        rec.wait_for("disconnect", lambda d: "stale" in d.reason)
        rec.wait_for("connect", lambda c: c.reconnect)
        sim.resume()
        order_id = sim.place_order("NHPC-EQ", "BUY", 1, 92.0)
        rec.wait_for("order", lambda o: o.order_id == order_id and o.status is OrderStatus.OPEN)
    assert sim.authorizations == 2


def test_reconciliation_after_reconnect_emits_only_what_changed(sim: UpstoxSimulator) -> None:
    feed = make_feed(sim)
    rec = Recorder(feed)
    feed.subscribe_orders()
    feed.subscribe_positions()
    with feed:
        assert feed.wait_connected(5)
        reconciled(sim)
        steady = sim.place_order("TCS-EQ", "BUY", 2, 3900.0)
        filling = sim.place_order("NHPC-EQ", "BUY", 10, 92.5, instrument_key=NHPC)
        cancelled = sim.place_order("SBIN-EQ", "SELL", 5, 571.0, instrument_key=SBIN)
        sim.fill(filling, 4, 92.45)
        rec.wait_for("position", lambda p: p.quantity == 4)
        rec.wait_for("order", lambda o: o.order_id == cancelled and o.status is OrderStatus.OPEN)
        before = {oid: len([o for o in rec.of("order") if o.order_id == oid]) for oid in (steady, filling, cancelled)}

        sim.rate_limit(times=10_000, retry_after=None)  # keep the feed away while the books change
        sim.drop()
        rec.wait_for("disconnect")
        sim.fill(filling, 6, 92.55)
        sim.cancel(cancelled)
        placed = sim.place_order("INFY-EQ", "BUY", 3, 1500.0)
        sim.rate_limit(times=0)
        rec.wait_for("connect", lambda c: c.reconnect)
        rec.wait_for("order", lambda o: o.order_id == placed)
        rec.wait_for("order", lambda o: o.order_id == cancelled and o.status is OrderStatus.CANCELLED)
        rec.wait_for("trade", lambda t: t.quantity == 6)
        rec.wait_for("position", lambda p: p.quantity == 10)

        # The same books once more: a second reconnect finds nothing new.
        events = len(rec.events)
        sim.drop()
        rec.wait_for("connect", count=3)
        time.sleep(0.3)  # let the REST reconciliation of the third connect finish
        assert [k for k, _ in rec.events[events:] if k not in ("connect", "disconnect", "error")] == []

    after = [o for o in rec.of("order")]
    counts = {oid: len([o for o in after if o.order_id == oid]) for oid in (steady, filling, cancelled)}
    assert counts[steady] == before[steady]  # unchanged while away: no event
    assert counts[filling] == before[filling] + 1
    assert counts[cancelled] == before[cancelled] + 1
    assert [o.status for o in after if o.order_id == placed] == [OrderStatus.OPEN]
    assert [t.quantity for t in rec.of("trade")] == [4, 6]  # the fill missed while away is derived once
    assert [p.quantity for p in rec.of("position")] == [4, 10]


def test_first_snapshot_does_not_invent_fills(sim: UpstoxSimulator) -> None:
    done = sim.place_order("NHPC-EQ", "BUY", 10, 92.5)
    sim.fill(done, 10, 92.5)  # before the feed starts
    feed = make_feed(sim)
    rec = Recorder(feed)
    feed.subscribe_orders()
    with feed:
        assert feed.wait_connected(5)
        rec.wait_for("order", lambda o: o.order_id == done and o.status is OrderStatus.FILLED)
        sim.fill(sim.place_order("SBIN-EQ", "SELL", 5, 571.0), 5, 571.0)
        rec.wait_for("trade")
        time.sleep(0.1)
    assert [t.symbol for t in rec.of("trade")] == ["SBIN-EQ"]


def test_changing_update_types_reauthorizes_and_reconnects(sim: UpstoxSimulator) -> None:
    feed = make_feed(sim)
    rec = Recorder(feed)
    feed.subscribe_orders()
    with feed:
        assert feed.wait_connected(5)
        assert feed.update_types == ("order",)
        feed.subscribe_orders()  # already in the set: nothing happens
        feed.subscribe_positions()
        rec.wait_for("connect", lambda c: c.reconnect)
        assert sim.wait_for(lambda: sim.subscribers("position") == 1)
        assert "update_types=order%2Cposition" in authorize_queries(sim)[-1]
        feed.unsubscribe_positions()
        rec.wait_for("connect", count=3)
        assert authorize_queries(sim)[-1].endswith("update_types=order")
        sim.set_position(NHPC, "NHPC-EQ", 5, 92.0)
        order_id = sim.place_order("NHPC-EQ", "BUY", 1, 92.0)
        rec.wait_for("order", lambda o: o.order_id == order_id)
    assert sim.authorizations == 3
    assert not [p for p in rec.of("position") if p.quantity == 5]


def test_unknown_update_type_and_malformed_json_never_kill_the_feed(sim: UpstoxSimulator) -> None:
    feed = make_feed(sim)
    rec = Recorder(feed)
    feed.subscribe_orders()
    with feed:
        assert feed.wait_connected(5)
        sim.send_unknown()
        sim.send_malformed()
        sim.send_raw(json.dumps({"update_type": "order"}))  # no order_id: ignored
        sim.send_raw(json.dumps({"update_type": "order", "order_id": "1", "status": "open"}).encode(), text=False)
        rec.wait_for("message", lambda m: isinstance(m, dict) and m.get("update_type") == "margin_alert")
        rec.wait_for("error", lambda e: isinstance(e, ProtocolError))
        rec.wait_for("order", lambda o: o.order_id == "1")  # a binary frame holding JSON still decodes
        order_id = sim.place_order("NHPC-EQ", "BUY", 1, 92.0)
        rec.wait_for("order", lambda o: o.order_id == order_id)
        assert feed.stats.malformed == 1 and feed.stats.reconnects == 0


def test_poll_pnl_emits_totals_and_per_position_figures(sim: UpstoxSimulator) -> None:
    feed = make_feed(sim, poll_pnl=0.1)
    rec = Recorder(feed)
    feed.subscribe_orders()
    with feed:
        assert feed.wait_connected(5)
        sim.fill(sim.place_order("NHPC-EQ", "BUY", 10, 92.5, instrument_key=NHPC), 10, 92.5)
        sim.set_last_price(NHPC, 93.5)
        pnl = rec.wait_for("pnl", lambda p: p.daily_pnl == Decimal("10"))[0]
        position = rec.wait_for("position", lambda p: p.unrealized_pnl == Decimal("10"))[0]
        sim.set_last_price(NHPC, 92.0)
        rec.wait_for("pnl", lambda p: p.daily_pnl == Decimal("-5"))
    assert isinstance(pnl, PnL) and pnl.account == sim.user_id
    assert pnl.unrealized_pnl == Decimal("10") and pnl.market_value == Decimal("935")
    assert isinstance(position, Position) and position.symbol == "NHPC-EQ" and position.quantity == 10
    values = [p.daily_pnl for p in rec.of("pnl")]
    assert len(values) == len(set(values))  # unchanged polls emit nothing


def test_handshake_rejection_of_a_fresh_uri_retries_once_with_a_new_one(sim: UpstoxSimulator) -> None:
    sim.reject_handshakes(1)
    feed = make_feed(sim)
    with feed:
        assert feed.wait_connected(5)
    assert sim.authorizations == 2 and sim.rejected == 1


def test_token_is_refreshed_at_the_daily_expiry(sim: UpstoxSimulator) -> None:
    tokens = [sim.token]
    feed = make_feed(sim, token_provider=lambda: tokens[-1])
    feed.expiry_check_interval = 0.05
    rec = Recorder(feed)
    with feed:
        assert feed.wait_connected(5)
        tokens.append("tomorrow-token-abcdef0123456789")
        sim.valid_tokens.add(tokens[-1])
        feed._token_expires_at = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
        rec.wait_for("connect", lambda c: c.reconnect)
        assert "expiry" in rec.of("disconnect")[0].reason
        assert feed._token == tokens[-1]


def test_secrets_never_reach_logs_reprs_or_errors(sim: UpstoxSimulator, debug_log: Any) -> None:
    feed = make_feed(sim)
    rec = Recorder(feed)
    feed.subscribe_orders()
    feed.start()
    try:
        assert feed.wait_connected(5)
        sim.send_malformed()
        rec.wait_for("error")
        sim.drop()
        rec.wait_for("connect", lambda c: c.reconnect)
        sim.reject_handshakes(1)
        sim.expire_token(drop=True)
        wait_until(lambda: feed.state == "stopped", timeout=10)
    finally:
        feed.stop()
    secrets = [sim.token, *sim.issued_codes]
    texts = [debug_log.text, repr(feed), str(feed.stats), *(str(e) for e in rec.of("error"))]
    assert sim.issued_codes and "connecting to" in debug_log.text
    for secret in secrets:
        for text in texts:
            assert secret not in text


def test_construction_needs_exactly_one_credential_and_does_no_io() -> None:
    with pytest.raises(ValueError):
        UpstoxFeed()
    with pytest.raises(ValueError):
        UpstoxFeed(access_token="a-token", token_provider=lambda: "b-token")
    feed = UpstoxFeed(access_token="secret-token-value", rest_url="http://127.0.0.1:9")
    assert feed.state == "idle" and feed.update_types == ("order",)
    assert "secret-token-value" not in repr(feed)


def test_example_runs_standalone_against_the_simulator() -> None:
    env = {k: v for k, v in __import__("os").environ.items() if k != "UPSTOX_ACCESS_TOKEN"}
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "upstox_orders.py")], capture_output=True,
                            text=True, timeout=15, env=env, cwd=str(ROOT))
    assert result.returncode == 0, result.stderr
    assert "FILLED" in result.stdout and "fill " in result.stdout and "-- reconnected" in result.stdout
    assert "CANCELLED" in result.stdout


def test_demo_runs() -> None:
    from brokerfeeds.demo import run

    lines: List[str] = []
    assert run("upstox", lines.append, duration=2.0) == 0
    text = "\n".join(lines)
    assert "FILL" in text and "GTT" in text and "HOLDING" in text and "reconnected" in text


# ====================================================================== the sans-I/O adapter
def frame(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


ORDER = {
    "update_type": "order", "user_id": "7AB123", "exchange": "NSE", "instrument_token": NHPC,
    "instrument_key": NHPC, "trading_symbol": "NHPC-EQ", "product": "D", "order_type": "LIMIT",
    "average_price": 0, "price": 92.5, "quantity": 10, "pending_quantity": 10, "transaction_type": "BUY",
    "status": "open", "order_id": "240221025997024", "order_timestamp": "2024-02-21 14:40:02",
    "exchange_timestamp": None, "filled_quantity": 0, "order_request_id": "1",
}


def test_status_table_covers_every_documented_phrase() -> None:
    documented = ["put order req received", "validation pending", "open pending", "open", "trigger pending",
                  "complete", "rejected", "cancelled", "cancel pending", "not cancelled", "modify pending",
                  "modify validation pending", "modified", "not modified", "after market order req received",
                  "modify after market order req received", "cancelled after market order"]
    assert all(map_status(phrase, None, None) is not OrderStatus.UNKNOWN for phrase in documented)
    assert len(documented) == len(STATUS_MAP)
    assert map_status("complete", Decimal(10), Decimal(10)) is OrderStatus.FILLED
    assert map_status("Open", Decimal(3), Decimal(10)) is OrderStatus.PARTIALLY_FILLED
    assert map_status("cancelled", Decimal(3), Decimal(10)) is OrderStatus.CANCELLED
    assert map_status("something new", None, None) is OrderStatus.UNKNOWN


def test_ist_timestamps_and_token_expiry() -> None:
    stamp = parse_ist("2024-02-21 14:40:02")
    assert stamp == dt.datetime(2024, 2, 21, 9, 10, 2, tzinfo=dt.timezone.utc)
    assert parse_ist(None) is None and parse_ist("not a time") is None
    at = dt.datetime(2024, 2, 21, 2, 30, tzinfo=IST)
    assert next_token_expiry(at) == dt.datetime(2024, 2, 21, 3, 30, tzinfo=IST)
    assert next_token_expiry(at.replace(hour=3, minute=30)) == dt.datetime(2024, 2, 22, 3, 30, tzinfo=IST)
    assert next_token_expiry(dt.datetime(2024, 2, 21, 12, 0, tzinfo=dt.timezone.utc)) == \
        dt.datetime(2024, 2, 22, 3, 30, tzinfo=IST)


def test_adapter_dedupes_orders_and_derives_fills() -> None:
    p = UpstoxProtocol()
    out = p.on_frame(frame(**ORDER), False, 0.0)
    assert isinstance(out[0], RawMessage) and isinstance(out[1], Order) and p.account == "7AB123"
    assert p.on_frame(frame(**ORDER), False, 0.0) == [RawMessage(ORDER)]  # a duplicate: no event
    partial = dict(ORDER, filled_quantity=4, pending_quantity=6, average_price=92.45)
    out = p.on_frame(frame(**partial), False, 0.0)
    assert [type(o) for o in out] == [RawMessage, Order, Trade]
    trade = out[2]
    assert trade.trade_id == "240221025997024:4" and trade.quantity == 4 and trade.price == Decimal("92.45")
    stale = p.merge_orders([ORDER])  # a REST row from before the fill: refused
    assert stale == []


def test_adapter_positions_holdings_gtt_and_subscriptions() -> None:
    p = UpstoxProtocol(account="7AB123")
    position = {"update_type": "position", "instrument_token": NHPC, "instrument_key": NHPC, "average_price": 0,
                "buy_price": 92.925, "sell_price": 0, "exchange": "NSE_EQ", "quantity": 2, "product": "D"}
    out = p.on_frame(frame(**position), False, 0.0)
    assert isinstance(out[1], Position) and out[1].avg_price == Decimal("92.925") and out[1].exchange == "NSE"
    assert out[1].symbol == NHPC  # no symbol known yet
    closed = p.positions_from([])  # a REST snapshot without it: closed, reported once
    assert [(x.quantity, x.instrument) for x in closed] == [(0, NHPC)] and p.positions_from([]) == []
    gtt = {"update_type": "gtt_order", "type": "SINGLE", "exchange": "NSE_EQ", "instrument_token": SBIN,
           "quantity": 1, "gtt_order_id": "GTT-1", "expires_at": 1772216999000000, "created_at": 1740641185000000,
           "rules": [{"strategy": "ENTRY", "status": "PENDING", "trigger_price": 7.7, "transaction_type": "SELL"}]}
    out = p.on_frame(frame(**gtt), False, 0.0)
    assert isinstance(out[1], GttOrder) and out[1].side is Side.SELL
    assert out[1].time == dt.datetime(2025, 2, 27, 7, 26, 25, tzinfo=dt.timezone.utc)
    assert p.gtt_from([gtt]) == []
    holding = {"update_type": "holding", "instrument_key": NHPC, "quantity": 3, "average_price": 89.22}
    assert isinstance(p.on_frame(frame(**holding), False, 0.0)[1], Holding)
    assert p.on_frame(frame(update_type="brand_new"), False, 0.0) == [RawMessage({"update_type": "brand_new"})]
    with pytest.raises(ProtocolError):
        p.on_frame(b"{not json", False, 0.0)
    p.authorized = frozenset({"order"})
    assert p.subscribe([Subscription("orders")], 0.0) == []
    assert isinstance(p.subscribe([Subscription("orders"), Subscription("holdings")], 0.0)[0], Reconnect)
    assert isinstance(p.unsubscribe([Subscription("orders")], 0.0)[0], Reconnect)
    assert p.unsubscribe([Subscription("positions")], 0.0) == []


def test_error_envelope_both_spellings() -> None:
    feed = UpstoxFeed(access_token="token-1234", rest_url="http://127.0.0.1:9")
    current = {"status": "error", "errors": [{"error_code": "UDAPI100050", "message": "Invalid token used to access API"}]}
    old = {"status": "error", "errors": [{"errorCode": "UDAPI10005", "message": "Too Many Request Sent"}]}
    assert feed._rest_error_text(current) == "UDAPI100050 Invalid token used to access API"
    assert feed._rest_error_text(old) == "UDAPI10005 Too Many Request Sent"
    assert feed._rest_error_text({"message": "plain"}) == "plain"
    assert feed._rest_error_text("text") is None


def test_simulator_redirects_the_sdk_style_socket_url_to_a_one_time_uri(sim: UpstoxSimulator) -> None:
    """The official SDK opens the socket URL with its Bearer header and follows a 302."""
    from brokerfeeds.testing.upstox import REDIRECT_PATH

    url = sim.ws_base + REDIRECT_PATH + "?update_types=order%2Cposition"
    ws = websocket.create_connection(url, header=[f"Authorization: Bearer {sim.token}"], timeout=5)
    try:
        assert sim.authorizations == 1 and len(sim.used_codes) == 1  # redirected, then the code was spent
        sim.place_order("SBIN-EQ", "BUY", 1, 570.0)
        assert json.loads(ws.recv())["update_type"] == "order"
    finally:
        ws.close()
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(url, header=["Authorization: Bearer wrong"], timeout=5)
    assert refused.value.status_code == 401 and "401 Unauthorized" in str(refused.value)
    assert sim.token not in str(refused.value)
