"""Smoke test of the benchmarks: a tiny version of every scenario, for correctness only.

No timing is asserted (this machine is small and noisy); what is checked is that every
contender ran, delivered every message it was sent, and that the frame sets keep their
promises (every frame is a change, so every frame reaches a callback).
"""

from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import frames as fr  # noqa: E402
from benchmarks.harness import Scenario, installed, render  # noqa: E402
from benchmarks.scale import SCALES  # noqa: E402

TINY = SCALES["tiny"]
pytestmark = pytest.mark.timeout(60)


def _ran(scenario: Scenario) -> None:
    """Every row has figures and no error note; the table renders."""
    assert scenario.skipped is None, scenario.skipped
    assert scenario.rows, render(scenario)
    for row in scenario.rows:
        assert row.values, f"{row.name}: {row.note}"
    assert scenario.title in render(scenario)


def test_every_sor_frame_is_an_order_change() -> None:
    from brokerfeeds.brokers.ibkr import IbkrProtocol
    from brokerfeeds.events import Order, OrderStatus

    protocol = IbkrProtocol()
    payloads = fr.sor_frames(500)
    orders = [o for p in payloads for o in protocol.on_frame(p, True, 0.0) if isinstance(o, Order)]
    assert len(orders) == len(payloads)
    assert any(o.status is OrderStatus.FILLED for o in orders) and 300 < fr.sizes(payloads)["mean"] < 800


def test_every_upstox_frame_is_an_order_change() -> None:
    from brokerfeeds.brokers.upstox import UpstoxProtocol
    from brokerfeeds.events import Order, OrderStatus

    protocol = UpstoxProtocol()
    payloads = fr.upstox_frames(700)
    orders = [o for p in payloads for o in protocol.on_frame(p, False, 0.0) if isinstance(o, Order)]
    assert len(orders) == len(payloads)
    statuses = {o.status for o in orders}
    assert {OrderStatus.PARTIALLY_FILLED, OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.REJECTED} <= statuses
    assert 700 < fr.sizes(payloads)["mean"] < 900


def test_every_firstock_frame_is_an_order_change() -> None:
    from brokerfeeds.brokers.firstock import FirstockProtocol
    from brokerfeeds.events import Order, OrderStatus
    from brokerfeeds.protocol import Ready, Refresh

    protocol = FirstockProtocol("AB1234", can_refresh=True)
    assert any(isinstance(o, Ready) for o in protocol.on_frame(
        b'{"status":"success","message":"Authentication successful"}', False, 0.0))
    payloads = fr.firstock_frames(700)
    outputs = [o for p in payloads for o in protocol.on_frame(p, False, 0.0)]
    orders = [o for o in outputs if isinstance(o, Order)]
    assert len(orders) == len(payloads)
    statuses = {o.status for o in orders}
    assert {OrderStatus.PARTIALLY_FILLED, OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.REJECTED} <= statuses
    assert not any(isinstance(o, Refresh) for o in outputs)  # fill fields present: no order book refresh
    assert 400 < fr.sizes(payloads)["mean"] < 600


def test_soak_block_repeats_without_repeating_a_state() -> None:
    from brokerfeeds.brokers.ibkr import IbkrProtocol
    from brokerfeeds.events import Order, Quote

    protocol = IbkrProtocol()
    block = fr.soak_frames(400, fr.quote_conids(4))
    events = [e for _ in range(3) for p in block for e in protocol.on_frame(p, True, 0.0)
              if isinstance(e, (Order, Quote))]
    assert len(events) == 3 * len(block)


def test_ws_frame_lengths() -> None:
    for size in (0, 125, 126, 65535, 65536):
        frame = fr.ws_frame(b"x" * size)
        assert frame[0] == 0x82 and frame.endswith(b"x" * size)
        assert len(frame) - size == (2 if size < 126 else 4 if size < 65536 else 10)


def test_scenario_1_orders() -> None:
    from benchmarks.scenarios import throughput

    scenario = throughput.run_orders(TINY)
    _ran(scenario)
    for row in scenario.rows:
        if row.name.startswith("IbkrFeed"):
            assert row.extra["delivered"] == [TINY.orders]
    assert any(r.baseline for r in scenario.rows)
    assert any(r.name.startswith("ibind") for r in scenario.rows) == installed("ibind")


def test_scenario_2_quotes() -> None:
    from benchmarks.scenarios import throughput

    scenario = throughput.run_quotes(TINY)
    _ran(scenario)
    for row in scenario.rows:
        if row.name.startswith("IbkrFeed"):  # delivered or coalesced: every quote accounted for
            assert row.extra["delivered"][0] + row.extra["coalesced"][0] == TINY.quotes + TINY.conids


def test_scenario_3_clearstreet_replay() -> None:
    from benchmarks.scenarios import peers

    if not peers.clearstreet_available():
        pytest.skip("Clear Street feed not importable")
    _ran(peers.run_clearstreet(TINY))


def test_scenario_4_upstox_firstock_vs_sdks() -> None:
    from benchmarks.scenarios import peers

    scenario = peers.run_india(TINY)
    _ran(scenario)
    names = [row.name for row in scenario.rows]
    for broker in peers.INDIA:
        ours = [row for row in scenario.rows if row.name.startswith(f"{broker.name}: {broker.feed}")]
        assert ours, names
        assert sum(row.baseline for row in scenario.rows if row.name.startswith(broker.name)) == 1
        assert any(n.startswith(f"{broker.name}: {broker.sdk_label}") for n in names) == installed(broker.sdk_module)
        assert any("orjson" in row.name for row in ours) == installed("orjson")
    for row in scenario.rows:  # each contender delivered every order update, once
        assert row.extra["delivered"] == [TINY.india], row.name


def test_scenario_5_latency() -> None:
    from benchmarks.scenarios import latency

    scenario = latency.run_latency(TINY)
    _ran(scenario)
    assert all(v > 0 for row in scenario.rows for v in row.values)


@pytest.mark.skipif(not installed("psutil"), reason="psutil (bench extra) not installed")
def test_scenario_6_idle_and_7_soak() -> None:
    from benchmarks.scenarios import idle, soak

    _ran(idle.run_idle(TINY))
    scenario = soak.run_soak(TINY)
    _ran(scenario)
    assert f"{TINY.soak + TINY.conids:,} delivered" in scenario.rows[0].note


def test_scenario_8_recovery_loses_nothing() -> None:
    from benchmarks.scenarios import peers, recovery

    cs = peers.clearstreet_recovery if peers.clearstreet_available() else None
    scenario = recovery.run_recovery(TINY, cs)
    _ran(scenario)
    for row in scenario.rows:
        if row.unit in ("orders", "events"):
            assert row.values == [0], row.name
