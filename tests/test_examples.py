"""The examples and the demo run as users run them: as separate processes, against the simulators."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run(*args: str, timeout: float = 60, env: dict = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.timeout(60)
def test_ibkr_orders_example():
    result = run(str(EXAMPLES / "ibkr_orders.py"))
    assert result.returncode == 0, result.stderr
    assert "-> FILLED (Filled), filled 100.0" in result.stdout
    assert "fill 70 AAPL @ 190.5" in result.stdout


@pytest.mark.timeout(60)
def test_ibkr_market_data_example():
    result = run(str(EXAMPLES / "ibkr_market_data.py"))
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "265598" in line]
    assert len(lines) == 3
    assert "bid 190.11 x 300" in lines[-1] and "volume 1500" in lines[-1]  # merged deltas


@pytest.mark.timeout(60)
def test_ibkr_demo_runs_and_recovers():
    result = run("-m", "brokerfeeds.cli", "demo", "--duration", "3")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "-- reconnected" in out and "FILLED" in out and "CANCELLED" in out
    assert "1 reconnect(s)" in out


@pytest.mark.timeout(60)
@pytest.mark.skipif(not (os.environ.get("DISPLAY") or shutil.which("xvfb-run")),
                    reason="needs a display or xvfb-run for a real Tk window")
def test_tk_orders_window_example():
    command = [str(EXAMPLES / "tk_orders_window.py"), "--seconds", "4.5"]
    if os.environ.get("DISPLAY"):
        result = run(*command)
    else:
        result = subprocess.run(["xvfb-run", "-a", sys.executable, *command], cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "2 orders shown" in result.stdout
