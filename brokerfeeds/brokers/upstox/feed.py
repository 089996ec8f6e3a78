"""Upstox portfolio stream feed: the feed, :class:`UpstoxFeed` (authorizing every connect,
REST reconciliation and P&L polling, the daily token expiry, the engine's hooks). The adapter
and the protocol notes are in :mod:`brokerfeeds.brokers.upstox.protocol`.

Feed notes (see the project's docs/upstox.md for sources):

* Connect: ``GET {rest_url}/v2/feed/portfolio-stream-feed/authorize?update_types=...``
  with ``Authorization: Bearer <access_token>`` returns a **single-use**
  ``authorized_redirect_uri`` (``wss://.../order-updates/feed?requestId=..&code=..``).
  Every connect (first and each reconnect) authorizes again; a URI is never reused.
* No snapshot on connect and no replay: after every (re)connect the feed reconciles
  from REST (order book, positions, holdings, GTT orders) and emits only what changed.
* The access token dies at 03:30 IST every day. With a ``token_provider`` the feed
  re-authorizes with a fresh token at that time.
"""

from __future__ import annotations

import datetime as _dt
import threading
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar, Union
from urllib.parse import parse_qs, urlsplit

from ...auth import TokenProvider, TokenSource
from ...errors import BrokerFeedsError, ConnectionFailed
from ...events import GttOrder
from ...feed import Feed, PeriodicJob
from ...protocol import Subscription, first
from ...transport import ConnectTarget
from ...values import to_text
from .protocol import BROKER, IST, UPDATE_TYPES, UpstoxProtocol

__all__ = [
    "UpstoxFeed",
    "next_token_expiry",
]

F = TypeVar("F", bound=Callable[..., Any])

AUTHORIZE_PATH = "v2/feed/portfolio-stream-feed/authorize"
ORDERS_PATH = "v2/order/retrieve-all"
POSITIONS_PATH = "v2/portfolio/short-term-positions"
HOLDINGS_PATH = "v2/portfolio/long-term-holdings"
GTT_PATH = "v3/order/gtt"
PROFILE_PATH = "v2/user/profile"


# ================================================================ helpers
def next_token_expiry(after: _dt.datetime) -> _dt.datetime:
    """The first 03:30 IST strictly after ``after`` (when an Upstox access token dies)."""
    local = after.astimezone(IST)
    expiry = local.replace(hour=3, minute=30, second=0, microsecond=0)
    if expiry <= local:
        expiry += _dt.timedelta(days=1)
    return expiry


def _rows(reply: Any) -> List[Dict[str, Any]]:
    """The list of row dicts inside a REST ``{"status": "success", "data": [...]}`` reply."""
    data = reply.get("data") if isinstance(reply, dict) else reply
    if isinstance(data, dict):  # some endpoints wrap a single object
        data = [data]
    return [row for row in data if isinstance(row, dict)] if isinstance(data, list) else []


# ================================================================ the feed
class UpstoxFeed(Feed[UpstoxProtocol]):
    """Upstox portfolio stream feed: orders, fills, positions, holdings, GTT orders.

    Pass exactly one of ``access_token`` (the daily token) or ``token_provider`` (a
    zero-argument callable returning the current token: called before every connect,
    once more after a rejection, and at the daily 03:30 IST expiry, when the feed
    re-authorizes with the fresh token). A rejected token with no new one from the
    provider stops the feed with :class:`~brokerfeeds.errors.AuthenticationError`.

    ``rest_url`` is the API base (``https://api.upstox.com``); the socket URL is the
    one-time URI the authorize endpoint returns, so ``url`` is informational only.
    ``poll_pnl`` (seconds) polls REST positions for :class:`PnL` totals and per-position
    P&L (the socket carries no P&L). Liveness: we ping every ``ping_interval`` seconds
    and the server pings us; no frame at all (data, ping or pong) for ``stale_after``
    seconds means the connection is dead. Callbacks: ``on_order``, ``on_trade``
    (derived fills), ``on_position``, ``on_holding``, ``on_pnl``, ``on_gtt_order``,
    and the engine's ``on_connect`` / ``on_disconnect`` / ``on_error`` / ``on_message``.
    """

    broker = BROKER
    EVENT_KINDS = {**Feed.EVENT_KINDS, GttOrder: "gtt_order"}
    #: How often (seconds) the REST thread checks for the 03:30 IST token expiry.
    expiry_check_interval: float = 30.0

    def __init__(
        self,
        access_token: Optional[str] = None,
        token_provider: Optional[TokenProvider] = None,
        rest_url: str = "https://api.upstox.com",
        *,
        url: str = "wss://api.upstox.com/v2/feed/portfolio-stream-feed",
        verify: Union[bool, str] = True,
        ping_interval: Optional[float] = 20.0,
        stale_after: float = 45.0,
        poll_pnl: Optional[float] = None,
        **kwargs: Any,
    ) -> None:
        if poll_pnl is not None and poll_pnl <= 0:
            raise ValueError(f"poll_pnl must be > 0 or None, got {poll_pnl!r}")
        super().__init__(url=url, rest_url=rest_url, verify=verify, ping_interval=ping_interval,
                         stale_after=stale_after, **kwargs)
        self._tokens = TokenSource(access_token, token_provider, self._redactor)
        self._has_provider = token_provider is not None
        self.poll_pnl = poll_pnl
        self._token: Optional[str] = access_token
        self._authorizations = 0
        self._stage = "authorize"
        self._account: Optional[str] = None
        self._token_expires_at: Optional[_dt.datetime] = None
        self._account_lock = threading.Lock()

    # ------------------------------------------------------------- callbacks
    def on_gtt_order(self, fn: F) -> F:
        """Call ``fn(gtt: GttOrder)`` when a GTT order (or one of its rules) changes."""
        return self.on("gtt_order", fn)

    # ------------------------------------------------------------- subscriptions
    @property
    def update_types(self) -> Tuple[str, ...]:
        """The ``update_types`` the next connect authorizes (``("order",)`` if none chosen,
        the broker's default)."""
        kinds = {s.kind for s in self.subscriptions}
        chosen = tuple(t for kind, t in UPDATE_TYPES.items() if kind in kinds)
        return chosen or ("order",)

    def subscribe_orders(self) -> None:
        """Order updates → ``on_order`` (and derived fills → ``on_trade``)."""
        self._subscribe(Subscription("orders"))

    def unsubscribe_orders(self) -> None:
        """Stop order updates (re-authorizes and reconnects if connected)."""
        self._unsubscribe("orders")

    def subscribe_positions(self) -> None:
        """Position updates → ``on_position``."""
        self._subscribe(Subscription("positions"))

    def unsubscribe_positions(self) -> None:
        """Stop position updates (re-authorizes and reconnects if connected)."""
        self._unsubscribe("positions")

    def subscribe_holdings(self) -> None:
        """Holding updates → ``on_holding``."""
        self._subscribe(Subscription("holdings"))

    def unsubscribe_holdings(self) -> None:
        """Stop holding updates (re-authorizes and reconnects if connected)."""
        self._unsubscribe("holdings")

    def subscribe_gtt_orders(self) -> None:
        """GTT order updates → ``on_gtt_order``."""
        self._subscribe(Subscription("gtt_orders"))

    def unsubscribe_gtt_orders(self) -> None:
        """Stop GTT order updates (re-authorizes and reconnects if connected)."""
        self._unsubscribe("gtt_orders")

    # ------------------------------------------------------------- engine hooks
    def _new_protocol(self) -> UpstoxProtocol:
        return UpstoxProtocol(self._account)

    def _headers(self) -> Dict[str, str]:
        token = self._token or self._tokens.current()
        return {"Authorization": f"Bearer {token}", "Accept": "application/json"}

    def _connect_target(self) -> ConnectTarget:
        self._stage = "authorize"
        # A provider that raises or returns no token: ConnectionFailed (redacted), reported to
        # on_error and retried with backoff like any failed attempt (see TokenSource).
        self._token = self._tokens.current()
        types = self.update_types
        self._apply(lambda protocol: protocol.authorize(types))
        self._authorizations += 1
        reply = self.rest.get(AUTHORIZE_PATH, params={"update_types": ",".join(types)}, headers=self._headers())
        data = reply.get("data") if isinstance(reply, dict) else None
        uri = to_text(first(data.get("authorized_redirect_uri"), data.get("authorizedRedirectUri"))) \
            if isinstance(data, dict) else None
        if uri is None:
            text = self._rest_error_text(reply) if isinstance(reply, dict) else None
            raise ConnectionFailed(f"authorize returned no authorized_redirect_uri{': ' + text if text else ''}")
        codes = parse_qs(urlsplit(uri).query).get("code", [])
        self._register_secret(uri, *codes)
        self._token_expires_at = next_token_expiry(_dt.datetime.now(_dt.timezone.utc))
        self._stage = "handshake"
        return ConnectTarget(uri)

    def _retry_auth(self, error: BaseException) -> bool:
        """Ask the token provider once; a handshake rejection of a fresh URI also gets one
        more try with a newly authorized URI (the token itself was just accepted)."""
        refreshed = self._tokens.refresh()
        if refreshed:
            self._token = None
        return refreshed or self._stage == "handshake"

    def _rest_data(self, path: str) -> List[Dict[str, Any]]:
        reply = self.rest.get(path, headers=self._headers())
        if isinstance(reply, dict) and str(reply.get("status", "success")).lower() == "error":
            raise ConnectionFailed(f"GET {path} failed: {self._rest_error_text(reply) or 'error'}")
        return _rows(reply)

    def _learn_account(self) -> None:
        with self._account_lock:
            if self._account is not None:
                return
            known = self._query(lambda protocol: protocol.account, None)
            if known is None:
                profile = self._rest_data(PROFILE_PATH)
                known = to_text(profile[0].get("user_id")) if profile else None
            self._account = known
        if known is not None:
            account: str = known
            self._apply(lambda protocol: protocol.learn_account(account))

    def _after_ready(self, reconnect: bool) -> None:
        """Reconcile from REST; only what changed while away produces events."""
        kinds = {s.kind for s in self.subscriptions} or {"orders"}
        steps: List[Tuple[str, Callable[[], Any]]] = [("account lookup", self._learn_account)]
        if "orders" in kinds:
            steps.append(("order reconciliation", lambda: self._reconcile_orders(reconnect)))
        if "positions" in kinds or self.poll_pnl:
            steps.append(("position reconciliation", self._poll_positions))
        if "holdings" in kinds:
            steps.append(("holding reconciliation", self._reconcile_holdings))
        if "gtt_orders" in kinds:
            steps.append(("GTT reconciliation", self._reconcile_gtt))
        for name, step in steps:
            if self._stop_event.is_set():
                break
            try:
                step()
            except BrokerFeedsError as exc:
                self._report(type(exc)(f"{name} failed: {exc}"))

    def _reconcile_orders(self, reconnect: bool) -> None:
        rows = self._rest_data(ORDERS_PATH)
        if reconnect:
            self._log.info("reconciling %d order(s) from REST", len(rows))
        self._apply(lambda protocol: protocol.merge_orders(rows, derive_fills=reconnect))

    def _poll_positions(self) -> None:
        rows = self._rest_data(POSITIONS_PATH)
        with_pnl = bool(self.poll_pnl)
        self._apply(lambda protocol: protocol.positions_from(rows) + (protocol.pnl_from(rows) if with_pnl else []))

    def _reconcile_holdings(self) -> None:
        rows = self._rest_data(HOLDINGS_PATH)
        self._apply(lambda protocol: protocol.holdings_from(rows))

    def _reconcile_gtt(self) -> None:
        rows = self._rest_data(GTT_PATH)
        self._apply(lambda protocol: protocol.gtt_from(rows))

    def _check_token_expiry(self) -> None:
        expires = self._token_expires_at
        if expires is not None and _dt.datetime.now(_dt.timezone.utc) >= expires:
            self._token_expires_at = None
            self._log.info("access token expired (03:30 IST): re-authorizing with a fresh token")
            self._request_reconnect("daily access-token expiry (03:30 IST)", immediate=True)

    def _periodic_jobs(self) -> Sequence[PeriodicJob]:
        jobs: List[PeriodicJob] = []
        if self.poll_pnl:
            jobs.append(PeriodicJob("P&L poll", self.poll_pnl, self._poll_positions))
        if self._has_provider:
            jobs.append(PeriodicJob("token expiry check", self.expiry_check_interval, self._check_token_expiry))
        return jobs

    def _rest_error_text(self, body: Any) -> Optional[str]:
        """Upstox's error envelope (``error_code`` or the deprecated ``errorCode``)."""
        if not isinstance(body, dict):
            return None
        parts = []
        for error in body.get("errors") or ():
            if not isinstance(error, dict):
                continue
            code = to_text(first(error.get("error_code"), error.get("errorCode")))
            message = to_text(error.get("message"))
            parts.append(" ".join(p for p in (code, message) if p))
        text = "; ".join(p for p in parts if p)
        return text or to_text(first(body.get("message"), body.get("error")))

    def _extra_stats(self) -> Mapping[str, int]:
        return {"authorizations": self._authorizations}

    def __repr__(self) -> str:
        return f"UpstoxFeed(rest_url={self.rest_url!r}, update_types={','.join(self.update_types)!r}, " \
               f"state={self._state!r})"

