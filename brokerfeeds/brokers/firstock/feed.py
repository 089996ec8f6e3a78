"""Firstock (India) WebSocket: the feed, :class:`FirstockFeed` (login, the socket's URL,
REST, the engine's hooks). The adapter and the protocol notes are in
:mod:`brokerfeeds.brokers.firstock.protocol`.

Feed notes (see the project's docs/firstock.md for sources):

* Keep-alive: the server pings and ends the session when a pong is later than 10 s.
  Pongs are sent by the reader thread inside ``recv`` and user callbacks run on another
  thread, so a slow callback cannot miss the deadline. We also ping every
  ``ping_interval`` s; ``stale_after`` s without any frame (pongs included) reconnects.
* After every (re)connect, REST ``orderBook`` and ``positionBook`` reconcile state (only
  what changed produces events); fills missed while disconnected become :class:`Trade`
  events. ``poll_pnl=seconds`` polls ``positionBook`` for account P&L.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from typing import Any, Iterable, List, Optional, Sequence, Tuple, Union

from ...errors import AuthenticationError, ConnectionFailed, ProtocolError, RateLimited
from ...feed import Feed, PeriodicJob
from ...protocol import Subscription, first
from ...redact import Redactor
from ...rest import RestClient
from ...transport import ConnectTarget
from ...values import to_text
from .protocol import BROKER, QUOTES, FirstockProtocol

__all__ = [
    "FirstockFeed",
    "DEFAULT_URL",
    "DEFAULT_REST_URL",
    "split_instruments",
]

DEFAULT_URL = "wss://socket.firstock.in/V2/ws"
DEFAULT_REST_URL = "https://api.firstock.in/V1"
_INSTRUMENT = re.compile(r"^[A-Za-z]+:[^\s:|]+$")


# ====================================================================== helpers
def split_instruments(*instruments: Union[str, Iterable[str]]) -> List[str]:
    """``EXCH:TOKEN`` strings from arguments that may be lists or pre-joined with ``|``.

    Exchanges are upper-cased and duplicates dropped (first order kept). Raises
    :class:`ValueError` for anything that is not ``EXCH:TOKEN``.
    """
    out: List[str] = []
    for item in instruments:
        if not isinstance(item, str):
            out.extend(split_instruments(*item))
            continue
        for part in item.split("|"):
            part = part.strip()
            if not part:
                continue
            if not _INSTRUMENT.match(part):
                raise ValueError(f"instrument must look like EXCH:TOKEN (e.g. NSE:26000), got {part!r}")
            exchange, token = part.split(":")
            out.append(f"{exchange.upper()}:{token}")
    return list(dict.fromkeys(out))


# ====================================================================== the feed
class FirstockFeed(Feed[FirstockProtocol]):
    """Firstock's WebSocket: orders, positions and quotes, plus REST reconciliation.

    ``user_id`` and ``jkey`` (the ``susertoken`` from :meth:`login`) are passed explicitly;
    no file is read or written. ``url`` defaults to the V2 socket; the deprecated V1
    (``wss://socket.firstock.in/ws``) works too. ``rest_url=None`` turns REST off (no
    reconciliation, no P&L polling). ``poll_pnl`` (seconds) polls ``positionBook`` for
    :class:`PnL`. The engine knobs (``reconnect``, ``dispatch``, ``logger``, ...) are
    those of :class:`~brokerfeeds.feed.Feed`. A server that never answers the
    authentication is dropped after ``auth_timeout`` s and tried again with backoff
    (``start()`` never blocks; ``wait_connected(timeout)`` returns False meanwhile).

        feed = FirstockFeed("AB1234", FirstockFeed.login("AB1234", password, totp, "AB1234_API", api_key))
        feed.on_order(print)
        feed.subscribe_quotes("NSE:26000", "BSE:1")
        with feed:
            ...
    """

    broker = BROKER

    def __init__(
        self,
        user_id: str,
        jkey: str,
        url: str = DEFAULT_URL,
        rest_url: Optional[str] = DEFAULT_REST_URL,
        *,
        source: str = "developer-api",
        verify: Union[bool, str] = True,
        heartbeat_interval: float = 30.0,
        stale_after: float = 45.0,
        ping_interval: Optional[float] = 20.0,
        connect_timeout: float = 10.0,
        auth_timeout: float = 10.0,
        poll_pnl: Optional[float] = None,
        reconcile: bool = True,
        order_refresh_interval: float = 1.0,
        **kwargs: Any,
    ) -> None:
        if not isinstance(user_id, str) or not user_id.strip():
            raise ValueError("user_id must be a non-empty str")
        if not isinstance(jkey, str) or not jkey.strip():
            raise ValueError("jkey must be a non-empty str (the susertoken from FirstockFeed.login)")
        if poll_pnl is not None and poll_pnl <= 0:
            raise ValueError(f"poll_pnl must be > 0 or None, got {poll_pnl!r}")
        super().__init__(url=url, rest_url=rest_url, verify=verify, heartbeat_interval=heartbeat_interval,
                         stale_after=stale_after, ping_interval=ping_interval, connect_timeout=connect_timeout,
                         auth_timeout=auth_timeout, **kwargs)
        self._register_secret(jkey)
        self.user_id = user_id.strip()
        self.source = source
        self.poll_pnl = poll_pnl
        self.reconcile = reconcile
        self.order_refresh_interval = order_refresh_interval
        self.refresh_interval = order_refresh_interval
        self._jkey = jkey.strip()

    # ------------------------------------------------------------- subscriptions
    def subscribe_quotes(self, *instruments: Union[str, Iterable[str]]) -> List[str]:
        """Market data for ``EXCH:TOKEN`` instruments (``"NSE:26000"``, ``"BSE:1|NSE:2885"``, lists)
        → ``on_quote``. Sent as one frame; re-sent after every reconnect. Returns the instruments added."""
        subs = [Subscription(QUOTES, key) for key in split_instruments(*instruments)]
        return [s.key for s in self._subscribe_many(subs)]

    def unsubscribe_quotes(self, *instruments: Union[str, Iterable[str]]) -> List[str]:
        """Stop market data for these instruments (one frame). Returns the instruments removed."""
        idents = [(QUOTES, key) for key in split_instruments(*instruments)]
        return [s.key for s in self._unsubscribe_many(idents)]

    @property
    def quote_instruments(self) -> Tuple[str, ...]:
        """The instruments whose quotes are kept subscribed."""
        return tuple(s.key for s in self.subscriptions if s.kind == QUOTES)

    # ------------------------------------------------------------- login helper
    @staticmethod
    def login(
        user_id: str,
        password: str,
        totp: str,
        vendor_code: str,
        api_key: str,
        rest_url: str = DEFAULT_REST_URL,
        *,
        verify: Union[bool, str] = True,
        timeout: float = 10.0,
    ) -> str:
        """Log in with REST ``/login`` and return the jKey (``susertoken``).

        ``password`` is the plain password: it is sent as its SHA-256 hex digest, as the
        API requires. Raises :class:`AuthenticationError` when Firstock refuses (the
        broker's reason included; no credential ever appears in a message),
        :class:`RateLimited` for HTTP 429, :class:`ConnectionFailed` for network errors.
        Nothing is written to disk.
        """
        hashed = hashlib.sha256(password.encode("utf-8")).hexdigest()
        redactor = Redactor()
        redactor.add(password, hashed, totp, api_key)
        body = {"userId": user_id, "password": hashed, "TOTP": totp, "vendorCode": vendor_code, "apiKey": api_key}
        rest = RestClient(rest_url, verify=verify, timeout=timeout, redactor=redactor, error_text=_rest_reason)
        try:
            reply = rest.post("login", json=body)
        except ConnectionFailed as exc:
            if isinstance(exc, RateLimited) or exc.status is None or exc.status >= 500:
                raise
            raise AuthenticationError(f"Firstock login refused: {exc}") from None  # 4xx: bad credentials
        except AuthenticationError as exc:
            raise AuthenticationError(f"Firstock login refused: {exc}") from None
        finally:
            rest.close()
        data = reply.get("data") if isinstance(reply, dict) else None
        token = data.get("susertoken") if isinstance(data, dict) else None
        if not isinstance(reply, dict) or reply.get("status") != "success" or not token:
            reason = _rest_reason(reply) or "no jKey in the reply"
            raise AuthenticationError(redactor.redact(f"Firstock login refused: {reason}"))
        return str(token)

    # ------------------------------------------------------------- engine hooks
    def _new_protocol(self) -> FirstockProtocol:
        return FirstockProtocol(self.user_id, can_refresh=self.rest_url is not None and self.reconcile)

    def _connect_target(self) -> ConnectTarget:
        query = urllib.parse.urlencode({"userId": self.user_id, "jKey": self._jkey, "source": self.source})
        return ConnectTarget(self.url + ("&" if "?" in self.url else "?") + query)

    def _rest_call(self, endpoint: str) -> List[Any]:
        """POST ``endpoint`` with the credentials; the ``data`` rows (empty for "no data")."""
        reply = self.rest.post(endpoint, json={"userId": self.user_id, "jKey": self._jkey})
        if not isinstance(reply, dict):
            raise ProtocolError(f"{endpoint} returned no JSON object")
        if reply.get("status") == "success":
            data = reply.get("data")
            return data if isinstance(data, list) else []
        name = str(reply.get("name") or "")
        reason = _rest_reason(reply) or "failed"
        if "NO_DATA" in name.upper() or "no data" in reason.lower():
            return []
        if "JKEY" in name.upper() or str(reply.get("code")) == "401":
            raise AuthenticationError(f"{endpoint}: {reason}")
        raise ConnectionFailed(f"{endpoint} failed: {reason}")

    def _after_ready(self, reconnect: bool) -> None:
        """Reconcile orders and positions from REST (only changes produce events)."""
        if not self.reconcile:
            return
        orders = self._rest_call("orderBook")
        if reconnect:
            self._log.info("reconciling %d order(s) from REST", len(orders))
        self._apply(lambda protocol: protocol.merge_orders(orders, rest=True, seed=not reconnect))
        positions = self._rest_call("positionBook")
        self._apply(lambda protocol: protocol.positions_from(positions, self.user_id))
        if self.poll_pnl:
            self._apply(lambda protocol: protocol.pnl_from_rest(positions))

    def _poll_pnl(self) -> None:
        rows = self._rest_call("positionBook")
        self._apply(lambda protocol: protocol.pnl_from_rest(rows))

    def _refresh(self, what: str) -> None:
        """The adapter asked for the order book (an order's fills were not in its frame)."""
        if what == "orders" and self.reconcile:
            orders = self._rest_call("orderBook")
            self._apply(lambda protocol: protocol.merge_orders(orders, rest=True))

    def _periodic_jobs(self) -> Sequence[PeriodicJob]:
        if self.poll_pnl:
            return [PeriodicJob("pnl poll", self.poll_pnl, self._poll_pnl)]
        return []

    def _rest_error_text(self, body: Any) -> Optional[str]:
        return _rest_reason(body)


def _rest_reason(body: Any) -> Optional[str]:
    """Firstock's explanation in a REST reply: ``name: error.message`` (or ``message``)."""
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    message = to_text(first(error.get("message") if isinstance(error, dict) else error, body.get("message")))
    name = to_text(body.get("name"))
    if name and message:
        return f"{name}: {message}"
    return name or message
