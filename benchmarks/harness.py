"""The benchmark harness: server processes, client subprocesses, statistics, table, JSON.

A scenario starts one :class:`ServerProcess`, then runs each contender ``reps`` times
(round-robin, so slow drift of the machine hits every contender alike), each run in a
fresh ``python -m benchmarks.clients`` subprocess, and collects :class:`Row` objects.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Skip(Exception):
    """A scenario or contender cannot run here (a peer is missing, ...); the text says why."""


# ------------------------------------------------------------------ processes
class ServerProcess:
    """A :mod:`benchmarks.server` burst server in its own process (context manager)."""

    def __init__(self, **config: Any) -> None:
        self.config = config
        self.info: Dict[str, Any] = {}
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        from .server import server_main

        self._process = ctx.Process(target=server_main, args=(config, child), daemon=True, name="bench-server")

    def __enter__(self) -> "ServerProcess":
        self._process.start()
        if not self._conn.poll(60):
            self._process.kill()
            raise RuntimeError("benchmark server did not start")
        self.info = self._conn.recv()
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self._conn.send("stop")
            self._conn.poll(5) and self._conn.recv()
        except (OSError, EOFError):
            pass
        self._process.join(5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)

    @property
    def url(self) -> str:
        """The WebSocket URL clients connect to."""
        return self.info["url"]  # type: ignore[no-any-return]

    @property
    def rest_url(self) -> str:
        """The REST base URL."""
        return self.info["rest_url"]  # type: ignore[no-any-return]

    def state(self) -> Dict[str, Any]:
        """Blasts so far (start / end monotonic times, frames) and connection count."""
        self._conn.send("info")
        return self._conn.recv()  # type: ignore[no-any-return]

    def last_blast(self) -> Optional[Dict[str, Any]]:
        blasts = self.state()["blasts"]
        return blasts[-1] if blasts else None


def run_client(spec: Dict[str, Any], timeout: float = 120.0) -> Dict[str, Any]:
    """Run one contender in a fresh subprocess; returns its JSON result (``error`` on failure)."""
    env = dict(os.environ)
    env.update({"IBIND_LOG_TO_FILE": "False", "IBIND_LOG_TO_CONSOLE": "False", "IBIND_WS_MAX_QUEUE_SIZE": "0",
                "IBIND_WS_LOG_RAW_MESSAGES": "False", "PYTHONPATH": ROOT + os.pathsep + env.get("PYTHONPATH", "")})
    env.pop("PYTHONDEVMODE", None)
    started = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.clients", json.dumps(spec)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"client timed out after {timeout:g}s"}
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            result: Dict[str, Any] = json.loads(line)
            result["wall"] = time.monotonic() - started
            return result
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    return {"error": f"client exited {proc.returncode}: {' | '.join(tail)}"}


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (checked in a subprocess: no import side effects here)."""
    code = f"import importlib.util,sys; sys.exit(0 if importlib.util.find_spec({module!r}) else 1)"
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


# ------------------------------------------------------------------ statistics
def summary(values: Sequence[float]) -> Dict[str, Optional[float]]:
    """Median, min and max (None when empty)."""
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` (0..100) percentile of already sorted values (nearest rank)."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, int(round(q / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[rank]


class Row:
    """One line of a scenario's table: a contender's figure over its repetitions."""

    def __init__(self, name: str, values: Sequence[float], unit: str, *, higher_is_better: bool = True,
                 baseline: bool = False, note: str = "", extra: Optional[Dict[str, Any]] = None,
                 scale: float = 1.0, digits: int = 0) -> None:
        self.name = name
        self.values = list(values)
        self.unit = unit
        self.higher_is_better = higher_is_better
        self.baseline = baseline
        self.note = note
        self.extra = extra or {}
        self.scale = scale
        self.digits = digits
        self.ratio: Optional[float] = None
        self.target: Optional[str] = None
        self.met: Optional[bool] = None

    @property
    def stats(self) -> Dict[str, Optional[float]]:
        return summary(self.values)

    def as_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "unit": self.unit, "values": self.values, **self.stats,
                "ratio_to_baseline": self.ratio, "baseline": self.baseline, "target": self.target,
                "target_met": self.met, "note": self.note, **self.extra}


class Scenario:
    """The result of one scenario: rows, facts, notes, skips."""

    def __init__(self, number: int, title: str) -> None:
        self.number = number
        self.title = title
        self.rows: List[Row] = []
        self.facts: Dict[str, Any] = {}
        self.notes: List[str] = []
        self.skipped: Optional[str] = None
        self.seconds = 0.0

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def ratios(self, rows: Optional[Sequence[Row]] = None) -> None:
        """Fill the ratio of every row (or of ``rows``, a group with its own baseline) to the
        baseline row among them (same run)."""
        group = self.rows if rows is None else rows
        base = next((r for r in group if r.baseline), None)
        if base is None or not base.values:
            return
        b = base.stats["median"]
        for row in group:
            m = row.stats["median"]
            if m is None or not b:
                continue
            row.ratio = m / b if row.higher_is_better else b / m

    def as_dict(self) -> Dict[str, Any]:
        return {"scenario": self.number, "title": self.title, "rows": [r.as_dict() for r in self.rows],
                "facts": self.facts, "notes": self.notes, "skipped": self.skipped, "seconds": round(self.seconds, 1)}


def check(row: Row, ok: bool, target: str) -> None:
    """Record whether ``row`` meets ``target``."""
    row.target = target
    row.met = ok


# ------------------------------------------------------------------ output
def _fmt(value: Optional[float], row: Row) -> str:
    if value is None:
        return "-"
    scaled = value * row.scale
    return f"{scaled:,.{row.digits}f}"


def render(scenario: Scenario) -> str:
    """A scenario as a fixed-width text table."""
    lines = [f"== {scenario.number}. {scenario.title}  ({scenario.seconds:.0f}s)"]
    if scenario.skipped:
        lines.append(f"   SKIPPED: {scenario.skipped}")
        return "\n".join(lines)
    for key, value in scenario.facts.items():
        lines.append(f"   {key}: {value}")
    if scenario.rows:
        width = max(40, max(len(r.name) for r in scenario.rows))
        header = (f"   {'contender':<{width}} {'median':>10} {'min':>10} {'max':>10}  {'unit':<7} "
                  f"{'x base':>6}  target")
        lines.append(header)
        lines.append("   " + "-" * (len(header) - 3))
        for row in scenario.rows:
            s = row.stats
            ratio = "base" if row.baseline else (f"{row.ratio:.2f}" if row.ratio is not None else "")
            target = ""
            if row.target:
                target = f"{row.target} {'OK' if row.met else 'MISSED'}"
            lines.append(f"   {row.name:<{width}} {_fmt(s['median'], row):>10} {_fmt(s['min'], row):>10} "
                         f"{_fmt(s['max'], row):>10}  {row.unit:<7} {ratio:>6}  {target}".rstrip())
            if row.note:
                lines.append(f"      {row.note}")
    for note in scenario.notes:
        lines.append(f"   note: {note}")
    return "\n".join(lines)


def machine() -> Dict[str, Any]:
    """What this ran on."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for name in ("websocket", "websockets", "orjson", "ibind", "upstox_client", "firstock", "psutil"):
        versions[name] = _version(name)
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "platform": platform.platform(), "packages": versions,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def _version(module: str) -> Optional[str]:
    dist = {"websocket": "websocket-client", "upstox_client": "upstox-python-sdk"}.get(module, module)
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # noqa: BLE001
        return None


def timed(fn: Callable[[], Scenario]) -> Scenario:
    """Run a scenario function and record how long it took."""
    start = time.monotonic()
    scenario = fn()
    scenario.seconds = time.monotonic() - start
    return scenario
