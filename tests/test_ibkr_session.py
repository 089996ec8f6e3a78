"""IBKR sessions that survive the night: the nightly reset, competing logins, logging in late,
``ssoExpires`` — through the gateway and over OAuth 1.0a — against IbkrSimulator."""

from __future__ import annotations

import base64
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, List

import pytest

from brokerfeeds import IbkrFeed
from brokerfeeds.errors import AuthenticationError, ConnectionFailed
from brokerfeeds.events import Notice, OrderStatus
from brokerfeeds.testing import IbkrSimulator
from brokerfeeds.testing._server import SimulatorBase
from helpers import FAST_RECONNECT, Recorder, feed_threads, wait_until

pytest_plugins = ("ibkr_fixtures",)  # the `sim` and `make_feed` fixtures

ROOT = Path(__file__).resolve().parent.parent


def session_errors(rec: Recorder) -> List[ConnectionFailed]:
    return [e for e in rec.of("error") if isinstance(e, ConnectionFailed) and "session lost" in str(e)]


def notices(rec: Recorder, words: str) -> List[Notice]:
    return [n for n in rec.of("notice") if words in n.text]


def order_states(rec: Recorder, order_id: str) -> List[Any]:
    return [(o.status, o.filled_quantity) for o in rec.of("order") if o.order_id == order_id]


def cookies(sim: IbkrSimulator) -> List[Any]:
    return [h["cookie"] for h in sim.handshakes]


# ----------------------------------------------------------------------------- nightly reset (gateway)
@pytest.mark.parametrize("sim", [{"sor_snapshot": False}], indirect=True)
@pytest.mark.parametrize("logout,drop_sockets", [(True, True), (False, False)],
                         ids=["rest-401-socket-dropped", "rest-unauthenticated-socket-kept"])
def test_the_nightly_reset_is_survived_with_no_lost_order_update(make_feed, sim, logout, drop_sockets):
    feed = make_feed()
    feed.subscribe_orders()
    rec = Recorder(feed)
    feed.start()
    assert feed.wait_connected(5)
    filled = sim.place_order("AAPL", "BUY", 100, 190.5)
    cancelled = sim.place_order("MSFT", "SELL", 5, 400.0)
    sim.fill(filled, 40, 190.5)
    rec.wait_for("order", lambda o: o.order_id == filled and o.filled_quantity == 40)
    old_session = sim.session

    sim.nightly_reset(None, logout=logout, drop_sockets=drop_sockets)
    wait_until(lambda: session_errors(rec) and feed.state == "reconnecting")
    # While IBKR is away: the rest of the order fills, another is cancelled, a third is placed.
    sim.fill(filled, 60, 190.6)
    sim.cancel(cancelled)
    placed = sim.place_order("NVDA", "BUY", 7, 120.0)
    polls = len(sim.requests)
    wait_until(lambda: len(sim.requests) >= polls + 3)  # it keeps checking...
    assert feed.state == "reconnecting" and sim.connections == 1  # ...without opening a socket
    sim.end_nightly_reset()

    rec.wait_for("connect", count=2)
    assert sim.session != old_session and cookies(sim)[-1] == f'api={{"session": "{sim.session}"}}'
    # Reconciliation (REST: sor here sends no snapshot) covers what happened meanwhile.
    rec.wait_for("order", lambda o: o.order_id == filled and o.status is OrderStatus.FILLED)
    rec.wait_for("order", lambda o: o.order_id == cancelled and o.status is OrderStatus.CANCELLED)
    rec.wait_for("order", lambda o: o.order_id == placed and o.status is OrderStatus.OPEN)
    assert order_states(rec, filled)[-1] == (OrderStatus.FILLED, 100)
    # Reported once, as a session loss (not an authentication failure); back, with a notice.
    assert len(session_errors(rec)) == 1
    assert not [e for e in rec.of("error") if isinstance(e, AuthenticationError)]
    assert notices(rec, "session is back")
    assert feed.state == "connected" and feed.error is None
    assert feed.stats.extra["session_outages"] == 1
    assert sim.ssodh_inits == []  # the gateway logged in by itself (IBeam): nothing to open


def test_a_reset_that_leaves_the_gateway_unauthenticated_waits_without_reauthenticate(make_feed, sim):
    feed = make_feed()
    feed.subscribe_orders()
    rec = Recorder(feed)
    feed.start()
    assert feed.wait_connected(5)
    sim.nightly_reset(0.05, relogin=False)
    wait_until(lambda: session_errors(rec) and sim.connected)  # the reset is over, the session still closed
    calls = sim.requests.count(("POST", "/v1/api/iserver/auth/status"))
    wait_until(lambda: sim.requests.count(("POST", "/v1/api/iserver/auth/status")) >= calls + 3)
    assert feed.state == "reconnecting" and sim.ssodh_inits == []  # reauthenticate=False: it waits
    sim.login()  # someone logs in to the gateway
    rec.wait_for("connect", count=2)
    assert len(session_errors(rec)) == 1


def test_reauthenticate_opens_a_connected_but_unauthenticated_gateway_session(make_feed, sim):
    feed = make_feed(reauthenticate=True)
    feed.subscribe_orders()
    rec = Recorder(feed)
    feed.start()
    assert feed.wait_connected(5)
    sim.nightly_reset(0.2, relogin=False)
    rec.wait_for("connect", count=2)
    assert sim.ssodh_inits and sim.ssodh_inits[-1] == {"publish": True, "compete": False}
    assert sim.authenticated and feed.state == "connected"


def test_reauthenticate_at_start(make_feed, sim):
    sim.authenticated = False
    feed = make_feed(reauthenticate=True)
    feed.start()
    assert feed.wait_connected(5)
    assert sim.ssodh_inits == [{"publish": True, "compete": False}]


# ----------------------------------------------------------------------------- at start
def test_a_gateway_nobody_logged_in_to_is_fatal_at_once(make_feed, sim):
    sim.logged_in = False
    feed = make_feed()
    with pytest.raises(AuthenticationError, match="401: nobody is logged in.*wait_for_login"):
        feed.run_forever()
    assert sim.connections == 0 and feed.state == "stopped"


@pytest.mark.parametrize("how", ["unauthenticated", "logged-out"])
def test_wait_for_login_waits_at_start_then_connects(make_feed, sim, how):
    if how == "unauthenticated":
        sim.authenticated = False
    else:
        sim.logged_in = False
    feed = make_feed(wait_for_login=True)
    feed.subscribe_orders()
    rec = Recorder(feed)
    feed.start()
    rec.wait_for("notice", lambda n: "waiting for the IBKR session" in n.text)
    assert not feed.wait_connected(0.3) and feed.state == "connecting"
    sim.login()
    rec.wait_for("connect")
    assert rec.of("error") == []  # asked to wait: nothing went wrong
    assert notices(rec, "session is back")


def test_a_competing_login_at_start_is_fatal_and_says_how_to_take_it(make_feed, sim):
    sim.authenticated, sim.competing = False, True
    feed = make_feed()
    with pytest.raises(AuthenticationError, match="competing.*compete=True"):
        feed.run_forever()


# ----------------------------------------------------------------------------- competing login (gateway)
def test_a_competing_login_is_reported_and_waited_out_by_default(make_feed, sim):
    feed = make_feed()
    feed.subscribe_orders()
    rec = Recorder(feed)
    feed.start()
    assert feed.wait_connected(5)
    order_id = sim.place_order("AAPL", "BUY", 10, 190.0)
    sim.competing_login()
    rec.wait_for("notice", lambda n: "competing" in n.text and "waiting" in n.text)
    wait_until(lambda: session_errors(rec) and feed.state == "reconnecting")
    sim.fill(order_id, 10, 190.0)
    calls = sim.requests.count(("POST", "/v1/api/iserver/auth/status"))
    wait_until(lambda: sim.requests.count(("POST", "/v1/api/iserver/auth/status")) >= calls + 3)
    assert sim.ssodh_inits == [] and sim.competing  # it did not take the session
    sim.end_competing_login(relogin=True)
    rec.wait_for("order", lambda o: o.order_id == order_id and o.status is OrderStatus.FILLED)
    assert feed.state == "connected" and len(session_errors(rec)) == 1
    assert len(notices(rec, "holds the IBKR brokerage session")) == 1


def test_compete_takes_the_session_back(make_feed, sim):
    feed = make_feed(compete=True)
    feed.subscribe_orders()
    rec = Recorder(feed)
    feed.start()
    assert feed.wait_connected(5)
    sim.competing_login()
    rec.wait_for("connect", count=2)
    assert sim.ssodh_inits and all(body == {"publish": True, "compete": True} for body in sim.ssodh_inits)
    assert not sim.competing and sim.authenticated
    rec.wait_for("notice", lambda n: "competing" in n.text and "taking the session back" in n.text)
    wait_until(lambda: feed.state == "connected" and sim.subscribers("sor") == 1)


# ----------------------------------------------------------------------------- tickle watch, ssoExpires
def test_a_new_session_id_on_tickle_reconnects_with_it(make_feed, sim):
    feed = make_feed(tickle_interval=0.1)
    feed.subscribe_orders()
    rec = Recorder(feed)
    feed.start()
    assert feed.wait_connected(5)
    sim.session = "0123456789abcdef0123456789abcdef"
    rec.wait_for("connect", count=2)
    assert cookies(sim)[-1] == 'api={"session": "0123456789abcdef0123456789abcdef"}'
    assert rec.of("error") == []


def test_tickle_seeing_the_session_gone_reconnects_and_waits(make_feed, sim):
    feed = make_feed(tickle_interval=0.1)
    feed.subscribe_orders()
    rec = Recorder(feed)
    feed.start()
    assert feed.wait_connected(5)
    sim.authenticated = False  # no sts frame: only /tickle can tell
    wait_until(lambda: session_errors(rec) and feed.state == "reconnecting")
    sim.login()
    rec.wait_for("connect", count=2)


def test_sso_expires_is_in_stats_and_a_notice_comes_before_the_end(make_feed, sim):
    sim.sso_expires_ms = 1500
    feed = make_feed(session_warning=1.0)
    rec = Recorder(feed)
    feed.start()
    assert feed.wait_connected(5)
    assert 0 <= feed.stats.extra["sso_expires_in"] <= 2
    warned = rec.wait_for("notice", lambda n: "session ends in" in n.text)
    time.sleep(0.6)
    assert len(notices(rec, "session ends in")) == 1 == len(warned)
    assert warned[0].raw["ssoExpires"] <= 1000


def test_an_sso_session_far_from_its_end_gives_no_notice(make_feed, sim):
    feed = make_feed(session_warning=1.0)  # the simulator says 600 s
    rec = Recorder(feed)
    feed.start()
    assert feed.wait_connected(5)
    time.sleep(0.5)
    assert 590 <= feed.stats.extra["sso_expires_in"] <= 600
    assert notices(rec, "session ends in") == []


def test_the_handshake_carries_a_user_agent(make_feed, sim):
    feed = make_feed()
    feed.start()
    assert feed.wait_connected(5)
    assert sim.handshakes[-1]["user_agent"] == "brokerfeeds"


def test_a_401_from_one_endpoint_of_a_live_session_is_an_error_not_a_reconnect_loop(make_feed, sim):
    sim.route("GET", "/v1/api/iserver/account/orders", lambda r: (401, {"error": "not allowed"}))
    feed = make_feed()
    feed.subscribe_orders()
    rec = Recorder(feed)
    feed.start()
    assert feed.wait_connected(5)
    refused = rec.wait_for("error", lambda e: isinstance(e, AuthenticationError))
    assert "401" in str(refused[0]) and refused[0].status == 401
    time.sleep(0.3)
    assert feed.stats.reconnects == 0 and feed.state == "connected" and session_errors(rec) == []


# ----------------------------------------------------------------------------- the adapter (no I/O)
def test_adapter_asks_for_a_session_check_when_sts_says_lost_or_competing():
    from brokerfeeds.brokers.ibkr import IbkrProtocol
    from brokerfeeds.protocol import NotReady, Ready, Refresh

    protocol = IbkrProtocol(can_refresh=True)
    out = protocol.on_frame(b'{"topic":"sts","args":{"authenticated":true}}', True, 0.0)
    assert any(isinstance(o, Ready) for o in out) and not any(isinstance(o, Refresh) for o in out)
    out = protocol.on_frame(b'{"topic":"sts","args":{"authenticated":false}}', True, 1.0)
    assert any(isinstance(o, NotReady) for o in out) and Refresh("session") in out
    out = protocol.on_frame(b'{"topic":"sts","args":{"competing":true}}', True, 2.0)
    assert Refresh("session") in out and any(isinstance(o, Notice) and "competing" in o.text for o in out)
    assert Refresh("session") not in IbkrProtocol(can_refresh=False).on_frame(
        b'{"topic":"sts","args":{"competing":true}}', True, 0.0)


def test_adapter_warns_once_before_the_sso_session_ends_and_again_after_an_extension():
    from brokerfeeds.brokers.ibkr import IbkrProtocol

    protocol = IbkrProtocol(session_warning=60.0)

    def warnings(now: float) -> List[Notice]:
        return [o for o in protocol.maintain(now) if isinstance(o, Notice)]

    protocol.session_ends(1000.0)
    assert warnings(939.0) == []
    [notice] = warnings(941.0)
    assert "ends in 59 s" in notice.text and notice.raw == {"ssoExpires": 59000}
    assert warnings(950.0) == []
    protocol.session_ends(1000.5)  # the same end, told again by the next /tickle: no new notice
    assert warnings(960.0) == []
    protocol.session_ends(2000.0)  # extended
    assert warnings(1500.0) == [] and len(warnings(1950.0)) == 1
    protocol.session_ends(None)
    assert warnings(5000.0) == []


# ============================================================================= OAuth 1.0a
@pytest.fixture(scope="module")
def keys() -> Any:
    pytest.importorskip("cryptography")
    from brokerfeeds.testing.ibkr_oauth import OAuthTestKeys

    return OAuthTestKeys.generate()


@pytest.fixture
def osim(keys: Any, request: pytest.FixtureRequest) -> Iterator[IbkrSimulator]:
    """An IBKR simulator in OAuth mode (api.ibkr.com), sharing the module's test keys."""
    from brokerfeeds.testing.ibkr_oauth import IbkrOAuthServer

    options = getattr(request, "param", None) or {}
    with IbkrSimulator(hb_interval=0.1, oauth=IbkrOAuthServer(keys), **options) as simulator:
        yield simulator


@pytest.fixture
def make_oauth_feed(osim: IbkrSimulator) -> Iterator[Callable[..., IbkrFeed]]:
    feeds: List[IbkrFeed] = []

    def make(credentials: Any = None, **kwargs: Any) -> IbkrFeed:
        options = dict(heartbeat_interval=0.5, stale_after=1.0, reconnect=FAST_RECONNECT, session_poll=0.1)
        options.update(kwargs)
        feed = IbkrFeed.oauth(credentials or osim.oauth_credentials(), **options)
        feeds.append(feed)
        return feed

    yield make
    for feed in feeds:
        feed.stop()


def test_oauth_handshake_signed_calls_and_the_socket(make_oauth_feed, osim):
    feed = make_oauth_feed()
    feed.subscribe_orders()
    rec = Recorder(feed)
    feed.start()
    assert feed.wait_connected(5)
    order_id = osim.place_order("AAPL", "BUY", 10, 190.0)
    rec.wait_for("order", lambda o: o.order_id == order_id and o.status is OrderStatus.OPEN)
    oauth = osim.oauth
    assert oauth.lst_issued == 1 and oauth.refusals == [] and oauth.accepted >= 3  # tickle, init, tickle, ...
    # The LST call, then the brokerage session (compete: starting is logging in), then tickle.
    paths = [p for _, p in osim.requests]
    assert paths[:2] == ["/v1/api/oauth/live_session_token", "/v1/api/tickle"]
    assert "/v1/api/iserver/auth/ssodh/init" in paths[:4]
    assert osim.ssodh_inits == [{"publish": True, "compete": True}]
    handshake = osim.handshakes[-1]
    assert handshake["path"] == f"/v1/api/ws?oauth_token={oauth.access_token}"
    assert handshake["cookie"] == f"api={osim.session}" and handshake["user_agent"] == "brokerfeeds"
    assert base64.b64decode(feed.oauth_session.live_session_token()) == oauth.current_lst()
    assert feed.stats.extra["oauth_lst_renewals"] == 1
    assert feed.url == osim.url and feed.rest_url == osim.rest_url


@pytest.mark.timeout(30)
def test_stop_cuts_a_live_session_token_request_in_flight(make_oauth_feed, osim):
    """The LST request has its own REST client: stop() cuts it too, so the thread waiting
    on it ends at once instead of after the REST timeout."""
    release = threading.Event()
    lst = osim._routes[("POST", "/v1/api/oauth/live_session_token")]
    asked: List[float] = []

    def hanging_lst(request: Any) -> Any:
        asked.append(time.monotonic())
        release.wait(20)
        return lst(request)

    SimulatorBase.route(osim, "POST", "/v1/api/oauth/live_session_token", hanging_lst)  # unwrapped, as the LST's
    feed = make_oauth_feed(rest_timeout=25)
    feed.start()
    try:
        wait_until(lambda: bool(asked))
        assert feed.stop(timeout=5) is True and feed.state == "stopped"
        assert not [t for t in feed_threads() if t.name.startswith("brokerfeeds-ibkr")]
    finally:
        release.set()


def test_oauth_wrong_signature_key_is_a_clear_error_at_start(make_oauth_feed, osim, keys):
    from brokerfeeds.testing.ibkr_oauth import OAuthTestKeys

    other = OAuthTestKeys.generate()
    feed = make_oauth_feed(osim.oauth_credentials(signature_key=OAuthTestKeys.pem(other.signature_key)))
    rec = Recorder(feed)
    feed.start()
    with pytest.raises(AuthenticationError, match="refused the live session token request.*invalid signature"):
        feed.wait_connected(5)
    assert osim.connections == 0 and feed.state == "stopped"
    assert osim.oauth.refusals == ["invalid signature"]  # once: no retry storm
    assert len([e for e in rec.of("error") if isinstance(e, AuthenticationError)]) == 1


def test_oauth_refused_consumer_key_is_a_clear_error_at_start(make_oauth_feed, osim):
    osim.oauth.refuse_consumer = True
    feed = make_oauth_feed()
    with pytest.raises(AuthenticationError, match="invalid consumer"):
        feed.run_forever()
    assert osim.connections == 0


def test_oauth_expired_lst_is_renewed_silently_without_dropping_the_socket(make_oauth_feed, osim):
    feed = make_oauth_feed(tickle_interval=0.1)
    feed.subscribe_orders()
    rec = Recorder(feed)
    feed.start()
    assert feed.wait_connected(5)
    osim.oauth.expire_live_session_tokens()
    wait_until(lambda: osim.oauth.lst_issued == 2)
    order_id = osim.place_order("AAPL", "BUY", 10, 190.0)
    rec.wait_for("order", lambda o: o.order_id == order_id)
    wait_until(lambda: osim.tickles >= 4)
    assert osim.oauth.refusals == ["live session token expired"]
    assert rec.of("error") == [] and feed.stats.reconnects == 0 and osim.connections == 1


def test_oauth_lst_is_renewed_before_it_expires(make_oauth_feed, osim):
    feed = make_oauth_feed(tickle_interval=0.1)
    feed.start()
    assert feed.wait_connected(5)
    feed.oauth_session._renew_at = 0.0  # as if the renewal margin before expiry was reached
    wait_until(lambda: osim.oauth.lst_issued == 2)
    wait_until(lambda: osim.tickles >= 4)
    assert osim.oauth.refusals == [] and feed.stats.reconnects == 0  # renewed before any refusal


@pytest.mark.parametrize("osim", [{"sor_snapshot": False}], indirect=True)
def test_oauth_nightly_reset_renews_the_lst_and_reopens_the_session_by_itself(make_oauth_feed, osim):
    feed = make_oauth_feed()
    feed.subscribe_orders()
    rec = Recorder(feed)
    feed.start()
    assert feed.wait_connected(5)
    order_id = osim.place_order("AAPL", "BUY", 10, 190.0)
    rec.wait_for("order", lambda o: o.order_id == order_id and o.status is OrderStatus.OPEN)
    old_session = osim.session
    osim.nightly_reset(0.5)
    osim.fill(order_id, 10, 190.0)  # while IBKR is away
    rec.wait_for("order", lambda o: o.order_id == order_id and o.status is OrderStatus.FILLED, timeout=10)
    assert rec.wait_for("connect", count=2)
    assert osim.session != old_session and osim.handshakes[-1]["cookie"] == f"api={osim.session}"
    assert osim.oauth.lst_issued == 2 and "live session token expired" in osim.oauth.refusals
    assert osim.ssodh_inits[0] == {"publish": True, "compete": True}
    assert osim.ssodh_inits[-1] == {"publish": True, "compete": False} and osim.authenticated
    assert len(session_errors(rec)) == 1 and not [e for e in rec.of("error") if isinstance(e, AuthenticationError)]
    assert feed.state == "connected"


def test_oauth_competing_login_is_waited_out_then_the_session_reopened(make_oauth_feed, osim):
    feed = make_oauth_feed()
    feed.subscribe_orders()
    rec = Recorder(feed)
    feed.start()
    assert feed.wait_connected(5)
    osim.competing_login()
    wait_until(lambda: session_errors(rec) and feed.state == "reconnecting")
    calls = osim.requests.count(("POST", "/v1/api/iserver/auth/status"))
    wait_until(lambda: osim.requests.count(("POST", "/v1/api/iserver/auth/status")) >= calls + 3)
    assert osim.ssodh_inits == [{"publish": True, "compete": True}]  # only the first, at start
    osim.end_competing_login()  # the other login is gone: the feed opens the session again
    rec.wait_for("connect", count=2)
    assert osim.ssodh_inits[1:] == [{"publish": True, "compete": False}]


def test_oauth_compete_takes_the_session_back(make_oauth_feed, osim):
    feed = make_oauth_feed(compete=True)
    rec = Recorder(feed)
    feed.start()
    assert feed.wait_connected(5)
    osim.competing_login()
    rec.wait_for("connect", count=2)
    assert osim.ssodh_inits[-1] == {"publish": True, "compete": True} and not osim.competing


def test_oauth_socket_needs_the_oauth_token_a_user_agent_and_the_cookie(osim):
    websocket = pytest.importorskip("websocket")
    cookie = f"api={osim.session}"
    token = osim.oauth.access_token
    cases = [
        (osim.url, {"header": ["User-Agent: x"], "cookie": cookie}),  # no oauth_token
        (osim.url + "?oauth_token=nope", {"header": ["User-Agent: x"], "cookie": cookie}),
        (osim.url + f"?oauth_token={token}", {"cookie": cookie}),  # no User-Agent
        (osim.url + f"?oauth_token={token}", {"header": ["User-Agent: x"], "cookie": "api=other"}),
    ]
    for url, options in cases:
        with pytest.raises(websocket.WebSocketBadStatusException):
            websocket.create_connection(url, timeout=5, **options)
    ws = websocket.create_connection(osim.url + f"?oauth_token={token}", timeout=5, header=["User-Agent: x"],
                                     cookie=cookie)
    ws.close()
    assert osim.rejected == 4 and osim.connections == 1


def test_oauth_no_secret_in_logs_reprs_or_errors(make_oauth_feed, osim, debug_log, keys):
    from brokerfeeds.testing.ibkr_oauth import OAuthTestKeys

    feed = make_oauth_feed(tickle_interval=0.1)
    feed.subscribe_orders()
    rec = Recorder(feed)
    feed.start()
    assert feed.wait_connected(5)
    osim.oauth.expire_live_session_tokens()
    wait_until(lambda: osim.oauth.lst_issued == 2)
    osim.nightly_reset(0.3)
    rec.wait_for("connect", count=2, timeout=10)
    lst = base64.b64encode(osim.oauth.current_lst()).decode()
    creds = feed.credentials
    secrets_ = [creds.access_token, creds.access_token_secret, lst, osim.session,
                OAuthTestKeys.pem(keys.signature_key).splitlines()[1],
                OAuthTestKeys.pem(keys.encryption_key).splitlines()[1]]
    shown = "\n".join([debug_log.text, repr(feed), repr(feed.oauth_session), repr(feed.credentials),
                       *(str(e) for e in rec.of("error")), *(n.text for n in rec.of("notice"))])
    for secret in secrets_:
        assert secret not in shown
    assert "oauth_token=***" in debug_log.text  # the socket URL, masked


def test_oauth_constructors(keys, tmp_path, osim):
    from brokerfeeds.brokers.ibkr_oauth import IbkrOAuth
    from brokerfeeds.testing.ibkr_oauth import OAuthTestKeys

    creds = osim.oauth_credentials()
    signature, encryption = tmp_path / "signature.pem", tmp_path / "encryption.pem"
    signature.write_text(OAuthTestKeys.pem(keys.signature_key))
    encryption.write_text(OAuthTestKeys.pem(keys.encryption_key))
    feed = IbkrFeed.oauth(creds.consumer_key, creds.access_token, creds.access_token_secret, str(signature),
                          str(encryption), creds.dh_prime)  # no I/O: nothing is read before start()
    assert feed.url == "wss://api.ibkr.com/v1/api/ws" and feed.rest_url == "https://api.ibkr.com/v1/api"
    assert feed.credentials.realm == "limited_poa" and feed.credentials.signature_key == str(signature)
    env = {"IBKR_OAUTH_CONSUMER_KEY": creds.consumer_key, "IBKR_OAUTH_ACCESS_TOKEN": creds.access_token,
           "IBKR_OAUTH_ACCESS_TOKEN_SECRET": creds.access_token_secret,
           "IBKR_OAUTH_SIGNATURE_KEY": str(signature), "IBKR_OAUTH_ENCRYPTION_KEY": str(encryption),
           "IBKR_OAUTH_DH_PRIME": creds.dh_prime, "IBKR_OAUTH_BASE_URL": osim.rest_url,
           "IBKR_OAUTH_WS_URL": osim.url}
    from_env = IbkrFeed.oauth_from_env(env, reconnect=FAST_RECONNECT)
    assert isinstance(from_env.credentials, IbkrOAuth) and from_env.url == osim.url
    try:
        from_env.start()
        assert from_env.wait_connected(5)  # the keys from their files
    finally:
        from_env.stop()
    with pytest.raises(ValueError, match="rest_url comes from the credentials"):
        IbkrFeed(oauth=creds, rest_url="https://localhost:5000/v1/api")
    with pytest.raises(ValueError, match="dh_prime not given"):
        IbkrFeed.oauth("KEY", "token", "c2VjcmV0", str(signature), str(encryption))
    with pytest.raises(ValueError, match="IBKR_OAUTH_DH_PRIME"):
        IbkrFeed.oauth_from_env({k: v for k, v in env.items() if k != "IBKR_OAUTH_DH_PRIME"})


@pytest.mark.timeout(60)
def test_the_oauth_example_runs_against_the_simulator(keys):
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "ibkr_oauth_orders.py"), "--simulate"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "-> FILLED (Filled), filled 100.0" in result.stdout
    assert "fill 70 AAPL @ 190.5" in result.stdout  # made during the reset, delivered after it
    assert "session is back" in result.stdout and "1 reconnect(s), 2 live session token(s)" in result.stdout


# ----------------------------------------------------------------------------- refused handshakes mid-stream
def test_a_handshake_refused_mid_stream_is_retried_with_backoff_not_fatal(make_feed, sim):
    """REST says the session is fine but the socket handshake is refused, again and again
    (a gateway restarting in the small hours): at start this is fatal (test_ibkr.py), but
    once the session worked the feed reports each refusal and keeps reconnecting until
    the handshake is accepted, then re-subscribes and reconciles."""
    feed = make_feed()
    feed.subscribe_orders()
    rec = Recorder(feed)
    feed.start()
    assert feed.wait_connected(5)
    placed = sim.place_order("AAPL", "BUY", 10, 190.5)
    rec.wait_for("order", lambda o: o.order_id == placed)

    sim.reject_cookie = True
    sim.drop()
    refused = lambda: [e for e in rec.of("error") if isinstance(e, AuthenticationError)]  # noqa: E731
    wait_until(lambda: len(refused()) >= 2 and sim.rejected >= 4, timeout=10)  # two rounds of (refused, retried)
    assert feed.state == "reconnecting"  # not "stopped"
    sim.fill(placed, 10, 190.5)  # while the socket is refused
    sim.reject_cookie = False

    rec.wait_for("connect", count=2, timeout=10)
    assert feed.state == "connected"
    rec.wait_for("order", lambda o: o.order_id == placed and o.status is OrderStatus.FILLED)  # reconciled
    feed.stop()
