"""Clear Street Studio activity feed: :class:`ClearStreetFeed` and the OAuth2
:class:`ClientCredentials` it fetches its tokens with.

How frames become events (acks, replays, sequence marks, gaps, the server's clock) is the
adapter's, :class:`~brokerfeeds.brokers.clearstreet.protocol.ClearStreetProtocol`: see
:mod:`brokerfeeds.brokers.clearstreet.protocol` for the protocol notes.

The feed persists only marks the server can have confirmed (see
:func:`brokerfeeds.marks.confirmed_marks`: a recent New York trading day by the wall
clock, no implausible jump) and ignores stored marks dated after today.
"""

from __future__ import annotations

import time
from typing import (
    Any,
    Callable,
    Dict,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    Union,
)

from ...auth import ClientCredentials as OAuth2ClientCredentials
from ...auth import TokenSource
from ...errors import AuthenticationError, BrokerFeedsError, ProtocolError
from ...events import LocateInventory, ReplayComplete
from ...feed import Feed, PeriodicJob
from ...marks import Mark, MarkStore, confirmed_marks, new_york_day, plausible_marks
from ...protocol import Subscription, first
from ...transport import ConnectTarget
from ...values import to_text
from .protocol import _ACTIVITY, BROKER, ClearStreetProtocol

__all__ = ["AUDIENCE", "AUTH_URL", "ClearStreetFeed", "ClientCredentials"]

F = TypeVar("F", bound=Callable[..., Any])


# ================================================================= credentials
AUTH_URL = "https://auth.clearstreet.io/oauth/token"
AUDIENCE = "https://api.clearstreet.io"


class ClientCredentials(OAuth2ClientCredentials):
    """Clear Street's OAuth2 client credentials: :class:`brokerfeeds.auth.ClientCredentials`
    with Clear Street's token endpoint and audience as defaults."""

    def __init__(self, client_id: str, client_secret: str, auth_url: str = AUTH_URL,
                 audience: Optional[str] = AUDIENCE, **kwargs: Any) -> None:
        super().__init__(client_id, client_secret, auth_url, audience, **kwargs)


# ================================================================= the feed
class ClearStreetFeed(Feed[ClearStreetProtocol]):
    """Clear Street Studio activity feed: orders, fills, positions, buying power, locates.

    Pass exactly one of ``access_token`` (a fixed bearer token) or ``token_provider`` (a
    zero-argument callable returning the current token, asked before every connection;
    :meth:`client_credentials` builds one that fetches and caches OAuth2 tokens).

    Every event is delivered exactly once and in sequence order per account, across
    reconnects (see the adapter's docs, :mod:`brokerfeeds.brokers.clearstreet.protocol`);
    events from a replay carry ``replayed=True`` and ``on_replay_complete`` fires per
    account when the replay is over (``timed_out=True`` if ``replay-complete`` never came
    and the replay stalled for ``replay_timeout`` s).

    Sequence marks: ``feed.marks`` exports them, ``marks=`` / :meth:`restore_marks`
    adopts saved ones, and ``sequence_store=`` (a :class:`MarkStore`, e.g.
    :class:`JsonFileMarkStore`) loads them at start and saves them as they change, so a
    restarted process does not re-deliver the trading day. A mark moves when the adapter
    accepts a frame, just before its callbacks run; to persist strictly after your own
    processing, save ``event.raw["sequence"]`` (every event keeps its whole frame in ``raw``)
    and pass those marks back with ``marks=`` -- where sequences are per account
    (``feed.sequence_scope == "account"``). Where they are per connection a frame's
    ``sequence`` is no position in the account's day: persist ``feed.marks`` instead.

    ``poll_pnl`` (seconds) polls REST ``/accounts/{id}/pnl-summary`` for ``on_pnl`` (the
    channel has no P&L). The socket has no client heartbeat: WebSocket pings every
    ``ping_interval`` s plus any server frame keep ``stale_after`` from firing.
    """

    broker = BROKER
    EVENT_KINDS = {**Feed.EVENT_KINDS, LocateInventory: "locate", ReplayComplete: "replay_complete"}

    def __init__(
        self,
        access_token: Optional[str] = None,
        token_provider: Optional[Callable[[], str]] = None,
        url: str = "wss://api.clearstreet.io/studio/v2/ws",
        rest_url: str = "https://api.clearstreet.io/studio/v2",
        *,
        verify: Union[bool, str] = True,
        stale_after: float = 60.0,
        ping_interval: Optional[float] = 20.0,
        replay_timeout: float = 30.0,
        poll_pnl: Optional[float] = None,
        marks: Optional[Mapping[str, Any]] = None,
        sequence_store: Optional[MarkStore] = None,
        store_interval: float = 5.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(url=url, rest_url=rest_url, verify=verify, stale_after=stale_after,
                         ping_interval=ping_interval, **kwargs)
        if replay_timeout <= 0:
            raise ValueError(f"replay_timeout must be > 0, got {replay_timeout!r}")
        self._tokens = TokenSource(access_token, token_provider, self._redactor)
        self._provider = token_provider
        secrets = getattr(token_provider, "secrets", None)
        if secrets:
            self._register_secret(*secrets)
        self.replay_timeout = replay_timeout
        self.poll_pnl = poll_pnl
        self.sequence_store = sequence_store
        self.store_interval = store_interval
        self._marks: Dict[str, Mark] = {}
        self._saved_marks: Optional[Dict[str, Mark]] = None
        self._refused_marks: Dict[str, str] = {}
        if marks:
            self.restore_marks(marks)

    @classmethod
    def client_credentials(
        cls,
        client_id: str,
        client_secret: str,
        auth_url: str = AUTH_URL,
        audience: str = AUDIENCE,
        **kwargs: Any,
    ) -> ClientCredentials:
        """A token provider for ``token_provider=``: OAuth2 client credentials, cached until
        shortly before ``expires_in`` (see :class:`ClientCredentials` for the options)."""
        return ClientCredentials(client_id, client_secret, auth_url, audience, **kwargs)

    # ------------------------------------------------------------- callbacks
    def on_replay_complete(self, fn: F) -> F:
        """Call ``fn(done: ReplayComplete)`` when an account's replay is over (``done.account``)."""
        return self.on("replay_complete", fn)

    def on_locate(self, fn: F) -> F:
        """Call ``fn(inventory: LocateInventory)`` for every ``locate-inventory-update``."""
        return self.on("locate", fn)

    # ------------------------------------------------------------- subscriptions
    def subscribe_activity(self, account_id: str) -> None:
        """Stream ``account_id``'s activity (call once per account; any number of accounts)."""
        account_id = str(account_id).strip()
        if not account_id:
            raise ValueError("account_id is required")
        self._subscribe(Subscription(_ACTIVITY, account_id))

    def unsubscribe_activity(self, account_id: str) -> bool:
        """Stop ``account_id``. The protocol has no unsubscribe: the connection is recycled."""
        return self._unsubscribe(_ACTIVITY, str(account_id).strip())

    @property
    def sequence_scope(self) -> Optional[str]:
        """What the server's ``sequence`` numbers, as learned in this run: ``"account"``,
        ``"connection"``, or None (not told yet: a single account reads the same either
        way). See the adapter's docs, :mod:`brokerfeeds.brokers.clearstreet.protocol`."""
        return self._query(lambda protocol: protocol.sequence_scope, None)

    @property
    def accounts(self) -> Tuple[str, ...]:
        """The accounts subscribed (what is re-sent after every reconnect)."""
        return tuple(s.key for s in self.subscriptions if s.kind == _ACTIVITY)

    # ------------------------------------------------------------- marks
    @property
    def marks(self) -> Dict[str, Mark]:
        """The per-account sequence marks: ``{account: {"sequence": n, "trading_day": day}}``."""
        live = self._query(lambda protocol: protocol.export_marks(), None)
        return live if live is not None else {k: dict(v) for k, v in self._marks.items()}

    def restore_marks(self, marks: Mapping[str, Any]) -> None:
        """Adopt marks saved from an earlier run (before :meth:`start`, or while running)."""
        scratch = ClearStreetProtocol(marks=self._marks)
        scratch.restore_marks(marks)
        self._marks = scratch.export_marks()
        self._apply(lambda protocol: protocol.restore_marks(marks))

    def stop(self, timeout: float = 5.0) -> bool:
        ended = super().stop(timeout)
        self._save_marks()
        return ended

    # ------------------------------------------------------------- engine hooks
    def _abort_rest_calls(self) -> None:
        super()._abort_rest_calls()
        if isinstance(self._provider, OAuth2ClientCredentials):
            self._provider.abort()  # a token request in flight (a user's own provider cannot be cut)

    def _new_protocol(self) -> ClearStreetProtocol:
        previous = self._query(lambda protocol: protocol.export_marks(), None)
        if previous is not None:
            self._marks = previous  # a restarted feed keeps its marks
        if self.sequence_store is not None:
            stored, dropped = plausible_marks(self.sequence_store.load() or {}, today=new_york_day(time.time()))
            for account, why in dropped.items():
                self._log.warning("ignoring the stored sequence mark of account %s: %s", account, why)
            scratch = ClearStreetProtocol(marks=self._marks)
            scratch.restore_marks(stored)
            self._marks = scratch.export_marks()
        self._saved_marks = {k: dict(v) for k, v in self._marks.items()}
        protocol = ClearStreetProtocol(self.replay_timeout, marks=self._marks)
        protocol.sequence_scope = self._query(lambda old: old.sequence_scope, None)  # what the server showed
        return protocol

    def _credentials_refused(self) -> None:
        """The server refused the last token: a cached one must not be reused."""
        invalidate = getattr(self._provider, "invalidate", None)
        if callable(invalidate):
            invalidate()

    def _connect_target(self) -> ConnectTarget:
        token = self._tokens.current()  # a failing provider: ConnectionFailed, retried with backoff
        self._register_secret(token)
        self._apply(lambda protocol: protocol.use_token(token))
        return ConnectTarget(self.url)

    def _retry_auth(self, error: BaseException) -> bool:
        self._credentials_refused()
        try:
            return self._tokens.refresh()
        except Exception:  # noqa: BLE001
            return False

    def _periodic_jobs(self) -> Sequence[PeriodicJob]:
        jobs: List[PeriodicJob] = []
        if self.poll_pnl:
            jobs.append(PeriodicJob("pnl poll", self.poll_pnl, self._poll_pnl))
        if self.sequence_store is not None:
            jobs.append(PeriodicJob("mark store", self.store_interval, self._save_marks, when_ready=False))
        return jobs

    def _after_ready(self, reconnect: bool) -> None:
        if self.poll_pnl:
            self._poll_pnl()

    def _poll_pnl(self) -> None:
        for account in self.accounts:
            body = self._rest_with_token("GET", f"accounts/{account}/pnl-summary")
            self._apply(lambda protocol: protocol.pnl_update(account, body))

    def _rest_with_token(self, method: str, path: str) -> Any:
        """A REST call with the bearer token; one retry with a fresh token after a 401/403."""
        for attempt in range(2):
            token = self._tokens.current()
            try:
                return self.rest.request(method, path, headers={"Authorization": f"Bearer {token}"})
            except AuthenticationError:
                if attempt or not self._retry_auth(AuthenticationError("REST refused the token")):
                    raise
        return None  # pragma: no cover

    def _save_marks(self) -> None:
        """Persist the marks the server can have confirmed (:func:`~brokerfeeds.marks.confirmed_marks`,
        by the wall clock, read here and never in the adapter); a refused one keeps its saved mark."""
        store = self.sequence_store
        if store is None:
            return
        saved = self._saved_marks or {}
        accepted, refused = confirmed_marks(self.marks, saved, today=new_york_day(time.time()))
        marks: Dict[str, Mark] = dict(accepted)
        for account, why in refused.items():
            if account in saved:
                marks[account] = saved[account]
            if self._refused_marks.get(account) != why:  # once per reason, not every store_interval
                self._report(ProtocolError(f"not persisting the sequence mark of account {account}: {why}"))
        self._refused_marks = refused
        if marks == self._saved_marks:
            return
        try:
            store.save(marks)
        except Exception as exc:  # noqa: BLE001 - a failing store must not take the feed down
            self._report(BrokerFeedsError(f"saving sequence marks failed: {exc!r}"))
            return
        self._saved_marks = marks

    def _rest_error_text(self, body: Any) -> Optional[str]:
        if isinstance(body, dict):  # RFC 9457 problem details
            return to_text(first(body.get("detail"), body.get("title"), body.get("message"), body.get("error")))
        return None
