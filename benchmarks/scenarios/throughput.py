"""Scenarios 1 and 2: messages per second delivered to user code, IBKR ``sor`` and ``smd``.

Rate = frames delivered / (time of the last delivery − time the server began sending).
Both times come from the host's monotonic clock (one clock for every process).
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from .. import frames as fr
from ..harness import Row, Scenario, ServerProcess, check, installed, run_client
from ..scale import Scale

Contender = Tuple[str, Dict[str, Any]]


def _contenders(topic: str, full: bool, few: bool) -> Tuple[List[Contender], List[str]]:
    """Who runs (name, spec) and the notes on who does not."""
    out: List[Contender] = [("baseline: websocket-client recv() + json.loads", {"kind": "baseline"})]
    modes: Tuple[str, ...] = ("thread",) if few else ("thread", "inline", "queue")
    has_orjson = installed("orjson")
    notes = []
    for mode in modes:
        if has_orjson:
            out.append((f"IbkrFeed dispatch={mode}, orjson", {"kind": "ibkrfeed", "dispatch": mode, "fast": True}))
    for mode in modes if full else ("thread",):
        if few and topic == "smd":
            break
        if mode == "queue":
            continue  # queue mode costs what thread mode costs (same handoff): not repeated without orjson
        out.append((f"IbkrFeed dispatch={mode}, stdlib json", {"kind": "ibkrfeed", "dispatch": mode, "fast": False}))
    if not has_orjson:
        notes.append("orjson (the 'fast' extra) is not installed: contenders with orjson skipped")
    if few and topic == "smd":
        pass  # the smoke test drives ibind once (scenario 1) only
    elif installed("ibind"):
        out.append(("ibind IbkrWsClient (AsyncSink)", {"kind": "ibind"}))
    else:
        notes.append("ibind is not installed (pip install -e '.[bench]'): ibind skipped")
    return out, notes


def _throughput(scenario: Scenario, scale: Scale, topic: str, count: int, conids: List[str]) -> Dict[str, Row]:
    contenders, notes = _contenders(topic, full=topic == "sor", few=scale.few)
    scenario.notes.extend(notes)
    expected = count + (len(conids) if topic == "smd" else 0)  # + one snapshot per quote subscription
    values: Dict[str, List[float]] = {name: [] for name, _ in contenders}
    extras: Dict[str, Dict[str, Any]] = {name: {"delivered": [], "coalesced": [], "wall": []}
                                         for name, _ in contenders}
    errors: Dict[str, str] = {}
    with ServerProcess(frames=topic, count=count, conids=len(conids),
                       trigger_prefix="sor+" if topic == "sor" else "smd+",
                       trigger=1 if topic == "sor" else len(conids)) as server:
        scenario.facts["frames per burst"] = f"{count:,} (binary WebSocket frames)"
        scenario.facts["payload bytes"] = server.info["payload_bytes"]
        for _ in range(scale.reps):  # round-robin: drift hits every contender alike
            for name, spec in contenders:
                spec = dict(spec, url=server.url, rest_url=server.rest_url, topic=topic, conids=conids,
                            expected=expected, timeout=scale.timeout)
                result = run_client(spec, timeout=scale.timeout + 30)
                extras[name]["wall"].append(round(result.get("wall", 0.0), 2))
                blast = server.last_blast()
                if "error" in result or not blast or not result.get("count"):
                    errors[name] = result.get("error") or "no frames delivered"
                    continue
                if not result.get("ok", True):
                    errors[name] = f"only {result['count']:,} of {expected:,} delivered before the timeout"
                    continue
                elapsed = result["last"] - blast["start"]
                values[name].append(count / elapsed)
                extras[name]["delivered"].append(result["count"])
                extras[name]["coalesced"].append(result.get("coalesced", 0))
    rows: Dict[str, Row] = {}
    for name, spec in contenders:
        note = errors.get(name, "")
        coalesced = sum(extras[name]["coalesced"])
        if coalesced:
            note = (note + "; " if note else "") + f"{coalesced:,} quotes coalesced over all reps (backlog > 10,000)"
        rows[name] = scenario.add(Row(name, values[name], "msg/s", baseline=spec["kind"] == "baseline", note=note,
                                      extra=extras[name]))
    scenario.ratios()
    return rows


def _targets(scenario: Scenario, rows: Dict[str, Row], with_default_targets: bool) -> None:
    ibind = next((r for n, r in rows.items() if n.startswith("ibind") and r.values), None)
    default_fast = rows.get("IbkrFeed dispatch=thread, orjson")
    default_std = rows.get("IbkrFeed dispatch=thread, stdlib json")
    if with_default_targets:
        if default_std is not None and default_std.ratio is not None:
            check(default_std, default_std.ratio >= 0.8, ">=0.8x base")
        if default_fast is not None and default_fast.ratio is not None:
            check(default_fast, default_fast.ratio >= 1.0, ">=1.0x base")
    if ibind is not None:
        ib = ibind.stats["median"] or 0.0
        for row in (default_fast, default_std):
            if row is not None and row.values and ib:
                times = (row.stats["median"] or 0.0) / ib
                scenario.facts[f"{row.name} vs ibind"] = f"{times:.2f}x"
                if with_default_targets and row is default_fast:
                    scenario.facts["target >=2x ibind"] = "OK" if times >= 2.0 else "MISSED"


def run_orders(scale: Scale) -> Scenario:
    """Scenario 1: a burst of IBKR ``sor`` order updates."""
    scenario = Scenario(1, "Throughput, order updates (IBKR sor, 1 full : 4 partial)")
    rows = _throughput(scenario, scale, "sor", scale.orders, [])
    _targets(scenario, rows, True)
    return scenario


def run_quotes(scale: Scale) -> Scenario:
    """Scenario 2: a burst of IBKR ``smd`` quote deltas over ``conids`` instruments."""
    scenario = Scenario(2, f"Throughput, quotes (IBKR smd deltas, {scale.conids} instruments, merged)")
    rows = _throughput(scenario, scale, "smd", scale.quotes, fr.quote_conids(scale.conids))
    _targets(scenario, rows, False)
    return scenario

