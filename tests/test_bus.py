"""brokerfeeds.bus against a real redis-server: publishers, consumers, outages, crashes.

One ``redis-server`` (from PATH) runs per test session on a free loopback port with its
files in a temporary directory, and is stopped by its pid; every test uses streams of its
own. Without redis-server (or redis-py) these tests are skipped, saying why.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest

redis = pytest.importorskip("redis", reason="redis-py is not installed: pip install -e '.[redis]'")

from brokerfeeds import ClearStreetFeed, FirstockFeed, IbkrFeed, UpstoxFeed  # noqa: E402
from brokerfeeds import events as ev  # noqa: E402
from brokerfeeds.bus import (  # noqa: E402
    BusAuthenticationError,
    BusConnectionFailed,
    BusDropped,
    RedisEvents,
    RedisPublisher,
)
from brokerfeeds.bus.cli import tail_main  # noqa: E402
from brokerfeeds.events import OrderStatus, Side  # noqa: E402
from brokerfeeds.reconnect import ReconnectPolicy  # noqa: E402
from brokerfeeds.testing import ClearStreetSimulator, FirstockSimulator, IbkrSimulator, UpstoxSimulator  # noqa: E402
from brokerfeeds.testing.redis_server import RedisServer, free_port, redis_server_path  # noqa: E402
from helpers import FAST_RECONNECT, wait_until  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
QUICK = ReconnectPolicy(initial=0.05, factor=2.0, maximum=0.2, reset_after=0.5)
T0 = dt.datetime(2024, 5, 1, 13, 30, 0, 250000, tzinfo=dt.timezone.utc)
#: Callback kinds of the events a publisher publishes by default (everything but quotes).
ACCOUNT_KINDS = ("order", "trade", "position", "pnl", "holding", "balance", "notice", "gtt_order", "locate",
                 "replay_complete")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the session (AOF on, so a SIGKILL loses no acknowledged write)."""
    if redis_server_path() is None:
        pytest.skip("redis-server is not installed (Debian/Ubuntu: apt-get install redis-server)")
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def prefix(redis_server: RedisServer) -> str:
    """Stream names of this test's own: ``<prefix>:{broker}:{account}``."""
    redis_server.start()  # a test before may have killed it and failed before restarting it
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def stop_later() -> Iterator[Callable[[Any], Any]]:
    """``stop_later(thing)``: stop a feed, publisher or consumer after the test, even a failed one."""
    things: List[Any] = []

    def add(thing: Any) -> Any:
        things.append(thing)
        return thing

    yield add
    for thing in reversed(things):
        with contextlib.suppress(Exception):
            thing.stop(1.0)


def client(server: RedisServer) -> Any:
    return redis.Redis.from_url(server.url)


def order(n: int, account: str = "ACC1", **changes: Any) -> ev.Order:
    """A synthetic order update, its id telling which one it was."""
    fields: Dict[str, Any] = dict(broker="sim", account=account, order_id=f"O{n}", symbol="AAPL", side=Side.BUY,
                                  quantity=Decimal("100"), filled_quantity=Decimal(n % 100),
                                  price=Decimal("190.10"), status=OrderStatus.OPEN, time=T0,
                                  raw={"n": n, "note": "synthetic"})
    fields.update(changes)
    return ev.Order(**fields)


_to_json = ev.to_json


def as_json(event: ev.Event) -> Any:
    """An event's JSON form, as data (``raw`` included)."""
    return json.loads(_to_json(event))


# ============================================================== feeds of every broker, through Redis
@contextlib.contextmanager
def ibkr_session() -> Iterator[Tuple[Any, Callable[[], None], Callable[[], bool]]]:
    with IbkrSimulator(hb_interval=0.2) as sim:
        feed = IbkrFeed(url=sim.url, rest_url=sim.rest_url, heartbeat_interval=0.5, stale_after=2.0,
                        reconnect=FAST_RECONNECT)
        feed.subscribe_orders()
        feed.subscribe_trades(realtime_only=True)
        feed.subscribe_pnl()

        def act() -> None:
            buy = sim.place_order("AAPL", "BUY", 100, 190.10)
            sim.fill(buy, 40, 190.10)
            sim.set_pnl(dpl=4.0, upl=4.0)
            sim.fill(buy, 60, 190.20)
            sim.notify("market data farm connection is OK")

        yield feed, act, lambda: sim.subscribers("sor") > 0


@contextlib.contextmanager
def upstox_session() -> Iterator[Tuple[Any, Callable[[], None], Callable[[], bool]]]:
    with UpstoxSimulator(ping_every=0.2) as sim:
        feed = UpstoxFeed(access_token=sim.token, rest_url=sim.rest_url, ping_interval=0.2, stale_after=2.0,
                          reconnect=FAST_RECONNECT)
        feed.subscribe_orders()
        feed.subscribe_positions()
        feed.subscribe_holdings()
        nhpc = "NSE_EQ|INE848E01016"

        def act() -> None:
            buy = sim.place_order("NHPC-EQ", "BUY", 10, 92.50, instrument_key=nhpc, product="I")
            sim.fill(buy, 4, 92.45)
            sim.set_holding(nhpc, "NHPC", 13, 91.05)
            sim.fill(buy, 6, 92.55)

        yield feed, act, lambda: sim.subscribers("order") > 0


@contextlib.contextmanager
def firstock_session() -> Iterator[Tuple[Any, Callable[[], None], Callable[[], bool]]]:
    with FirstockSimulator(ping_every=0.2, pong_deadline=2.0) as sim:
        feed = FirstockFeed(sim.user_id, sim.jkey, url=sim.url, rest_url=sim.rest_url, stale_after=2.0,
                            ping_interval=0.5, reconnect=FAST_RECONNECT)

        def act() -> None:
            buy = sim.place_order("RELIANCE-EQ", "B", 10, 1395.60, token="2885")
            sim.fill(buy, 4, 1395.60)
            sim.notice("Order placed via API")
            sim.fill(buy, 6, 1395.70)

        yield feed, act, lambda: True  # order updates come without a subscription


@contextlib.contextmanager
def clearstreet_session() -> Iterator[Tuple[Any, Callable[[], None], Callable[[], bool]]]:
    with ClearStreetSimulator(accounts=("100000",), hb_interval=0.5) as sim:
        feed = ClearStreetFeed(
            token_provider=ClearStreetFeed.client_credentials(sim.client_id, sim.client_secret, auth_url=sim.auth_url),
            url=sim.url, rest_url=sim.rest_url, stale_after=2.0, ping_interval=0.5, reconnect=FAST_RECONNECT)
        feed.subscribe_activity("100000")

        def act() -> None:
            buy = sim.place_order("AAPL", "buy", 100, 190.10)
            sim.fill(buy, 40, 190.10)
            sim.set_position("AAPL", 40, 190.10)
            sim.set_buying_power(amount=5000.0)
            sim.fill(buy, 60, 190.05)

        yield feed, act, lambda: sim.subscribers("100000") > 0


SESSIONS = {"ibkr": ibkr_session, "upstox": upstox_session, "firstock": firstock_session,
            "clearstreet": clearstreet_session}


def test_events_of_every_broker_arrive_complete_and_in_order_in_another_process(redis_server, prefix, monkeypatch,
                                                                                 stop_later):
    encoded_on: List[str] = []
    real_to_json = ev.to_json_bytes

    def spy(event: Any) -> Any:  # where the JSON form is made: never on a feed's io thread
        encoded_on.append(threading.current_thread().name)
        return real_to_json(event)

    monkeypatch.setattr(ev, "to_json_bytes", spy)
    expected: Dict[str, List[Any]] = {}
    for broker, session in SESSIONS.items():
        with session() as (feed, act, ready):
            stop_later(feed)
            publisher = RedisPublisher(redis_server.url, f"{prefix}:{{broker}}:{{account}}", reconnect=QUICK)
            assert feed.add_publisher(publisher) is publisher
            seen: List[ev.Event] = []
            lock = threading.Lock()

            def record(event: Any, seen: List[ev.Event] = seen) -> None:
                with lock:
                    seen.append(event)

            for kind in ACCOUNT_KINDS:
                feed.on(kind, record)
            feed.start()
            assert feed.wait_connected(10), broker
            assert publisher.wait_connected(5)
            wait_until(ready, message=f"{broker}: not subscribed")
            act()
            wait_until(lambda: sum(isinstance(e, ev.Trade) for e in list(seen)) >= 2, timeout=10,
                       message=f"{broker}: fills did not arrive")
            assert feed.stop(), f"{broker}: stop() could not deliver and publish everything"
        assert publisher.stats.pending == 0 and publisher.stats.unflushed_at_stop == 0
        for event in seen:
            account = getattr(event, "account", None) or "_"
            expected.setdefault(f"{prefix}:{event.broker}:{account}", []).append(as_json(event))
    total = sum(map(len, expected.values()))
    assert {s.split(":")[1] for s in expected} == set(SESSIONS)
    assert encoded_on and all(name.endswith("-publish") for name in encoded_on), set(encoded_on)

    # Another process reads them back: `brokerfeeds tail` (the CLI function) with --json.
    result = subprocess.run(
        [sys.executable, "-m", "brokerfeeds.bus.cli", redis_server.url, "--stream", f"{prefix}:*", "--start", "0",
         "--json", "--count", str(total)],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])})
    assert result.returncode == 0, result.stderr
    got: Dict[str, List[Any]] = {}
    seqs: Dict[str, List[int]] = {}
    for line in result.stdout.splitlines():
        entry = json.loads(line)
        got.setdefault(entry["stream"], []).append(entry["event"])
        seqs.setdefault(entry["stream"], []).append(entry["seq"])
    assert got == expected  # every event, in order per stream, field for field (raw included)
    assert all(s == sorted(s) for s in seqs.values())
    assert client(redis_server).xlen(f"{prefix}:ibkr:DU123456") == len(expected[f"{prefix}:ibkr:DU123456"])


def test_a_feed_stop_says_what_it_could_not_publish(caplog, stop_later):
    caplog.set_level(logging.WARNING, logger="brokerfeeds")
    url = f"redis://:pw-s3cret-77@127.0.0.1:{free_port()}/0"  # nothing listens there
    with IbkrSimulator(hb_interval=0.2) as sim:
        feed = IbkrFeed(url=sim.url, rest_url=sim.rest_url, heartbeat_interval=0.5, stale_after=2.0,
                        reconnect=FAST_RECONNECT)
        stop_later(feed)
        publisher = feed.add_publisher(RedisPublisher(url, reconnect=QUICK))
        errors: List[Any] = []
        feed.on_error(errors.append)
        orders: List[Any] = []
        feed.on_order(orders.append)
        feed.subscribe_orders()
        feed.start()
        assert feed.wait_connected(10)
        wait_until(lambda: sim.subscribers("sor") > 0)
        sim.place_order("AAPL", "BUY", 100, 190.10)
        wait_until(lambda: len(orders) >= 3)
        wait_until(lambda: any(isinstance(e, BusConnectionFailed) for e in errors))
        started = time.monotonic()
        assert feed.stop(0.5) is False  # the orders could not reach Redis
        assert time.monotonic() - started < 3.0
    assert isinstance(publisher, RedisPublisher)
    assert publisher.stats.unflushed_at_stop == len(orders) and publisher.state == "stopped"
    lost = [r.getMessage() for r in caplog.records if "could not be published" in r.getMessage()]
    assert len(lost) == 1 and f"{len(orders)} event(s)" in lost[0], lost
    outage = [e for e in errors if isinstance(e, BusConnectionFailed)]
    assert len(outage) == 1  # reported once, however many retries
    assert "cannot connect to Redis at redis://:***@127.0.0.1" in str(outage[0])
    assert "pw-s3cret-77" not in caplog.text and all("pw-s3cret-77" not in str(e) for e in errors)


def test_one_publisher_serves_two_feeds_and_each_run_has_its_own_run_id(redis_server, prefix, stop_later):
    publisher = RedisPublisher(redis_server.url, f"{prefix}:{{broker}}:{{account}}", reconnect=QUICK)
    with IbkrSimulator(hb_interval=0.2, account="DU1") as sim1, IbkrSimulator(hb_interval=0.2, account="DU2") as sim2:
        feeds = [IbkrFeed(url=sim.url, rest_url=sim.rest_url, heartbeat_interval=0.5, stale_after=2.0,
                          reconnect=FAST_RECONNECT) for sim in (sim1, sim2)]
        for feed, sim in zip(feeds, (sim1, sim2)):
            stop_later(feed)
            feed.add_publisher(publisher)
            feed.subscribe_orders()
            feed.start()
            assert feed.wait_connected(10)
            wait_until(lambda: sim.subscribers("sor") > 0)
        first_run = publisher.run_id
        sim1.place_order("AAPL", "BUY", 1, 1.0)
        wait_until(lambda: publisher.stats.published >= 3)
        assert feeds[0].stop() and feeds[0].stop()  # twice: the publisher still serves the other feed
        assert publisher.state == "connected"
        sim2.place_order("MSFT", "BUY", 1, 1.0)
        wait_until(lambda: publisher.stats.published >= 6)
        assert feeds[1].stop() and publisher.state == "stopped"
        feeds[0].start()  # a new run of the feed: a new run of the publisher
        assert feeds[0].wait_connected(10) and publisher.wait_connected(5)
        wait_until(lambda: sim1.subscribers("sor") > 0)
        sim1.place_order("AAPL", "SELL", 1, 1.0)
        r = client(redis_server)
        wait_until(lambda: any(b'"side":"SELL"' in e[1][b"event"] for e in r.xrange(f"{prefix}:ibkr:DU1")),
                   message=str(publisher.stats))
        assert feeds[0].stop()
    second_run = publisher.run_id
    assert second_run != first_run
    runs = [(e[1][b"run"].decode(), int(e[1][b"seq"])) for e in r.xrange(f"{prefix}:ibkr:DU1")]
    assert [seq for run, seq in runs if run == second_run] == list(range(1, 1 + sum(run == second_run for run, _ in runs)))
    assert {e[1][b"run"].decode() for e in r.xrange(f"{prefix}:ibkr:DU2")} == {first_run}


# ============================================================== Redis dies mid-stream
def test_redis_killed_and_restarted_mid_stream_loses_nothing_and_delivers_no_duplicate(redis_server, prefix):
    count = 3000
    publisher = RedisPublisher(redis_server.url, f"{prefix}:{{broker}}:{{account}}", reconnect=QUICK,
                               socket_timeout=1.0, batch_size=100)
    errors: List[Any] = []
    publisher.on_error(errors.append)
    consumer = RedisEvents(redis_server.url, f"{prefix}:sim:ACC1", start="0", block=0.1, reconnect=QUICK)
    got: List[Any] = []
    consumer.on_entry(got.append)
    published_before_kill = 0
    buffered_while_down = 0
    with publisher, consumer:
        assert publisher.wait_connected(5)

        def produce() -> None:
            for n in range(count):
                publisher.publish(order(n))
                if n % 20 == 0:
                    time.sleep(0.002)

        producer = threading.Thread(target=produce)
        producer.start()
        wait_until(lambda: publisher.stats.published >= 500, timeout=10)
        redis_server.kill()
        published_before_kill = publisher.stats.published
        wait_until(lambda: publisher.state in ("disconnected", "connecting"), timeout=5)
        wait_until(lambda: publisher.pending >= 300, timeout=10, message="events were not buffered")
        buffered_while_down = publisher.pending
        redis_server.start()
        producer.join(30)
        assert publisher.flush(15)
        wait_until(lambda: len(got) >= count, timeout=15, message=f"only {len(got)} of {count} arrived")
        time.sleep(0.2)  # a duplicate would arrive now
    assert published_before_kill < count and buffered_while_down >= 300
    assert [e.seq for e in got] == list(range(1, count + 1))  # none lost, none twice, in order
    assert [e.event.order_id for e in got] == [f"O{n}" for n in range(count)]
    assert len({e.run for e in got}) == 1
    assert sum(isinstance(e, BusConnectionFailed) for e in errors) == 1, errors
    assert not [e for e in errors if isinstance(e, BusDropped)]
    stream_len = client(redis_server).xlen(f"{prefix}:sim:ACC1")
    assert stream_len - count == publisher.stats.published - count >= 0  # copies in Redis, if any, were not delivered
    assert consumer.stats.duplicates == stream_len - count


class CuttingProxy:
    """A TCP proxy to Redis that can swallow Redis's replies and then cut the connection:
    what a publisher sees when a connection breaks after Redis applied a batch but before
    the replies arrived."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.swallow = False
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self.pairs: List[Tuple[socket.socket, socket.socket]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client_sock, _ = self.listener.accept()
            except OSError:
                return
            server_sock = socket.create_connection(("127.0.0.1", self.upstream))
            self.pairs.append((client_sock, server_sock))
            threading.Thread(target=self._pump, args=(client_sock, server_sock, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server_sock, client_sock, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, replies: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if not (replies and self.swallow):
                    dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        for client_sock, server_sock in self.pairs:
            for sock in (client_sock, server_sock):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self.pairs = []
        self.swallow = False

    def close(self) -> None:
        self.cut()
        self.listener.close()


def test_a_batch_cut_off_before_its_replies_is_not_appended_twice(redis_server, prefix):
    proxy = CuttingProxy(redis_server.port)
    stream = f"{prefix}:sim:ACC1"
    r = client(redis_server)
    publisher = RedisPublisher(f"redis://127.0.0.1:{proxy.port}/0", f"{prefix}:{{broker}}:{{account}}",
                               reconnect=QUICK, socket_timeout=5.0)
    try:
        with publisher:
            for n in range(100):
                publisher.publish(order(n))
            assert publisher.flush(5)
            proxy.swallow = True  # Redis applies the next batch; its replies never arrive
            for n in range(100, 200):
                publisher.publish(order(n))
            wait_until(lambda: r.xlen(stream) == 200)
            proxy.cut()
            assert publisher.flush(10)
            stats = publisher.stats
    finally:
        proxy.close()
    assert r.xlen(stream) == 200  # the retry found them in Redis and sent none again
    assert stats.duplicates_avoided == 100 and stats.published == 200 and stats.outages == 1
    assert [int(e[1][b"seq"]) for e in r.xrange(stream)] == list(range(1, 201))


def test_a_stalled_redis_never_blocks_the_feed_nor_its_stop(redis_server, prefix, caplog, stop_later):
    caplog.set_level(logging.WARNING, logger="brokerfeeds")
    proxy = CuttingProxy(redis_server.port)
    try:
        with IbkrSimulator(hb_interval=0.2) as sim:
            feed = stop_later(IbkrFeed(url=sim.url, rest_url=sim.rest_url, heartbeat_interval=0.5,
                                       stale_after=2.0, reconnect=FAST_RECONNECT))
            publisher = RedisPublisher(f"redis://127.0.0.1:{proxy.port}/0", f"{prefix}:{{broker}}:{{account}}",
                                       socket_timeout=30.0)
            feed.add_publisher(publisher)
            orders: List[Any] = []
            feed.on_order(orders.append)
            feed.subscribe_orders()
            feed.start()
            assert feed.wait_connected(10) and publisher.wait_connected(5)
            wait_until(lambda: sim.subscribers("sor") > 0)
            proxy.swallow = True  # Redis takes the commands and never answers
            for _ in range(3):
                sim.place_order("AAPL", "BUY", 100, 190.10)
            wait_until(lambda: len(orders) >= 9)  # the feed delivers while the publisher waits on Redis
            wait_until(lambda: publisher.stats.pending >= 9)
            started = time.monotonic()
            assert feed.stop(0.5) is False
            assert time.monotonic() - started < 2.0
    finally:
        proxy.close()  # the publisher thread left behind ends now
    assert publisher.state == "stopped" and publisher.stats.unflushed_at_stop >= 9
    assert "left behind" in caplog.text and "could not be published" in caplog.text


def test_consumers_drop_the_copies_a_publisher_retry_can_leave(redis_server, prefix):
    stream = f"{prefix}:sim:ACC1"
    r = client(redis_server)
    for seq in (1, 2, 3, 2, 3, 4, 4, 5):  # 2, 3 and 4 appended twice, as by a blind retry
        r.xadd(stream, {"run": "run-a", "type": "order", "seq": seq, "event": _to_json(order(seq))})
    r.xadd(stream, {"run": "run-b", "type": "order", "seq": 1, "event": _to_json(order(99))})  # another run
    r.xadd(stream, {"run": "run-b", "type": "order", "seq": 2, "event": "{not json"})  # a malformed entry
    for group in (None, "g"):
        consumer = RedisEvents(redis_server.url, stream, group=group, start="0", block=0.1)
        got: List[Any] = []
        errors: List[Any] = []
        consumer.on_entry(got.append)
        consumer.on_error(errors.append)
        with consumer:
            wait_until(lambda: consumer.stats.received == 10, message=str(consumer.stats))
        assert [(e.run, e.seq) for e in got] == [("run-a", n) for n in range(1, 6)] + [("run-b", 1)]
        assert consumer.stats.duplicates == 3 and consumer.stats.malformed == 1
        assert len(errors) == 1 and "ignored" in str(errors[0])
    assert r.xpending(stream, "g")["pending"] == 0  # duplicates and the bad entry acknowledged too


# ============================================================== consumer groups
CRASHING_CONSUMER = textwrap.dedent("""
    import os, sys
    from brokerfeeds.bus import RedisEvents
    events = RedisEvents(sys.argv[1], sys.argv[2], group="workers", consumer="a", start="0", count=50)
    seen = []

    def handle(entry):
        seen.append(entry.seq)
        print(entry.seq, flush=True)
        if len(seen) == 11:
            os._exit(3)  # killed in the middle of its batch of 50, inside the callback

    events.on_entry(handle)
    events.run_forever()
""")


def test_a_consumer_killed_mid_batch_has_its_pending_entries_claimed_by_another(redis_server, prefix):
    stream = f"{prefix}:sim:ACC1"
    with RedisPublisher(redis_server.url, f"{prefix}:{{broker}}:{{account}}") as publisher:
        for n in range(60):
            publisher.publish(order(n))
        assert publisher.flush(5)
    crashed = subprocess.run([sys.executable, "-c", CRASHING_CONSUMER, redis_server.url, stream], cwd=ROOT,
                             capture_output=True, text=True, timeout=30,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert crashed.returncode == 3, crashed.stderr
    assert [int(x) for x in crashed.stdout.split()] == list(range(1, 12))
    r = client(redis_server)
    assert r.xpending(stream, "workers")["pending"] == 40  # 1..10 acknowledged; 11..50 left pending

    other = RedisEvents(redis_server.url, stream, group="workers", consumer="b", claim_idle=0.2, block=0.1)
    got: List[Any] = []
    other.on_entry(got.append)
    with other:
        wait_until(lambda: len(got) >= 50, timeout=10, message=f"got {len(got)} of 50")
        time.sleep(0.3)
    assert sorted(e.seq for e in got) == list(range(11, 61))
    assert {e.seq for e in got if e.redelivered} == set(range(11, 51))  # claimed from the dead consumer
    assert other.stats.claimed == 40
    assert r.xpending(stream, "workers")["pending"] == 0  # and acknowledged


def test_two_groups_each_get_every_event_and_a_group_shares_them(redis_server, prefix):
    stream = f"{prefix}:sim:ACC1"
    readers = {name: RedisEvents(redis_server.url, stream, group=group, consumer=name, start="0", block=0.1)
               for name, group in (("p1", "printers"), ("r1", "risk"), ("r2", "risk"))}
    got: Dict[str, List[int]] = {name: [] for name in readers}
    for name, reader in readers.items():
        reader.on_entry(lambda entry, name=name: got[name].append(entry.seq))
        reader.start()
    try:
        with RedisPublisher(redis_server.url, f"{prefix}:{{broker}}:{{account}}", batch_size=7) as publisher:
            for n in range(200):
                publisher.publish(order(n))
            assert publisher.flush(5)
        wait_until(lambda: len(got["p1"]) == 200 and len(got["r1"]) + len(got["r2"]) == 200, timeout=10)
    finally:
        for reader in readers.values():
            reader.stop()
    assert got["p1"] == list(range(1, 201))
    assert sorted(got["r1"] + got["r2"]) == list(range(1, 201)) and not set(got["r1"]) & set(got["r2"])


def test_publishing_survives_a_flushed_script_cache_and_works_where_scripts_are_refused(redis_server, prefix):
    r = client(redis_server)
    user = f"u{uuid.uuid4().hex[:8]}"
    r.acl_setuser(user, enabled=True, passwords=["+pw-1234"], keys="*", commands=["+@all", "-@scripting"])
    urls = {"scripts": redis_server.url,
            "no scripts": f"redis://{user}:pw-1234@127.0.0.1:{redis_server.port}/0"}
    def scripts_run() -> int:
        return int(r.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))

    for name, url in urls.items():
        before = scripts_run()
        with RedisPublisher(url, f"{prefix}:{name}:{{broker}}:{{account}}", batch_size=10) as publisher:
            for n in range(50):
                publisher.publish(order(n))
            assert publisher.flush(5), name
            r.script_flush()  # e.g. a restart: the next batch meets NOSCRIPT
            for n in range(50, 100):
                publisher.publish(order(n))
            assert publisher.flush(5), name
        seqs = [int(e[1][b"seq"]) for e in r.xrange(f"{prefix}:{name}:sim:ACC1")]
        assert seqs == list(range(1, 101)), name
        assert publisher.stats.outages == 0 and publisher.stats.rejected == 0
        assert (scripts_run() > before + 5) is (name == "scripts")  # one script call per batch, or none


def test_a_group_destroyed_under_its_consumer_is_created_again_without_repeating_anything(redis_server, prefix):
    stream = f"{prefix}:sim:ACC1"
    r = client(redis_server)
    consumer = RedisEvents(redis_server.url, stream, group="g", start="0", block=0.1)
    got: List[int] = []
    consumer.on_entry(lambda entry: got.append(entry.seq))
    with RedisPublisher(redis_server.url, f"{prefix}:{{broker}}:{{account}}") as publisher, consumer:
        for n in range(20):
            publisher.publish(order(n))
        wait_until(lambda: len(got) == 20)
        r.xgroup_destroy(stream, "g")  # its consumers' next read meets NOGROUP
        for n in range(20, 40):
            publisher.publish(order(n))
        wait_until(lambda: len(got) == 40 and consumer.stats.duplicates == 20, message=str(consumer.stats))
        time.sleep(0.2)
    assert got == list(range(1, 41))  # the group, made again from the first entry, repeated nothing


# ============================================================== bounds and trimming
def test_maxlen_trims_the_stream(redis_server, prefix):
    r = client(redis_server)
    with RedisPublisher(redis_server.url, f"{prefix}:exact:{{broker}}:{{account}}", maxlen=50,
                        approximate=False) as exact, \
            RedisPublisher(redis_server.url, f"{prefix}:about:{{broker}}:{{account}}", maxlen=50) as about:
        for n in range(300):
            exact.publish(order(n))
            about.publish(order(n))
        assert exact.flush(5) and about.flush(5)
    assert r.xlen(f"{prefix}:exact:sim:ACC1") == 50
    first = r.xrange(f"{prefix}:exact:sim:ACC1", count=1)[0][1]
    assert first[b"seq"] == b"251"  # the newest 50 are kept
    assert 50 <= r.xlen(f"{prefix}:about:sim:ACC1") < 300  # "~": whole nodes, cheaply



def test_linger_batches_events_that_keep_coming_and_a_lone_event_goes_alone(redis_server, prefix):
    """While events keep coming, ``linger`` lets the next ones join a batch (fewer round
    trips); an event after a quiet spell does not wait for company. Order is kept."""
    r = client(redis_server)
    with RedisPublisher(redis_server.url, f"{prefix}:{{broker}}:{{account}}", linger=0.05) as publisher:
        assert publisher.wait_connected(5)
        publisher.publish(order(0))
        assert publisher.flush(5)
        assert publisher.stats.batches == 1  # the lone first event: its own batch
        time.sleep(0.05)  # a quiet spell (> 10 ms): the next event goes at once, alone
        publisher.publish(order(1))
        assert publisher.flush(5) and publisher.stats.batches == 2
        for n in range(2, 42):  # then a steady stream, one event every 2 ms
            publisher.publish(order(n))
            time.sleep(0.002)
        assert publisher.flush(5)
        stats = publisher.stats
    assert stats.published == 42
    # without lingering, 40 events 2 ms apart take ~40 round trips; with 50 ms, a handful
    assert stats.batches - 2 <= 10, stats
    seqs = [int(fields[b"seq"]) for _, fields in r.xrange(f"{prefix}:sim:ACC1")]
    assert seqs == list(range(1, 43))


def test_linger_must_be_a_sane_number_of_seconds():
    for bad in (-0.001, 2, float("inf"), float("nan"), True, "1ms"):
        with pytest.raises(ValueError, match="linger"):
            RedisPublisher("redis://localhost:6379/0", linger=bad)
    import io

    from brokerfeeds.cli import parser
    from brokerfeeds.watch import run as watch

    err = io.StringIO()
    args = parser().parse_args(["watch", "--broker", "ibkr", "--publish", "redis://localhost:6379/0",
                                "--publish-linger", "5"])
    assert watch(args, env={}, err=err) == 2
    assert "linger must be a number of seconds from 0 to 1" in err.getvalue()

def test_a_full_buffer_drops_quotes_first_then_the_oldest_account_events_and_says_how_many(prefix, tmp_path):
    later = RedisServer(directory=str(tmp_path))  # not running yet: the publisher starts while it is down
    publisher = RedisPublisher(later.url, f"{prefix}:{{broker}}:{{account}}", max_buffer=100, quotes=True,
                               reconnect=QUICK)
    errors: List[Any] = []
    publisher.on_error(errors.append)
    try:
        publisher.start()
        for n in range(30):  # 30 ticks of 10 instruments: coalesced to 10 waiting quotes
            publisher.publish(ev.Quote(broker="sim", instrument=f"I{n % 10}", last=Decimal(n)))
        for chunk in range(8):  # 160 orders, in chunks the publisher thread takes as they come
            for n in range(chunk * 20, chunk * 20 + 20):
                publisher.publish(order(n))
            time.sleep(0.08)
        wait_until(lambda: publisher.stats.dropped == 60, timeout=5, message=str(publisher.stats))
        stats = publisher.stats
        assert stats.quotes_dropped == 10 and stats.quotes_coalesced == 20 and stats.pending == 100
        assert not [e for e in errors if isinstance(e, BusDropped)]  # said when Redis is back
        later.start()
        assert publisher.flush(10)
    finally:
        publisher.stop()
        later.close()
    dropped = [e for e in errors if isinstance(e, BusDropped)]
    assert len(dropped) == 1 and dropped[0].dropped == 60 and "60 account event(s)" in str(dropped[0])
    assert sum(isinstance(e, BusConnectionFailed) for e in errors) == 1


# ============================================================== errors
def test_bad_urls_are_refused_at_once_without_showing_the_password():
    for bad, words in (("http://user:hunter2-secret@localhost:6379/0", "scheme"),
                       ("redis://:hunter2-secret@localhost:port/0", "port"),
                       ("redis://:hunter2-secret@/0", "no host"),
                       ("redis://:hunter2-secret@localhost:6379/zero", "database number")):
        for make in (lambda: RedisPublisher(bad), lambda: RedisEvents(bad, "s")):
            with pytest.raises(ValueError, match=words) as info:
                make()
            assert "hunter2-secret" not in str(info.value) and "***" in str(info.value), str(info.value)
    assert tail_main(["http://:hunter2-secret@x/0"]) == 2


def test_a_refused_password_is_a_clear_error_without_the_password(redis_server, caplog, capsys, stop_later):
    caplog.set_level(logging.DEBUG, logger="brokerfeeds")
    user = f"u{uuid.uuid4().hex[:8]}"
    client(redis_server).acl_setuser(user, enabled=True, passwords=["+the-right-one-1"], keys="*",
                                     commands=["+@all"])
    url = f"redis://{user}:wrong-pass-4242@127.0.0.1:{redis_server.port}/0"
    consumer = RedisEvents(url, "anything")
    with pytest.raises(BusAuthenticationError, match=f"Redis at redis://{user}:\\*\\*\\*@127.0.0.1") as info:
        consumer.run_forever()
    assert "refused the credentials" in str(info.value) and "wrong-pass-4242" not in str(info.value)

    publisher = RedisPublisher(url, reconnect=QUICK)
    errors: List[Any] = []
    publisher.on_error(errors.append)
    with publisher:
        with pytest.raises(BusAuthenticationError):
            publisher.wait_connected(5)
    assert len([e for e in errors if isinstance(e, BusAuthenticationError)]) == 1

    assert tail_main([url, "--stream", "anything"]) == 2
    assert "refused the credentials" in capsys.readouterr().err
    assert "wrong-pass-4242" not in caplog.text and all("wrong-pass-4242" not in str(e) for e in errors)
    good = RedisEvents(f"redis://{user}:the-right-one-1@127.0.0.1:{redis_server.port}/0", "anything", block=0.1)
    stop_later(good).start()
    wait_until(lambda: good.state == "connected")
    assert good.stop()


# ============================================================== the JSON of every kind through Redis
def every_kind() -> List[ev.Event]:
    d = Decimal
    raw = {"src": "test", "nested": [1, "two", {"three": 3.5}], "unicode": "Zürich ₹"}
    return [
        ev.Order(broker="sim", account="ACC1", order_id="O1", client_order_id="C1", symbol="AAPL", side=Side.SELL,
                 quantity=d("100"), filled_quantity=d("40"), remaining_quantity=d("60"), price=d("190.10"),
                 avg_price=d("190.0925"), order_type="LMT", status=OrderStatus.PARTIALLY_FILLED,
                 broker_status="PartiallyFilled", time=T0, exchange="NASDAQ", replayed=True, raw=raw),
        ev.Trade(broker="sim", account="ACC1", trade_id="T1", order_id="O1", client_order_id="C1", symbol="AAPL",
                 side=Side.BUY, quantity=d("40"), price=d("190.10"), time=T0, exchange="ISLAND", raw=raw),
        ev.Position(broker="sim", account="ACC1", symbol="AAPL", quantity=d("-40"), avg_price=d("190.10"),
                    realized_pnl=d("0"), unrealized_pnl=d("-1.5E+2"), exchange="NASDAQ", instrument="265598",
                    raw=raw),
        ev.PnL(broker="sim", account="ACC1", daily_pnl=d("4.00"), unrealized_pnl=d("4"), realized_pnl=d("-0.00"),
               net_liquidation=d("100004"), market_value=d("7604"), margin_value=d("1900"),
               excess_liquidity=d("98000"), raw=raw),
        ev.Holding(broker="sim", account="ACC1", symbol="NHPC", quantity=d("13"), avg_price=d("91.05"),
                   exchange="NSE", instrument="NSE_EQ|INE848E01016", raw=raw),
        ev.Balance(broker="sim", account="ACC1", buying_power=d("400000"), cash=d("100000"),
                   net_liquidation=d("100004"), currency="USD", values={"BuyingPower": "400000", "x": [1]},
                   replayed=True, raw=raw),
        ev.Quote(broker="sim", instrument="265598", last=d("190.20"), bid=d("190.15"), ask=d("190.25"),
                 bid_size=d("300"), ask_size=d("100"), volume=d("1.2E+3"), time=T0, fields={"31": "190.20"},
                 raw=raw),
        ev.Notice(broker="sim", kind="bulletin", text="Exchange closed early — ok", account="ACC1", raw=raw),
        ev.GttOrder(broker="sim", account="ACC1", gtt_order_id="G1", symbol="SBIN-EQ", side=Side.BUY,
                    quantity=d("1"), gtt_type="MULTIPLE", status="ACTIVE",
                    rules=[{"strategy": "ENTRY", "trigger_price": 560.0}], time=T0, raw=raw),
        ev.LocateInventory(broker="sim", account="ACC1", symbol="TSLA", quantity=d("500"),
                           values={"available": 500, "reserved": 10}, replayed=True, raw=raw),
        ev.ReplayComplete(broker="sim", account="ACC1", timed_out=True, raw=raw),
    ]


def test_the_json_of_every_event_kind_round_trips_through_redis(redis_server, prefix):
    originals = every_kind()
    with RedisPublisher(redis_server.url, f"{prefix}:{{broker}}:{{account}}", quotes=True,
                        quote_stream=f"{prefix}:{{broker}}:quotes") as publisher:
        for event in originals:
            publisher.publish(event)
        assert publisher.flush(5)
    consumer = RedisEvents(redis_server.url, f"{prefix}:*", start="0", block=0.1)
    got: List[ev.Event] = []
    consumer.on_event(got.append)
    kinds: List[str] = []
    for kind in ("order", "trade", "position", "pnl", "holding", "balance", "quote", "notice", "gtt_order",
                 "locate", "replay_complete"):
        consumer.on(kind, lambda event, kind=kind: kinds.append(kind))
    with consumer:
        wait_until(lambda: len(got) == len(originals), timeout=5)
    by_type = {type(e): e for e in got}
    assert set(by_type) == {type(e) for e in originals} and len(kinds) == len(originals)
    for original in originals:
        back = by_type[type(original)]
        assert back == original
        assert as_json(back) == as_json(original)  # raw and the free-form fields too
    entries = client(redis_server).xrange(f"{prefix}:sim:ACC1")
    assert [e[1][b"type"] for e in entries][:3] == [b"order", b"trade", b"position"]


def test_tail_prints_readable_lines_and_acknowledges_what_it_printed(redis_server, prefix, capsys):
    stream = f"{prefix}:sim:ACC1"
    with RedisPublisher(redis_server.url, f"{prefix}:{{broker}}:{{account}}") as publisher:
        for n in range(5):
            publisher.publish(order(n, status=OrderStatus.FILLED if n == 2 else OrderStatus.OPEN))
        assert publisher.flush(5)
    assert tail_main([redis_server.url, "--stream", stream, "--group", "cli", "--start", "0", "--count", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(line.startswith(f"{stream} #{n} ") for n, line in zip((1, 2, 3), lines))
    assert "ORDER" in lines[2] and "FILLED" in lines[2] and "O2" in lines[2]
    pending = client(redis_server).xinfo_groups(stream)[0]
    assert pending["pending"] == 0 and pending["last-delivered-id"]  # the three were acknowledged


@pytest.mark.timeout(60)
def test_watch_publish_and_tail_as_two_processes(redis_server, prefix):
    """``brokerfeeds watch --publish URL --quiet`` publishes an IBKR simulator's orders;
    ``brokerfeeds tail URL --json`` in another process prints them, in order."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    template = f"{prefix}:{{broker}}:{{account}}"
    with IbkrSimulator() as sim:
        watch = subprocess.Popen(
            [sys.executable, "-m", "brokerfeeds", "watch", "--broker", "ibkr", "--url", sim.url,
             "--rest-url", sim.rest_url, "--publish", redis_server.url, "--publish-stream", template,
             "--publish-linger", "0.001", "--quiet", "--duration", "30"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_until(lambda: len(sim.clients) > 0, timeout=20, message="watch never connected")
            order_id = sim.place_order("AAPL", "BUY", 10, 190.5)
            sim.fill(order_id, 10, 190.5)
            stream = f"{prefix}:ibkr:{sim.account}"

            def filled_published() -> bool:
                return any(b'"FILLED"' in b"".join(v for v in fields.values() if isinstance(v, bytes))
                           for _, fields in client(redis_server).xrange(stream))

            wait_until(filled_published, timeout=20, message="watch --publish never published the fill")
            published = client(redis_server).xlen(stream)
        finally:
            watch.terminate()
            out, err = watch.communicate(timeout=20)
    assert watch.returncode == 0, err
    assert out == ""  # --quiet: nothing printed; where it publishes is said on stderr
    assert "publishing account events" in err
    tail = subprocess.run([sys.executable, "-m", "brokerfeeds", "tail", redis_server.url, "--stream", stream,
                           "--start", "0", "--json", "--count", str(published)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert tail.returncode == 0, tail.stderr
    entries = [json.loads(line) for line in tail.stdout.splitlines()]
    orders = [ev.from_dict(e["event"]) for e in entries if e["event"]["type"] == "order"]
    assert orders and all(o.order_id == str(order_id) for o in orders)
    assert orders[-1].status is OrderStatus.FILLED
    assert [e["seq"] for e in entries] == sorted(e["seq"] for e in entries)


def test_the_command_line_builds_without_redis_py_and_says_how_to_get_it():
    code = textwrap.dedent("""
        import argparse, sys
        sys.modules["redis"] = None  # the "redis" extra is not installed
        from brokerfeeds.bus import cli, BusError
        parser = cli.add_publish_arguments(cli.add_tail_arguments(argparse.ArgumentParser()))
        assert parser.parse_args(["redis://h/0"]).publish is None
        sys.exit(cli.tail_main(["redis://localhost:6379/0"]))
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2, result.stderr
    assert "pip install 'brokerfeeds[redis]'" in result.stderr


# ============================================================== the example
@pytest.mark.timeout(60)
def test_the_fanout_example_runs_one_publisher_and_two_consumers(redis_server):
    redis_server.start()
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "bus_fanout.py"), "--redis", redis_server.url,
                             "--seconds", "2"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "[printer] " in out and "FILLED" in out, out
    assert "[pnl] " in out and "realized" in out, out
    assert "[printer] done" in out and "[pnl] done" in out, out
