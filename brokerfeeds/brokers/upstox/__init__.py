"""Upstox portfolio stream feed: adapter and feed."""

from .protocol import IST, STATUS_MAP, UPDATE_TYPES, UpstoxFeed, UpstoxProtocol, next_token_expiry, order_from, parse_ist
from .protocol import ROUTES as ROUTES, map_status as map_status

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
