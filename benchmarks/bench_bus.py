"""Benchmarks of :mod:`brokerfeeds.bus` (Redis Streams), each figure against its baseline in one run.

    python -m benchmarks.bench_bus                 # all five parts, 3 reps (~5 minutes on 2 cores)
    python -m benchmarks.bench_bus --quick         # smaller bursts
    python -m benchmarks.bench_bus --only 1,3      # some parts
    python -m benchmarks.bench_bus --json out.json # figures as JSON (default: none)

It starts its own ``redis-server`` (from PATH; ``appendonly no``, on a free loopback port)
and runs every contender in a fresh subprocess (``--client <spec>``), round-robin.

1. **Publishing throughput**: N IBKR order events (built from scenario 1's ``sor`` frames
   by the IBKR adapter; their JSON form, ``raw`` included, averages ~1 KB) published by a
   :class:`~brokerfeeds.bus.RedisPublisher` (JSON encoding included), against a bare
   redis-py pipeline (``transaction=False``, the same batch size) of ``XADD`` commands of
   the same, already encoded, payloads and fields. Rate = N / (last acknowledgement − first
   publish).
2. **Feed + publisher against the feed alone**: scenario 1's burst (IBKR ``sor``, binary
   frames, ``benchmarks/server.py``): the feed's own delivery rate with the scenario-1
   client (``benchmarks/clients.py``), and the same feed with a publisher attached: its
   delivery rate and its publishing rate (N / (Redis acknowledged the last one − the server
   began sending)).
3. **End-to-end latency** at 2,000 events/s: the paced server stamps each frame with its
   send time (monotonic); a publisher process (IbkrFeed + RedisPublisher) publishes;
   a consumer process (RedisEvents, consumer group, XACK after the callback) subtracts the
   stamp on callback entry (one clock per host). First 10 % dropped as warm-up.
4. **Publisher memory while Redis is down**: N events published to an unreachable Redis;
   bytes per buffered event, from ``tracemalloc`` (Python heap still allocated after the
   publisher encoded them all; the events themselves were made before) and from the RSS.
5. **What publishing costs the feed** at 2,000 events/s: the feed alone, with a publisher
   (``linger`` 0, the default) and with ``linger=0.001``: the feed's own ``on_order``
   latency (stamp -> callback entry) and its process's CPU time per event.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from typing import Any, Dict, List, Optional

from .harness import (ROOT, Row, Scenario, ServerProcess, check, machine, percentile, render, run_client, summary,
                      timed)

TEMPLATE = "{prefix}:{{broker}}:{{account}}"
monotonic = time.monotonic


# ====================================================================== clients (subprocesses)
def _events(count: int) -> List[Any]:
    """``count`` IBKR Order events, built from scenario 1's sor frames by the adapter."""
    from brokerfeeds import events as ev
    from brokerfeeds.brokers.ibkr import IbkrProtocol

    from . import frames as fr

    adapter = IbkrProtocol(account=fr.ACCOUNT)
    adapter.on_open(0.0)
    out: List[Any] = []
    for frame in fr.generate("sor", count):
        out.extend(o for o in adapter.on_frame(frame, True, 0.0) if isinstance(o, ev.Event))
    return out[:count]


def client_pipeline(spec: Dict[str, Any]) -> Dict[str, Any]:
    """The baseline: a bare redis-py pipeline of XADDs of the already encoded payloads."""
    import redis

    from brokerfeeds import events as ev

    events = _events(spec["count"])
    run = uuid.uuid4().hex[:16]
    rows = []
    for seq, event in enumerate(events, 1):
        stream = f"{spec['prefix']}:{event.broker}:{event.account}"
        rows.append((stream, {"run": run, "type": "order", "seq": seq, "event": ev.to_json(event)}))
    r = redis.Redis.from_url(spec["url"])
    r.ping()
    batch = spec["batch"]
    start = monotonic()
    for i in range(0, len(rows), batch):
        pipe = r.pipeline(transaction=False)
        for stream, fields in rows[i:i + batch]:
            pipe.xadd(stream, fields, maxlen=1_000_000, approximate=True)
        pipe.execute()
    end = monotonic()
    streams = {s for s, _ in rows}
    length = sum(r.xlen(s) for s in streams)
    r.delete(*streams)
    return {"count": len(rows), "seconds": end - start, "stored": length}


def client_publisher(spec: Dict[str, Any]) -> Dict[str, Any]:
    """RedisPublisher: N events in, time until Redis acknowledged the last one."""
    import redis

    from brokerfeeds.bus import RedisPublisher

    events = _events(spec["count"])
    publisher = RedisPublisher(spec["url"], TEMPLATE.format(prefix=spec["prefix"]), batch_size=spec["batch"])
    publisher.start()
    if not publisher.wait_connected(10):
        raise RuntimeError("publisher did not connect")
    start = monotonic()
    for event in events:
        publisher.publish(event)
    while publisher.pending:
        time.sleep(0.0005)
    end = monotonic()
    stats = publisher.stats
    publisher.stop()
    r = redis.Redis.from_url(spec["url"])
    streams = r.keys(f"{spec['prefix']}:*")
    length = sum(r.xlen(s) for s in streams)
    r.delete(*streams)
    return {"count": stats.published, "seconds": end - start, "stored": length}


def client_feed_publisher(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Scenario 1's IbkrFeed with a RedisPublisher attached: delivery and publishing times."""
    import redis

    from brokerfeeds import IbkrFeed
    from brokerfeeds.bus import RedisPublisher

    feed = IbkrFeed(url=spec["url"], rest_url=spec["rest_url"], dispatch=spec.get("dispatch", "thread"))
    publisher = feed.add_publisher(RedisPublisher(spec["redis"], TEMPLATE.format(prefix=spec["prefix"])))
    assert isinstance(publisher, RedisPublisher)
    expected = spec["expected"]
    state = {"count": 0, "last": 0.0, "published_at": 0.0}
    done = threading.Event()

    def on_order(order: Any) -> None:
        state["count"] += 1
        state["last"] = monotonic()

    def watch() -> None:  # when did Redis acknowledge the last event?
        while not done.is_set():
            if publisher.stats.published >= expected:
                state["published_at"] = monotonic()
                return
            time.sleep(0.001)

    if spec.get("callbacks", True):
        feed.on_order(on_order)
    feed.subscribe_orders()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    feed.start()
    deadline = monotonic() + spec.get("timeout", 120)
    while not state["published_at"] and monotonic() < deadline:
        time.sleep(0.01)
    done.set()
    stats = publisher.stats
    feed.stop()
    r = redis.Redis.from_url(spec["redis"])
    keys = r.keys(f"{spec['prefix']}:*")
    if keys:
        r.delete(*keys)
    return {"count": state["count"], "last": state["last"], "published_at": state["published_at"],
            "published": stats.published, "ok": bool(state["published_at"]) and (
                state["count"] == expected or not spec.get("callbacks", True))}


def client_latency_consumer(spec: Dict[str, Any]) -> Dict[str, Any]:
    """RedisEvents (a consumer group): latency = callback entry − the server's send stamp."""
    from brokerfeeds.bus import RedisEvents

    events = RedisEvents(spec["redis"], f"{spec['prefix']}:ibkr:DU123456", group=spec.get("group"), start="$",
                         block=0.5)
    latencies: List[float] = []
    expected = spec["expected"]

    def on_order(order: Any) -> None:
        latencies.append(monotonic() - order.raw["bench_ts"])
        if len(latencies) >= expected:
            events.stop()

    events.on_order(on_order)
    ready = threading.Thread(target=lambda: (time.sleep(0.3), print("ready", flush=True)), daemon=True)
    ready.start()  # after the first read has started (the group is created at "$")
    timer = threading.Timer(spec.get("timeout", 60), events.stop)
    timer.daemon = True
    timer.start()
    events.run_forever()
    return {"count": len(latencies), "latencies": latencies, "duplicates": events.stats.duplicates}


def client_latency_publisher(spec: Dict[str, Any]) -> Dict[str, Any]:
    """IbkrFeed + RedisPublisher on the paced server, until everything was published."""
    from brokerfeeds import IbkrFeed
    from brokerfeeds.bus import RedisPublisher

    feed = IbkrFeed(url=spec["url"], rest_url=spec["rest_url"])
    publisher = feed.add_publisher(RedisPublisher(spec["redis"], TEMPLATE.format(prefix=spec["prefix"])))
    assert isinstance(publisher, RedisPublisher)
    feed.subscribe_orders()
    feed.start()
    deadline = monotonic() + spec.get("timeout", 60)
    while publisher.stats.published < spec["expected"] and monotonic() < deadline:
        time.sleep(0.05)
    published = publisher.stats.published
    feed.stop()
    return {"count": published}


def client_paced_cost(spec: Dict[str, Any]) -> Dict[str, Any]:
    """IbkrFeed on the paced server, with a publisher (``linger``) or without (None): its own callbacks' latency
    (the server's send stamp -> on_order) and the process's CPU time per event."""
    from brokerfeeds import IbkrFeed
    from brokerfeeds.bus import RedisPublisher

    feed = IbkrFeed(url=spec["url"], rest_url=spec["rest_url"])
    publisher: Optional[RedisPublisher] = None
    if spec["linger"] is not None:
        publisher = RedisPublisher(spec["redis"], TEMPLATE.format(prefix=spec["prefix"]), linger=spec["linger"])
        feed.add_publisher(publisher)
    expected = spec["expected"]
    latencies: List[float] = []
    marks: Dict[str, float] = {}

    def on_order(order: Any) -> None:
        now = monotonic()
        latencies.append(now - order.raw["bench_ts"])
        if len(latencies) == 1:
            marks["cpu0"], marks["t0"] = time.process_time(), now

    feed.on_order(on_order)
    feed.subscribe_orders()
    feed.start()
    deadline = monotonic() + spec.get("timeout", 60)
    while monotonic() < deadline and (len(latencies) < expected or (
            publisher is not None and publisher.stats.published < expected)):
        time.sleep(0.01)
    cpu, wall = time.process_time() - marks.get("cpu0", 0.0), monotonic() - marks.get("t0", 0.0)
    published = publisher.stats.published if publisher is not None else 0
    feed.stop()
    if publisher is not None:
        import redis

        r = redis.Redis.from_url(spec["redis"])
        keys = r.keys(f"{spec['prefix']}:*")
        if keys:
            r.delete(*keys)
    return {"count": len(latencies), "latencies": latencies, "cpu": cpu, "wall": wall, "published": published}


def client_memory(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Events buffered while Redis is unreachable: bytes per event."""
    import tracemalloc

    from brokerfeeds.bus import RedisPublisher
    from brokerfeeds.testing.redis_server import free_port

    events = _events(spec["count"])
    from brokerfeeds import events as ev

    json_bytes = sum(len(ev.to_json(e)) for e in events[:2000]) / min(2000, len(events))
    publisher = RedisPublisher(f"redis://127.0.0.1:{free_port()}/0", TEMPLATE.format(prefix="mem"),
                               max_buffer=len(events) + 1)
    gc.collect()
    rss0 = _rss()
    tracemalloc.start()
    publisher.start()
    for event in events:
        publisher.publish(event)
    while publisher._incoming:  # noqa: SLF001 - the benchmark waits for the encoding to finish
        time.sleep(0.01)
    gc.collect()
    traced, _peak = tracemalloc.get_traced_memory()
    rss1 = _rss()
    pending = publisher.pending
    buffered = sum(sys.getsizeof(b) for b in publisher._outbox)  # noqa: SLF001
    tracemalloc.stop()
    publisher.stop(0.1)
    return {"count": pending, "traced_per_event": traced / pending, "rss_per_event": (rss1 - rss0) / pending,
            "objects_per_event": buffered / pending + 8, "json_bytes": json_bytes}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


CLIENTS = {
    "pipeline": client_pipeline,
    "publisher": client_publisher,
    "feedpub": client_feed_publisher,
    "latcons": client_latency_consumer,
    "latpub": client_latency_publisher,
    "memory": client_memory,
    "pacedcost": client_paced_cost,
}


def client_main(raw: str) -> int:
    spec = json.loads(raw)
    try:
        result = CLIENTS[spec["kind"]](spec)
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        result = {"error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


def _env() -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("PYTHONDEVMODE", None)
    return env


def run(spec: Dict[str, Any], timeout: float = 180.0) -> Dict[str, Any]:
    """One contender in a fresh subprocess; its JSON result."""
    try:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_bus", "--client", json.dumps(spec)], cwd=ROOT,
                              env=_env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g}s"}
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)  # type: ignore[no-any-return]
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": f"exited {proc.returncode}: {' | '.join(tail)}"}


# ====================================================================== the four parts
def part_throughput(url: str, count: int, reps: int, batch: int = 1000) -> Scenario:
    scenario = Scenario(1, f"Publishing throughput ({count:,} IBKR order events, batches of {batch})")
    names = {"pipeline": "baseline: redis-py pipeline of XADDs (payloads pre-encoded)",
             "publisher": "RedisPublisher (JSON encoding included)"}
    values: Dict[str, List[float]] = {k: [] for k in names}
    errors: Dict[str, str] = {}
    for _ in range(reps):
        for kind in names:
            result = run({"kind": kind, "url": url, "count": count, "batch": batch,
                          "prefix": f"bench{uuid.uuid4().hex[:8]}"})
            if "error" in result or result.get("stored") != count:
                errors[kind] = result.get("error") or f"{result.get('stored')} of {count} stored"
                continue
            values[kind].append(result["count"] / result["seconds"])
    for kind, name in names.items():
        scenario.add(Row(name, values[kind], "ev/s", baseline=kind == "pipeline", note=errors.get(kind, "")))
    scenario.ratios()
    row = scenario.rows[1]
    if row.ratio is not None:
        check(row, row.ratio >= 0.8, ">=0.8x base")
    return scenario


def part_feed(url: str, count: int, reps: int) -> Scenario:
    scenario = Scenario(2, f"Feed + publisher against the feed alone (scenario 1 burst, {count:,} sor frames)")
    names = {"alone": "IbkrFeed delivery rate, no publisher (scenario 1 client)",
             "delivery": "IbkrFeed delivery rate, RedisPublisher attached",
             "published": "RedisPublisher publishing rate (attached)",
             "bare": "RedisPublisher publishing rate (attached, no callbacks)"}
    values: Dict[str, List[float]] = {k: [] for k in names}
    errors: Dict[str, str] = {}
    with ServerProcess(frames="sor", count=count, trigger_prefix="sor+", trigger=1) as server:
        scenario.facts["payload bytes"] = server.info["payload_bytes"]
        for _ in range(reps):
            base = dict(url=server.url, rest_url=server.rest_url, topic="sor", expected=count, timeout=120)
            alone = run_client(dict(base, kind="ibkrfeed", dispatch="thread"), timeout=150)
            blast = server.last_blast()
            if "error" in alone or not blast or not alone.get("ok"):
                errors["alone"] = alone.get("error") or "incomplete"
            else:
                values["alone"].append(count / (alone["last"] - blast["start"]))
            for callbacks in (True, False):
                both = run(dict(base, kind="feedpub", redis=url, prefix=f"bench{uuid.uuid4().hex[:8]}",
                                callbacks=callbacks))
                blast = server.last_blast()
                key = "published" if callbacks else "bare"
                if "error" in both or not blast or not both.get("ok"):
                    errors[key] = both.get("error") or f"only {both.get('published')} published"
                    continue
                if callbacks:
                    values["delivery"].append(count / (both["last"] - blast["start"]))
                values[key].append(count / (both["published_at"] - blast["start"]))
    for kind, name in names.items():
        scenario.add(Row(name, values[kind], "ev/s", baseline=kind == "alone", note=errors.get(kind, "")))
    scenario.ratios()
    delivered, published = values["delivery"], values["published"]
    if delivered and published:
        pairs = sorted(p / d for p, d in zip(published, delivered))
        scenario.facts["attached: publishing rate / delivery rate, same runs"] = \
            f"{pairs[len(pairs) // 2]:.2f}x (the publisher keeps up with the feed: >= ~1.0x)"
    return scenario


def part_latency(url: str, rate: float, seconds: float, reps: int) -> Scenario:
    scenario = Scenario(3, f"End-to-end latency at {rate:,.0f} events/s (server send -> consumer callback, "
                           "another process)")
    expected = int(rate * seconds)
    skip = expected // 10
    modes = {"group": "RedisEvents, consumer group (XACK after the callback)", None: "RedisEvents, no group (XREAD)"}
    stats: Dict[Any, Dict[str, List[float]]] = {m: {"p50": [], "p99": [], "max": []} for m in modes}
    errors: Dict[Any, str] = {}
    with ServerProcess(mode="paced", rate=rate, duration=seconds, trigger_prefix="sor+") as server:
        scenario.facts["samples per run"] = f"{expected - skip:,} (first {skip:,} dropped as warm-up)"
        for _ in range(reps):
            for mode in modes:
                prefix = f"bench{uuid.uuid4().hex[:8]}"
                consumer = subprocess.Popen(
                    [sys.executable, "-m", "benchmarks.bench_bus", "--client",
                     json.dumps({"kind": "latcons", "redis": url, "prefix": prefix, "group": mode,
                                 "expected": expected, "timeout": seconds + 30})],
                    cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                assert consumer.stdout is not None
                first = consumer.stdout.readline()  # "ready"
                if first.strip() != "ready":
                    errors[mode] = f"consumer did not start: {first.strip()}"
                    consumer.kill()
                    continue
                published = run({"kind": "latpub", "url": server.url, "rest_url": server.rest_url, "redis": url,
                                 "prefix": prefix, "expected": expected, "timeout": seconds + 30})
                out, _err = consumer.communicate(timeout=seconds + 60)
                result = json.loads(out.strip().splitlines()[-1])
                samples = sorted(result.get("latencies", [])[skip:])
                if "error" in published or not samples:
                    errors[mode] = published.get("error") or result.get("error") or "no samples"
                    continue
                stats[mode]["p50"].append(percentile(samples, 50) * 1e3)
                stats[mode]["p99"].append(percentile(samples, 99) * 1e3)
                stats[mode]["max"].append(samples[-1] * 1e3)
    for mode, name in modes.items():
        for stat in ("p50", "p99", "max"):
            row = scenario.add(Row(f"{name}  {stat}", stats[mode][stat], "ms", higher_is_better=False, digits=3,
                                   note=errors.get(mode, "") if stat == "p50" else ""))
            if stat == "p99" and row.values:
                check(row, (row.stats["median"] or 0) < 5.0, "<5 ms")
    return scenario


def part_paced_cost(url: str, rate: float, seconds: float, reps: int) -> Scenario:
    scenario = Scenario(5, f"What publishing costs the feed at {rate:,.0f} events/s (the feed's own callbacks, "
                           "its process's CPU)")
    expected = int(rate * seconds)
    skip = expected // 10
    # linger of the attached publisher; None: no publisher
    names: Dict[Optional[float], str] = {None: "IbkrFeed alone", 0.0: "+ RedisPublisher (default)",
                                         0.001: "+ RedisPublisher(linger=0.001)"}
    figures: Dict[Optional[float], Dict[str, List[float]]] = {m: {"p50": [], "p99": [], "cpu": []} for m in names}
    errors: Dict[Optional[float], str] = {}
    with ServerProcess(mode="paced", rate=rate, duration=seconds, trigger_prefix="sor+") as server:
        scenario.facts["samples per run"] = f"{expected - skip:,} (first {skip:,} dropped as warm-up)"
        for _ in range(reps):
            for linger in names:
                result = run({"kind": "pacedcost", "url": server.url, "rest_url": server.rest_url, "redis": url,
                              "prefix": f"bench{uuid.uuid4().hex[:8]}", "linger": linger, "expected": expected,
                              "timeout": seconds + 30})
                samples = sorted(result.get("latencies", [])[skip:])
                if "error" in result or result.get("count") != expected or (
                        linger is not None and result.get("published") != expected):
                    errors[linger] = result.get("error") or f"{result.get('count')} delivered, " \
                                                             f"{result.get('published')} published"
                    continue
                figures[linger]["p50"].append(percentile(samples, 50) * 1e3)
                figures[linger]["p99"].append(percentile(samples, 99) * 1e3)
                figures[linger]["cpu"].append(result["cpu"] / result["wall"] * 100)
    for stat, unit, label in (("p50", "ms", "callback latency p50"), ("p99", "ms", "callback latency p99"),
                              ("cpu", "%", "process CPU (% of one core)")):
        group = [scenario.add(Row(f"{name}: {label}", figures[linger][stat], unit, higher_is_better=False,
                                  digits=3 if unit == "ms" else 1, baseline=linger is None,
                                  note=errors.get(linger, "") if stat == "p50" else ""))
                 for linger, name in names.items()]
        scenario.ratios(group)
    cpu = {linger: summary(figures[linger]["cpu"])["median"] for linger in names}
    alone = cpu[None]
    if alone is not None:
        per_event = [f"{alone * 10_000 / rate:.1f} us alone"] + [
            f"+{(value - alone) * 10_000 / rate:.1f} us {names[linger].lstrip('+ ')}"
            for linger, value in cpu.items() if linger is not None and value is not None]
        scenario.facts["CPU per event in the feed's process"] = ", ".join(per_event)
    return scenario

def part_memory(count: int) -> Scenario:
    scenario = Scenario(4, f"Publisher memory while Redis is down ({count:,} IBKR order events buffered)")
    result = run({"kind": "memory", "count": count})
    if "error" in result:
        scenario.skipped = result["error"]
        return scenario
    scenario.facts["JSON form per event (raw included)"] = f"{result['json_bytes']:.0f} bytes"
    scenario.add(Row("bytes per buffered event (tracemalloc)", [result["traced_per_event"]], "B",
                     higher_is_better=False))
    scenario.add(Row("bytes per buffered event (buffer objects)", [result["objects_per_event"]], "B",
                     higher_is_better=False))
    scenario.add(Row("bytes per buffered event (RSS growth)", [result["rss_per_event"]], "B", higher_is_better=False))
    return scenario


def _compare(throughput: Scenario, feed: Scenario) -> None:
    """Part 1's publisher throughput against part 2's feed alone (same run)."""
    publisher = throughput.rows[1].stats["median"]
    alone = feed.rows[0].stats["median"]
    if publisher and alone:
        ok = publisher >= alone
        feed.facts["RedisPublisher throughput (part 1) / feed alone delivery rate"] = \
            f"{publisher / alone:.2f}x (target >= 1.0x: {'OK' if ok else 'MISSED'})"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_bus", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller bursts")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated parts (1-5)")
    parser.add_argument("--json", default="-", help="where to write the figures ('-': nowhere)")
    parser.add_argument("--redis", help="use this Redis instead of starting one (its data is left alone)")
    parser.add_argument("--client", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        return client_main(args.client)
    only = [int(x) for x in args.only.split(",") if x.strip()] or [1, 2, 3, 4, 5]
    count = 20_000 if args.quick else 100_000
    info = machine()
    print(f"brokerfeeds bus benchmarks ({'quick' if args.quick else 'full'}, {args.reps} reps) on "
          f"{info['nproc']} x {info['cpu']}, Python {info['python']}", flush=True)
    from brokerfeeds.testing.redis_server import RedisServer

    server = None
    url = args.redis
    if url is None:
        server = RedisServer(extra=["--appendonly", "no"]).start()
        url = server.url
        version = subprocess.run([server.binary, "--version"], capture_output=True, text=True).stdout.split()
        print(f"redis-server: {' '.join(version[:3])} on {url} (appendonly no)", flush=True)
    print(flush=True)
    results: List[Scenario] = []
    try:
        jobs = {1: lambda: part_throughput(url, count, args.reps),
                2: lambda: part_feed(url, count, args.reps),
                3: lambda: part_latency(url, 2000.0, 2.0 if args.quick else 5.0, args.reps),
                4: lambda: part_memory(count),
                5: lambda: part_paced_cost(url, 2000.0, 2.0 if args.quick else 5.0, args.reps)}
        for number in only:
            scenario = timed(jobs[number])
            if number == 2 and results and results[0].number == 1:
                _compare(results[0], scenario)
            print(render(scenario), flush=True)
            print(flush=True)
            results.append(scenario)
    finally:
        if server is not None:
            server.close()
    if args.json != "-":
        with open(args.json, "w") as f:
            json.dump({"machine": info, "scenarios": [s.as_dict() for s in results]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
