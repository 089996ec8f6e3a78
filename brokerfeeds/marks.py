"""Persisted positions in a broker's sequenced stream (e.g. Clear Street's activity marks).

A feed whose broker replays history keeps a per-account *mark* (the highest sequence
delivered, with its trading day) and can persist it with a :class:`MarkStore`, so a
restarted process does not re-deliver what it already handled.

A persisted mark outlives the process, so a wrong one does lasting harm: a mark dated in
the future (one frame with a bogus timestamp) would make every real event of every later
day look old, across restarts. So only marks the server can have confirmed are written
(:func:`confirmed_marks`): a trading day that is today's or a recent one in
America/New_York by the local wall clock (never a later one), and a sequence that did not
jump implausibly. A refused mark is not written; the account keeps its previous one. The
wall clock is read here, in the feed's persistence step, never in an adapter.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

__all__ = ["Mark", "MarkStore", "JsonFileMarkStore", "confirmed_marks", "plausible_marks", "new_york_day",
           "NEW_YORK", "MAX_SEQUENCE_JUMP", "MAX_MARK_AGE_DAYS"]

#: A persisted mark: ``{"sequence": 42, "trading_day": "2026-03-22"}`` (day may be None).
Mark = Dict[str, Any]

#: A sequence that moves further than this in one step is not real (per account and day).
MAX_SEQUENCE_JUMP = 1_000_000
#: How many calendar days old a mark's trading day may be and still be persisted: the last
#: trading day before a long weekend (Friday, with Monday a holiday) is 4 days before Tuesday.
MAX_MARK_AGE_DAYS = 4

try:  # Python >= 3.9 with the system's (or the tzdata package's) time-zone database
    from zoneinfo import ZoneInfo

    NEW_YORK: _dt.tzinfo = ZoneInfo("America/New_York")
except Exception:  # noqa: BLE001 - no tz database: Eastern standard time is close enough for a date
    NEW_YORK = _dt.timezone(_dt.timedelta(hours=-5))


def new_york_day(epoch_seconds: float) -> str:
    """The America/New_York date (``"YYYY-MM-DD"``) of a wall-clock time."""
    return _dt.datetime.fromtimestamp(epoch_seconds, tz=NEW_YORK).date().isoformat()


class MarkStore:
    """Where a feed (e.g. :class:`~brokerfeeds.ClearStreetFeed`) persists its sequence marks (``sequence_store=``).

    Subclass and implement both methods (or pass any object that has them). ``load``
    runs once when the feed starts; ``save`` runs on the feed's REST thread every
    ``store_interval`` seconds while marks change, and once more when the feed stops. The
    feed passes ``save`` only marks the server can have confirmed (:func:`confirmed_marks`)
    and ignores loaded marks dated after today (:func:`plausible_marks`).
    """

    def load(self) -> Mapping[str, Any]:
        """The marks saved last (``{}`` if none)."""
        raise NotImplementedError

    def save(self, marks: Mapping[str, Mark]) -> None:
        """Persist ``marks`` (``{account: {"sequence": n, "trading_day": day}}``)."""
        raise NotImplementedError


class JsonFileMarkStore(MarkStore):
    """Marks kept in a small JSON file (written atomically).

    ``save`` writes only what :func:`confirmed_marks` accepts against the file's current
    content (a refused account keeps its saved mark), and ``load`` drops marks dated after
    today, so a bogus mark never reaches the file, even when the store is used on its own.
    ``clock`` (epoch seconds) is the wall clock those checks use.
    """

    def __init__(self, path: str, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock

    def _read(self) -> Dict[str, Any]:
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return {}
        return data if isinstance(data, dict) else {}

    def load(self) -> Mapping[str, Any]:
        return plausible_marks(self._read(), today=new_york_day(self.clock()))[0]

    def save(self, marks: Mapping[str, Mark]) -> None:
        saved = self._read()
        written: Dict[str, Any] = {}
        accepted, refused = confirmed_marks(marks, saved, today=new_york_day(self.clock()))
        for account in marks:
            account = str(account)
            if account in accepted:
                written[account] = accepted[account]
            elif account in refused and account in saved:
                written[account] = saved[account]  # refused: the account keeps its saved mark
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(written, fh, sort_keys=True)
        os.replace(tmp, self.path)


def _parse(value: Any) -> Optional[Tuple[int, Optional[str]]]:
    """``(sequence, day)`` of a mark (a dict or a bare int), or None if it is not one."""
    if isinstance(value, Mapping):
        seq, day = value.get("sequence"), value.get("trading_day")
    else:
        seq, day = value, None
    if type(seq) is not int or seq < 0:
        return None
    if day is None:
        return seq, None
    if not isinstance(day, str):
        return None
    try:
        _dt.date.fromisoformat(day)
    except ValueError:
        return None
    return seq, day


def _days_before(day: str, days: int) -> str:
    return (_dt.date.fromisoformat(day) - _dt.timedelta(days=days)).isoformat()


def plausible_marks(marks: Mapping[str, Any], today: str) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """``(kept, dropped)``: the loaded ``marks`` minus those no server can have confirmed
    (unreadable, or dated after ``today``), and why each dropped one was dropped."""
    kept: Dict[str, Any] = {}
    dropped: Dict[str, str] = {}
    for account, value in marks.items():
        parsed = _parse(value)
        if parsed is None:
            dropped[str(account)] = f"not a mark: {value!r:.80}"
        elif parsed[1] is not None and parsed[1] > today:
            dropped[str(account)] = f"trading day {parsed[1]} is after today ({today})"
        else:
            kept[str(account)] = value
    return kept, dropped


def confirmed_marks(
    marks: Mapping[str, Any],
    saved: Optional[Mapping[str, Any]] = None,
    *,
    today: str,
    max_jump: int = MAX_SEQUENCE_JUMP,
    max_age_days: int = MAX_MARK_AGE_DAYS,
) -> Tuple[Dict[str, Mark], Dict[str, str]]:
    """``(accepted, refused)``: the ``marks`` that may be persisted over the ``saved`` ones,
    and why each refused one was refused (its account keeps its saved mark).

    A mark equal to its saved one is always accepted. Otherwise it must be readable, its
    trading day (if any) must lie between ``max_age_days`` before ``today`` and ``today``
    (the America/New_York date by the wall clock: never later), and its sequence must not
    go back on the saved mark's day nor jump more than ``max_jump`` (from the saved mark on
    its day, from zero on a new day).
    """
    accepted: Dict[str, Mark] = {}
    refused: Dict[str, str] = {}
    oldest = _days_before(today, max_age_days)
    for account, value in marks.items():
        account = str(account)
        before = (saved or {}).get(account)
        parsed = _parse(value)
        if parsed is None:
            refused[account] = f"not a mark: {value!r:.80}"
            continue
        seq, day = parsed
        mark: Mark = {"sequence": seq, "trading_day": day}
        if before is not None and _parse(before) == parsed:
            accepted[account] = mark
            continue
        if day is not None and not oldest <= day <= today:
            refused[account] = f"trading day {day} is not a recent trading day (today is {today} in New York)"
            continue
        previous = _parse(before) if before is not None else None
        base = previous[0] if previous is not None and previous[1] == day else 0
        if seq < base:
            refused[account] = f"sequence {seq} goes back on the saved {base} of the same day"
        elif seq - base > max_jump:
            refused[account] = f"sequence {seq} jumps {seq - base} past {base}"
        else:
            accepted[account] = mark
    return accepted, refused
