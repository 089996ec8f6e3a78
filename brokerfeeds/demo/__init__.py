"""``brokerfeeds demo``: a scripted trading session against a built-in simulator.

Each broker has a module here with ``run(out, duration) -> int``: it starts that broker's
simulator, connects the broker's feed to it, scripts a short session (orders, fills, a
forced disconnect and the automatic recovery) and writes one readable line per event
through ``out``. The return value is the process exit code.
"""

from __future__ import annotations

import importlib
import time
from typing import TYPE_CHECKING, Any, Callable, Tuple

from ..display import Describer, describe

if TYPE_CHECKING:
    from ..feed import Feed

__all__ = ["BROKERS", "run", "describe", "attach", "wait_until"]

BROKERS = ("ibkr", "upstox", "firstock", "clearstreet")

Out = Callable[[str], None]


def run(broker: str, out: Out = print, duration: float = 10.0) -> int:
    """Run ``broker``'s demo; returns an exit code."""
    if broker not in BROKERS:
        raise ValueError(f"unknown broker {broker!r}; choose from {', '.join(BROKERS)}")
    module = importlib.import_module(f"{__name__}.{broker}")
    return int(module.run(out, duration))


def attach(feed: "Feed[Any]", out: Out,
           kinds: Tuple[str, ...] = ("order", "trade", "position", "pnl", "holding", "balance",
                                     "quote", "notice", "connect", "disconnect", "error",
                                     "gtt_order", "locate", "replay_complete")) -> None:
    """Print every event of ``kinds`` from ``feed`` through ``out`` (one line each, formatted by
    :func:`brokerfeeds.display.describe`; a reconnect line names the reason of the disconnect)."""
    line = Describer()
    for kind in kinds:
        feed.on(kind, lambda item: out(line(item)))


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll ``predicate`` until it is true (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False
