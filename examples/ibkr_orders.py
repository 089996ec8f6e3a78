"""Watch your IBKR orders live: IBKR's Client Portal "websocket orders" tutorial script,
rewritten on brokerfeeds (no sockets, sleeps, cookies or heartbeats to manage).

    python examples/ibkr_orders.py                       # against the built-in simulator
    python examples/ibkr_orders.py --gateway https://localhost:5000 --insecure
                                                         # your running Client Portal Gateway
"""

from __future__ import annotations

import argparse
import sys
import time

from brokerfeeds import IbkrFeed
from brokerfeeds.events import Order, Trade


def show_order(order: Order) -> None:
    print(f"{order.order_id}: {order.side.value if order.side else '?'} {order.quantity} {order.symbol} "
          f"-> {order.status.value} ({order.broker_status}), filled {order.filled_quantity} @ {order.avg_price}")


def show_fill(trade: Trade) -> None:
    print(f"  fill {trade.quantity} {trade.symbol} @ {trade.price} ({trade.trade_id})")


def watch(feed: IbkrFeed) -> None:
    feed.on_order(show_order)
    feed.on_trade(show_fill)
    feed.on_error(lambda error: print(f"  ! {error}", file=sys.stderr))
    feed.subscribe_orders()
    feed.subscribe_trades(realtime_only=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateway", help="gateway base URL, e.g. https://localhost:5000")
    parser.add_argument("--insecure", action="store_true", help="accept the gateway's self-signed certificate")
    args = parser.parse_args()
    if args.gateway:
        base = args.gateway.rstrip("/")
        feed = IbkrFeed(url=base.replace("http", "ws", 1) + "/v1/api/ws", rest_url=base + "/v1/api",
                        verify=not args.insecure)
        watch(feed)
        feed.run_forever()  # Ctrl-C stops cleanly
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
