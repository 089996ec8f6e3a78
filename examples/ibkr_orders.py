"""Watch your IBKR orders live: IBKR's Client Portal "websocket orders" tutorial script,
rewritten on brokerfeeds (no sockets, sleeps, cookies or heartbeats to manage).

    python examples/ibkr_orders.py                       # against the built-in simulator
    python examples/ibkr_orders.py --gateway https://localhost:5000 --insecure
                                                         # your running Client Portal Gateway
    python examples/ibkr_orders.py --url ws://127.0.0.1:5000/v1/api/ws --rest-url http://127.0.0.1:5001/v1/api
                                                         # the two endpoints apart (a simulator)

With a gateway, it runs until Ctrl-C, which stops cleanly.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Optional

from brokerfeeds import IbkrFeed
from brokerfeeds.display import money, progress, quantity, side
from brokerfeeds.events import Order, Trade


def show_order(order: Order) -> None:
    print(f"{order.order_id}: {side(order.side)} {quantity(order.quantity)} {order.symbol} "
          f"-> {order.status.value} ({order.broker_status}), filled {progress(order)} @ {money(order.avg_price)}",
          flush=True)


def show_fill(trade: Trade) -> None:
    print(f"  fill {quantity(trade.quantity)} {trade.symbol} @ {money(trade.price)} ({trade.trade_id})", flush=True)


def watch(feed: IbkrFeed) -> None:
    feed.on_order(show_order)
    feed.on_trade(show_fill)
    feed.on_connect(lambda connected: print("-- reconnected" if connected.reconnect else "-- connected", flush=True))
    feed.on_error(lambda error: print(f"  ! {error}", file=sys.stderr, flush=True))
    feed.subscribe_orders()
    feed.subscribe_trades(realtime_only=True)


def endpoints(args: argparse.Namespace) -> Optional[tuple]:
    """``(url, rest_url)`` from ``--gateway`` (and ``--url`` / ``--rest-url``), or None."""
    if not (args.gateway or args.url):
        return None
    base = (args.gateway or "https://localhost:5000").rstrip("/")
    url = args.url or base.replace("http", "ws", 1) + "/v1/api/ws"
    rest_url = args.rest_url or base + "/v1/api"
    return url, rest_url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateway", help="gateway base URL, e.g. https://localhost:5000")
    parser.add_argument("--url", help="the WebSocket URL (instead of the one --gateway implies)")
    parser.add_argument("--rest-url", help="the REST base URL (instead of the one --gateway implies)")
    parser.add_argument("--insecure", action="store_true", help="accept the gateway's self-signed certificate")
    args = parser.parse_args()
    live = endpoints(args)
    if live:
        feed = IbkrFeed(url=live[0], rest_url=live[1], verify=not args.insecure)
        watch(feed)
        try:
            feed.run_forever()  # Ctrl-C stops cleanly
        except KeyboardInterrupt:
            pass  # run_forever stopped the feed
        return 0

    from brokerfeeds.testing import IbkrSimulator

    with IbkrSimulator() as sim:
        feed = IbkrFeed(url=sim.url, rest_url=sim.rest_url)
        watch(feed)
        with feed:
            feed.wait_connected(10)
            time.sleep(0.3)
            order_id = sim.place_order("AAPL", "BUY", 100, 190.50)
            sim.fill(order_id, 30, 190.45)
            sim.fill(order_id, 70, 190.50)
            time.sleep(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
