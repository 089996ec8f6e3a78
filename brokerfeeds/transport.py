"""The WebSocket transport: one blocking websocket-client connection per attempt.

websocket-client does the connect (TCP, TLS options, headers, cookie) and the HTTP
upgrade, and serialises sends from any thread. Incoming frames are parsed here, from one
buffer filled by large socket reads (websocket-client reads every frame with 2-3 small
recv calls): that parser is why the feed's throughput is close to a bare loop. It checks
what RFC 6455 requires of a client and bounds the size of a message.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import ssl
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple, Union
from urllib.parse import urlsplit, urlunsplit

import attrs
import websocket

from .errors import AuthenticationError, BrokerFeedsError, ConnectionFailed, ProtocolError, RateLimited
from .reconnect import parse_retry_after

__all__ = [
    "ConnectTarget",
    "Connection",
    "Closed",
    "ssl_options",
    "check_ws_url",
    "FRAME_TEXT",
    "FRAME_BINARY",
    "DEFAULT_MAX_MESSAGE_SIZE",
]

FRAME_TEXT: int = websocket.ABNF.OPCODE_TEXT
FRAME_BINARY: int = websocket.ABNF.OPCODE_BINARY
_CONT = 0x0
_CLOSE = 0x8
_PING = 0x9
_PONG = 0xA
_READ_SIZE = 256 * 1024

#: The largest message :class:`Connection` accepts unless told otherwise (16 MiB).
DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024

# Close codes (RFC 6455 section 7.4.1) we send when the server breaks the protocol.
_PROTOCOL_ERROR = 1002
_TOO_BIG = 1009

_CLOSE_WAIT = 0.5  # how long close() waits for the server's close frame
_RETRY_AFTER_MAX = 3600.0
_POLL = 0.05  # a TCP connect in progress looks at abort() this often (Linux wakes at once)
_IN_PROGRESS = {errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY, getattr(errno, "WSAEWOULDBLOCK", -1)}
# websocket-client's defaults for the sockets it creates (it no longer creates ours).
_SOCKET_OPTIONS: List[Tuple[int, int, int]] = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
if hasattr(socket, "SO_KEEPALIVE"):
    _SOCKET_OPTIONS.append((socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1))
for _name, _value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
    if hasattr(socket, _name):
        _SOCKET_OPTIONS.append((socket.IPPROTO_TCP, getattr(socket, _name), _value))

_monotonic = time.monotonic


@attrs.frozen(slots=True)
class ConnectTarget:
    """Where and how to open one connection. ``url`` may hold a secret: never log it raw."""

    url: str
    headers: Tuple[str, ...] = ()
    cookie: Optional[str] = attrs.field(default=None, repr=False)


class Closed(Exception):
    """The connection ended; ``reason`` says how (close code, error, ...).

    ``code`` is the close code: the server's, or the one we sent when the server broke
    the protocol. ``error`` is a :class:`~brokerfeeds.errors.ProtocolError` describing
    that violation, else None.
    """

    def __init__(self, reason: str, code: Optional[int] = None, error: Optional[ProtocolError] = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.error = error


class _Violation(Exception):
    """The server broke RFC 6455; ``code`` is the close code to answer with."""

    def __init__(self, message: str, code: int = _PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class _Lost(Exception):
    """The peer closed the TCP connection (or the socket is gone)."""


class _Interrupted(Exception):
    """abort() was called, or the connect deadline passed, while connecting."""


def ssl_options(verify: Union[bool, str]) -> Dict[str, Any]:
    """websocket-client ``sslopt`` for ``verify`` (True, False, or a CA bundle path)."""
    if verify is False:
        return {"cert_reqs": ssl.CERT_NONE, "check_hostname": False}
    if verify is True:
        return {"cert_reqs": ssl.CERT_REQUIRED}
    return {"cert_reqs": ssl.CERT_REQUIRED, "ca_certs": str(verify)}


def check_ws_url(url: str) -> None:
    """Raise ValueError unless ``url`` is a ``ws://`` or ``wss://`` URL with a host.

    The message never repeats the URL (it may carry a one-time code or a token).
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except (TypeError, ValueError, AttributeError):
        raise ValueError("invalid WebSocket URL (cannot be parsed, or its port is not a number)") from None
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss"):
        shown = f"{scheme}://" if scheme else "no scheme"
        raise ValueError(f"WebSocket URL must start with ws:// or wss://, not {shown}")
    if not parts.hostname:
        raise ValueError(f"WebSocket URL has no host ({scheme}://<host>[:port]/path expected)")
    if port == 0:
        raise ValueError("WebSocket URL has port 0")


class Connection:
    """An open WebSocket connection.

    ``recv`` must be called from one thread at a time (the feed's reader); ``send``,
    ``ping``, ``abort`` and ``close`` may come from any thread.
    """

    def __init__(self, ws: websocket.WebSocket, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        if max_message_size < 1:
            raise ValueError(f"max_message_size must be positive, not {max_message_size}")
        self._ws = ws
        self._max_size = max_message_size
        self._timeout: Optional[float] = None
        # The receive buffer: bytes before _pos are consumed; compacted in _fill.
        self._buf = bytearray()
        self._pos = 0
        # The decoded header of the next frame (_end < 0: not decoded yet): first byte,
        # payload start and end (offsets into _buf), and whether the payload is masked.
        self._end = -1
        self._start = 0
        self._b0 = 0
        self._masked = False
        # A fragmented message in progress.
        self._fragments: Optional[List[bytes]] = None
        self._fragment_opcode = 0
        self._fragment_size = 0
        self._close_sent = False
        self._ended: Optional[Closed] = None
        # recv's time limit: when the current call gives up (< 0: the clock is read at the
        # first socket read it needs), and the timeout it was given.
        self._deadline = -1.0
        self._wait = 0.0
        # abort() from any thread: the lock orders it against closing the socket (a closed
        # descriptor's number may be reused at once). While connecting, _pending is the
        # socket being set up (before websocket-client holds it as ws.sock), _interrupted
        # is sticky (abort() before any socket exists still stops the connect) and _wake
        # ends the wait for a name lookup.
        self._lock = threading.Lock()
        self._pending: Optional[socket.socket] = None
        self._interrupted = False
        self._aborted = False
        self._wake = threading.Event()

    @classmethod
    def open(
        cls,
        target: ConnectTarget,
        *,
        timeout: float,
        verify: Union[bool, str],
        started: Optional[Callable[["Connection"], None]] = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        redact: Optional[Callable[[str], str]] = None,
    ) -> "Connection":
        """Connect and complete the handshake within ``timeout`` seconds, or raise.

        Raises :class:`AuthenticationError` for a 401/403 handshake answer,
        :class:`RateLimited` for 429 (or 503 with a Retry-After), :class:`ConnectionFailed`
        for anything else (redirects are not followed). Messages name the URL passed
        through ``redact`` and without its query string (it may carry a one-time code).
        ``started`` receives the connection before anything else happens, so another
        thread can :meth:`abort` the connect at any stage: the name lookup, the TCP
        connect, TLS, the upgrade (the connect then fails with "aborted").
        """
        shown = _shown_url(target.url, redact)
        try:
            check_ws_url(target.url)
        except ValueError as exc:
            raise ConnectionFailed(f"connect to {shown} failed: {exc}") from None
        sslopt = ssl_options(verify)
        # The TLS handshake runs on the first send (the upgrade request), not in
        # wrap_socket: the socket is registered by then, so abort() (stop(), or the
        # deadline below) can interrupt it too.
        sslopt["do_handshake_on_connect"] = False
        ws = websocket.WebSocket(sslopt=sslopt, skip_utf8_validation=True, enable_multithread=True)
        conn = cls(ws, max_message_size=max_message_size)
        if started is not None:
            started(conn)
        options: Dict[str, Any] = {"timeout": timeout, "header": list(target.headers), "redirect_limit": 0}
        if target.cookie is not None:
            options["cookie"] = target.cookie
        end = _monotonic() + timeout
        deadline = _Deadline(conn, timeout)
        try:
            try:
                if conn._interrupted:
                    raise _Interrupted()
                if not _proxied(target.url):
                    # Our own socket, connected here: websocket-client would create it
                    # inside ws.connect, out of abort()'s reach until TCP is established.
                    options["socket"] = conn._connect(target.url, sslopt, end)
                ws.connect(target.url, **options)
            finally:
                expired = deadline.finish()
                with conn._lock:
                    conn._pending = None  # ws.sock from now on (or nothing: the connect failed)
            if expired:
                raise socket.timeout("connect deadline passed")
            # websocket-client before 1.9 returns a 3xx answer as a success when
            # redirect_limit is 0 (1.9 raises "Redirect limit exhausted").
            answered = getattr(ws.handshake_response, "status", None)
            if isinstance(answered, int) and 300 <= answered < 400:
                raise websocket.WebSocketException(f"redirect (HTTP {answered}) not followed")
            # The parser reads ws.sock directly: nothing past the handshake may sit in
            # websocket-client's buffer (1.x reads the response headers byte by byte).
            if getattr(getattr(ws, "frame_buffer", None), "recv_buffer", None):
                raise websocket.WebSocketException("websocket-client buffered data past the handshake")
        except Exception as exc:
            conn._release(options.get("socket"))
            if conn._aborted and not deadline.expired:
                raise ConnectionFailed(f"connect to {shown} failed: aborted") from None
            error = _connect_error(exc, ws, target.url, shown, timeout, expired=deadline.expired, redact=redact)
            if _safe_cause(exc, target.url, redact):
                raise error from exc
            raise error from None
        return conn

    def _connect(self, url: str, sslopt: Dict[str, Any], end: float) -> socket.socket:
        """A TCP (and, for wss, TLS-wrapped) socket to ``url``'s host, connected by ``end``.

        Every address of the host is tried in turn, as ``socket.create_connection`` does.
        The socket is registered (``_pending``) before it connects, so :meth:`abort`
        interrupts the connect at once; the TLS handshake is left to the first send.
        """
        parts = urlsplit(url)
        secure = parts.scheme.lower() == "wss"
        host = parts.hostname or ""
        port = parts.port or (443 if secure else 80)
        context = _tls_context(sslopt) if secure else None  # a bad CA bundle fails before connecting
        error: Optional[OSError] = None
        for family, kind, proto, _, address in self._resolve(host, port, end):
            sock = socket.socket(family, kind, proto)
            try:
                self._register(sock)
                for option in _SOCKET_OPTIONS:
                    try:
                        sock.setsockopt(*option)
                    except OSError:
                        pass  # an option this system lacks: keep-alive is a bonus
                sock.setblocking(False)
                code = sock.connect_ex(address)
                if code in _IN_PROGRESS:
                    self._connected(sock, end)
                elif code:
                    raise OSError(code, os.strerror(code))
                remaining = end - _monotonic()
                if remaining <= 0:
                    raise socket.timeout("timed out")
                sock.settimeout(remaining)  # each read of the upgrade (the deadline bounds the whole)
                if context is None:
                    return sock
                wrapped = context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False,
                                              suppress_ragged_eofs=True)
                try:
                    self._register(wrapped)  # sock is detached: the wrapper owns the descriptor now
                except BaseException:
                    self._release(wrapped)
                    raise
                return wrapped
            except (_Interrupted, socket.timeout, ssl.SSLError):
                self._release(sock)
                raise
            except OSError as exc:
                self._release(sock)
                if self._interrupted:
                    raise _Interrupted() from None
                error = exc
            except BaseException:
                self._release(sock)
                raise
        raise error if error is not None else socket.gaierror(socket.EAI_NONAME, "no address found")

    def _register(self, sock: socket.socket) -> None:
        """Make ``sock`` the one abort() shuts down; raises _Interrupted if abort() came first."""
        with self._lock:
            self._pending = sock
            if self._interrupted:
                raise _Interrupted()

    def _connected(self, sock: socket.socket, end: float) -> None:
        """Wait for a non-blocking TCP connect, until ``end`` or abort(); raises if it failed."""
        poller = select.poll() if hasattr(select, "poll") else None
        if poller is not None:
            poller.register(sock, select.POLLOUT)
        while True:
            if self._interrupted:
                raise _Interrupted()
            remaining = end - _monotonic()
            if remaining <= 0:
                raise socket.timeout("timed out")
            wait = min(remaining, _POLL)
            if poller is not None:
                ready = bool(poller.poll(max(1, int(wait * 1000))))
            else:  # Windows: a failed connect shows in the exception set
                _, writable, failed = select.select([], [sock], [sock], wait)
                ready = bool(writable or failed)
            if ready:
                break
        if self._interrupted:
            raise _Interrupted()
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            raise OSError(code, os.strerror(code))

    def _resolve(self, host: str, port: int, end: float) -> List[Tuple[Any, ...]]:
        """The addresses of ``host``; a name is looked up in a helper thread, so that
        abort() and the deadline are not held up by a slow resolver."""
        try:
            return socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, socket.IPPROTO_TCP,
                                      socket.AI_NUMERICHOST)
        except socket.gaierror:
            pass  # not an IP address
        answer: List[Any] = []
        wake = self._wake

        def lookup() -> None:
            try:
                answer.append(socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, socket.IPPROTO_TCP))
            except BaseException as exc:  # noqa: BLE001 - handed to the connecting thread
                answer.append(exc)
            finally:
                wake.set()

        thread = threading.Thread(target=lookup, name="ws-resolve", daemon=True)
        thread.start()
        while not answer:
            if self._interrupted:
                raise _Interrupted()
            remaining = end - _monotonic()
            if remaining <= 0:
                raise socket.timeout("timed out")
            wake.wait(remaining)
            wake.clear()  # abort() sets it too, and _interrupted says so
        thread.join()  # it has answered: ending
        found = answer[0]
        if isinstance(found, BaseException):
            raise found
        return list(found)

    def _release(self, sock: Optional[socket.socket]) -> None:
        """Close a socket of a failed connect and websocket-client's, ordered against abort()."""
        with self._lock:
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass
            if self._pending is sock:
                self._pending = None
            self._ws.shutdown()

    def recv(self, timeout: float) -> Optional[Tuple[int, bytes]]:
        """The next frame as ``(opcode, data)``, or None if ``timeout`` passed first.

        ``timeout`` bounds the whole call, however bytes arrive: a frame trickled byte by
        byte makes it return None on time (the bytes are kept for the next call), so the
        caller decides liveness on whole frames. Pings are answered here and returned
        too, as are pongs, so the caller sees every sign of life. Fragmented messages are
        joined. Raises :class:`Closed` when the connection ends, with ``error`` set when
        the server broke the protocol.
        """
        if self._ended is not None:
            ended = self._ended
            raise Closed(ended.reason, ended.code, ended.error)
        # The clock starts at the first socket read this call needs (_fill): returning a
        # buffered frame costs no system call.
        self._deadline = -1.0
        self._wait = timeout
        try:
            while True:
                frame = self._frame()
                if frame is None:
                    return None
                b0, data = frame
                opcode = b0 & 0x0F
                # _decode already checked the opcode against the fragmentation state.
                if opcode == FRAME_TEXT or opcode == FRAME_BINARY:
                    if b0 & 0x80:
                        return opcode, data
                    self._fragments = [data]
                    self._fragment_opcode = opcode
                    self._fragment_size = len(data)
                elif opcode == _CONT:
                    fragments = self._fragments
                    assert fragments is not None
                    fragments.append(data)
                    self._fragment_size += len(data)
                    if b0 & 0x80:
                        self._fragments = None
                        self._fragment_size = 0
                        return self._fragment_opcode, b"".join(fragments)
                elif opcode == _PING:
                    self._ws.send(data, _PONG)
                    return opcode, data
                elif opcode == _PONG:
                    return opcode, data
                else:
                    self._server_closed(data)
        except Closed:
            raise
        except _Violation as violation:
            raise self._violated(violation) from None
        except socket.timeout:
            return None
        except _Lost:
            raise self._end_with(Closed("connection closed by peer")) from None
        except (OSError, websocket.WebSocketException, ValueError) as exc:
            raise Closed(f"{type(exc).__name__}: {_short_exc(exc)}") from None

    @property
    def buffered(self) -> bool:
        """Whether a whole frame is already buffered (the next :meth:`recv` will not block)."""
        if self._end < 0:
            try:
                if not self._decode():
                    return False
            except _Violation:
                return True  # the next recv fails at once
        return self._end <= len(self._buf)

    def _frame(self) -> Optional[Tuple[int, bytes]]:
        """``(first header byte, payload)`` of the next frame, reading as needed; None on timeout."""
        while True:
            end = self._end
            if end < 0:
                if not self._decode():
                    if not self._fill():
                        return None
                    continue
                end = self._end
            buf = self._buf
            if end > len(buf):
                if not self._fill():
                    return None
                continue
            start = self._start
            data = bytes(buf[start:end])
            if self._masked:
                data = websocket.ABNF.mask(bytes(buf[start - 4:start]), data)
            self._pos = end
            self._end = -1
            return self._b0, data

    def _decode(self) -> bool:
        """Decode and check the header at the read position; False if not all of it is here.

        Fails (raises _Violation) as soon as the header shows a violation, before any of
        the payload is buffered: a header announcing 2**62 bytes costs nothing.
        """
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if avail < 2:
            return False
        b0 = buf[pos]
        b1 = buf[pos + 1]
        if b0 & 0x70:  # RFC 6455 section 5.2: no extension negotiated, so RSV1-3 must be 0
            raise _Violation(f"frame with reserved bits set (0x{b0 & 0x70:02x}) but no extension negotiated")
        opcode = b0 & 0x0F
        length = b1 & 0x7F
        head = 2
        if opcode >= _CLOSE:  # control frame, RFC 6455 section 5.5
            if opcode > _PONG:
                raise _Violation(f"frame with reserved opcode 0x{opcode:X}")
            if not b0 & 0x80:
                raise _Violation(f"fragmented control frame (opcode 0x{opcode:X})")
            if length > 125:
                raise _Violation(f"control frame (opcode 0x{opcode:X}) with a payload over 125 bytes")
            if length == 1 and opcode == _CLOSE:  # section 5.5.1: a close body starts with a 2-byte code
                raise _Violation("close frame with a 1-byte payload")
        else:
            if opcode == _CONT:
                if self._fragments is None:
                    raise _Violation("continuation frame without a fragmented message in progress")
            elif opcode > FRAME_BINARY:
                raise _Violation(f"frame with reserved opcode 0x{opcode:X}")
            elif self._fragments is not None:  # section 5.4: fragments are not interleaved
                raise _Violation("new data frame while a fragmented message is in progress")
            if length >= 126:
                # Section 5.2: the minimal number of bytes must be used to encode the length.
                if length == 126:
                    if avail < 4:
                        return False
                    length = (buf[pos + 2] << 8) | buf[pos + 3]
                    if length < 126:
                        raise _Violation(f"non-minimal length encoding (16-bit length {length})")
                    head = 4
                else:
                    if avail < 10:
                        return False
                    length = int.from_bytes(buf[pos + 2:pos + 10], "big")
                    if length >> 63:
                        raise _Violation("64-bit frame length with the most significant bit set")
                    if length < 0x10000:
                        raise _Violation(f"non-minimal length encoding (64-bit length {length})")
                    head = 10
            if length > self._max_size - self._fragment_size:
                if opcode == _CONT:
                    raise _Violation(
                        f"fragmented message of {self._fragment_size + length} bytes exceeds "
                        f"max_message_size ({self._max_size})", _TOO_BIG)
                raise _Violation(f"frame of {length} bytes exceeds max_message_size ({self._max_size})", _TOO_BIG)
        # Section 5.1: a server must not mask its frames. websocket-client tolerates it,
        # and so do we (unmasking the payload).
        self._masked = bool(b1 & 0x80)
        if self._masked:
            head += 4
        self._b0 = b0
        self._start = pos + head
        self._end = pos + head + length
        return True

    def _fill(self) -> bool:
        """Append what the socket has (up to 256 KiB) to the buffer; False on timeout.

        Waits at most until recv's deadline (set here, at the first read of the call).
        """
        sock = self._ws.sock
        if sock is None:
            raise _Lost()
        deadline = self._deadline
        if deadline < 0:
            wait = self._wait
            if not wait > 0:
                wait = 0.001  # a zero or negative timeout: look once, briefly
            self._deadline = _monotonic() + wait
        else:
            wait = deadline - _monotonic()
            if wait <= 0:
                return False
        if wait != self._timeout:
            sock.settimeout(wait)
            self._timeout = wait
        try:
            data = sock.recv(_READ_SIZE)
        except ssl.SSLWantReadError:
            return False
        if not data:
            raise _Lost()
        buf = self._buf
        pos = self._pos
        # Compact once the consumed part is at least half of the buffer: every byte is
        # then moved a bounded number of times, so filling stays linear in the stream.
        if pos and pos << 1 >= len(buf):
            del buf[:pos]
            self._pos = 0
            if self._end >= 0:
                self._end -= pos
                self._start -= pos
        buf += data
        return True

    def _server_closed(self, data: bytes) -> None:
        """Answer the server's close frame (RFC 6455 section 5.5.1) and raise Closed."""
        code: Optional[int] = None
        if len(data) >= 2:
            code = (data[0] << 8) | data[1]
            if not _valid_close_code(code):
                raise _Violation(f"close frame with invalid code {code}")
        if not self._close_sent:
            self._close_sent = True
            try:
                self._ws.send(data[:2], _CLOSE)  # echo the code, as endpoints typically do
            except Exception:  # noqa: BLE001 - the peer may be gone already
                pass
        raise self._end_with(Closed(f"server closed the connection (code {code})", code))

    def _violated(self, violation: _Violation) -> Closed:
        """Close (best effort) with the violation's code, shut the socket, and the Closed to raise."""
        if not self._close_sent:
            self._close_sent = True
            try:
                self._ws.send(violation.code.to_bytes(2, "big"), _CLOSE)
            except Exception:  # noqa: BLE001 - best effort: the socket goes down anyway
                pass
        self.abort()
        error = ProtocolError(violation.message)
        return self._end_with(Closed(f"protocol error: {violation.message}", violation.code, error))

    def _end_with(self, closed: Closed) -> Closed:
        self._ended = closed
        return closed

    def send(self, frame: Union[str, bytes]) -> None:
        """Send a text (``str``) or binary (``bytes``) frame; raises :class:`Closed`."""
        try:
            self._ws.send(frame, FRAME_BINARY if isinstance(frame, bytes) else FRAME_TEXT)
        except (OSError, websocket.WebSocketException, ValueError) as exc:
            raise Closed(f"send failed: {type(exc).__name__}") from None

    def ping(self, payload: bytes = b"") -> None:
        """Send a WebSocket ping; raises :class:`Closed`."""
        try:
            self._ws.send(payload, _PING)
        except (OSError, websocket.WebSocketException, ValueError) as exc:
            raise Closed(f"ping failed: {type(exc).__name__}") from None

    def close(self, status: int = 1000) -> None:
        """Send a close frame with ``status``, wait briefly for the server's, release the socket.

        Best effort, and safe to call twice. It reads the server's answer, so call it from
        the thread that calls :meth:`recv` (or once that thread is done); to wake a thread
        blocked in :meth:`recv` from another one, use :meth:`abort`.
        """
        ws = self._ws
        try:
            if ws.connected and not self._close_sent and self._ended is None:
                self._close_sent = True
                ws.send(status.to_bytes(2, "big"), _CLOSE)
                deadline = time.monotonic() + _CLOSE_WAIT
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self.recv(max(0.01, remaining))  # until Closed: the server's close frame
        except Exception:  # noqa: BLE001 - closing is best-effort
            pass
        finally:
            with self._lock:
                ws.shutdown()

    def abort(self) -> None:
        """Wake a thread blocked in :meth:`recv`, or stop a connect at any stage (name
        lookup, TCP connect, TLS, upgrade; also one not begun yet), from any thread."""
        self._interrupt(aborted=True)

    def _interrupt(self, aborted: bool = False) -> bool:
        """Stop a connect in progress and shut the socket down; False if there is no socket (yet, or any more)."""
        with self._lock:
            if aborted:
                self._aborted = True
            self._interrupted = True
            self._wake.set()
            sock = self._ws.sock or self._pending
            if sock is None:
                return False
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except (OSError, AttributeError):
                pass  # already closed, or not connected yet
            return True


class _Deadline:
    """Aborts a connect still running ``timeout`` seconds after it began.

    Socket timeouts bound each read, not the whole: a server answering one byte a second
    would otherwise hold the handshake forever. The thread ends when :meth:`finish` is
    called (open() always calls it), and is a daemon in any case.
    """

    def __init__(self, conn: Connection, timeout: float) -> None:
        self._conn = conn
        self._timeout = timeout
        self._done = threading.Event()
        self._lock = threading.Lock()
        self.expired = False
        self._thread: Optional[threading.Thread] = None
        if timeout is not None and timeout > 0:
            self._thread = threading.Thread(target=self._run, name="ws-connect-deadline", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        if self._done.wait(self._timeout):
            return
        while True:
            with self._lock:
                if self._done.is_set():
                    return
                self.expired = True
                # Our own connect stops at once (it watches the flag _interrupt sets); a
                # connect through a proxy has no socket to shut down until websocket-client
                # has connected (that step is bounded by the socket timeout): look again shortly.
                if self._conn._interrupt():
                    return
            if self._done.wait(0.02):
                return

    def finish(self) -> bool:
        """Stop watching; whether the deadline passed (and the socket was shut down)."""
        with self._lock:
            self._done.set()
        if self._thread is not None:
            self._thread.join()
        return self.expired


def _proxied(url: str) -> bool:
    """Whether websocket-client would connect to ``url`` through a proxy (``http_proxy`` /
    ``https_proxy`` in the environment, minus ``no_proxy``): it then makes the connection."""
    try:
        from websocket._url import get_proxy_info
    except ImportError:  # pragma: no cover - present in every websocket-client 1.x
        return False
    try:
        parts = urlsplit(url)
        proxy_host = get_proxy_info(parts.hostname or "", parts.scheme.lower() == "wss")[0]
    except Exception:  # noqa: BLE001 - a malformed proxy setting: websocket-client reports it
        return True
    return bool(proxy_host)


def _tls_context(sslopt: Dict[str, Any]) -> ssl.SSLContext:
    """The client TLS context for :func:`ssl_options` (as websocket-client builds it)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    keylog = os.environ.get("SSLKEYLOGFILE")
    if keylog:
        context.keylog_filename = keylog
    if sslopt.get("cert_reqs", ssl.CERT_REQUIRED) == ssl.CERT_NONE:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    cafile: Optional[str] = sslopt.get("ca_certs")
    capath: Optional[str] = None
    bundle = os.environ.get("WEBSOCKET_CLIENT_CA_BUNDLE")  # honoured by websocket-client too
    if cafile is None and bundle:
        if os.path.isfile(bundle):
            cafile = bundle
        elif os.path.isdir(bundle):
            capath = bundle
    try:
        if cafile or capath:
            context.load_verify_locations(cafile=cafile, capath=capath)
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise websocket.WebSocketException(f"SSL CA certificate loading failed: {exc}") from None
    context.check_hostname = bool(sslopt.get("check_hostname", True))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def _valid_close_code(code: int) -> bool:
    """Whether a close code may be received (RFC 6455 section 7.4 and the IANA registry)."""
    if 3000 <= code <= 4999:
        return True
    return 1000 <= code <= 1014 and code not in (1004, 1005, 1006)


def _shown_url(url: str, redact: Optional[Callable[[str], str]]) -> str:
    """``url`` fit for a message: no query string, no user info, passed through ``redact``."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            netloc = "***@" + netloc.rpartition("@")[2]
        shown = urlunsplit((parts.scheme, netloc, parts.path, "..." if parts.query else "", ""))
    except (TypeError, ValueError, AttributeError):
        shown = "<invalid URL>"
    return redact(shown) if redact is not None else shown


def _safe_cause(exc: BaseException, url: str, redact: Optional[Callable[[str], str]]) -> bool:
    """Whether ``exc`` (and what it chains) may be kept as the ``__cause__``: no secret in it."""
    try:
        query = urlsplit(url).query
    except (TypeError, ValueError, AttributeError):
        return False
    seen = 0
    current: Optional[BaseException] = exc
    while current is not None and seen < 10:
        text = str(current)
        if query and query in text:
            return False
        if redact is not None and redact(text) != text:
            return False
        current = current.__cause__ or current.__context__
        seen += 1
    return current is None


def _connect_error(
    exc: BaseException,
    ws: websocket.WebSocket,
    url: str,
    shown: str,
    timeout: float,
    *,
    expired: bool,
    redact: Optional[Callable[[str], str]],
) -> BrokerFeedsError:
    """The error to raise for a failed connect: what failed, in words, with no secret."""

    def clean(text: str) -> str:
        if redact is not None:
            text = redact(text)
        try:
            query = urlsplit(url).query
        except (TypeError, ValueError, AttributeError):
            query = ""
        return text.replace(query, "...") if query else text

    prefix = f"connect to {shown} failed: "
    if isinstance(exc, websocket.WebSocketBadStatusException):
        status = exc.status_code
        headers = getattr(exc, "resp_headers", None)
        body = clean(_short(getattr(exc, "resp_body", b"")))
        retry = _retry_after(headers)
        if status in (401, 403):
            return AuthenticationError(f"{prefix}handshake rejected with HTTP {status}{body}")
        if status == 429 or (status == 503 and retry is not None):
            return RateLimited(f"{prefix}handshake rate-limited (HTTP {status}){body}", retry)
        return ConnectionFailed(f"{prefix}handshake failed with HTTP {status}{body}")
    response = getattr(ws, "handshake_response", None)
    answered = getattr(response, "status", None)
    if isinstance(answered, int) and 300 <= answered < 400:
        return ConnectionFailed(f"{prefix}handshake answered HTTP {answered} (a redirect; not followed)")
    if expired or isinstance(exc, (socket.timeout, TimeoutError, websocket.WebSocketTimeoutException)):
        return ConnectionFailed(f"{prefix}timed out after {timeout:g}s")
    if isinstance(exc, (websocket.WebSocketAddressException, socket.gaierror)):
        try:
            host = urlsplit(url).hostname or ""
        except (TypeError, ValueError, AttributeError):
            host = ""
        return ConnectionFailed(f"{prefix}DNS lookup failed for host {clean(host)!r}")
    if isinstance(exc, ConnectionRefusedError):
        return ConnectionFailed(f"{prefix}connection refused")
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = clean(str(exc.verify_message or exc.reason or "certificate rejected"))
        return ConnectionFailed(
            f"{prefix}TLS certificate verification failed ({why}); pass verify=False for a "
            "self-signed gateway certificate, or verify='/path/to/ca-bundle.pem'")
    if isinstance(exc, ssl.SSLError):
        return ConnectionFailed(f"{prefix}TLS handshake failed ({clean(str(exc.reason or _short_exc(exc)))})")
    if isinstance(exc, (websocket.WebSocketConnectionClosedException, ConnectionResetError, BrokenPipeError)):
        return ConnectionFailed(f"{prefix}the server closed the connection during the handshake")
    if isinstance(exc, websocket.WebSocketException) and "Invalid WebSocket Header" in str(exc):
        return ConnectionFailed(
            f"{prefix}the server's answer is not a valid WebSocket upgrade "
            "(Upgrade, Connection or Sec-WebSocket-Accept header)")
    if isinstance(exc, OSError) and exc.strerror:
        return ConnectionFailed(f"{prefix}{clean(exc.strerror.lower())}")
    return ConnectionFailed(f"{prefix}{type(exc).__name__}: {clean(_short_exc(exc))}")


def _short(body: Any, limit: int = 200) -> str:
    if not body:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    text = " ".join(text.split())[:limit]
    return f": {text}" if text else ""


def _short_exc(exc: BaseException) -> str:
    # websocket-client messages can embed the request URL; keep only the first line.
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def _retry_after(headers: Any) -> Optional[float]:
    """The Retry-After of a handshake answer in seconds, within [0, 3600]; None if absent or unusable."""
    if not headers:
        return None
    try:
        items = list(dict(headers).items())
    except (TypeError, ValueError):
        return None
    for key, value in items:
        if str(key).lower() == "retry-after":
            seconds = parse_retry_after(value)
            return None if seconds is None else min(seconds, _RETRY_AFTER_MAX)
    return None
