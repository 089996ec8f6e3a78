"""The contract between the engine and a broker's sans-I/O protocol adapter.

An adapter turns user intents (subscriptions) into frames and frames into events. It
never touches a socket, a thread or the clock: the engine passes ``now`` (monotonic
seconds) in and acts on what the adapter returns.

Inputs are methods, nothing else. The engine calls the hooks of :class:`Protocol`
(``on_open``, ``on_frame``, ``on_close``, ``subscribe``, ``unsubscribe``, ``heartbeat``,
``maintain``); a broker's adapter adds its own input methods for REST results and
credentials (e.g. ``merge_orders(rows)``, ``use_token(token)``). Nothing outside an
adapter writes its attributes.

Outputs are a closed set (:data:`Output`): every input method returns a list of

* an event (:class:`~brokerfeeds.events.Event`) — delivered to the callbacks registered for it;
* :class:`Send` — a frame to write to the socket;
* :class:`Ready` / :class:`NotReady` — the session became usable (subscriptions may be
  sent) or stopped being usable;
* :class:`Reconnect` — close this connection and open a new one;
* :class:`Refresh` — ask the feed to fetch something from REST (coalesced, off the I/O thread);
* :class:`Fatal` — stop the feed with this error (e.g. authentication rejected);
* :class:`Report` — pass an error to ``on_error`` without changing anything else;
* :class:`RawMessage` — a decoded message, for ``on_message``.

Adapters are driven by one owner (:class:`~brokerfeeds.owner.AdapterOwner`) under one
lock, so their state needs no locking of its own. Only :class:`~brokerfeeds.errors.ProtocolError`
may leave an input method on bad input; the owner turns anything else into one.
"""

from __future__ import annotations

import abc
from types import MappingProxyType
from typing import (Any, Callable, Dict, Generic, Hashable, Iterable, List, Mapping, Optional, Sequence, Tuple,
                    TypeVar, Union, cast)

import attrs

from .errors import BrokerFeedsError, ProtocolError
from .events import Event
from .values import loads

__all__ = [
    "Subscription",
    "Control",
    "Send",
    "Ready",
    "NotReady",
    "Reconnect",
    "Refresh",
    "Fatal",
    "Report",
    "RawMessage",
    "Output",
    "Protocol",
    "Handler",
    "Routes",
]

Frame = Union[str, bytes]


@attrs.frozen(slots=True)
class Subscription:
    """One thing the user asked to receive.

    ``kind`` names the stream (``"orders"``, ``"quotes"``, ``"activity"``, ...), ``key``
    the instrument or account it is for (``""`` if none) and ``params`` any options, as
    a hashable tuple. Subscriptions are identified by ``(kind, key)``: subscribing again
    with other params replaces the earlier one.
    """

    kind: str
    key: str = ""
    params: Tuple[Hashable, ...] = ()

    @property
    def ident(self) -> Tuple[str, str]:
        """The identity used for bookkeeping: ``(kind, key)``."""
        return (self.kind, self.key)

    def __str__(self) -> str:
        return f"{self.kind}:{self.key}" if self.key else self.kind


class Control:
    """Base class of the adapter outputs that are not events."""

    __slots__ = ()


@attrs.frozen(slots=True)
class Send(Control):
    """Write ``frame`` (text if ``str``, binary if ``bytes``) to the socket."""

    frame: Frame


@attrs.frozen(slots=True)
class Ready(Control):
    """The connection is authenticated: the engine now sends every subscription."""


@attrs.frozen(slots=True)
class NotReady(Control):
    """The connection lost its authentication; subscriptions wait until :class:`Ready`."""

    reason: str


@attrs.frozen(slots=True)
class Reconnect(Control):
    """Drop this connection and open a new one.

    ``immediate`` skips the backoff delay; ``fresh_credentials`` says the server refused
    the credentials in use, so cached ones must not be reused for the next connection.
    """

    reason: str
    immediate: bool = False
    fresh_credentials: bool = False


@attrs.frozen(slots=True)
class Refresh(Control):
    """Ask the feed to refresh ``what`` (e.g. ``"orders"``) from REST, off the I/O thread.

    Requests are coalesced: several before the refresh runs cost one REST call.
    """

    what: str


@attrs.frozen(slots=True)
class Fatal(Control):
    """Stop the feed, reporting ``error`` to ``on_error`` and to ``run_forever()``."""

    error: BrokerFeedsError


@attrs.frozen(slots=True)
class Report(Control):
    """Report ``error`` to ``on_error`` (and the log); the feed carries on."""

    error: BrokerFeedsError


@attrs.frozen(slots=True)
class RawMessage(Control):
    """A decoded message for ``on_message`` callbacks (every message, understood or not)."""

    message: Any


#: Everything an adapter input method may return (a closed set).
Output = Union[Event, Send, Ready, NotReady, Reconnect, Refresh, Fatal, Report, RawMessage]


class Protocol(abc.ABC):
    """Base class of the broker adapters: every hook but :meth:`on_frame` defaults to
    "nothing to do"."""

    #: The broker's name as it appears on events.
    broker: str = "generic"
    #: Whether the connection is usable as soon as it opens (no in-band auth handshake).
    ready_on_open: bool = True

    def on_open(self, now: float) -> List[Output]:
        """A new connection opened (first or after a reconnect)."""
        return [Ready()] if self.ready_on_open else []

    @abc.abstractmethod
    def on_frame(self, data: bytes, binary: bool, now: float) -> List[Output]:
        """Decode one received frame (``data`` is always bytes; ``binary`` tells the opcode)."""

    def on_close(self) -> None:
        """The connection closed; forget per-connection state."""

    def subscribe(self, subs: Sequence[Subscription], now: float) -> List[Output]:
        """Outputs (usually :class:`Send`) that start ``subs`` on a ready connection."""
        return []

    def unsubscribe(self, subs: Sequence[Subscription], now: float) -> List[Output]:
        """Outputs that end ``subs`` on a ready connection."""
        return []

    def heartbeat(self, now: float) -> List[Output]:
        """Called every ``heartbeat_interval`` seconds on a ready connection."""
        return []

    def maintain(self, now: float) -> List[Output]:
        """Called about once a second on an open connection (expiry re-sends, timeouts)."""
        return []

    def counters(self) -> Mapping[str, int]:
        """Adapter counters for ``feed.stats.extra`` (e.g. refused stale order updates)."""
        return {}


AdapterT = TypeVar("AdapterT")
HandlerT = TypeVar("HandlerT", bound=Callable[..., Any])

#: The usual message handler: an unbound adapter method, ``(adapter, message) -> outputs``.
Handler = Callable[[AdapterT, Dict[str, Any]], List[Output]]


class Routes(Generic[HandlerT]):
    """Where an adapter sends each decoded message: the one routing mechanism of every broker.

    ``key(message)`` names the message's route (None: it has none); ``table`` maps route
    names to handlers, unbound methods of the adapter class (usually of type :data:`Handler`).
    A broker module defines its key function above the adapter class and
    ``ROUTES = Routes(key=_route_key, table={...})`` right after it; ``on_frame`` routes::

        handler = ROUTES.get(ROUTES.key(message))
        if handler is not None:
            out.extend(handler(self, message))

    and a message without a route reaches ``on_message`` only. That costs one call (the
    key) and one dict lookup per message, and builds nothing: the table is made once per
    module, shared by every adapter of the class, and read-only. A table may hold another
    handler signature where the adapter holds more than the message when it routes (Clear
    Street passes the payload and ``now``, and to the events of sequenced frames their
    ``data`` and whether the sequence check found them replayed).
    """

    __slots__ = ("key", "table", "get")

    def __init__(self, key: Callable[[Dict[str, Any]], Optional[str]], table: Mapping[str, HandlerT]) -> None:
        handlers = dict(table)
        #: ``message -> route name`` (or None).
        self.key = key
        #: ``route name -> handler`` (read-only).
        self.table: Mapping[str, HandlerT] = MappingProxyType(handlers)
        #: ``get(route name)``: the route's handler, or None (also for the name None).
        self.get = cast(Callable[[Optional[str]], Optional[HandlerT]], handlers.get)

    def __repr__(self) -> str:
        return f"Routes(key={getattr(self.key, '__qualname__', self.key)!r}, routes={sorted(self.table)!r})"


def sends(frames: Iterable[Frame]) -> List[Output]:
    """Wrap frames as :class:`Send` outputs."""
    return [Send(f) for f in frames]


def excerpt(data: Any, limit: int = 200) -> str:
    """A short printable excerpt of a frame for error messages."""
    if isinstance(data, (bytes, bytearray)):
        text = bytes(data[:limit]).decode("utf-8", "replace")
    else:
        text = str(data)[:limit]
    return text + ("..." if len(data) > limit else "")


def parse_json(data: Union[bytes, str]) -> Any:
    """A frame decoded as JSON (orjson with the ``fast`` extra); :class:`ProtocolError`
    with an excerpt of the frame when it is not JSON."""
    try:
        return loads(data)
    except ValueError:
        raise ProtocolError("frame is not JSON", excerpt(data)) from None


def first(*values: Any) -> Optional[Any]:
    """The first value that is not None (and not an empty string)."""
    for value in values:
        if value is not None and value != "":
            return value
    return None
