"""``brokerfeeds simulate``: run a broker's simulator in the foreground.

It prints, ready to paste into another shell, the ``export`` lines (the simulator's own
made-up credentials) and the ``brokerfeeds watch ...`` command that connect to it. With
``--activity`` it trades by itself: every ``--interval`` seconds (1 s) one step of a
cycle that places an order, fills it in two parts, places a second one and cancels it,
and moves the price (quotes, where the broker has them). Ctrl-C stops it (exit code 0).

    brokerfeeds simulate --broker upstox --port 8765 --activity
"""

from __future__ import annotations

import argparse
import shlex
import threading
import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, TextIO, Tuple

from .watch import BROKERS, stop_on_signals

if TYPE_CHECKING:
    from .testing import SimulatorBase

__all__ = ["add_arguments", "run", "Script"]

Out = Callable[[str], None]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``brokerfeeds simulate``."""
    parser.add_argument("--broker", required=True, choices=BROKERS)
    parser.add_argument("--port", type=int, default=0,
                        help="the WebSocket port (default: any free one); REST listens on the next one")
    parser.add_argument("--rest-port", type=int, default=None, help="the REST port (default: --port + 1)")
    parser.add_argument("--activity", action="store_true",
                        help="place, fill and cancel orders (and tick quotes) by itself until stopped")
    parser.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                        help="seconds between two steps of --activity (default 1)")
    parser.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long")


def _simulator(broker: str, port: int, rest_port: int) -> "SimulatorBase":
    from .testing import ClearStreetSimulator, FirstockSimulator, IbkrSimulator, UpstoxSimulator

    ports: Dict[str, Any] = {"port": port, "rest_port": rest_port}
    if broker == "ibkr":
        return IbkrSimulator(**ports)
    if broker == "upstox":
        return UpstoxSimulator(**ports)
    if broker == "firstock":
        return FirstockSimulator(**ports)
    return ClearStreetSimulator(**ports)


def connect_lines(broker: str, sim: Any) -> Tuple[List[str], str]:
    """The ``export`` lines and the ``brokerfeeds watch`` command that connect to ``sim``."""
    q = shlex.quote
    exports: List[Tuple[str, str]] = []
    command = ["brokerfeeds", "watch", "--broker", broker]
    if broker == "ibkr":
        command += ["--url", sim.url, "--rest-url", sim.rest_url, "--quotes", "265598"]
    elif broker == "upstox":
        exports = [("UPSTOX_ACCESS_TOKEN", sim.token)]
        command += ["--rest-url", sim.rest_url]
    elif broker == "firstock":
        exports = [("FIRSTOCK_USER_ID", sim.user_id), ("FIRSTOCK_JKEY", sim.jkey)]
        command += ["--url", sim.url, "--rest-url", sim.rest_url, "--quotes", "NSE:26000", "NSE:2885"]
    else:
        exports = [("CLEARSTREET_CLIENT_ID", sim.client_id), ("CLEARSTREET_CLIENT_SECRET", sim.client_secret),
                   ("CLEARSTREET_ACCOUNT", sim.account)]
        command += ["--url", sim.url, "--rest-url", sim.rest_url, "--auth-url", sim.auth_url]
    return [f"export {name}={q(value)}" for name, value in exports], " ".join(q(part) for part in command)


class Script:
    """The ``--activity`` cycle for one simulator: call :meth:`step` every second or so.

    Steps, repeating: place a BUY of 10; fill 4; fill the other 6 and place a SELL of 5;
    cancel the SELL. Every step moves the price by a few cents (and ticks the quotes
    the ``watch`` command subscribes, where the broker has quotes).
    """

    def __init__(self, broker: str, sim: Any, out: Out) -> None:
        self.broker = broker
        self.sim = sim
        self.out = out
        self.steps = 0
        self._buy: Optional[str] = None
        self._sell: Optional[str] = None
        self._held = 0
        self.symbol, base = {"ibkr": ("AAPL", "190.10"), "upstox": ("NHPC-EQ", "92.50"),
                             "firstock": ("RELIANCE-EQ", "1395.60"), "clearstreet": ("AAPL", "190.10")}[broker]
        self._base = Decimal(base)
        if broker == "firstock":  # the instruments the watch command subscribes
            sim.set_quote("NSE:26000", i_last_traded_price=2532065)
            sim.set_quote("NSE:2885", i_last_traded_price=int(self._base * 100))

    def price(self) -> Decimal:
        """The price now: a slow zig-zag around the start price, in steps of 0.05."""
        phase = self.steps % 20
        return self._base + Decimal("0.05") * (phase if phase < 10 else 20 - phase)

    def step(self) -> None:
        """One step of the cycle."""
        price = self.price()
        phase = self.steps % 4
        self.steps += 1
        self._tick(price)
        if phase == 0:
            self._buy = self._place("BUY", 10, price)
        elif phase == 1 and self._buy is not None:
            self._fill(self._buy, 4, price)
        elif phase == 2 and self._buy is not None:
            self._fill(self._buy, 6, price)
            self._held += 10
            self._position(price)
            self._sell = self._place("SELL", 5, price + Decimal("0.50"))
        elif phase == 3 and self._sell is not None:
            self.sim.cancel(self._sell)
            self.out(f"sim: cancelled order {self._sell}")

    # ------------------------------------------------------------- per broker
    def _place(self, side: str, quantity: int, price: Decimal) -> str:
        sim, value = self.sim, float(price)
        if self.broker == "ibkr":
            order_id = str(sim.place_order(self.symbol, side, quantity, value))
        elif self.broker == "upstox":
            order_id = str(sim.place_order(self.symbol, side, quantity, value, instrument_key=_UPSTOX_KEY))
        elif self.broker == "firstock":
            order_id = str(sim.place_order(self.symbol, side[0], quantity, value, token="2885"))
        else:
            order_id = str(sim.place_order(self.symbol, side.lower(), quantity, value))
        self.out(f"sim: placed {side} {quantity} {self.symbol} @ {price} (order {order_id})")
        return order_id

    def _fill(self, order_id: str, quantity: int, price: Decimal) -> None:
        self.sim.fill(order_id, quantity, float(price))
        self.out(f"sim: filled {quantity} of order {order_id} @ {price}")

    def _position(self, price: Decimal) -> None:
        sim, value = self.sim, float(price)
        if self.broker == "ibkr":
            sim.set_position(265598, self.symbol, self._held, value)
            sim.set_pnl(dpl=float(self._held) * 0.05, upl=float(self._held) * 0.05)
        elif self.broker == "firstock":
            sim.set_position(self.symbol, self._held, value, token="2885", ltp=value)
        # Upstox and Clear Street: each fill already publishes the position.

    def _tick(self, price: Decimal) -> None:
        sim = self.sim
        if self.broker == "ibkr":
            sim.tick(265598, last=str(price), bid=str(price - Decimal("0.05")), ask=str(price + Decimal("0.05")))
        elif self.broker == "upstox":
            sim.set_last_price(_UPSTOX_KEY, float(price))
        elif self.broker == "firstock":  # prices in paise; depth merges level by level
            paise = int(price * 100)
            sim.tick("NSE:2885", i_last_traded_price=paise, best_buy=[{"price": paise - 5}],
                     best_sell=[{"price": paise + 5}])


_UPSTOX_KEY = "NSE_EQ|INE848E01016"  # NHPC


def run(args: argparse.Namespace, out: Optional[TextIO] = None) -> int:
    """Run ``brokerfeeds simulate`` with parsed ``args``; returns the exit code."""
    import sys

    stream = out if out is not None else sys.stdout

    def say(line: str) -> None:
        stream.write(line + "\n")
        stream.flush()

    if args.interval <= 0:
        sys.stderr.write("brokerfeeds simulate: --interval must be > 0 seconds\n")
        return 2
    rest_port = args.rest_port if args.rest_port is not None else (args.port + 1 if args.port else 0)
    stop = threading.Event()
    try:
        sim = _simulator(args.broker, args.port, rest_port)
        try:
            sim.start()
        except OSError as exc:
            sys.stderr.write(f"brokerfeeds simulate: cannot listen on port {args.port} / {rest_port}: {exc}\n")
            return 1
        restore = stop_on_signals(stop)
        try:
            exports, command = connect_lines(args.broker, sim)
            say(f"# {args.broker} simulator: WebSocket on {sim.ws_base}, REST on {sim.rest_base}")
            say("# In another shell, paste:")
            for line in exports:
                say(line)
            say(command)
            say("# Ctrl-C stops the simulator." + ("" if args.activity else
                                                    " (--activity makes it place and fill orders by itself)"))
            script = Script(args.broker, sim, say) if args.activity else None
            deadline = None if args.duration is None else time.monotonic() + args.duration
            while not stop.wait(args.interval if script is not None else 0.2):
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if script is not None:
                    script.step()
        finally:
            restore()
            sim.stop()
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were in place
        return 0
    except BrokenPipeError:
        return 0
    return 0
