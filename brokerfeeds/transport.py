"""The WebSocket transport: one blocking websocket-client connection per attempt.

Kept deliberately small: connect (TLS options, headers, cookie, timeout), receive one
frame with a timeout, send, ping and close. The feed's reader thread drives it; sends
may come from any thread (websocket-client serialises them).
"""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import attrs
import websocket

from .errors import AuthenticationError, ConnectionFailed, RateLimited

__all__ = ["ConnectTarget", "Connection", "Closed", "ssl_options", "FRAME_TEXT", "FRAME_BINARY"]

FRAME_TEXT = websocket.ABNF.OPCODE_TEXT
FRAME_BINARY = websocket.ABNF.OPCODE_BINARY
_PING = websocket.ABNF.OPCODE_PING
_PONG = websocket.ABNF.OPCODE_PONG
_CLOSE = websocket.ABNF.OPCODE_CLOSE
_CONT = websocket.ABNF.OPCODE_CONT
_READ_SIZE = 256 * 1024


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
        # Incoming frames are parsed here from one buffer filled by large socket reads
        # (websocket-client reads every frame with 2-3 small recv calls).
        self._buf = b""
        self._pos = 0
        self._fragments: Optional[List[bytes]] = None
        self._fragment_opcode = 0

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

        Pings are answered here and returned too, as are pongs, so the caller sees every
        sign of life. Fragmented messages are joined. Raises :class:`Closed` when the
        connection ends.
        """
        ws = self._ws
        if timeout != self._timeout:
            self._timeout = timeout
            ws.settimeout(timeout)
        try:
            while True:
                frame = self._next_frame()
                if frame is None:
                    if not self._fill(ws.sock):
                        return None
                    continue
                fin, opcode, data = frame
                if opcode == FRAME_TEXT or opcode == FRAME_BINARY:
                    if self._fragments is not None:
                        raise websocket.WebSocketProtocolException("Illegal frame")
                    if fin:
                        return opcode, data
                    self._fragments, self._fragment_opcode = [data], opcode
                elif opcode == _CONT:
                    if self._fragments is None:
                        raise websocket.WebSocketProtocolException("Illegal frame")
                    self._fragments.append(data)
                    if fin:
                        data, self._fragments = b"".join(self._fragments), None
                        return self._fragment_opcode, data
                else:
                    websocket.ABNF(fin, 0, 0, 0, opcode, 0, data).validate(True)
                    if opcode == _CLOSE:
                        try:
                            ws.send_close()
                        except Exception:  # noqa: BLE001 - the peer may be gone already
                            pass
                        code = _close_code(data)
                        raise Closed(f"server closed the connection (code {code})", code)
                    if opcode == _PING:
                        if len(data) >= 126:
                            raise websocket.WebSocketProtocolException("Ping message is too long")
                        ws.pong(data)
                    return opcode, data
        except Closed:
            raise
        except socket.timeout:
            return None
        except websocket.WebSocketConnectionClosedException:
            raise Closed("connection closed by peer") from None
        except (OSError, websocket.WebSocketException, ValueError) as exc:
            raise Closed(f"{type(exc).__name__}: {_short_exc(exc)}") from None

    @property
    def buffered(self) -> bool:
        """Whether a whole frame is already buffered (the next :meth:`recv` will not block)."""
        buf, pos = self._buf, self._pos
        avail = len(buf) - pos
        if avail < 2:
            return False
        length = buf[pos + 1] & 0x7F
        head = 2 + (4 if buf[pos + 1] & 0x80 else 0)
        if length == 126:
            if avail < 4:
                return False
            length, head = int.from_bytes(buf[pos + 2:pos + 4], "big"), head + 2
        elif length == 127:
            if avail < 10:
                return False
            length, head = int.from_bytes(buf[pos + 2:pos + 10], "big"), head + 8
        return avail >= head + length

    def _fill(self, sock: Any) -> bool:
        """Read what the socket has (up to 256 KiB); False on timeout."""
        if sock is None:
            raise websocket.WebSocketConnectionClosedException("socket is already closed.")
        try:
            data = sock.recv(_READ_SIZE)
        except ssl.SSLWantReadError:
            return False
        if not data:
            raise websocket.WebSocketConnectionClosedException("Connection to remote host was lost.")
        rest = self._buf[self._pos:]
        self._buf = rest + data if rest else data
        self._pos = 0
        return True

    def _next_frame(self) -> Optional[Tuple[int, int, bytes]]:
        """``(fin, opcode, payload)`` of the next whole buffered frame, or None."""
        buf, pos = self._buf, self._pos
        avail = len(buf) - pos
        if avail < 2:
            return None
        b0, b1 = buf[pos], buf[pos + 1]
        if b0 & 0x70:
            raise websocket.WebSocketProtocolException("rsv is not implemented, yet")
        length = b1 & 0x7F
        head = 2
        if length == 126:
            if avail < 4:
                return None
            length, head = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
        elif length == 127:
            if avail < 10:
                return None
            length, head = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
        mask = None
        if b1 & 0x80:  # servers must not mask, but tolerate it as websocket-client does
            if avail < head + 4:
                return None
            mask, head = buf[pos + head:pos + head + 4], head + 4
        end = pos + head + length
        if end > len(buf):
            return None
        data = buf[pos + head:end]
        self._pos = end
        if mask is not None:
            data = websocket.ABNF.mask(mask, data)
        return b0 & 0x80, b0 & 0x0F, data

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
        ws = self._ws
        try:
            if status != 1000:
                ws.abort()
            elif ws.connected:
                ws.connected = False
                ws.send(status.to_bytes(2, "big"), websocket.ABNF.OPCODE_CLOSE)
                deadline = time.monotonic() + 0.5  # wait briefly for the server's close frame
                while time.monotonic() < deadline:
                    frame = self._next_frame()
                    if frame is None:
                        sock = ws.sock
                        if sock is None:
                            break
                        sock.settimeout(max(0.01, deadline - time.monotonic()))
                        self._fill(sock)
                    elif frame[1] == _CLOSE:
                        break
        except Exception:  # noqa: BLE001 - closing is best-effort
            pass
        finally:
            ws.shutdown()

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
