"""Options and fixtures of the attack tests.

``--attack-long`` (registered in ``tests/conftest.py``, so it works from the repository
root: ``pytest --attack-long``) or ``BROKERFEEDS_ATTACK_LONG=1`` runs them at full size
(e.g. 25,000 instruments); by default sizes stay small so the suite stays fast.
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def attack_long(request: pytest.FixtureRequest) -> bool:
    """True when the attack tests should use their big sizes."""
    return bool(request.config.getoption("--attack-long", default=False)) or \
        os.environ.get("BROKERFEEDS_ATTACK_LONG", "") not in ("", "0")
