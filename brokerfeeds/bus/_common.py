"""What the publisher and the consumers share: the URL, its secrets, errors, the entry format."""

from __future__ import annotations

import logging
import urllib.parse
from typing import Any, Optional, Tuple

from ..errors import AuthenticationError, BrokerFeedsError, ConnectionFailed
from ..redact import MASK, Redactor, RedactingLogger, safe_str

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError as _missing:  # pragma: no cover - the "redis" extra is not installed
    raise ImportError("brokerfeeds.bus needs redis-py: pip install 'brokerfeeds[redis]'") from _missing

__all__ = [
    "DEFAULT_URL",
    "DEFAULT_STREAM",
    "DEFAULT_QUOTE_STREAM",
    "NO_ACCOUNT",
    "BusError",
    "BusConnectionFailed",
    "BusAuthenticationError",
    "BusDropped",
    "Endpoint",
    "safe_url",
    "redis",
]

#: Where a publisher and a consumer connect unless told otherwise.
DEFAULT_URL = "redis://localhost:6379/0"
#: The stream each account's events go to (``{broker}``, ``{account}`` are filled in).
DEFAULT_STREAM = "brokerfeeds:{broker}:{account}"
#: The stream quotes go to, when a publisher publishes them.
DEFAULT_QUOTE_STREAM = "brokerfeeds:{broker}:quotes"
#: ``{account}`` of an event that names no account (e.g. a broker bulletin).
NO_ACCOUNT = "_"

# The fields of every stream entry: the publisher's run id, its sequence number in that
# run, the event's type (its JSON "type") and the event in its JSON form.
F_RUN = b"run"
F_TYPE = b"type"
F_SEQ = b"seq"
F_EVENT = b"event"

_SCHEMES = ("redis", "rediss", "unix")


class BusError(BrokerFeedsError):
    """Something went wrong between a feed and Redis, or between Redis and a consumer."""


class BusConnectionFailed(BusError, ConnectionFailed):
    """Redis cannot be reached (or stopped answering); the publisher or consumer retries."""


class BusAuthenticationError(BusError, AuthenticationError):
    """Redis refused the credentials in the URL (a wrong password or user)."""


class BusDropped(BusError):
    """Events were dropped and will never reach Redis; ``dropped`` says how many.

    ``what`` is ``"account events"`` or ``"quotes"``; ``reason`` is why (the buffer was
    full while Redis was unreachable, ``stop()``'s time ran out, Redis refused them).
    """

    def __init__(self, message: str, dropped: int = 0, what: str = "account events", reason: str = "") -> None:
        super().__init__(message)
        self.dropped = dropped
        self.what = what
        self.reason = reason


def safe_url(url: str) -> str:
    """``url`` with its password (and any password query parameter) replaced by ``***``."""
    try:
        parts = urllib.parse.urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            userinfo, _, hostport = netloc.rpartition("@")
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:{MASK}@{hostport}"
        query = parts.query
        if query:
            pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
            query = "&".join(f"{k}={MASK if k.lower() == 'password' else v}" for k, v in pairs)
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "<unparsable Redis URL>"


def _check_url(url: str) -> Tuple[str, Optional[str]]:
    """Validate a Redis URL; returns its masked form and its password (or None).

    Raises ValueError with a message that never contains the password.
    """
    if not isinstance(url, str) or not url:
        raise ValueError(f"the Redis URL must be a non-empty string, got {type(url).__name__}")
    shown = safe_url(url)
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError as exc:
        detail = str(exc).replace(url, shown)
        raise ValueError(f"bad Redis URL {shown!r}: {detail}") from None
    if parts.scheme not in _SCHEMES:
        raise ValueError(f"bad Redis URL {shown!r}: the scheme must be redis://, rediss:// or unix://, "
                         f"got {parts.scheme + '://' if parts.scheme else 'none'}")
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError(f"bad Redis URL {shown!r}: no host (e.g. redis://localhost:6379/0)")
    if parts.scheme == "unix" and not parts.path:
        raise ValueError(f"bad Redis URL {shown!r}: no socket path (e.g. unix:///run/redis/redis.sock)")
    if parts.scheme != "unix" and parts.path not in ("", "/"):
        db = parts.path.lstrip("/")
        if not db.isdigit():
            raise ValueError(f"bad Redis URL {shown!r}: the path must be a database number, got {db!r}")
    del port
    password = urllib.parse.unquote(parts.password) if parts.password else None
    for key, value in urllib.parse.parse_qsl(parts.query):
        if key.lower() == "password":
            password = value
    return shown, password


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
        self.shown, password = _check_url(url)
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


def stream_name(template: str, broker: str, account: str) -> str:
    """``template`` with ``{broker}`` and ``{account}`` filled in."""
    return template.format(broker=broker, account=account)


def check_template(template: str, what: str) -> None:
    """Raise ValueError unless ``template`` formats with ``broker`` and ``account`` only."""
    if not isinstance(template, str) or not template:
        raise ValueError(f"{what} must be a non-empty string")
    try:
        template.format(broker="b", account="a")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"{what} {template!r} may only use {{broker}} and {{account}}: {exc}") from None
