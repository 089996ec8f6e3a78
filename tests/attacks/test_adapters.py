"""Adapters under attack: bad values, bogus frames, garbage before auth, failing token providers.

Issue 10 ("Hardening: what broke under attack"), the adapters' part:

1. one bad field must not drop its valid neighbours: ``to_decimal`` never raises, and every
   adapter decodes per item (a bad item is reported and skipped alone); only ProtocolError
   leaves an adapter (RecursionError from a frame nested 100k deep included);
2. one Clear Street frame dated 2286 must not silence an account (in memory or persisted);
3. garbage before Firstock's authentication answer is a bad frame (retried), not a refusal;
4. an Upstox token provider that raises or returns nothing is a failed attempt (retried);
5. every adapter is fuzzed with real frames, mutated.

Adapters are tested as plain data; feed-level behaviour over real loopback sockets against
the simulators. Everything is bounded: the fuzzing runs ``max_examples=200`` per adapter by
default (derandomized), ``2000`` (random) with ``--attack-long`` (the ``attack_long`` fixture, when
``tests/attacks/conftest.py`` provides it) or ``BROKERFEEDS_ATTACK_LONG=1``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import time
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import brokerfeeds.brokers.firstock.protocol as firstock_module
import brokerfeeds.brokers.ibkr.protocol as ibkr_module
import brokerfeeds.protocol as protocol_module
from brokerfeeds import ClearStreetFeed, FirstockFeed, IbkrFeed, UpstoxFeed
from brokerfeeds.brokers.clearstreet import ClearStreetProtocol, trading_day
from brokerfeeds.brokers.firstock import FirstockProtocol
from brokerfeeds.brokers.ibkr import IbkrProtocol
from brokerfeeds.brokers.upstox import UpstoxProtocol
from brokerfeeds.errors import AuthenticationError, BrokerFeedsError, ConnectionFailed, ProtocolError
from brokerfeeds.events import Event, GttOrder, Order, Position
from brokerfeeds.marks import JsonFileMarkStore, confirmed_marks, new_york_day, plausible_marks
from brokerfeeds.protocol import (
    Fatal,
    NotReady,
    Protocol,
    RawMessage,
    Ready,
    Reconnect,
    Refresh,
    Report,
    Send,
    Subscription,
    parse_json,
)
from brokerfeeds.testing import ClearStreetSimulator, FirstockSimulator, IbkrSimulator, UpstoxSimulator
from brokerfeeds.values import _stdlib_loads, to_decimal, to_text
from helpers import FAST_RECONNECT, Recorder, wait_until

pytestmark = pytest.mark.timeout(60)

OUTPUTS = (Event, Send, Ready, NotReady, Reconnect, Refresh, Fatal, Report, RawMessage)
NOW_MS = 1_711_076_850_000  # 2024-03-22 (a Friday), the frames' time in the adapter tests
A = "100000"


def reports(outputs: List[Any]) -> List[BrokerFeedsError]:
    return [o.error for o in outputs if isinstance(o, Report)]


def of(kind: type, outputs: List[Any]) -> List[Any]:
    return [o for o in outputs if isinstance(o, kind)]


def deep(levels: int) -> Any:
    """A list nested ``levels`` deep, built without recursion."""
    root: List[Any] = []
    node = root
    for _ in range(levels - 1):
        child: List[Any] = []
        node.append(child)
        node = child
    return root


#: Frames with a value nested 1010 deep decode with orjson only (the stdlib decoder refuses the
#: whole frame, which another test covers): per-item isolation of such values needs orjson.
try:
    import orjson as _orjson  # noqa: F401
    NEEDS_ORJSON = pytest.mark.skipif(False, reason="")
except ImportError:
    NEEDS_ORJSON = pytest.mark.skipif(True, reason="a 1010-deep value inside a frame decodes with orjson only "
                                                    "(the 'fast' extra); without it the whole frame is refused")
DEEP_MARK = "\u0001DEEP\u0001"  # stands for a list nested 1010 deep in frames given as JSON text
DEEP_TEXT = "[" * 1010 + "]" * 1010  # orjson decodes up to 1024 levels; str() of it overflows Python's stack


def dumps(message: Any) -> bytes:
    """``message`` as a JSON frame, every ``DEEP_MARK`` a list nested 1010 deep (which the
    test's own json.dumps could not write)."""
    return json.dumps(message).replace(json.dumps(DEEP_MARK), DEEP_TEXT).encode()


@contextlib.contextmanager
def stdlib_decoder() -> Iterator[None]:
    """Decode frames with the standard library's json (as without the ``fast`` extra)."""
    saved = (protocol_module.loads, ibkr_module.loads, firstock_module.loads)
    protocol_module.loads = ibkr_module.loads = firstock_module.loads = _stdlib_loads
    try:
        yield
    finally:
        protocol_module.loads, ibkr_module.loads, firstock_module.loads = saved


def attack_long(request: pytest.FixtureRequest) -> bool:
    """``--attack-long`` (the conftest's fixture) or ``BROKERFEEDS_ATTACK_LONG``."""
    try:
        return bool(request.getfixturevalue("attack_long"))
    except pytest.FixtureLookupError:
        return bool(os.environ.get("BROKERFEEDS_ATTACK_LONG"))


# ================================================================= 1. to_decimal never raises
NUMBERISH = st.from_regex(r"\A[ CH+-]{0,2}[0-9]{0,6}(\.[0-9]{0,6})?([eE][+-]?[0-9]{1,9})?[KMBkmb%]?\Z")
ANY_VALUE = st.one_of(
    st.text(max_size=40), NUMBERISH, st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=True, allow_infinity=True), st.booleans(), st.none(),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.sampled_from(["1e999999", "1e999999K", "9e999999", "-1e999999M", "1e-999999", "0e999999", "sNaN",
                     "Infinity", "1_000", "C", "K", "%", ",", "H-", "1" * 5000, 10 ** 400, -(10 ** 400),
                     Decimal("1e999999"), Decimal("sNaN"), Decimal("0e-1000000")]),
)


def _accepted(number: Optional[Decimal]) -> bool:
    return number is None or (number.is_finite() and (not number or -324 <= number.adjusted() <= 308))


@settings(max_examples=600, deadline=None)
@given(ANY_VALUE, ANY_VALUE, ANY_VALUE)
def test_to_decimal_never_raises_and_its_numbers_are_safe_to_compute_with(a: Any, b: Any, c: Any) -> None:
    x, y, z = to_decimal(a), to_decimal(b), to_decimal(c)
    assert _accepted(x) and _accepted(y) and _accepted(z)
    if x is not None and y is not None and z is not None:
        x * y * z, x + y + z, x - y, float(x)  # noqa: B018 - never Overflow / InvalidOperation
        assert float(x) not in (float("inf"), float("-inf"))


def test_to_decimal_refuses_what_cannot_be_a_number_and_keeps_what_is() -> None:
    for bad in ("1e999999", "1e999999K", "9e999999", "1e400", 10 ** 400, Decimal("1e999999"), Decimal("NaN"),
                float("inf"), [1], {"a": 1}, deep(5000), b"12"):
        assert to_decimal(bad) is None, bad
    assert to_decimal("0e999999") == 0 and to_decimal("1.25M") == Decimal("1250000.00")
    assert to_decimal("1e308") == Decimal("1e308") and to_decimal(5e-324) is not None
    assert to_decimal(10 ** 300) == Decimal(10 ** 300) and to_decimal(" C7699.50 ") == Decimal("7699.50")


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.integers() | st.text(max_size=5) | st.floats(),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                                max_size=3), max_leaves=20))
def test_to_text_never_raises_and_a_structure_is_no_text(value: Any) -> None:
    text = to_text(value)
    assert text is None or isinstance(text, str)
    if isinstance(value, (list, dict)):
        assert text is None
    assert to_text(deep(5000)) is None and to_text({"a": deep(5000)}) is None


# ================================================================= 1. one bad item, its neighbours go on
def ibkr_ready() -> IbkrProtocol:
    protocol = IbkrProtocol()
    protocol.on_open(0.0)
    protocol.on_frame(b'{"topic":"sts","args":{"authenticated":true}}', True, 0.0)
    return protocol


def sor(*orders: Dict[str, Any]) -> bytes:
    return dumps({"topic": "sor", "args": list(orders)})


def ibkr_order(order_id: int, **fields: Any) -> Dict[str, Any]:
    return {"acct": "DU1", "orderId": order_id, "ticker": "AAPL", "side": "BUY", "status": "Submitted",
            "totalSize": 100.0, "filledQuantity": 0.0, "remainingQuantity": 100.0, "price": "190.5", **fields}


@pytest.mark.parametrize("bad_fields", [
    {"price": "1e999999K"},  # Overflow inside to_decimal
    {"totalSize": None, "filledQuantity": "9e999999", "remainingQuantity": "9e999999"},  # Overflow in the sum
], ids=["suffix-overflow", "sum-overflow"])
def test_ibkr_one_unparsable_number_loses_no_neighbour(bad_fields: Dict[str, Any]) -> None:
    protocol = ibkr_ready()
    out = protocol.on_frame(sor(ibkr_order(1), ibkr_order(2, **bad_fields), ibkr_order(3)), True, 1.0)
    orders = of(Order, out)
    assert [o.order_id for o in orders] == ["1", "2", "3"]  # the bad number is None; nothing else lost
    assert orders[1].price is None or orders[1].avg_price is None or orders[1].quantity is None


@pytest.mark.parametrize("bad_id", [{"nested": 1}, [2], pytest.param(DEEP_MARK, marks=NEEDS_ORJSON)],
                         ids=["object", "list", "1010-deep"])
def test_ibkr_an_undecodable_order_is_reported_and_skipped_alone(bad_id: Any) -> None:
    protocol = ibkr_ready()
    out = protocol.on_frame(sor(ibkr_order(1), ibkr_order(7, orderId=bad_id), ibkr_order(3)), True, 1.0)
    assert [o.order_id for o in of(Order, out)] == ["1", "3"]
    [error] = reports(out)
    assert isinstance(error, ProtocolError) and "IBKR order" in str(error)
    assert "DU1" in error.frame and "orderId" in error.frame  # an excerpt of the bad item, not of the frame
    assert protocol.orders.get("7") is None and len(protocol.orders) == 2


@NEEDS_ORJSON
def test_ibkr_executions_pnl_and_summary_rows_are_decoded_one_by_one() -> None:
    protocol = ibkr_ready()
    good = {"execution_id": "e1", "symbol": "AAPL", "side": "B", "size": "1", "price": "1", "order_ref": "1"}
    out = protocol.on_frame(dumps({"topic": "str", "args": [
        good, {**good, "execution_id": DEEP_MARK}, {**good, "execution_id": "e3"}]}), True, 1.0)
    assert [t.trade_id for t in out if type(t).__name__ == "Trade"] == ["e1", None, "e3"]  # no id: still a fill
    out = protocol.on_frame(dumps({"topic": "ssd+DU1", "result": [
        {"key": "NetLiquidation", "value": "100"}, {"key": DEEP_MARK, "value": "1"},
        {"key": "BuyingPower", "value": "400"}]}), True, 1.0)
    [balance] = [o for o in out if type(o).__name__ == "Balance"]
    assert balance.net_liquidation == 100 and balance.buying_power == 400 and len(reports(out)) == 1


def upstox_gtt(gtt_id: str, **fields: Any) -> Dict[str, Any]:
    return {"update_type": "gtt_order", "type": "SINGLE", "exchange": "NSE_EQ", "instrument_token": "NSE_EQ|X",
            "quantity": 1, "product": "D", "gtt_order_id": gtt_id, "expires_at": 1, "created_at": 1,
            "rules": [{"strategy": "ENTRY", "status": "PENDING", "trigger_type": "BELOW", "trigger_price": 10,
                       "transaction_type": "BUY"}], **fields}


def test_upstox_gtt_rules_that_are_no_list_are_reported_not_raised() -> None:
    protocol = UpstoxProtocol()
    protocol.on_open(0.0)
    out = protocol.on_frame(json.dumps(upstox_gtt("G1", rules=5)).encode(), False, 1.0)
    assert not of(GttOrder, out) and isinstance(reports(out)[0], ProtocolError)
    out = protocol.gtt_from([upstox_gtt("G2"), upstox_gtt("G3", rules=5), upstox_gtt("G4")])
    assert [g.gtt_order_id for g in of(GttOrder, out)] == ["G2", "G4"] and len(reports(out)) == 1


class Exploding(dict):  # type: ignore[type-arg]
    """A row whose values cannot be read (as if decoding it failed half-way)."""

    def get(self, key: Any, default: Any = None) -> Any:
        if key in ("quantity", "netQuantity", "position"):
            raise RuntimeError("cannot read " + str(key))
        return super().get(key, default)

    def items(self) -> Any:
        raise RuntimeError("cannot read the fields")


def test_upstox_rest_rows_are_decoded_one_by_one_and_an_unreadable_one_is_not_closed() -> None:
    protocol = UpstoxProtocol()
    row = {"instrument_key": "NSE_EQ|A", "trading_symbol": "A", "product": "D", "quantity": 5, "average_price": 1}
    first = protocol.positions_from([row, {**row, "instrument_key": "NSE_EQ|B", "trading_symbol": "B"}])
    assert len(of(Position, first)) == 2
    bad = Exploding({**row, "instrument_key": "NSE_EQ|B", "trading_symbol": "B", "quantity": 6})
    out = protocol.positions_from([{**row, "quantity": 7}, bad])
    assert [p.quantity for p in of(Position, out)] == [7]  # B is neither changed nor taken for closed
    assert "cannot read quantity" in str(reports(out)[0])
    orders = [{"order_id": "1", "status": "open", "quantity": 1}, {"order_id": deep(1010), "status": "open"},
              {"order_id": "3", "status": "open", "quantity": 1}]
    out = protocol.merge_orders(orders)
    assert [o.order_id for o in of(Order, out)] == ["1", "3"] and len(reports(out)) == 1


def firstock_ready() -> FirstockProtocol:
    protocol = FirstockProtocol("AB1234")
    protocol.on_open(0.0)
    protocol.on_frame(b'{"status":"success","message":"Authentication successful"}', False, 0.0)
    return protocol


def test_firstock_position_with_child_orders_not_a_list_is_reported_not_raised() -> None:
    protocol = firstock_ready()
    message = {"brkname": "FIRSTOCK", "uid": "AB1234", "actid": "AB1234", "tsym": "RELIANCE", "exch": "EQT",
               "pcode": "C", "netqty": "10", "totbuyavgprc": "1395.40", "rpnl": "0.00", "child_orders": 5}
    out = protocol.on_frame(json.dumps(message).encode(), False, 1.0)
    assert isinstance(reports(out)[0], ProtocolError) and not of(Position, out)
    message["child_orders"] = [{"exch": "NSE", "token": "2885", "tsym": "RELIANCE-EQ"}]
    [position] = of(Position, protocol.on_frame(json.dumps(message).encode(), False, 2.0))
    assert position.instrument == "NSE:2885" and position.quantity == 10


def test_firstock_rest_rows_and_v2_ticks_are_decoded_one_by_one() -> None:
    protocol = firstock_ready()
    rows = [{"orderNumber": "1", "status": "OPEN", "quantity": "1"}, {"orderNumber": deep(1010), "status": "OPEN"},
            {"orderNumber": "3", "status": "OPEN", "quantity": "1"}]
    out = protocol.merge_orders(rows, rest=True)
    assert [o.order_id for o in of(Order, out)] == ["1", "3"] and len(reports(out)) == 1
    rows = [{"userId": "AB1234", "tradingSymbol": "A-EQ", "exchange": "NSE", "token": "1", "product": "C",
             "netQuantity": "5"}]
    out = protocol.positions_from(rows + [Exploding(rows[0], token="2")] + [dict(rows[0], token="3")])
    assert [p.instrument for p in of(Position, out)] == ["NSE:1", "NSE:3"] and len(reports(out)) == 1
    frame = {"NSE:1": {"i_last_traded_price": 100}, "NSE:2": Exploding(i_last_traded_price=1),
             "NSE:3": {"i_last_traded_price": 300}}
    out = protocol._on_quotes(frame)  # as decoded from one V2 frame (Exploding: a tick that cannot be read)
    assert [q.instrument for q in out if type(q).__name__ == "Quote"] == ["NSE:1", "NSE:3"]


def cs_frame(seq: Optional[int], kind: str = "order-update", ts: Any = NOW_MS, **data: Any) -> bytes:
    message: Dict[str, Any] = {"timestamp": ts, "payload": {"type": kind}}
    if seq is not None:
        message["sequence"] = seq
        message["payload"]["data"] = {"order_id": f"o{seq}", "version": 1, "account_id": A, "status": "new",
                                      "quantity": "1", **data}
    return json.dumps(message).encode()


def cs_live(marks: Optional[Dict[str, Any]] = None, now: float = 100.0) -> ClearStreetProtocol:
    """An adapter subscribed to ``A`` whose ack (timestamped now) arrived."""
    protocol = ClearStreetProtocol(replay_timeout=30.0, marks=marks)
    protocol.use_token("tok")
    protocol.on_open(now)
    protocol.subscribe([Subscription("activity", A)], now)
    protocol.on_frame(json.dumps({"timestamp": NOW_MS, "payload": {
        "type": "subscribe-activity-ack", "account_id": A, "success": True}}).encode(), False, now)
    return protocol


def test_clearstreet_undecodable_data_is_reported_and_the_stream_goes_on() -> None:
    protocol = cs_live()
    out = protocol.on_frame(cs_frame(1, order_id={"x": 1}), False, 100.0)
    assert not of(Order, out) and isinstance(reports(out)[0], ProtocolError)
    out = protocol.on_frame(cs_frame(2, order_id=None), False, 100.0)  # used to raise out of on_frame
    assert not of(Order, out) and "order_id" in str(reports(out)[0])
    [order] = of(Order, protocol.on_frame(cs_frame(3), False, 100.0))
    assert order.order_id == "o3" and protocol.marks[A] == 3


# ================================================================= 1. only ProtocolError leaves an adapter
def ready_adapters() -> List[Tuple[str, Protocol]]:
    upstox = UpstoxProtocol()
    upstox.on_open(0.0)
    return [("ibkr", ibkr_ready()), ("upstox", upstox), ("firstock", firstock_ready()), ("clearstreet", cs_live())]


def test_a_frame_nested_100k_deep_is_a_protocol_error_with_either_decoder() -> None:
    frame = b"[" * 100_000 + b"]" * 100_000
    wrapped = b'{"topic":"sor","args":' + frame + b"}"
    for decoder in (contextlib.nullcontext, stdlib_decoder):
        with decoder():
            with pytest.raises(ProtocolError):
                parse_json(frame)
            for name, adapter in ready_adapters():
                for data in (frame, wrapped):
                    with pytest.raises(ProtocolError):
                        adapter.on_frame(data, False, 1.0)
        # Before authentication a Firstock frame that is not the answer is reported, never raised.
        with decoder():
            fresh = FirstockProtocol("AB1234")
            fresh.on_open(0.0)
            out = fresh.on_frame(frame, False, 1.0)
            assert isinstance(reports(out)[0], ProtocolError) and of(Reconnect, out)


def test_values_nested_1010_deep_never_raise_anything_but_protocol_error() -> None:
    value = DEEP_MARK
    frames = {
        "ibkr": [{"topic": "sor", "args": [ibkr_order(1, ticker=value, status=value)]},
                 {"topic": "ntf", "args": [value]}, {"topic": "act", "args": {"accounts": value}},
                 {"error": value, "code": value}, {"topic": value}],
        "upstox": [{"update_type": value}, {"update_type": "order", "order_id": "1", "status": value},
                   upstox_gtt("G", rules=[{"strategy": value}])],
        "firstock": [{"norenordno": "1", "status": value, "tsym": value},
                     {"NSE:1": {"i_last_traded_price": value, "best_buy": value}}, {"status": value, "message": value}],
        "clearstreet": [{"timestamp": NOW_MS, "sequence": 1, "payload": {"type": "order-update", "data": {
            "order_id": "1", "account_id": A, "status": value}}}, {"timestamp": value, "payload": {"type": value}}],
    }
    for name, adapter in ready_adapters():
        for message in frames[name]:
            try:
                out = adapter.on_frame(dumps(message), False, 100.0)
            except ProtocolError:
                continue
            assert all(isinstance(o, OUTPUTS) for o in out)


# ================================================================= 2. a far-future Clear Street frame
FAR_FUTURE_MS = 9_999_999_999_999  # 2286-11-20


def test_a_far_future_frame_moves_no_mark_and_later_events_are_delivered() -> None:
    protocol = cs_live()
    assert of(Order, protocol.on_frame(cs_frame(1), False, 100.0))
    out = protocol.on_frame(cs_frame(2, ts=FAR_FUTURE_MS), False, 101.0)
    assert not of(Order, out) and "cannot be real" in str(reports(out)[0])
    assert protocol.export_marks() == {A: {"sequence": 1, "trading_day": trading_day(NOW_MS)}}
    [order] = of(Order, protocol.on_frame(cs_frame(2, ts=NOW_MS + 1000), False, 102.0))
    assert order.order_id == "o2" and protocol.counters()["implausible"] == 1
    # Sequence 1 of "a new day" in 2286 is no rollover either.
    assert not of(Order, protocol.on_frame(cs_frame(1, ts=FAR_FUTURE_MS), False, 103.0))
    assert protocol.marks[A] == 2 and protocol.counters()["day_resets"] == 0


def test_a_real_rollover_still_resets_the_mark() -> None:
    protocol = cs_live()
    protocol.on_frame(cs_frame(1), False, 100.0)
    [order] = of(Order, protocol.on_frame(cs_frame(1, ts=NOW_MS + 86_400_000), False, 100.0 + 86_400))
    assert order.order_id == "o1" and protocol.counters()["day_resets"] == 1


def test_a_sequence_that_jumps_by_millions_is_reported_not_taken_for_a_gap() -> None:
    protocol = cs_live()
    protocol.on_frame(cs_frame(1), False, 100.0)
    out = protocol.on_frame(cs_frame(5_000_002), False, 101.0)
    assert "cannot be real" in str(reports(out)[0]) and not of(Reconnect, out) and not of(Order, out)
    assert of(Order, protocol.on_frame(cs_frame(2), False, 102.0)) and protocol.marks[A] == 2
    fresh = cs_live()  # no mark yet: a first sequence in the millions is as implausible
    assert not of(Order, fresh.on_frame(cs_frame(7_000_000), False, 100.0)) and A not in fresh.marks


def test_a_persisted_far_future_mark_is_discarded_when_the_replay_shows_today() -> None:
    protocol = cs_live(marks={A: {"sequence": 9, "trading_day": "2286-11-20"}})
    out = protocol.on_frame(cs_frame(1), False, 100.0)
    assert "discarding mark 9 of trading day 2286-11-20" in str(reports(out)[0])
    assert [o.order_id for o in of(Order, out)] == ["o1"]
    assert of(Order, protocol.on_frame(cs_frame(2), False, 100.0))
    assert protocol.export_marks()[A] == {"sequence": 2, "trading_day": trading_day(NOW_MS)}


def test_confirmed_marks_refuse_future_days_and_jumps_and_keep_the_saved_mark() -> None:
    today = "2024-03-22"
    saved = {A: {"sequence": 5, "trading_day": today}}
    accepted, refused = confirmed_marks({A: {"sequence": 1, "trading_day": "2286-11-20"}}, saved, today=today)
    assert accepted == {} and "2286-11-20" in refused[A]
    accepted, refused = confirmed_marks({A: {"sequence": 5 + 2_000_000, "trading_day": today}}, saved, today=today)
    assert accepted == {} and "jumps" in refused[A]
    assert confirmed_marks({A: {"sequence": 6, "trading_day": today}}, saved, today=today)[0] == {
        A: {"sequence": 6, "trading_day": today}}
    assert confirmed_marks({A: {"sequence": 3, "trading_day": "2024-03-19"}}, {}, today=today)[0]  # a long weekend
    assert plausible_marks({A: {"sequence": 3, "trading_day": "2286-11-20"}, "B": 4}, today=today) == (
        {"B": 4}, {A: "trading day 2286-11-20 is after today (2024-03-22)"})


def test_json_file_store_never_writes_a_bogus_mark(tmp_path: Path) -> None:
    path = tmp_path / "marks.json"
    store = JsonFileMarkStore(str(path), clock=lambda: NOW_MS / 1000.0 + 43_200)  # 2024-03-22 in New York
    store.save({A: {"sequence": 4, "trading_day": "2024-03-22"}})
    store.save({A: {"sequence": 1, "trading_day": "2286-11-20"}, "B": {"sequence": 2, "trading_day": "2024-03-22"}})
    assert json.loads(path.read_text()) == {A: {"sequence": 4, "trading_day": "2024-03-22"},
                                            "B": {"sequence": 2, "trading_day": "2024-03-22"}}
    path.write_text(json.dumps({A: {"sequence": 1, "trading_day": "2286-11-20"}}))  # written by an old version
    assert store.load() == {}


def _cs_feed(sim: ClearStreetSimulator, store: JsonFileMarkStore) -> Tuple[ClearStreetFeed, Recorder]:
    feed = ClearStreetFeed(access_token=sim.token, url=sim.url, rest_url=sim.rest_url, reconnect=FAST_RECONNECT,
                           stale_after=5.0, ping_interval=None, sequence_store=store, store_interval=0.05)
    recorder = Recorder(feed)
    feed.subscribe_activity(sim.account)
    return feed, recorder


def test_feed_one_far_future_frame_does_not_silence_the_account_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "marks.json"
    store = JsonFileMarkStore(str(path))
    with ClearStreetSimulator(hb_interval=0.2) as sim:
        sim.place_order("AAPL", quantity=10, price=1.0)
        feed, rec = _cs_feed(sim, store)
        with feed:
            rec.wait_for("replay_complete")
            rec.wait_for("order")
            sim.send_far_future()
            error = rec.wait_for("error", lambda e: isinstance(e, ProtocolError) and "cannot be real" in str(e))[0]
            assert "2286-11-20" in str(error)
            second = sim.place_order("MSFT", quantity=5, price=2.0)
            assert rec.wait_for("order", lambda o: o.order_id == second)[0].replayed is False
            wait_until(lambda: path.exists() and json.loads(path.read_text())[sim.account]["sequence"] == 2)
        assert "2286" not in path.read_text()
        assert json.loads(path.read_text())[sim.account]["trading_day"] == new_york_day(time.time())
        third = sim.place_order("NVDA", quantity=1, price=3.0)  # while no feed runs
        feed, rec = _cs_feed(sim, JsonFileMarkStore(str(path)))
        with feed:
            assert rec.wait_for("order", lambda o: o.order_id == third)[0].replayed is True
            fourth = sim.place_order("AMD", quantity=1, price=4.0)
            rec.wait_for("order", lambda o: o.order_id == fourth)
            assert [o.raw["sequence"] for o in rec.of("order")] == [3, 4]  # the day's first two: not again


# ================================================================= 3. Firstock: garbage before the auth answer
@pytest.mark.parametrize("early", [b"\x00\xffgarbage{", b'{"status": "failed", "message": "invalid request"}',
                                   b"<html>502 Bad Gateway</html>", b"[1, 2, 3]"],
                         ids=["bytes", "failed-not-auth", "html", "json-list"])
def test_firstock_garbage_before_the_auth_answer_is_reported_and_retried(early: bytes) -> None:
    protocol = FirstockProtocol("AB1234")
    protocol.on_open(0.0)
    out = protocol.on_frame(early, False, 0.1)
    assert not of(Fatal, out) and of(Reconnect, out) and isinstance(reports(out)[0], ProtocolError)


@pytest.mark.parametrize("refusal, error", [
    (b'{"status": "failed", "message": "unauthenticated"}', AuthenticationError),
    (b'{"status": "Failed", "message": "Invalid jKey"}', AuthenticationError),
    (b"Maximum sessions limit (3) reached", AuthenticationError),
])
def test_firstock_a_recognised_refusal_is_still_fatal(refusal: bytes, error: type) -> None:
    protocol = FirstockProtocol("AB1234")
    protocol.on_open(0.0)
    [fatal] = of(Fatal, protocol.on_frame(refusal, False, 0.1))
    assert isinstance(fatal.error, error)


def test_feed_firstock_garbage_before_auth_reconnects_instead_of_stopping() -> None:
    with FirstockSimulator(ping_every=0.2, pong_deadline=1.0) as sim:
        sim.send_before_auth(b"\x00\xffnot the answer{")
        feed = FirstockFeed(sim.user_id, sim.jkey, url=sim.url, rest_url=sim.rest_url, stale_after=2.0,
                            ping_interval=0.5, reconnect=FAST_RECONNECT)
        rec = Recorder(feed)
        with feed:
            assert feed.wait_connected(5)
            assert isinstance(rec.wait_for("error")[0], ProtocolError)
            assert sim.connections == 2 and feed.error is None and feed.state == "connected"
            rec.wait_for("connect")
            assert len(rec.of("connect")) == 1  # the first connection never looked usable
            order_id = sim.place_order("RELIANCE-EQ", "B", 10, 1395.40)
            rec.wait_for("order", lambda o: o.order_id == order_id)


# ================================================================= 4. Upstox: a token provider that fails
def _upstox_feed(sim: UpstoxSimulator, provider: Callable[[], Any]) -> Tuple[UpstoxFeed, Recorder]:
    feed = UpstoxFeed(token_provider=provider, rest_url=sim.rest_url, reconnect=FAST_RECONNECT,
                      ping_interval=0.1, stale_after=0.6)
    return feed, Recorder(feed)


@pytest.mark.parametrize("first_answer", ["raise", "", None], ids=["raises", "empty", "none"])
def test_feed_upstox_token_provider_failure_is_a_failed_attempt_retried(first_answer: Any) -> None:
    with UpstoxSimulator(ping_every=0.1) as sim:
        calls: List[int] = []

        def provider() -> Any:
            calls.append(1)
            if len(calls) == 1:
                if first_answer == "raise":
                    raise RuntimeError(f"vault unreachable (last token {sim.token})")
                return first_answer
            return sim.token

        feed, rec = _upstox_feed(sim, provider)
        feed.subscribe_orders()
        with feed:
            assert feed.wait_connected(5)
            error = rec.wait_for("error")[0]
            assert isinstance(error, ConnectionFailed) and "token provider" in str(error)
            assert sim.token not in str(error) and feed.error is None
            if first_answer == "raise":
                assert "RuntimeError: vault unreachable" in str(error)
            else:
                assert ("empty token" if first_answer == "" else "None") in str(error)
            order_id = sim.place_order("NHPC-EQ", "BUY", 10, 92.5)
            rec.wait_for("order", lambda o: o.order_id == order_id)


# ================================================================= 1. feed level: a bad order among good ones
def test_feed_ibkr_a_bad_order_in_a_sor_frame_costs_no_neighbour() -> None:
    with IbkrSimulator(hb_interval=0.1) as sim:
        feed = IbkrFeed(url=sim.url, rest_url=sim.rest_url, heartbeat_interval=0.5, stale_after=1.0,
                        reconnect=FAST_RECONNECT)
        rec = Recorder(feed)
        feed.subscribe_orders()
        with feed:
            assert feed.wait_connected(5)
            wait_until(lambda: sim.subscribers("sor") == 1)
            sim.send_orders([ibkr_order(11), ibkr_order(12, price="1e999999K", orderId={"bad": 1}),
                             ibkr_order(13, avgPrice="9e999999")])
            orders = rec.wait_for("order", count=2)
            assert [o.order_id for o in orders] == ["11", "13"]
            error = rec.wait_for("error")[0]
            assert isinstance(error, ProtocolError) and "bad" in error.frame
            assert feed.state == "connected" and feed.stats.malformed == 0


# ================================================================= 5. fuzzing with real frames, mutated
IBKR_FRAMES: List[Any] = [
    {"topic": "system", "success": "simuser", "isFT": False, "isPaper": True},
    {"topic": "act", "args": {"accounts": ["DU1"], "selectedAccount": "DU1", "sessionId": "s", "isPaper": True}},
    {"topic": "sts", "args": {"authenticated": True, "competing": False, "fail": ""}},
    {"topic": "sor", "args": [ibkr_order(1, conid=265598, avgPrice="190.4", lastExecutionTime_r=1711076850000,
                                         bgColor="#000000", orderType="Limit"),
                              {"acct": "DU1", "orderId": 1, "status": "Filled", "filledQuantity": 100.0}]},
    {"topic": "str", "args": [{"execution_id": "0000e0d5.00000001.01.01", "symbol": "AAPL", "side": "B",
                               "size": "40", "price": "190.4", "order_ref": "1", "account": "DU1",
                               "conid": "265598", "exchange": "ISLAND", "trade_time_r": 1711076850000}]},
    {"topic": "spl", "args": {"DU1.Core": {"rowType": 1, "dpl": 15.7, "nl": 100000.0, "upl": 2.5, "mv": 0.0}}},
    {"31": "190.1", "84": "190.0", "86": "190.2", "88": "1,200", "85": "3.5K", "7762": "1.25M", "conid": 265598,
     "_updated": 1711076850000, "server_id": "q0", "topic": "smd+265598"},
    {"topic": "ssd+DU1", "result": [{"key": "NetLiquidation", "value": "100000", "timestamp": 1},
                                    {"key": "BuyingPower-S", "monetaryValue": 400000}]},
    {"topic": "ntf", "args": [{"id": "X", "text": "heads up", "title": "Warning"}]},
    {"topic": "blt", "args": {"id": "1", "message": "exchange closed"}},
    {"error": "Topic unknown 'xyz'", "code": 1, "topic": "xyz"},
]
UPSTOX_FRAMES: List[Any] = [
    {"update_type": "order", "user_id": "7AB123", "exchange": "NSE", "instrument_token": "NSE_EQ|INE848E01016",
     "instrument_key": "NSE_EQ|INE848E01016", "trading_symbol": "NHPC-EQ", "product": "D", "order_type": "LIMIT",
     "average_price": 92.45, "price": 92.5, "quantity": 10, "pending_quantity": 6, "transaction_type": "BUY",
     "status": "open", "exchange_timestamp": "2024-03-22 10:15:00", "order_id": "240221025997024",
     "order_timestamp": "2024-03-22 10:14:59", "filled_quantity": 4, "placed_by": "7AB123"},
    {"update_type": "position", "instrument_token": "NSE_EQ|INE848E01016", "instrument_key": "NSE_EQ|INE848E01016",
     "exchange": "NSE_EQ", "product": "D", "multiplier": 1, "average_price": 0, "quantity": 4, "buy_price": 92.45,
     "sell_price": 0, "day_buy_quantity": 4, "day_buy_price": 92.45},
    {"update_type": "holding", "instrument_token": "NSE_EQ|INE062A01020", "instrument_key": "NSE_EQ|INE062A01020",
     "average_price": 600.5, "isin": "INE062A01020", "quantity": 3, "product": "D", "exchange": "NSE"},
    upstox_gtt("GTT-1", created_at=1711076850000000, expires_at=1742612850000000),
    {"update_type": "margin_alert", "user_id": "7AB123", "level": "warning"},
]
FIRSTOCK_FRAMES: List[Any] = [
    {"norenordno": "26042400010001", "status": "OPEN", "reporttype": "New", "tsym": "RELIANCE-EQ", "exch": "NSE",
     "token": "2885", "trantype": "B", "qty": "10", "prc": "1395.40", "prctyp": "LMT", "pcode": "C",
     "uid": "AB1234", "actid": "AB1234", "tm": "1711076850", "fillshares": "4", "avgprc": "1395.40",
     "flqty": "4", "flprc": "1395.40", "flid": "F1", "fltm": "1711076850"},
    {"brkname": "FIRSTOCK", "uid": "AB1234", "actid": "AB1234", "tsym": "RELIANCE", "token": "RELIANCE",
     "exch": "EQT", "pcode": "C", "netqty": "4", "totbuyavgprc": "1395.40", "rpnl": "0.00",
     "child_orders": [{"exch": "NSE", "token": "2885", "tsym": "RELIANCE-EQ", "netqty": "4"}]},
    {"NSE:26000": {"i_last_traded_price": 2265035, "i_volume_traded_today": 11238602, "i_feed_time": 1711076850,
                   "best_buy": [{"price": 2265030, "quantity": 10, "orders": 1}, {}],
                   "best_sell": [{"price": 2265040, "quantity": 12, "orders": 1}],
                   "i_upper_circuit_limit": 2491538.5000000005},
     "BSE:1": {"i_last_traded_price": 9223372036854775808, "i_open_price": 0}},
    {"c_exch_seg": "NSE", "c_symbol": "2885", "i_last_traded_price": 139540, "i_feed_time": 1711076850},
    {"status": "success", "message": "Subscribed"},
    {"status": "failed", "message": "unauthenticated"},
]
CS_FRAMES: List[Any] = [
    {"timestamp": NOW_MS, "sequence": 1, "payload": {"type": "order-update", "data": {
        "order_id": "12390001", "version": 2, "account_id": A, "account_number": "ACC0001", "state": "open",
        "status": "partially-filled", "symbol": "AAPL", "order_type": "limit", "side": "buy", "quantity": "100",
        "filled_quantity": "40", "price": "190.5", "average_price": 190.45, "updated_at": NOW_MS}}},
    {"timestamp": NOW_MS, "sequence": 2, "payload": {"type": "trade-notice", "data": {
        "trade_id": "88000001", "order_id": "12390001", "account_id": A, "symbol": "AAPL", "side": "sell-short",
        "quantity": "40", "price": "190.45", "created_at": NOW_MS}}},
    {"timestamp": NOW_MS, "sequence": 3, "payload": {"type": "position-update", "data": {
        "account_id": A, "symbol": "AAPL", "quantity": "40", "average_cost": 190.45}}},
    {"timestamp": NOW_MS, "sequence": 4, "payload": {"type": "buying-power-update", "data": {
        "account_id": A, "amount": 992381.2}}},
    {"timestamp": NOW_MS, "sequence": 5, "payload": {"type": "locate-inventory-update", "data": {
        "account_id": A, "symbol": "GME", "available": "1000", "reserved": "10", "used": "5"}}},
    {"timestamp": NOW_MS, "payload": {"type": "heartbeat"}},
    {"timestamp": NOW_MS, "payload": {"type": "subscribe-activity-ack", "account_id": A, "success": True,
                                      "details": "Subscribed successfully"}},
    {"timestamp": NOW_MS, "payload": {"type": "replay-complete"}},
    {"timestamp": NOW_MS, "payload": {"type": "error-notice", "details": "Internal error"}},
]

ODD_VALUES = [None, [], {}, [1, "x"], {"a": {"b": 1}}, 10 ** 30, -(10 ** 30), 2 ** 63, -1, 0, True, "",
              " ", "1e999999", "1e999999K", "9e999999", "-9e999999M", "NaN", float("nan"), float("inf"), "\u0000",
              "\U0001f4a5", "x" * 300, DEEP_MARK, DEEP_MARK, "1e999999K"]


def _paths(value: Any, here: Tuple[Any, ...] = ()) -> List[Tuple[Any, ...]]:
    found = [here]
    if isinstance(value, dict):
        for key, item in value.items():
            found.extend(_paths(item, here + (key,)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(_paths(item, here + (index,)))
    return found


def _at(frame: Any, path: Tuple[Any, ...]) -> Any:
    for step in path:
        frame = frame[step]
    return frame


def _poison(value: Any, odd: Any) -> Any:
    """``value`` with every number (and every numeric string) replaced by ``odd``."""
    if isinstance(value, dict):
        return {k: _poison(v, odd) for k, v in value.items()}
    if isinstance(value, list):
        return [_poison(v, odd) for v in value]
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(value, str):
        try:
            float(value.replace(",", "").rstrip("KMB%"))
            numeric = True
        except ValueError:
            pass
    return copy.deepcopy(odd) if numeric else value


def _mutate(frame: Any, path: Tuple[Any, ...], op: str, odd: Any) -> Any:
    if not path:
        return copy.deepcopy(odd) if op == "replace" else frame
    parent = frame
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if op == "drop":
        del parent[last]
    elif op == "wrap":
        parent[last] = {"nested": [parent[last]]}
    else:
        parent[last] = copy.deepcopy(odd)
    return frame


@st.composite
def mutated(draw: Callable[..., Any], frames: List[Any]) -> Tuple[bytes, bool]:
    """One of ``frames``, mutated: keys dropped, values replaced by odd ones (None, lists,
    huge ints, "1e999999", NaN, a 900-deep list), wrapped; then maybe truncated or given
    invalid UTF-8. Returns ``(bytes, decode with the standard library's json)``."""
    frame = copy.deepcopy(draw(st.sampled_from(frames)))
    if draw(st.integers(0, 3)) == 0:  # poison every number: each one turns into the same odd value
        frame = _poison(frame, draw(st.sampled_from(ODD_VALUES)))
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(frame)
        leaves = [p for p in paths if p and not isinstance(_at(frame, p), (dict, list))]
        pool = leaves if leaves and draw(st.booleans()) else paths  # values more often than structure
        path = pool[draw(st.integers(0, len(pool) - 1))]
        frame = _mutate(frame, path, draw(st.sampled_from(["drop", "replace", "replace", "replace", "wrap"])),
                        draw(st.sampled_from(ODD_VALUES)))
    data = dumps(frame)
    tail = draw(st.sampled_from(["none", "none", "truncate", "invalid-utf8"]))
    if tail == "truncate" and data:
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif tail == "invalid-utf8":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + b"\xff\xfe" + data[at:]
    return data, draw(st.booleans())


def _feed_one(adapter: Protocol, data: bytes, stdlib: bool, now: float) -> List[Any]:
    with stdlib_decoder() if stdlib else contextlib.nullcontext():
        try:
            out = adapter.on_frame(data, False, now)
        except ProtocolError:
            return []
    for output in out:
        assert isinstance(output, OUTPUTS), output
        if isinstance(output, (Report, Fatal)):
            assert isinstance(output.error, BrokerFeedsError)
    return out


def _fuzz(request: pytest.FixtureRequest, frames: List[Any], make: Callable[[], Protocol],
          check: Callable[[Protocol, List[Any]], None]) -> None:
    examples = 2000 if attack_long(request) else 200

    @settings(max_examples=examples, deadline=None, derandomize=not attack_long(request),
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(mutated(frames), min_size=1, max_size=3))
    def run(batch: List[Tuple[bytes, bool]]) -> None:
        adapter = make()
        outputs: List[Any] = []
        for data, stdlib in batch:
            outputs.extend(_feed_one(adapter, data, stdlib, 100.0))
        check(adapter, outputs)

    run()


def test_fuzz_ibkr(request: pytest.FixtureRequest) -> None:
    def check(adapter: Protocol, outputs: List[Any]) -> None:
        out = adapter.on_frame(sor(ibkr_order(987654321)), True, 100.0)
        assert [o.order_id for o in of(Order, out)] == ["987654321"]

    _fuzz(request, IBKR_FRAMES, ibkr_ready, check)


def test_fuzz_upstox(request: pytest.FixtureRequest) -> None:
    def make() -> Protocol:
        adapter = UpstoxProtocol()
        adapter.on_open(0.0)
        return adapter

    def check(adapter: Protocol, outputs: List[Any]) -> None:
        frame = dict(UPSTOX_FRAMES[0], order_id="999000111")
        out = adapter.on_frame(json.dumps(frame).encode(), False, 100.0)
        assert [o.order_id for o in of(Order, out)] == ["999000111"]

    _fuzz(request, UPSTOX_FRAMES, make, check)


def test_fuzz_firstock(request: pytest.FixtureRequest) -> None:
    def check(adapter: Protocol, outputs: List[Any]) -> None:
        frame = dict(FIRSTOCK_FRAMES[0], norenordno="99990000")
        out = adapter.on_frame(json.dumps(frame).encode(), False, 100.0)
        assert [o.order_id for o in of(Order, out)] == ["99990000"]

    _fuzz(request, FIRSTOCK_FRAMES, firstock_ready, check)


def test_fuzz_firstock_before_auth(request: pytest.FixtureRequest) -> None:
    def make() -> Protocol:
        adapter = FirstockProtocol("AB1234")
        adapter.on_open(0.0)
        return adapter

    def check(adapter: Protocol, outputs: List[Any]) -> None:
        for fatal in of(Fatal, outputs):  # only a recognised refusal is fatal
            assert any(word in str(fatal.error).lower() for word in ("unauthenticated", "sessions limit", "jkey"))

    _fuzz(request, FIRSTOCK_FRAMES + [{"status": "success", "message": "Authentication successful"}], make, check)


def test_fuzz_clearstreet(request: pytest.FixtureRequest) -> None:
    def check(adapter: Protocol, outputs: List[Any]) -> None:
        assert isinstance(adapter, ClearStreetProtocol)
        if of(Reconnect, outputs):  # what the engine does with one: a new connection, a new subscribe
            adapter.on_close()
            adapter.on_open(100.0)
            adapter.subscribe([Subscription("activity", A)], 100.0)
        seq = adapter.marks.get(A, 0) + 1
        out = adapter.on_frame(cs_frame(seq, order_id="o-check"), False, 100.0)
        assert [o.order_id for o in of(Order, out)] == ["o-check"], (seq, adapter.export_marks(), out)

    _fuzz(request, CS_FRAMES, cs_live, check)
