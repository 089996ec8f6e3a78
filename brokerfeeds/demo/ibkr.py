"""The IBKR demo: a short scripted trading session against :class:`IbkrSimulator`."""

from __future__ import annotations

import time
from typing import Callable

from ..brokers.ibkr import IbkrFeed
from ..reconnect import ReconnectPolicy
from ..testing.ibkr import IbkrSimulator
from . import attach, wait_until


def run(out: Callable[[str], None], duration: float = 10.0) -> int:
    """Place, fill and cancel orders, tick quotes, drop the connection and recover."""
    pace = max(0.05, duration / 20)
    with IbkrSimulator(hb_interval=1.0) as sim:
        feed = IbkrFeed(url=sim.url, rest_url=sim.rest_url, heartbeat_interval=2.0, stale_after=3.0,
                        reconnect=ReconnectPolicy(initial=0.2, maximum=1.0), poll_positions=pace * 4)
        attach(feed, out)
        feed.subscribe_orders()
        feed.subscribe_trades()
        feed.subscribe_pnl()
        feed.subscribe_quotes(265598)
        out(f"demo: IBKR simulator on {sim.url}; connecting ...")
        with feed:
            if not feed.wait_connected(10):
                out("demo: could not connect")
                return 1

            def step() -> None:
                time.sleep(pace)

            sim.tick(265598, last="190.10", bid="190.05", ask="190.15", volume="1200")
            step()
            buy = sim.place_order("AAPL", "BUY", 100, 190.10)
            step()
            sim.fill(buy, 40, 190.10)
            sim.set_position(265598, "AAPL", 40, 190.10)
            sim.tick(265598, last="190.20")
            sim.set_pnl(dpl=4.0, upl=4.0)
            step()
            sell = sim.place_order("MSFT", "SELL", 10, 425.00)
            step()
            out("demo: >>> cutting the connection; the order keeps filling while we are away <<<")
            sim.drop()
            sim.fill(buy, 60, 190.05)
            sim.cancel(sell)
            sim.set_position(265598, "AAPL", 100, 190.07)
            if not wait_until(lambda: feed.stats.reconnects >= 1 and feed.state == "connected", 10):
                out("demo: did not reconnect")
                return 1
            step()
            sim.tick(265598, bid="190.25", ask="190.30")
            sim.set_pnl(dpl=18.0, upl=13.0)
            time.sleep(pace * 4)
            stats = feed.stats
        out(f"demo: done — {stats.messages} messages, {stats.events} events, "
            f"{stats.reconnects} reconnect(s), {stats.malformed} malformed")
    return 0
