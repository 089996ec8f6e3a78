"""Interactive Brokers Client Portal WebSocket (through the gateway, or OAuth 1.0a): adapter and feed."""

from .protocol import DEFAULT_QUOTE_FIELDS, STATUS_MAP, USER_AGENT, IbkrFeed, IbkrProtocol
from .protocol import ROUTES as ROUTES, map_status as map_status, order_from as order_from

__all__ = ["IbkrFeed", "IbkrProtocol", "STATUS_MAP", "DEFAULT_QUOTE_FIELDS", "USER_AGENT"]
