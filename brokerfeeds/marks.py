"""Persisted positions in a broker's sequenced stream (e.g. Clear Street's activity marks).

A feed whose broker replays history keeps a per-account *mark* (the highest sequence
delivered, with its trading day) and can persist it with a :class:`MarkStore`, so a
restarted process does not re-deliver what it already handled.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Mapping

__all__ = ["Mark", "MarkStore", "JsonFileMarkStore"]

#: A persisted mark: ``{"sequence": 42, "trading_day": "2026-03-22"}`` (day may be None).
Mark = Dict[str, Any]


class MarkStore:
    """Where a feed (e.g. :class:`~brokerfeeds.ClearStreetFeed`) persists its sequence marks (``sequence_store=``).

    Subclass and implement both methods (or pass any object that has them). ``load``
    runs once when the feed starts; ``save`` runs on the feed's REST thread every
    ``store_interval`` seconds while marks change, and once more when the feed stops.
    """

    def load(self) -> Mapping[str, Any]:
        """The marks saved last (``{}`` if none)."""
        raise NotImplementedError

    def save(self, marks: Mapping[str, Mark]) -> None:
        """Persist ``marks`` (``{account: {"sequence": n, "trading_day": day}}``)."""
        raise NotImplementedError


class JsonFileMarkStore(MarkStore):
    """Marks kept in a small JSON file (written atomically)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def load(self) -> Mapping[str, Any]:
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return {}
        return data if isinstance(data, dict) else {}

    def save(self, marks: Mapping[str, Mark]) -> None:
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(dict(marks), fh, sort_keys=True)
        os.replace(tmp, self.path)
