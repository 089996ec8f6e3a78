"""Backoff state and Retry-After parsing: pure functions on a fake clock and fake randomness."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Callable, Iterator, List

import attrs
import pytest

from brokerfeeds.reconnect import RETRY_AFTER_CEILING, Backoff, ReconnectPolicy, parse_retry_after

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


def fixed(value: float) -> Callable[[], float]:
    """A ``rand`` that always answers ``value``."""
    return lambda: value


def sequence(values: List[float]) -> Callable[[], float]:
    """A ``rand`` that answers ``values`` in turn."""
    it: Iterator[float] = iter(values)
    return lambda: next(it)


def run(backoff: Backoff, times: int, rand: Callable[[], float]) -> Backoff:
    for _ in range(times):
        backoff = backoff.increment(rand=rand)
    return backoff


# ----------------------------------------------------------------- ReconnectPolicy
def test_policy_defaults_unchanged_and_max_retry_after_added() -> None:
    policy = ReconnectPolicy()
    assert (policy.initial, policy.factor, policy.maximum, policy.max_attempts,
            policy.reset_after, policy.jitter) == (0.5, 2.0, 30.0, None, 30.0, True)
    assert policy.max_retry_after == 300.0
    # Positional construction of the original fields still works.
    assert ReconnectPolicy(1.0, 3.0, 10.0, 5, 2.0, False).cap(1) == 3.0


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_max_retry_after_must_be_positive_and_finite(bad: float) -> None:
    with pytest.raises(ValueError, match="max_retry_after"):
        ReconnectPolicy(max_retry_after=bad)


def test_policy_cap_survives_a_factor_that_overflows() -> None:
    policy = ReconnectPolicy(initial=1.0, factor=1e10, maximum=7.0)
    assert policy.cap(10**9) == 7.0


# ----------------------------------------------------------------- Backoff
def test_delays_grow_exponentially_up_to_the_maximum_without_jitter() -> None:
    policy = ReconnectPolicy(initial=0.5, factor=2.0, maximum=5.0, jitter=False)
    backoff = run(Backoff(policy), 6, fixed(0.5))
    assert backoff.history == (0.5, 1.0, 2.0, 4.0, 5.0, 5.0)
    assert backoff.delay == 5.0
    assert backoff.failures == 6


def test_full_jitter_scales_the_cap_by_rand() -> None:
    policy = ReconnectPolicy(initial=1.0, factor=2.0, maximum=100.0)
    backoff = run(Backoff(policy), 4, sequence([0.0, 0.5, 0.25, 0.999]))
    assert backoff.history == (0.0, 1.0, 1.0, 8.0 * 0.999)


def test_jittered_delay_stays_within_zero_and_the_cap() -> None:
    policy = ReconnectPolicy(initial=1.0, factor=3.0, maximum=20.0)
    low = run(Backoff(policy), 10, fixed(0.0))
    high = run(Backoff(policy), 10, fixed(0.999999))
    assert all(d == 0.0 for d in low.history)
    assert all(0.0 <= d <= 20.0 for d in high.history)
    assert high.delay == pytest.approx(20.0, rel=1e-5)


def test_huge_attempt_counts_do_not_overflow() -> None:
    policy = ReconnectPolicy(initial=1.0, factor=10.0, maximum=30.0, jitter=False)
    backoff = Backoff(policy, failures=10**100).increment()
    assert backoff.delay == 30.0
    assert backoff.failures == 10**100 + 1


def test_retry_after_raises_the_delay() -> None:
    policy = ReconnectPolicy(initial=1.0, maximum=10.0, max_retry_after=60.0)
    backoff = Backoff(policy).increment(retry_after=42.0, rand=fixed(0.5))
    assert backoff.delay == 42.0
    assert backoff.history == (42.0,)


def test_retry_after_shorter_than_the_backoff_does_not_lower_it() -> None:
    policy = ReconnectPolicy(initial=8.0, maximum=10.0, jitter=False)
    assert Backoff(policy).increment(retry_after=1.0).delay == 8.0


@pytest.mark.parametrize("asked", [1000.0, math.inf, 1e308])
def test_retry_after_is_capped_at_max_retry_after(asked: float) -> None:
    policy = ReconnectPolicy(max_retry_after=60.0)
    assert Backoff(policy).increment(retry_after=asked, rand=fixed(0.0)).delay == 60.0


@pytest.mark.parametrize("asked", [math.nan, -5.0, -math.inf])
def test_nonsense_retry_after_never_raises_and_is_ignored(asked: float) -> None:
    policy = ReconnectPolicy(initial=2.0, jitter=False)
    backoff = Backoff(policy).increment(retry_after=asked)
    assert backoff.delay == 2.0
    assert backoff.failures == 1


def test_exhausted_after_max_attempts() -> None:
    backoff = Backoff(ReconnectPolicy(max_attempts=3))
    states = [backoff]
    for _ in range(3):
        states.append(states[-1].increment(rand=fixed(0.0)))
    assert [s.exhausted for s in states] == [False, False, False, True]


def test_never_exhausted_without_max_attempts() -> None:
    assert not Backoff(ReconnectPolicy(), failures=10**9).exhausted


def test_reset_zeroes_the_count_and_keeps_the_history() -> None:
    policy = ReconnectPolicy(initial=1.0, jitter=False, max_attempts=2)
    failed = run(Backoff(policy), 2, fixed(0.0))
    assert failed.exhausted
    fresh = failed.reset()
    assert (fresh.failures, fresh.delay, fresh.exhausted) == (0, 0.0, False)
    assert fresh.history == failed.history == (1.0, 2.0)
    # The next delay starts from the initial one again.
    assert fresh.increment().delay == 1.0


def test_healthy_compares_with_reset_after() -> None:
    backoff = Backoff(ReconnectPolicy(reset_after=30.0))
    assert backoff.healthy(30.0)
    assert backoff.healthy(1e9)
    assert not backoff.healthy(29.999)
    assert not backoff.healthy(math.nan)


def test_backoff_is_immutable_and_increment_returns_a_new_object() -> None:
    start = Backoff(ReconnectPolicy(jitter=False))
    after = start.increment()
    assert after is not start
    assert (start.failures, start.delay, start.history) == (0, 0.0, ())
    assert after.failures == 1
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        start.failures = 5  # type: ignore[misc]
    assert start.reset() is not start
    # Equal states compare equal (a value object).
    assert Backoff(start.policy).increment() == after


def test_history_keeps_only_the_last_32_delays() -> None:
    policy = ReconnectPolicy(initial=1.0, factor=1.0, jitter=False)
    backoff = Backoff(policy)
    for i in range(100):
        backoff = backoff.increment(retry_after=float(i) + 1.0)
    assert len(backoff.history) == 32
    assert backoff.history == tuple(float(i) + 1.0 for i in range(68, 100))
    assert backoff.failures == 100


# ----------------------------------------------------------------- parse_retry_after
@pytest.mark.parametrize(
    "value, expected",
    [
        ("120", 120.0),
        (" 5 ", 5.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("-5", 0.0),
        ("-inf", 0.0),
        ("inf", RETRY_AFTER_CEILING),
        ("Infinity", RETRY_AFTER_CEILING),
        ("1e10", RETRY_AFTER_CEILING),
        ("9" * 400, RETRY_AFTER_CEILING),
        ("nan", None),
        ("NaN", None),
        (None, None),
        ("", None),
        ("   ", None),
        ("soon", None),
        ("Fri, 99 Foo 2024 25:61:61 GMT", None),
    ],
)
def test_parse_retry_after_seconds_and_nonsense(value: str, expected: float) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def test_parse_retry_after_http_date_in_the_future() -> None:
    header = format_datetime(NOW + timedelta(seconds=90), usegmt=True)
    assert header.endswith("GMT")
    assert parse_retry_after(header, now=NOW) == 90.0


def test_parse_retry_after_http_date_in_the_past_is_zero() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=NOW) == 0.0


def test_parse_retry_after_far_future_date_is_clamped() -> None:
    assert parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now=NOW) == RETRY_AFTER_CEILING


def test_parse_retry_after_obsolete_date_forms_and_naive_now() -> None:
    naive_now = NOW.replace(tzinfo=None)
    # RFC 850 and asctime forms are still valid HTTP dates (RFC 9110 section 5.6.7).
    assert parse_retry_after("Wednesday, 01-May-24 12:00:30 GMT", now=naive_now) == 30.0
    assert parse_retry_after("Wed May  1 12:01:00 2024", now=NOW) == 60.0
    assert parse_retry_after("Wed, 01 May 2024 12:00:10 -0000", now=NOW) == 10.0


def test_parse_retry_after_uses_the_current_time_by_default() -> None:
    header = format_datetime(datetime.now(timezone.utc) + timedelta(hours=1), usegmt=True)
    seconds = parse_retry_after(header)
    assert seconds is not None and 3500.0 < seconds <= 3600.0
