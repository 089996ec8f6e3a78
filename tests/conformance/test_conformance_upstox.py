"""Proof from the other side: the official Upstox SDK, unmodified, against UpstoxSimulator.

The client is ``upstox-python-sdk`` (module ``upstox_client``, the ``conformance`` extra);
the tests skip when it is absent. Nothing of the SDK is patched. How it is pointed at the
simulator, and why this way:

* REST: ``Configuration.host`` is the SDK's own switch (``ApiClient.call_api`` sends
  ``host + resource_path``), so ``WebsocketApi.get_portfolio_stream_feed_authorize`` talks
  to the simulator's REST port as shipped.
* Socket: ``PortfolioDataFeeder.get_websocket_url`` (``upstox_client/feeder/
  portfolio_data_feeder.py``) hard-codes ``wss://api.upstox.com/v2/feed/portfolio-stream-feed``
  and no setting changes it. Rather than patch that method, the tests use the standard way
  any websocket-client program is routed: the ``https_proxy`` environment variable
  (websocket-client's ``get_proxy_info`` reads it for ``wss://`` URLs). The "proxy" is a
  small local TLS front (:class:`TlsFront`): it answers ``CONNECT api.upstox.com:443``,
  terminates TLS with a self-signed test certificate for ``api.upstox.com`` and pipes the
  plaintext to the simulator's socket port. The certificate is accepted only because the
  SDK itself turns verification off (``sslopt={"cert_reqs": ssl.CERT_NONE,
  "check_hostname": False}`` in the same file) -- the test relies on, and so documents,
  that behaviour. The SDK's URL building (paths, ``update_types`` order, ``%2C``), its
  headers, its TLS options and websocket-client's 302 handling all run as shipped.
* The simulator mints ``wss://api.upstox.com/...`` one-time URIs here (``public_ws_url``),
  as Upstox's are ``wss://``: websocket-client keeps the dispatcher chosen for the first
  URL across a redirect, so a ``wss://`` -> ``ws://`` redirect would break the SDK
  (``websocket/_app.py``: ``create_dispatcher(..., parse_url(self.url)[3])``), which the
  live service never asks of it. The redirect target goes through the same front.

What the SDK checks of the simulator (and of our adapter, which shares its beliefs):
the REST authorize path, its ``update_types`` query (``%2C``-joined, ``order,holding,
position``; the SDK's REST call has no ``gtt_update``, only its socket path asks for
``gtt_order``), the bearer header and the reply envelope (the SDK's model reads
``data.authorizedRedirectUri``, the spelling Upstox calls deprecated -- the simulator
sends both by default and either alone on request, and the adapter reads both); the
socket path, its query and the bearer header on the handshake; the 302 to a one-time
URI; text frames, one JSON object each, which the SDK hands to its ``message`` listeners
as ``str``. The SDK also sends ``Api-Version: 2.0`` on REST calls; the simulator ignores
it and the adapter does not send it (Upstox's authorize page lists only ``Authorization``
and ``Accept``). The SDK decodes no message, so the message *shapes* asserted here are
the simulator's own (docs/upstox.md), not proven by the SDK.
"""

from __future__ import annotations

import datetime as dt
import json
import select
import shutil
import socket
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

import pytest

from brokerfeeds.testing.upstox import AUTHORIZE_FIELDS, FEED_PATH, UpstoxSimulator
from helpers import FAST_RECONNECT, Recorder, official_client, wait_until

upstox_client = official_client("upstox_client")

pytestmark = pytest.mark.timeout(30)

UPSTOX_HOST = "api.upstox.com"
NHPC = "NSE_EQ|INE848E01016"
SBIN = "NSE_EQ|INE062A01020"


# ====================================================================== the TLS front
def _self_signed(directory: Path, hostname: str) -> Tuple[Path, Path]:
    """A throwaway self-signed certificate and key for ``hostname`` (PEM files), made with
    ``cryptography`` if installed, else the ``openssl`` command; the test skips without both."""
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.skip("the TLS front needs a test certificate: install 'cryptography' (or the openssl command)")
        subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-days", "1", "-subj", f"/CN={hostname}", "-addext", f"subjectAltName=DNS:{hostname}",
                        "-keyout", str(key_file), "-out", str(cert_file)], check=True, capture_output=True, timeout=30)
        return cert_file, key_file
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


class TlsFront:
    """A local HTTPS proxy standing in for ``api.upstox.com``: answers ``CONNECT``,
    terminates TLS with a test certificate and pipes the plaintext to ``target``."""

    def __init__(self, target: Tuple[str, int], context: ssl.SSLContext) -> None:
        self.target = target
        self.context = context
        self.connects: List[str] = []  # the CONNECT targets asked for, in order
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._open: List[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="tls-front", daemon=True)

    @property
    def url(self) -> str:
        """The proxy URL for ``https_proxy``."""
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def __enter__(self) -> "TlsFront":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._closed.set()
        self._listener.close()
        with self._lock:
            for sock in self._open:
                sock.close()
        self._thread.join(5)

    def _accept(self) -> None:
        self._listener.settimeout(0.1)  # closing a listener does not wake a blocked accept()
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(None)
            threading.Thread(target=self._serve, args=(conn,), name="tls-front-conn", daemon=True).start()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.append(sock)

    def _serve(self, conn: socket.socket) -> None:
        upstream: Optional[socket.socket] = None
        tls: Optional[ssl.SSLSocket] = None
        self._track(conn)
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            method, target = head.split(b"\r\n", 1)[0].decode().split(" ")[:2]
            if method != "CONNECT":
                conn.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
            self.connects.append(target)
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            tls = self.context.wrap_socket(conn, server_side=True)
            self._track(tls)
            upstream = socket.create_connection(self.target, timeout=5)
            self._track(upstream)
            upstream.settimeout(None)
            self._pipe(tls, upstream)
        except (OSError, ValueError):
            pass  # a peer went away (or the front closed): the other side sees EOF below
        finally:
            for sock in (tls, upstream, conn):
                if sock is not None:
                    sock.close()

    def _pipe(self, tls: ssl.SSLSocket, upstream: socket.socket) -> None:
        while not self._closed.is_set():
            readable = [tls] if tls.pending() else select.select([tls, upstream], [], [], 0.2)[0]
            for source, sink in ((tls, upstream), (upstream, tls)):
                if source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    sink.sendall(data)


@pytest.fixture(scope="module")
def tls_context(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    cert_file, key_file = _self_signed(tmp_path_factory.mktemp("upstox-tls"), UPSTOX_HOST)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context


@pytest.fixture
def sim() -> Iterator[UpstoxSimulator]:
    with UpstoxSimulator(ping_every=0.2, public_ws_url=f"wss://{UPSTOX_HOST}") as simulator:
        yield simulator


@pytest.fixture
def front(sim: UpstoxSimulator, tls_context: ssl.SSLContext, monkeypatch: pytest.MonkeyPatch) -> Iterator[TlsFront]:
    """Route the SDK's ``wss://api.upstox.com`` through the TLS front to ``sim``."""
    with TlsFront((sim.host, sim.port), tls_context) as tls_front:
        for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("https_proxy", tls_front.url)
        yield tls_front


def api_client(sim: UpstoxSimulator, token: Optional[str] = None) -> Any:
    """The SDK's ApiClient on the simulator's REST port (``host`` set after construction:
    ``Configuration`` shares defaults process-wide)."""
    configuration = upstox_client.Configuration()
    configuration.host = sim.rest_url
    configuration.access_token = token or sim.token
    return upstox_client.ApiClient(configuration)


class SdkRun:
    """A ``PortfolioDataStreamer`` with every event recorded; stopped (and its threads
    joined) on exit -- the SDK runs websocket-client on non-daemon threads."""

    def __init__(self, sim: UpstoxSimulator, reconnect: bool = False, **flags: bool) -> None:
        self.sim = sim
        self.events: List[Tuple[str, Tuple[Any, ...]]] = []
        self._cond = threading.Condition()
        self.streamer = upstox_client.PortfolioDataStreamer(api_client(sim), **flags)
        self.streamer.auto_reconnect(reconnect, 0.05, 2)
        for name in ("open", "close", "message", "error", "reconnecting", "autoReconnectStopped"):
            self.streamer.on(name, self._recorder(name))
        self._threads_before = set(threading.enumerate())

    def _recorder(self, name: str) -> Callable[..., None]:
        def record(*args: Any) -> None:
            with self._cond:
                self.events.append((name, args))
                self._cond.notify_all()
        return record

    def of(self, name: str) -> List[Tuple[Any, ...]]:
        """The arguments of every ``name`` event so far."""
        with self._cond:
            return [args for event, args in self.events if event == name]

    def messages(self) -> List[Dict[str, Any]]:
        """Every message the SDK handed its listeners, decoded (it hands over ``str``)."""
        decoded = []
        for (message,) in self.of("message"):
            assert isinstance(message, str)
            decoded.append(json.loads(message))
        return decoded

    def wait_for(self, predicate: Callable[["SdkRun"], bool], message: str, timeout: float = 10.0) -> None:
        wait_until(lambda: predicate(self), timeout=timeout,
                   message=f"{message}; SDK events: {[(e, a) for e, a in self.events if e != 'message']}")

    def __enter__(self) -> "SdkRun":
        self.streamer.connect()
        return self

    def __exit__(self, *exc: Any) -> None:
        # The server ends the stream (1000, which the SDK never retries): the SDK's own
        # disconnect() leaves its socket thread in a 10 s select on the closed socket.
        self.streamer.auto_reconnect(False)
        self.sim.close_all(1000, "test over")
        threads = [t for t in set(threading.enumerate()) - self._threads_before if t.name.endswith("(run_forever)")]
        for thread in threads:
            thread.join(5)
        if any(thread.is_alive() for thread in threads):
            self.streamer.disconnect()
            for thread in threads:
                thread.join(15)
        assert not any(thread.is_alive() for thread in threads), "the SDK's socket thread did not end"


# ====================================================================== REST authorize
def test_sdk_rest_authorize_gets_a_one_time_uri_from_the_simulator(sim: UpstoxSimulator) -> None:
    api = upstox_client.WebsocketApi(api_client(sim))
    reply = api.get_portfolio_stream_feed_authorize("2.0", order_update=True, position_update=True,
                                                    holding_update=True)

    # The SDK's own request, as the simulator parsed it.
    assert sim.requests[-1] == ("GET", "/v2/feed/portfolio-stream-feed/authorize"
                                       "?update_types=order%2Cholding%2Cposition")
    assert sim.authorizations == 1
    # ... and the simulator's reply, as the SDK's model decoded it.
    assert reply.status == "success"
    uri = reply.data.authorized_redirect_uri
    assert uri is not None and uri.startswith(f"wss://{UPSTOX_HOST}{FEED_PATH}?")
    query = parse_qs(urlsplit(uri).query)
    assert set(query) == {"requestId", "code"}
    assert sim.codes[query["code"][0]] == ("order", "holding", "position")


@pytest.mark.parametrize("fields", [AUTHORIZE_FIELDS, ("authorizedRedirectUri",), ("authorized_redirect_uri",)])
def test_authorize_reply_spellings_the_sdk_and_our_feed_read(fields: Tuple[str, ...]) -> None:
    """The SDK reads only ``authorizedRedirectUri``; Upstox documents ``authorized_redirect_uri``
    and calls the camelCase one deprecated. Our feed must connect under every variant."""
    from brokerfeeds.brokers.upstox import UpstoxFeed

    with UpstoxSimulator(ping_every=None, authorize_fields=fields) as simulator:
        reply = upstox_client.WebsocketApi(api_client(simulator)).get_portfolio_stream_feed_authorize("2.0")
        sdk_uri = reply.data.authorized_redirect_uri
        assert (sdk_uri is not None) == ("authorizedRedirectUri" in fields)

        feed = UpstoxFeed(access_token=simulator.token, rest_url=simulator.rest_url, reconnect=FAST_RECONNECT)
        recorder = Recorder(feed, kinds=("connect", "error"))
        with feed:
            assert feed.wait_connected(5), recorder.of("error")
        assert simulator.used_codes and simulator.used_codes[-1] in simulator.issued_codes


@pytest.mark.parametrize("refuse_status", [403, 401])
def test_our_feed_retries_a_refused_handshake_under_either_status(refuse_status: int) -> None:
    """Which status refuses a spent or rejected code is undocumented (the SDK stops retrying
    only on "401 Unauthorized"); our feed must take a new URI and connect under both."""
    from brokerfeeds.brokers.upstox import UpstoxFeed

    with UpstoxSimulator(ping_every=None, refuse_status=refuse_status) as simulator:
        simulator.reject_handshakes(1)
        feed = UpstoxFeed(access_token=simulator.token, rest_url=simulator.rest_url, reconnect=FAST_RECONNECT)
        with feed:
            assert feed.wait_connected(5)
        assert simulator.rejected == 1 and simulator.authorizations == 2


def test_sdk_sees_the_error_envelope_for_a_bad_token(sim: UpstoxSimulator) -> None:
    api = upstox_client.WebsocketApi(api_client(sim, token="not-a-valid-token"))
    with pytest.raises(upstox_client.rest.ApiException) as refused:
        api.get_portfolio_stream_feed_authorize("2.0")
    assert refused.value.status == 401
    body = json.loads(refused.value.body)
    assert body["status"] == "error" and body["errors"][0]["error_code"] == "UDAPI100050"
    assert sim.authorizations == 0 and not sim.codes


# ====================================================================== the streamer
def test_sdk_streamer_receives_order_position_holding_and_gtt_updates(sim: UpstoxSimulator, front: TlsFront) -> None:
    with SdkRun(sim, order_update=True, position_update=True, holding_update=True, gtt_update=True) as run:
        run.wait_for(lambda r: bool(r.of("open")), "the SDK never opened")
        assert sim.wait_for_clients(1)
        # The SDK's handshake went to api.upstox.com:443 (through the front) on the path and
        # query the SDK builds, was authorized by its bearer header and redirected (302) to a
        # one-time wss:// URI, which it followed through the front as well.
        assert front.connects[:2] == [f"{UPSTOX_HOST}:443", f"{UPSTOX_HOST}:443"]
        assert sim.authorizations == 1 and len(sim.used_codes) == 1
        assert sim.used_codes == sim.issued_codes
        client = next(iter(sim.clients))
        assert client.info["types"] == {"order", "holding", "position", "gtt_order"}

        order_id = sim.place_order("NHPC-EQ", "BUY", 10, 92.5, instrument_key=NHPC)
        sim.fill(order_id, 4, 92.45)
        sim.fill(order_id, 6, 92.5)
        sim.set_holding(SBIN, "SBIN", 25, 571.2)
        gtt_id = sim.place_gtt(NHPC, 10, "BUY", 90.0, target=95.0, stoploss=88.0)
        sim.set_gtt_rule(gtt_id, "ENTRY", "TRIGGERED", order_id=order_id)
        run.wait_for(lambda r: len(r.messages()) >= 11, "not every update arrived")
        assert not run.of("error") and not run.of("close")

    by_type: Dict[str, List[Dict[str, Any]]] = {}
    for message in run.messages():
        by_type.setdefault(message["update_type"], []).append(message)
    assert sorted(by_type) == ["gtt_order", "holding", "order", "position"]

    orders = by_type["order"]
    assert {o["order_id"] for o in orders} == {order_id}
    assert [o["status"] for o in orders] == ["put order req received", "validation pending", "open pending",
                                            "open", "open", "complete"]
    assert [(o["filled_quantity"], o["pending_quantity"]) for o in orders[-2:]] == [(4, 6), (10, 0)]
    assert orders[-1]["average_price"] == pytest.approx(92.48)
    assert orders[-1]["transaction_type"] == "BUY" and orders[-1]["instrument_token"] == NHPC

    positions = by_type["position"]
    assert [(p["instrument_token"], p["quantity"], p["day_buy_quantity"]) for p in positions] == \
        [(NHPC, 4, 4), (NHPC, 10, 10)]

    (holding,) = by_type["holding"]
    assert (holding["instrument_token"], holding["quantity"], holding["average_price"]) == (SBIN, 25, 571.2)

    gtts = by_type["gtt_order"]
    assert [g["gtt_order_id"] for g in gtts] == [gtt_id, gtt_id]
    assert gtts[0]["type"] == "MULTIPLE" and gtts[0]["quantity"] == 10
    assert [(r["strategy"], r["status"]) for r in gtts[0]["rules"]] == \
        [("ENTRY", "PENDING"), ("TARGET", "PENDING"), ("STOPLOSS", "PENDING")]
    entry = gtts[1]["rules"][0]
    assert (entry["status"], entry["order_id"]) == ("TRIGGERED", order_id)


def test_sdk_streamer_default_is_order_updates_only(sim: UpstoxSimulator, front: TlsFront) -> None:
    with SdkRun(sim) as run:
        run.wait_for(lambda r: bool(r.of("open")), "the SDK never opened")
        assert sim.wait_for_clients(1)
        assert next(iter(sim.clients)).info["types"] == {"order"}
        sim.set_holding(SBIN, "SBIN", 5, 570.0)  # not subscribed: never sent
        order_id = sim.place_order("SBIN-EQ", "SELL", 5, 575.0, instrument_key=SBIN)
        sim.cancel(order_id)
        run.wait_for(lambda r: len(r.messages()) >= 6, "the order updates did not arrive")
    assert {m["update_type"] for m in run.messages()} == {"order"}
    assert [m["status"] for m in run.messages()][-2:] == ["cancel pending", "cancelled"]


# ====================================================================== one-time codes
@pytest.mark.parametrize("refuse_status", [403, 401])
def test_a_reused_one_time_code_is_refused_and_the_sdk_sees_it(refuse_status: int, sim: UpstoxSimulator,
                                                             front: TlsFront) -> None:
    """REST authorize (the SDK's call) mints a one-time URI; the first streamer spends it,
    a second streamer sent to the same URI is refused at the handshake."""
    sim.refuse_status = refuse_status
    reply = upstox_client.WebsocketApi(api_client(sim)).get_portfolio_stream_feed_authorize("2.0")
    uri = reply.data.authorized_redirect_uri
    code = parse_qs(urlsplit(uri).query)["code"][0]

    sim.redirect_next(uri)
    with SdkRun(sim) as first:
        first.wait_for(lambda r: bool(r.of("open")), "the SDK never opened the authorized URI")
        assert sim.used_codes == [code]
        order_id = sim.place_order("NHPC-EQ", "BUY", 1, 92.5, instrument_key=NHPC)
        first.wait_for(lambda r: any(m["status"] == "open" for m in r.messages()), "no order update")
        assert {m["order_id"] for m in first.messages()} == {order_id}

    sim.redirect_next(uri)
    with SdkRun(sim) as second:
        second.wait_for(lambda r: bool(r.of("close")), "the SDK did not give up on the refused code")
        assert not second.of("open") and not second.messages()
        (error,), = second.of("error")
        phrase = "401 Unauthorized" if refuse_status == 401 else "403 Forbidden"
        assert f"Handshake status {phrase}" in str(error)
        assert code not in str(error) and sim.token not in str(error)
    assert sim.reused_codes == 1 and sim.used_codes == [code]
    assert sim.authorizations == 1  # the replayed redirect minted nothing


def test_sdk_reconnects_with_a_fresh_code_after_a_refusal(sim: UpstoxSimulator, front: TlsFront) -> None:
    """With its auto-reconnect on, the SDK retries a refused (403) handshake through the
    redirect again, and the simulator hands it a fresh code that works."""
    reply = upstox_client.WebsocketApi(api_client(sim)).get_portfolio_stream_feed_authorize("2.0")
    spent = reply.data.authorized_redirect_uri
    sim.redirect_next(spent)
    with SdkRun(sim) as first:
        first.wait_for(lambda r: bool(r.of("open")), "the SDK never opened")
    sim.redirect_next(spent)
    with SdkRun(sim, reconnect=True) as run:
        run.wait_for(lambda r: bool(r.of("open")), "the SDK did not reconnect after the refusal")
        assert "403 Forbidden" in str(run.of("error")[0][0])
        assert run.of("reconnecting")
        assert sim.reused_codes == 1 and len(sim.used_codes) == 2 and sim.used_codes[-1] != sim.used_codes[0]
        order_id = sim.place_order("SBIN-EQ", "BUY", 2, 570.0, instrument_key=SBIN)
        run.wait_for(lambda r: any(m["status"] == "open" for m in r.messages()), "no order update after reconnect")
    assert {m["order_id"] for m in run.messages()} == {order_id}
