"""What the publisher, the consumers and the command line share: names, errors, the URL
check, the entry format. Needs nothing but the standard library (redis-py is imported by
:mod:`brokerfeeds.bus._redis`), so the command line can be built without the extra."""

from __future__ import annotations

import urllib.parse
from typing import Optional, Tuple

from ..errors import AuthenticationError, BrokerFeedsError, ConnectionFailed
from ..redact import MASK

__all__ = [
    "DEFAULT_URL",
    "DEFAULT_STREAM",
    "DEFAULT_QUOTE_STREAM",
    "NO_ACCOUNT",
    "BusError",
    "BusConnectionFailed",
    "BusAuthenticationError",
    "BusDropped",
    "safe_url",
    "check_url",
    "check_template",
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


def check_url(url: str) -> Tuple[str, Optional[str]]:
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
