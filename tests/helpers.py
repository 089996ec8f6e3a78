"""Test helpers shared by every broker's tests."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, List, Optional

from brokerfeeds import ReconnectPolicy
from brokerfeeds.feed import Feed

#: Reconnect quickly in tests (jitter kept: it is part of the behaviour under test).
FAST_RECONNECT = ReconnectPolicy(initial=0.05, factor=2.0, maximum=0.2, reset_after=0.5)

KINDS = ("order", "trade", "position", "pnl", "holding", "balance", "quote", "notice",
         "connect", "disconnect", "error", "message", "gtt_order", "locate", "replay_complete")


class Recorder:
    """Registers a callback for every kind on a feed and records what arrives, in order."""

    def __init__(self, feed: Feed, kinds: tuple = KINDS) -> None:
        self.events: List[tuple] = []
        self._cond = threading.Condition()
        for kind in kinds:
            feed.on(kind, self._make(kind))

    def _make(self, kind: str) -> Callable[[Any], None]:
        def record(item: Any) -> None:
            with self._cond:
                self.events.append((kind, item))
                self._cond.notify_all()
        record.__qualname__ = f"Recorder.{kind}"
        return record

    def of(self, kind: str) -> List[Any]:
        """Everything recorded for ``kind``."""
        with self._cond:
            return [item for k, item in self.events if k == kind]

    def wait_for(self, kind: str, predicate: Callable[[Any], bool] = lambda _: True,
                 timeout: float = 5.0, count: int = 1) -> List[Any]:
        """Wait until ``count`` items of ``kind`` match ``predicate``; returns them (asserts)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [i for k, i in self.events if k == kind and predicate(i)]
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [(k, type(i).__name__) for k, i in self.events][-20:]
                    raise AssertionError(f"timed out waiting for {count} {kind} event(s); last seen: {seen}")
                self._cond.wait(remaining)


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01,
               message: Optional[str] = None) -> None:
    """Poll ``predicate`` until true; assertion error after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    assert predicate(), message or "condition not met in time"


def feed_threads() -> List[threading.Thread]:
    """Live threads started by any feed."""
    return [t for t in threading.enumerate() if t.name.startswith("brokerfeeds-")]


def official_client(module: str):
    """Import an official broker client for a conformance test, or skip the test saying how
    to install it (the ``conformance`` extra)."""
    import pytest

    return pytest.importorskip(
        module, reason=f"official client {module!r} not installed: pip install -e '.[conformance]'")
