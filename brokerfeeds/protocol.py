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
import functools
import inspect
import itertools
import json
import reprlib
from types import MappingProxyType
from typing import (Any, Callable, Dict, Generic, Hashable, List, Mapping, Optional, Sequence, Tuple,
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
    "parse_json",
    "item_excerpt",
    "skipped",
    "undecodable",
    "only_protocol_errors",
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


def excerpt(data: Any, limit: int = 200) -> str:
    """A short printable excerpt of a frame for error messages."""
    if isinstance(data, (bytes, bytearray)):
        text = bytes(data[:limit]).decode("utf-8", "replace")
    else:
        text = str(data)[:limit]
    return text + ("..." if len(data) > limit else "")


def parse_json(data: Union[bytes, str]) -> Any:
    """A frame decoded as JSON (orjson with the ``fast`` extra); :class:`ProtocolError`
    with an excerpt of the frame when it is not JSON, invalid UTF-8 included, or nested
    too deeply to decode (orjson refuses more than 1024 levels; the standard library's
    decoder runs out of stack and raises :class:`RecursionError`, caught here)."""
    try:
        return loads(data)
    except ValueError:
        raise ProtocolError("frame is not JSON", excerpt(data)) from None
    except RecursionError:
        raise ProtocolError("frame is not JSON: nested too deeply to decode", excerpt(data)) from None


# ------------------------------------------------------------------ the adapter boundary
# Only ProtocolError may leave an adapter, and one bad item of a frame must not cost its
# neighbours. Both rules are written once, here:
#
# * per item: every loop over the items of a frame (orders of an IBKR ``sor``, rows of a
#   REST snapshot, the data of a Clear Street frame) wraps one item in ``try`` and turns
#   whatever it raised into ``skipped(what, item, exc)``, a Report carrying an excerpt of
#   the item; the loop goes on with the next item. A plain try/except, not a context
#   manager: on CPython 3.11 a ``with`` block on a reused guard object costs ~0.4 us per
#   item (measured), a ``try`` nothing until something raises, and IBKR ``sor`` and Clear
#   Street frames are the benchmarked hot paths.
# * per input: ``@only_protocol_errors`` on ``on_frame`` (and the REST inputs) turns what
#   is left (a TypeError, decimal.InvalidOperation, RecursionError from a message nested a
#   thousand deep, ...) into a ProtocolError carrying an excerpt of the frame.

#: Decorated input methods keep their exact signature.
InputT = TypeVar("InputT", bound=Callable[..., List[Any]])


def item_excerpt(item: Any, limit: int = 200) -> str:
    """A short printable excerpt of a decoded item (dict, list or value) for error
    messages; never raises (an item nested too deeply to print is named by its type)."""
    if isinstance(item, (str, bytes, bytearray)):
        return excerpt(item, limit)
    try:
        text = json.dumps(item, default=repr, ensure_ascii=False)
    except Exception:  # noqa: BLE001 - RecursionError, circular references, a failing repr
        try:
            text = _SHALLOW.repr(item)  # a few levels deep only: never recurses far
        except Exception:  # noqa: BLE001
            text = f"<{type(item).__name__}>"
    return excerpt(text, limit)


class _ShallowRepr(reprlib.Repr):
    """``reprlib`` (a few levels deep only), dicts in their own order (not sorted)."""

    def repr_dict(self, x: Dict[Any, Any], level: int) -> str:
        if not x:
            return "{}"
        if level <= 0:
            return "{...}"
        pieces = [f"{self.repr1(k, level - 1)}: {self.repr1(v, level - 1)}"
                  for k, v in itertools.islice(x.items(), self.maxdict)]
        if len(x) > self.maxdict:
            pieces.append("...")
        return "{" + ", ".join(pieces) + "}"


_SHALLOW = _ShallowRepr()
_SHALLOW.maxlevel = 4
_SHALLOW.maxstring = _SHALLOW.maxother = 80


def skipped(what: str, item: Any, exc: Exception) -> Report:
    """The :class:`Report` for one item that could not be decoded (``what`` names it, e.g.
    ``"IBKR order"``): a :class:`ProtocolError` with an excerpt of the item. The caller
    skips the item alone and goes on with its neighbours."""
    reason = str(exc) if isinstance(exc, ProtocolError) else _reason(exc)
    error = ProtocolError(f"{what} skipped: {reason}", item_excerpt(item))
    error.__cause__ = exc
    return Report(error)


def undecodable(exc: Exception, data: Any) -> ProtocolError:
    """``exc``, raised while an adapter decoded the input ``data``, as the
    :class:`ProtocolError` the adapter lets out (``exc`` itself if it is one)."""
    if isinstance(exc, ProtocolError):
        return exc
    error = ProtocolError(f"could not decode: {_reason(exc)}", item_excerpt(data))
    error.__cause__ = exc
    return error


def only_protocol_errors(method: InputT) -> InputT:
    """Decorate an adapter input method so that only :class:`ProtocolError` leaves it
    (anything else it raises is converted by :func:`undecodable`, excerpt of the first
    argument, usually the frame, included)."""

    code = getattr(method, "__code__", None)
    if code is not None and code.co_argcount == 4 and not code.co_flags & (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS):
        # (self, data, binary, now)
        # on_frame, once per frame: a wrapper of the same arity builds no *args tuple.
        @functools.wraps(method)
        def on_frame(self: Any, data: Any, binary: Any, now: Any) -> List[Any]:
            try:
                return method(self, data, binary, now)
            except ProtocolError:
                raise
            except Exception as exc:  # noqa: BLE001 - the contract: only ProtocolError leaves an adapter
                raise undecodable(exc, data) from exc

        return cast(InputT, on_frame)

    @functools.wraps(method)
    def guarded(self: Any, data: Any, *args: Any, **kwargs: Any) -> List[Any]:
        try:
            return method(self, data, *args, **kwargs)
        except ProtocolError:
            raise
        except Exception as exc:  # noqa: BLE001 - the contract: only ProtocolError leaves an adapter
            raise undecodable(exc, data) from exc

    return cast(InputT, guarded)


def _reason(exc: BaseException) -> str:
    """``Type: message`` of an exception, short and never raising."""
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001
        text = ""
    text = text if len(text) <= 120 else text[:120] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def first(*values: Any) -> Optional[Any]:
    """The first value that is not None (and not an empty string)."""
    for value in values:
        if value is not None and value != "":
            return value
    return None
