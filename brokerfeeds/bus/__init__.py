"""Many programs, one account: a feed's events published to Redis Streams, read anywhere.

Brokers cap the sessions one login may open, while a desk has many programs that want the
same account's events (a blotter, a risk monitor, a P&L tracker, a logger...). One
process holds the broker session and publishes every normalised event to Redis Streams;
every other program reads them from Redis, with consumer groups, acknowledgements and
replay. Needs the ``redis`` extra (``pip install 'brokerfeeds[redis]'``, redis-py).

    # the one process that talks to the broker
    from brokerfeeds import IbkrFeed
    from brokerfeeds.bus import RedisPublisher

    feed = IbkrFeed(...)
    feed.add_publisher(RedisPublisher("redis://localhost:6379/0"))
    feed.subscribe_orders()
    feed.run_forever()

    # any number of other processes
    from brokerfeeds.bus import RedisEvents

    events = RedisEvents("redis://localhost:6379/0", "brokerfeeds:ibkr:*", group="risk")
    events.on_order(lambda order: print(order.order_id, order.status))
    events.run_forever()

* :class:`RedisPublisher` (:mod:`brokerfeeds.bus.publisher`): appends every account event
  (and, optionally, quotes) with ``XADD``, in the events' JSON form
  (:func:`brokerfeeds.events.to_json`), with a run id and a sequence number, on a thread
  of its own in pipelined batches; buffers (bounded) while Redis is away.
* :class:`RedisEvents` (:mod:`brokerfeeds.bus.consumer`): the typed events back, as an
  iterator or through ``on_order``-style callbacks; consumer groups with ``XACK`` after
  the callback, ``XAUTOCLAIM`` of a dead consumer's entries, de-duplication.
* ``brokerfeeds tail URL`` prints the events of the streams (:mod:`brokerfeeds.bus.cli`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._common import (
    DEFAULT_QUOTE_STREAM,
    DEFAULT_STREAM,
    DEFAULT_URL,
    NO_ACCOUNT,
    BusAuthenticationError,
    BusConnectionFailed,
    BusDropped,
    BusError,
    safe_url,
)

if TYPE_CHECKING:  # imported on first use (below): they need redis-py, the command line does not
    from .consumer import BusEntry, ConsumerStats, RedisEvents
    from .publisher import DEFAULT_MAX_BUFFER, DEFAULT_MAXLEN, PublisherStats, RedisPublisher

_LAZY = {"RedisPublisher": "publisher", "PublisherStats": "publisher", "DEFAULT_MAXLEN": "publisher",
         "DEFAULT_MAX_BUFFER": "publisher", "RedisEvents": "consumer", "BusEntry": "consumer",
         "ConsumerStats": "consumer"}

__all__ = [
    "RedisPublisher",
    "RedisEvents",
    "BusEntry",
    "PublisherStats",
    "ConsumerStats",
    "BusError",
    "BusConnectionFailed",
    "BusAuthenticationError",
    "BusDropped",
    "DEFAULT_URL",
    "DEFAULT_STREAM",
    "DEFAULT_QUOTE_STREAM",
    "DEFAULT_MAXLEN",
    "DEFAULT_MAX_BUFFER",
    "NO_ACCOUNT",
    "safe_url",
]


def __getattr__(name: str) -> Any:
    """The publisher and consumer classes, imported when first asked for (they need the
    ``redis`` extra; without it, asking raises ImportError saying how to install it)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
