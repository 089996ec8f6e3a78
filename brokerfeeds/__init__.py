"""brokerfeeds: your own broker account activity — orders, fills, positions, P&L — as
normalised events, through one calm, thread-based callback API.

    from brokerfeeds import IbkrFeed

    feed = IbkrFeed(verify=False)
    feed.on_order(lambda order: print(order.order_id, order.status))
    feed.subscribe_orders()
    feed.start()
"""

from .brokers.clearstreet import ClearStreetFeed
from .brokers.firstock import FirstockFeed
from .brokers.ibkr import IbkrFeed
from .brokers.upstox import UpstoxFeed
from .errors import AuthenticationError, BrokerFeedsError, ProtocolError
from .feed import Feed, FeedStats
from .protocol import Subscription
from .reconnect import ReconnectPolicy

__version__ = "0.1.0.dev0"

__all__ = [
    "Feed",
    "FeedStats",
    "IbkrFeed",
    "UpstoxFeed",
    "FirstockFeed",
    "ClearStreetFeed",
    "ReconnectPolicy",
    "Subscription",
    "BrokerFeedsError",
    "AuthenticationError",
    "ProtocolError",
    "__version__",
]
