"""The REST scheduler: one thread for a feed's blocking HTTP work.

Keep-alives, polls, reconciliation after each (re)connect and refreshes an adapter asks
for all run here, one at a time, so blocking HTTP calls never delay the socket. Jobs do
not return outputs: a job that learns something gives it to the adapter through the
adapter owner (``Feed._apply``), which delivers the resulting events in order.

A job that raises (anything, ``SystemExit`` included) is reported and the thread carries
on. If the thread ever dies of something else (a bug), ``crashed`` is told, and the feed
stops with that error rather than carry on without keep-alives and polls. :meth:`stop`
never waits for a running job: a slow HTTP call finishes (or times out) on its own, after
which the thread ends without starting another job.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Callable, List, Optional, Sequence, Tuple

import attrs

__all__ = ["PeriodicJob", "RestScheduler"]

_monotonic = time.monotonic


@attrs.frozen(slots=True)
class PeriodicJob:
    """Work the REST thread repeats every ``interval`` seconds.

    ``when_ready``: skip it while no connection is ready (a poll needs a live session;
    a keep-alive does not).
    """

    name: str
    interval: float
    run: Callable[[], object]
    when_ready: bool = True


OneOff = Callable[[], object]


class RestScheduler:
    """Runs periodic jobs and one-off jobs on the feed's ``rest`` thread.

    ``failed(name, exc)`` is told about every job that raised; the thread carries on.
    ``crashed(exc)`` is told if the thread itself dies (a bug); it must not raise.
    """

    def __init__(
        self,
        thread_name: str,
        jobs: Sequence[PeriodicJob],
        is_ready: Callable[[], bool],
        failed: Callable[[str, BaseException], None],
        crashed: Optional[Callable[[BaseException], None]] = None,
    ) -> None:
        self._thread_name = thread_name
        self._jobs = list(jobs)
        self._is_ready = is_ready
        self._failed = failed
        self._crashed = crashed
        self._queue: "queue.SimpleQueue[Optional[Tuple[str, OneOff]]]" = queue.SimpleQueue()
        self._stopping = threading.Event()
        self.thread: Optional[threading.Thread] = None

    def start(self) -> None:
        """Start the thread."""
        self._stopping.clear()
        self.thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
        self.thread.start()

    def submit(self, name: str, job: OneOff) -> None:
        """Run ``job`` once, as soon as the thread is free."""
        self._queue.put((name, job))

    def stop(self) -> None:
        """Ask the thread to end after the job it is running (does not wait)."""
        self._stopping.set()
        self._queue.put(None)

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called (long jobs check it between steps)."""
        return self._stopping.is_set()

    def join(self, timeout: Optional[float]) -> bool:
        """Wait for the thread; True if it ended (or never ran, or is the caller)."""
        thread = self.thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - a bug must stop the feed, never leave a zombie
            crashed = self._crashed
            if crashed is not None:
                crashed(exc)

    def _loop(self) -> None:
        due: List[float] = [_monotonic() + job.interval for job in self._jobs]
        while not self._stopping.is_set():
            now = _monotonic()
            wait = min(due, default=now + 1.0) - now
            try:
                entry = self._queue.get(timeout=max(0.0, min(wait, 1.0)))
            except queue.Empty:
                entry = None
            if entry is not None:
                self._call(*entry)
            now = _monotonic()
            for index, job in enumerate(self._jobs):
                if now >= due[index] and not self._stopping.is_set():
                    due[index] = now + job.interval
                    if job.when_ready and not self._is_ready():
                        continue
                    self._call(job.name, job.run)

    def _call(self, name: str, job: OneOff) -> None:
        if self._stopping.is_set():
            return
        try:
            job()
        except BaseException as exc:  # noqa: BLE001 - a job's failure never ends the thread
            self._failed(name, exc)
