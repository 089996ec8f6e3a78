"""Stream your Clear Street Studio account activity: orders, fills, positions, buying power.

Every sequenced message reaches your callbacks exactly once and in order, across
reconnects: after a reconnect the server replays the whole trading day, and the feed
drops what you already had and marks what you missed with ``replayed=True``.

    python examples/clearstreet_activity.py                     # against the built-in simulator
    CLEARSTREET_CLIENT_ID=... CLEARSTREET_CLIENT_SECRET=... \\
        python examples/clearstreet_activity.py --account 100000 [--sandbox] [--marks marks.json]

With credentials it runs until Ctrl-C, which stops cleanly. ``--url``, ``--rest-url`` and
``--auth-url`` point it elsewhere (``brokerfeeds simulate --broker clearstreet`` prints them).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, List

from brokerfeeds.brokers.clearstreet import AUTH_URL, ClearStreetFeed, JsonFileMarkStore
from brokerfeeds.display import filled, money, quantity, side
from brokerfeeds.events import Balance, Order, Position, ReplayComplete, Trade


def show_order(order: Order) -> None:
    tag = " (replayed)" if order.replayed else ""
    print(f"order {order.order_id}: {side(order.side)} {quantity(order.quantity)} {order.symbol} "
          f"-> {order.status.value} ({order.broker_status}), filled {filled(order)}{tag}", flush=True)


def show_fill(trade: Trade) -> None:
    print(f"  fill {quantity(trade.quantity)} {trade.symbol} @ {money(trade.price)} ({trade.trade_id})"
          f"{' (replayed)' if trade.replayed else ''}", flush=True)


def show_position(position: Position) -> None:
    print(f"  position {position.symbol}: {quantity(position.quantity)} @ {money(position.avg_price)}", flush=True)


def show_balance(balance: Balance) -> None:
    print(f"  buying power {balance.account}: {money(balance.buying_power)}", flush=True)


def show_replay_done(done: ReplayComplete) -> None:
    print(f"-- account {done.account}: replay complete{' (timed out)' if done.timed_out else ''}; live now",
          flush=True)


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
    parser.add_argument("--url", help="the WebSocket URL (default: production or --sandbox)")
    parser.add_argument("--rest-url", help="the REST base URL (default: production or --sandbox)")
    parser.add_argument("--auth-url", default=AUTH_URL, help="the OAuth2 token endpoint")
    args = parser.parse_args()
    client_id = os.environ.get("CLEARSTREET_CLIENT_ID")
    client_secret = os.environ.get("CLEARSTREET_CLIENT_SECRET")
    if client_id and client_secret:
        if not args.account:
            parser.error("--account is required with real credentials")
        host = "sandbox-api.clearstreet.io" if args.sandbox else "api.clearstreet.io"
        feed = ClearStreetFeed(
            token_provider=ClearStreetFeed.client_credentials(client_id, client_secret, auth_url=args.auth_url),
            url=args.url or f"wss://{host}/studio/v2/ws", rest_url=args.rest_url or f"https://{host}/studio/v2",
            sequence_store=JsonFileMarkStore(args.marks) if args.marks else None)
        watch(feed, args.account)
        feed.on_connect(lambda c: print("-- reconnected" if c.reconnect else "-- connected", flush=True))
        try:
            feed.run_forever()  # Ctrl-C stops cleanly
        except KeyboardInterrupt:
            pass  # run_forever stopped the feed
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
