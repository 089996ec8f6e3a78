"""A Qt (PySide6) window listing live IBKR orders, updated in place.

The feed runs with ``dispatch="queue"``: its callbacks run only inside
``feed.process_events()``, which a ``QTimer`` calls from Qt's own (GUI) thread every
50 ms — so callbacks may touch widgets freely (Qt widgets belong to the GUI thread).
The same pump in Tk is ``examples/tk_orders_window.py``.

    pip install 'brokerfeeds[examples]'                  # PySide6 (and the simulator)
    python examples/qt_orders_window.py                  # simulator with scripted orders
    python examples/qt_orders_window.py --gateway https://localhost:5000 --insecure
    python examples/qt_orders_window.py --seconds 5      # close by itself after 5 s
    QT_QPA_PLATFORM=offscreen python examples/qt_orders_window.py --seconds 5   # no display

Closing the window or Ctrl-C in the terminal stops the feed cleanly.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any, Callable, Dict, List, Optional

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QApplication, QLabel, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget

from brokerfeeds import IbkrFeed
from brokerfeeds.display import money, quantity, side
from brokerfeeds.display import filled as filled_of
from brokerfeeds.events import Order

COLUMNS = ("order", "symbol", "side", "quantity", "filled", "avg", "status")
NUMERIC = ("quantity", "filled", "avg")


class OrdersWindow(QWidget):
    """One row per order; rows change as the orders do."""

    def __init__(self, feed: IbkrFeed) -> None:
        super().__init__()
        self.feed = feed
        self.rows: Dict[str, int] = {}
        self.setWindowTitle("brokerfeeds — live orders")
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels([c.title() for c in COLUMNS])
        self.status = QLabel("connecting ...")
        layout = QVBoxLayout(self)
        layout.addWidget(self.table)
        layout.addWidget(self.status)
        self.resize(680, 360)
        feed.on_order(self.show_order)
        feed.on_connect(lambda connected: self.status.setText("connected"))
        feed.on_disconnect(lambda down: self.status.setText(f"disconnected: {down.reason}"))
        self.pump = QTimer(self)
        self.pump.timeout.connect(self.process)
        self.pump.start(50)

    def show_order(self, order: Order) -> None:
        values = (order.order_id, order.symbol or "", side(order.side), quantity(order.quantity), filled_of(order),
                  money(order.avg_price) if order.avg_price is not None else "",
                  order.status.value.replace("_", " ").lower())
        row = self.rows.get(order.order_id)
        if row is None:
            row = self.rows[order.order_id] = self.table.rowCount()
            self.table.insertRow(row)
        for column, (name, value) in enumerate(zip(COLUMNS, values)):
            item = QTableWidgetItem(value)
            if name in NUMERIC:
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self.table.setItem(row, column, item)

    def process(self) -> None:
        """Run the feed's pending callbacks here, on the GUI thread."""
        self.feed.process_events(max_events=500)

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        self.pump.stop()
        self.feed.stop()
        super().closeEvent(event)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateway", help="gateway base URL, e.g. https://localhost:5000")
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("--seconds", type=float, default=None, help="close the window after this long")
    parser.add_argument("--pace", type=float, default=0.6, help="seconds between the simulator's scripted steps")
    args = parser.parse_args()
    app = QApplication(sys.argv[:1])
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
    window = OrdersWindow(feed)
    window.show()
    # Python runs signal handlers between Qt events; the 50 ms pump guarantees there are some.
    signal.signal(signal.SIGINT, lambda signum, frame: QTimer.singleShot(0, window.close))
    feed.start()
    print("window open: close it or press Ctrl-C to stop", flush=True)
    if sim is not None:
        script(sim, args.pace)
    if args.seconds:
        QTimer.singleShot(int(args.seconds * 1000), window.close)
    try:
        app.exec()
    finally:
        feed.stop()
        if sim is not None:
            sim.stop()
    print(f"{len(window.rows)} orders shown")
    for row in range(window.table.rowCount()):
        print("  " + "  ".join(window.table.item(row, c).text() for c in range(len(COLUMNS))))
    return 0


def script(sim: Any, pace: float = 0.6) -> None:
    """Scripted activity for the simulator, one step every ``pace`` seconds."""
    ids: Dict[str, str] = {}
    steps: List[Callable[[], Any]] = [
        lambda: ids.update(a=sim.place_order("AAPL", "BUY", 100, 190.5)),
        lambda: ids.update(b=sim.place_order("MSFT", "SELL", 20, 425.0)),
        lambda: sim.fill(ids["a"], 40, 190.45),
        lambda: sim.fill(ids["a"], 60, 190.50),
        lambda: sim.cancel(ids["b"]),
    ]
    for i, step in enumerate(steps):
        QTimer.singleShot(int(pace * 1000) * (i + 1), step)


if __name__ == "__main__":
    sys.exit(main())
