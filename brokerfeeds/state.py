"""Protocol state every broker needs: change detection, partial merges, fills from orders.

These are plain data structures used inside adapters (driven by one owner, under one
lock). They are what makes "emit only what changed", "never move an order backwards",
"a position missing from a snapshot is closed" and "no duplicate fills after a
reconnect" the same mechanism for every broker.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from decimal import Decimal
from typing import (
    Any,
    Callable,
    Dict,
    Generic,
    Hashable,
    Iterable,
    List,
    Mapping,
    Optional,
    Set,
    Tuple,
    TypeVar,
)

import attrs

from .events import Holding, Order, OrderStatus, Position, Side

__all__ = [
    "ChangeTracker",
    "OrderTracker",
    "FillTracker",
    "Snapshots",
    "SnapshotBook",
    "SeenIds",
    "status_table",
    "map_order_status",
    "side_of",
]

_NOT_ALNUM = re.compile(r"[^0-9a-z]+")


def _status_key(word: Any) -> str:
    if type(word) is str:
        key = _STATUS_KEYS.get(word)
        if key is None:
            key = _NOT_ALNUM.sub("", word.lower())
            if len(_STATUS_KEYS) < 1024:  # brokers use a handful of words
                _STATUS_KEYS[word] = key
        return key
    return _NOT_ALNUM.sub("", str(word).lower()) if word is not None else ""


_STATUS_KEYS: Dict[str, str] = {}


def status_table(words: Mapping[str, OrderStatus]) -> Dict[str, OrderStatus]:
    """A broker's status table, keyed so that case, spaces, ``_`` and ``-`` do not matter."""
    return {_status_key(word): status for word, status in words.items()}


def map_order_status(
    table: Mapping[str, OrderStatus], word: Any, filled: Optional[Decimal], quantity: Optional[Decimal]
) -> OrderStatus:
    """The broker's status ``word`` looked up in ``table`` (built by :func:`status_table`).

    Unknown words are ``UNKNOWN``; a working (``OPEN``) order becomes
    ``PARTIALLY_FILLED`` once part of its quantity is filled.
    """
    status = table.get(_status_key(word), OrderStatus.UNKNOWN)
    if status is OrderStatus.OPEN and filled and quantity and 0 < filled < quantity:
        return OrderStatus.PARTIALLY_FILLED
    return status

# Every broker's words for a side, keyed like status words (case, "-" and "_" ignored):
# IBKR BUY/SELL (BOT/SLD on executions), Upstox and Firstock also B/S, Clear Street sell-short.
_SIDE_WORDS = {"buy": Side.BUY, "b": Side.BUY, "bot": Side.BUY,
               "sell": Side.SELL, "s": Side.SELL, "sld": Side.SELL, "sellshort": Side.SELL}


def side_of(word: Any) -> Optional[Side]:
    """A broker's side word as a :class:`Side`; None when missing or unknown."""
    return _SIDE_WORDS.get(_status_key(word)) if word is not None else None


E = TypeVar("E")


class ChangeTracker(Generic[E]):
    """Remembers the last value per key; :meth:`update` returns the value only if it changed.

    Equality is the events' own (``raw`` is excluded from it), so a REST snapshot that
    repeats what the stream already said produces nothing. A value that :meth:`accept`
    refuses changes nothing and is counted in :attr:`refused`.
    """

    def __init__(self) -> None:
        self._last: Dict[Hashable, E] = {}
        #: Updates refused by :meth:`accept` (stale ones), for ``stats.extra``.
        self.refused = 0

    def update(self, key: Hashable, value: E) -> Optional[E]:
        """Store ``value``; return it if it differs from the previous one, else None."""
        previous = self._last.get(key)
        if previous is not None:
            if previous == value:
                return None
            if not self.accept(previous, value):
                self.refused += 1
                return None
        self._last[key] = value
        return value

    def accepts(self, key: Hashable, value: E) -> bool:
        """Whether :meth:`update` would store ``value`` (equal values count as accepted)."""
        previous = self._last.get(key)
        return previous is None or previous == value or self.accept(previous, value)

    def accept(self, previous: E, value: E) -> bool:
        """Whether ``value`` may replace ``previous`` (override to refuse regressions)."""
        return True

    def get(self, key: Hashable) -> Optional[E]:
        """The last value stored for ``key``."""
        return self._last.get(key)

    def forget(self, key: Hashable) -> None:
        """Drop ``key`` (e.g. a position that was closed)."""
        self._last.pop(key, None)

    def keys(self) -> Tuple[Hashable, ...]:
        """Every key known."""
        return tuple(self._last)

    def __len__(self) -> int:
        return len(self._last)


#: Working statuses an order reaches after the broker accepted it: never followed by PENDING.
_WORKING = frozenset({OrderStatus.OPEN, OrderStatus.PARTIALLY_FILLED})


class OrderTracker(ChangeTracker[Order]):
    """A :class:`ChangeTracker` for orders that never moves an order backwards.

    A REST snapshot older than the stream's latest update, or a socket update still in
    flight when a newer snapshot was applied, must not regress an order. Refused, for
    one order: a filled quantity that shrinks; a non-final status after a final one
    (FILLED, CANCELLED, REJECTED, EXPIRED); PENDING after OPEN or PARTIALLY_FILLED.
    A refused update changes nothing (the caller must not merge its fields either) and
    is counted in :attr:`refused`.
    """

    def accept(self, previous: Order, value: Order) -> bool:
        if previous.status.is_final and not value.status.is_final:
            return False
        if (
            previous.filled_quantity is not None
            and value.filled_quantity is not None
            and value.filled_quantity < previous.filled_quantity
        ):
            return False
        if previous.status in _WORKING and value.status is OrderStatus.PENDING:
            return False
        return True

    def update_order(self, order: Order) -> Optional[Order]:
        """Store ``order`` under its id; return it if it changed."""
        return self.update(order.order_id, order)


Item = TypeVar("Item", Position, Holding)


class SnapshotBook(ChangeTracker[Item]):
    """Positions or holdings known from updates and full snapshots.

    :meth:`apply_snapshot` takes a *complete* snapshot (every row the broker has within
    a scope, e.g. one account): what changed is returned, and an item missing from the
    snapshot was closed: it is reported once with quantity 0 (``raw=None``) and
    forgotten. Written once here for every broker.
    """

    def apply_snapshot(
        self,
        items: Iterable[Tuple[Hashable, Item]],
        in_scope: Callable[[Hashable], bool] = lambda key: True,
    ) -> List[Item]:
        """Store every ``(key, item)``; return the changed ones plus closed ones."""
        out: List[Item] = []
        seen: Set[Hashable] = set()
        for key, item in items:
            seen.add(key)
            if self.update(key, item) is not None:
                out.append(item)
        for key in self.keys():
            if key in seen or not in_scope(key):
                continue
            gone = self.get(key)
            self.forget(key)
            if gone is not None and gone.quantity:
                out.append(closed(gone))
        return out


    def apply_updates(self, items: Iterable[Tuple[Hashable, Item]]) -> List[Item]:
        """Store every ``(key, item)`` of a partial update; return the changed ones (an
        item absent from a partial update is not closed)."""
        return [item for key, item in items if self.update(key, item) is not None]


def closed(item: Item) -> Item:
    """``item`` as reported once it left the broker's snapshot: quantity 0, no raw message
    (a closed position has no average price and no unrealized P&L; realized P&L is kept)."""
    if isinstance(item, Position):
        unrealized = None if item.unrealized_pnl is None else Decimal(0)
        position: Position = attrs.evolve(item, quantity=Decimal(0), avg_price=None,
                                          unrealized_pnl=unrealized, raw=None)
        return position
    holding: Holding = attrs.evolve(item, quantity=Decimal(0), raw=None)
    return holding


class SeenIds:
    """Ids already delivered (fills, executions), to drop repeats after a reconnect.

    Bounded: past ``limit`` ids the oldest are forgotten (a broker re-sends at most a
    few days of history, far fewer than the default limit).
    """

    def __init__(self, limit: int = 200_000) -> None:
        self._ids: "OrderedDict[str, None]" = OrderedDict()
        self._limit = limit

    def first_time(self, ident: str) -> bool:
        """Record ``ident``; True if it was not seen before."""
        if ident in self._ids:
            return False
        self._ids[ident] = None
        if len(self._ids) > self._limit:
            self._ids.popitem(last=False)
        return True

    def __contains__(self, ident: object) -> bool:
        return ident in self._ids

    def __len__(self) -> int:
        return len(self._ids)


class FillTracker:
    """Derives fills from increases of an order's cumulative filled quantity.

    For brokers that report fills only as ``filled_quantity`` on order updates: the
    quantity of a fill is the increase, its price is derived from the change of the
    average price (exact for volume-weighted averages).
    """

    def __init__(self) -> None:
        self._filled: Dict[str, Tuple[Decimal, Optional[Decimal]]] = {}

    def observe(self, order: Order) -> Optional[Tuple[Decimal, Optional[Decimal]]]:
        """Record ``order``'s fill state; return ``(quantity, price)`` of a new fill, if any."""
        filled = order.filled_quantity
        if filled is None:
            return None
        before, before_avg = self._filled.get(order.order_id, (Decimal(0), None))
        if filled <= before:
            return None
        self._filled[order.order_id] = (filled, order.avg_price)
        quantity = filled - before
        price = order.avg_price
        if order.avg_price is not None and before_avg is not None and before > 0:
            price = _tidy((order.avg_price * filled - before_avg * before) / quantity)
        return quantity, price

    def seed(self, order: Order) -> None:
        """Record ``order``'s fills as already known (no fill is derived from them)."""
        if order.filled_quantity is not None:
            self._filled[order.order_id] = (order.filled_quantity, order.avg_price)


def _tidy(value: Decimal) -> Decimal:
    """Round a derived price to 8 places and drop trailing zeros (``101.25``, not ``101.25000000``)."""
    value = value.quantize(Decimal("1e-8"))
    integral = value.to_integral_value()
    return integral if value == integral else value.normalize()


class Snapshots:
    """Per-key dictionaries merged from partial updates.

    ``keep`` decides, per field, whether a newly received value may overwrite the stored
    one (e.g. Firstock: a zero or sentinel never overwrites a good value).
    """

    def __init__(self, keep: Optional[Callable[[str, Any, Any], bool]] = None) -> None:
        self._data: Dict[Hashable, Dict[str, Any]] = {}
        self._keep = keep

    def merge(self, key: Hashable, update: Dict[str, Any]) -> Dict[str, Any]:
        """Merge ``update`` into ``key``'s snapshot and return the (live) snapshot."""
        current = self._data.get(key)
        if current is None:
            current = self._data[key] = {}
        keep = self._keep
        if keep is None:
            current.update(update)
        else:
            for name, value in update.items():
                if name not in current or keep(name, current[name], value):
                    current[name] = value
        return current

    def preview(self, key: Hashable, update: Dict[str, Any]) -> Dict[str, Any]:
        """What :meth:`merge` would make of ``key``'s snapshot, without storing it
        (store it with :meth:`replace` once it is accepted)."""
        current = self._data.get(key)
        merged = dict(current) if current is not None else {}
        keep = self._keep
        if keep is None:
            merged.update(update)
        else:
            for name, value in update.items():
                if name not in merged or keep(name, merged[name], value):
                    merged[name] = value
        return merged

    def replace(self, key: Hashable, snapshot: Dict[str, Any]) -> None:
        """Store ``snapshot`` as ``key``'s snapshot."""
        self._data[key] = snapshot

    def get(self, key: Hashable) -> Optional[Dict[str, Any]]:
        """The snapshot for ``key``, if any."""
        return self._data.get(key)

    def forget(self, key: Hashable) -> None:
        """Drop ``key``'s snapshot."""
        self._data.pop(key, None)

    def clear(self) -> None:
        """Drop every snapshot."""
        self._data.clear()
