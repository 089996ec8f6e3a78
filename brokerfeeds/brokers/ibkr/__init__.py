"""Interactive Brokers Client Portal WebSocket (through the gateway, or OAuth 1.0a): adapter and feed.

* :mod:`brokerfeeds.brokers.ibkr.protocol`: :class:`IbkrProtocol`, the sans-I/O adapter
  (frames → outputs), and its helpers (:func:`map_status`, ``order_from``, ``trade_from``,
  ``ROUTES``). Its docstring has the protocol notes: frames, merged ``sor`` / ``smd``
  updates, how a fill finds its order id, the P&L fields, the status mapping.
* :mod:`brokerfeeds.brokers.ibkr.feed`: :class:`IbkrFeed`, the feed around it: connecting,
  the brokerage session and its outages, keep-alive, reconciliation and other REST calls.
  Its docstring has the connection, session and reconciliation notes.
* OAuth 1.0a (live session token, request signing): :mod:`brokerfeeds.brokers.ibkr_oauth`.

Sources for all of it: the project's docs/ibkr.md.
"""

from .feed import USER_AGENT, IbkrFeed
from .protocol import DEFAULT_QUOTE_FIELDS, STATUS_MAP, IbkrProtocol
# Public names outside __all__ (used by tests and benchmarks), re-exported as the module had them.
from .protocol import ROUTES as ROUTES, map_status as map_status, order_from as order_from

__all__ = ["IbkrFeed", "IbkrProtocol", "STATUS_MAP", "DEFAULT_QUOTE_FIELDS", "USER_AGENT"]
