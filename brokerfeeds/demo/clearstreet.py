"""The Clear Street demo: a scripted session against :class:`ClearStreetSimulator`."""

from __future__ import annotations

import time
from typing import Callable

from ..brokers.clearstreet import ClearStreetFeed
from ..reconnect import ReconnectPolicy
from ..testing.clearstreet import ClearStreetSimulator
from . import attach, wait_until


def run(out: Callable[[str], None], duration: float = 10.0) -> int:
    """Two accounts: orders, fills, a locate; the connection drops, activity goes on, and the
    replay after the reconnect delivers only what was missed (each sequence exactly once)."""
    pace = max(0.05, duration / 20)
    with ClearStreetSimulator(accounts=("100000", "100001"), hb_interval=1.0) as sim:
        first = sim.place_order("AAPL", "buy", 100, 190.10)  # happened before we connected: replayed
        feed = ClearStreetFeed(
            token_provider=ClearStreetFeed.client_credentials(sim.client_id, sim.client_secret,
                                                              auth_url=sim.auth_url),
            url=sim.url, rest_url=sim.rest_url, stale_after=3.0, ping_interval=1.0,
            reconnect=ReconnectPolicy(initial=0.2, maximum=1.0), poll_pnl=pace * 4)
        attach(feed, out)
        feed.subscribe_activity("100000")
        feed.subscribe_activity("100001")
        out(f"demo: Clear Street simulator on {sim.url}; connecting ...")
        with feed:
            if not feed.wait_connected(10) or not wait_until(lambda: feed.stats.extra.get("replayed", 0) >= 1, 10):
                out("demo: could not connect")
                return 1

            def step() -> None:
                time.sleep(pace)

            step()
            sim.fill(first, 40, 190.10)
            sim.set_pnl("100000", day_pnl=4.0, unrealized_pnl=4.0)
            step()
            short = sim.place_order("TSLA", "sell-short", 10, 250.00, account="100001")
            sim.set_locate("TSLA", available=500, reserved=10, account="100001")
            step()
            out("demo: >>> cutting the connection; activity goes on while we are away <<<")
            sim.drop()
            sim.fill(first, 60, 190.05)
            sim.cancel(short)
            if not wait_until(lambda: feed.stats.reconnects >= 1 and feed.state == "connected", 10):
                out("demo: did not reconnect")
                return 1
            wait_until(lambda: feed.stats.extra.get("replayed", 0) >= 6, 5)
            step()
            sim.set_pnl("100000", day_pnl=18.0, unrealized_pnl=13.0)
            time.sleep(pace * 5)
            stats = feed.stats
        out(f"demo: done — {stats.messages} messages, {stats.events} events, {stats.reconnects} reconnect(s), "
            f"{stats.extra.get('duplicates', 0)} replayed duplicate(s) dropped, {stats.malformed} malformed")
    return 0
