"""Every failure says what failed, where and why; the types users lean on; liveness and the book.

Feed-level checks run over real loopback sockets (the simulators, or a raw-socket server
that breaks RFC 6455); the pure pieces (liveness, subscription book) on plain data.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import List

import pytest

from brokerfeeds import ClearStreetFeed, FirstockFeed, IbkrFeed, UpstoxFeed
from brokerfeeds.errors import BrokerFeedsError, ConnectionFailed, ProtocolError
from brokerfeeds.protocol import Subscription
from brokerfeeds.subscriptions import SubscriptionBook
from brokerfeeds.supervisor import Liveness
from brokerfeeds.testing import FirstockSimulator
from helpers import FAST_RECONNECT, wait_until
from test_transport import raw_server, read_request, switching

pytestmark = pytest.mark.timeout(30)
ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- URLs that can never work
@pytest.mark.parametrize("make", [
    lambda: IbkrFeed(url="http://localhost:5000/v1/api/ws"),
    lambda: IbkrFeed(url="localhost:5000/v1/api/ws"),
    lambda: IbkrFeed(rest_url="ftp://localhost:5000/v1/api"),
    lambda: FirstockFeed("AB1", "jkey", url="https://socket.firstock.in/V2/ws"),
    lambda: ClearStreetFeed(access_token="t", url="wss://"),
    lambda: UpstoxFeed(access_token="t", rest_url="wss://api.upstox.com"),
])
def test_a_url_that_can_never_work_is_a_value_error_at_construction(make) -> None:
    with pytest.raises(ValueError):
        make()


# ----------------------------------------------------------------------------- every failed attempt reaches on_error
def test_an_authentication_that_never_completes_reaches_on_error() -> None:
    with FirstockSimulator() as sim:
        sim.silent = True  # accepts the upgrade, never answers the authentication
        feed = FirstockFeed(sim.user_id, sim.jkey, url=sim.url, rest_url=None, auth_timeout=0.3,
                            reconnect=FAST_RECONNECT)
        errors: List[BrokerFeedsError] = []
        feed.on_error(errors.append)
        with feed:
            wait_until(lambda: len(errors) >= 2)
            assert not feed.wait_connected(0)
        assert all(isinstance(e, ConnectionFailed) for e in errors[:2])
        assert "not authenticated within 0.3s" in str(errors[0])


def test_a_refused_connection_names_the_url_and_the_cause() -> None:
    feed = FirstockFeed("AB1", "secret-jkey-123", url="ws://127.0.0.1:9/V2/ws", rest_url=None,
                        reconnect=FAST_RECONNECT)
    errors: List[BrokerFeedsError] = []
    feed.on_error(errors.append)
    with feed:
        wait_until(lambda: errors)
    text = str(errors[0])
    assert text.startswith("connect to ws://127.0.0.1:9/V2/ws?... failed: ") and "refused" in text
    assert "secret-jkey-123" not in text


def test_a_frame_violating_rfc_6455_reaches_on_error_and_the_feed_reconnects() -> None:
    def bad(client, stop) -> None:
        client.sendall(switching(read_request(client)))
        client.sendall(b"\xc1\x02hi")  # FIN + RSV1 on a text frame: no extension was negotiated
        stop.wait(1.0)

    with raw_server(bad, connections=2) as (port, accepted):
        feed = FirstockFeed("AB1", "jkey", url=f"ws://127.0.0.1:{port}/V2/ws", rest_url=None,
                            reconnect=FAST_RECONNECT)
        errors: List[BrokerFeedsError] = []
        feed.on_error(errors.append)
        with feed:
            wait_until(lambda: any(isinstance(e, ProtocolError) for e in errors))
            wait_until(lambda: len(accepted) == 2)  # and it tried again
        violation = next(e for e in errors if isinstance(e, ProtocolError))
        assert "reserved bits set" in str(violation)


def test_a_frame_larger_than_max_message_size_fails_without_buffering_it() -> None:
    def huge(client, stop) -> None:
        client.sendall(switching(read_request(client)))
        client.sendall(b"\x82\x7f" + (2 ** 62).to_bytes(8, "big"))  # announces 4 EiB
        stop.wait(1.0)

    with raw_server(huge) as (port, _):
        feed = FirstockFeed("AB1", "jkey", url=f"ws://127.0.0.1:{port}/V2/ws", rest_url=None,
                            reconnect=FAST_RECONNECT, max_message_size=1024)
        errors: List[BrokerFeedsError] = []
        feed.on_error(errors.append)
        with feed:
            wait_until(lambda: any(isinstance(e, ProtocolError) for e in errors))
        assert "exceeds max_message_size (1024)" in str(next(e for e in errors if isinstance(e, ProtocolError)))


# ----------------------------------------------------------------------------- liveness on a fake clock
def test_liveness_is_decided_on_whole_frames_and_schedules_keepalives() -> None:
    live = Liveness(100.0, stale_after=10.0, heartbeat_interval=4.0, ping_interval=3.0, auth_timeout=5.0)
    assert live.dead(109.0) is None and live.dead(110.5) == "no data for 10.5s (stale connection)"
    live.received(110.0)
    assert live.dead(119.0) is None
    assert not live.heartbeat_due(103.9) and live.heartbeat_due(104.0) and not live.heartbeat_due(107.0)
    assert live.heartbeat_due(108.0)
    assert live.ping_due(103.0) and not live.ping_due(105.0) and live.ping_due(106.0)
    assert live.auth_overdue(104.0, ready=False) is None
    assert live.auth_overdue(105.5, ready=False) == "not authenticated within 5s"
    assert live.auth_overdue(106.0, ready=True) is None  # ready: the clock starts again when it is lost
    assert live.auth_overdue(107.0, ready=False) is None and live.auth_overdue(112.5, ready=False) is not None


def test_liveness_without_pings_never_pings() -> None:
    live = Liveness(0.0, stale_after=1.0, heartbeat_interval=1.0, ping_interval=None, auth_timeout=1.0)
    assert not live.ping_due(1e9)


# ----------------------------------------------------------------------------- the subscription book
def test_the_subscription_book_keeps_order_and_reports_only_changes() -> None:
    book = SubscriptionBook()
    a, b = Subscription("quotes", "1", ("31",)), Subscription("orders")
    assert book.add([a, b]) == [a, b]
    assert book.add([a]) == []  # already there
    a2 = Subscription("quotes", "1", ("31", "84"))
    assert book.add([a2]) == [a2] and book.all() == (a2, b)  # same ident, new params: replaced in place
    assert book.kinds() == frozenset({"quotes", "orders"}) and list(book.keys("quotes")) == ["1"]
    assert book.remove([("orders", ""), ("orders", ""), ("nope", "")]) == [b]
    assert len(book) == 1


# ----------------------------------------------------------------------------- types users can lean on
def test_a_type_checker_catches_a_quote_handler_passed_to_on_order(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    snippet = tmp_path / "use.py"
    snippet.write_text(textwrap.dedent("""
        from brokerfeeds import IbkrFeed
        from brokerfeeds.events import Order, Quote

        feed = IbkrFeed()

        @feed.on_order
        def good(order: Order) -> None: ...

        def on_quote(quote: Quote) -> None: ...

        same = feed.on_order(good)          # still returns the function
        reveal_type(same)
        feed.on_order(on_quote)             # wrong kind: an error
        feed.on_quote(on_quote)
        feed.on_error(lambda error: print(error))
    """))
    env = dict(os.environ, MYPYPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--follow-imports=silent",
         "--cache-dir", str(tmp_path / "cache"), str(snippet)],
        capture_output=True, text=True, cwd=str(ROOT), env=env, timeout=120,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith(str(snippet))]
    errors = [line for line in lines if ": error:" in line]
    assert len(errors) == 1, result.stdout
    assert ":14:" in errors[0] and "on_order" in errors[0]
    assert any("def (order: brokerfeeds.events.Order)" in line for line in lines), result.stdout


