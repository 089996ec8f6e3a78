"""``brokerfeeds watch``: stream a real account to the terminal, one line per event.

    UPSTOX_ACCESS_TOKEN=... brokerfeeds watch --broker upstox
    brokerfeeds watch --broker ibkr --insecure --quotes 265598 --json | jq .

Credentials come only from the environment (a command-line flag would show in ``ps``):

=============  ==========================================================================
broker         variables
=============  ==========================================================================
ibkr           none: the Client Portal Gateway holds the session (log in to it first)
upstox         ``UPSTOX_ACCESS_TOKEN`` (the daily token)
firstock       ``FIRSTOCK_USER_ID`` and ``FIRSTOCK_JKEY``, or ``FIRSTOCK_USER_ID`` and the
               login variables ``FIRSTOCK_PASSWORD``, ``FIRSTOCK_TOTP``,
               ``FIRSTOCK_VENDOR_CODE``, ``FIRSTOCK_API_KEY`` (see ``FirstockFeed.login``)
clearstreet    ``CLEARSTREET_CLIENT_ID`` and ``CLEARSTREET_CLIENT_SECRET`` (or
               ``CLEARSTREET_TOKEN``), and ``CLEARSTREET_ACCOUNT`` (or ``--account``)
=============  ==========================================================================

A missing variable is a one-line error naming it (exit code 2). Output: one readable line
per event on stdout (aligned columns, money as the broker sent it, a line for every
connect, disconnect and reconnect with its reason) or, with ``--json``, one JSON object
per line (the events' JSON schema, :func:`brokerfeeds.events.to_json`). Warnings and
errors go to stderr, as log lines. Ctrl-C (or SIGTERM) stops cleanly with exit code 0; a
fatal error (credentials refused) is one line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, TextIO

from .bus import cli as bus_cli
from .display import Describer
from .errors import BrokerFeedsError
from .events import to_json
from .feed import Feed

__all__ = ["BROKERS", "QUOTE_BROKERS", "UsageError", "add_arguments", "build_feed", "run", "stop_on_signals"]

BROKERS = ("ibkr", "upstox", "firstock", "clearstreet")
#: Brokers whose feed streams quotes (``--quotes``).
QUOTE_BROKERS = ("ibkr", "firstock")
#: Every callback kind a watch prints.
KINDS = ("order", "trade", "position", "pnl", "holding", "balance", "quote", "notice", "connect",
         "disconnect", "gtt_order", "locate", "replay_complete")
_FIRSTOCK_LOGIN = ("FIRSTOCK_PASSWORD", "FIRSTOCK_TOTP", "FIRSTOCK_VENDOR_CODE", "FIRSTOCK_API_KEY")


class UsageError(Exception):
    """A missing environment variable or an option that does not apply: exit code 2."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``brokerfeeds watch``."""
    parser.add_argument("--broker", required=True, choices=BROKERS)
    parser.add_argument("--url", help="the WebSocket URL (default: the broker's production endpoint)")
    parser.add_argument("--rest-url", help="the REST base URL (default: the broker's production endpoint)")
    parser.add_argument("--auth-url", help="clearstreet: the OAuth2 token endpoint (default: Clear Street's)")
    parser.add_argument("--insecure", action="store_true",
                        help="do not verify TLS certificates (IBKR gateway's self-signed one)")
    parser.add_argument("--quotes", nargs="+", default=[], metavar="INSTRUMENT",
                        help="stream quotes too: ibkr conids (265598), firstock EXCH:TOKEN (NSE:26000)")
    parser.add_argument("--account", action="append", default=[],
                        help="only this account (repeat for several); clearstreet: the account(s) to "
                             "stream; ibkr: also its account summary")
    parser.add_argument("--poll", type=float, metavar="SECONDS",
                        help="poll REST for what the socket lacks (ibkr positions; P&L elsewhere)")
    parser.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long")
    parser.add_argument("--json", action="store_true", help="JSON Lines on stdout instead of readable lines")
    parser.add_argument("--quiet", action="store_true",
                        help="print no events (with --publish: only publish); errors still go to stderr")
    bus_cli.add_publish_arguments(parser)


def _env(env: Mapping[str, str], name: str) -> Optional[str]:
    value = env.get(name, "").strip()
    return value or None


def _need(env: Mapping[str, str], name: str, why: str) -> str:
    value = _env(env, name)
    if value is None:
        raise UsageError(f"{name} is not set ({why})")
    return value


def _accounts(args: argparse.Namespace) -> List[str]:
    accounts: List[str] = []
    for given in args.account:
        accounts.extend(a.strip() for a in given.split(",") if a.strip())
    return accounts


def build_feed(args: argparse.Namespace, env: Mapping[str, str]) -> Feed[Any]:
    """The feed ``args`` ask for, credentials from ``env``, subscriptions made (not started).

    Raises :class:`UsageError` for a missing variable or an option that does not apply,
    and :class:`~brokerfeeds.errors.BrokerFeedsError` when a login refuses (Firstock).
    """
    if args.quotes and args.broker not in QUOTE_BROKERS:
        raise UsageError(f"--quotes: the {args.broker} feed streams no quotes (only {', '.join(QUOTE_BROKERS)} do)")
    if args.auth_url and args.broker != "clearstreet":
        raise UsageError("--auth-url applies to clearstreet only")
    if args.poll is not None and args.poll <= 0:
        raise UsageError("--poll must be > 0 seconds")
    builder: Callable[[argparse.Namespace, Mapping[str, str], Dict[str, Any]], Feed[Any]] = _BUILDERS[args.broker]
    common: Dict[str, Any] = {"verify": not args.insecure}
    if args.url:
        common["url"] = args.url
    if args.rest_url:
        common["rest_url"] = args.rest_url
    return builder(args, env, common)


def _ibkr(args: argparse.Namespace, env: Mapping[str, str], common: Dict[str, Any]) -> Feed[Any]:
    from .brokers.ibkr import IbkrFeed

    accounts = _accounts(args)
    feed = IbkrFeed(account=accounts[0] if len(accounts) == 1 else None, poll_positions=args.poll, **common)
    feed.subscribe_orders()
    feed.subscribe_trades(realtime_only=True)  # fills as they happen (not the last 7 days)
    feed.subscribe_pnl()
    for account in accounts:
        feed.subscribe_account_summary(account)
    for conid in args.quotes:
        feed.subscribe_quotes(conid)
    return feed


def _upstox(args: argparse.Namespace, env: Mapping[str, str], common: Dict[str, Any]) -> Feed[Any]:
    from .brokers.upstox import UpstoxFeed

    token = _need(env, "UPSTOX_ACCESS_TOKEN", "the daily access token from Upstox's login flow")
    feed = UpstoxFeed(access_token=token, poll_pnl=args.poll, **common)
    feed.subscribe_orders()
    feed.subscribe_positions()
    feed.subscribe_holdings()
    feed.subscribe_gtt_orders()
    return feed


def _firstock(args: argparse.Namespace, env: Mapping[str, str], common: Dict[str, Any]) -> Feed[Any]:
    from .brokers.firstock import DEFAULT_REST_URL, FirstockFeed

    user_id = _need(env, "FIRSTOCK_USER_ID", "with FIRSTOCK_JKEY, or with the login variables "
                                             + ", ".join(_FIRSTOCK_LOGIN))
    jkey = _env(env, "FIRSTOCK_JKEY")
    if jkey is None:
        missing = [name for name in _FIRSTOCK_LOGIN if _env(env, name) is None]
        if len(missing) == len(_FIRSTOCK_LOGIN):
            raise UsageError(f"FIRSTOCK_JKEY is not set (the jKey from Firstock's login; or set all of "
                             f"{', '.join(_FIRSTOCK_LOGIN)} to log in)")
        if missing:
            raise UsageError(f"{missing[0]} is not set (set FIRSTOCK_JKEY, or all of {', '.join(_FIRSTOCK_LOGIN)} "
                             "to log in)")
        password, totp, vendor, api_key = (str(_env(env, name)) for name in _FIRSTOCK_LOGIN)
        jkey = FirstockFeed.login(user_id, password, totp, vendor, api_key,
                                  rest_url=common.get("rest_url", DEFAULT_REST_URL), verify=common["verify"])
    feed = FirstockFeed(user_id, jkey, poll_pnl=args.poll, **common)
    if args.quotes:
        feed.subscribe_quotes(*args.quotes)
    return feed  # orders and positions come without a subscription


def _clearstreet(args: argparse.Namespace, env: Mapping[str, str], common: Dict[str, Any]) -> Feed[Any]:
    from .brokers.clearstreet import AUTH_URL, ClearStreetFeed

    client_id, secret = _env(env, "CLEARSTREET_CLIENT_ID"), _env(env, "CLEARSTREET_CLIENT_SECRET")
    token = _env(env, "CLEARSTREET_TOKEN")
    if not (client_id and secret) and not token:
        name = "CLEARSTREET_CLIENT_SECRET" if client_id else "CLEARSTREET_CLIENT_ID"
        raise UsageError(f"{name} is not set (Clear Street needs CLEARSTREET_CLIENT_ID and "
                         "CLEARSTREET_CLIENT_SECRET, or CLEARSTREET_TOKEN)")
    accounts = _accounts(args) or [a.strip() for a in (_env(env, "CLEARSTREET_ACCOUNT") or "").split(",")
                                   if a.strip()]
    if not accounts:
        raise UsageError("CLEARSTREET_ACCOUNT is not set (the account id(s) to stream, comma-separated; "
                         "or pass --account)")
    if client_id and secret:  # refreshable: preferred over a fixed token
        provider = ClearStreetFeed.client_credentials(client_id, secret, auth_url=args.auth_url or AUTH_URL,
                                                      verify=common["verify"])
        feed = ClearStreetFeed(token_provider=provider, poll_pnl=args.poll, **common)
    else:
        feed = ClearStreetFeed(access_token=token, poll_pnl=args.poll, **common)
    for account in accounts:
        feed.subscribe_activity(account)
    return feed


_BUILDERS: Dict[str, Callable[[argparse.Namespace, Mapping[str, str], Dict[str, Any]], Feed[Any]]] = {
    "ibkr": _ibkr, "upstox": _upstox, "firstock": _firstock, "clearstreet": _clearstreet,
}


class Printer:
    """Writes each event as one line (readable, with the local time first, or JSON) and
    notices a closed pipe (``| head``): then ``closed`` is set and nothing more is written."""

    def __init__(self, out: TextIO, as_json: bool, accounts: Sequence[str] = ()) -> None:
        self.out = out
        self.closed = threading.Event()
        self._accounts = frozenset(accounts)
        self._describe = Describer()
        self._format: Callable[[Any], str] = to_json if as_json else self._readable

    def attach(self, feed: Feed[Any]) -> None:
        """Print every event ``feed`` delivers."""
        for kind in KINDS:
            feed.on(kind, self)

    def __call__(self, item: Any) -> None:
        if self.closed.is_set():
            return
        account = getattr(item, "account", None)
        if self._accounts and account is not None and account not in self._accounts:
            return
        try:
            self.out.write(self._format(item) + "\n")
            self.out.flush()
        except (BrokenPipeError, ValueError):  # the reader went away (or stdout was closed)
            self.closed.set()

    def _readable(self, item: Any) -> str:
        stamp = _dt.datetime.now().strftime("%H:%M:%S.%f")[:-3]
        return f"{stamp} {self._describe(item)}"


def run(args: argparse.Namespace, env: Optional[Mapping[str, str]] = None, out: TextIO = sys.stdout,
        err: TextIO = sys.stderr) -> int:
    """Run ``brokerfeeds watch`` with parsed ``args``; returns the exit code."""
    stop = threading.Event()
    try:
        try:
            printer = Printer(out, args.json, _accounts(args))
            feed = build_feed(args, os.environ if env is None else env)
        except UsageError as exc:
            err.write(f"brokerfeeds watch: {exc}\n")
            return 2
        except BrokerFeedsError as exc:  # a refused login
            err.write(f"brokerfeeds watch: {type(exc).__name__}: {exc}\n")
            return 1
        if args.publish:
            try:
                bus_cli.attach_publisher(feed, args.publish, stream=args.publish_stream, quotes=args.publish_quotes,
                                         linger=args.publish_linger, out=lambda line: print(line, file=err))
            except (ValueError, ImportError) as exc:
                err.write(f"brokerfeeds watch: {exc}\n")
                return 2
        if not args.quiet:
            printer.attach(feed)
        restore = stop_on_signals(stop)
        try:
            feed.start()
            deadline = None if args.duration is None else time.monotonic() + args.duration
            while not stop.wait(0.1):
                if feed.state == "stopped" or printer.closed.is_set():
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    break
        finally:
            feed.stop()
            restore()
        if printer.closed.is_set():
            _silence(out)
        # A fatal error was logged (one line on stderr) when it stopped the feed.
        return 1 if feed.error is not None else 0
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were in place
        return 0


def stop_on_signals(stop: threading.Event) -> Callable[[], None]:
    """SIGINT / SIGTERM set ``stop`` (no KeyboardInterrupt mid-call); returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: Any) -> None:
        stop.set()

    for sig in previous:
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


def _silence(out: TextIO) -> None:
    """After a broken pipe: point the stream at /dev/null so the interpreter's last flush
    does not complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
