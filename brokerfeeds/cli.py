"""The ``brokerfeeds`` command line: ``brokerfeeds demo [--broker NAME]``."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

from . import __version__


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``brokerfeeds`` console script."""
    parser = argparse.ArgumentParser(prog="brokerfeeds", description="brokerfeeds command line")
    parser.add_argument("--version", action="version", version=f"brokerfeeds {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run a scripted session against a built-in simulator")
    demo.add_argument("--broker", default="ibkr", choices=("ibkr", "upstox", "firstock", "clearstreet"))
    demo.add_argument("--duration", type=float, default=10.0, help="roughly how long to run, in seconds")
    demo.add_argument("-v", "--verbose", action="store_true", help="also show the library's INFO log")
    args = parser.parse_args(argv)
    if args.command == "demo":
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(asctime)s %(levelname)s %(name)s %(message)s")
        try:
            from .demo import run
        except ImportError as exc:  # the simulator needs the "sim" extra
            print(f"brokerfeeds demo needs the simulator: pip install 'brokerfeeds[sim]' ({exc})", file=sys.stderr)
            return 2
        return run(args.broker, lambda line: print(line, flush=True), args.duration)
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
