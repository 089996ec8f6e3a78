"""A Tk window listing live IBKR orders, updated in place.

The feed runs with ``dispatch="queue"``: its callbacks run only inside
``feed.process_events()``, which the window calls from Tk's own thread every 50 ms via
``after`` — so callbacks may touch widgets freely (Tk is not thread-safe).

    python examples/tk_orders_window.py                  # simulator with scripted orders
    python examples/tk_orders_window.py --gateway https://localhost:5000 --insecure
    python examples/tk_orders_window.py --seconds 5      # close by itself after 5 s

It needs a display (a desktop session, or an X server such as ``xvfb-run``): Tk cannot
open a window without one. Closing the window or Ctrl-C in the terminal stops the feed
cleanly. The same pump in Qt is ``examples/qt_orders_window.py``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tkinter as tk
from tkinter import ttk
from typing import Any, Dict, Optional

from brokerfeeds import IbkrFeed
from brokerfeeds.display import filled, money, quantity, side
from brokerfeeds.events import Order

COLUMNS = ("order", "symbol", "side", "quantity", "filled", "avg", "status")


class OrdersWindow:
    """One row per order; rows change as the orders do."""

    def __init__(self, root: tk.Tk, feed: IbkrFeed) -> None:
        self.root = root
        self.feed = feed
        self.rows: Dict[str, str] = {}
        root.title("brokerfeeds — live orders")
        self.table = ttk.Treeview(root, columns=COLUMNS, show="headings", height=12)
        for column in COLUMNS:
            self.table.heading(column, text=column.title())
            self.table.column(column, width=90, anchor="e" if column in ("quantity", "filled", "avg") else "w")
        self.table.pack(fill="both", expand=True)
        self.status = tk.StringVar(value="connecting ...")
        ttk.Label(root, textvariable=self.status).pack(fill="x")
        feed.on_order(self.show_order)
        feed.on_connect(lambda connected: self.status.set("connected"))
        feed.on_disconnect(lambda down: self.status.set(f"disconnected: {down.reason}"))
        root.protocol("WM_DELETE_WINDOW", self.close)
        self.pump()

    def show_order(self, order: Order) -> None:
        values = (order.order_id, order.symbol or "", side(order.side), quantity(order.quantity), filled(order),
                  money(order.avg_price) if order.avg_price is not None else "",
                  order.status.value.replace("_", " ").lower())
        row = self.rows.get(order.order_id)
        if row is None:
            self.rows[order.order_id] = self.table.insert("", "end", values=values)
        else:
            self.table.item(row, values=values)

    def pump(self) -> None:
        self.feed.process_events(max_events=500)
        self.root.after(50, self.pump)

    def close(self) -> None:
        self.feed.stop()
        self.root.destroy()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateway", help="gateway base URL, e.g. https://localhost:5000")
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("--seconds", type=float, default=None, help="close the window after this long")
    parser.add_argument("--pace", type=float, default=0.6, help="seconds between the simulator's scripted steps")
    args = parser.parse_args()
    sim: Optional[Any] = None
    if args.gateway:
        base = args.gateway.rstrip("/")
        feed = IbkrFeed(url=base.replace("http", "ws", 1) + "/v1/api/ws", rest_url=base + "/v1/api",
                        verify=not args.insecure, dispatch="queue")
    else:
        from brokerfeeds.testing import IbkrSimulator

        sim = IbkrSimulator().start()
        feed = IbkrFeed(url=sim.url, rest_url=sim.rest_url, dispatch="queue")
    feed.subscribe_orders()
    root = tk.Tk()
    window = OrdersWindow(root, feed)
    # Python runs signal handlers between Tk events; the 50 ms pump guarantees there are some.
    signal.signal(signal.SIGINT, lambda signum, frame: root.after(0, window.close))
    feed.start()
    print("window open: close it or press Ctrl-C to stop", flush=True)
    if sim is not None:
        script(root, sim, args.pace)
    if args.seconds:
        root.after(int(args.seconds * 1000), window.close)
    try:
        root.mainloop()
    finally:
        feed.stop()
        if sim is not None:
            sim.stop()
    print(f"{len(window.rows)} orders shown")
    return 0


def script(root: tk.Tk, sim: Any, pace: float = 0.6) -> None:
    """Scripted activity for the simulator, one step every ``pace`` seconds."""
    ids: Dict[str, str] = {}
    steps: list = [
        lambda: ids.update(a=sim.place_order("AAPL", "BUY", 100, 190.5)),
        lambda: ids.update(b=sim.place_order("MSFT", "SELL", 20, 425.0)),
        lambda: sim.fill(ids["a"], 40, 190.45),
        lambda: sim.fill(ids["a"], 60, 190.50),
        lambda: sim.cancel(ids["b"]),
    ]
    for i, step in enumerate(steps):
        root.after(int(pace * 1000) * (i + 1), step)


if __name__ == "__main__":
    sys.exit(main())
