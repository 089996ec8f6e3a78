"""The consumer: typed events back out of Redis Streams, in another process.

:class:`RedisEvents` reads the streams a :class:`~brokerfeeds.bus.RedisPublisher` writes
and gives back the events it published, as the same immutable event objects
(:func:`brokerfeeds.events.from_json`), either as an iterator or through callbacks named
like a feed's (``on_order``, ``on_trade``, ..., ``run_forever``, ``start``/``stop``).

Without ``group`` it reads every entry (``XREAD``) from ``start``: ``"$"`` for what is
published from now on, ``"0"`` for everything the streams still hold, or an entry id.
With ``group`` it is one consumer of a consumer group (``XREADGROUP``): the entries of the
streams are shared among the group's consumers, each entry going to one of them, and the
group remembers what was delivered and acknowledged:

* An entry is acknowledged (``XACK``) once its callbacks returned (with the iterator: when
  the loop asks for the next event). The acknowledgement is written without waiting for
  Redis's reply (the next command reads it), so it costs no round trip.
* A consumer that (re)connects first takes back its own unacknowledged entries (a
  consumer restarted under the same name resumes where it died).
* Every ``claim_idle / 2`` seconds it takes over entries that another consumer of the
  group left unacknowledged for ``claim_idle`` seconds (``XAUTOCLAIM``): that consumer
  crashed, or hangs. Keep ``claim_idle`` above your slowest callback.
* The group is created (``XGROUP CREATE ... MKSTREAM``) at ``start`` if it does not exist.
* Entries read (up to ``count`` at a time) but not yet delivered when the consumer stops
  stay pending for it: taken back when it starts again under the same name, or claimed by
  another consumer after ``claim_idle``.

Delivery is at least once; duplicates are dropped by ``(run, seq)``: the run id and the
sequence number the publisher gave every entry. Within one stream a publisher's entries
are in sequence order, so an entry read as new whose number is not above the highest seen
for its run is a copy (a publisher retry); entries taken back or claimed are checked
against the last ``dedupe_window`` delivered. Duplicates are acknowledged and counted,
never delivered.

``streams`` may hold glob patterns (``"brokerfeeds:ibkr:*"``): they are resolved with
``SCAN`` and again every ``rescan`` seconds, so a new account's stream is picked up (read
from its first entry).

Redis going away is reported once (log and ``on_error``) and retried with backoff; a
refused password is fatal (:class:`~brokerfeeds.bus.BusAuthenticationError`, raised by
``run_forever`` and the iterator). Secrets never appear in errors or logs.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import socket
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Sequence, Set, Tuple, TypeVar, Union

import attrs

from .. import events as ev
from ..callbacks import EventCallbacks
from ..dispatch import CallbackRegistry
from ..errors import BrokerFeedsError, CallbackError, ProtocolError
from ..reconnect import Backoff, ReconnectPolicy
from ..redact import safe_repr, safe_str
from ._common import (
    DEFAULT_URL,
    F_EVENT,
    F_RUN,
    F_SEQ,
    BusAuthenticationError,
    BusConnectionFailed,
    BusError,
)
from ._redis import Endpoint, redis

__all__ = ["RedisEvents", "BusEntry", "ConsumerStats", "EVENT_KINDS"]

_monotonic = time.monotonic
_NETWORK_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)
_ID = re.compile(r"^\d+(-\d+)?$")
F = TypeVar("F", bound=Callable[..., Any])

#: Event class → callback kind (the names a feed uses: ``on_order`` is kind ``"order"``).
EVENT_KINDS: Dict[type, str] = {
    ev.Order: "order",
    ev.Trade: "trade",
    ev.Position: "position",
    ev.PnL: "pnl",
    ev.Holding: "holding",
    ev.Balance: "balance",
    ev.Quote: "quote",
    ev.Notice: "notice",
    ev.GttOrder: "gtt_order",
    ev.LocateInventory: "locate",
    ev.ReplayComplete: "replay_complete",
}


@attrs.frozen(slots=True, kw_only=True)
class BusEntry:
    """One event read from a stream, with where it came from.

    ``run`` / ``seq``: the publisher's run id and sequence number. ``redelivered``: taken
    back from this consumer's unacknowledged entries or claimed from another consumer.
    """

    stream: str
    id: str
    run: str
    seq: int
    event: ev.Event
    redelivered: bool = False


@attrs.frozen(slots=True, kw_only=True)
class ConsumerStats:
    """A snapshot of a consumer's counters (``events.stats``)."""

    state: str
    streams: Tuple[str, ...]
    received: int
    delivered: int
    duplicates: int
    malformed: int
    redelivered: int
    claimed: int
    acked: int
    callback_errors: int
    reconnects: int


class _Seen:
    """Which ``(run, seq)`` were delivered: per stream and run the highest number read as
    new, and the last ``window`` keys delivered (for entries taken back or claimed)."""

    def __init__(self, window: int) -> None:
        self._window = window
        self._high: Dict[Tuple[bytes, bytes], int] = {}
        self._recent: Set[Tuple[bytes, int]] = set()
        self._order: Deque[Tuple[bytes, int]] = deque()

    def duplicate(self, stream: bytes, run: bytes, seq: int, fresh: bool) -> bool:
        if (run, seq) in self._recent:
            return True
        if fresh:
            high = self._high.get((stream, run))
            return high is not None and seq <= high
        return False

    def add(self, stream: bytes, run: bytes, seq: int, fresh: bool) -> None:
        if fresh:
            key = (stream, run)
            if seq > self._high.get(key, 0):
                self._high[key] = seq
        if self._window:
            item = (run, seq)
            self._recent.add(item)
            self._order.append(item)
            if len(self._order) > self._window:
                self._recent.discard(self._order.popleft())


Raw = Tuple[bytes, bytes, Optional[List[bytes]], bool]  # stream, entry id, fields, read as new


class RedisEvents(EventCallbacks):
    """Events published by a :class:`~brokerfeeds.bus.RedisPublisher`, read back from Redis.

    ``streams``: a stream name, a glob pattern, or a list of them. ``group`` /
    ``consumer``: read as that consumer of that consumer group (``consumer`` defaults to
    ``<hostname>-<pid>``). ``start``: ``"$"`` (from now on), ``"0"`` (everything kept) or
    an entry id; with a group it is where a group created now starts. ``count``: most
    entries per read. ``block``: seconds one read waits for news (also how soon ``stop()``
    is noticed). ``claim_idle``: seconds after which another consumer's unacknowledged
    entries are taken over. ``dedupe_window``: delivered keys remembered for de-duplicating
    re-deliveries (0: only the per-run high-water mark).

    Construction does no I/O; a bad URL raises ValueError at once.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        streams: Union[str, Sequence[str]] = "brokerfeeds:*",
        group: Optional[str] = None,
        consumer: Optional[str] = None,
        start: str = "$",
        *,
        count: int = 100,
        block: float = 0.5,
        claim_idle: float = 30.0,
        dedupe_window: int = 10_000,
        rescan: float = 5.0,
        reconnect: Optional[ReconnectPolicy] = None,
        connect_timeout: float = 5.0,
        name: str = "bus-consumer",
        logger: Optional[logging.Logger] = None,
    ) -> None:
        names = [streams] if isinstance(streams, str) else list(streams)
        if not names or not all(isinstance(s, str) and s for s in names):
            raise ValueError("streams must be a stream name, a pattern, or a non-empty list of them")
        if consumer is not None and group is None:
            raise ValueError("consumer= needs group=")
        if start not in ("$", "0") and not _ID.match(start):
            raise ValueError(f"start must be '$', '0' or an entry id like '1700000000000-0', got {start!r}")
        for knob, value in (("block", block), ("claim_idle", claim_idle), ("rescan", rescan)):
            if not value > 0:
                raise ValueError(f"{knob} must be > 0, got {value!r}")
        if count < 1 or dedupe_window < 0:
            raise ValueError("count must be >= 1 and dedupe_window >= 0")
        self.name = name
        self._endpoint = Endpoint(url, connect_timeout=connect_timeout, socket_timeout=max(5.0, block + 5.0),
                                  logger=logger, prefix=f"[{name}] ")
        self._log = self._endpoint.log
        #: The Redis URL, its password masked.
        self.url = self._endpoint.shown
        self.patterns = tuple(n for n in names if _is_pattern(n))
        self.names = tuple(n for n in names if not _is_pattern(n))
        self.group = group
        self.consumer = consumer or (f"{socket.gethostname()}-{os.getpid()}" if group else None)
        self.start_id = start
        self.count = count
        self.block = block
        self.claim_idle = claim_idle
        self.rescan = rescan
        self.reconnect_policy = reconnect or ReconnectPolicy(initial=0.1, maximum=5.0)
        self._seen = _Seen(dedupe_window)
        self._callbacks = CallbackRegistry()
        self._kinds = dict(EVENT_KINDS)
        # Where each stream is read from: XREAD cursors (no group) / own pending cursors.
        self._streams: Dict[bytes, bytes] = {}
        self._pending: Dict[bytes, bytes] = {}
        self._claim_cursor: Dict[bytes, bytes] = {}
        self._first_setup = True
        self._next_claim = 0.0
        self._next_rescan = 0.0
        self._unread = 0
        # Lifecycle.
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._looping = False
        self._state = "idle"
        self._error: Optional[BusError] = None
        # Counters.
        self._received = 0
        self._delivered = 0
        self._duplicates = 0
        self._malformed = 0
        self._redelivered = 0
        self._claimed = 0
        self._acked = 0
        self._callback_errors = 0
        self._reconnects = 0

    # ================================================================ callbacks
    # on(kind, fn) (kinds "order", "trade", ..., "event" for every event, "error"),
    # remove_callback, on_order, ... on_error: see brokerfeeds.callbacks.EventCallbacks

    def on_event(self, fn: F) -> F:
        """Call ``fn(event)`` for every event, whatever its type."""
        return self.on("event", fn)

    def on_entry(self, fn: F) -> F:
        """Call ``fn(entry: BusEntry)`` for every event, with its stream, id, run and seq."""
        return self.on("entry", fn)

    # ================================================================ lifecycle
    def run_forever(self) -> None:
        """Run callbacks on the calling thread until :meth:`stop` (from a callback or another
        thread); raises a fatal error (refused credentials). Ctrl-C stops and re-raises."""
        try:
            for entry in self.entries():
                self._dispatch(entry)
        except KeyboardInterrupt:
            self._stopping.set()
            raise

    def start(self) -> "RedisEvents":
        """Run the callbacks on a thread of their own (``brokerfeeds-<name>``); returns at once."""
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stopping.clear()
        self._thread = threading.Thread(target=self._thread_main, name=f"brokerfeeds-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop reading (noticed within ``block`` seconds); True if the thread started by
        :meth:`start` ended within ``timeout``. Idempotent, safe from any thread."""
        self._stopping.set()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def __iter__(self) -> Iterator[ev.Event]:
        """The events, in stream order; each is acknowledged when the loop asks for the next."""
        return (entry.event for entry in self.entries())

    def __enter__(self) -> "RedisEvents":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def state(self) -> str:
        """``"idle"``, ``"connecting"``, ``"connected"``, ``"reconnecting"`` or ``"stopped"``."""
        return self._state

    @property
    def error(self) -> Optional[BusError]:
        """The fatal error that stopped the consumer, if one did."""
        return self._error

    @property
    def stats(self) -> ConsumerStats:
        """Counters: received, delivered, duplicates dropped, ..."""
        return ConsumerStats(
            state=self._state, streams=tuple(s.decode(errors="replace") for s in self._streams),
            received=self._received, delivered=self._delivered, duplicates=self._duplicates,
            malformed=self._malformed, redelivered=self._redelivered, claimed=self._claimed, acked=self._acked,
            callback_errors=self._callback_errors, reconnects=self._reconnects)

    def __repr__(self) -> str:
        return (f"RedisEvents(url={self.url!r}, streams={list(self.names + self.patterns)!r}, "
                f"group={self.group!r}, state={self._state!r})")

    # ================================================================ the loop
    def entries(self) -> Iterator[BusEntry]:
        """The entries with their events, in stream order, on the calling thread; each is
        acknowledged when the next is asked for. Ends after :meth:`stop`."""
        if self._looping:
            raise RuntimeError("this RedisEvents is already being read (one loop at a time)")
        self._looping = True
        if threading.current_thread() is not self._thread:
            self._stopping.clear()
        conn: Any = None
        backoff = Backoff(self.reconnect_policy)
        outage = False
        refused = ""  # the last refusal reported (each is reported once)
        try:
            while not self._stopping.is_set():
                if conn is None:
                    self._state = "reconnecting" if outage else "connecting"
                    try:
                        conn = self._endpoint.connection()
                        self._unread = 0
                        self._setup(conn)
                    except BusAuthenticationError as exc:
                        self._error = exc
                        self._report(exc)
                        raise
                    except (BusError, *_NETWORK_ERRORS, redis.RedisError) as exc:
                        _close(conn)
                        conn = None
                        error = exc if isinstance(exc, BusError) else self._endpoint.error(exc)
                        if not outage:
                            outage = True
                            self._report(BusConnectionFailed(f"{error}; retrying"))
                        backoff = backoff.increment()
                        self._stopping.wait(backoff.delay)
                        continue
                    if outage:
                        self._reconnects += 1
                        self._log.info("connected to Redis at %s again", self.url)
                    outage = False
                    backoff = backoff.reset()
                    self._state = "connected"
                try:
                    for stream, entry_id, fields, fresh in self._next_batch(conn):
                        entry = self._accept(stream, entry_id, fields, fresh)
                        if entry is not None:
                            yield entry
                        if self.group is not None:
                            conn.send_command("XACK", stream, self.group, entry_id, check_health=False)
                            self._unread += 1
                            self._acked += 1
                        else:
                            self._streams[stream] = entry_id
                        if self._stopping.is_set():
                            break
                except (*_NETWORK_ERRORS, BusError) as exc:
                    _close(conn)
                    conn = None
                    if self._stopping.is_set():
                        break
                    outage = True
                    error = exc if isinstance(exc, BusError) else self._endpoint.error(exc, "read from")
                    self._report(BusConnectionFailed(f"{error}; reconnecting"))
                except redis.ResponseError as exc:
                    text = safe_str(exc)
                    if "NOGROUP" in text:  # the group vanished (a Redis restarted without its data)
                        self._log.warning("consumer group %r is gone: creating it again", self.group)
                        _close(conn)
                        conn = None  # connecting again creates the groups
                        continue
                    if text != refused:
                        refused = text
                        self._report(BusError(f"Redis at {self.url} refused a read (retrying): {text}"))
                    self._stopping.wait(1.0)
        finally:
            if conn is not None and self._unread:
                try:
                    self._read_acks(conn)  # deliver the acknowledgements sent last
                except Exception:  # noqa: BLE001 - closing anyway
                    pass
            _close(conn)
            self._looping = False
            self._state = "stopped"

    def _thread_main(self) -> None:
        try:
            self.run_forever()
        except BusError:
            pass  # reported and kept in .error
        except BaseException as exc:  # noqa: BLE001 - a bug: say so
            self._log.error("consumer thread crashed: %s", safe_repr(exc), exc_info=exc)
            self._report(BusError(f"internal error: the consumer thread crashed: {safe_repr(exc)}"))

    def _setup(self, conn: Any) -> None:
        """After every connect: the streams, the groups, where to read from."""
        found = self._resolve(conn)
        first = self._first_setup
        # Where a stream first seen now starts: ``start`` at the first connect; later (a
        # stream that appeared while we were away) from its first entry.
        begin = self.start_id.encode() if first else b"0"
        if self.group is None:
            for stream in found:
                if stream not in self._streams:
                    self._streams[stream] = self._cursor(conn, stream, begin)
        else:
            self._create_groups(conn, found, begin)
            for stream in found:
                self._streams[stream] = b">"
            self._pending = {s: b"0" for s in self._streams}
            self._claim_cursor = {s: b"0-0" for s in self._streams}
        self._first_setup = False
        self._next_rescan = _monotonic() + self.rescan

    def _cursor(self, conn: Any, stream: bytes, start: bytes) -> bytes:
        """Where XREAD starts on ``stream``: ``$`` becomes the current last id (so nothing
        published between two reads is missed)."""
        if start != b"$":
            return start
        entries = self._call(conn, "XREVRANGE", stream, "+", "-", "COUNT", 1) or []
        return entries[0][0] if entries else b"0-0"

    def _resolve(self, conn: Any) -> List[bytes]:
        """The stream names: the explicit ones, and the streams matching the patterns."""
        out = [n.encode() for n in self.names]
        for pattern in self.patterns:
            cursor = b"0"
            matched: List[bytes] = []
            while True:
                cursor, keys = self._call(conn, "SCAN", cursor, "MATCH", pattern, "COUNT", 1000, "TYPE", "stream")
                matched.extend(keys)
                if cursor in (b"0", 0, "0"):
                    break
            out.extend(sorted(k for k in matched if fnmatch.fnmatchcase(k.decode(errors="replace"), pattern)))
        return list(dict.fromkeys(out))

    def _create_groups(self, conn: Any, streams: Sequence[bytes], start: bytes) -> None:
        for stream in streams:
            try:
                self._call(conn, "XGROUP", "CREATE", stream, self.group, start, "MKSTREAM")
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def _rescan(self, conn: Any) -> None:
        """Pick up streams that appeared since (read from their first entry)."""
        self._next_rescan = _monotonic() + (self.rescan if self._streams else min(self.rescan, self.block))
        new = [s for s in self._resolve(conn) if s not in self._streams]
        if not new:
            return
        self._log.info("new stream(s): %s", ", ".join(s.decode(errors="replace") for s in new))
        if self.group is None:
            for stream in new:
                self._streams[stream] = b"0-0"
        else:
            self._create_groups(conn, new, b"0")
            for stream in new:
                self._streams[stream] = b">"
                self._claim_cursor[stream] = b"0-0"

    def _next_batch(self, conn: Any) -> List[Raw]:
        """The next entries to deliver (may be empty after ``block`` seconds)."""
        now = _monotonic()
        if self.patterns and now >= self._next_rescan:
            self._rescan(conn)
        if not self._streams:
            self._read_acks(conn)
            self._stopping.wait(self.block)
            return []
        if self.group is None:
            reply = self._call(conn, "XREAD", "COUNT", self.count, "BLOCK", int(self.block * 1000), "STREAMS",
                               *self._streams, *self._streams.values())
            return self._flatten(reply, fresh=True)
        if self._pending:  # this consumer's own unacknowledged entries, first
            reply = self._call(conn, "XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", self.count,
                               "STREAMS", *self._pending, *self._pending.values())
            out = self._flatten(reply, fresh=False)
            got = {s for s, *_ in out}
            for stream, entry_id, _f, _n in out:
                self._pending[stream] = entry_id
            for stream in list(self._pending):
                if stream not in got:
                    del self._pending[stream]
            if out:
                self._redelivered += len(out)
                return out
        if now >= self._next_claim:
            self._next_claim = now + max(0.05, self.claim_idle / 2)
            claimed = self._claim(conn)
            if claimed:
                return claimed
        reply = self._call(conn, "XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", self.count,
                           "BLOCK", int(self.block * 1000), "STREAMS", *self._streams, *(b">" for _ in self._streams))
        return self._flatten(reply, fresh=True)

    def _claim(self, conn: Any) -> List[Raw]:
        """Take over entries other consumers left unacknowledged for ``claim_idle`` seconds."""
        out: List[Raw] = []
        for stream in self._streams:
            cursor = self._claim_cursor.get(stream, b"0-0")
            reply = self._call(conn, "XAUTOCLAIM", stream, self.group, self.consumer, int(self.claim_idle * 1000),
                               cursor, "COUNT", self.count)
            self._claim_cursor[stream] = reply[0]
            for item in reply[1] or ():
                if item is None:
                    continue
                out.append((stream, item[0], item[1], False))
        if out:
            self._claimed += len(out)
            self._log.info("claimed %d entr%s left unacknowledged by another consumer of group %r",
                           len(out), "y" if len(out) == 1 else "ies", self.group)
        return out

    def _flatten(self, reply: Any, fresh: bool) -> List[Raw]:
        out: List[Raw] = []
        if not reply:
            return out
        items = reply.items() if isinstance(reply, dict) else reply
        for stream, entries in items:
            for item in entries or ():
                if item is None:
                    continue
                out.append((stream, item[0], item[1], fresh))
        return out

    def _call(self, conn: Any, *args: Any) -> Any:
        """Send one command and read its reply (after the acknowledgements still unread)."""
        conn.send_command(*args, check_health=False)
        self._read_acks(conn)
        return conn.read_response()

    def _read_acks(self, conn: Any) -> None:
        while self._unread:
            self._unread -= 1
            try:
                conn.read_response()
            except redis.ResponseError as exc:  # e.g. NOGROUP: the entry comes back, de-duplicated
                self._log.debug("XACK refused: %s", safe_str(exc))

    def _accept(self, stream: bytes, entry_id: bytes, fields: Optional[List[Any]], fresh: bool) -> Optional[BusEntry]:
        """The entry to deliver, or None (a duplicate, an entry trimmed away, a malformed one)."""
        self._received += 1
        if fields is None:  # taken back, but trimmed from the stream meanwhile
            return None
        values = dict(fields.items()) if isinstance(fields, dict) else dict(zip(fields[::2], fields[1::2]))
        run, seq_text, data = values.get(F_RUN), values.get(F_SEQ), values.get(F_EVENT)
        try:
            if run is None or seq_text is None or data is None:
                raise ValueError("not a brokerfeeds entry (no run, seq or event field)")
            seq = int(seq_text)
            if self._seen.duplicate(stream, run, seq, fresh):
                self._duplicates += 1
                return None
            event = ev.from_json(data)
        except Exception as exc:  # noqa: BLE001 - one bad entry must not stop the consumer
            self._malformed += 1
            error = ProtocolError(f"entry {entry_id.decode(errors='replace')} of stream "
                                  f"{stream.decode(errors='replace')} ignored: {safe_str(exc)}",
                                  safe_str(data)[:200] if data is not None else None)
            error.__cause__ = exc
            self._report(error)
            return None
        self._seen.add(stream, run, seq, fresh)
        self._delivered += 1
        return BusEntry(stream=stream.decode(errors="replace"), id=entry_id.decode(), run=run.decode(errors="replace"),
                        seq=seq, event=event, redelivered=not fresh)

    # ================================================================ callbacks and errors
    def _dispatch(self, entry: BusEntry) -> None:
        event = entry.event
        kind = self._kinds.get(type(event), "message")
        for key, item in ((kind, event), ("event", event), ("entry", entry)):
            for fn in self._callbacks.get(key):
                try:
                    fn(item)
                except Exception as exc:  # noqa: BLE001 - user code never ends the loop
                    self._callback_errors += 1
                    error = CallbackError(f"{key} callback {safe_repr(fn)} raised {safe_repr(exc)}", fn, item)
                    error.__cause__ = exc
                    self._report(error)

    def _report(self, error: BrokerFeedsError) -> None:
        self._endpoint.redactor.redact_error(error)
        self._log.warning("%s: %s", type(error).__name__, safe_str(error))
        for fn in self._callbacks.get("error"):
            try:
                fn(error)
            except Exception as exc:  # noqa: BLE001 - user code
                self._log.error("on_error callback %s raised %s", safe_repr(fn), safe_repr(exc))


def _is_pattern(name: str) -> bool:
    return any(c in name for c in "*?[")


def _close(conn: Any) -> None:
    if conn is not None:
        try:
            conn.disconnect()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass
