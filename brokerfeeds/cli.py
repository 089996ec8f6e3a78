"""The ``brokerfeeds`` command line (also ``python -m brokerfeeds``).

* ``brokerfeeds watch --broker NAME``: stream your own account, one line per event
  (``--json`` for JSON Lines); credentials from the environment (see :mod:`brokerfeeds.watch`).
* ``brokerfeeds simulate --broker NAME [--port N] [--activity]``: run a broker's simulator
  and print the commands that watch it (see :mod:`brokerfeeds.simulate`).
* ``brokerfeeds tail URL [--stream S] [--group G] [--json]``: print what ``watch --publish
  URL`` (or any :class:`~brokerfeeds.bus.RedisPublisher`) writes to Redis Streams.
* ``brokerfeeds demo [--broker NAME]``: a scripted session against a built-in simulator.

``-v`` shows the library's own log lines (``-vv``: debug); ``--log-all`` also shows
those of the libraries underneath (the simulators' ``websockets`` server, ``urllib3``).
Warnings and errors always show, on stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

from . import __version__

BROKERS = ("ibkr", "upstox", "firstock", "clearstreet")


class _Formatter(logging.Formatter):
    """``warning: [upstox] RateLimited: ...`` (the level in lower case, no clutter)."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def setup_logging(verbose: int = 0, log_all: bool = False) -> None:
    """Log to stderr: warnings from everyone; the library's INFO (``-v``) or DEBUG (``-vv``)
    lines; other libraries' lines only with ``log_all``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
                         if verbose or log_all else _Formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    level = logging.DEBUG if verbose > 1 else logging.INFO
    root.setLevel(level if log_all else logging.WARNING)
    logging.getLogger("brokerfeeds").setLevel(level if verbose or log_all else logging.WARNING)


def _needs_simulators(command: str) -> bool:
    """True if the simulators can be imported; otherwise says how to get them (one line)."""
    try:
        import brokerfeeds.testing  # noqa: F401
    except ImportError:
        print(f"brokerfeeds {command} needs the simulators, which need the 'websockets' package: "
              "pip install 'brokerfeeds[sim]'", file=sys.stderr)
        return False
    return True


def parser() -> argparse.ArgumentParser:
    """The argument parser of the ``brokerfeeds`` command."""
    from . import simulate, watch

    top = argparse.ArgumentParser(prog="brokerfeeds", description="brokerfeeds command line")
    top.add_argument("--version", action="version", version=f"brokerfeeds {__version__}")
    logs = argparse.ArgumentParser(add_help=False)
    logs.add_argument("-v", "--verbose", action="count", default=0,
                      help="show the library's log lines (-vv: debug too)")
    logs.add_argument("--log-all", action="store_true",
                      help="also show the log lines of the libraries underneath (websockets, urllib3)")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    watch.add_arguments(commands.add_parser(
        "watch", parents=[logs], help="stream your account's events as they happen",
        description="Stream your account's events, one line each. Credentials come from the environment: "
                    "UPSTOX_ACCESS_TOKEN; FIRSTOCK_USER_ID + FIRSTOCK_JKEY (or FIRSTOCK_PASSWORD, FIRSTOCK_TOTP, "
                    "FIRSTOCK_VENDOR_CODE, FIRSTOCK_API_KEY); CLEARSTREET_CLIENT_ID + CLEARSTREET_CLIENT_SECRET "
                    "(or CLEARSTREET_TOKEN) + CLEARSTREET_ACCOUNT; IBKR needs none (log in to the gateway)."))
    simulate.add_arguments(commands.add_parser(
        "simulate", parents=[logs], help="run a broker's simulator and print how to watch it"))
    from .bus import cli as bus_cli

    bus_cli.add_tail_arguments(commands.add_parser(
        "tail", parents=[logs], help="print the events a publisher writes to Redis Streams (watch --publish)"))
    demo = commands.add_parser("demo", parents=[logs], help="run a scripted session against a built-in simulator")
    demo.add_argument("--broker", default="ibkr", choices=BROKERS)
    demo.add_argument("--duration", type=float, default=10.0, help="roughly how long to run, in seconds")
    return top


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``brokerfeeds`` console script; returns the exit code."""
    args = parser().parse_args(argv)
    setup_logging(args.verbose, args.log_all)
    try:
        if args.command == "watch":
            from . import watch

            return watch.run(args)
        if args.command == "tail":
            from .bus import cli as bus_cli

            return bus_cli.run_tail(args)
        if not _needs_simulators(args.command):
            return 2
        if args.command == "simulate":
            from . import simulate

            return simulate.run(args)
        from .demo import run

        return run(args.broker, lambda line: print(line, flush=True), args.duration)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
