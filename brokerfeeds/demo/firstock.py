"""The Firstock demo: a short scripted session against :class:`FirstockSimulator`."""

from __future__ import annotations

import time
from typing import Callable

from ..brokers.firstock import FirstockFeed
from ..reconnect import ReconnectPolicy
from ..testing.firstock import FirstockSimulator
from . import attach, wait_until


def run(out: Callable[[str], None], duration: float = 10.0) -> int:
    """Log in, stream quotes (V2 deltas), place and fill orders, drop the connection and recover."""
    pace = max(0.05, duration / 20)
    with FirstockSimulator(ping_every=1.0, pong_deadline=10.0) as sim:
        jkey = FirstockFeed.login(sim.user_id, sim.password, sim.totp, sim.vendor_code, sim.api_key,
                                  rest_url=sim.rest_url)
        feed = FirstockFeed(sim.user_id, jkey, url=sim.url, rest_url=sim.rest_url, stale_after=3.0,
                            ping_interval=1.0, reconnect=ReconnectPolicy(initial=0.2, maximum=1.0),
                            poll_pnl=pace * 4)
        attach(feed, out)
        sim.set_quote("NSE:26000", i_last_traded_price=2532065)
        sim.set_quote("NSE:2885", i_last_traded_price=139540)
        feed.subscribe_quotes("NSE:26000|BSE:1", "NSE:2885")
        out(f"demo: logged in; Firstock simulator on {sim.url}; connecting ...")
        with feed:
            if not feed.wait_connected(10):
                out("demo: could not connect")
                return 1

            def step() -> None:
                time.sleep(pace)

            step()
            sim.ticks({"NSE:26000": {"i_last_traded_price": 2532110, "i_volume_traded_today": 0},
                       "NSE:2885": {"i_last_traded_price": 139560, "best_buy": [{}, {"quantity": 7}]}})
            step()
            buy = sim.place_order("RELIANCE-EQ", "B", 10, 1395.60, token="2885")
            step()
            sim.fill(buy, 4, 1395.60)
            sim.set_position("RELIANCE-EQ", 4, 1395.60, token="2885", ltp=1395.80)
            step()
            out("demo: dropping BSE:1")
            feed.unsubscribe_quotes("BSE:1")
            sim.notice("Market data for BSE:1 unsubscribed")
            step()
            out("demo: >>> cutting the connection; the order fills while we are away <<<")
            sim.drop()
            sim.fill(buy, 6, 1395.70, fill_fields=False)
            sim.set_position("RELIANCE-EQ", 10, 1395.66, token="2885", ltp=1396.10, push=False)
            if not wait_until(lambda: feed.stats.reconnects >= 1 and feed.state == "connected", 10):
                out("demo: did not reconnect")
                return 1
            step()
            sim.tick("NSE:2885", i_last_traded_price=139610)
            time.sleep(pace * 4)
            stats = feed.stats
        out(f"demo: done — {stats.messages} messages, {stats.events} events, "
            f"{stats.reconnects} reconnect(s), {stats.malformed} malformed")
    return 0
