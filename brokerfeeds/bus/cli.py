"""The command-line side of the bus: ``brokerfeeds tail`` and ``brokerfeeds watch --publish``.

The ``brokerfeeds`` entry point (:mod:`brokerfeeds.cli`) wires these in. This module imports
without redis-py: building the parsers never needs the ``redis`` extra, running does.

* ``brokerfeeds tail URL [--stream S]... [--group G] [--consumer C] [--start ID] [--json]
  [--count N]`` prints the events of the streams as they arrive:
  :func:`add_tail_arguments` fills its sub-parser, :func:`run_tail` runs it
  (:func:`tail_main` does both, for ``python -m brokerfeeds.bus.cli``).
* ``brokerfeeds watch ... --publish URL [--quiet]``: :func:`add_publish_arguments` adds the
  publishing options, :func:`attach_publisher` attaches a :class:`RedisPublisher` to the
  watched feed before it starts (``--quiet`` is the watch command's own: print nothing
  but errors, just publish).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any, Callable, List, Optional

from ..errors import BrokerFeedsError

if TYPE_CHECKING:  # pragma: no cover
    from ..feed import Feed
    from .consumer import BusEntry
    from .publisher import RedisPublisher

__all__ = ["add_tail_arguments", "run_tail", "tail_main", "add_publish_arguments", "attach_publisher",
           "entry_line", "entry_json"]

Out = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _stdout(line: str) -> None:
    print(line, flush=True)


# ====================================================================== tail
def add_tail_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``tail``'s arguments to ``parser`` (a sub-parser of ``brokerfeeds``)."""
    parser.add_argument("url", help="the Redis URL, e.g. redis://localhost:6379/0 (password as redis://:PASSWORD@host)")
    parser.add_argument("--stream", action="append", metavar="S",
                        help="a stream name or glob pattern (repeatable; default: brokerfeeds:*)")
    parser.add_argument("--group", metavar="G",
                        help="read as a consumer of this consumer group: entries are shared among the group's "
                             "consumers and acknowledged once printed")
    parser.add_argument("--consumer", metavar="C", help="this consumer's name in the group (default: host-pid)")
    parser.add_argument("--start", default="$", metavar="ID",
                        help="'$' (default): events from now on; '0': everything the streams hold; or an entry id")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per line: stream, id, run, seq and the event's JSON form")
    parser.add_argument("--count", type=int, metavar="N", help="exit after N events")
    return parser


def run_tail(args: argparse.Namespace, out: Out = _stdout, err: Out = _stderr) -> int:
    """Run ``tail`` with parsed ``args``; returns the exit code (0, or 2 for a bad URL or
    refused credentials). Ctrl-C ends it with 0."""
    from ._common import BusAuthenticationError, BusConnectionFailed

    try:
        from .consumer import RedisEvents
    except ImportError as exc:  # the "redis" extra is not installed
        err(f"brokerfeeds tail: {exc}")
        return 2
    if args.count is not None and args.count < 1:
        err("brokerfeeds tail: --count must be >= 1")
        return 2
    try:
        # With --count, read no more than that at once: what a group consumer reads and does
        # not print stays pending (for it, or for another consumer after claim_idle).
        events = RedisEvents(args.url, args.stream or ["brokerfeeds:*"], group=args.group,
                             consumer=args.consumer, start=args.start,
                             count=min(100, args.count) if args.count else 100)
    except ValueError as exc:
        err(f"brokerfeeds tail: {exc}")
        return 2
    shown = 0
    render = entry_json if args.json else entry_line

    def show(entry: "BusEntry") -> None:
        nonlocal shown
        out(render(entry))
        shown += 1
        if args.count is not None and shown >= args.count:
            events.stop()

    def problem(error: BrokerFeedsError) -> None:
        if isinstance(error, BusConnectionFailed):
            err(f"brokerfeeds tail: {error}")

    events.on_entry(show)
    events.on_error(problem)
    try:
        events.run_forever()
    except BusAuthenticationError as exc:
        err(f"brokerfeeds tail: {exc}")
        return 2
    except KeyboardInterrupt:
        pass
    return 0


def tail_main(argv: Optional[List[str]] = None) -> int:
    """``brokerfeeds tail`` as a function: parse ``argv`` and run; returns the exit code."""
    parser = add_tail_arguments(argparse.ArgumentParser(
        prog="brokerfeeds tail", description="print the events a brokerfeeds publisher writes to Redis"))
    return run_tail(parser.parse_args(argv))


def entry_line(entry: "BusEntry") -> str:
    """One readable line: stream, sequence number and the event."""
    from ..demo import describe

    return f"{entry.stream} #{entry.seq}  {describe(entry.event)}"


def entry_json(entry: "BusEntry") -> str:
    """One JSON object: ``stream``, ``id``, ``run``, ``seq`` and ``event`` (the JSON form)."""
    from ..events import to_json

    head = json.dumps({"stream": entry.stream, "id": entry.id, "run": entry.run, "seq": entry.seq})
    return head[:-1] + ', "event": ' + to_json(entry.event) + "}"


# ====================================================================== watch --publish
def add_publish_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--publish URL``, ``--publish-stream``, ``--publish-quotes`` and
    ``--publish-linger`` to ``parser``."""
    from ._common import DEFAULT_STREAM

    parser.add_argument("--publish", metavar="URL",
                        help="also publish every event to Redis Streams at URL (e.g. redis://localhost:6379/0), "
                             "for `brokerfeeds tail` and other programs")
    parser.add_argument("--publish-stream", default=DEFAULT_STREAM, metavar="TEMPLATE",
                        help=f"the stream name template (default {DEFAULT_STREAM})")
    parser.add_argument("--publish-quotes", action="store_true", help="publish quotes too (default: account events)")
    parser.add_argument("--publish-linger", type=float, default=0.0, metavar="SECONDS",
                        help="while events keep coming, wait up to this long for more to share a round trip "
                             "to Redis: less CPU, more latency (default 0; e.g. 0.001)")
    return parser


def attach_publisher(feed: "Feed[Any]", url: str, *, stream: Optional[str] = None, quotes: bool = False,
                     linger: float = 0.0, out: Out = _stderr) -> "RedisPublisher":
    """Attach a :class:`RedisPublisher` for ``url`` to ``feed`` (call before ``feed.start()``).

    Raises ValueError for a bad URL (the message never shows the password) or ``linger``, ImportError
    (saying how to install it) without the ``redis`` extra. Says where it
    publishes through ``out``; problems (Redis unreachable, refused password, dropped
    events) reach the feed's ``on_error`` and log.
    """
    from ._common import DEFAULT_STREAM
    from .publisher import RedisPublisher

    publisher = RedisPublisher(url, stream or DEFAULT_STREAM, quotes=quotes, linger=linger, name=f"{feed.name}-bus")
    feed.add_publisher(publisher)
    out(f"-- publishing {'events and quotes' if quotes else 'account events'} to {publisher.url} "
        f"(streams {publisher.stream})")
    return publisher


if __name__ == "__main__":  # pragma: no cover
    sys.exit(tail_main())
