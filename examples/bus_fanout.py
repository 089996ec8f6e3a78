"""Many programs, one account: one process holds the broker session, two others read its
events from Redis Streams.

    python examples/bus_fanout.py                                  # a temporary redis-server (from PATH)
    python examples/bus_fanout.py --redis redis://localhost:6379/0 # your Redis

It starts three processes: a *publisher* (an IBKR feed on the built-in simulator, with a
RedisPublisher attached: orders are placed and filled, P&L moves), a *printer* (prints every
event) and a *P&L tracker* (follows the fills and the broker's P&L). Each reader is its own
consumer group, so each gets every event; each acknowledges what it has handled. The
session ends with a notice the publisher sends last; the readers stop on it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
import uuid
from decimal import Decimal
from typing import Dict, List, Optional, Tuple

END = "end of the example session"


# ------------------------------------------------------------------ the three roles
def publisher(url: str, prefix: str, seconds: float) -> int:
    """Hold the broker session (here the IBKR simulator) and publish every account event."""
    from brokerfeeds import IbkrFeed
    from brokerfeeds.bus import RedisPublisher
    from brokerfeeds.events import Notice
    from brokerfeeds.testing import IbkrSimulator

    pace = max(0.05, seconds / 10)
    with IbkrSimulator(hb_interval=1.0) as sim:
        feed = IbkrFeed(url=sim.url, rest_url=sim.rest_url)
        bus = RedisPublisher(url, f"{prefix}:{{broker}}:{{account}}")
        feed.add_publisher(bus)
        feed.on_error(lambda error: print(f"! {error}", flush=True))
        feed.subscribe_orders()
        feed.subscribe_trades(realtime_only=True)
        feed.subscribe_pnl()
        with feed:
            if not feed.wait_connected(10) or not bus.wait_connected(10):
                print("could not connect", flush=True)
                return 1
            print(f"publishing to {bus.url}, streams {bus.stream}", flush=True)
            buy = sim.place_order("AAPL", "BUY", 100, 190.10)
            time.sleep(pace)
            sim.fill(buy, 40, 190.10)
            sim.set_pnl(dpl=0.0, upl=0.0)
            time.sleep(pace)
            sim.fill(buy, 60, 190.20)
            sim.set_pnl(dpl=4.0, upl=4.0)
            time.sleep(pace)
            sell = sim.place_order("AAPL", "SELL", 50, 190.60)
            time.sleep(pace)
            sim.fill(sell, 50, 190.60)
            sim.set_pnl(dpl=24.0, upl=12.0)
            time.sleep(pace * 4)
            bus.publish(Notice(broker="ibkr", kind="status", text=END, account=sim.account))
        stats = bus.stats
    print(f"done: {stats.published} events published, {stats.pending} left", flush=True)
    return 0 if stats.pending == 0 else 1


def printer(url: str, prefix: str) -> int:
    """Print every event of the session."""
    from brokerfeeds.bus import BusEntry, RedisEvents
    from brokerfeeds.demo import describe

    events = RedisEvents(url, f"{prefix}:*", group="printer", start="0", block=0.2, rescan=0.5)
    count = 0

    def show(entry: BusEntry) -> None:
        nonlocal count
        count += 1
        print(f"#{entry.seq:<3} {describe(entry.event)}", flush=True)
        if getattr(entry.event, "text", None) == END:
            events.stop()

    events.on_entry(show)
    events.run_forever()
    print(f"done: {count} events", flush=True)
    return 0


def pnl_tracker(url: str, prefix: str) -> int:
    """Follow the account's fills (average-cost position and realized P&L) and the broker's P&L."""
    from brokerfeeds.bus import RedisEvents
    from brokerfeeds.events import Notice, PnL, Side, Trade

    events = RedisEvents(url, f"{prefix}:*", group="pnl", start="0", block=0.2, rescan=0.5)
    book: Dict[str, Tuple[Decimal, Decimal]] = {}  # symbol -> (signed quantity, average cost)
    realized = Decimal(0)
    fills = 0
    daily: Optional[Decimal] = None

    def on_trade(trade: Trade) -> None:
        nonlocal realized, fills
        if trade.quantity is None or trade.price is None or trade.symbol is None:
            return
        fills += 1
        signed = trade.quantity if trade.side is Side.BUY else -trade.quantity
        held, cost = book.get(trade.symbol, (Decimal(0), Decimal(0)))
        if held == 0 or (held > 0) == (signed > 0):  # opening or adding
            total = held + signed
            cost = (cost * abs(held) + trade.price * abs(signed)) / abs(total)
            held = total
        else:  # closing (part of) the position
            closed = min(abs(signed), abs(held))
            realized += (trade.price - cost) * closed * (1 if held > 0 else -1)
            held += signed
        book[trade.symbol] = (held, cost if held else Decimal(0))
        print(f"{trade.symbol} {signed:+} @ {trade.price} -> position {held} avg {cost:.4f}, "
              f"realized {realized:.2f}", flush=True)

    def on_pnl(pnl: PnL) -> None:
        nonlocal daily
        daily = pnl.daily_pnl
        print(f"broker P&L: daily {pnl.daily_pnl}, unrealized {pnl.unrealized_pnl}", flush=True)

    def on_notice(notice: Notice) -> None:
        if notice.text == END:
            events.stop()

    events.on_trade(on_trade)
    events.on_pnl(on_pnl)
    events.on_notice(on_notice)
    events.run_forever()
    positions = ", ".join(f"{s} {q}" for s, (q, _) in sorted(book.items())) or "none"
    print(f"done: {fills} fills; positions {positions}; realized {realized:.2f}; broker daily P&L {daily}",
          flush=True)
    return 0


# ------------------------------------------------------------------ the launcher
def _relay(name: str, process: "subprocess.Popen[str]") -> threading.Thread:
    def run() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            print(f"[{name}] {line.rstrip()}", flush=True)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def launch(url: str, seconds: float) -> int:
    prefix = f"fanout-{uuid.uuid4().hex[:8]}"  # streams of this run only
    processes: List[Tuple[str, "subprocess.Popen[str]"]] = []
    for role in ("printer", "pnl", "publisher"):  # the readers first: nothing is missed either way
        command = [sys.executable, __file__, "--role", role, "--redis", url, "--prefix", prefix,
                   "--seconds", str(seconds)]
        processes.append((role, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                 text=True)))
    relays = [_relay(name, process) for name, process in processes]
    codes = {}
    for name, process in reversed(processes):  # the publisher first, then the readers catch up
        try:
            codes[name] = process.wait(seconds + 30 if name == "publisher" else 15)
        except subprocess.TimeoutExpired:
            process.kill()
            codes[name] = process.wait()
            print(f"[{name}] did not finish in time", flush=True)
    for relay in relays:
        relay.join(2)
    return 0 if all(code == 0 for code in codes.values()) else 1


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", help="Redis URL (default: start a temporary redis-server from PATH)")
    parser.add_argument("--seconds", type=float, default=3.0, help="roughly how long the session lasts")
    parser.add_argument("--role", choices=("publisher", "printer", "pnl"), help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "publisher":
        return publisher(args.redis, args.prefix, args.seconds)
    if args.role == "printer":
        return printer(args.redis, args.prefix)
    if args.role == "pnl":
        return pnl_tracker(args.redis, args.prefix)
    if args.redis:
        return launch(args.redis, args.seconds)
    from brokerfeeds.testing.redis_server import RedisServer, redis_server_path

    if redis_server_path() is None:
        print("redis-server is not on PATH: install it (apt-get install redis-server) or pass --redis URL",
              file=sys.stderr)
        return 2
    with RedisServer() as server:
        print(f"temporary redis-server on {server.url}", flush=True)
        return launch(server.url, args.seconds)


if __name__ == "__main__":
    sys.exit(main())
