"""Options and fixtures of the attack tests.

``--attack-long`` (or ``BROKERFEEDS_ATTACK_LONG=1`` in the environment) runs them at full
size (e.g. 25,000 instruments); by default sizes stay small so the suite stays fast.
The option is registered when pytest starts from this directory or a file in it
(``pytest --attack-long tests/attacks``); the environment variable works from anywhere.
"""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--attack-long", action="store_true", default=False,
                     help="run the attack tests at full size (slow)")


@pytest.fixture
def attack_long(request: pytest.FixtureRequest) -> bool:
    """True when the attack tests should use their big sizes."""
    return bool(request.config.getoption("--attack-long", default=False)) or \
        os.environ.get("BROKERFEEDS_ATTACK_LONG", "") not in ("", "0")
