"""The WebSocket transport: one blocking websocket-client connection per attempt.

Kept deliberately small: connect (TLS options, headers, cookie, timeout), receive one
frame with a timeout, send, ping and close. The feed's reader thread drives it; sends
may come from any thread (websocket-client serialises them).
"""

from __future__ import annotations

import socket
import ssl
from typing import Any, Callable, Dict, Optional, Tuple, Union

import attrs
import websocket

from .errors import AuthenticationError, ConnectionFailed, RateLimited

__all__ = ["ConnectTarget", "Connection", "Closed", "ssl_options", "FRAME_TEXT", "FRAME_BINARY"]

FRAME_TEXT = websocket.ABNF.OPCODE_TEXT
FRAME_BINARY = websocket.ABNF.OPCODE_BINARY
_PING = websocket.ABNF.OPCODE_PING
_PONG = websocket.ABNF.OPCODE_PONG
_CLOSE = websocket.ABNF.OPCODE_CLOSE


@attrs.frozen(slots=True)
class ConnectTarget:
    """Where and how to open one connection. ``url`` may hold a secret: never log it raw."""

    url: str
    headers: Tuple[str, ...] = ()
    cookie: Optional[str] = attrs.field(default=None, repr=False)


class Closed(Exception):
    """The connection ended; ``reason`` says how (close code, error, ...)."""

    def __init__(self, reason: str, code: Optional[int] = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


def ssl_options(verify: Union[bool, str]) -> Dict[str, Any]:
    """websocket-client ``sslopt`` for ``verify`` (True, False, or a CA bundle path)."""
    if verify is False:
        return {"cert_reqs": ssl.CERT_NONE, "check_hostname": False}
    if verify is True:
        return {"cert_reqs": ssl.CERT_REQUIRED}
    return {"cert_reqs": ssl.CERT_REQUIRED, "ca_certs": str(verify)}


class Connection:
    """An open WebSocket connection."""

    def __init__(self, ws: websocket.WebSocket) -> None:
        self._ws = ws
        self._timeout: Optional[float] = None

    @classmethod
    def open(
        cls,
        target: ConnectTarget,
        *,
        timeout: float,
        verify: Union[bool, str],
        started: Optional[Callable[["Connection"], None]] = None,
    ) -> "Connection":
        """Connect and complete the handshake, or raise.

        Raises :class:`AuthenticationError` for a 401/403 handshake answer,
        :class:`RateLimited` for 429, :class:`ConnectionFailed` for anything else.
        Messages never include the URL (it may carry a one-time code or token).
        ``started`` receives the connection before the handshake, so another thread can
        :meth:`abort` a connect that hangs.
        """
        ws = websocket.WebSocket(
            sslopt=ssl_options(verify), skip_utf8_validation=True, enable_multithread=True
        )
        conn = cls(ws)
        if started is not None:
            started(conn)
        options: Dict[str, Any] = {"timeout": timeout, "header": list(target.headers)}
        if target.cookie is not None:
            options["cookie"] = target.cookie
        try:
            ws.connect(target.url, **options)
        except websocket.WebSocketBadStatusException as exc:
            ws.shutdown()
            status = exc.status_code
            body = _short(getattr(exc, "resp_body", b""))
            if status in (401, 403):
                raise AuthenticationError(f"handshake rejected with HTTP {status}{body}") from None
            if status == 429:
                retry = _retry_after(getattr(exc, "resp_headers", None))
                raise RateLimited(f"handshake rate-limited (HTTP 429){body}", retry) from None
            raise ConnectionFailed(f"handshake failed with HTTP {status}{body}") from None
        except (OSError, websocket.WebSocketException, ValueError) as exc:
            ws.shutdown()
            raise ConnectionFailed(f"connect failed: {type(exc).__name__}: {_short_exc(exc)}") from None
        return conn

    def recv(self, timeout: float) -> Optional[Tuple[int, bytes]]:
        """The next frame as ``(opcode, data)``, or None if ``timeout`` passed first.

        Pings are answered here (by websocket-client) and returned too, as are pongs, so
        the caller sees every sign of life. Raises :class:`Closed` when the connection ends.
        """
        if timeout != self._timeout:
            self._timeout = timeout
            self._ws.settimeout(timeout)
        try:
            opcode, frame = self._ws.recv_data_frame(True)
        except websocket.WebSocketTimeoutException:
            return None
        except socket.timeout:
            return None
        except websocket.WebSocketConnectionClosedException:
            raise Closed("connection closed by peer") from None
        except (OSError, websocket.WebSocketException, ValueError) as exc:
            raise Closed(f"{type(exc).__name__}: {_short_exc(exc)}") from None
        if opcode == _CLOSE:
            code = _close_code(frame.data)
            raise Closed(f"server closed the connection (code {code})", code)
        return opcode, frame.data

    def send(self, frame: Union[str, bytes]) -> None:
        """Send a text (``str``) or binary (``bytes``) frame; raises :class:`Closed`."""
        try:
            if isinstance(frame, bytes):
                self._ws.send_bytes(frame)
            else:
                self._ws.send_text(frame)
        except (OSError, websocket.WebSocketException, ValueError) as exc:
            raise Closed(f"send failed: {type(exc).__name__}") from None

    def ping(self, payload: bytes = b"") -> None:
        """Send a WebSocket ping; raises :class:`Closed`."""
        try:
            self._ws.ping(payload)
        except (OSError, websocket.WebSocketException, ValueError) as exc:
            raise Closed(f"ping failed: {type(exc).__name__}") from None

    def close(self, status: int = 1000) -> None:
        """Close politely (briefly) and release the socket. Safe from any thread, twice."""
        try:
            self._ws.abort() if status != 1000 else self._ws.close(status, timeout=0.5)
        except Exception:  # noqa: BLE001 - closing is best-effort
            pass
        finally:
            self._ws.shutdown()

    def abort(self) -> None:
        """Wake a thread blocked in :meth:`recv` (or in the handshake) by shutting the socket down."""
        sock = self._ws.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except (OSError, AttributeError):
                pass  # already closed


def _close_code(data: bytes) -> Optional[int]:
    return int.from_bytes(data[:2], "big") if len(data) >= 2 else None


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
    if not headers:
        return None
    for key, value in dict(headers).items():
        if key.lower() == "retry-after":
            try:
                return max(0.0, float(value))
            except (TypeError, ValueError):
                return None
    return None
