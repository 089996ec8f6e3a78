"""The Feed engine's guarantees, exercised over real sockets against the IBKR simulator.

Lifecycle, callbacks, dispatch modes, back-pressure, error isolation, reconnect and
dead-connection detection are broker-agnostic; the IBKR simulator is simply the server.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest

from brokerfeeds import IbkrFeed, ReconnectPolicy
from brokerfeeds.errors import CallbackError, ConnectionFailed
from brokerfeeds.events import Connected, Disconnected, Order, OrderStatus
from brokerfeeds.testing import IbkrSimulator
from helpers import FAST_RECONNECT, Recorder, feed_threads, wait_until

pytest_plugins = ("ibkr_fixtures",)  # the `sim` and `make_feed` fixtures


def connected(feed, sim, *topics):
    """Wait until the feed is connected and the simulator has processed its subscriptions."""
    assert feed.wait_connected(5)
    wait_until(lambda: all(sim.subscribers(t) for t in topics))


# ----------------------------------------------------------------------------- lifecycle
def test_construction_does_no_io_and_state_is_idle(make_feed, sim):
    feed = make_feed()
    assert feed.state == "idle" and feed.subscriptions == ()
    time.sleep(0.05)
    assert sim.tickles == 0 and sim.connections == 0 and not feed_threads()


def test_start_connect_stop_and_no_thread_survives(make_feed, sim):
    feed = make_feed()
    feed.subscribe_orders()
    assert feed.start() is feed
    assert feed.wait_connected(5)
    assert feed.state == "connected"
    assert {t.name for t in feed_threads()} == {"brokerfeeds-ibkr-io", "brokerfeeds-ibkr-rest",
                                                "brokerfeeds-ibkr-dispatch"}
    assert feed.stop() is True
    assert feed.state == "stopped" and not feed_threads()
    assert feed.stop() is True  # idempotent


def test_context_manager_starts_and_stops(make_feed):
    with make_feed() as feed:
        assert feed.wait_connected(5)
    assert feed.state == "stopped" and not feed_threads()


def test_a_stopped_feed_can_be_started_again(make_feed, sim):
    feed = make_feed()
    feed.subscribe_orders()
    rec = Recorder(feed)
    feed.start()
    assert feed.wait_connected(5)
    feed.stop()
    feed.start()
    assert feed.wait_connected(5)
    rec.wait_for("connect", count=2)
    connected(feed, sim, "sor")
    order_id = sim.place_order("AAPL", "BUY", 10, 100.0)
    rec.wait_for("order", lambda o: o.order_id == order_id)
    feed.stop()


def test_stop_from_another_thread(make_feed):
    feed = make_feed().start()
    assert feed.wait_connected(5)
    stopper = threading.Thread(target=feed.stop)
    stopper.start()
    stopper.join(5)
    assert not stopper.is_alive() and feed.state == "stopped"


@pytest.mark.parametrize("dispatch", ["thread", "inline"])
def test_stop_from_inside_a_callback_does_not_deadlock(make_feed, sim, dispatch):
    feed = make_feed(dispatch=dispatch)
    feed.subscribe_orders()
    returned = threading.Event()

    @feed.on_order
    def stop_now(order):
        feed.stop()
        returned.set()

    feed.start()
    connected(feed, sim, "sor")
    sim.place_order("AAPL", "BUY", 1, 1.0)
    assert returned.wait(5), "stop() inside a callback did not return"
    wait_until(lambda: feed.state == "stopped" and not feed_threads())


def test_run_forever_blocks_until_stop(make_feed):
    feed = make_feed()
    timer = threading.Timer(0.5, feed.stop)
    timer.start()
    started = time.monotonic()
    feed.run_forever()
    assert time.monotonic() - started >= 0.4 and feed.state == "stopped"


def test_wait_connected_times_out_when_nothing_listens():
    feed = IbkrFeed(url="ws://127.0.0.1:9/v1/api/ws", rest_url="http://127.0.0.1:9/v1/api",
                    reconnect=FAST_RECONNECT, connect_timeout=0.5, rest_timeout=0.5)
    errors = []
    feed.on_error(errors.append)
    feed.start()
    try:
        assert feed.wait_connected(0.5) is False
        assert feed.state in ("connecting", "reconnecting")
        wait_until(lambda: errors)
        assert isinstance(errors[0], ConnectionFailed)
    finally:
        feed.stop()


def test_max_attempts_gives_up_and_run_forever_raises():
    feed = IbkrFeed(url="ws://127.0.0.1:9/v1/api/ws", rest_url="http://127.0.0.1:9/v1/api",
                    reconnect=ReconnectPolicy(initial=0.01, maximum=0.02, max_attempts=3), rest_timeout=0.5)
    with pytest.raises(ConnectionFailed, match="gave up after 3"):
        feed.run_forever()
    assert feed.state == "stopped" and isinstance(feed.error, ConnectionFailed)
    wait_until(lambda: not feed_threads())


def test_stats_and_subscriptions(make_feed, sim):
    feed = make_feed()
    feed.subscribe_orders()
    feed.subscribe_quotes(265598)
    feed.subscribe_quotes(265598)  # same subscription twice: kept once
    assert [str(s) for s in feed.subscriptions] == ["orders", "quotes:265598"]
    feed.start()
    assert feed.wait_connected(5)
    wait_until(lambda: feed.stats.messages >= 3)
    stats = feed.stats
    assert stats.state == "connected" and stats.connects == 1 and stats.reconnects == 0
    assert stats.last_message_at is not None and stats.connected_since is not None
    feed.unsubscribe_quotes(265598)
    assert [str(s) for s in feed.subscriptions] == ["orders"]
    wait_until(lambda: "umd+265598+{}" in sim.received_texts())


# ----------------------------------------------------------------------------- callbacks
def test_callbacks_decorator_several_per_kind_and_removal(make_feed, sim):
    feed = make_feed()
    feed.subscribe_orders()
    first, second = [], []

    @feed.on_order
    def one(order):
        first.append(order)

    assert one.__name__ == "one"  # the decorator returns the function
    feed.on_order(second.append)
    feed.start()
    connected(feed, sim, "sor")
    sim.place_order("AAPL", "BUY", 1, 1.0)
    wait_until(lambda: len(first) >= 3 and len(second) >= 3)
    assert feed.remove_callback(one) is True and feed.remove_callback(one) is False
    count = len(first)
    sim.place_order("MSFT", "BUY", 1, 1.0)
    wait_until(lambda: any(o.symbol == "MSFT" for o in second))
    assert len(first) == count


def test_connect_and_disconnect_callbacks_carry_reasons(make_feed, sim):
    feed = make_feed()
    rec = Recorder(feed)
    feed.start()
    assert feed.wait_connected(5)
    sim.drop()
    down = rec.wait_for("disconnect")[0]
    assert isinstance(down, Disconnected) and down.will_reconnect and "closed" in down.reason
    again = rec.wait_for("connect", count=2)[1]
    assert isinstance(again, Connected) and again.reconnect
    feed.stop()
    final = rec.of("disconnect")[-1]
    assert final.reason == "stopped" and final.will_reconnect is False


def test_a_raising_callback_is_reported_and_nothing_else_happens(make_feed, sim, caplog):
    caplog.set_level(logging.ERROR, logger="brokerfeeds")
    feed = make_feed()
    feed.subscribe_orders()
    rec = Recorder(feed)

    @feed.on_order
    def broken(order):
        raise ValueError("user bug")

    feed.start()
    connected(feed, sim, "sor")
    order_id = sim.place_order("AAPL", "BUY", 5, 10.0)
    error = rec.wait_for("error")[0]
    assert isinstance(error, CallbackError) and isinstance(error.__cause__, ValueError)
    assert "Traceback" in caplog.text and "user bug" in caplog.text
    sim.fill(order_id, 5, 10.0)
    rec.wait_for("order", lambda o: o.status is OrderStatus.FILLED)
    assert feed.stats.reconnects == 0 and feed.stats.callback_errors >= 2 and feed.state == "connected"


# ----------------------------------------------------------------------------- dispatch modes
def test_thread_dispatch_runs_callbacks_in_order_off_the_reader_thread(make_feed, sim):
    feed = make_feed()
    feed.subscribe_orders()
    seen = []
    feed.on_order(lambda o: seen.append((threading.current_thread().name, o.broker_status)))
    feed.start()
    connected(feed, sim, "sor")
    sim.place_order("AAPL", "BUY", 1, 1.0)
    wait_until(lambda: len(seen) >= 3)
    assert {name for name, _ in seen} == {"brokerfeeds-ibkr-dispatch"}
    assert [status for _, status in seen[:3]] == ["PendingSubmit", "PreSubmitted", "Submitted"]


def test_inline_dispatch_runs_on_the_reader_thread(make_feed, sim):
    feed = make_feed(dispatch="inline")
    feed.subscribe_orders()
    names = []
    feed.on_order(lambda o: names.append(threading.current_thread().name))
    feed.start()
    connected(feed, sim, "sor")
    sim.place_order("AAPL", "BUY", 1, 1.0)
    wait_until(lambda: names)
    assert names[0] == "brokerfeeds-ibkr-io"
    assert "brokerfeeds-ibkr-dispatch" not in {t.name for t in feed_threads()}


def test_queue_dispatch_runs_only_in_process_events(make_feed, sim):
    feed = make_feed(dispatch="queue")
    feed.subscribe_orders()
    names = []
    feed.on_order(lambda o: names.append(threading.current_thread().name))
    feed.start()
    connected(feed, sim, "sor")
    sim.place_order("AAPL", "BUY", 1, 1.0)
    wait_until(lambda: feed.stats.pending_events >= 3)
    assert names == []
    ran = feed.process_events()
    assert ran >= 3 and set(names) == {threading.current_thread().name}
    assert feed.process_events(timeout=0.05) == 0


def test_process_events_is_only_for_queue_mode(make_feed):
    with pytest.raises(RuntimeError):
        make_feed().process_events()


def test_unknown_dispatch_mode_is_rejected():
    with pytest.raises(ValueError):
        IbkrFeed(dispatch="async")


@pytest.mark.parametrize("dispatch", ["thread", "queue"])
def test_events_iterator(make_feed, sim, dispatch):
    feed = make_feed(dispatch=dispatch)
    feed.subscribe_orders()
    feed.start()
    connected(feed, sim, "sor")
    events = feed.events(timeout=1.0)
    order_id = sim.place_order("AAPL", "BUY", 3, 9.0)
    sim.fill(order_id, 3, 9.0)
    orders = []
    for event in events:
        if isinstance(event, Order):
            orders.append(event)
            if event.status is OrderStatus.FILLED:
                break
    assert orders[-1].status is OrderStatus.FILLED and orders[-1].symbol == "AAPL"
    assert list(feed.events(timeout=0.1)) == []  # nothing more: the iterator ends on timeout


def test_events_iterator_ends_when_the_feed_stops(make_feed):
    feed = make_feed().start()
    assert feed.wait_connected(5)
    threading.Timer(0.2, feed.stop).start()
    assert list(feed.events()) == []


def test_slow_callbacks_coalesce_quotes_but_never_drop_account_events(make_feed, sim):
    feed = make_feed(max_pending_quotes=5)
    feed.subscribe_orders()
    feed.subscribe_quotes(265598)
    quotes, orders = [], []
    gate = threading.Event()

    def slow_quote(quote):
        gate.wait(5)
        quotes.append(quote)

    feed.on_quote(slow_quote)
    feed.on_order(orders.append)
    feed.start()
    connected(feed, sim, "sor", "smd+265598")
    for i in range(200):
        sim.tick(265598, last=str(100 + i))
    ids = [sim.place_order("AAPL", "BUY", 1, 1.0) for _ in range(20)]
    wait_until(lambda: feed.stats.messages >= 200 + 20)
    gate.set()
    wait_until(lambda: {o.order_id for o in orders} == set(ids) and quotes and quotes[-1].last == 299)
    assert feed.stats.quotes_coalesced > 0
    assert len(quotes) < 200
    assert [q.last for q in quotes] == sorted(q.last for q in quotes)  # newest wins, order kept


# ----------------------------------------------------------------------------- connection health
def test_reconnects_after_a_server_normal_close(make_feed, sim):
    feed = make_feed()
    rec = Recorder(feed)
    feed.start()
    assert feed.wait_connected(5)
    sim.close_all(1000)
    assert "1000" in rec.wait_for("disconnect")[0].reason
    rec.wait_for("connect", count=2)


def test_stall_is_detected_and_the_feed_reconnects(make_feed, sim):
    feed = make_feed(stale_after=0.5)
    rec = Recorder(feed)
    feed.start()
    assert feed.wait_connected(5)
    sim.stall()
    assert "stale" in rec.wait_for("disconnect")[0].reason
    rec.wait_for("connect", count=2)


def test_a_quiet_connection_with_heartbeats_is_not_reconnected(make_feed, sim):
    feed = make_feed(stale_after=0.5)
    feed.start()
    assert feed.wait_connected(5)
    time.sleep(1.5)  # three stale windows, no data but the server's 0.1 s heartbeats
    assert feed.stats.reconnects == 0 and feed.state == "connected"


def test_a_slow_callback_does_not_cost_the_connection(sim, make_feed):
    sim.stop()
    pinging = IbkrSimulator(hb_interval=0.1)
    pinging.ping_interval, pinging.ping_timeout = 0.1, 0.3  # the server drops us if a pong is late
    with pinging:
        feed = make_feed(url=pinging.url, rest_url=pinging.rest_url)
        feed.subscribe_orders()
        done = threading.Event()

        @feed.on_order
        def slow(order):
            time.sleep(1.2)  # four times the pong deadline
            done.set()

        feed.start()
        connected(feed, pinging, "sor")
        pinging.place_order("AAPL", "BUY", 1, 1.0)
        assert done.wait(10)
        assert feed.stats.reconnects == 0 and pinging.connections == 1
        feed.stop()
    sim.start()  # the fixture stops it again


def test_never_reconnects_after_stop(make_feed, sim):
    feed = make_feed()
    feed.start()
    assert feed.wait_connected(5)
    feed.stop()
    connections = sim.connections
    time.sleep(0.5)
    assert sim.connections == connections and not feed_threads()


def test_backoff_grows_while_the_server_is_down(make_feed, sim):
    feed = make_feed(reconnect=ReconnectPolicy(initial=0.1, factor=2.0, maximum=0.4, jitter=False))
    errors = []
    feed.on_error(errors.append)
    feed.start()
    assert feed.wait_connected(5)
    port = sim.port
    sim.stop()
    wait_until(lambda: len(errors) >= 3, timeout=5)
    sim._port = port
    sim.start()
    assert feed.wait_connected(5) or wait_until(lambda: feed.state == "connected")
    assert feed.stats.reconnects >= 1


def test_info_log_for_connects_and_resubscribes(make_feed, sim, caplog):
    caplog.set_level(logging.INFO, logger="brokerfeeds")
    feed = make_feed()
    feed.subscribe_orders()
    feed.start()
    assert feed.wait_connected(5)
    sim.drop()
    wait_until(lambda: "re-sent 1 subscription" in caplog.text)
    assert "connected; sent 1 subscription" in caplog.text


def test_stop_aborts_a_handshake_the_server_never_answers(sim):
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts TCP, never answers the WebSocket handshake
    try:
        feed = IbkrFeed(url=f"ws://127.0.0.1:{silent.getsockname()[1]}/v1/api/ws", rest_url=sim.rest_url,
                        connect_timeout=30, reconnect=FAST_RECONNECT)
        errors = []
        feed.on_error(errors.append)
        feed.start()
        time.sleep(0.3)
        started = time.monotonic()
        assert feed.stop(timeout=3) is True
        assert time.monotonic() - started < 2
        assert not feed_threads() and errors == []
    finally:
        silent.close()


def test_a_handshake_timeout_is_retried(sim):
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(5)
    try:
        feed = IbkrFeed(url=f"ws://127.0.0.1:{silent.getsockname()[1]}/v1/api/ws", rest_url=sim.rest_url,
                        connect_timeout=0.2, reconnect=FAST_RECONNECT)
        errors = []
        feed.on_error(errors.append)
        with feed:
            wait_until(lambda: len(errors) >= 2)
        assert all(isinstance(e, ConnectionFailed) for e in errors)
    finally:
        silent.close()


def test_fragmented_messages_with_an_interleaved_ping_and_large_frames(make_feed, sim):
    import asyncio
    import json

    feed = make_feed()
    feed.subscribe_orders()
    rec = Recorder(feed)
    feed.start()
    connected(feed, sim, "sor")
    big_symbol = "X" * 100_000  # a > 64 KiB frame uses the 8-byte length encoding
    message = json.dumps({"topic": "sor", "args": [{"acct": "DU1", "orderId": 42, "ticker": "FRAG",
                                                    "status": "Submitted", "orderDesc": big_symbol}]})

    async def fragments():
        client = next(iter(sim.clients))
        pieces = [message[i:i + 1000] for i in range(0, len(message), 1000)]

        async def slowly():
            for number, piece in enumerate(pieces):
                if number == 3:
                    await client.connection.ping(b"mid-message")  # a control frame between fragments
                yield piece
                await asyncio.sleep(0)

        await client.connection.send(slowly())

    sim.call(fragments())
    order = rec.wait_for("order", lambda o: o.order_id == "42")[0]
    assert order.symbol == "FRAG" and order.raw["orderDesc"] == big_symbol
    assert feed.stats.malformed == 0 and feed.stats.reconnects == 0


def _text_frame(payload: bytes) -> bytes:
    """An unmasked (server-to-client) WebSocket text frame."""
    n = len(payload)
    if n < 126:
        return bytes([0x81, n]) + payload
    return bytes([0x81, 126]) + n.to_bytes(2, "big") + payload


@pytest.mark.parametrize("tail", ["system heartbeat", "unlistened trade"])
def test_a_burst_ending_in_unlistened_events_still_wakes_the_dispatcher(make_feed, sim, tail):
    """Events of a burst are queued without a wake-up; the burst's last frame must wake the
    dispatcher even when nobody listens to what that frame produced."""
    import json

    feed = make_feed()
    feed.subscribe_orders()
    feed.subscribe_trades()
    feed._dispatcher.idle_poll = 60.0  # no safety net: a lost wake-up would hang the test
    rec = Recorder(feed, kinds=("order",))
    feed.start()
    connected(feed, sim, "sor", "str")
    last = ({"topic": "system", "hb": 1} if tail == "system heartbeat"
            else {"topic": "str", "args": [{"execution_id": "E1", "symbol": "BURST", "size": 1, "price": 1}]})
    frames = [{"topic": "sor", "args": [{"acct": "DU1", "orderId": 900 + i, "ticker": "BURST",
                                         "status": "Submitted"}]} for i in range(3)] + [last]
    data = b"".join(_text_frame(json.dumps(f).encode()) for f in frames)

    async def one_write():  # one TCP write: the reader finds every frame already buffered
        next(iter(sim.clients)).connection.transport.write(data)

    sim.call(one_write())
    orders = rec.wait_for("order", lambda o: o.symbol == "BURST", count=3, timeout=10)
    assert [o.order_id for o in orders] == ["900", "901", "902"]
