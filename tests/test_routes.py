"""Routes: the one message-routing mechanism of the adapters (plain data, no sockets)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import pytest

from brokerfeeds.brokers import clearstreet, firstock, ibkr, upstox
from brokerfeeds.events import Notice, Quote
from brokerfeeds.protocol import Handler, Output, RawMessage, Routes


class Adapter:
    """A stand-in adapter: handlers are its unbound methods."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: List[Dict[str, Any]] = []

    def on_ping(self, message: Dict[str, Any]) -> List[Output]:
        self.seen.append(message)
        return [RawMessage(("ping", self.name))]

    def on_quote(self, message: Dict[str, Any]) -> List[Output]:
        return [Notice(broker=self.name, kind="quote", text=message["topic"][4:])]

    def on_nothing(self, message: Dict[str, Any]) -> List[Output]:
        return []


def route_key(message: Dict[str, Any]) -> Optional[str]:
    topic = message.get("topic")
    if not isinstance(topic, str):
        return None
    return topic[:4] if topic[3:4] == "+" else topic


ROUTES: Routes[Handler[Adapter]] = Routes(key=route_key, table={
    "png": Adapter.on_ping,
    "qte+": Adapter.on_quote,
    "nil": Adapter.on_nothing,
})


def route(adapter: Adapter, message: Dict[str, Any]) -> Optional[List[Output]]:
    """What an adapter's ``on_frame`` does with ``ROUTES`` (None: no route)."""
    handler = ROUTES.get(ROUTES.key(message))
    return None if handler is None else handler(adapter, message)


def test_a_message_whose_key_names_a_route_reaches_that_handler() -> None:
    adapter = Adapter("a")
    message = {"topic": "png", "n": 1}
    assert ROUTES.key(message) == "png"
    assert ROUTES.get("png") is Adapter.on_ping
    assert route(adapter, message) == [RawMessage(("ping", "a"))]
    assert adapter.seen == [message]


def test_a_prefix_route_reads_its_argument_from_the_message() -> None:
    [notice] = route(Adapter("a"), {"topic": "qte+265598"}) or []
    assert isinstance(notice, Notice) and notice.text == "265598"


def test_a_handler_with_nothing_to_say_returns_an_empty_list() -> None:
    assert route(Adapter("a"), {"topic": "nil"}) == []


@pytest.mark.parametrize("message", [
    {"topic": "xyz"},  # a name with no route
    {"topic": "qte"},  # the prefix route needs its "+"
    {"topic": "png+1"},  # a prefix of an exact route is another name
    {"topic": 5},  # the key says None
    {},
])
def test_a_message_without_a_route_finds_no_handler(message: Dict[str, Any]) -> None:
    adapter = Adapter("a")
    assert ROUTES.get(ROUTES.key(message)) is None
    assert route(adapter, message) is None
    assert adapter.seen == []


def test_the_handler_receives_the_adapter_it_is_called_for() -> None:
    first, second = Adapter("first"), Adapter("second")
    assert route(second, {"topic": "png"}) == [RawMessage(("ping", "second"))]
    assert route(first, {"topic": "png"}) == [RawMessage(("ping", "first"))]
    assert len(first.seen) == len(second.seen) == 1


def test_the_table_is_a_read_only_copy() -> None:
    table = {"png": Adapter.on_ping}
    routes: Routes[Handler[Adapter]] = Routes(key=route_key, table=table)
    table["nil"] = Adapter.on_nothing
    assert routes.get("nil") is None and "nil" not in routes.table
    with pytest.raises(TypeError):
        routes.table["nil"] = Adapter.on_nothing  # type: ignore[index]
    assert repr(routes) == "Routes(key='route_key', routes=['png'])"


def test_broker_adapters_share_one_table_and_route_to_their_own_state() -> None:
    first, second = ibkr.IbkrProtocol(), ibkr.IbkrProtocol()
    second.on_frame(b'{"topic": "act", "args": {"selectedAccount": "U2"}}', True, 0.0)
    assert (first.account, second.account) == (None, "U2")
    [_, quote] = first.on_frame(b'{"topic": "smd+265598", "31": "1.5"}', True, 0.0)
    assert isinstance(quote, Quote) and quote.instrument == "265598"
    one, two = upstox.UpstoxProtocol(), upstox.UpstoxProtocol()
    two.on_frame(b'{"update_type": "holding", "instrument_token": "NSE_EQ|X", "quantity": 3}', False, 0.0)
    assert (len(one.holdings), len(two.holdings)) == (0, 1)


@pytest.mark.parametrize("routes", [
    ibkr.ROUTES, upstox.ROUTES, firstock.ROUTES, clearstreet.ROUTES, clearstreet.EVENT_ROUTES,
], ids=["ibkr", "upstox", "firstock", "clearstreet", "clearstreet-events"])
def test_every_broker_routes_to_methods_of_its_own_adapter(routes: Routes[Any]) -> None:
    adapter = {
        ibkr.ROUTES: ibkr.IbkrProtocol, upstox.ROUTES: upstox.UpstoxProtocol,
        firstock.ROUTES: firstock.FirstockProtocol, clearstreet.ROUTES: clearstreet.ClearStreetProtocol,
        clearstreet.EVENT_ROUTES: clearstreet.ClearStreetProtocol,
    }[routes]
    assert routes.table
    for name, handler in routes.table.items():
        assert getattr(adapter, handler.__name__) is handler, name


@pytest.mark.parametrize("message, route", [
    ({"topic": "sor", "args": []}, "sor"),
    ({"topic": "smd+265598", "31": "1"}, "smd+"),
    ({"topic": "ssd+U1", "result": []}, "ssd+"),
    ({"topic": "smd"}, "smd"),  # no "+": not the quote route
    ({"topic": "sor", "error": "x"}, None),  # errors are reported by on_frame
    ({"message": "ok"}, None),
])
def test_ibkr_route_names(message: Dict[str, Any], route: Optional[str]) -> None:
    assert ibkr.ROUTES.key(message) == route


@pytest.mark.parametrize("message, route", [
    ({"update_type": "order", "order_id": "1", "status": "open"}, "order"),
    ({"update_type": "gtt_order"}, "gtt_order"),
    ({"order_id": "1", "status": "open"}, "order"),  # the older sample without update_type
    ({"update_type": None, "order_id": "1", "status": "open"}, "None"),  # has one: no fallback
    ({"order_id": "1"}, None),
])
def test_upstox_route_names(message: Dict[str, Any], route: Optional[str]) -> None:
    assert upstox.ROUTES.key(message) == route


@pytest.mark.parametrize("message, route", [
    ({"norenordno": "1", "status": "OPEN"}, "order"),
    ({"brkname": "x", "status": "y"}, "position"),
    ({"status": "success", "message": "Authentication successful"}, "status"),
    ({"NSE:26000": {"i_last_traded_price": "1"}}, "quotes"),
    ({"c_symbol": "26000", "c_exch_seg": "nse"}, "quotes"),
])
def test_firstock_route_names(message: Dict[str, Any], route: str) -> None:
    assert firstock.ROUTES.key(message) == route


@pytest.mark.parametrize("message, route", [
    ({"payload": {"type": "order-update"}}, "order-update"),
    ({"payload": {"type": None}}, "None"),
    ({"payload": "x"}, None),
    ({}, None),
])
def test_clearstreet_route_names(message: Dict[str, Any], route: Optional[str]) -> None:
    assert clearstreet.ROUTES.key(message) == route
