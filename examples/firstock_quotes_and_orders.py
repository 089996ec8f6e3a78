"""Stream Firstock quotes, orders, fills and positions with brokerfeeds.

With credentials in the environment this connects to Firstock itself:

    FIRSTOCK_USER_ID=AB1234 FIRSTOCK_PASSWORD=... FIRSTOCK_TOTP=123456 \
    FIRSTOCK_VENDOR_CODE=AB1234_API FIRSTOCK_API_KEY=... \
    python examples/firstock_quotes_and_orders.py --seconds 60

(or FIRSTOCK_JKEY=<susertoken> instead of the login variables; ``--url`` / ``--rest-url``
point it elsewhere). Ctrl-C stops it cleanly before ``--seconds`` are up. Without
credentials it starts the built-in simulator, scripts a little activity and exits after
a few seconds, so you can see what the callbacks receive.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Dict, Optional

from brokerfeeds.brokers.firstock import FirstockFeed
from brokerfeeds.display import money, progress, quantity, side
from brokerfeeds.errors import BrokerFeedsError
from brokerfeeds.events import Notice, Order, Position, Quote, Trade

INSTRUMENTS = ("NSE:26000", "BSE:1", "NSE:2885")  # Nifty 50, Sensex, Reliance


def build_feed(url: Optional[str] = None, rest_url: Optional[str] = None, jkey: Optional[str] = None,
               user_id: Optional[str] = None) -> FirstockFeed:
    """A feed from explicit arguments or the FIRSTOCK_* environment variables."""
    user_id = user_id or os.environ["FIRSTOCK_USER_ID"]
    if jkey is None:
        jkey = os.environ.get("FIRSTOCK_JKEY") or FirstockFeed.login(
            user_id, os.environ["FIRSTOCK_PASSWORD"], os.environ["FIRSTOCK_TOTP"],
            os.environ["FIRSTOCK_VENDOR_CODE"], os.environ["FIRSTOCK_API_KEY"])
    kwargs: Dict[str, Any] = {"url": url} if url else {}
    if rest_url:
        kwargs["rest_url"] = rest_url
    return FirstockFeed(user_id, jkey, poll_pnl=5.0, **kwargs)


def wire(feed: FirstockFeed) -> None:
    """Print what arrives."""

    @feed.on_quote
    def quote(q: Quote) -> None:
        print(f"quote    {q.instrument:<10} last {money(q.last)}  bid {money(q.bid)} x {quantity(q.bid_size)}  "
              f"ask {money(q.ask)} x {quantity(q.ask_size)}", flush=True)

    @feed.on_order
    def order(o: Order) -> None:
        print(f"order    {o.order_id} {o.symbol} {side(o.side)} {o.status.value} "
              f"{progress(o)} @ {money(o.avg_price)}  [{o.broker_status}]", flush=True)

    @feed.on_trade
    def trade(t: Trade) -> None:
        print(f"fill     {t.order_id} {t.symbol} {quantity(t.quantity)} @ {money(t.price)}", flush=True)

    @feed.on_position
    def position(p: Position) -> None:
        print(f"position {p.instrument or p.symbol} qty {quantity(p.quantity)} avg {money(p.avg_price)} "
              f"realized {money(p.realized_pnl)}", flush=True)

    feed.on_pnl(lambda pnl: print(f"pnl      day {money(pnl.daily_pnl)} (unrealized {money(pnl.unrealized_pnl)})",
                                  flush=True))
    feed.on_notice(lambda n: print(f"notice   [{n.kind}] {n.text}", flush=True) if isinstance(n, Notice) else None)
    feed.on_connect(lambda c: print(f"-- {'re' if c.reconnect else ''}connected", flush=True))
    feed.on_disconnect(lambda d: print(f"-- disconnected: {d.reason}", flush=True))
    feed.on_error(lambda e: print(f"!! {type(e).__name__}: {e}", flush=True))


def run_live(seconds: float, url: Optional[str] = None, rest_url: Optional[str] = None) -> int:
    """Connect to Firstock with the FIRSTOCK_* credentials; Ctrl-C stops cleanly."""
    feed = build_feed(url=url, rest_url=rest_url)
    wire(feed)
    feed.subscribe_quotes(*INSTRUMENTS)
    with feed:  # leaving the block (Ctrl-C included) stops the feed
        try:
            if not feed.wait_connected(15):
                print("could not connect", file=sys.stderr)
                return 1
            time.sleep(seconds)
        except KeyboardInterrupt:
            pass
    return 0


def run_simulated(seconds: float) -> int:
    """The same code against the local simulator, with some scripted activity."""
    from brokerfeeds.testing.firstock import FirstockSimulator

    with FirstockSimulator(ping_every=1.0) as sim:
        jkey = FirstockFeed.login(sim.user_id, sim.password, sim.totp, sim.vendor_code, sim.api_key,
                                  rest_url=sim.rest_url)
        feed = build_feed(url=sim.url, rest_url=sim.rest_url, jkey=jkey, user_id=sim.user_id)
        wire(feed)
        feed.subscribe_quotes(*INSTRUMENTS)
        with feed:
            if not feed.wait_connected(10):
                print("could not connect to the simulator", file=sys.stderr)
                return 1
            pace = seconds / 8
            order_id = sim.place_order("RELIANCE-EQ", "B", 10, 1395.60, token="2885")
            time.sleep(pace)
            sim.tick("NSE:2885", i_last_traded_price=139560, i_volume_traded_today=0)  # zero: ignored
            sim.fill(order_id, 4, 1395.60)
            time.sleep(pace)
            sim.fill(order_id, 6, 1395.70)
            sim.set_position("RELIANCE-EQ", 10, 1395.66, token="2885", ltp=1396.00)
            sim.notice("Simulated session: all done")
            time.sleep(pace * 2)
    return 0


def main(argv: Optional[list] = None) -> int:
    """Live with credentials, simulated without."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=None, help="how long to stream")
    parser.add_argument("--url", help="the socket URL (default: Firstock's V2 socket)")
    parser.add_argument("--rest-url", help="the REST base URL (default: Firstock's)")
    args = parser.parse_args(argv)
    live = "FIRSTOCK_USER_ID" in os.environ
    try:
        if live:
            return run_live(args.seconds or 60.0, args.url, args.rest_url)
        return run_simulated(args.seconds or 4.0)
    except BrokerFeedsError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C during the login
        return 0


if __name__ == "__main__":
    sys.exit(main())
