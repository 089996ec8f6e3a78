"""Print your Upstox orders, fills, positions and holdings as they happen.

Usage:
    python examples/upstox_orders.py                  # no credentials: runs against the built-in simulator
    UPSTOX_ACCESS_TOKEN=... python examples/upstox_orders.py   # your real account

With a token it runs until Ctrl-C, which stops cleanly. The access token is the daily one
from Upstox's login flow (it expires at 03:30 IST). ``UPSTOX_REST_URL`` points it at
another API base (``brokerfeeds simulate --broker upstox`` prints one).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Optional

from brokerfeeds.brokers.upstox import UpstoxFeed
from brokerfeeds.display import money, progress, quantity, side
from brokerfeeds.events import GttOrder, Holding, Order, Position, Trade


def build_feed(token: str, rest_url: str, **kwargs: object) -> UpstoxFeed:
    """A feed with a printing callback for every kind of account event."""
    feed = UpstoxFeed(access_token=token, rest_url=rest_url, **kwargs)  # type: ignore[arg-type]

    @feed.on_order
    def order(o: Order) -> None:
        print(f"order    {o.order_id} {side(o.side)} {o.symbol} {o.status.value} "
              f"{progress(o)} avg {money(o.avg_price)}  [{o.broker_status}]", flush=True)

    @feed.on_trade
    def trade(t: Trade) -> None:
        print(f"fill     {t.order_id} {side(t.side)} {quantity(t.quantity)} {t.symbol} @ {money(t.price)}", flush=True)

    @feed.on_position
    def position(p: Position) -> None:
        print(f"position {p.symbol} qty {quantity(p.quantity)} avg {money(p.avg_price)}", flush=True)

    @feed.on_holding
    def holding(h: Holding) -> None:
        print(f"holding  {h.symbol} qty {quantity(h.quantity)} avg {money(h.avg_price)}", flush=True)

    @feed.on_gtt_order
    def gtt(g: GttOrder) -> None:
        print(f"gtt      {g.gtt_order_id} {g.symbol} {g.status}", flush=True)

    feed.on_connect(lambda c: print("-- reconnected" if c.reconnect else "-- connected", flush=True))
    feed.on_disconnect(lambda d: print(f"-- disconnected: {d.reason}", flush=True))
    feed.on_error(lambda e: print(f"!! {type(e).__name__}: {e}", file=sys.stderr, flush=True))
    feed.subscribe_orders()
    feed.subscribe_positions()
    feed.subscribe_holdings()
    feed.subscribe_gtt_orders()
    return feed


def run_live(token: str) -> int:
    """Stream a real account until Ctrl-C."""
    feed = build_feed(token, os.environ.get("UPSTOX_REST_URL", "https://api.upstox.com"))
    try:
        feed.run_forever()  # Ctrl-C stops cleanly
    except KeyboardInterrupt:
        pass  # run_forever stopped the feed
    return 0


def run_simulated(seconds: float = 3.0) -> int:
    """No credentials: script a few orders on the local simulator and print the events."""
    from brokerfeeds.reconnect import ReconnectPolicy
    from brokerfeeds.testing.upstox import UpstoxSimulator

    with UpstoxSimulator(ping_every=1.0) as sim:
        print(f"no UPSTOX_ACCESS_TOKEN: using the local simulator at {sim.rest_url}", flush=True)
        feed = build_feed(sim.token, sim.rest_url, ping_interval=1.0, stale_after=3.0,
                          reconnect=ReconnectPolicy(initial=0.1, maximum=0.5))
        with feed:
            if not feed.wait_connected(5):
                print("could not connect to the simulator", file=sys.stderr)
                return 1
            pace = seconds / 6
            buy = sim.place_order("NHPC-EQ", "BUY", 10, 92.5, instrument_key="NSE_EQ|INE848E01016")
            time.sleep(pace)
            sim.fill(buy, 4, 92.45)
            time.sleep(pace)
            sim.fill(buy, 6, 92.50)
            sim.set_holding("NSE_EQ|INE848E01016", "NHPC", 3, 89.22)
            time.sleep(pace)
            sell = sim.place_order("SBIN-EQ", "SELL", 5, 571.0, instrument_key="NSE_EQ|INE062A01020")
            sim.drop()  # the feed re-authorizes a fresh URI and reconciles from REST
            sim.cancel(sell)
            deadline = time.monotonic() + 5
            while feed.stats.connects < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(pace * 2)
    return 0


def main(argv: Optional[list] = None) -> int:
    token = os.environ.get("UPSTOX_ACCESS_TOKEN")
    return run_live(token) if token else run_simulated()


if __name__ == "__main__":
    sys.exit(main())
