"""Firstock (India) WebSocket: adapter and feed.

* :mod:`brokerfeeds.brokers.firstock.protocol`: :class:`FirstockProtocol`, the sans-I/O
  adapter (frames → outputs), its helpers (status mapping, tick and depth merging, paise),
  and the protocol notes: authentication answers, orders and positions, the market feed,
  fills and the order book, the status table.
* :mod:`brokerfeeds.brokers.firstock.feed`: :class:`FirstockFeed`: login, the socket's
  URL, REST reconciliation and P&L polling, the engine's hooks; keep-alive notes.

Sources: the project's docs/firstock.md. Everything public is importable from here.
"""

from __future__ import annotations

from .feed import DEFAULT_REST_URL, DEFAULT_URL, FirstockFeed, split_instruments
# Public names outside ``__all__`` (as in the single module before): re-exported explicitly.
from .protocol import BOOK_RETRIES as BOOK_RETRIES
from .protocol import ROUTES as ROUTES
from .protocol import STATUS_MAP, FirstockProtocol, map_status
from .protocol import merge_depth as merge_depth
from .protocol import quote_prices as quote_prices

__all__ = [
    "FirstockFeed",
    "FirstockProtocol",
    "STATUS_MAP",
    "DEFAULT_URL",
    "DEFAULT_REST_URL",
    "split_instruments",
    "map_status",
]
