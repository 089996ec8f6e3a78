"""Watch your IBKR orders over OAuth 1.0a: no Client Portal Gateway, and a session that
survives IBKR's nightly reset by itself.

    python examples/ibkr_oauth_orders.py --simulate      # the simulator's OAuth mode, with a reset
    python examples/ibkr_oauth_orders.py                 # your consumer, from IBKR_OAUTH_* variables

The real run reads IBKR_OAUTH_CONSUMER_KEY, IBKR_OAUTH_ACCESS_TOKEN,
IBKR_OAUTH_ACCESS_TOKEN_SECRET, IBKR_OAUTH_SIGNATURE_KEY and IBKR_OAUTH_ENCRYPTION_KEY
(PEM file paths or PEM text), IBKR_OAUTH_DH_PRIME (hex) and optionally IBKR_OAUTH_REALM
("test_realm" for IBKR's TESTCONS consumer). Needs: pip install 'brokerfeeds[oauth]'.
"""

from __future__ import annotations

import argparse
import sys
import time

from brokerfeeds import IbkrFeed
from brokerfeeds.errors import BrokerFeedsError
from brokerfeeds.events import Notice, Order, Trade


def show_order(order: Order) -> None:
    print(f"{order.order_id}: {order.side.value if order.side else '?'} {order.quantity} {order.symbol} "
          f"-> {order.status.value} ({order.broker_status}), filled {order.filled_quantity} @ {order.avg_price}")


def show_fill(trade: Trade) -> None:
    print(f"  fill {trade.quantity} {trade.symbol} @ {trade.price} ({trade.trade_id})")


def show_notice(notice: Notice) -> None:
    print(f"  [{notice.kind}] {notice.text}")


def show_error(error: BrokerFeedsError) -> None:
    print(f"  ! {error}", file=sys.stderr)


def watch(feed: IbkrFeed) -> None:
    feed.on_order(show_order)
    feed.on_trade(show_fill)
    feed.on_notice(show_notice)
    feed.on_error(show_error)
    feed.subscribe_orders()
    feed.subscribe_trades()  # with history: fills made while the session was down come after it


def simulate() -> int:
    from brokerfeeds.testing import IbkrSimulator

    with IbkrSimulator(oauth=True, hb_interval=1.0) as sim:
        # The simulator plays api.ibkr.com: it holds the consumer's keys, checks every
        # signature and answers the live session token's Diffie-Hellman challenge.
        feed = IbkrFeed.oauth(sim.oauth_credentials(), session_poll=0.2)
        watch(feed)
        with feed:
            feed.wait_connected(10)
            time.sleep(0.3)
            order_id = sim.place_order("AAPL", "BUY", 100, 190.50)
            sim.fill(order_id, 30, 190.45)
            time.sleep(0.3)
            print("-- IBKR's nightly reset (1 s): the order fills meanwhile")
            sim.nightly_reset(1.0)
            sim.fill(order_id, 70, 190.50)
            if not feed.wait_connected(10) or not sim.wait_for(lambda: feed.state == "connected" and sim.tickles > 2):
                return 1
            time.sleep(1.5)
            stats = feed.stats
            print(f"-- {stats.reconnects} reconnect(s), {stats.extra.get('oauth_lst_renewals')} live session "
                  f"token(s), {stats.extra.get('session_outages')} session outage(s)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulate", action="store_true", help="run against the simulator's OAuth mode")
    parser.add_argument("--account", help="the account to reconcile (default: IBKR's selected one)")
    parser.add_argument("--compete", action="store_true",
                        help="take the brokerage session back from a competing login (TWS, the mobile app)")
    args = parser.parse_args()
    if args.simulate:
        return simulate()
    try:
        feed = IbkrFeed.oauth_from_env(account=args.account, compete=args.compete)
    except ValueError as exc:  # names the missing or invalid variable, never its value
        print(f"IBKR OAuth credentials: {exc}", file=sys.stderr)
        return 2
    watch(feed)
    feed.run_forever()  # Ctrl-C stops cleanly; survives the nightly reset by itself
    return 0


if __name__ == "__main__":
    sys.exit(main())
