"""The redis-py side shared by the publisher and the consumers: connections and error texts."""

from __future__ import annotations

import logging
from typing import Any, Optional

from ..redact import Redactor, RedactingLogger, safe_str
from ._common import BusAuthenticationError, BusConnectionFailed, BusError, check_url

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError as _missing:  # pragma: no cover - the "redis" extra is not installed
    raise ImportError("brokerfeeds.bus needs redis-py: pip install 'brokerfeeds[redis]'") from _missing

__all__ = ["Endpoint", "redis"]


class Endpoint:
    """A validated Redis URL: how it is shown (masked), its connections, its error texts.

    Construction does no I/O. Every error it builds names the masked URL and never the
    password (redis-py's own messages do not contain it either; they are masked anyway).
    """

    def __init__(self, url: str, *, connect_timeout: float, socket_timeout: Optional[float],
                 logger: Optional[logging.Logger], prefix: str) -> None:
        if connect_timeout <= 0:
            raise ValueError(f"connect_timeout must be > 0, got {connect_timeout!r}")
        if socket_timeout is not None and socket_timeout <= 0:
            raise ValueError(f"socket_timeout must be > 0 or None, got {socket_timeout!r}")
        self.shown, password = check_url(url)
        self.redactor = Redactor()
        self.redactor.add(password)
        self.log = RedactingLogger(logger or logging.getLogger("brokerfeeds.bus"), self.redactor, prefix=prefix)
        try:
            # Our own retry loops decide when to try again: redis-py retries nothing.
            self.pool = redis.ConnectionPool.from_url(
                url, socket_connect_timeout=connect_timeout, socket_timeout=socket_timeout,
                retry=Retry(NoBackoff(), 0), health_check_interval=0)
        except ValueError as exc:
            raise ValueError(f"bad Redis URL {self.shown!r}: {self.redactor.redact(safe_str(exc))}") from None

    def connection(self) -> Any:
        """A new, connected (and authenticated) redis-py connection. Raises :class:`BusError`."""
        try:
            conn: Any = self.pool.make_connection()
            conn.connect()
            return conn
        except redis.RedisError as exc:
            raise self.error(exc, "connect to") from None

    def client(self) -> "redis.Redis":
        """A redis-py client on this endpoint's pool (no I/O until its first command)."""
        return redis.Redis(connection_pool=self.pool)

    def error(self, exc: BaseException, doing: str = "talk to") -> BusError:
        """``exc`` (from redis-py or the socket) as the :class:`BusError` to report or raise."""
        text = self.redactor.redact(safe_str(exc)) or type(exc).__name__
        error: BusError
        if isinstance(exc, redis.AuthenticationError) or _refused_credentials(text):
            error = BusAuthenticationError(f"Redis at {self.shown} refused the credentials: {text}")
        else:
            error = BusConnectionFailed(f"cannot {doing} Redis at {self.shown}: {text}")
        return self.redactor.redact_error(error)

    def close(self) -> None:
        """Close every connection of the pool."""
        try:
            self.pool.disconnect()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass


def _refused_credentials(text: str) -> bool:
    upper = text.upper()
    return "WRONGPASS" in upper or "NOAUTH" in upper or "INVALID PASSWORD" in upper or \
        "INVALID USERNAME-PASSWORD" in upper
