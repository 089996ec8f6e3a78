"""Normalised, immutable event objects shared by every broker.

Every event carries ``broker`` (``"ibkr"``, ``"upstox"``, ...), the ``account`` it
belongs to where the broker says so, and ``raw``: the broker's own message the event
was built from, untouched, for anything the normalised fields do not cover.

Money and quantities are :class:`decimal.Decimal`; a field the broker did not send is
``None``. Times are timezone-aware :class:`datetime.datetime` objects (UTC unless the
broker states another zone).

JSON form
---------
:func:`to_dict` / :func:`from_dict` and :func:`to_json` / :func:`from_json` give every
event one flat JSON object, stable within schema version :data:`SCHEMA_VERSION` (1)::

    {"type": "trade", "schema": 1, "broker": "ibkr", "account": "U1234567",
     "trade_id": "0000e0d5.6630f1a1.01.01", "order_id": "1234567890",
     "client_order_id": null, "symbol": "AAPL", "side": "BUY", "quantity": "40",
     "price": "189.51", "time": "2024-05-01T13:30:00.250000Z", "exchange": "NASDAQ",
     "replayed": false, "raw": {"execution_id": "0000e0d5.6630f1a1.01.01", "...": "..."}}

Every object holds ``type``, ``schema``, ``broker``, the fields of its event in the table
below, and ``raw`` last; a value the broker did not send is ``null``. The forms:

=======  ==================================================================================
string   a JSON string (any unicode; :func:`to_json` escapes non-ASCII, so its text is ASCII)
decimal  a JSON string, the :class:`~decimal.Decimal` as ``str()`` writes it, exponent and
         sign of zero kept: ``"189.51"``, ``"1E+3"``, ``"-0.00"``, ``"NaN"``,
         ``"Infinity"``, ``"-Infinity"`` (and ``"sNaN"``). Never a JSON number, so never
         rounded through a float. NaN never equals itself, so an event holding a NaN is
         never ``==`` to its round trip, although the text round-trips exactly.
time     ISO 8601 in UTC, always with microseconds and ``Z``:
         ``"2024-05-01T13:30:00.250000Z"``. An aware time in another zone is converted
         (the same instant, so it round-trips ``==``); a naive time is taken as UTC, the
         library's convention (it comes back aware). Read back as an aware UTC datetime;
         any ISO 8601 offset is accepted, a time without one is an error. (A wall time at
         a DST change keeps its instant, but Python never calls it ``==`` to a time in
         another zone: PEP 495.)
bool     ``true`` / ``false``
int      a JSON integer
side     ``"BUY"`` / ``"SELL"``
status   an :class:`OrderStatus` value: ``"OPEN"``, ``"FILLED"``, ...
object   a JSON object: ``values`` / ``fields``, every figure received, under the broker's
         own names
json     any JSON value: ``raw`` (the broker's message) and ``rules`` (Upstox's GTT rules)
=======  ==================================================================================

Fields after ``type``, ``schema``, ``broker`` (a string, required) and before ``raw``
(json). ``?``: may be null. ``*``: required when reading; any other field may be left
out and takes its default (null, false, 0, ``{}``, ``"UNKNOWN"``; ``will_reconnect``
true).

=================  ====================================================================
type               fields
=================  ====================================================================
order              account: string?, order_id: string*, client_order_id: string?,
                   symbol: string?, side: side?, quantity: decimal?,
                   filled_quantity: decimal?, remaining_quantity: decimal?,
                   price: decimal?, avg_price: decimal?, order_type: string?,
                   status: status, broker_status: string?, time: time?,
                   exchange: string?, replayed: bool
trade              account: string?, trade_id: string?, order_id: string?,
                   client_order_id: string?, symbol: string?, side: side?,
                   quantity: decimal?, price: decimal?, time: time?, exchange: string?,
                   replayed: bool
position           account: string?, symbol: string*, quantity: decimal?,
                   avg_price: decimal?, realized_pnl: decimal?,
                   unrealized_pnl: decimal?, exchange: string?, instrument: string?,
                   replayed: bool
pnl                account: string?, daily_pnl: decimal?, unrealized_pnl: decimal?,
                   realized_pnl: decimal?, net_liquidation: decimal?,
                   market_value: decimal?, margin_value: decimal?,
                   excess_liquidity: decimal?
holding            account: string?, symbol: string*, quantity: decimal?,
                   avg_price: decimal?, exchange: string?, instrument: string?
balance            account: string?, buying_power: decimal?, cash: decimal?,
                   net_liquidation: decimal?, currency: string?, values: object,
                   replayed: bool
quote              instrument: string*, last: decimal?, bid: decimal?, ask: decimal?,
                   bid_size: decimal?, ask_size: decimal?, volume: decimal?,
                   time: time?, fields: object
notice             kind: string*, text: string*, account: string?
gtt_order          account: string?, gtt_order_id: string*, symbol: string?,
                   side: side?, quantity: decimal?, gtt_type: string?, status: string?,
                   rules: json, time: time?
locate             account: string?, symbol: string?, quantity: decimal?,
                   values: object, replayed: bool
replay_complete    account: string*, timed_out: bool
connected          reconnect: bool, subscriptions: int
disconnected       reason: string*, will_reconnect: bool
=================  ====================================================================

Reading ignores keys it does not know (a newer writer's additions) and reads a ``schema``
newer than 1 as far as its fields are readable. It raises :class:`ValueError` naming the
field (``"order.quantity: expected a decimal number as a string, got number"``) for a
missing or unknown ``type``, a missing or invalid ``schema``, a missing required field,
a null where null is not allowed, or a value of the wrong type or form. Error messages
quote at most 40 characters of a bad string and never a free-form value.

The free-form fields (``raw``, ``values``, ``fields``, ``rules``) hold the broker's JSON
data and are passed through as they are (:func:`to_dict` and :func:`from_dict` do not
copy them). Should one hold something that is not JSON, :func:`to_json` repairs it rather
than fail: a Decimal becomes its string, a date or time its ``isoformat()`` (no zone
conversion), an enum its value, a mapping an object, a tuple, set or other sequence an
array, bytes UTF-8 text (bad bytes as ``\\xNN``), a non-finite float ``"NaN"``,
``"Infinity"`` or ``"-Infinity"``, a key that is not a string a string (numbers as JSON
writes them), a cycle ``"<circular reference>"``, nesting deeper than 100 levels (when
repairing) ``"<nested too deep>"``, and anything else ``str(value)``. Such values come back
as those JSON stand-ins, not as the original objects.
"""

from __future__ import annotations

import collections.abc
import datetime as _dt
import decimal
import enum
import json
import math
import types
import typing
from decimal import Decimal
from typing import Any, Callable, Dict, Mapping, Optional, Set, Tuple, Type, Union

import attrs

from .values import orjson_dumps as _orjson_dumps

__all__ = [
    "Side",
    "OrderStatus",
    "Event",
    "Order",
    "Trade",
    "Position",
    "PnL",
    "Holding",
    "Balance",
    "Quote",
    "Notice",
    "GttOrder",
    "LocateInventory",
    "ReplayComplete",
    "Connected",
    "Disconnected",
    "ACCOUNT_EVENTS",
    "SCHEMA_VERSION",
    "EVENT_TYPES",
    "to_dict",
    "from_dict",
    "to_json",
    "to_json_bytes",
    "from_json",
]


class Side(str, enum.Enum):
    """Direction of an order or fill."""

    BUY = "BUY"
    SELL = "SELL"


class OrderStatus(str, enum.Enum):
    """One order-status vocabulary for all brokers (each adapter maps its own words)."""

    PENDING = "PENDING"
    OPEN = "OPEN"
    #: Accepted by the broker but not working (IBKR ``Inactive``: a system, exchange or
    #: other issue). Not final: a later update may bring it back to OPEN or fill it.
    INACTIVE = "INACTIVE"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    CANCELLED = "CANCELLED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"
    UNKNOWN = "UNKNOWN"

    @property
    def is_final(self) -> bool:
        """True for states an order never leaves (filled, cancelled, rejected, expired)."""
        return self in _FINAL_STATUSES


_FINAL_STATUSES = frozenset(
    {OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.REJECTED, OrderStatus.EXPIRED}
)

_opt_decimal = attrs.field(default=None, kw_only=True)


@attrs.frozen(slots=True, kw_only=True)
class Event:
    """Base class of every data event."""

    broker: str
    raw: Any = attrs.field(default=None, repr=False, eq=False)


@attrs.frozen(slots=True, kw_only=True)
class Order(Event):
    """The complete, merged state of one order after a change.

    ``order_id`` is the broker's own id; ``client_order_id`` is the id the client gave
    the order when placing it (IBKR's ``order_ref`` / cOID), where the broker sends one.
    """

    account: Optional[str] = None
    order_id: str
    client_order_id: Optional[str] = None
    symbol: Optional[str] = None
    side: Optional[Side] = None
    quantity: Optional[Decimal] = None
    filled_quantity: Optional[Decimal] = None
    remaining_quantity: Optional[Decimal] = None
    price: Optional[Decimal] = None
    avg_price: Optional[Decimal] = None
    order_type: Optional[str] = None
    status: OrderStatus = OrderStatus.UNKNOWN
    broker_status: Optional[str] = None
    time: Optional[_dt.datetime] = None
    exchange: Optional[str] = None
    replayed: bool = False


@attrs.frozen(slots=True, kw_only=True)
class Trade(Event):
    """One fill (execution).

    ``order_id`` is the broker's id of the order the fill belongs to, or None when the
    broker did not say and it could not be resolved; it is never the client's id, which
    is ``client_order_id``.
    """

    account: Optional[str] = None
    trade_id: Optional[str] = None
    order_id: Optional[str] = None
    client_order_id: Optional[str] = None
    symbol: Optional[str] = None
    side: Optional[Side] = None
    quantity: Optional[Decimal] = None
    price: Optional[Decimal] = None
    time: Optional[_dt.datetime] = None
    exchange: Optional[str] = None
    replayed: bool = False


@attrs.frozen(slots=True, kw_only=True)
class Position(Event):
    """A position's current size and figures."""

    account: Optional[str] = None
    symbol: str
    quantity: Optional[Decimal] = None
    avg_price: Optional[Decimal] = None
    realized_pnl: Optional[Decimal] = None
    unrealized_pnl: Optional[Decimal] = None
    exchange: Optional[str] = None
    instrument: Optional[str] = None
    replayed: bool = False


@attrs.frozen(slots=True, kw_only=True)
class PnL(Event):
    """Account-level profit and loss totals.

    A figure the broker does not send is None, never 0: IBKR's ``spl`` has no realized
    P&L, so there ``realized_pnl`` is None; its ``mv`` is the *margin* value
    (``margin_value``), not a market value.
    """

    account: Optional[str] = None
    daily_pnl: Optional[Decimal] = None
    unrealized_pnl: Optional[Decimal] = None
    realized_pnl: Optional[Decimal] = None
    net_liquidation: Optional[Decimal] = None
    market_value: Optional[Decimal] = None
    margin_value: Optional[Decimal] = None
    excess_liquidity: Optional[Decimal] = None


@attrs.frozen(slots=True, kw_only=True)
class Holding(Event):
    """A long-term (delivery) holding."""

    account: Optional[str] = None
    symbol: str
    quantity: Optional[Decimal] = None
    avg_price: Optional[Decimal] = None
    exchange: Optional[str] = None
    instrument: Optional[str] = None


@attrs.frozen(slots=True, kw_only=True)
class Balance(Event):
    """Cash and buying-power figures; ``values`` holds every figure received."""

    account: Optional[str] = None
    buying_power: Optional[Decimal] = None
    cash: Optional[Decimal] = None
    net_liquidation: Optional[Decimal] = None
    currency: Optional[str] = None
    values: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False)
    replayed: bool = False


@attrs.frozen(slots=True, kw_only=True)
class Quote(Event):
    """The merged market-data snapshot of one instrument after a tick.

    Prices are :class:`Decimal`. ``fields`` holds every field received so far for the
    instrument, under the broker's own names.
    """

    instrument: str
    last: Optional[Decimal] = None
    bid: Optional[Decimal] = None
    ask: Optional[Decimal] = None
    bid_size: Optional[Decimal] = None
    ask_size: Optional[Decimal] = None
    volume: Optional[Decimal] = None
    time: Optional[_dt.datetime] = None
    fields: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False)


@attrs.frozen(slots=True, kw_only=True)
class Notice(Event):
    """A message from the broker meant for humans (notification, bulletin, status, error)."""

    kind: str
    text: str
    account: Optional[str] = None


@attrs.frozen(slots=True, kw_only=True)
class GttOrder(Event):
    """An Upstox good-till-triggered order update (register with ``on_gtt_order``)."""

    account: Optional[str] = None
    gtt_order_id: str
    symbol: Optional[str] = None
    side: Optional[Side] = None
    quantity: Optional[Decimal] = None
    gtt_type: Optional[str] = None
    status: Optional[str] = None
    rules: Any = attrs.field(default=None, repr=False, eq=False)
    time: Optional[_dt.datetime] = None


@attrs.frozen(slots=True, kw_only=True)
class LocateInventory(Event):
    """A Clear Street locate-inventory change (register with ``on_locate``)."""

    account: Optional[str] = None
    symbol: Optional[str] = None
    quantity: Optional[Decimal] = None
    values: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False)
    replayed: bool = False


@attrs.frozen(slots=True, kw_only=True)
class ReplayComplete(Event):
    """A broker finished replaying an account's history after (re)subscribing."""

    account: str
    timed_out: bool = False


@attrs.frozen(slots=True, kw_only=True)
class Connected(Event):
    """Passed to ``on_connect``: the feed is connected and subscriptions were (re)sent."""

    reconnect: bool = False
    subscriptions: int = 0


@attrs.frozen(slots=True, kw_only=True)
class Disconnected(Event):
    """Passed to ``on_disconnect``: the connection was lost or closed, and why."""

    reason: str
    will_reconnect: bool = True


#: Events that concern the trader's account: never dropped or coalesced by a dispatcher.
ACCOUNT_EVENTS = (Order, Trade, Position, PnL, Holding, Balance, GttOrder, LocateInventory)


# --------------------------------------------------------------------------- JSON form
# The schema is documented in the module docstring; tests/test_event_json.py checks that
# its table matches the codecs built here.

#: Version of the JSON form written by :func:`to_dict` / :func:`to_json`.
SCHEMA_VERSION = 1

#: The ``"type"`` of each event class in the JSON form.
_TYPE_NAMES: Dict[type, str] = {
    Order: "order",
    Trade: "trade",
    Position: "position",
    PnL: "pnl",
    Holding: "holding",
    Balance: "balance",
    Quote: "quote",
    Notice: "notice",
    GttOrder: "gtt_order",
    LocateInventory: "locate",
    ReplayComplete: "replay_complete",
    Connected: "connected",
    Disconnected: "disconnected",
}

_UTC = _dt.timezone.utc
_MISSING: Any = object()
# Decimal(text, context) uses the context only to decide whether a malformed string raises:
# this one always does, whatever the caller's current context traps (no rounding happens).
_STRICT = decimal.Context(traps=[decimal.InvalidOperation])
# Free-form values deeper than this are cut when to_json has to repair them.
_MAX_REPAIR_DEPTH = 100


def _json_type(value: Any) -> str:
    """The JSON name of a value's type, for error messages (never the value itself)."""
    if value is None:
        return "null"
    if value is True or value is False:
        return "boolean"
    if isinstance(value, (int, float, Decimal)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, (list, tuple)):
        return "array"
    return type(value).__name__


def _show(text: str) -> str:
    """A bad string, quoted and cut short, for error messages."""
    return repr(text) if len(text) <= 40 else repr(text[:40]) + "..."


# Writers turn a field's value (never None) into its JSON form; readers check a JSON value
# (never None for a nullable field) and turn it back. Both raise ValueError or TypeError
# with a message that the caller prefixes with the field's name.

def _write_str(value: Any) -> Any:
    if isinstance(value, str):
        return value
    raise TypeError(f"expected a str, got {type(value).__name__}")


def _read_str(value: Any) -> Any:
    if isinstance(value, str):
        return value
    raise ValueError(f"expected a string, got {_json_type(value)}")


def _write_decimal(value: Any) -> Any:
    if type(value) is Decimal:
        return str(value)
    if isinstance(value, (Decimal, int)) and not isinstance(value, bool):
        return str(Decimal(value))
    raise TypeError(f"expected a Decimal, got {type(value).__name__}")


def _read_decimal(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError(f"expected a decimal number as a string, got {_json_type(value)}")
    try:
        return Decimal(value, _STRICT)
    except ArithmeticError:
        raise ValueError(f"expected a decimal number as a string, got {_show(value)}") from None


def _write_time(value: Any) -> Any:
    if not isinstance(value, _dt.datetime):
        raise TypeError(f"expected a datetime, got {type(value).__name__}")
    if value.tzinfo is not _UTC:
        if value.utcoffset() is None:  # naive: the library's times are UTC
            value = value.replace(tzinfo=_UTC)
        else:
            try:
                value = value.astimezone(_UTC)
            except OverflowError:
                raise ValueError(f"{value.isoformat()} is outside the years 1-9999 in UTC") from None
    return value.isoformat(timespec="microseconds")[:-6] + "Z"  # drop "+00:00"


def _read_time(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError(f"expected an ISO 8601 time string, got {_json_type(value)}")
    # Python < 3.11 fromisoformat does not read a "Z" suffix.
    text = value[:-1] + "+00:00" if value[-1:] in ("Z", "z") else value
    try:
        time = _dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"expected an ISO 8601 time, got {_show(value)}") from None
    if time.tzinfo is _UTC:
        return time
    if time.utcoffset() is None:
        raise ValueError(f"expected an ISO 8601 time with a UTC offset or Z, got {_show(value)}")
    try:
        return time.astimezone(_UTC)
    except OverflowError:
        raise ValueError(f"time {_show(value)} is outside the years 1-9999 in UTC") from None


def _write_bool(value: Any) -> Any:
    if value is True or value is False:
        return value
    raise TypeError(f"expected a bool, got {type(value).__name__}")


def _read_bool(value: Any) -> Any:
    if value is True or value is False:
        return value
    raise ValueError(f"expected true or false, got {_json_type(value)}")


def _write_int(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    raise TypeError(f"expected an int, got {type(value).__name__}")


def _read_int(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f"expected an integer, got {_json_type(value)}")


def _write_mapping(value: Any) -> Any:
    if type(value) is dict:
        return value
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"expected a mapping, got {type(value).__name__}")


def _read_mapping(value: Any) -> Any:
    if isinstance(value, Mapping):
        return value
    raise ValueError(f"expected an object, got {_json_type(value)}")


def _any(value: Any) -> Any:
    return value


def _enum_codec(kind: Type[enum.Enum]) -> Tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    words = ", ".join(member.value for member in kind)

    def write(value: Any) -> Any:
        if isinstance(value, kind):
            return value.value
        raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")

    def read(value: Any) -> Any:
        if isinstance(value, str):
            try:
                return kind(value)
            except ValueError:
                raise ValueError(f"expected one of {words}, got {_show(value)}") from None
        raise ValueError(f"expected one of {words} as a string, got {_json_type(value)}")

    return write, read


_SIDE = _enum_codec(Side)
_STATUS = _enum_codec(OrderStatus)

#: Per Python type of a field: (writer, reader, name of the JSON form in the docs).
_KINDS: Dict[Any, Tuple[Callable[[Any], Any], Callable[[Any], Any], str]] = {
    str: (_write_str, _read_str, "string"),
    Decimal: (_write_decimal, _read_decimal, "decimal"),
    _dt.datetime: (_write_time, _read_time, "time"),
    bool: (_write_bool, _read_bool, "bool"),
    int: (_write_int, _read_int, "int"),
    Side: (_SIDE[0], _SIDE[1], "side"),
    OrderStatus: (_STATUS[0], _STATUS[1], "status"),
    Mapping: (_write_mapping, _read_mapping, "object"),
    Any: (_any, _any, "json"),
}


@attrs.frozen
class _Field:
    name: str
    write: Callable[[Any], Any]
    read: Callable[[Any], Any]
    form: str  # the JSON form's name in the documentation table
    nullable: bool
    required: bool
    free: bool  # free-form content (raw, values, fields, rules): repaired by to_json


@attrs.frozen
class _Codec:
    name: str
    cls: Type[Event]
    fields: Tuple[_Field, ...]
    writers: Tuple[Tuple[str, Callable[[Any], Any]], ...]
    free: Tuple[str, ...]


def _codec(cls: Type[Event], name: str) -> _Codec:
    """Build a class's field table once, from its attrs fields and type hints."""
    hints = typing.get_type_hints(cls)
    fields = []
    for field in attrs.fields(cls):
        hint = hints[field.name]
        nullable = hint is Any
        if typing.get_origin(hint) is Union:
            args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
            if len(args) != 1:
                raise TypeError(f"{cls.__name__}.{field.name}: no JSON form for {hint}")
            hint, nullable = args[0], True
        hint = typing.get_origin(hint) or hint
        if hint is collections.abc.Mapping:
            hint = Mapping
        if hint not in _KINDS:
            raise TypeError(f"{cls.__name__}.{field.name}: no JSON form for {hint}")
        write, read, form = _KINDS[hint]
        fields.append(_Field(
            name=field.name, write=write, read=read, form=form, nullable=nullable,
            required=field.default is attrs.NOTHING, free=form in ("json", "object"),
        ))
    # raw last: the normalised fields first, for a reader's eye
    fields.sort(key=lambda f: f.name == "raw")
    if {"type", "schema"} & {f.name for f in fields}:
        raise TypeError(f"{cls.__name__}: a field name clashes with the JSON envelope")
    return _Codec(
        name=name, cls=cls, fields=tuple(fields),
        writers=tuple((f.name, f.write) for f in fields),
        free=tuple(f.name for f in fields if f.free),
    )


_CODECS: Dict[type, _Codec] = {cls: _codec(cls, name) for cls, name in _TYPE_NAMES.items()}


class _Unusual(Exception):
    """A value the compiled writer does not take as it is: :func:`to_dict`'s checked path decides."""


def _unusual() -> Any:
    raise _Unusual


# The compiled writer of each kind: the value as it is, when its type is exactly the
# common one (a UTC datetime, a Decimal, ...), else _unusual(), which sends the whole event
# to the checked, field-by-field path (same output, same errors). Measured: the compiled
# writer is about 2x faster than the loop, which matters to the Redis publisher, whose
# thread shares the feed's interpreter lock and spends most of its time here.
_INLINE: Dict[str, str] = {
    "string": "{v} if {v}.__class__ is _str else _unusual()",
    "decimal": "_str({v}) if {v}.__class__ is _Decimal else _unusual()",
    "time": "_TIME % ({v}.year, {v}.month, {v}.day, {v}.hour, {v}.minute, {v}.second, {v}.microsecond) "
            "if {v}.__class__ is _datetime and {v}.tzinfo is _UTC else _unusual()",
    "bool": "{v} if {v} is True or {v} is False else _unusual()",
    "int": "{v} if {v}.__class__ is _int else _unusual()",
    "side": "{v}._value_ if {v}.__class__ is _Side else _unusual()",
    "status": "{v}._value_ if {v}.__class__ is _OrderStatus else _unusual()",
    "object": "{v} if {v}.__class__ is _dict else _unusual()",
    "json": "{v}",
}


def _compile_writer(codec: _Codec) -> Callable[[Any], Dict[str, Any]]:
    """Generate ``codec``'s to_dict as one function: no loop, no per-field call."""
    loads, items = [], [f"'type': {codec.name!r}", f"'schema': {SCHEMA_VERSION!r}"]
    for index, field in enumerate(codec.fields):
        v = f"v{index}"
        loads.append(f"    {v} = event.{field.name}")
        expr = _INLINE[field.form].format(v=v)
        if field.nullable and field.form != "json":
            expr = f"None if {v} is None else ({expr})"
        items.append(f"{field.name!r}: {expr}")
    source = "def write(event):\n" + "\n".join(loads) + "\n    return {" + ", ".join(items) + "}\n"
    scope: Dict[str, Any] = {
        "_str": str, "_int": int, "_dict": dict, "_Decimal": Decimal, "_datetime": _dt.datetime, "_UTC": _UTC,
        "_Side": Side, "_OrderStatus": OrderStatus, "_unusual": _unusual,
        "_TIME": "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ",  # isoformat's text, twice as fast
    }
    exec(compile(source, f"<brokerfeeds.events to_dict of {codec.cls.__name__}>", "exec"), scope)  # noqa: S102
    return scope["write"]  # type: ignore[no-any-return]


_WRITERS: Dict[type, Callable[[Any], Dict[str, Any]]] = {cls: _compile_writer(c) for cls, c in _CODECS.items()}
_BY_NAME: Dict[str, _Codec] = {codec.name: codec for codec in _CODECS.values()}

#: The event class of each JSON ``"type"`` (read-only).
EVENT_TYPES: Mapping[str, Type[Event]] = types.MappingProxyType(
    {name: cls for cls, name in _TYPE_NAMES.items()})


def to_dict(event: Event) -> Dict[str, Any]:
    """The JSON form of an event as a new dict (schema in the module docstring).

    Typed fields come out as JSON values (Decimal as a string, times as UTC ISO 8601,
    enums by value); the free-form fields (``raw``, ``values``, ``fields``, ``rules``) are
    passed through as they are, not copied (a non-dict mapping becomes a dict). Raises
    :class:`TypeError` for anything but one of the event classes, and :class:`ValueError`
    naming the field when a typed field holds the wrong type (attrs does not check types).
    """
    writer = _WRITERS.get(type(event))
    if writer is None:
        raise TypeError(f"not a brokerfeeds event: {type(event).__name__}")
    try:
        return writer(event)
    except _Unusual:
        return _to_dict_checked(event)


def _to_dict_checked(event: Event) -> Dict[str, Any]:
    """:func:`to_dict` field by field: converts what the compiled writer does not take as
    it is (a naive or non-UTC time, an int for a Decimal, ...), names the field of an error."""
    codec = _CODECS[type(event)]
    out: Dict[str, Any] = {"type": codec.name, "schema": SCHEMA_VERSION}
    for name, write in codec.writers:
        value = getattr(event, name)
        if value is not None:
            try:
                value = write(value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{codec.name}.{name}: {exc}") from None
        out[name] = value
    return out


def from_dict(data: Mapping[str, Any]) -> Event:
    """The event a JSON form describes (the inverse of :func:`to_dict`).

    Unknown keys are ignored and a ``schema`` newer than :data:`SCHEMA_VERSION` is read
    as far as it is readable. Raises :class:`ValueError` naming the field for a missing or
    unknown ``type``, a missing or invalid ``schema``, a missing required field or a value
    of the wrong type. Free-form values (``raw``, ...) are used as they are, not copied.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"expected a JSON object, got {_json_type(data)}")
    name = data.get("type", _MISSING)
    if name is _MISSING:
        raise ValueError("type: missing required field")
    codec = _BY_NAME.get(name) if isinstance(name, str) else None
    if codec is None:
        shown = _show(name) if isinstance(name, str) else _json_type(name)
        raise ValueError(f"type: unknown event type {shown}")
    schema = data.get("schema", _MISSING)
    if schema is _MISSING:
        raise ValueError(f"{name}.schema: missing required field")
    if not isinstance(schema, int) or isinstance(schema, bool) or schema < 1:
        shown = str(schema) if _json_type(schema) == "number" and isinstance(schema, int) else _json_type(schema)
        raise ValueError(f"{name}.schema: expected a version number (an integer from 1), got {shown}")
    kwargs: Dict[str, Any] = {}
    for field in codec.fields:
        value = data.get(field.name, _MISSING)
        if value is _MISSING:
            if field.required:
                raise ValueError(f"{name}.{field.name}: missing required field")
            continue
        if value is not None or not field.nullable:
            try:
                value = field.read(value)
            except ValueError as exc:
                raise ValueError(f"{name}.{field.name}: {exc}") from None
        kwargs[field.name] = value
    return codec.cls(**kwargs)


def _jsonable(value: Any) -> Any:
    """A JSON-encodable stand-in for a non-JSON value in free-form content."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (collections.abc.Set, collections.abc.Sequence)) and not isinstance(
            value, (str, bytes, bytearray)):
        return list(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "backslashreplace")
    raise TypeError(f"{type(value).__name__} is not JSON")


# Compact, strict (RFC 8259: no NaN) and ASCII-only: lone surrogates, which a broker's
# JSON can carry as escapes, stay escapes rather than breaking a UTF-8 encode later.
_encode_json = json.JSONEncoder(
    ensure_ascii=True, allow_nan=False, separators=(",", ":"), default=_jsonable
).encode
_decode_json = json.JSONDecoder().decode


def to_json(event: Event) -> str:
    """The JSON form of an event as compact, strict, ASCII-only JSON text.

    Never fails on the free-form fields: content that is not JSON is repaired as the
    module docstring describes. Raises like :func:`to_dict` otherwise.
    """
    data = to_dict(event)
    try:
        return _encode_json(data)
    except Exception:  # noqa: BLE001 - the free-form content is not JSON: repair it
        for name in _CODECS[type(event)].free:
            data[name] = _repair(data[name], 0, set())
        return _encode_json(data)


def to_json_bytes(event: Event) -> bytes:
    """:func:`to_json` as UTF-8 bytes, for writing to sockets, files or Redis.

    With orjson (the ``fast`` extra) the text is encoded by orjson, about twice as fast:
    the same JSON values, but non-ASCII characters are written as UTF-8 rather than
    ``\\u`` escapes, and a non-finite float in free-form content becomes ``null`` rather
    than ``"NaN"``. Content orjson refuses (lone surrogates, non-string keys, integers
    beyond 64 bits) goes through :func:`to_json`.
    """
    if _orjson_dumps is not None:
        data = to_dict(event)
        try:
            return _orjson_dumps(data, default=_jsonable)
        except Exception:  # noqa: BLE001 - what orjson refuses, the repairing encoder takes
            pass
    return to_json(event).encode("ascii")


def from_json(text: Union[str, bytes, bytearray]) -> Event:
    """The event a JSON text describes; raises :class:`ValueError` as :func:`from_dict`,
    and for text that is not JSON (or nested too deeply to read)."""
    if isinstance(text, (bytes, bytearray)):
        text = text.decode("utf-8")  # invalid UTF-8: UnicodeDecodeError, a ValueError
    try:
        data = _decode_json(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    return from_dict(data)


def _repair(value: Any, depth: int, active: Set[int]) -> Any:
    """Free-form content made JSON: what :func:`_jsonable` gives, else the value's text;
    non-finite floats as "NaN"/"Infinity"/"-Infinity", keys as strings, cycles and
    nesting deeper than ``_MAX_REPAIR_DEPTH`` cut."""
    if value is None or value is True or value is False or type(value) is str:
        return value
    if isinstance(value, str):  # a subclass (a str enum): its characters, as json writes it
        return str.__str__(value)
    if isinstance(value, int):
        try:
            int.__repr__(value)  # the digit limit of int -> str (Python 3.11+)
        except ValueError:
            return f"<int of {value.bit_length()} bits>"
        return int(value)
    if isinstance(value, float):
        if value != value:
            return "NaN"
        if value in (math.inf, -math.inf):
            return "Infinity" if value > 0 else "-Infinity"
        return float(value)
    if depth >= _MAX_REPAIR_DEPTH:
        return "<nested too deep>"
    if id(value) in active:
        return "<circular reference>"
    active.add(id(value))
    try:
        if isinstance(value, Mapping):
            return {_repair_key(k): _repair(v, depth + 1, active) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [_repair(v, depth + 1, active) for v in value]
        return _repair(_jsonable(value), depth + 1, active)
    except Exception:  # noqa: BLE001 - a broken object: its text, else its type's name
        try:
            return str(value)
        except Exception:  # noqa: BLE001
            return f"<{type(value).__name__}>"
    finally:
        active.discard(id(value))


def _repair_key(key: Any) -> str:
    """A dict key as a string: numbers, booleans and null as json writes them, else text."""
    if isinstance(key, str):
        return str.__str__(key)
    if key is None or key is True or key is False:
        return "null" if key is None else ("true" if key else "false")
    if isinstance(key, (int, float)):
        repaired = _repair(key, 0, set())
        return repaired if isinstance(repaired, str) else repr(repaired)
    try:
        return str(key)
    except Exception:  # noqa: BLE001
        return f"<{type(key).__name__}>"
