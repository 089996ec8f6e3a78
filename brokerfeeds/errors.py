"""The exception hierarchy.

Every error the library raises or reports to ``on_error`` is a :class:`BrokerFeedsError`.
Messages never contain secrets (tokens, session ids, one-time codes).
"""

from __future__ import annotations

from typing import Any, Optional

__all__ = [
    "BrokerFeedsError",
    "ConnectionFailed",
    "AuthenticationError",
    "SessionLimitError",
    "RateLimited",
    "ProtocolError",
    "CallbackError",
    "GapDetected",
    "FeedStopped",
    "BacklogWarning",
]


class BrokerFeedsError(Exception):
    """Base class of every brokerfeeds error."""


class ConnectionFailed(BrokerFeedsError):
    """A connection attempt or an established connection failed (the feed retries).

    ``status`` is the HTTP status when a REST call answered with an error, else None.
    """

    status: Optional[int] = None


class AuthenticationError(BrokerFeedsError):
    """The broker rejected our credentials; the feed stops rather than retry in a loop.

    ``status`` is the HTTP status (401 or 403) when a REST call was refused, else None.
    """

    status: Optional[int] = None


class SessionLimitError(AuthenticationError):
    """The broker refused a new session because too many are open for this user."""


class RateLimited(ConnectionFailed):
    """The broker asked us to slow down (HTTP 429); ``retry_after`` is in seconds, if given."""

    def __init__(self, message: str, retry_after: Optional[float] = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ProtocolError(BrokerFeedsError):
    """A frame or response could not be understood (malformed, missing fields, ...).

    ``frame`` is a short, redacted excerpt of the offending input.
    """

    def __init__(self, message: str, frame: Any = None) -> None:
        super().__init__(message)
        self.frame = frame


class CallbackError(BrokerFeedsError):
    """A user callback raised; the original exception is ``__cause__``."""

    def __init__(self, message: str, callback: Any = None, event: Any = None) -> None:
        super().__init__(message)
        self.callback = callback
        self.event = event


class GapDetected(BrokerFeedsError):
    """A sequenced stream skipped numbers; the feed heals it by reconnecting and replaying."""

    def __init__(self, account: str, expected: int, got: int) -> None:
        super().__init__(f"sequence gap on account {account}: expected {expected}, got {got}")
        self.account = account
        self.expected = expected
        self.got = got


class FeedStopped(BrokerFeedsError):
    """Raised by waiting calls when the feed was stopped before the awaited thing happened."""


class BacklogWarning(BrokerFeedsError):
    """More than ``max_pending_events`` events wait for callbacks: they are slower than the
    feed. A notice, not a failure: nothing is dropped and the feed carries on, while the
    backlog (and memory) grows. ``pending`` is how many waited, ``limit`` the threshold.

    Reported once (log and ``on_error``, delivered ahead of the backlog), and again only
    after the backlog fell under half of ``limit``.
    """

    def __init__(self, message: str, pending: int = 0, limit: int = 0) -> None:
        super().__init__(message)
        self.pending = pending
        self.limit = limit
