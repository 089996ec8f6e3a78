"""The ``brokerfeeds`` command line, run as users run it: separate processes.

``watch`` against the simulators (in this process, or a ``brokerfeeds simulate`` process),
``simulate`` itself, the errors a first user meets (a missing variable, refused
credentials, no ``websockets``), logging levels and Ctrl-C.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Dict, List

import pytest

from processes import ROOT, Process, child_env, run

pytestmark = pytest.mark.timeout(60)

BROKERS = ("ibkr", "upstox", "firstock", "clearstreet")


def no_traceback(text: str) -> None:
    assert "Traceback" not in text, text


# ====================================================================== entry points
def test_python_m_brokerfeeds_is_the_command() -> None:
    from brokerfeeds import __version__

    for module in ("brokerfeeds", "brokerfeeds.cli"):
        result = run("-m", module, "--version")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"brokerfeeds {__version__}"
    helped = run("-m", "brokerfeeds", "--help")
    assert all(command in helped.stdout for command in ("watch", "simulate", "demo"))
    script = Path(sys.executable).with_name("brokerfeeds")  # the console script, where installed
    if script.exists():
        import subprocess

        same = subprocess.run([str(script), "--help"], cwd=ROOT, env=child_env(), capture_output=True, text=True,
                              timeout=30)
        assert same.returncode == 0 and same.stdout == helped.stdout


# ====================================================================== watch: usage errors
@pytest.mark.parametrize("broker, env, missing", [
    ("upstox", {}, "UPSTOX_ACCESS_TOKEN"),
    ("firstock", {}, "FIRSTOCK_USER_ID"),
    ("firstock", {"FIRSTOCK_USER_ID": "AB1234"}, "FIRSTOCK_JKEY"),
    ("firstock", {"FIRSTOCK_USER_ID": "AB1234", "FIRSTOCK_PASSWORD": "pw"}, "FIRSTOCK_TOTP"),
    ("clearstreet", {}, "CLEARSTREET_CLIENT_ID"),
    ("clearstreet", {"CLEARSTREET_CLIENT_ID": "id"}, "CLEARSTREET_CLIENT_SECRET"),
    ("clearstreet", {"CLEARSTREET_CLIENT_ID": "id", "CLEARSTREET_CLIENT_SECRET": "s"}, "CLEARSTREET_ACCOUNT"),
    ("clearstreet", {"CLEARSTREET_TOKEN": "t"}, "CLEARSTREET_ACCOUNT"),
])
def test_a_missing_variable_is_one_line_naming_it(broker: str, env: Dict[str, str], missing: str) -> None:
    """Checked in this process (fast); the exit code and stream as a process below."""
    import io

    from brokerfeeds.cli import parser
    from brokerfeeds.watch import run as watch

    err = io.StringIO()
    assert watch(parser().parse_args(["watch", "--broker", broker]), env=env, err=err) == 2
    lines = err.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"brokerfeeds watch: {missing} is not set"), lines


def test_a_missing_variable_exits_2_as_a_process() -> None:
    result = run("-m", "brokerfeeds", "watch", "--broker", "upstox", env=child_env())
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "brokerfeeds watch: UPSTOX_ACCESS_TOKEN is not set (the daily access token from Upstox's login flow)"]


def test_options_that_do_not_apply_are_usage_errors() -> None:
    import io

    from brokerfeeds.cli import parser
    from brokerfeeds.watch import run as watch

    for argv in (["--broker", "upstox", "--quotes", "NSE:1"], ["--broker", "ibkr", "--auth-url", "http://x"]):
        err = io.StringIO()
        assert watch(parser().parse_args(["watch", *argv]), env={"UPSTOX_ACCESS_TOKEN": "t"}, err=err) == 2
        assert len(err.getvalue().splitlines()) == 1
    with pytest.raises(SystemExit):  # argparse: no --token flag exists (a secret would show in ps)
        parser().parse_args(["watch", "--broker", "upstox", "--token", "secret"])


# ====================================================================== watch: a live session
def test_watch_prints_lines_reconnects_with_the_reason_and_stops_on_ctrl_c() -> None:
    from brokerfeeds.testing import IbkrSimulator

    with IbkrSimulator(hb_interval=1.0) as sim, \
            Process("-m", "brokerfeeds", "watch", "--broker", "ibkr", "--url", sim.url, "--rest-url", sim.rest_url,
                    "--insecure", "--quotes", "265598") as watch:
        watch.wait_for("-- connected")
        assert sim.wait_for(lambda: sim.subscribers("smd+265598") >= 1, 10)
        order_id = sim.place_order("AAPL", "BUY", 100, 190.10)
        sim.fill(order_id, 40, 190.10)
        sim.tick(265598, last="190.10", bid="190.05", ask="190.15")
        watch.wait_for("PARTIALLY_FILLED")
        sim.drop()
        sim.fill(order_id, 60, 190.05)
        reconnected = watch.wait_for("-- reconnected")[0]
        assert "after: connection closed by peer" in reconnected
        watch.wait_for(" FILLED ")
        assert watch.interrupt() == 0
    out = watch.out
    no_traceback(watch.stderr)
    partial = next(line for line in out if "PARTIALLY_FILLED" in line)
    # HH:MM:SS.mmm, then aligned columns; quantities as numbers, money as sent
    assert partial.split()[1:] == ["ORDER", order_id, "BUY", "AAPL", "PARTIALLY_FILLED", "40/100", "@", "190.1",
                                   "[Submitted]"]
    fill = next(line for line in out if " FILL " in line)
    assert partial.index(order_id) == fill.index(order_id)  # columns line up
    assert any("-- disconnected: connection closed by peer" in line for line in out)
    assert any("QUOTE    265598" in line and "last 190.10 bid 190.05 ask 190.15" in line for line in out)
    # --insecure is said once, on stderr, and nothing else is
    assert [line for line in watch.err if line.strip()] == [
        "warning: [ibkr] TLS certificate verification is OFF (verify=False)"]


def test_refused_credentials_are_one_line_and_a_nonzero_exit() -> None:
    from brokerfeeds.testing import UpstoxSimulator

    with UpstoxSimulator() as sim:
        result = run("-m", "brokerfeeds", "watch", "--broker", "upstox", "--rest-url", sim.rest_url,
                     env=child_env({"UPSTOX_ACCESS_TOKEN": "not-the-token"}))
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "AuthenticationError" in lines[0], result.stderr
    assert "not-the-token" not in result.stderr + result.stdout
    no_traceback(result.stderr)


# ====================================================================== simulate + watch --json
def _paste(lines: List[str]) -> tuple:
    """The exports and the watch arguments that ``simulate`` printed."""
    exports = dict(shlex.split(line)[1].split("=", 1) for line in lines if line.startswith("export "))
    command = shlex.split(next(line for line in lines if line.startswith("brokerfeeds watch ")))
    return exports, command[2:]


def test_simulate_and_watch_json_as_two_processes() -> None:
    """All four brokers at once (each pair: a ``simulate --activity`` process and the
    ``watch --json`` it printed, interrupted like Ctrl-C once a fill and a cancel came)."""
    from brokerfeeds.events import Connected, Order, OrderStatus, Trade, from_json

    sims = {b: Process("-m", "brokerfeeds", "simulate", "--broker", b, "--activity", "--interval", "0.15")
            for b in BROKERS}
    watches: Dict[str, Process] = {}
    try:
        for broker, sim in sims.items():
            sim.wait_for("brokerfeeds watch ")
            exports, argv = _paste(sim.out)
            watches[broker] = Process("-m", "brokerfeeds", "watch", *argv, "--json", env=child_env(exports))
        for broker, watch in watches.items():
            watch.wait_for('"type":"trade"', timeout=20)  # a live fill (not only the REST snapshot)
            watch.wait_for('"CANCELLED"', timeout=20)
            assert watch.interrupt() == 0, watch.stderr
            assert watch.stderr == "", watch.stderr
            assert all(json.loads(line)["schema"] == 1 for line in watch.out)  # JSON Lines: an object a line
            events = [from_json(line) for line in watch.out]  # the events' JSON schema
            assert isinstance(events[0], Connected), (broker, events[:3])
            orders = [e for e in events if isinstance(e, Order)]
            assert all(o.broker == broker for o in orders)
            assert {OrderStatus.FILLED, OrderStatus.CANCELLED} <= {o.status for o in orders}, broker
            assert any(isinstance(e, Trade) for e in events), broker
        for sim in sims.values():
            assert sim.interrupt() == 0
            no_traceback(sim.stderr)
            assert any(line.startswith("sim: placed BUY 10") for line in sim.out)
    finally:
        for process in (*sims.values(), *watches.values()):
            process.__exit__()


def test_simulate_prints_ready_to_paste_commands_on_the_port_asked() -> None:
    import socket

    with socket.socket() as probe:  # a free port (and the next one, most likely)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with Process("-m", "brokerfeeds", "simulate", "--broker", "upstox", "--port", str(port)) as sim:
        sim.wait_for("Ctrl-C stops")
        exports, argv = _paste(sim.out)
        assert sim.interrupt() == 0
    assert set(exports) == {"UPSTOX_ACCESS_TOKEN"}
    assert argv == ["--broker", "upstox", "--rest-url", f"http://127.0.0.1:{port + 1}"]
    assert f"ws://127.0.0.1:{port}" in sim.stdout
    assert "sim:" not in sim.stdout  # no --activity: nothing happens by itself
    no_traceback(sim.stderr)


# ====================================================================== no websockets, logging
@pytest.fixture
def without_websockets(tmp_path: Path) -> Dict[str, str]:
    """An environment in which ``import websockets`` fails, as without the ``sim`` extra."""
    (tmp_path / "websockets").mkdir()
    (tmp_path / "websockets" / "__init__.py").write_text(
        "raise ImportError(\"No module named 'websockets'\")\n")
    env = child_env()
    env["PYTHONPATH"] = f"{tmp_path}{':' if env.get('PYTHONPATH') else ''}{env.get('PYTHONPATH', '')}"
    return env


@pytest.mark.parametrize("command", [["demo"], ["simulate", "--broker", "ibkr"]])
def test_without_the_sim_extra_one_line_says_what_to_install(without_websockets: Dict[str, str],
                                                             command: List[str]) -> None:
    result = run("-m", "brokerfeeds", *command, env=without_websockets)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "pip install 'brokerfeeds[sim]'" in lines[0], result.stderr


def test_verbose_shows_the_library_log_not_the_simulator_log() -> None:
    result = run("-m", "brokerfeeds", "demo", "--broker", "ibkr", "--duration", "1", "-v")
    assert result.returncode == 0, result.stderr
    assert " INFO brokerfeeds " in result.stderr  # the feed's own lines ("connecting to ...")
    assert "websockets" not in result.stderr and "server listening" not in result.stderr
    everything = run("-m", "brokerfeeds", "simulate", "--broker", "ibkr", "--duration", "0.1", "--log-all")
    assert everything.returncode == 0, everything.stderr
    assert "websockets.simulator" in everything.stderr  # the simulator's server log, when asked for


def test_without_verbose_only_warnings_show() -> None:
    result = run("-m", "brokerfeeds", "simulate", "--broker", "ibkr", "--duration", "0.1")
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_a_closed_pipe_ends_watch_quietly() -> None:
    """``brokerfeeds watch ... | head -1``: once the reader is gone, watch stops, exit code 0,
    no BrokenPipeError on stderr."""
    import subprocess

    from brokerfeeds.testing import IbkrSimulator

    with IbkrSimulator() as sim:
        proc = subprocess.Popen([sys.executable, "-m", "brokerfeeds", "watch", "--broker", "ibkr", "--url", sim.url,
                                 "--rest-url", sim.rest_url], cwd=ROOT, env=child_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            assert "-- connected" in proc.stdout.readline()
            proc.stdout.close()  # the reader goes away
            for _ in range(3):
                sim.place_order("AAPL", "BUY", 10, 190.10)  # something to write
            assert proc.wait(20) == 0
            stderr = proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            proc.stderr.close()
    assert stderr == "", stderr
