"""The JSON form of events: to_dict / from_dict, to_json / from_json (schema 1).

Round trips are checked on generated events of every kind (odd decimals, times in odd
zones, long and non-BMP strings, None wherever a field is optional), with the fields that
attrs leaves out of ``==`` (raw, values, fields, rules) compared explicitly; then the
documented choices one by one, the errors of the reader, and the repair of free-form
content that is not JSON.
"""

from __future__ import annotations

import collections.abc
import datetime as dt
import enum
import json
import math
import re
import types
import typing
from decimal import Decimal
from typing import Any, Dict, List, Mapping, Type

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from brokerfeeds import events
from brokerfeeds.events import (
    EVENT_TYPES,
    SCHEMA_VERSION,
    Balance,
    Connected,
    Disconnected,
    Event,
    GttOrder,
    Holding,
    LocateInventory,
    Notice,
    Order,
    OrderStatus,
    PnL,
    Position,
    Quote,
    ReplayComplete,
    Side,
    Trade,
    from_dict,
    from_json,
    to_dict,
    to_json,
)

UTC = dt.timezone.utc

TYPE_NAMES = {
    Order: "order", Trade: "trade", Position: "position", PnL: "pnl", Holding: "holding",
    Balance: "balance", Quote: "quote", Notice: "notice", GttOrder: "gtt_order",
    LocateInventory: "locate", ReplayComplete: "replay_complete", Connected: "connected",
    Disconnected: "disconnected",
}
CLASSES = list(TYPE_NAMES)
FREE_FORM = ("raw", "values", "fields", "rules")  # excluded from attrs eq

# ------------------------------------------------------------------------- strategies

ODD_DECIMALS = [Decimal(text) for text in (
    "0", "-0", "-0.00", "0E-1000", "1E+3", "1e-7", "-1.50", "1E+999999", "-9.99E-999999",
    "123456789012345678901234567890.123456789012345678901234567890", "9" * 500,
    "NaN", "-NaN", "NaN123", "sNaN", "Infinity", "-Infinity",
)]
decimals = st.one_of(
    st.sampled_from(ODD_DECIMALS),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.builds(lambda sign, digits, exponent: Decimal((sign, tuple(digits), exponent)),
              st.integers(0, 1), st.lists(st.integers(0, 9), min_size=1, max_size=60),
              st.integers(-10 ** 6, 10 ** 6)),
)
ODD_STRINGS = ["", "x" * 100_000, "\ud800 lone surrogate", "nul\x00", "line\u2028sep",
               "emoji \U0001F600 and \u00e9\u0301", "\"quoted\" \\ back/slash", "</script>"]
strings = st.one_of(st.text(), st.sampled_from(ODD_STRINGS))
offsets = st.one_of(
    st.just(UTC),
    st.builds(dt.timezone, st.timedeltas(min_value=-dt.timedelta(hours=23, minutes=59, seconds=59),
                                         max_value=dt.timedelta(hours=23, minutes=59, seconds=59))),
)
# Years 2-9998: an offset can move a time by a day either way, and both must stay in 1-9999.
aware_times = st.datetimes(min_value=dt.datetime(2, 1, 1), max_value=dt.datetime(9998, 12, 31),
                           timezones=offsets)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | strings,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(strings, inner, max_size=4),
    max_leaves=20,
)
json_objects = st.dictionaries(strings, json_values, max_size=5)

BY_HINT: Dict[Any, st.SearchStrategy[Any]] = {
    str: strings, Decimal: decimals, dt.datetime: aware_times, bool: st.booleans(),
    int: st.integers(), Side: st.sampled_from(Side), OrderStatus: st.sampled_from(OrderStatus),
    Any: json_values,
}


def event_strategy(cls: Type[Event], nones: bool = True) -> st.SearchStrategy[Event]:
    """Every field drawn from its type; None too wherever the field is Optional, if ``nones``."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for field in attrs.fields(cls):
        hint = hints[field.name]
        optional = typing.get_origin(hint) is typing.Union
        if optional:
            hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
        base = json_objects if typing.get_origin(hint) is collections.abc.Mapping else BY_HINT[hint]
        kwargs[field.name] = (st.none() | base) if optional and nones else base
    return st.builds(cls, **kwargs)


any_event = st.one_of([event_strategy(cls) for cls in CLASSES])

# ------------------------------------------------------------------------- comparison


def has_nan(event: Event) -> bool:
    return any(isinstance(v, Decimal) and v.is_nan() for v in attrs.astuple(event, recurse=False))


def assert_same(back: Event, event: Event) -> None:
    """``back`` is ``event``: ``==`` where NaN allows it, and field by field anyway, with
    decimals compared by their text (sign of zero, exponent, NaN payload) and the
    free-form fields (outside attrs eq) compared explicitly."""
    assert type(back) is type(event)
    if not has_nan(event):
        assert back == event
    for field in attrs.fields(type(event)):
        mine, theirs = getattr(back, field.name), getattr(event, field.name)
        if isinstance(theirs, Decimal):
            assert type(mine) is Decimal and str(mine) == str(theirs), field.name
        elif isinstance(theirs, dt.datetime):
            assert mine == theirs and mine.tzinfo is UTC, field.name
        elif isinstance(theirs, enum.Enum):
            assert mine is theirs, field.name
        else:
            assert type(mine) is type(theirs) and mine == theirs, field.name


def strict_loads(text: str) -> Any:
    """json.loads refusing NaN / Infinity, i.e. RFC 8259 JSON only."""
    def refuse(name: str) -> Any:
        raise AssertionError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)

# ------------------------------------------------------------------------- round trips


@settings(max_examples=300, deadline=None)
@given(any_event)
def test_dict_round_trip_of_every_kind(event: Event) -> None:
    data = to_dict(event)
    assert data["type"] == TYPE_NAMES[type(event)] and data["schema"] == 1
    assert_same(from_dict(data), event)


@settings(max_examples=300, deadline=None)
@given(any_event)
def test_json_round_trip_of_every_kind(event: Event) -> None:
    text = to_json(event)
    assert text.isascii()
    text.encode("utf-8")  # lone surrogates are escapes, not characters that cannot be encoded
    assert strict_loads(text) == json.loads(json.dumps(to_dict(event)))
    assert_same(from_json(text), event)
    assert_same(from_json(text.encode("ascii")), event)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_every_kind_round_trips_with_every_field_set(cls: Type[Event], data: st.DataObject) -> None:
    # any_event mixes kinds and Nones; this makes sure each kind is seen fully populated
    event = data.draw(event_strategy(cls, nones=False))
    assert_same(from_json(to_json(event)), event)


def test_the_fields_outside_eq_round_trip() -> None:
    # attrs eq ignores them, so `==` would hide their loss: check each one on its own
    raw = {"orderId": 1, "nested": [{"a": None, "b": [1.5, -0.0, True]}], "s": "\u20b9 \U0001F600"}
    samples: List[Event] = [
        Order(broker="ibkr", order_id="1", raw=raw),
        Balance(broker="ibkr", values={"NetLiquidation": "1000.5", "x": [1, {"y": None}]}, raw=raw),
        Quote(broker="upstox", instrument="NSE_EQ|INE002A01018", fields={"31": "C101.5", "_updated": 17e11}, raw=raw),
        GttOrder(broker="upstox", gtt_order_id="GTT-1", rules=[{"strategy": "ENTRY", "trigger_price": 10.5}], raw=raw),
        LocateInventory(broker="clearstreet", values={"located_quantity": 100, "rate": "0.25"}, raw=[raw, raw]),
        Notice(broker="firstock", kind="notification", text="t", raw="a bare string"),
    ]
    for event in samples:
        for back in (from_dict(to_dict(event)), from_json(to_json(event))):
            for name in FREE_FORM:
                if hasattr(event, name):
                    assert getattr(back, name) == getattr(event, name), (type(event).__name__, name)
    # and a difference in them is seen, so the checks above are not vacuous
    changed = from_json(to_json(Balance(broker="ibkr", values={"a": "1"})))
    assert changed.values == {"a": "1"} and changed.values != {"a": "2"}


def test_tuples_come_back_as_lists_and_mappings_as_dicts() -> None:
    event = Quote(broker="ibkr", instrument="1", fields=types.MappingProxyType({"d": (1, 2)}), raw=(1, [2, (3,)]))
    assert to_dict(event)["fields"] == {"d": (1, 2)} and type(to_dict(event)["fields"]) is dict
    back = from_json(to_json(event))
    assert back.raw == [1, [2, [3]]] and back.fields == {"d": [1, 2]}

# ------------------------------------------------------------------------- the documented form


def test_the_exact_form_of_an_order() -> None:
    order = Order(
        broker="ibkr", account="U1234567", order_id="1234567890", client_order_id="my-1", symbol="AAPL",
        side=Side.BUY, quantity=Decimal("100"), filled_quantity=Decimal("40"), remaining_quantity=Decimal("60"),
        price=Decimal("189.50"), avg_price=None, order_type="LMT", status=OrderStatus.PARTIALLY_FILLED,
        broker_status="Submitted", time=dt.datetime(2024, 5, 1, 9, 30, 0, 250000, tzinfo=dt.timezone(-dt.timedelta(hours=4))),
        exchange=None, replayed=True, raw={"orderId": 1234567890},
    )
    expected = (
        '{"type":"order","schema":1,"broker":"ibkr","account":"U1234567","order_id":"1234567890",'
        '"client_order_id":"my-1","symbol":"AAPL","side":"BUY","quantity":"100","filled_quantity":"40",'
        '"remaining_quantity":"60","price":"189.50","avg_price":null,"order_type":"LMT",'
        '"status":"PARTIALLY_FILLED","broker_status":"Submitted","time":"2024-05-01T13:30:00.250000Z",'
        '"exchange":null,"replayed":true,"raw":{"orderId":1234567890}}'
    )
    assert to_json(order) == expected
    assert list(to_dict(order)) == list(json.loads(expected))  # key order too: type, schema, ..., raw


def test_event_types_and_schema_version() -> None:
    assert SCHEMA_VERSION == 1
    assert dict(EVENT_TYPES) == {name: cls for cls, name in TYPE_NAMES.items()}
    with pytest.raises(TypeError):
        EVENT_TYPES["x"] = Order  # type: ignore[index]
    # every event class in the module has a JSON type
    defined = {obj for obj in vars(events).values()
               if isinstance(obj, type) and issubclass(obj, Event) and obj is not Event}
    assert defined == set(TYPE_NAMES)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_to_dict_writes_every_field_and_only_json_types(cls: Type[Event]) -> None:
    event = _minimal(cls)
    data = to_dict(event)
    assert list(data)[:3] == ["type", "schema", "broker"] and list(data)[-1] == "raw"
    assert set(data) == {"type", "schema"} | {f.name for f in attrs.fields(cls)}

    def walk(value: Any) -> None:
        assert value is None or type(value) in (str, int, bool, float, list, dict)
        assert not isinstance(value, float), "no float in the typed fields of these events"
        for item in (value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()):
            walk(item)
    walk(data)


def test_the_docstring_table_matches_the_fields() -> None:
    doc = events.__doc__ or ""
    lines = doc.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split() == ["type", "fields"])
    rows: Dict[str, str] = {}
    name = ""
    for line in lines[start + 2:]:
        if line.startswith("====="):
            break
        if line[:1].strip():
            name, _, rest = line.partition(" ")
            rows[name] = rest.strip()
        else:
            rows[name] += " " + line.strip()
    forms = {str: "string", Decimal: "decimal", dt.datetime: "time", bool: "bool", int: "int",
             Side: "side", OrderStatus: "status", Any: "json"}
    assert set(rows) == set(TYPE_NAMES.values())
    for cls, type_name in TYPE_NAMES.items():
        hints = typing.get_type_hints(cls)
        expected = []
        for field in attrs.fields(cls):
            if field.name in ("broker", "raw"):
                continue
            hint = hints[field.name]
            optional = typing.get_origin(hint) is typing.Union
            if optional:
                hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
            form = "object" if typing.get_origin(hint) is collections.abc.Mapping else forms[hint]
            mark = "*" if field.default is attrs.NOTHING else ""
            expected.append(f"{field.name}: {form}{mark}{'?' if optional else ''}")
        assert re.split(r",\s+", rows[type_name]) == expected, type_name

# ------------------------------------------------------------------------- decimals


@pytest.mark.parametrize("text", ["1E+3", "-0", "-0.00", "0E-1000", "1E+999999", "-1.0E-999999",
                                  "NaN", "-NaN", "NaN123", "sNaN", "Infinity", "-Infinity", "9" * 5000])
def test_decimals_are_strings_and_keep_their_exact_text(text: str) -> None:
    event = Position(broker="ibkr", symbol="X", quantity=Decimal(text))
    data = to_dict(event)
    assert data["quantity"] == text
    assert str(from_json(to_json(event)).quantity) == text  # type: ignore[attr-defined]


def test_decimal_field_never_becomes_a_float() -> None:
    text = to_json(PnL(broker="ibkr", daily_pnl=Decimal("0.1"), realized_pnl=Decimal("1E+2")))
    assert '"daily_pnl":"0.1"' in text and '"realized_pnl":"1E+2"' in text


def test_an_int_in_a_decimal_field_is_written_as_its_decimal_but_a_float_is_refused() -> None:
    assert to_dict(Position(broker="b", symbol="s", quantity=5))["quantity"] == "5"  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^position\.quantity: expected a Decimal, got float"):
        to_dict(Position(broker="b", symbol="s", quantity=0.1))  # type: ignore[arg-type]


def test_nan_round_trips_as_text_though_it_never_equals_itself() -> None:
    event = Quote(broker="b", instrument="i", last=Decimal("NaN"), bid=Decimal("Infinity"), ask=Decimal("-Infinity"))
    back = from_json(to_json(event))
    assert isinstance(back, Quote) and back.last is not None and back.last.is_qnan()
    assert (back.bid, back.ask) == (Decimal("Infinity"), Decimal("-Infinity"))
    assert back != event  # documented: NaN != NaN

# ------------------------------------------------------------------------- times


def test_a_non_utc_time_is_written_in_utc_with_z_and_reads_back_equal() -> None:
    ist = dt.timezone(dt.timedelta(hours=5, minutes=30))
    event = Trade(broker="upstox", time=dt.datetime(2024, 5, 1, 9, 15, 0, 1, tzinfo=ist))
    assert to_dict(event)["time"] == "2024-05-01T03:45:00.000001Z"
    back = from_json(to_json(event))
    assert back == event and back.time.tzinfo is UTC  # type: ignore[attr-defined]


def test_utc_times_always_have_microseconds_so_their_text_sorts() -> None:
    early = to_dict(Trade(broker="b", time=dt.datetime(2024, 5, 1, 9, 15, tzinfo=UTC)))["time"]
    late = to_dict(Trade(broker="b", time=dt.datetime(2024, 5, 1, 9, 15, 0, 1, tzinfo=UTC)))["time"]
    assert early == "2024-05-01T09:15:00.000000Z" and early < late


def test_a_naive_time_is_taken_as_utc() -> None:
    event = Trade(broker="b", time=dt.datetime(2024, 5, 1, 9, 15))
    assert to_dict(event)["time"] == "2024-05-01T09:15:00.000000Z"
    back = from_json(to_json(event))
    assert back.time == dt.datetime(2024, 5, 1, 9, 15, tzinfo=UTC)  # type: ignore[attr-defined]


def test_a_zoneinfo_time_at_a_dst_change_keeps_its_instant() -> None:
    zoneinfo = pytest.importorskip("zoneinfo")
    try:
        new_york = zoneinfo.ZoneInfo("America/New_York")
    except zoneinfo.ZoneInfoNotFoundError:
        pytest.skip("no time zone data")
    for fold in (0, 1):  # 01:30 happens twice on 2024-11-03
        wall = dt.datetime(2024, 11, 3, 1, 30, tzinfo=new_york, fold=fold)
        back = from_json(to_json(Trade(broker="b", time=wall))).time  # type: ignore[attr-defined]
        assert back.timestamp() == wall.timestamp() and back.tzinfo is UTC
    assert to_dict(Trade(broker="b", time=dt.datetime(2024, 7, 1, 9, 30, tzinfo=new_york)))["time"] == \
        "2024-07-01T13:30:00.000000Z"


@pytest.mark.parametrize("text, expected", [
    ("2024-05-01T03:45:00Z", dt.datetime(2024, 5, 1, 3, 45, tzinfo=UTC)),
    ("2024-05-01T03:45:00.5z", dt.datetime(2024, 5, 1, 3, 45, 0, 500000, tzinfo=UTC)),
    ("2024-05-01T09:15:00+05:30", dt.datetime(2024, 5, 1, 3, 45, tzinfo=UTC)),
    ("2024-04-30T23:45:00.000001-04:00", dt.datetime(2024, 5, 1, 3, 45, 0, 1, tzinfo=UTC)),
])
def test_any_offset_is_read_and_converted_to_utc(text: str, expected: dt.datetime) -> None:
    time = from_dict({"type": "trade", "schema": 1, "broker": "b", "time": text}).time  # type: ignore[attr-defined]
    assert time == expected and time.tzinfo is UTC


def test_a_time_that_cannot_be_expressed_in_utc_is_a_clear_error() -> None:
    early = dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    with pytest.raises(ValueError, match=r"^trade\.time: "):
        to_dict(Trade(broker="b", time=early))
    with pytest.raises(ValueError, match=r"^trade\.time: "):
        from_dict({"type": "trade", "schema": 1, "broker": "b", "time": "0001-01-01T00:00:00+01:00"})

# ------------------------------------------------------------------------- reading: errors and leniency


def _minimal(cls: Type[Event]) -> Event:
    required = {f.name: "x" for f in attrs.fields(cls) if f.default is attrs.NOTHING}
    return cls(**required)


def _dict(cls: Type[Event], **changes: Any) -> Dict[str, Any]:
    data = to_dict(_minimal(cls))
    data.update(changes)
    return data


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_missing_optional_fields_take_their_defaults(cls: Type[Event]) -> None:
    required = [f.name for f in attrs.fields(cls) if f.default is attrs.NOTHING]
    data = {"type": TYPE_NAMES[cls], "schema": 1, **{name: "x" for name in required}}
    assert_same(from_dict(data), _minimal(cls))


@pytest.mark.parametrize("cls, field", [(cls, f.name) for cls in CLASSES for f in attrs.fields(cls)
                                        if f.default is attrs.NOTHING])
def test_a_missing_required_field_is_named(cls: Type[Event], field: str) -> None:
    data = _dict(cls)
    del data[field]
    with pytest.raises(ValueError, match=rf"^{TYPE_NAMES[cls]}\.{field}: missing required field$"):
        from_dict(data)
    with pytest.raises(ValueError, match=rf"^{TYPE_NAMES[cls]}\.{field}: expected a string, got null$"):
        from_dict({**data, field: None})


@pytest.mark.parametrize("cls, field, value, message", [
    (Order, "quantity", 1.5, "expected a decimal number as a string, got number"),
    (Order, "quantity", 15, "expected a decimal number as a string, got number"),
    (Order, "quantity", "12abc", "expected a decimal number as a string, got '12abc'"),
    (Order, "price", "", "expected a decimal number as a string, got ''"),
    (Order, "price", ["1"], "expected a decimal number as a string, got array"),
    (Order, "order_id", 12, "expected a string, got number"),
    (Order, "symbol", {"a": 1}, "expected a string, got object"),
    (Order, "side", "buy", "expected one of BUY, SELL, got 'buy'"),
    (Order, "side", 1, "expected one of BUY, SELL as a string, got number"),
    (Order, "status", "WORKING", "expected one of PENDING, OPEN, .*, got 'WORKING'"),
    (Order, "status", None, "expected one of .* as a string, got null"),
    (Order, "replayed", 1, "expected true or false, got number"),
    (Order, "replayed", None, "expected true or false, got null"),
    (Order, "time", 1714556700000, "expected an ISO 8601 time string, got number"),
    (Order, "time", "yesterday", "expected an ISO 8601 time, got 'yesterday'"),
    (Order, "time", "2024-05-01T09:15:00", "expected an ISO 8601 time with a UTC offset or Z, got '2024-05-01T09:15:00'"),
    (Connected, "subscriptions", True, "expected an integer, got boolean"),
    (Connected, "subscriptions", 2.0, "expected an integer, got number"),
    (Balance, "values", [], "expected an object, got array"),
    (Quote, "fields", None, "expected an object, got null"),
    (Order, "symbol", "y" * 100, None),  # a long string is fine; a long bad one is cut:
    (Order, "quantity", "z" * 100, r"expected a decimal number as a string, got 'z{40}'\.\.\.$"),
])
def test_a_wrong_value_is_named(cls: Type[Event], field: str, value: Any, message: str) -> None:
    data = _dict(cls, **{field: value})
    if message is None:
        from_dict(data)
        return
    with pytest.raises(ValueError, match=rf"^{TYPE_NAMES[cls]}\.{field}: {message}"):
        from_dict(data)


@pytest.mark.parametrize("data, message", [
    ({"schema": 1, "broker": "b"}, r"^type: missing required field$"),
    ({"type": "fill", "schema": 1, "broker": "b"}, r"^type: unknown event type 'fill'$"),
    ({"type": "Order", "schema": 1, "broker": "b"}, r"^type: unknown event type 'Order'$"),
    ({"type": 3, "schema": 1}, r"^type: unknown event type number$"),
    ({"type": "order", "broker": "b", "order_id": "1"}, r"^order\.schema: missing required field$"),
    ({"type": "order", "schema": "1", "broker": "b"}, r"^order\.schema: expected a version number .*, got string$"),
    ({"type": "order", "schema": True, "broker": "b"}, r"^order\.schema: .*, got boolean$"),
    ({"type": "order", "schema": 0, "broker": "b"}, r"^order\.schema: .*, got 0$"),
    ({"type": "order", "schema": 1.0, "broker": "b"}, r"^order\.schema: .*, got number$"),
])
def test_envelope_errors_are_named(data: Dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        from_dict(data)


def test_a_newer_schema_with_unknown_fields_is_read() -> None:
    data = {**to_dict(Order(broker="b", order_id="1", quantity=Decimal("2"))),
            "schema": 7, "venue_latency_us": 12, "nested": {"a": [1]}}
    assert from_dict(data) == Order(broker="b", order_id="1", quantity=Decimal("2"))
    assert from_json(json.dumps({**data, "schema": 1})) == from_dict(data)  # unknown keys ignored in 1 as well


def test_from_json_refuses_what_is_not_an_event_object() -> None:
    for text, message in [("[]", "expected a JSON object, got array"), ("null", "got null"),
                          ('"order"', "got string"), ("{", "Expecting"), ("", "Expecting value"),
                          ("[" * 100_000 + "]" * 100_000, "nested too deeply")]:
        with pytest.raises(ValueError, match=message):
            from_json(text)
    with pytest.raises(ValueError):  # invalid UTF-8
        from_json(b'{"type": "\xff"}')
    with pytest.raises(ValueError, match="expected a JSON object, got array"):
        from_dict([("type", "order")])  # type: ignore[arg-type]


def test_only_event_classes_are_written() -> None:
    class MyOrder(Order):
        pass

    for thing in (Event(broker="b"), MyOrder(broker="b", order_id="1"), {"type": "order"}, None):
        with pytest.raises(TypeError, match="not a brokerfeeds event"):
            to_dict(thing)  # type: ignore[arg-type]


@pytest.mark.parametrize("event, message", [
    (Order(broker="b", order_id=1), r"^order\.order_id: expected a str, got int$"),  # type: ignore[arg-type]
    (Order(broker="b", order_id="1", side="BUY"), r"^order\.side: expected Side, got str$"),  # type: ignore[arg-type]
    (Order(broker="b", order_id="1", status="OPEN"), r"^order\.status: expected OrderStatus, got str$"),  # type: ignore[arg-type]
    (Order(broker="b", order_id="1", replayed=1), r"^order\.replayed: expected a bool, got int$"),  # type: ignore[arg-type]
    (Trade(broker="b", time=dt.date(2024, 5, 1)), r"^trade\.time: expected a datetime, got date$"),  # type: ignore[arg-type]
    (Connected(broker="b", subscriptions=True), r"^connected\.subscriptions: expected an int, got bool$"),
    (Balance(broker="b", values=[("a", 1)]), r"^balance\.values: expected a mapping, got list$"),  # type: ignore[arg-type]
])
def test_writing_a_mistyped_event_is_a_clear_error(event: Event, message: str) -> None:
    # attrs does not check types; the writer does, so what it writes the reader accepts
    with pytest.raises(ValueError, match=message):
        to_dict(event)

# ------------------------------------------------------------------------- free-form content that is not JSON


class Colour(enum.Enum):
    RED = "red"


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text")


def test_free_form_content_that_is_not_json_is_repaired_not_fatal() -> None:
    cyclic: List[Any] = [1]
    cyclic.append(cyclic)
    raw = {
        "decimal": Decimal("1.50"), "time": dt.datetime(2024, 5, 1, 9, 15), "day": dt.date(2024, 5, 1),
        "enum": Colour.RED, "side": Side.SELL, "tuple": (1, 2), "set": {3}, "frozen": frozenset(),
        "bytes": b"ok\xff", "nan": math.nan, "inf": math.inf, "-inf": -math.inf,
        "mapping": types.MappingProxyType({"k": 1}), "cycle": cyclic, "object": Unprintable(),
        "huge": 10 ** 5000, "deep": _deep(150),
        "keys": {1: "int key", 2.5: "float key", None: "null key", (1, 2): "tuple key"}, "bool": {True: "bool key"},
    }
    text = to_json(Balance(broker="b", values={"nan": math.nan}, raw=raw))
    data = strict_loads(text)
    assert data["values"] == {"nan": "NaN"}
    got = data["raw"]
    assert got["decimal"] == "1.50" and got["time"] == "2024-05-01T09:15:00" and got["day"] == "2024-05-01"
    assert got["enum"] == "red" and got["side"] == "SELL" and got["tuple"] == [1, 2] and got["set"] == [3]
    assert got["frozen"] == [] and got["bytes"] == "ok\\xff" and got["mapping"] == {"k": 1}
    assert (got["nan"], got["inf"], got["-inf"]) == ("NaN", "Infinity", "-Infinity")
    assert got["keys"] == {"1": "int key", "2.5": "float key", "null": "null key", "(1, 2)": "tuple key"}
    assert got["bool"] == {"true": "bool key"}
    assert got["cycle"] == [1, "<circular reference>"]
    assert got["object"] == "<Unprintable>" and got["huge"] == f"<int of {(10 ** 5000).bit_length()} bits>"
    depth, node = 0, got["deep"]
    while isinstance(node, list):
        depth, node = depth + 1, node[0]
    assert node == "<nested too deep>" and depth == 99  # raw is level 0; levels 1-99 kept
    # what is repaired reads back as its JSON stand-in
    assert from_json(text).raw["set"] == [3]  # type: ignore[attr-defined]


def test_json_able_extras_are_written_without_repair() -> None:
    # the default hook: a Decimal among valid content costs no repair of its neighbours
    raw = {"d": Decimal("2.5"), "deep": _deep(150), "t": (1,)}
    got = strict_loads(to_json(Notice(broker="b", kind="k", text="t", raw=raw)))["raw"]
    assert got["d"] == "2.5" and got["t"] == [1]
    depth, node = 0, got["deep"]
    while isinstance(node, list):
        depth, node = depth + 1, node[0]
    assert depth == 150 and node == 0


def test_to_dict_passes_free_form_content_through() -> None:
    raw: Mapping[str, Any] = {"n": math.nan}
    event = Notice(broker="b", kind="k", text="t", raw=raw)
    assert to_dict(event)["raw"] is raw
    assert from_dict(to_dict(event)).raw is raw


def _deep(levels: int) -> Any:
    node: Any = 0
    for _ in range(levels):
        node = [node]
    return node

# ------------------------------------------------------------------------- precomputed tables


def test_no_attrs_introspection_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    event = GttOrder(broker="upstox", gtt_order_id="1", quantity=Decimal(1), time=dt.datetime(2024, 1, 1, tzinfo=UTC))
    text = to_json(event)

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("introspection per call")

    for name in ("fields", "fields_dict", "asdict", "astuple"):
        monkeypatch.setattr(attrs, name, forbidden)
    monkeypatch.setattr(typing, "get_type_hints", forbidden)
    assert from_json(to_json(event)) == event and to_json(from_dict(to_dict(event))) == text


@settings(max_examples=300, deadline=None)
@given(any_event)
def test_json_bytes_round_trip_of_every_kind(event: Event) -> None:
    """to_json_bytes (orjson where installed) reads back as to_json does."""
    data = events.to_json_bytes(event)
    assert isinstance(data, bytes)
    assert_same(events.from_json(data), event)
    assert json.loads(data) == json.loads(events.to_json(event))


def test_json_bytes_without_orjson_is_the_ascii_text(monkeypatch: pytest.MonkeyPatch) -> None:
    order = events.Order(broker="ibkr", order_id="1", symbol="ÄÖ", raw={"x": "ünï"})
    monkeypatch.setattr(events, "_orjson_dumps", None)
    assert events.to_json_bytes(order) == events.to_json(order).encode("ascii")


def test_json_bytes_falls_back_where_orjson_refuses() -> None:
    """A lone surrogate or a non-string key in raw: orjson refuses, the repairing encoder takes it."""
    order = events.Order(broker="ibkr", order_id="1", raw={"text": "\ud800", 5: [1]})
    data = events.to_json_bytes(order)
    assert data == events.to_json(order).encode("ascii")
    assert events.from_json(data).raw == {"text": "\ud800", "5": [1]}

# ------------------------------------------------------------------------- the compiled writer

utc_times = st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31), timezones=st.just(UTC))


class _Text(str):
    pass


# Values the compiled writer does not take as they are (to_dict's checked path converts them).
unusual_values = st.one_of(
    st.builds(_Text, st.text(max_size=5)), st.integers(-5, 5), st.datetimes(max_value=dt.datetime(9998, 1, 1)),
    st.just(types.MappingProxyType({"a": 1})),
)


@settings(max_examples=300, deadline=None)
@given(st.one_of([event_strategy(cls) for cls in CLASSES]), st.data())
def test_compiled_writer_equals_the_checked_path(event: Event, data: st.DataObject) -> None:
    """to_dict's compiled fast path writes exactly what the checked, field-by-field path
    writes (keys in the same order), for common values and for values that make it fall back."""
    changes: Dict[str, Any] = {}
    hints = typing.get_type_hints(type(event))
    for field in attrs.fields(type(event)):
        if "datetime" in str(hints[field.name]) and data.draw(st.booleans()):
            changes[field.name] = data.draw(utc_times)  # the fast path's own form
        elif field.name in ("broker", "quantity", "time", "values") and data.draw(st.booleans()):
            value = data.draw(unusual_values)
            try:
                events._to_dict_checked(attrs.evolve(event, **{field.name: value}))
            except (ValueError, TypeError):
                continue  # a wrong type for this field: covered by the error tests
            changes[field.name] = value
    event = attrs.evolve(event, **changes)
    fast, checked = to_dict(event), events._to_dict_checked(event)
    assert fast == checked and list(fast) == list(checked)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_compiled_writer_takes_common_values_without_falling_back(cls: Type[Event]) -> None:
    """An event of common values (str, Decimal, UTC datetime, enums, dict) is written by the
    compiled writer itself: the fast path is really taken, not only its fallback."""
    hints = typing.get_type_hints(cls)
    common = {str: "x", Decimal: Decimal("1.50"), dt.datetime: dt.datetime(2024, 5, 1, 9, 0, 0, 7, tzinfo=UTC),
              bool: True, int: 3, Side: Side.BUY, OrderStatus: OrderStatus.OPEN, Any: {"k": [1]}}
    kwargs = {}
    for field in attrs.fields(cls):
        hint = hints[field.name]
        if typing.get_origin(hint) is typing.Union:
            hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
        kwargs[field.name] = {"a": 1} if typing.get_origin(hint) is collections.abc.Mapping else common[hint]
    event = cls(**kwargs)
    written = events._WRITERS[cls](event)  # raises events._Unusual if it fell back
    assert written == events._to_dict_checked(event)
    assert "2024-05-01T09:00:00.000007Z" in written.values() or "time" not in written
