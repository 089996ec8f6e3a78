"""Fixtures shared by every test module."""

from __future__ import annotations

import logging

import pytest

from helpers import feed_threads, wait_until


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--attack-long", action="store_true", default=False,
                     help="run the attack tests (tests/attacks) at full size (slow)")


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Every test must leave no feed thread behind."""
    yield
    wait_until(lambda: not feed_threads(), timeout=5.0,
               message=f"leaked feed threads: {[t.name for t in feed_threads()]}")


@pytest.fixture
def debug_log(caplog):
    """Capture everything brokerfeeds logs, at DEBUG."""
    caplog.set_level(logging.DEBUG, logger="brokerfeeds")
    return caplog
