"""Stream level-1 quotes from IBKR: merged snapshots, re-subscribed before IBKR's
10-minute expiry and after every reconnect, without you doing anything.

    python examples/ibkr_market_data.py                  # against the built-in simulator
    python examples/ibkr_market_data.py --gateway https://localhost:5000 --insecure 265598 8314
"""

from __future__ import annotations

import argparse
import sys
import time

from brokerfeeds import IbkrFeed
from brokerfeeds.events import Quote


def show(quote: Quote) -> None:
    print(f"{quote.instrument:>8}  last {quote.last}  bid {quote.bid} x {quote.bid_size}  "
          f"ask {quote.ask} x {quote.ask_size}  volume {quote.volume}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("conids", nargs="*", default=["265598"], help="contract ids (default: AAPL)")
    parser.add_argument("--gateway", help="gateway base URL, e.g. https://localhost:5000")
    parser.add_argument("--insecure", action="store_true", help="accept the gateway's self-signed certificate")
    args = parser.parse_args()
    if args.gateway:
        base = args.gateway.rstrip("/")
        feed = IbkrFeed(url=base.replace("http", "ws", 1) + "/v1/api/ws", rest_url=base + "/v1/api",
                        verify=not args.insecure)
        feed.on_quote(show)
        for conid in args.conids:
            feed.subscribe_quotes(conid)
        feed.run_forever()
        return 0

    from brokerfeeds.testing import IbkrSimulator

    with IbkrSimulator() as sim:
        feed = IbkrFeed(url=sim.url, rest_url=sim.rest_url)
        feed.on_quote(show)
        for conid in args.conids:
            feed.subscribe_quotes(conid)
        with feed:
            feed.wait_connected(10)
            time.sleep(0.3)
            conid = args.conids[0]
            sim.tick(conid, last="190.10", bid="190.05", ask="190.15", bid_size="300", ask_size="200")
            sim.tick(conid, last="190.12", volume="1.5K")  # a delta: bid/ask are kept from before
            sim.tick(conid, bid="190.11")
            time.sleep(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
