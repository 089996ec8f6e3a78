"""Reconnect timing: exponential backoff with full jitter."""

from __future__ import annotations

import random
from typing import Callable, Optional

import attrs

__all__ = ["ReconnectPolicy"]


def _positive(instance: object, attribute: "attrs.Attribute[float]", value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


@attrs.frozen(slots=True)
class ReconnectPolicy:
    """How long to wait before each reconnect attempt.

    The n-th consecutive failed attempt (counting from 0) waits a random time in
    ``[0, min(maximum, initial * factor ** n)]`` ("full jitter"), so that many clients
    dropped at once do not hammer the broker in lockstep. Once a connection has stayed
    healthy for ``reset_after`` seconds the count starts again from 0.
    ``max_attempts=None`` retries forever; otherwise the feed gives up (and stops with
    the last error) after that many consecutive failed attempts.
    """

    initial: float = attrs.field(default=0.5, validator=_positive)
    factor: float = attrs.field(default=2.0, validator=_positive)
    maximum: float = attrs.field(default=30.0, validator=_positive)
    max_attempts: Optional[int] = None
    reset_after: float = attrs.field(default=30.0, validator=_positive)
    jitter: bool = True

    def cap(self, attempt: int) -> float:
        """The upper bound of the delay before attempt number ``attempt`` (0-based)."""
        # Bound the exponent so huge attempt counts cannot overflow a float.
        return min(self.maximum, self.initial * self.factor ** min(attempt, 64))

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """The delay, in seconds, before attempt number ``attempt`` (0-based)."""
        cap = self.cap(attempt)
        return cap * rand() if self.jitter else cap

    def gives_up(self, failures: int) -> bool:
        """True once ``failures`` consecutive failed attempts exhaust the policy."""
        return self.max_attempts is not None and failures >= self.max_attempts
