"""Clear Street Studio API v2 activity channel: adapter and feed, one module each.

* :mod:`.protocol`: :class:`ClearStreetProtocol`, the sans-I/O adapter (frames -> outputs:
  acks, replays, sequence marks, gaps, the server's clock), the helpers it decodes with
  (``order_from``, ``trade_from``, ``pnl_from``, ``map_status``, ``trading_day``,
  ``STATUS_MAP``) and its routes (``ROUTES``, ``EVENT_ROUTES``). Its docstring holds the
  protocol notes (sources: the project's docs/clearstreet.md).
* :mod:`.feed`: :class:`ClearStreetFeed` (tokens, REST P&L polling, persisting marks) and
  :class:`ClientCredentials` (OAuth2 with Clear Street's ``AUTH_URL`` and ``AUDIENCE``).

The mark stores (:class:`MarkStore`, :class:`JsonFileMarkStore`) live in the core,
:mod:`brokerfeeds.marks`. What the former single module ``clearstreet.py`` exported is
importable from here as before; its other helpers are in :mod:`.protocol` and :mod:`.feed`.
"""

from __future__ import annotations

from ...marks import JsonFileMarkStore, MarkStore
from .feed import AUTH_URL as AUTH_URL  # (public before the split too, outside __all__)
from .feed import ClearStreetFeed, ClientCredentials
from .protocol import EVENT_ROUTES as EVENT_ROUTES
from .protocol import ROUTES as ROUTES
from .protocol import STATUS_MAP, ClearStreetProtocol, trading_day
from .protocol import map_status as map_status

__all__ = [
    "ClearStreetFeed",
    "ClearStreetProtocol",
    "ClientCredentials",
    "JsonFileMarkStore",
    "MarkStore",
    "STATUS_MAP",
    "trading_day",
]
