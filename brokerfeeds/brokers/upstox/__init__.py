"""Upstox portfolio stream feed: adapter and feed.

* :mod:`brokerfeeds.brokers.upstox.protocol`: :class:`UpstoxProtocol`, the sans-I/O
  adapter (frames → outputs), its helpers (status mapping, IST timestamps, ``order_from``,
  ``UPDATE_TYPES``, ``ROUTES``) and the protocol notes: the fixed subscription, frames and
  liveness, timestamps, the status table, fills derived from order updates.
* :mod:`brokerfeeds.brokers.upstox.feed`: :class:`UpstoxFeed`: authorizing every connect,
  REST reconciliation and P&L polling, the daily 03:30 IST token expiry
  (``next_token_expiry``), the engine's hooks; their notes.

Sources: the project's docs/upstox.md. Everything public is importable from here.
"""

from __future__ import annotations

from .feed import UpstoxFeed, next_token_expiry
# Public names outside ``__all__`` (as in the single module before): re-exported explicitly.
from .protocol import ROUTES as ROUTES
from .protocol import IST, STATUS_MAP, UPDATE_TYPES, UpstoxProtocol, order_from, parse_ist
from .protocol import map_status as map_status

__all__ = [
    "UpstoxFeed",
    "UpstoxProtocol",
    "STATUS_MAP",
    "UPDATE_TYPES",
    "IST",
    "parse_ist",
    "next_token_expiry",
    "order_from",
]
