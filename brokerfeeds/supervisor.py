"""The connection supervisor: the feed's ``io`` thread.

It opens connections (asking the feed where to connect, retrying once with refreshed
credentials after a rejection), serves each one (reads frames, answers pings, sends the
broker's heartbeats on time, drives the adapter, detects dead connections) and, when one
ends, waits with jittered exponential backoff (:class:`~brokerfeeds.reconnect.Backoff`)
before the next attempt. It never runs user code unless ``dispatch="inline"``.

Everything it tells the adapter goes through the feed's adapter owner (one lock from the
adapter call to the hand-over of its outputs; see :mod:`brokerfeeds.owner`).

One supervisor serves one run of the feed and watches that run's own stop event: an
``io`` thread that outlives ``stop()`` (blocked in a slow token provider, say) ends as
soon as it returns, without touching the run that a later ``start()`` began. If the
thread ever dies of an unexpected exception (a bug), the feed reports it and stops.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, List, Optional, Tuple

from . import events as ev
from .errors import AuthenticationError, BrokerFeedsError, ConnectionFailed, RateLimited
from .protocol import Control, Reconnect, excerpt
from .reconnect import Backoff
from .transport import FRAME_BINARY, FRAME_TEXT, Closed, Connection

if TYPE_CHECKING:  # pragma: no cover
    from .feed import Feed
    from .lifecycle import Run

__all__ = ["Supervisor", "Liveness"]

_monotonic = time.monotonic


class Liveness:
    """When a connection counts as dead, and when our own keep-alives are due.

    Decided on whole frames received (data, ping or pong), never on bytes: a peer that
    trickles a frame byte by byte is not alive.
    """

    def __init__(
        self,
        now: float,
        *,
        stale_after: float,
        heartbeat_interval: float,
        ping_interval: Optional[float],
        auth_timeout: float,
    ) -> None:
        self.stale_after = stale_after
        self.heartbeat_interval = heartbeat_interval
        self.ping_interval = ping_interval
        self.auth_timeout = auth_timeout
        #: How often the supervisor looks at the clock while frames flow or not.
        self.tick = max(0.02, min(1.0, stale_after / 5, heartbeat_interval / 2,
                                  ping_interval / 2 if ping_interval else 1.0))
        self.last_frame = now
        self.next_heartbeat = now + heartbeat_interval
        self.next_ping = now + (ping_interval or 0.0)
        self._unready_since: Optional[float] = now

    def received(self, now: float) -> None:
        """A whole frame arrived."""
        self.last_frame = now

    def dead(self, now: float) -> Optional[str]:
        """Why the connection counts as dead, or None."""
        quiet = now - self.last_frame
        if quiet > self.stale_after:
            return f"no data for {quiet:.1f}s (stale connection)"
        return None

    def auth_overdue(self, now: float, ready: bool) -> Optional[str]:
        """Why the session is given up for not becoming ready in time, or None."""
        if ready:
            self._unready_since = None
            return None
        if self._unready_since is None:
            self._unready_since = now
        elif now - self._unready_since > self.auth_timeout:
            return f"not authenticated within {self.auth_timeout:g}s"
        return None

    def heartbeat_due(self, now: float) -> bool:
        """True (once per interval) when the broker's heartbeat should be sent."""
        if now >= self.next_heartbeat:
            self.next_heartbeat = now + self.heartbeat_interval
            return True
        return False

    def ping_due(self, now: float) -> bool:
        """True (once per interval) when a WebSocket ping should be sent."""
        if self.ping_interval and now >= self.next_ping:
            self.next_ping = now + self.ping_interval
            return True
        return False


class Supervisor:
    """Runs the ``io`` thread of one feed run. ``feed`` supplies the hooks and the owner;
    ``run`` is the run it serves (its stop event, and how the feed ends it)."""

    def __init__(self, feed: "Feed[Any]", run: "Run") -> None:
        self._feed = feed
        self._run_state = run
        self._stop = run.stop_event
        self._lock = threading.Lock()
        self._conn: Optional[Connection] = None
        self._reconnect: Optional[Reconnect] = None
        self.has_connected = False
        #: Created here, started by :meth:`start`: the feed knows its threads before they run.
        self.thread: Optional[threading.Thread] = threading.Thread(
            target=self._run, name=f"brokerfeeds-{feed.name}-io", daemon=True)

    # ------------------------------------------------------------------ control from other threads
    def start(self) -> None:
        """Start the ``io`` thread."""
        assert self.thread is not None
        self.thread.start()

    def abort(self) -> None:
        """Wake the ``io`` thread out of any wait on the socket (connect, handshake, recv)."""
        with self._lock:
            conn = self._conn
        if conn is not None:
            conn.abort()

    def request_reconnect(self, request: Reconnect) -> None:
        """Drop the current connection and open a new one (any thread)."""
        with self._lock:
            self._reconnect = request
            conn = self._conn
        if conn is not None:
            conn.abort()

    def send(self, frame: Any) -> None:
        """Write a frame to the current connection, if any (a failure is noticed by the reader)."""
        conn = self._conn
        if conn is None:
            return
        try:
            conn.send(frame)
        except Closed:
            pass  # the reader notices and reconnects; subscriptions are re-sent then

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        feed = self._feed
        stop = self._stop
        backoff = Backoff(feed.reconnect_policy)
        try:
            while not stop.is_set():
                try:
                    conn = self._open()
                except BrokerFeedsError as exc:
                    if isinstance(exc, AuthenticationError) and feed._auth_refusal_fatal(exc):
                        feed._fail(exc)
                        break
                    if stop.is_set():
                        break
                    feed._report(exc)
                    retry_after = exc.retry_after if isinstance(exc, RateLimited) else None
                    backoff = backoff.increment(retry_after)
                    if backoff.exhausted:
                        feed._fail(ConnectionFailed(f"gave up after {backoff.failures} failed attempts: {exc}"))
                        break
                    feed._log.info("reconnecting in %.2fs (attempt %d)", backoff.delay, backoff.failures + 1)
                    stop.wait(backoff.delay)
                    continue
                opened = _monotonic()
                reason, request = self._serve(conn)
                healthy = backoff.healthy(_monotonic() - opened)
                if healthy:
                    backoff = backoff.reset()
                if stop.is_set():
                    if self.has_connected and feed._is_current(self._run_state):
                        error = feed._fatal_error
                        feed._dispatcher.put("disconnect", ev.Disconnected(
                            broker=feed.broker, reason=str(error) if error is not None else "stopped",
                            will_reconnect=False))
                    break
                feed._reconnects += 1
                feed._set_state("reconnecting" if self.has_connected else "connecting")
                feed._log.info("connection lost: %s", reason)
                feed._dispatcher.put("disconnect", ev.Disconnected(broker=feed.broker, reason=reason))
                if request is not None and request.fresh_credentials:
                    feed._credentials_refused()
                if request is not None and request.immediate:
                    continue
                backoff = backoff.increment()
                if backoff.exhausted and not healthy:
                    feed._fail(ConnectionFailed(f"gave up after {backoff.failures} failed attempts: {reason}"))
                    break
                feed._log.info("reconnecting in %.2fs", backoff.delay)
                stop.wait(backoff.delay)
        except BaseException as exc:  # noqa: BLE001 - a bug must surface, never kill the feed silently
            feed._thread_crashed("io", exc)
        finally:
            feed._finish_run(self._run_state)

    def _open(self) -> Connection:
        """One connection attempt (with one immediate retry after refreshed credentials)."""
        feed = self._feed
        feed._set_state("reconnecting" if self.has_connected else "connecting")
        for _ in range(2):
            try:
                target = feed._connect_target()
                feed._log.info("connecting to %s", feed._redactor.redact(target.url))
                conn = Connection.open(target, timeout=feed.connect_timeout, verify=feed.verify,
                                       started=self._connecting, max_message_size=feed.max_message_size,
                                       redact=feed._redactor.redact)
            except BrokerFeedsError as exc:
                with self._lock:
                    self._conn = None
                if not isinstance(exc, AuthenticationError) or self._stop.is_set() \
                        or not feed._retry_auth(exc):
                    raise
                feed._log.info("credentials rejected; retrying with refreshed credentials")
                continue
            with self._lock:
                if self._stop.is_set():
                    conn.close()
                    raise ConnectionFailed("stopped while connecting")
                self._conn = conn
                self._reconnect = None
            return conn
        raise AuthenticationError("credentials rejected again after a refresh")

    def _connecting(self, conn: Connection) -> None:
        """Remember a connection still in its handshake, so stop() can abort it."""
        with self._lock:
            self._conn = conn
        if self._stop.is_set():
            conn.abort()

    def _serve(self, conn: Connection) -> Tuple[str, Optional[Reconnect]]:
        """Read frames until the connection ends; returns ``(reason, reconnect request)``."""
        feed = self._feed
        owner = feed._owner
        adapter = owner.adapter
        assert adapter is not None
        lock = owner.lock
        hand_over = feed._hand_over
        widen = owner.between_change_and_hand_over
        after = feed._after_hand_over
        dispatcher = feed._dispatcher
        stop = self._stop
        debug = feed._log.isEnabledFor(logging.DEBUG)
        now = _monotonic()
        live = Liveness(now, stale_after=feed.stale_after, heartbeat_interval=feed.heartbeat_interval,
                        ping_interval=feed.ping_interval, auth_timeout=feed.auth_timeout)
        tick = live.tick
        next_tick = now + tick
        reason = "closed"
        late: Optional[List[Control]]
        with lock:
            late = hand_over(adapter.on_open(now))
        if late:
            after(late)
        try:
            while not stop.is_set():
                if now >= next_tick:
                    next_tick = now + tick
                    dead = live.dead(now)
                    if dead is None:
                        dead = live.auth_overdue(now, owner.ready)
                        if dead is not None:
                            feed._report(ConnectionFailed(dead))
                    if dead is not None:
                        reason = dead
                        break
                    if self._reconnect is not None:
                        break
                    with lock:
                        outputs = adapter.maintain(now)
                        if live.heartbeat_due(now):
                            outputs = list(outputs) + adapter.heartbeat(now)
                        late = hand_over(outputs) if outputs else None
                    if late:
                        after(late)
                    if live.ping_due(now):
                        conn.ping()
                if dispatcher.defer and not conn.buffered:
                    dispatcher.flush()  # about to wait for the socket: deliver the batch
                frame = conn.recv(max(0.005, next_tick - now))
                now = _monotonic()
                if frame is None:
                    continue
                live.last_frame = now
                opcode, data = frame
                if opcode != FRAME_TEXT and opcode != FRAME_BINARY:
                    continue  # ping / pong: alive, nothing to decode
                feed._messages += 1
                feed._last_message_at = now
                if debug:
                    feed._log.debug("recv %s", excerpt(data))
                bad: Optional[BaseException] = None
                ends = False
                with lock:
                    try:
                        outputs = adapter.on_frame(data, opcode == FRAME_BINARY, now)
                    except Exception as exc:  # noqa: BLE001 - bad input must never kill the reader
                        bad, outputs = exc, []
                    if outputs:
                        widen()
                        ends = dispatcher.batch(more_coming=conn.buffered)
                        late = hand_over(outputs)
                    else:
                        late = None
                if ends:
                    dispatcher.flush()  # outside the lock: the consumer's callbacks may need it
                if late:
                    after(late)
                if bad is not None:
                    feed._bad_frame(data, bad)
        except Closed as closed:
            reason = closed.reason
            error = getattr(closed, "error", None)
            if error is not None and not stop.is_set():
                feed._report(error)
        finally:
            dispatcher.flush()
            with lock:
                owner.ready = False
                try:
                    adapter.on_close()
                except Exception as exc:  # noqa: BLE001
                    feed._log.error("adapter on_close failed: %r", exc, exc_info=exc)
            with self._lock:
                self._conn = None
                request, self._reconnect = self._reconnect, None
            feed._connected_since = None
            conn.close(1000 if stop.is_set() else 1001)
        if request is not None:
            return request.reason, request
        return reason, None

