"""Reconnect timing: exponential backoff with full jitter, and the server's ``Retry-After``.

:class:`ReconnectPolicy` is the configuration; :class:`Backoff` is the immutable state of
one feed's retry loop (in the spirit of urllib3's ``Retry``): each failure produces a new
``Backoff`` with the count, the chosen delay and a short history.
"""

from __future__ import annotations

import email.utils
import math
import random
from datetime import datetime, timezone
from typing import Callable, Optional, Tuple

import attrs

__all__ = ["ReconnectPolicy", "Backoff", "parse_retry_after", "RETRY_AFTER_CEILING"]

#: The longest wait :func:`parse_retry_after` ever returns (one day), whatever the server said.
RETRY_AFTER_CEILING = 86400.0

#: How many delays :attr:`Backoff.history` keeps.
_HISTORY = 32


def _positive(instance: object, attribute: "attrs.Attribute[float]", value: float) -> None:
    if not value > 0:  # written this way so that nan is rejected too
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


def _positive_finite(instance: object, attribute: "attrs.Attribute[float]", value: float) -> None:
    _positive(instance, attribute, value)
    if math.isinf(value):
        raise ValueError(f"{attribute.name} must be finite, got {value!r}")


@attrs.frozen(slots=True)
class ReconnectPolicy:
    """How long to wait before each reconnect attempt.

    The n-th consecutive failed attempt (counting from 0) waits a random time in
    ``[0, min(maximum, initial * factor ** n)]`` ("full jitter"), so that many clients
    dropped at once do not hammer the broker in lockstep. Once a connection has stayed
    healthy for ``reset_after`` seconds the count starts again from 0.
    ``max_attempts=None`` retries forever; otherwise the feed gives up (and stops with
    the last error) after that many consecutive failed attempts.
    ``max_retry_after`` is the longest a server's ``Retry-After`` can make the feed wait.
    """

    initial: float = attrs.field(default=0.5, validator=_positive)
    factor: float = attrs.field(default=2.0, validator=_positive)
    maximum: float = attrs.field(default=30.0, validator=_positive)
    max_attempts: Optional[int] = None
    reset_after: float = attrs.field(default=30.0, validator=_positive)
    jitter: bool = True
    max_retry_after: float = attrs.field(default=300.0, validator=_positive_finite)

    def cap(self, attempt: int) -> float:
        """The upper bound of the delay before attempt number ``attempt`` (0-based)."""
        # Bound the exponent so huge attempt counts cannot overflow a float; a huge factor
        # can still overflow within 64 steps, and then the cap is simply the maximum.
        try:
            grown = self.initial * self.factor ** min(attempt, 64)
        except OverflowError:
            return self.maximum
        return min(self.maximum, grown)

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """The delay, in seconds, before attempt number ``attempt`` (0-based)."""
        cap = self.cap(attempt)
        return cap * rand() if self.jitter else cap

    def gives_up(self, failures: int) -> bool:
        """True once ``failures`` consecutive failed attempts exhaust the policy."""
        return self.max_attempts is not None and failures >= self.max_attempts


def _server_wait(retry_after: Optional[float], ceiling: float) -> Optional[float]:
    """``retry_after`` as a usable wait in ``[0, ceiling]``; None when it is not a number."""
    if retry_after is None:
        return None
    try:
        seconds = float(retry_after)
    except (TypeError, ValueError, OverflowError):
        return None
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), ceiling)


@attrs.frozen(slots=True)
class Backoff:
    """The state of a retry loop after ``failures`` consecutive failed attempts.

    Immutable: :meth:`increment` and :meth:`reset` return new objects, so a state can be
    shared, logged or compared freely. ``delay`` is the wait chosen by the last
    :meth:`increment` (0 before any); ``history`` holds the delays chosen so far, the
    most recent last, at most the last 32.

    Typical use::

        backoff = Backoff(policy)
        while True:
            try:
                serve()
            except ConnectionFailed as exc:
                backoff = backoff.increment(getattr(exc, "retry_after", None))
                if backoff.exhausted:
                    raise
                sleep(backoff.delay)
    """

    policy: ReconnectPolicy
    failures: int = 0
    delay: float = 0.0
    history: Tuple[float, ...] = ()

    def increment(
        self, retry_after: Optional[float] = None, rand: Callable[[], float] = random.random
    ) -> "Backoff":
        """The state after one more failure.

        ``failures`` goes up by one and ``delay`` becomes ``policy.delay(self.failures,
        rand)``, raised to ``min(retry_after, policy.max_retry_after)`` when the server
        asked for a wait. A negative ``retry_after`` counts as 0, ``inf`` as
        ``max_retry_after``, and nan (or anything that is not a number) is ignored:
        this never raises for any value the server sent.
        """
        delay = self.policy.delay(self.failures, rand)
        asked = _server_wait(retry_after, self.policy.max_retry_after)
        if asked is not None:
            delay = max(delay, asked)
        return attrs.evolve(
            self,
            failures=self.failures + 1,
            delay=delay,
            history=(self.history + (delay,))[-_HISTORY:],
        )

    @property
    def exhausted(self) -> bool:
        """True once the failures so far exhaust the policy (``policy.gives_up(failures)``)."""
        return self.policy.gives_up(self.failures)

    def reset(self) -> "Backoff":
        """The state after a connection stayed healthy: ``failures`` and ``delay`` back to 0.

        ``history`` is kept (it is a bounded record of what was waited, useful when
        diagnosing a flapping connection); it never influences the next delay.
        """
        return attrs.evolve(self, failures=0, delay=0.0)

    def healthy(self, lasted: float) -> bool:
        """Whether a connection that lasted ``lasted`` seconds resets the count."""
        return lasted >= self.policy.reset_after


def parse_retry_after(value: Optional[str], now: Optional[datetime] = None) -> Optional[float]:
    """The wait a ``Retry-After`` header asks for, in seconds (RFC 9110 section 10.2.3).

    ``value`` is a number of seconds or an HTTP date (compared with ``now``, by default
    the current time; a naive ``now`` or date is taken as UTC). Returns a number in
    ``[0, RETRY_AFTER_CEILING]``: a negative value or a date in the past gives 0, ``inf``,
    a huge number or a far-future date gives the ceiling (callers cap it further with
    :attr:`ReconnectPolicy.max_retry_after`). Returns None when the header is missing,
    empty, nan or unparsable. Never raises.
    """
    if value is None:
        return None
    try:
        text = str(value).strip()
    except Exception:  # noqa: BLE001 - a header value with a broken __str__ is just unparsable
        return None
    if not text:
        return None
    try:
        seconds: Optional[float] = float(text)
    except (ValueError, OverflowError):
        seconds = _seconds_until(text, now)
    if seconds is None or math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_CEILING)


def _seconds_until(text: str, now: Optional[datetime]) -> Optional[float]:
    """Seconds from ``now`` until the HTTP date ``text``; None when it is not a date."""
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    if now is None:
        now = datetime.now(timezone.utc)
    elif now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    try:
        return (when - now).total_seconds()
    except OverflowError:
        return None
