"""RestClient against real HTTP(S) servers on 127.0.0.1: what failed, where and why."""

from __future__ import annotations

import datetime as dt
import http.server
import shutil
import ssl
import subprocess
import threading
import time
import warnings
from email.utils import format_datetime
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest
import requests
from urllib3.exceptions import InsecureRequestWarning

from brokerfeeds.errors import AuthenticationError, ConnectionFailed, RateLimited
from brokerfeeds.reconnect import RETRY_AFTER_CEILING
from brokerfeeds.redact import Redactor
from brokerfeeds.rest import RestClient

pytestmark = pytest.mark.timeout(10)

SECRET = "acct-S3CR3T-99"


# ---------------------------------------------------------------- a self-signed certificate
def _with_cryptography(cert: Path, key: Path) -> bool:
    try:
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        return False
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(private.public_key())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return True


def _with_openssl(cert: Path, key: Path) -> bool:
    openssl = shutil.which("openssl")
    if openssl is None:
        return False
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=20,
    )
    return True


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, Path]:
    """(cert.pem, key.pem) of a self-signed certificate for 127.0.0.1."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    if not (_with_cryptography(cert, key) or _with_openssl(cert, key)):
        pytest.skip("cannot make a self-signed certificate: neither the 'cryptography' package "
                    "nor the 'openssl' command is available")
    return cert, key


# ---------------------------------------------------------------- a loopback server
Route = Tuple[int, Dict[str, str], bytes, float]  # status, headers, body, delay before answering


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins the handler threads: nothing is left running
    block_on_close = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: Dict[str, Route] = {}
        self.release = threading.Event()  # ends every pending delay at teardown

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that gave up (timeout, rejected certificate) is expected here


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def _answer(self) -> None:
        status, headers, body, delay = self.server.routes.get(
            self.path.split("?")[0], (404, {}, b'{"error": "no route"}', 0.0))
        if delay:
            self.server.release.wait(delay)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


class Loopback:
    """A running server; ``url`` is its base URL."""

    def __init__(self, tls: Optional[ssl.SSLContext] = None) -> None:
        self.server = _Server()
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="test-rest-server", daemon=True)
        self._thread.start()

    def route(self, path: str, status: int = 200, body: bytes = b'{"ok": true}',
              headers: Optional[Dict[str, str]] = None, delay: float = 0.0) -> None:
        self.server.routes[path] = (status, {"Content-Type": "application/json", **(headers or {})}, body, delay)

    def close(self) -> None:
        self.server.release.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(2.0)


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests reads proxies from the environment: keep loopback traffic direct."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def http_server() -> Iterator[Loopback]:
    server = Loopback()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def https_server(certificate: Tuple[Path, Path]) -> Iterator[Loopback]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(certificate[0]), str(certificate[1]))
    server = Loopback(tls=context)
    server.route("/v1/api/tickle")
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def clients() -> Iterator[List[RestClient]]:
    """Clients a test makes; closed at the end."""
    made: List[RestClient] = []
    yield made
    for client in made:
        client.close()


def make(clients: List[RestClient], base: str, **kwargs: object) -> RestClient:
    client = RestClient(base, **kwargs)  # type: ignore[arg-type]
    clients.append(client)
    return client


def failure(client: RestClient, method: str, path: str, **kwargs: object) -> ConnectionFailed:
    with pytest.raises(ConnectionFailed) as info:
        client.request(method, path, **kwargs)  # type: ignore[arg-type]
    return info.value


# ---------------------------------------------------------------- network failures
def test_connection_refused_names_the_cause_and_the_url(clients: List[RestClient]) -> None:
    client = make(clients, "https://127.0.0.1:1/v1/api", timeout=2.0)
    error = failure(client, "GET", "tickle")
    assert str(error) == "GET tickle failed: connection refused (https://127.0.0.1:1/v1/api/tickle)"
    assert error.status is None
    assert isinstance(error.__cause__, requests.ConnectionError)


def test_query_string_is_not_shown(clients: List[RestClient]) -> None:
    client = make(clients, "http://127.0.0.1:1/api", timeout=2.0)
    error = failure(client, "POST", "orders", params={"account": "U123"})
    assert str(error) == "POST orders failed: connection refused (http://127.0.0.1:1/api/orders?...)"
    error = failure(client, "GET", "x", url="http://user:pw@127.0.0.1:1/oauth?grant=abc")
    assert str(error) == "GET auth endpoint failed: connection refused (http://***@127.0.0.1:1/oauth?...)"


def test_dns_failure_names_the_host(clients: List[RestClient]) -> None:
    client = make(clients, "https://gateway.x.invalid/v1/api", timeout=2.0)
    error = failure(client, "GET", "tickle")
    assert str(error).startswith(
        "GET tickle failed: DNS lookup failed for host 'gateway.x.invalid' (https://gateway.x.invalid/v1/api/tickle")
    assert error.__cause__ is not None


def test_timeout_names_the_limit(http_server: Loopback, clients: List[RestClient]) -> None:
    http_server.route("/slow", delay=2.0)
    client = make(clients, http_server.url, timeout=0.3)
    error = failure(client, "GET", "slow")
    assert str(error) == f"GET slow failed: timed out after 0.3s ({http_server.url}/slow)"
    assert isinstance(error.__cause__, requests.Timeout)


def test_self_signed_certificate_with_verify_true_gives_the_hint(
    https_server: Loopback, clients: List[RestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    client = make(clients, https_server.url + "/v1/api", timeout=2.0)
    error = failure(client, "GET", "tickle")
    text = str(error)
    assert text.startswith(
        "GET tickle failed: TLS certificate verification failed; pass verify=False for a self-signed "
        "gateway certificate, or verify='/path/to/ca-bundle.pem' "
        f"({https_server.url}/v1/api/tickle")
    assert "self-signed certificate" in text  # OpenSSL's own reason, after the URL
    assert isinstance(error.__cause__, requests.exceptions.SSLError)


def test_verify_false_works_without_urllib3_warnings(https_server: Loopback, clients: List[RestClient]) -> None:
    client = make(clients, https_server.url + "/v1/api", verify=False, timeout=2.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert client.get("tickle") == {"ok": True}
        assert client.post("tickle") == {"ok": True}
        ours = [w for w in caught if issubclass(w.category, InsecureRequestWarning)]
        # The same request through plain requests does warn: the check above can fail.
        plain = requests.get(https_server.url + "/v1/api/tickle", verify=False, timeout=2.0)
        assert plain.status_code == 200
        theirs = [w for w in caught if issubclass(w.category, InsecureRequestWarning)]
    assert ours == []
    assert len(theirs) == 1


def test_verify_true_client_still_verifies(https_server: Loopback, clients: List[RestClient],
                                           certificate: Tuple[Path, Path]) -> None:
    trusted = make(clients, https_server.url + "/v1/api", verify=str(certificate[0]), timeout=2.0)
    assert trusted.get("tickle") == {"ok": True}


def test_environment_ca_bundle_does_not_override_verify(
    https_server: Loopback, clients: List[RestClient], certificate: Tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import certifi  # a bundle that does not trust the self-signed certificate

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    monkeypatch.setenv("CURL_CA_BUNDLE", certifi.where())
    url = https_server.url + "/v1/api/tickle"
    # The trap: a session's own verify=False loses to the environment.
    with requests.Session() as session:
        session.verify = False
        with pytest.raises(requests.exceptions.SSLError):
            session.get(url, timeout=2.0)
    insecure = make(clients, https_server.url + "/v1/api", verify=False, timeout=2.0)
    assert insecure.get("tickle") == {"ok": True}
    pinned = make(clients, https_server.url + "/v1/api", verify=str(certificate[0]), timeout=2.0)
    assert pinned.get("tickle") == {"ok": True}
    # verify=True follows the environment's bundle, which does not trust this server.
    strict = make(clients, https_server.url + "/v1/api", timeout=2.0)
    assert "TLS certificate verification failed" in str(failure(strict, "GET", "tickle"))


# ---------------------------------------------------------------- secrets
def test_secrets_never_reach_messages(clients: List[RestClient]) -> None:
    redactor = Redactor()
    redactor.add(SECRET)
    client = make(clients, "http://127.0.0.1:1/v1", redactor=redactor, timeout=2.0)
    error = failure(client, "GET", f"portfolio/{SECRET}/positions")
    assert str(error) == "GET portfolio/***/positions failed: connection refused (http://127.0.0.1:1/v1/portfolio/***/positions)"
    # The original exception names the secret, so it is not chained.
    assert error.__cause__ is None and error.__suppress_context__
    error = failure(client, "GET", "x", url=f"http://127.0.0.1:1/auth/{SECRET}?sig={SECRET}")
    assert SECRET not in str(error)
    assert error.__cause__ is None
    # Without a secret in it the cause is kept.
    assert isinstance(failure(client, "GET", "tickle").__cause__, requests.ConnectionError)


def test_secret_in_the_host_is_redacted_from_the_dns_message(clients: List[RestClient]) -> None:
    host_secret = "tenant-7f3k2q9z"  # some gateways put a per-user id in the host name
    redactor = Redactor()
    redactor.add(host_secret)
    client = make(clients, f"https://{host_secret}.invalid/v1", redactor=redactor, timeout=2.0)
    error = failure(client, "GET", "tickle")
    assert host_secret not in str(error)
    assert "DNS lookup failed for host '***.invalid'" in str(error)
    assert error.__cause__ is None


def test_http_error_body_secrets_are_redacted(http_server: Loopback, clients: List[RestClient]) -> None:
    redactor = Redactor()
    redactor.add(SECRET)
    http_server.route("/auth", status=401, body=f'session {SECRET} expired'.encode())
    client = make(clients, http_server.url, redactor=redactor, timeout=2.0)
    with pytest.raises(AuthenticationError) as info:
        client.get("auth")
    assert str(info.value) == "GET auth returned HTTP 401: session *** expired"


# ---------------------------------------------------------------- Retry-After
@pytest.mark.parametrize(
    "header, expected",
    [("inf", RETRY_AFTER_CEILING), ("nan", None), ("-5", 0.0), ("12", 12.0), ("1e10", RETRY_AFTER_CEILING),
     ("soon", None)],
)
def test_429_retry_after_never_raises(http_server: Loopback, clients: List[RestClient],
                                      header: str, expected: Optional[float]) -> None:
    http_server.route("/orders", status=429, body=b'{"message": "slow down"}', headers={"Retry-After": header})
    client = make(clients, http_server.url, timeout=2.0)
    with pytest.raises(RateLimited) as info:
        client.get("orders")
    assert info.value.retry_after == expected
    assert info.value.status == 429
    assert str(info.value).startswith("GET orders returned HTTP 429")


def test_429_retry_after_http_date(http_server: Loopback, clients: List[RestClient]) -> None:
    when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=120)
    http_server.route("/orders", status=429, headers={"Retry-After": format_datetime(when, usegmt=True)})
    client = make(clients, http_server.url, timeout=2.0)
    with pytest.raises(RateLimited) as info:
        client.get("orders")
    assert info.value.retry_after is not None and 100.0 < info.value.retry_after <= 120.0


def test_429_without_retry_after(http_server: Loopback, clients: List[RestClient]) -> None:
    http_server.route("/orders", status=429)
    client = make(clients, http_server.url, timeout=2.0)
    with pytest.raises(RateLimited) as info:
        client.get("orders")
    assert info.value.retry_after is None


def test_503_with_retry_after_is_rate_limited(http_server: Loopback, clients: List[RestClient]) -> None:
    http_server.route("/orders", status=503, body=b"maintenance", headers={"Retry-After": "7"})
    client = make(clients, http_server.url, timeout=2.0)
    with pytest.raises(RateLimited) as info:
        client.get("orders")
    assert (info.value.retry_after, info.value.status) == (7.0, 503)
    assert str(info.value) == "GET orders returned HTTP 503: maintenance"


def test_503_without_retry_after_is_a_connection_failure(http_server: Loopback, clients: List[RestClient]) -> None:
    http_server.route("/orders", status=503, body=b"maintenance")
    client = make(clients, http_server.url, timeout=2.0)
    error = failure(client, "GET", "orders")
    assert not isinstance(error, RateLimited)
    assert error.status == 503


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.timeout(30)
def test_abort_cuts_a_call_blocked_in_another_thread_and_later_calls_work(
        scheme: str, http_server: Loopback, https_server: Loopback, clients: List[RestClient]) -> None:
    """``requests`` has no cancel: abort() shuts the calls' sockets down (plain and TLS),
    so the blocked call fails at once with a clear error, and the next call reconnects."""
    server = http_server if scheme == "http" else https_server
    server.route("/v1/api/slow", delay=20.0)
    server.route("/v1/api/fast")
    client = make(clients, server.url + "/v1/api", verify=False, timeout=25.0)
    assert client.get("fast") == {"ok": True}  # a pooled connection exists too
    outcome: List[BaseException] = []
    caller = threading.Thread(target=lambda: outcome.append(failure(client, "GET", "slow")), daemon=True)
    caller.start()
    time.sleep(0.3)  # the call is in flight
    assert caller.is_alive()
    client.abort()
    caller.join(5.0)
    assert not caller.is_alive(), "abort() did not end the call"
    assert len(outcome) == 1 and isinstance(outcome[0], ConnectionFailed)
    assert "GET slow failed: cut short by abort() (stopping)" in str(outcome[0])
    assert client.get("fast") == {"ok": True}  # new connections after the abort
