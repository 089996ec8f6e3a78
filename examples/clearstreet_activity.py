"""Stream your Clear Street Studio account activity: orders, fills, positions, buying power.

Every sequenced message reaches your callbacks exactly once and in order, across
reconnects: after a reconnect the server replays the whole trading day, and the feed
drops what you already had and marks what you missed with ``replayed=True``.

    python examples/clearstreet_activity.py                     # against the built-in simulator
    CLEARSTREET_CLIENT_ID=... CLEARSTREET_CLIENT_SECRET=... \\
        python examples/clearstreet_activity.py --account 100000 [--sandbox] [--marks marks.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, List

from brokerfeeds.brokers.clearstreet import ClearStreetFeed, JsonFileMarkStore
from brokerfeeds.events import Balance, Order, Position, ReplayComplete, Trade


def show_order(order: Order) -> None:
    tag = " (replayed)" if order.replayed else ""
    print(f"order {order.order_id}: {order.side.value if order.side else '?'} {order.quantity} {order.symbol} "
          f"-> {order.status.value} ({order.broker_status}), filled {order.filled_quantity}{tag}")


def show_fill(trade: Trade) -> None:
    print(f"  fill {trade.quantity} {trade.symbol} @ {trade.price} ({trade.trade_id})"
          f"{' (replayed)' if trade.replayed else ''}")


def show_position(position: Position) -> None:
    print(f"  position {position.symbol}: {position.quantity} @ {position.avg_price}")


def show_balance(balance: Balance) -> None:
    print(f"  buying power {balance.account}: {balance.buying_power}")


def show_replay_done(done: ReplayComplete) -> None:
    print(f"-- account {done.account}: replay complete{' (timed out)' if done.timed_out else ''}; live now")


def watch(feed: ClearStreetFeed, accounts: List[str]) -> None:
    feed.on_order(show_order)
    feed.on_trade(show_fill)
    feed.on_position(show_position)
    feed.on_balance(show_balance)
    feed.on_replay_complete(show_replay_done)
    feed.on_error(lambda error: print(f"  ! {error}", file=sys.stderr))
    for account in accounts:
        feed.subscribe_activity(account)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--account", action="append", help="account id (repeat for several)")
    parser.add_argument("--sandbox", action="store_true", help="use the sandbox environment")
    parser.add_argument("--marks", help="JSON file to persist sequence marks (no re-delivery after a restart)")
    args = parser.parse_args()
    client_id = os.environ.get("CLEARSTREET_CLIENT_ID")
    client_secret = os.environ.get("CLEARSTREET_CLIENT_SECRET")
    if client_id and client_secret:
        if not args.account:
            parser.error("--account is required with real credentials")
        host = "sandbox-api.clearstreet.io" if args.sandbox else "api.clearstreet.io"
        feed = ClearStreetFeed(
            token_provider=ClearStreetFeed.client_credentials(client_id, client_secret),
            url=f"wss://{host}/studio/v2/ws", rest_url=f"https://{host}/studio/v2",
            sequence_store=JsonFileMarkStore(args.marks) if args.marks else None)
        watch(feed, args.account)
        feed.run_forever()  # Ctrl-C stops cleanly
        return 0

    from brokerfeeds.testing.clearstreet import ClearStreetSimulator

    print("no CLEARSTREET_CLIENT_ID / CLEARSTREET_CLIENT_SECRET: running against the built-in simulator")
    with ClearStreetSimulator(accounts=("100000",)) as sim:
        earlier = sim.place_order("AAPL", "buy", 100, 190.50)  # before we connect: arrives replayed
        sim.fill(earlier, 30, 190.45)
        feed = ClearStreetFeed(
            token_provider=ClearStreetFeed.client_credentials(sim.client_id, sim.client_secret,
                                                              auth_url=sim.auth_url),
            url=sim.url, rest_url=sim.rest_url)
        done: List[ReplayComplete] = []
        feed.on_replay_complete(done.append)
        watch(feed, [sim.account])
        with feed:
            if not feed.wait_connected(10):
                return 1
            _wait(lambda: bool(done), 5)
            sim.fill(earlier, 70, 190.50)
            sell = sim.place_order("MSFT", "sell", 10, 425.00)
            sim.cancel(sell)
            _wait(lambda: feed.stats.events >= 11, 5)
            time.sleep(0.2)
    return 0


def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


if __name__ == "__main__":
    sys.exit(main())
