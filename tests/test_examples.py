"""The examples and the demo run as users run them: as separate processes, against the simulators."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest

from processes import ROOT, Process, child_env, run

EXAMPLES = ROOT / "examples"


@pytest.mark.timeout(60)
def test_ibkr_orders_example():
    result = run(str(EXAMPLES / "ibkr_orders.py"))
    assert result.returncode == 0, result.stderr
    assert "-> FILLED (Filled), filled 100/100 @ 190.485" in result.stdout
    assert "-> PENDING (PendingSubmit), filled 0/100 @ -" in result.stdout  # IBKR sends 0.0 and 100.0
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
    assert "-- reconnected after: connection closed by peer" in out and "FILLED" in out and "CANCELLED" in out
    assert "1 reconnect(s)" in out
    assert " 0/100 @ -" in out and " 100/100 @ 190.07" in out  # not 0.0/100.0


@pytest.mark.timeout(60)
def test_upstox_demo_announces_the_429_before_the_warning():
    result = run("-m", "brokerfeeds", "demo", "--broker", "upstox", "--duration", "1")
    assert result.returncode == 0, result.stderr
    announced = result.stdout.index("the simulator now refuses with HTTP 429")
    assert result.stdout.index("!! RateLimited") > announced
    assert "warning: [upstox] RateLimited" in result.stderr  # the library's warning, expected now


# ====================================================================== Ctrl-C
def _ibkr_orders(sim: Any) -> Tuple[List[str], Callable[[Process], None]]:
    return ([str(EXAMPLES / "ibkr_orders.py"), "--url", sim.url, "--rest-url", sim.rest_url],
            lambda p: p.wait_for("-- connected"))


def _ibkr_market_data(sim: Any) -> Tuple[List[str], Callable[[Process], None]]:
    def ready(p: Process) -> None:
        assert sim.wait_for(lambda: sim.subscribers("smd+265598") >= 1, 15)
        sim.tick(265598, last="190.10")
        p.wait_for("last 190.10")

    return [str(EXAMPLES / "ibkr_market_data.py"), "--url", sim.url, "--rest-url", sim.rest_url], ready


def _clearstreet(sim: Any) -> Tuple[List[str], Callable[[Process], None]]:
    return ([str(EXAMPLES / "clearstreet_activity.py"), "--account", sim.account, "--url", sim.url,
             "--rest-url", sim.rest_url, "--auth-url", sim.auth_url], lambda p: p.wait_for("replay complete"))


def _upstox(sim: Any) -> Tuple[List[str], Callable[[Process], None]]:
    return [str(EXAMPLES / "upstox_orders.py")], lambda p: p.wait_for("-- connected")


def _firstock(sim: Any) -> Tuple[List[str], Callable[[Process], None]]:
    return ([str(EXAMPLES / "firstock_quotes_and_orders.py"), "--url", sim.url, "--rest-url", sim.rest_url,
             "--seconds", "60"], lambda p: p.wait_for("-- connected"))


@pytest.mark.timeout(90)
def test_ctrl_c_stops_every_live_example_cleanly():
    """Each example that streams a real account until Ctrl-C, pointed at a simulator in this
    process, then SIGINT: exit code 0, no traceback. All at once, to keep the suite short."""
    from brokerfeeds.testing import ClearStreetSimulator, FirstockSimulator, IbkrSimulator, UpstoxSimulator

    cases = {
        "ibkr_orders": (IbkrSimulator(), _ibkr_orders, {}),
        "ibkr_market_data": (IbkrSimulator(), _ibkr_market_data, {}),
        "clearstreet_activity": (ClearStreetSimulator(), _clearstreet,
                                 lambda s: {"CLEARSTREET_CLIENT_ID": s.client_id,
                                            "CLEARSTREET_CLIENT_SECRET": s.client_secret}),
        "upstox_orders": (UpstoxSimulator(), _upstox,
                          lambda s: {"UPSTOX_ACCESS_TOKEN": s.token, "UPSTOX_REST_URL": s.rest_url}),
        "firstock_quotes_and_orders": (FirstockSimulator(), _firstock,
                                       lambda s: {"FIRSTOCK_USER_ID": s.user_id, "FIRSTOCK_JKEY": s.jkey}),
    }
    processes: Dict[str, Process] = {}
    try:
        for name, (sim, case, env) in cases.items():
            sim.start()
            argv, _ = case(sim)
            processes[name] = Process(*argv, env=child_env(env(sim) if callable(env) else env))
        for name, (sim, case, _) in cases.items():
            _, ready = case(sim)
            ready(processes[name])
            code = processes[name].interrupt()
            assert code == 0, (name, processes[name].stderr)
            assert "Traceback" not in processes[name].stderr, (name, processes[name].stderr)
    finally:
        for process in processes.values():
            process.__exit__()
        for sim, _, _ in cases.values():
            sim.stop()


# ====================================================================== GUI windows
def _qt_missing() -> str:
    try:
        import PySide6  # noqa: F401
    except ImportError:
        return "PySide6 is not installed (pip install 'brokerfeeds[examples]')"
    return ""


@pytest.mark.timeout(60)
@pytest.mark.skipif(bool(_qt_missing()), reason=_qt_missing() or "-")
def test_qt_orders_window_example_headless():
    """The Qt window on Qt's offscreen platform: no display needed. Its QTimer pump runs the
    callbacks; Ctrl-C closes the window like its close button."""
    env = child_env({"QT_QPA_PLATFORM": "offscreen"})
    result = run(str(EXAMPLES / "qt_orders_window.py"), "--pace", "0.1", "--seconds", "2.5", env=env, timeout=50)
    assert result.returncode == 0, result.stderr
    assert "2 orders shown" in result.stdout
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("  ")]
    assert rows[0][1:] == ["AAPL", "BUY", "100", "100", "190.48", "filled"]
    assert rows[1][1:] == ["MSFT", "SELL", "20", "0", "cancelled"]
    with Process(str(EXAMPLES / "qt_orders_window.py"), "--seconds", "60", env=env) as window:
        window.wait_for("window open")
        assert window.interrupt() == 0, window.stderr
    assert "orders shown" in window.stdout and "Traceback" not in window.stderr


def _display_missing() -> str:
    try:
        import tkinter  # noqa: F401
    except ImportError:
        return "needs tkinter (Python built with Tk)"
    if not (os.environ.get("DISPLAY") or shutil.which("Xvfb")):
        return "needs a display: DISPLAY is not set and Xvfb is not installed (Tk cannot open a window)"
    return ""


@pytest.fixture
def display() -> Iterator[Dict[str, str]]:
    """An environment with a display: the user's, or a private Xvfb server."""
    if os.environ.get("DISPLAY"):
        yield child_env()
        return
    read, write = os.pipe()
    server = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-nolisten", "tcp", "-screen", "0", "800x600x24"],
                              pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    try:
        with os.fdopen(read) as numbers:
            number = numbers.readline().strip()  # written once the server accepts clients
        assert number, "Xvfb did not start"
        yield child_env({"DISPLAY": f":{number}"})
    finally:
        server.terminate()
        server.wait(10)


@pytest.mark.timeout(60)
@pytest.mark.skipif(bool(_display_missing()), reason=_display_missing() or "-")
def test_tk_orders_window_example(display: Dict[str, str]):
    result = run(str(EXAMPLES / "tk_orders_window.py"), "--pace", "0.1", "--seconds", "2.5", env=display, timeout=50)
    assert result.returncode == 0, result.stderr
    assert "2 orders shown" in result.stdout
    with Process(str(EXAMPLES / "tk_orders_window.py"), "--seconds", "60", env=display) as window:
        window.wait_for("window open")
        assert window.interrupt() == 0, window.stderr  # Ctrl-C closes the window cleanly
    assert "orders shown" in window.stdout and "Traceback" not in window.stderr
