"""The subscription book: what the user asked to receive, kept across reconnects."""

from __future__ import annotations

from typing import Dict, FrozenSet, Iterable, List, Sequence, Tuple

from .protocol import Subscription

__all__ = ["SubscriptionBook"]


class SubscriptionBook:
    """The desired subscriptions, by ``(kind, key)``, in the order they were first asked for.

    A ready connection gets every one of them (and each reconnect re-sends them all).
    Changed only under the adapter owner's lock, so a subscription added while a
    connection becomes ready is sent exactly once: either with the whole book on
    :class:`~brokerfeeds.protocol.Ready`, or on its own after it.
    """

    def __init__(self) -> None:
        self._desired: Dict[Tuple[str, str], Subscription] = {}

    def add(self, subs: Iterable[Subscription]) -> List[Subscription]:
        """Add ``subs``; returns the ones that are new or changed their params."""
        fresh: Dict[Tuple[str, str], Subscription] = {}
        for sub in subs:
            if self._desired.get(sub.ident) != sub:
                fresh[sub.ident] = sub
        self._desired.update(fresh)
        return list(fresh.values())

    def remove(self, idents: Iterable[Tuple[str, str]]) -> List[Subscription]:
        """Remove ``(kind, key)`` pairs; returns the subscriptions that were there."""
        removed = (self._desired.pop(i, None) for i in dict.fromkeys(idents))
        return [s for s in removed if s is not None]

    def all(self) -> Tuple[Subscription, ...]:
        """Every desired subscription, oldest first."""
        return tuple(self._desired.values())

    def kinds(self) -> FrozenSet[str]:
        """The kinds subscribed (``{"orders", "quotes"}``)."""
        return frozenset(kind for kind, _ in self._desired)

    def keys(self, kind: str) -> Sequence[str]:
        """The keys subscribed for ``kind`` (instruments, accounts), oldest first."""
        return [key for k, key in self._desired if k == kind]

    def __len__(self) -> int:
        return len(self._desired)
