"""State that lies: ``state`` and ``wait_connected`` tell the truth while the feed has no
connection (during the reconnect backoff, while the server is down)."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from brokerfeeds import IbkrFeed, ReconnectPolicy
from brokerfeeds.testing import IbkrSimulator
from helpers import Recorder, wait_until

pytestmark = pytest.mark.timeout(30)


def test_state_is_reconnecting_from_the_loss_until_the_next_connection_is_ready() -> None:
    slow = ReconnectPolicy(initial=1.0, factor=1.0, maximum=1.0, jitter=False)
    with IbkrSimulator(hb_interval=0.1) as sim:
        feed = IbkrFeed(url=sim.url, rest_url=sim.rest_url, heartbeat_interval=0.5, stale_after=2.0,
                        reconnect=slow)
        rec = Recorder(feed)
        feed.subscribe_orders()
        with feed:
            assert feed.wait_connected(5)
            # Every client dropped, nobody listens for 0.8 s (restart() returns once it is back).
            down = threading.Thread(target=sim.restart, kwargs={"down_for": 0.8})
            down.start()
            rec.wait_for("disconnect")
            # From the loss on, through the backoff and the failed attempts, never "connected".
            seen = set()
            deadline = time.monotonic() + 0.7
            while time.monotonic() < deadline:
                seen.add(feed.state)
                assert not feed.wait_connected(0)
                time.sleep(0.01)
            assert seen == {"reconnecting"}
            down.join()
            assert feed.wait_connected(5)  # and back once the server is
            rec.wait_for("connect", count=2)
        wait_until(lambda: feed.state == "stopped")


def test_the_simulators_never_log_tokens_cookies_or_codes(caplog: pytest.LogCaptureFixture) -> None:
    from brokerfeeds import UpstoxFeed
    from brokerfeeds.testing import UpstoxSimulator

    caplog.set_level(logging.DEBUG)  # every logger, websockets' included
    with UpstoxSimulator() as sim:
        feed = UpstoxFeed(access_token=sim.token, rest_url=sim.rest_url)
        feed.subscribe_orders()
        with feed:
            assert feed.wait_connected(5)
    assert sim.used_codes  # the socket was opened with a one-time code in its URL
    for code in sim.used_codes:
        assert code not in caplog.text  # websockets' DEBUG request line would show it
    assert sim.token not in caplog.text
    assert any(r.name.startswith("brokerfeeds") for r in caplog.records)  # the capture did work
