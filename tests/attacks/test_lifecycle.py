"""Hardening (issue 10): what broke under attack in the feed's lifecycle, and stays fixed.

Every test runs over real loopback sockets against a simulator and is bounded in time:

1. feed threads never die of user code (SystemExit, KeyboardInterrupt, an exception
   whose repr raises, an on_error that raises); a thread that dies anyway stops the feed
   with an error instead of leaving a zombie that says "connected";
2. a slow consumer: the backlog is visible (BacklogWarning) and pending quotes stay
   bounded however many instruments stream;
3. stop(timeout) keeps its time, drops (and counts) what is left, starts no callback
   after it returned, and never blocks a restart;
4. a feed left running is stopped at interpreter exit, saying what it dropped;
5. secrets are masked in every error text and in notice text.
"""

from __future__ import annotations

import gc
import json
import logging
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

from brokerfeeds import lifecycle
from brokerfeeds import ClearStreetFeed, FirstockFeed, IbkrFeed
from brokerfeeds.dispatch import Dispatcher
from brokerfeeds.errors import AuthenticationError, BacklogWarning, BrokerFeedsError, CallbackError
from brokerfeeds.events import Notice, Order, Quote
from brokerfeeds.scheduler import RestScheduler
from brokerfeeds.testing import ClearStreetSimulator, FirstockSimulator, IbkrSimulator
from brokerfeeds.testing._server import query_of
from helpers import FAST_RECONNECT, feed_threads, wait_until

pytest_plugins = ("ibkr_fixtures",)  # the `sim` and `make_feed` fixtures
pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parents[2]


def connected(feed: IbkrFeed, sim: IbkrSimulator, *topics: str) -> None:
    assert feed.wait_connected(5)
    wait_until(lambda: all(sim.subscribers(t) for t in topics))


class Hostile(Exception):
    """An exception that cannot even be printed."""

    def __repr__(self) -> str:
        raise RuntimeError("repr refused")

    def __str__(self) -> str:
        raise RuntimeError("str refused")


class HostileBase(BaseException):
    """Not even an Exception, and unprintable too."""

    def __repr__(self) -> str:
        raise RuntimeError("repr refused")

    def __str__(self) -> str:
        raise RuntimeError("str refused")


# ============================================================================ 1. threads that die silently
@pytest.mark.parametrize("dispatch", ["thread", "inline"])
@pytest.mark.parametrize("raised", [SystemExit, KeyboardInterrupt, Hostile, HostileBase])
def test_a_callback_raising_anything_never_kills_the_thread_that_runs_it(make_feed, sim, dispatch, raised):
    feed = make_feed(dispatch=dispatch)
    feed.subscribe_orders()
    errors: List[BrokerFeedsError] = []
    feed.on_error(errors.append)
    seen: List[str] = []

    @feed.on_order
    def hostile(order: Order) -> None:
        seen.append(order.symbol or "")
        if order.symbol == "BOOM":
            raise raised()

    feed.start()
    connected(feed, sim, "sor")
    sim.place_order("BOOM", "BUY", 1, 1.0)
    wait_until(lambda: any(isinstance(e, CallbackError) for e in errors))
    sim.place_order("AFTER", "BUY", 1, 1.0)  # the thread that ran the callback still delivers
    wait_until(lambda: "AFTER" in seen)
    error = next(e for e in errors if isinstance(e, CallbackError))
    assert isinstance(error.__cause__, raised) and "hostile" in str(error)
    if raised in (Hostile, HostileBase):
        assert "repr() failed" in str(error)
    assert feed.state == "connected" and feed.stats.reconnects == 0 and feed.stats.callback_errors >= 1
    assert feed.stop() is True


@pytest.mark.parametrize("raised", [SystemExit, KeyboardInterrupt, Hostile])
def test_an_on_error_callback_that_raises_is_only_logged(make_feed, sim, raised, caplog):
    caplog.set_level(logging.ERROR, logger="brokerfeeds")
    feed = make_feed()
    feed.subscribe_orders()
    seen: List[str] = []

    @feed.on_order
    def broken(order: Order) -> None:
        seen.append(order.symbol or "")
        if order.symbol == "BOOM":
            raise ValueError("user bug")

    @feed.on_error
    def worse(error: BrokerFeedsError) -> None:
        raise raised()

    feed.start()
    connected(feed, sim, "sor")
    sim.place_order("BOOM", "BUY", 1, 1.0)
    wait_until(lambda: "on_error callback" in caplog.text)
    sim.place_order("AFTER", "BUY", 1, 1.0)
    wait_until(lambda: "AFTER" in seen)
    assert feed.state == "connected"
    feed.stop()


def test_queue_mode_lets_keyboard_interrupt_reach_the_caller_of_process_events(make_feed, sim):
    """Decided: in "queue" mode callbacks run on the application's own thread, inside
    process_events(); a KeyboardInterrupt / SystemExit there is the application's and
    propagates. The event counts as delivered; what still waits is delivered next call."""
    feed = make_feed(dispatch="queue")
    feed.subscribe_orders()
    seen: List[str] = []

    @feed.on_order
    def interrupted(order: Order) -> None:
        seen.append(order.broker_status or "")
        if len(seen) == 1:
            raise KeyboardInterrupt

    feed.start()
    connected(feed, sim, "sor")
    sim.place_order("AAPL", "BUY", 1, 1.0)
    wait_until(lambda: feed.stats.pending_events >= 3)
    with pytest.raises(KeyboardInterrupt):
        feed.process_events()
    assert len(seen) == 1 and feed.stats.pending_events >= 2
    assert feed.process_events() >= 2 and len(seen) >= 3
    assert feed.stats.callback_errors == 0 and feed.state == "connected"
    feed.stop()


def _run_forever_in_a_thread(feed: Any) -> Tuple[threading.Thread, List[BaseException]]:
    raised: List[BaseException] = []

    def run() -> None:
        try:
            feed.run_forever()
        except BaseException as exc:  # noqa: BLE001 - what run_forever raised is the result
            raised.append(exc)

    thread = threading.Thread(target=run, name="test-run-forever")
    thread.start()
    return thread, raised


def test_a_dispatch_thread_that_dies_anyway_stops_the_feed_with_an_error(make_feed, sim, monkeypatch):
    original = Dispatcher._deliver

    def buggy(self: Dispatcher, kind: str, item: Any) -> None:
        if kind == "order":
            raise RuntimeError("a bug in the dispatcher")
        original(self, kind, item)

    monkeypatch.setattr(Dispatcher, "_deliver", buggy)
    feed = make_feed()
    feed.subscribe_orders()
    errors: List[BrokerFeedsError] = []
    feed.on_error(errors.append)
    feed.on_order(lambda order: None)
    thread, raised = _run_forever_in_a_thread(feed)
    connected(feed, sim, "sor")
    sim.place_order("AAPL", "BUY", 1, 1.0)
    thread.join(10)
    assert not thread.is_alive() and feed.state == "stopped"
    assert len(raised) == 1 and raised[0] is feed.error
    assert "dispatch thread crashed" in str(feed.error) and "a bug in the dispatcher" in str(feed.error)
    assert errors and errors[0] is feed.error  # on_error heard it, although its thread was dying


def test_a_rest_thread_that_dies_anyway_stops_the_feed_with_an_error(make_feed, sim, monkeypatch):
    def buggy(self: RestScheduler, name: str, job: Any) -> None:
        raise RuntimeError("a bug in the scheduler")

    monkeypatch.setattr(RestScheduler, "_call", buggy)
    feed = make_feed()
    feed.subscribe_orders()  # a connect submits the reconciliation job
    errors: List[BrokerFeedsError] = []
    feed.on_error(errors.append)
    thread, raised = _run_forever_in_a_thread(feed)
    thread.join(10)
    assert not thread.is_alive() and feed.state == "stopped"
    assert len(raised) == 1 and "rest thread crashed" in str(raised[0])
    wait_until(lambda: any("rest thread crashed" in str(e) for e in errors))


def test_an_io_thread_crash_with_an_unprintable_exception_still_stops_the_feed(make_feed, sim, monkeypatch):
    def hostile_target(self: IbkrFeed) -> Any:
        raise HostileBase()

    monkeypatch.setattr(IbkrFeed, "_connect_target", hostile_target)
    feed = make_feed()
    errors: List[BrokerFeedsError] = []
    feed.on_error(errors.append)
    thread, raised = _run_forever_in_a_thread(feed)
    thread.join(10)
    assert not thread.is_alive() and feed.state == "stopped"
    assert len(raised) == 1 and "io thread crashed" in str(raised[0]) and "repr() failed" in str(raised[0])
    wait_until(lambda: bool(errors))


# ============================================================================ 2. slow consumers
def test_a_backlog_past_max_pending_events_is_reported_once_and_again_after_it_drained(make_feed, sim, caplog):
    caplog.set_level(logging.WARNING, logger="brokerfeeds")
    feed = make_feed(max_pending_events=20)
    feed.subscribe_orders()
    gate = threading.Event()
    delivered: List[Any] = []

    @feed.on_order
    def slow(order: Order) -> None:
        gate.wait(10)
        delivered.append(order)

    feed.on_error(delivered.append)
    feed.start()
    connected(feed, sim, "sor")

    def episode(number: int) -> None:
        gate.clear()
        start = len(delivered)
        ids = [sim.place_order(f"S{number}", "BUY", 1, 1.0) for _ in range(12)]  # 3 updates each
        wait_until(lambda: feed.stats.pending_events >= 30)
        sim.place_order(f"T{number}", "BUY", 1, 1.0)  # a frame after the backlog grew: noticed
        wait_until(lambda: caplog.text.count("more than max_pending_events=20") == number)
        gate.set()
        wait_until(lambda: {o.order_id for o in delivered[start:] if isinstance(o, Order)} >= set(ids))
        warnings = [e for e in delivered[start:] if isinstance(e, BacklogWarning)]
        assert len(warnings) == 1 and warnings[0].limit == 20 and warnings[0].pending > 20
        # Delivered ahead of the backlog: right after the callback that was running.
        assert delivered[start:].index(warnings[0]) <= 1

    episode(1)
    wait_until(lambda: feed.stats.pending_events == 0)
    sim.place_order("DRAINED", "BUY", 1, 1.0)  # under half: the warning is armed again
    wait_until(lambda: feed.stats.pending_events == 0 and any(
        isinstance(o, Order) and o.symbol == "DRAINED" for o in delivered))
    episode(2)
    assert caplog.text.count("more than max_pending_events=20") == 2
    assert feed.stats.dropped_at_stop == 0
    feed.stop()


def test_pending_quotes_stay_bounded_however_many_instruments_stream(attack_long):
    instruments = 25_000 if attack_long else 2_000
    bound = 100
    with FirstockSimulator() as sim:
        feed = FirstockFeed(sim.user_id, sim.jkey, url=sim.url, rest_url=None, reconnect=FAST_RECONNECT,
                            max_pending_quotes=bound)
        gate = threading.Event()
        quotes: List[Quote] = []

        @feed.on_quote
        def stuck(quote: Quote) -> None:
            gate.wait(20)
            quotes.append(quote)

        names = [f"NSE:{10_000 + i}" for i in range(instruments)]
        with feed:
            assert feed.wait_connected(5)
            for start in range(0, instruments, 5_000):  # snapshots come back in one frame per call
                feed.subscribe_quotes(*names[start:start + 5_000])
            wait_until(lambda: feed.stats.events >= instruments, timeout=25)
            sim.ticks({name: {"i_last_traded_price": 123_400} for name in names[:50]})
            wait_until(lambda: feed.stats.events >= instruments + 50, timeout=10)
            stats = feed.stats
            assert stats.pending_events <= bound
            assert stats.quotes_dropped >= instruments - bound - 1
            gate.set()
            wait_until(lambda: feed.stats.pending_events == 0)
            assert len(quotes) <= bound + 1  # the one being delivered when the backlog filled, then the budget
            # One per instrument (each slot held its newest snapshot), apart from the quote
            # that was being delivered when the backlog filled up.
            assert len({q.instrument for q in quotes[1:]}) == len(quotes) - 1


# ============================================================================ 3. stop(timeout)
def _gated_feed(make_feed, sim, count: int) -> Tuple[Any, threading.Event, List[Tuple[float, str, str]]]:
    """A connected feed whose order callback blocks on a gate, with ``count`` orders placed
    (3 events each) behind the first, blocked, one. Each callback start is recorded as
    ``(time, symbol, thread name + id)``."""
    feed = make_feed()
    feed.subscribe_orders()
    gate = threading.Event()
    started: List[Tuple[float, str, str]] = []
    active = [0]

    @feed.on_order
    def blocked(order: Order) -> None:
        active[0] += 1
        assert active[0] == 1, "two callbacks ran at once"
        thread = threading.current_thread()
        started.append((time.monotonic(), order.symbol or "", f"{thread.name}/{thread.ident}"))
        gate.wait(10)
        active[0] -= 1

    feed.start()
    connected(feed, sim, "sor")
    for _ in range(count):
        sim.place_order("OLD", "BUY", 1, 1.0)
    wait_until(lambda: len(started) == 1 and feed.stats.pending_events == 3 * count - 1)
    return feed, gate, started


def test_stop_keeps_its_time_drops_the_rest_and_no_callback_starts_after_it(make_feed, sim, caplog):
    caplog.set_level(logging.WARNING, logger="brokerfeeds")
    feed, gate, started = _gated_feed(make_feed, sim, 4)
    waiting = feed.stats.pending_events
    began = time.monotonic()
    assert feed.stop(timeout=0.3) is False  # a callback is still running
    returned = time.monotonic()
    assert returned - began < 1.0 and feed.state == "stopped"
    assert feed.stats.dropped_at_stop == waiting and feed.stats.pending_events == 0
    assert caplog.text.count(f"{waiting} undelivered event(s) dropped at stop") == 1
    assert "brokerfeeds-ibkr-dispatch did not end" in caplog.text
    gate.set()
    wait_until(lambda: not feed_threads())
    assert len(started) == 1 and all(at < returned for at, _, _ in started)


def test_stop_delivers_what_is_queued_while_time_remains(make_feed, sim):
    feed = make_feed()
    feed.subscribe_orders()
    seen: List[Order] = []

    @feed.on_order
    def slowish(order: Order) -> None:
        time.sleep(0.02)
        seen.append(order)

    feed.start()
    connected(feed, sim, "sor")
    for _ in range(5):
        sim.place_order("Q", "BUY", 1, 1.0)
    wait_until(lambda: feed.stats.events >= 15)
    assert feed.stop(timeout=5) is True
    assert len(seen) == 15 and feed.stats.dropped_at_stop == 0


def test_a_restart_is_never_blocked_by_the_previous_runs_backlog(make_feed, sim):
    feed, gate, started = _gated_feed(make_feed, sim, 4)
    old_thread = started[0][2]
    assert feed.stop(timeout=0.2) is False
    feed.start()  # at once: the old dispatch thread is still inside a callback
    assert feed.wait_connected(5)
    wait_until(lambda: bool(sim.subscribers("sor")))
    sim.place_order("NEW", "BUY", 1, 1.0)
    wait_until(lambda: feed.stats.pending_events >= 3)
    assert len(started) == 1  # callbacks never overlap: the new run waits for the old callback
    gate.set()
    wait_until(lambda: sum(1 for _, symbol, _ in started if symbol == "NEW") >= 3)
    # The old run delivered nothing after its stop (its backlog was dropped); the new run's
    # own reconciliation may show the OLD orders' latest state, on the new thread.
    assert [thread for _, _, thread in started].count(old_thread) == 1
    assert feed.stats.dropped_at_stop >= 11
    assert feed.stop() is True


def test_a_rest_call_in_flight_is_cut_by_stop_and_a_restart_works(make_feed, sim, caplog):
    """``requests`` cannot cancel a call: stop() shuts its socket down, so a REST thread
    blocked on a server that does not answer ends at once (not after ``rest_timeout``),
    nothing is reported for it, and the next run's calls work on new connections."""
    caplog.set_level(logging.INFO, logger="brokerfeeds")
    release = threading.Event()
    calls: List[float] = []
    accounts = sim._routes[("GET", "/v1/api/iserver/accounts")]

    def slow_accounts(request: Any) -> Any:
        calls.append(time.monotonic())
        if len(calls) == 1:
            release.wait(20)  # the reconciliation of the first run hangs
        return accounts(request)

    sim.route("GET", "/v1/api/iserver/accounts", slow_accounts)
    feed = make_feed(rest_timeout=30)
    feed.subscribe_orders()
    errors: List[BrokerFeedsError] = []
    feed.on_error(errors.append)
    feed.start()
    assert feed.wait_connected(5)
    wait_until(lambda: bool(calls))
    assert feed.stop(timeout=5) is True  # the REST thread ended: its call was cut
    assert not [t for t in feed_threads() if t.name.endswith("-rest")]
    assert "did not end" not in caplog.text and errors == []
    feed.start()
    assert feed.wait_connected(5)
    wait_until(lambda: len(calls) >= 2)  # the new run reconciles, on a new connection
    release.set()
    assert feed.state == "connected" and errors == []
    assert feed.stop() is True


def test_a_slow_rest_call_neither_holds_stop_past_its_timeout_nor_blocks_a_restart(make_feed, sim, caplog):
    """Where the call cannot be cut (it is not waiting on the socket: here the reply is
    being handled), stop() still keeps its timeout and a restart is not blocked."""
    caplog.set_level(logging.INFO, logger="brokerfeeds")
    release = threading.Event()
    calls: List[float] = []
    feed = make_feed(rest_timeout=4.5)
    original = feed._reconcile

    def slow_reconcile(reconnect: bool) -> None:
        calls.append(time.monotonic())
        if len(calls) == 1:
            release.wait(4)  # the first run's reconciliation hangs outside any socket call
        original(reconnect)

    feed._reconcile = slow_reconcile  # type: ignore[method-assign]
    feed.subscribe_orders()
    errors: List[BrokerFeedsError] = []
    feed.on_error(errors.append)
    feed.start()
    assert feed.wait_connected(5)
    wait_until(lambda: bool(calls))
    began = time.monotonic()
    assert feed.stop(timeout=0.3) is False
    assert time.monotonic() - began < 1.0
    assert "brokerfeeds-ibkr-rest did not end within stop(0.3)" in caplog.text
    feed.start()  # not refused: the stuck REST thread belongs to the old run
    assert feed.wait_connected(5)
    wait_until(lambda: len(calls) >= 2)  # the new run reconciles on its own thread
    release.set()
    wait_until(lambda: len([t for t in feed_threads() if t.name.endswith("-rest")]) == 1)
    assert feed.state == "connected" and errors == []
    assert feed.stop() is True


@pytest.mark.timeout(30)
def test_stop_cuts_the_built_in_token_providers_request_in_flight(caplog):
    """``ClearStreetFeed.client_credentials`` has its own REST client: a token request
    hanging on the identity provider is cut by stop(), so the io thread ends at once."""
    caplog.set_level(logging.INFO, logger="brokerfeeds")
    with ClearStreetSimulator() as sim:
        release = threading.Event()
        asked: List[float] = []
        token = sim._routes[("POST", "/oauth/token")]

        def hanging_token(request: Any) -> Any:
            asked.append(time.monotonic())
            release.wait(20)
            return token(request)

        sim.route("POST", "/oauth/token", hanging_token)
        provider = ClearStreetFeed.client_credentials(sim.client_id, sim.client_secret, auth_url=sim.auth_url,
                                                      timeout=25)
        feed = ClearStreetFeed(token_provider=provider, url=sim.url, rest_url=sim.rest_url, reconnect=FAST_RECONNECT)
        try:
            feed.start()
            wait_until(lambda: bool(asked))
            assert feed.stop(timeout=5) is True and feed.state == "stopped"
            assert "did not end" not in caplog.text
            assert not [t for t in feed_threads() if t.name.startswith("brokerfeeds-clearstreet")]
        finally:
            release.set()
            feed.stop()


def test_a_slow_token_provider_neither_holds_stop_past_its_timeout_nor_blocks_a_restart(caplog):
    caplog.set_level(logging.INFO, logger="brokerfeeds")
    with ClearStreetSimulator() as sim:
        release = threading.Event()
        asked: List[float] = []

        def provider() -> str:
            asked.append(time.monotonic())
            if len(asked) == 1:
                release.wait(4)  # e.g. an identity provider that hangs
            return sim.token

        feed = ClearStreetFeed(token_provider=provider, url=sim.url, rest_url=sim.rest_url,
                               reconnect=FAST_RECONNECT)
        feed.start()
        wait_until(lambda: bool(asked))
        began = time.monotonic()
        assert feed.stop(timeout=0.3) is False
        assert time.monotonic() - began < 1.0 and feed.state == "stopped"
        assert "brokerfeeds-clearstreet-io did not end within stop(0.3)" in caplog.text
        feed.start()
        release.set()
        assert feed.wait_connected(5)
        wait_until(lambda: len([t for t in feed_threads() if t.name.endswith("-io")]) == 1)
        assert feed.state == "connected"
        assert feed.stop() is True


# ============================================================================ 4. feeds nobody stopped
def test_a_feed_nobody_stopped_is_stopped_at_interpreter_exit_saying_what_it_dropped(tmp_path):
    script = tmp_path / "forgotten.py"
    script.write_text(textwrap.dedent("""
        import logging, sys, time
        sys.path.insert(0, sys.argv[1])
        from brokerfeeds import IbkrFeed
        from brokerfeeds.testing import IbkrSimulator

        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        sim = IbkrSimulator(hb_interval=0.1).start()
        feed = IbkrFeed(url=sim.url, rest_url=sim.rest_url, heartbeat_interval=0.5, stale_after=2.0)
        feed.subscribe_orders()

        def slow(order):
            time.sleep(0.3)
            print("delivered", order.order_id, flush=True)

        feed.on_order(slow)
        feed.start()
        assert feed.wait_connected(5)
        while not sim.subscribers("sor"):
            time.sleep(0.01)
        for _ in range(5):
            sim.place_order("AAPL", "BUY", 1, 1.0)
        while feed.stats.events < 15:
            time.sleep(0.01)
        del feed  # dropped without stop(): its threads keep it alive until exit
        print("main done", flush=True)
    """))
    began = time.monotonic()
    result = subprocess.run([sys.executable, str(script), str(ROOT)], capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr
    assert "main done" in result.stdout
    assert "stopped at interpreter exit" in result.stderr, result.stderr
    assert "dropped at stop" in result.stderr
    delivered = result.stdout.count("delivered")
    assert 1 <= delivered < 15
    assert f"15 event(s) were waiting" in result.stderr or "event(s) were waiting" in result.stderr
    assert time.monotonic() - began < 15


def test_the_exit_hook_stops_a_running_feed_the_program_dropped(sim):
    feed = IbkrFeed(url=sim.url, rest_url=sim.rest_url, heartbeat_interval=0.5, stale_after=1.0,
                    reconnect=FAST_RECONNECT)
    feed.start()
    assert feed.wait_connected(5)
    del feed
    gc.collect()
    assert feed_threads(), "a running feed is kept alive by its threads (documented)"
    lifecycle.stop_running_feeds()
    assert not feed_threads() and not list(lifecycle.running)


# ============================================================================ 5. secrets in error and notice text
class EchoingFirstock(FirstockSimulator):
    """A Firstock server whose refusal echoes the key it was given (as some servers do)."""

    def check_handshake(self, request: Any) -> Any:
        verdict = super().check_handshake(request)
        if isinstance(verdict, dict):
            verdict["given"] = query_of(request).get("jKey")
        return verdict

    async def serve_client(self, client: Any) -> None:
        if client.info.get("auth") == "failed":
            await self.send_to(client, {"status": "failed",
                                        "message": f"invalid session key {client.info['given']} for this user"})
            await client.connection.close(1008, "unauthenticated")
            return
        await super().serve_client(client)


def test_an_authentication_error_echoing_a_secret_is_masked_wherever_it_goes(caplog):
    caplog.set_level(logging.DEBUG, logger="brokerfeeds")
    secret = "0ld-jkey-5ecret-77"
    with EchoingFirstock() as sim:
        feed = FirstockFeed(sim.user_id, secret, url=sim.url, rest_url=None, reconnect=FAST_RECONNECT)
        errors: List[BrokerFeedsError] = []
        feed.on_error(errors.append)
        with pytest.raises(AuthenticationError) as raised:
            feed.run_forever()
        wait_until(lambda: bool(errors))
    assert "invalid session key *** for this user" in str(raised.value)
    for text in [str(raised.value), str(feed.error), repr(feed.error), *map(str, errors), caplog.text]:
        assert secret not in text
    assert errors[0] is feed.error and type(feed.error) is AuthenticationError


def test_a_notice_echoing_a_secret_is_masked_and_its_raw_stays_raw():
    with FirstockSimulator() as sim:
        feed = FirstockFeed(sim.user_id, sim.jkey, url=sim.url, rest_url=None, reconnect=FAST_RECONNECT)
        notices: List[Notice] = []
        feed.on_notice(notices.append)
        with feed:
            assert feed.wait_connected(5)
            sim.notice(f"session {sim.jkey} is active on another device")
            wait_until(lambda: bool(notices))
            events = feed.events(timeout=0.5)
            sim.notice(f"again {sim.jkey}")
            pulled = next(iter(events))
            events.close()
    assert notices[0].text == "session *** is active on another device"
    assert sim.jkey not in repr(notices[0]) and sim.jkey not in str(notices[0])
    assert sim.jkey in json.dumps(notices[0].raw)  # raw is the broker's message, untouched (documented)
    assert isinstance(pulled, Notice) and pulled.text == "again ***"


def test_a_callback_error_quoting_a_secret_is_masked():
    with FirstockSimulator() as sim:
        feed = FirstockFeed(sim.user_id, sim.jkey, url=sim.url, rest_url=None, reconnect=FAST_RECONNECT)
        errors: List[BrokerFeedsError] = []
        feed.on_error(errors.append)

        @feed.on_notice
        def careless(notice: Notice) -> None:
            raise ValueError(f"cannot handle {notice.raw}")

        with feed:
            assert feed.wait_connected(5)
            sim.notice(f"key {sim.jkey}")
            wait_until(lambda: bool(errors))
    assert isinstance(errors[0], CallbackError) and sim.jkey not in str(errors[0])
