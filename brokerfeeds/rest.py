"""The REST side of a feed: one ``requests.Session`` with timeouts and clear errors."""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import weakref
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union
from urllib.parse import urlsplit, urlunsplit

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util.ssl_ import resolve_cert_reqs

from .errors import AuthenticationError, ConnectionFailed, ProtocolError, RateLimited
from .reconnect import parse_retry_after
from .redact import Redactor

__all__ = ["RestClient"]

ErrorText = Callable[[Any], Optional[str]]

_TLS_HINT = (
    "pass verify=False for a self-signed gateway certificate, "
    "or verify='/path/to/ca-bundle.pem'"
)


class _QuietHTTPSConnectionPool(HTTPSConnectionPool):
    """An HTTPS pool that skips urllib3's ``InsecureRequestWarning`` when it was created
    with certificate verification off (``verify=False``, a deliberate choice the feed
    already warns about once), instead of warning on every request.

    Any other pool behaves exactly like urllib3's. This replaces a warning filter, which
    would be process-wide and not thread-safe.
    """

    def __str__(self) -> str:
        # urllib3 puts the pool into exception texts: keep them as they would read stock.
        return f"HTTPSConnectionPool(host={self.host!r}, port={self.port!r})"

    def _validate_conn(self, conn: Any) -> None:
        if resolve_cert_reqs(self.cert_reqs) != ssl.CERT_NONE:
            super()._validate_conn(conn)
            return
        # HTTPSConnectionPool._validate_conn without its warning: the base hook, then
        # connect early (urllib3 2 exposes ``is_closed``; 1.26 leaves ``sock`` unset).
        HTTPConnectionPool._validate_conn(self, conn)
        closed = getattr(conn, "is_closed", None)
        if closed is None:
            closed = getattr(conn, "sock", None) is None
        if closed:
            conn.connect()


def _tracking(pool_class: type, adapter: "_Adapter") -> type:
    """A subclass of ``pool_class`` that tells ``adapter`` of every connection it makes."""

    def _new_conn(self: Any) -> Any:
        conn = pool_class._new_conn(self)  # type: ignore[attr-defined]
        adapter.remember(conn)
        return conn

    return type(pool_class.__name__, (pool_class,), {"_new_conn": _new_conn, "__module__": __name__})


class _Adapter(HTTPAdapter):
    """``HTTPAdapter`` whose pools do not repeat the unverified-HTTPS warning and remember
    their connections, so that :meth:`abort` can cut a call blocked in another thread."""

    def __init__(self) -> None:
        self._connections: "weakref.WeakSet[Any]" = weakref.WeakSet()
        self._connections_lock = threading.Lock()  # a WeakSet must not grow while abort() copies it
        super().__init__()

    def remember(self, conn: Any) -> None:
        """Called by the pools for every connection they make (any thread)."""
        with self._connections_lock:
            self._connections.add(conn)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self._use_own_pools(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        self._use_own_pools(manager)
        return manager

    def _use_own_pools(self, manager: Any) -> None:
        classes = getattr(manager, "pool_classes_by_scheme", None)
        # SOCKS proxy managers use their own pool classes: leave those alone.
        if isinstance(classes, dict) and classes.get("https") is HTTPSConnectionPool \
                and classes.get("http") is HTTPConnectionPool:
            manager.pool_classes_by_scheme = {
                **classes,
                "http": _tracking(HTTPConnectionPool, self),
                "https": _tracking(_QuietHTTPSConnectionPool, self),
            }

    def abort(self) -> int:
        """Shut down the socket of every connection made so far (in use or pooled): a
        call blocked on one, in any thread, fails at once. Returns how many were cut."""
        with self._connections_lock:
            connections = list(self._connections)
        cut = 0
        for conn in connections:
            sock = getattr(conn, "sock", None)
            if sock is None:
                continue
            try:
                # socket.socket's own shutdown, also for an SSLSocket: its override drops
                # the SSL object that a read blocked in another thread is still using.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
                cut += 1
            except OSError:
                pass  # already closed
        return cut


class RestClient:
    """Calls a broker's REST API under ``base_url`` and returns decoded JSON.

    HTTP 401/403 raise :class:`AuthenticationError` (``status`` set); 429, and 503 with a
    ``Retry-After`` header, :class:`RateLimited` (``retry_after`` in seconds, from a
    number or an HTTP date); other failures :class:`ConnectionFailed` (``status`` set for
    HTTP errors); undecodable bodies :class:`ProtocolError`. Network failures name the
    cause (connection refused, DNS, timeout, TLS certificate) and the URL (redacted, its
    query shown as ``?...``). ``error_text`` pulls the broker's own explanation out of an
    error body for the message. Messages are redacted.

    ``verify`` (True, False, or a CA bundle path) is passed on every request, so
    ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE`` in the environment cannot override
    ``verify=False`` or an explicit bundle (they still apply when ``verify`` is True).
    With ``verify=False`` urllib3's ``InsecureRequestWarning`` is not repeated on every
    request of this client (the feed warns once itself); other sessions are unaffected.
    """

    def __init__(
        self,
        base_url: str,
        *,
        verify: Union[bool, str] = True,
        timeout: float = 10.0,
        redactor: Optional[Redactor] = None,
        error_text: Optional[ErrorText] = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.verify = verify
        self.timeout = timeout
        self._redactor = redactor or Redactor()
        self._error_text = error_text
        self.session = requests.Session()
        self.session.verify = verify
        self._aborts = 0  # abort() calls so far: a call that saw one failed because of it
        self._adapter = _Adapter()
        self.session.mount("https://", self._adapter)
        self.session.mount("http://", self._adapter)
        self.session.headers["User-Agent"] = "brokerfeeds"

    def __repr__(self) -> str:
        return f"RestClient({self.base_url!r})"

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Optional[Dict[str, Any]] = None,
        json: Any = None,
        headers: Optional[Dict[str, str]] = None,
        url: Optional[str] = None,
    ) -> Any:
        """Send one request (``path`` under ``base_url``, or an absolute ``url``)."""
        target = url or f"{self.base_url}/{path.lstrip('/')}"
        what = f"{method} {path if url is None else 'auth endpoint'}"
        aborts = self._aborts
        try:
            response = self.session.request(
                method,
                target,
                params=params,
                json=json,
                headers=headers,
                timeout=self.timeout,
                verify=self.verify,
            )
        except requests.RequestException as exc:
            reason, detail = self._reason(exc, target)
            if self._aborts != aborts:
                reason, detail = "cut short by abort() (stopping)", None
            where = self._where(target, bool(params))
            suffix = f" ({where}; {detail})" if detail else f" ({where})"
            error = ConnectionFailed(self._redactor.redact(f"{what} failed: {reason}{suffix}"))
            raise error from (exc if self._clean(exc) else None)
        status = response.status_code
        if status >= 400:
            detail = self._detail(response)
            message = self._redactor.redact(f"{what} returned HTTP {status}{detail}")
            if status in (401, 403):
                refused = AuthenticationError(message)
                refused.status = status
                raise refused
            header = response.headers.get("Retry-After")
            if status == 429 or (status == 503 and header is not None):
                limited = RateLimited(message, parse_retry_after(header))
                limited.status = status
                raise limited
            error = ConnectionFailed(message)
            error.status = status
            raise error
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ProtocolError(self._redactor.redact(f"{what} returned a body that is not JSON")) from None

    def get(self, path: str, **kwargs: Any) -> Any:
        """``request("GET", path, ...)``."""
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        """``request("POST", path, ...)``."""
        return self.request("POST", path, **kwargs)

    def close(self) -> None:
        """Release pooled connections."""
        self.session.close()

    def abort(self) -> None:
        """Make every call in flight, in any thread, fail now (``ConnectionFailed``), as
        ``stop()`` needs: ``requests`` has no cancel, so the calls' sockets are shut down.
        (A call still opening its connection ends at its timeout.) Later calls open new
        connections."""
        self._aborts += 1
        self._adapter.abort()

    def _detail(self, response: requests.Response) -> str:
        text: Optional[str] = None
        try:
            body = response.json()
        except ValueError:
            body = response.text[:200]
        if self._error_text is not None:
            try:
                text = self._error_text(body)
            except Exception:  # noqa: BLE001 - a broken error body must not hide the status
                text = None
        if text is None and isinstance(body, str):
            text = " ".join(body.split())[:200] or None
        return f": {text}" if text else ""

    def _where(self, url: str, has_params: bool) -> str:
        """``url`` for a message: no credentials, no query values, redacted."""
        try:
            parts = urlsplit(url)
        except ValueError:
            return "an invalid URL"
        netloc = parts.netloc
        if "@" in netloc:
            netloc = "***@" + netloc.rpartition("@")[2]
        shown = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        if parts.query or has_params:
            shown += "?..."
        return self._redactor.redact(shown)

    def _clean(self, exc: BaseException) -> bool:
        """True when no exception in ``exc``'s chain has text the redactor would change."""
        for link in _chain(exc):
            try:
                text = str(link)
            except Exception:  # noqa: BLE001 - an unprintable exception cannot be vetted
                return False
            if self._redactor.redact(text) != text:
                return False
        return True

    def _reason(self, exc: requests.RequestException, url: str) -> Tuple[str, Optional[str]]:
        """Why a request failed, in words, and an optional detail (both safe to show)."""
        chain = list(_chain(exc))

        def found(*kinds: type) -> Optional[BaseException]:
            return next((link for link in chain if isinstance(link, kinds)), None)

        after = f"{self.timeout:g}s"
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            return f"timed out after {after} while connecting", None
        # Not urllib3's TimeoutError: its NewConnectionError (refused, DNS) subclasses it.
        if isinstance(exc, requests.Timeout) or found(urllib3.exceptions.ReadTimeoutError, socket.timeout):
            return f"timed out after {after}", None
        cert = found(ssl.SSLCertVerificationError)
        if cert is not None:
            why = getattr(cert, "verify_message", None) or getattr(cert, "reason", None)
            return f"TLS certificate verification failed; {_TLS_HINT}", (str(why) if why else None)
        tls = found(ssl.SSLError)
        if isinstance(exc, requests.exceptions.SSLError) or tls is not None:
            why = getattr(tls, "reason", None)
            return "TLS handshake failed", (str(why) if why else None)
        if isinstance(exc, requests.exceptions.ProxyError):
            return "could not connect through the proxy", _os_detail(chain)
        dns = found(socket.gaierror)
        if dns is not None or found(urllib3.exceptions.NameResolutionError):
            host = urlsplit(url).hostname or "?"
            return f"DNS lookup failed for host {host!r}", _os_detail(chain)
        if found(ConnectionRefusedError):
            return "connection refused", None
        if found(ConnectionResetError):
            return "connection reset by the server", None
        if found(http.client.RemoteDisconnected, ConnectionAbortedError, BrokenPipeError):
            return "the server closed the connection without a response", None
        if isinstance(exc, requests.TooManyRedirects):
            return "too many redirects", None
        if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                            requests.exceptions.InvalidSchema)):
            return "invalid URL", None
        if isinstance(exc, requests.exceptions.ChunkedEncodingError):
            return "the response body was cut off", None
        return f"network error ({type(exc).__name__})", _os_detail(chain)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it wraps: causes, contexts, urllib3 reasons, args."""
    seen = set()
    todo = [exc]
    while todo:
        link = todo.pop(0)
        if id(link) in seen:
            continue
        seen.add(id(link))
        yield link
        wrapped = [getattr(link, "reason", None), link.__cause__, link.__context__, *link.args]
        todo.extend(w for w in wrapped if isinstance(w, BaseException))


def _os_detail(chain: List[BaseException]) -> Optional[str]:
    """The operating system's words for the innermost OS error (never a URL)."""
    for link in reversed(chain):
        if isinstance(link, OSError) and link.strerror:
            return str(link.strerror)
    return None
