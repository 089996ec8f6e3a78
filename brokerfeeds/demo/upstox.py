"""The Upstox demo: a short scripted session against :class:`UpstoxSimulator`."""

from __future__ import annotations

import time
from typing import Callable

from ..brokers.upstox import UpstoxFeed
from ..reconnect import ReconnectPolicy
from ..testing.upstox import UpstoxSimulator
from . import attach, wait_until


def run(out: Callable[[str], None], duration: float = 10.0) -> int:
    """Orders with partial fills, positions, holdings, a GTT order, a dropped connection
    (with changes while away, reconciled from REST) and a 1000 close that is retried."""
    pace = max(0.05, duration / 20)
    with UpstoxSimulator(ping_every=1.0) as sim:
        feed = UpstoxFeed(access_token=sim.token, rest_url=sim.rest_url, ping_interval=1.0, stale_after=3.0,
                          reconnect=ReconnectPolicy(initial=0.2, maximum=1.0), poll_pnl=pace * 4)
        attach(feed, out)
        nhpc = "NSE_EQ|INE848E01016"
        sim.set_holding(nhpc, "NHPC", 3, 89.22, push=False)  # already held: the first REST snapshot shows it
        feed.subscribe_orders()
        feed.subscribe_positions()
        feed.subscribe_holdings()
        feed.subscribe_gtt_orders()
        out(f"demo: Upstox simulator, REST on {sim.rest_url}; authorizing a one-time socket URI ...")
        with feed:
            if not feed.wait_connected(10):
                out("demo: could not connect")
                return 1

            def step() -> None:
                time.sleep(pace)

            buy = sim.place_order("NHPC-EQ", "BUY", 10, 92.50, instrument_key=nhpc, product="I")
            step()
            sim.fill(buy, 4, 92.45)
            sim.set_last_price(nhpc, 92.80)
            sim.set_holding(nhpc, "NHPC", 13, 91.05)
            step()
            sell = sim.place_order("SBIN-EQ", "SELL", 5, 571.00, instrument_key="NSE_EQ|INE062A01020")
            gtt = sim.place_gtt("NSE_EQ|INE062A01020", 1, "BUY", 560.0, target=590.0, stoploss=550.0,
                                symbol="SBIN-EQ")
            step()
            out("demo: >>> cutting the connection; the order keeps filling while we are away <<<")
            out(f"demo: >>> the simulator now refuses with HTTP 429 (Too Many Requests, Retry-After {pace:g} s) "
                "the next authorize: a RateLimited warning follows, then the feed waits and retries <<<")
            sim.rate_limit(times=1, retry_after=pace)  # the first re-authorize is told to wait
            sim.drop()
            sim.fill(buy, 6, 92.55)
            sim.cancel(sell)
            sim.set_gtt_rule(gtt, "ENTRY", "COMPLETED")
            if not wait_until(lambda: feed.stats.connects >= 2, 10):
                out("demo: did not reconnect")
                return 1
            step()
            out("demo: >>> the server closes normally (1000); we reconnect anyway <<<")
            sim.close_all(1000, "bye")
            if not wait_until(lambda: feed.stats.connects >= 3, 10):
                out("demo: did not reconnect after the 1000 close")
                return 1
            sim.set_last_price(nhpc, 93.10)
            time.sleep(pace * 5)
            stats = feed.stats
        out(f"demo: done — {stats.messages} messages, {stats.events} events, "
            f"{stats.reconnects} reconnect(s), {stats.extra.get('authorizations', 0)} one-time URIs authorized")
    return 0
