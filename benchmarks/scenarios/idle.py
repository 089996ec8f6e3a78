"""Scenario 6: what an idle, connected feed costs (CPU) and what each extra feed costs (memory)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Callable, Dict, Optional

from ..harness import ROOT, Row, Scenario, ServerProcess, check, installed, run_client
from ..scale import Scale


def start_idle(server: ServerProcess, seconds: float, settle: float) -> "subprocess.Popen[str]":
    """Start the idle measurement in the background (it mostly sleeps)."""
    spec = {"kind": "idle", "url": server.url, "rest_url": server.rest_url, "seconds": seconds, "settle": settle}
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "benchmarks.clients", json.dumps(spec)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_idle(proc: "subprocess.Popen[str]", timeout: float) -> Dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return {"error": "idle client timed out"}
    for line in reversed(out.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)  # type: ignore[no-any-return]
    return {"error": f"idle client failed: {err.strip().splitlines()[-1:]}"}


def run_idle(scale: Scale, during: Optional[Callable[[], None]] = None) -> Scenario:
    """Idle CPU over ``scale.idle_seconds`` (measured once) and RSS per feed with ``scale.feeds`` feeds.

    ``during`` runs while the idle feed is being measured (to save wall time; the CPU
    figure is the idle process's own CPU time, so work elsewhere does not count).
    """
    scenario = Scenario(6, f"Idle cost (1 feed idle {scale.idle_seconds:g}s, measured once; "
                           f"{scale.feeds} feeds in one process)")
    if not installed("psutil"):
        scenario.skipped = "psutil is not installed (pip install -e '.[bench]')"
        return scenario
    with ServerProcess(mode="idle", hb_interval=10.0) as server:
        idle = start_idle(server, scale.idle_seconds, scale.settle)
        memory = run_client({"kind": "memory", "url": server.url, "rest_url": server.rest_url,
                             "feeds": scale.feeds, "settle": scale.settle}, timeout=scale.timeout + 60)
        if during is not None:
            during()
        result = finish_idle(idle, scale.idle_seconds + 60)
    if "error" in result:
        scenario.notes.append(f"idle: {result['error']}")
    else:
        row = scenario.add(Row("idle feed: CPU of one core", [result["cpu_percent"]], "%", higher_is_better=False,
                               digits=3, note=f"{result['cpu_seconds']:.3f} CPU-s over {result['wall']:.1f}s; "
                                              f"{result['threads']} threads; {result['messages']} frames received "
                                              "(server heartbeat every 10 s)"))
        check(row, result["cpu_percent"] < 1.0, "<1%")
    if "error" in memory:
        scenario.notes.append(f"memory: {memory['error']}")
    else:
        rss = {int(k): v for k, v in memory["rss"].items()}
        first, last = rss[1], rss[scale.feeds]
        per_feed = (last - first) / max(1, scale.feeds - 1)
        row = scenario.add(Row("memory per extra connected feed", [per_feed / 1e6], "MB", higher_is_better=False,
                               digits=3, note=f"RSS {first / 1e6:.1f} MB with 1 feed, {last / 1e6:.1f} MB with "
                                              f"{scale.feeds} ({memory['connected']} connected, "
                                              f"{memory['threads']} threads)"))
        check(row, per_feed < 1e6, "<1 MB")
    return scenario
