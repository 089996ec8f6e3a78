"""Stream level-1 quotes from IBKR: merged snapshots, re-subscribed before IBKR's
10-minute expiry and after every reconnect, without you doing anything.

    python examples/ibkr_market_data.py                  # against the built-in simulator
    python examples/ibkr_market_data.py --gateway https://localhost:5000 --insecure 265598 8314
    python examples/ibkr_market_data.py --url ws://127.0.0.1:5000/v1/api/ws --rest-url http://127.0.0.1:5001/v1/api

With a gateway, it runs until Ctrl-C, which stops cleanly.
"""

from __future__ import annotations

import argparse
import sys
import time

from brokerfeeds import IbkrFeed
from brokerfeeds.display import money, quantity
from brokerfeeds.events import Quote


def show(quote: Quote) -> None:
    print(f"{quote.instrument:>8}  last {money(quote.last)}  bid {money(quote.bid)} x {quantity(quote.bid_size)}  "
          f"ask {money(quote.ask)} x {quantity(quote.ask_size)}  volume {quantity(quote.volume)}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("conids", nargs="*", default=["265598"], help="contract ids (default: AAPL)")
    parser.add_argument("--gateway", help="gateway base URL, e.g. https://localhost:5000")
    parser.add_argument("--url", help="the WebSocket URL (instead of the one --gateway implies)")
    parser.add_argument("--rest-url", help="the REST base URL (instead of the one --gateway implies)")
    parser.add_argument("--insecure", action="store_true", help="accept the gateway's self-signed certificate")
    args = parser.parse_args()
    if args.gateway or args.url:
        base = (args.gateway or "https://localhost:5000").rstrip("/")
        feed = IbkrFeed(url=args.url or base.replace("http", "ws", 1) + "/v1/api/ws",
                        rest_url=args.rest_url or base + "/v1/api", verify=not args.insecure)
        feed.on_quote(show)
        for conid in args.conids:
            feed.subscribe_quotes(conid)
        try:
            feed.run_forever()  # Ctrl-C stops cleanly
        except KeyboardInterrupt:
            pass  # run_forever stopped the feed
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
