"""The IBKR simulator and feed factory used by the engine tests and the IBKR tests."""

from __future__ import annotations

from typing import Any, Callable, Iterator, List

import pytest

from brokerfeeds import IbkrFeed
from brokerfeeds.testing import IbkrSimulator
from helpers import FAST_RECONNECT


@pytest.fixture
def sim(request: pytest.FixtureRequest) -> Iterator[IbkrSimulator]:
    """An IBKR simulator with fast heartbeats; options by indirect parametrization
    (``@pytest.mark.parametrize("sim", [{"str_order_id": True}], indirect=True)``)."""
    options = getattr(request, "param", None) or {}
    with IbkrSimulator(hb_interval=0.1, **options) as simulator:
        yield simulator


@pytest.fixture
def make_feed(sim: IbkrSimulator) -> Iterator[Callable[..., IbkrFeed]]:
    """Make IbkrFeeds on ``sim`` with short timings; every one is stopped afterwards."""
    feeds: List[IbkrFeed] = []

    def make(**kwargs: Any) -> IbkrFeed:
        options = dict(url=sim.url, rest_url=sim.rest_url, heartbeat_interval=0.5, stale_after=1.0,
                       reconnect=FAST_RECONNECT, session_poll=0.1)
        options.update(kwargs)
        feed = IbkrFeed(**options)  # type: ignore[arg-type]
        feeds.append(feed)
        return feed

    yield make
    for feed in feeds:
        feed.stop()
