"""The transport: the frame parser on a fake socket, connect errors on real loopback sockets."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from typing import Any, Callable, Iterator, List, Optional, Tuple

import pytest

from brokerfeeds import transport
from brokerfeeds.errors import AuthenticationError, ConnectionFailed, ProtocolError, RateLimited
from brokerfeeds.transport import (
    DEFAULT_MAX_MESSAGE_SIZE,
    FRAME_BINARY,
    FRAME_TEXT,
    Closed,
    ConnectTarget,
    Connection,
    check_ws_url,
)

CONT, CLOSE, PING, PONG = 0x0, 0x8, 0x9, 0xA


# ------------------------------------------------------------------ frames and fakes

def frame(payload: bytes = b"", opcode: int = FRAME_BINARY, *, fin: bool = True, rsv: int = 0,
          mask: Optional[bytes] = None, form: Optional[int] = None, length: Optional[int] = None) -> bytes:
    """A raw frame. ``form`` forces the length encoding (7, 16 or 64 bits), ``length``
    overrides the announced length."""
    n = len(payload) if length is None else length
    if form is None:
        form = 7 if n < 126 else 16 if n < 0x10000 else 64
    b0 = (0x80 if fin else 0) | rsv | opcode
    mbit = 0x80 if mask is not None else 0
    if form == 7:
        head = bytes([b0, mbit | n])
    elif form == 16:
        head = bytes([b0, mbit | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([b0, mbit | 127]) + n.to_bytes(8, "big")
    if mask is not None:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        head += mask
    return head + payload


def close_frame(code: Optional[int], reason: bytes = b"") -> bytes:
    return frame((b"" if code is None else code.to_bytes(2, "big")) + reason, CLOSE)


class FakeSock:
    """Hands out queued chunks, one per recv; times out when none is left (or EOF if ``eof``)."""

    def __init__(self, chunks: Any = ()) -> None:
        self.chunks: List[bytes] = [bytes(c) for c in chunks if c]
        self.eof = False
        self.shut = False
        self.reads = 0

    def feed(self, *chunks: bytes) -> None:
        self.chunks.extend(c for c in chunks if c)

    def recv(self, n: int) -> bytes:
        self.reads += 1
        if self.chunks:
            chunk = self.chunks.pop(0)
            if len(chunk) > n:
                chunk, rest = chunk[:n], chunk[n:]
                self.chunks.insert(0, rest)
            return chunk
        if self.eof or self.shut:
            return b""
        raise socket.timeout("timed out")

    def settimeout(self, timeout: Optional[float]) -> None:
        pass

    def shutdown(self, how: int) -> None:
        self.shut = True


class FakeWS:
    """The part of websocket.WebSocket a Connection uses: ``sock``, ``connected``, ``send``, ``shutdown``."""

    def __init__(self, sock: FakeSock) -> None:
        self.sock: Optional[FakeSock] = sock
        self.connected = True
        self.sent: List[Tuple[int, bytes]] = []

    def send(self, payload: Any, opcode: int) -> int:
        data = payload.encode() if isinstance(payload, str) else bytes(payload)
        self.sent.append((opcode, data))
        return len(data)

    def shutdown(self) -> None:
        self.sock = None
        self.connected = False


def make(*chunks: bytes, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> Tuple[Connection, FakeWS, FakeSock]:
    sock = FakeSock(chunks)
    ws = FakeWS(sock)
    return Connection(ws, max_message_size=max_message_size), ws, sock  # type: ignore[arg-type]


def drain(conn: Connection) -> List[Tuple[int, bytes]]:
    """Every frame recv returns until the fake socket runs dry."""
    out: List[Tuple[int, bytes]] = []
    while True:
        got = conn.recv(1.0)
        if got is None:
            return out
        out.append(got)


# ------------------------------------------------------------------ the parser

@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 1000, 65535, 65536, 70000])
def test_every_length_encoding(size: int) -> None:
    payload = os.urandom(size)
    conn, _, _ = make(frame(payload), frame(b"x" * size, FRAME_TEXT))
    assert conn.recv(1.0) == (FRAME_BINARY, payload)
    assert conn.recv(1.0) == (FRAME_TEXT, b"x" * size)
    assert conn.recv(1.0) is None


def test_fragmented_message_with_an_interleaved_ping_is_joined_and_the_ping_answered() -> None:
    conn, ws, _ = make(frame(b"Hel", FRAME_TEXT, fin=False), frame(b"are you there", PING),
                       frame(b"lo, ", CONT, fin=False), frame(b"", PONG), frame(b"world", CONT))
    assert conn.recv(1.0) == (PING, b"are you there")
    assert ws.sent == [(PONG, b"are you there")]
    assert conn.recv(1.0) == (PONG, b"")
    assert conn.recv(1.0) == (FRAME_TEXT, b"Hello, world")
    assert conn.recv(1.0) is None


def test_a_fragmented_binary_message_keeps_its_opcode() -> None:
    conn, _, _ = make(frame(b"\x00\x01", FRAME_BINARY, fin=False), frame(b"\x02", CONT, fin=False),
                      frame(b"\x03", CONT))
    assert drain(conn) == [(FRAME_BINARY, b"\x00\x01\x02\x03")]


def test_masked_server_frames_are_tolerated() -> None:
    conn, _, _ = make(frame(b"masked hello", FRAME_TEXT, mask=b"\x01\x02\x03\x04"),
                      frame(b"m" * 300, FRAME_BINARY, mask=b"\xff\x00\xaa\x55"))
    assert drain(conn) == [(FRAME_TEXT, b"masked hello"), (FRAME_BINARY, b"m" * 300)]


def test_invalid_utf8_in_text_frames_is_tolerated() -> None:
    # The IBKR gateway really sends it; the adapters decode leniently.
    conn, _, _ = make(frame(b"\xff\xfe{\"a\": 1}\xc3", FRAME_TEXT))
    assert conn.recv(1.0) == (FRAME_TEXT, b"\xff\xfe{\"a\": 1}\xc3")


VIOLATIONS = [
    ("fragmented ping", frame(b"", PING, fin=False), "fragmented control frame"),
    ("fragmented pong", frame(b"", PONG, fin=False), "fragmented control frame"),
    ("fragmented close", frame(b"\x03\xe8", CLOSE, fin=False), "fragmented control frame"),
    ("ping over 125", frame(b"p" * 126, PING), "over 125 bytes"),
    ("close over 125", frame(b"\x03\xe8" + b"r" * 124, CLOSE), "over 125 bytes"),
    ("16-bit form for 125", frame(b"a" * 125, form=16), "non-minimal length encoding"),
    ("16-bit form for 0", frame(b"", form=16), "non-minimal length encoding"),
    ("64-bit form for 65535", frame(b"a" * 65535, form=64), "non-minimal length encoding"),
    ("64-bit form for 126", frame(b"a" * 126, form=64), "non-minimal length encoding"),
    ("64-bit top bit", frame(form=64, length=1 << 63), "most significant bit"),
    *[(f"RSV 0x{rsv:02x}", frame(b"x", rsv=rsv), "reserved bits") for rsv in (0x40, 0x20, 0x10, 0x70)],
    *[(f"opcode 0x{op:X}", frame(b"x", op), "reserved opcode") for op in (3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF)],
    ("continuation without a message", frame(b"x", CONT), "continuation frame without"),
    ("final continuation without a message", frame(b"x", CONT, fin=False), "continuation frame without"),
    ("close with 1 byte", frame(b"\x03", CLOSE), "1-byte payload"),
]


@pytest.mark.parametrize("name, data, message", VIOLATIONS, ids=[v[0] for v in VIOLATIONS])
def test_protocol_violations_close_with_1002_and_report_a_protocol_error(name: str, data: bytes, message: str) -> None:
    conn, ws, sock = make(frame(b"before", FRAME_TEXT) + data + frame(b"after", FRAME_TEXT))
    assert conn.recv(1.0) == (FRAME_TEXT, b"before")
    with pytest.raises(Closed) as info:
        conn.recv(1.0)
    closed = info.value
    assert isinstance(closed.error, ProtocolError) and message in str(closed.error)
    assert closed.code == 1002 and message in closed.reason
    assert ws.sent == [(CLOSE, (1002).to_bytes(2, "big"))]
    assert sock.shut
    with pytest.raises(Closed) as again:  # the connection stays failed
        conn.recv(1.0)
    assert again.value.error is closed.error
    conn.close()
    assert ws.sent == [(CLOSE, (1002).to_bytes(2, "big"))] and ws.sock is None


def test_a_new_data_frame_inside_a_fragmented_message_is_a_violation() -> None:
    conn, ws, _ = make(frame(b"a", FRAME_TEXT, fin=False), frame(b"b", FRAME_BINARY))
    with pytest.raises(Closed) as info:
        conn.recv(1.0)
    assert "while a fragmented message is in progress" in str(info.value.error)
    assert ws.sent == [(CLOSE, (1002).to_bytes(2, "big"))]


def test_a_violation_is_reported_from_the_header_alone() -> None:
    # Only the 2 header bytes of a reserved opcode have arrived: no need to wait for more.
    conn, _, _ = make(bytes([0x83, 0x7D]))
    with pytest.raises(Closed) as info:
        conn.recv(1.0)
    assert "reserved opcode 0x3" in info.value.reason


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535])
def test_close_frames_with_an_invalid_code_are_violations(code: int) -> None:
    conn, ws, _ = make(close_frame(code))
    with pytest.raises(Closed) as info:
        conn.recv(1.0)
    assert info.value.code == 1002 and f"invalid code {code}" in str(info.value.error)
    assert ws.sent == [(CLOSE, (1002).to_bytes(2, "big"))]


@pytest.mark.parametrize("code", [None, 1000, 1001, 1002, 1003, 1007, 1008, 1011, 1012, 1014, 3000, 4000, 4999])
def test_a_server_close_is_echoed_and_ends_the_connection(code: Optional[int]) -> None:
    conn, ws, _ = make(close_frame(code, b"" if code is None else b"bye"))
    with pytest.raises(Closed) as info:
        conn.recv(1.0)
    assert info.value.code == code and info.value.error is None
    assert info.value.reason == f"server closed the connection (code {code})"
    assert ws.sent == [(CLOSE, b"" if code is None else code.to_bytes(2, "big"))]
    with pytest.raises(Closed):
        conn.recv(1.0)
    conn.close(1001)  # the closing handshake is done: no second close frame
    assert len(ws.sent) == 1 and ws.sock is None


def test_a_header_announcing_2_to_the_62_fails_at_once_without_buffering() -> None:
    header = frame(form=64, length=2 ** 62)
    assert len(header) == 10
    conn, ws, sock = make(header)  # only the header: waiting for the payload would time out
    with pytest.raises(Closed) as info:
        conn.recv(1.0)
    assert str(info.value.error) == "frame of 4611686018427387904 bytes exceeds max_message_size (16777216)"
    assert info.value.code == 1009
    assert ws.sent == [(CLOSE, (1009).to_bytes(2, "big"))] and sock.shut
    assert sock.reads == 1


def test_max_message_size_bounds_a_single_frame() -> None:
    conn, _, _ = make(frame(b"a" * 100), max_message_size=100)
    assert conn.recv(1.0) == (FRAME_BINARY, b"a" * 100)
    conn, ws, sock = make(frame(b"a" * 101)[:4], max_message_size=100)  # header only
    with pytest.raises(Closed) as info:
        conn.recv(1.0)
    assert str(info.value.error) == "frame of 101 bytes exceeds max_message_size (100)"
    assert ws.sent == [(CLOSE, (1009).to_bytes(2, "big"))]


def test_max_message_size_bounds_a_fragmented_message() -> None:
    conn, _, _ = make(frame(b"a" * 60, fin=False), frame(b"b" * 40, CONT), max_message_size=100)
    assert conn.recv(1.0) == (FRAME_BINARY, b"a" * 60 + b"b" * 40)
    # The second fragment's header alone (its payload never arrives) fails the message.
    conn, ws, _ = make(frame(b"a" * 60, fin=False), frame(b"b" * 41, CONT)[:2], max_message_size=100)
    with pytest.raises(Closed) as info:
        conn.recv(1.0)
    assert str(info.value.error) == "fragmented message of 101 bytes exceeds max_message_size (100)"
    assert info.value.code == 1009 and ws.sent == [(CLOSE, (1009).to_bytes(2, "big"))]


def test_max_message_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_message_size"):
        make(max_message_size=0)


def _mixed_stream(big: bool) -> Tuple[bytes, List[Tuple[int, bytes]]]:
    parts = [
        (frame(b"", FRAME_TEXT), (FRAME_TEXT, b"")),
        (frame(b"hello", FRAME_TEXT), (FRAME_TEXT, b"hello")),
        (frame(bytes(range(200)), FRAME_BINARY), (FRAME_BINARY, bytes(range(200)))),
        (frame(b"ping!", PING), (PING, b"ping!")),
        (frame(b"frag-", FRAME_TEXT, fin=False) + frame(b"me", PONG) + frame(b"men", CONT, fin=False)
         + frame(b"ted", CONT), (PONG, b"me")),
        (b"", (FRAME_TEXT, b"frag-mented")),
        (frame(b"masked", FRAME_TEXT, mask=b"\x10\x20\x30\x40"), (FRAME_TEXT, b"masked")),
        (frame(b"\xff\xfe", FRAME_TEXT), (FRAME_TEXT, b"\xff\xfe")),
    ]
    if big:
        parts.append((frame(b"z" * 70000), (FRAME_BINARY, b"z" * 70000)))
    parts.append((frame(b"last", FRAME_TEXT), (FRAME_TEXT, b"last")))
    return b"".join(p[0] for p in parts), [p[1] for p in parts]


def test_one_byte_per_recv_gives_the_same_frames() -> None:
    stream, expected = _mixed_stream(big=True)
    conn, ws, _ = make(*[stream[i:i + 1] for i in range(len(stream))])
    assert drain(conn) == expected
    assert ws.sent == [(PONG, b"ping!")]


def test_a_stream_split_at_every_offset_gives_the_same_frames() -> None:
    stream, expected = _mixed_stream(big=False)
    for cut in range(len(stream) + 1):
        conn, _, _ = make(stream[:cut], stream[cut:])
        assert drain(conn) == expected, cut


def test_a_64_bit_frame_split_at_every_header_offset_and_in_three() -> None:
    big = frame(b"q" * 65536, FRAME_TEXT) + frame(b"next")
    expected = [(FRAME_TEXT, b"q" * 65536), (FRAME_BINARY, b"next")]
    for cut in list(range(16)) + [100, 65545, 65546, 65547, len(big) - 1]:
        for second in (cut, cut + 1, cut + 7):
            conn, _, _ = make(big[:cut], big[cut:second], big[second:])
            assert drain(conn) == expected, (cut, second)


def test_recv_returns_none_on_a_partial_frame_and_resumes() -> None:
    data = frame(b"x" * 300)
    conn, _, sock = make(data[:1])
    assert conn.recv(1.0) is None
    sock.feed(data[1:3])
    assert conn.recv(1.0) is None
    sock.feed(data[3:200])
    assert conn.recv(1.0) is None
    sock.feed(data[200:])
    assert conn.recv(1.0) == (FRAME_BINARY, b"x" * 300)


def test_buffered_tells_whether_the_next_recv_will_not_block() -> None:
    one, two = frame(b"one"), frame(b"t" * 300)
    conn, _, sock = make(one + two[:3])
    assert not conn.buffered  # nothing read yet
    assert conn.recv(1.0) == (FRAME_BINARY, b"one")
    assert not conn.buffered  # a partial header
    sock.feed(two[3:10])
    assert conn.recv(1.0) is None
    assert not conn.buffered  # header decoded, payload partial
    sock.feed(two[10:] + one + one)
    assert conn.recv(1.0) == (FRAME_BINARY, b"t" * 300)
    assert conn.buffered
    assert conn.recv(1.0) == (FRAME_BINARY, b"one")
    assert conn.buffered
    assert conn.recv(1.0) == (FRAME_BINARY, b"one")
    assert not conn.buffered


def test_buffered_never_raises_on_a_bad_header() -> None:
    conn, _, _ = make(frame(b"ok") + frame(b"x", 5))
    assert conn.recv(1.0) == (FRAME_BINARY, b"ok")
    assert conn.buffered  # the next recv will not block: it fails at once
    with pytest.raises(Closed) as info:
        conn.recv(1.0)
    assert "reserved opcode 0x5" in info.value.reason


def test_compaction_keeps_the_buffer_small_over_many_frames() -> None:
    payloads = [os.urandom(50 + i % 400) for i in range(5000)]
    stream = b"".join(frame(p) for p in payloads)
    chunk = 4093  # not aligned with frame boundaries
    conn, _, sock = make(*[stream[i:i + chunk] for i in range(0, len(stream), chunk)])
    largest = 0
    got = 0
    while True:
        item = conn.recv(1.0)
        largest = max(largest, len(conn._buf))
        if item is None:
            break
        assert item == (FRAME_BINARY, payloads[got])
        got += 1
    assert got == len(payloads)
    assert largest <= 3 * chunk


def test_a_large_frame_in_many_reads_is_assembled_in_linear_time() -> None:
    payload = os.urandom(8 * 1024 * 1024)
    data = frame(payload)
    conn, _, _ = make(*[data[i:i + 16384] for i in range(0, len(data), 16384)])
    started = time.monotonic()
    assert conn.recv(1.0) == (FRAME_BINARY, payload)
    assert time.monotonic() - started < 1.5  # quadratic joining would take far longer


def test_the_peer_closing_tcp_raises_closed() -> None:
    conn, _, sock = make(frame(b"x"))
    sock.eof = True
    assert conn.recv(1.0) == (FRAME_BINARY, b"x")
    with pytest.raises(Closed, match="connection closed by peer") as info:
        conn.recv(1.0)
    assert info.value.error is None


def test_close_sends_the_status_and_waits_briefly_for_the_server() -> None:
    conn, ws, sock = make()
    sock.feed(frame(b"late data"), close_frame(1001))
    conn.close(1001)
    assert ws.sent == [(CLOSE, (1001).to_bytes(2, "big"))]
    assert ws.sock is None
    conn.close(1001)  # twice is fine
    assert len(ws.sent) == 1


def test_close_without_an_answer_gives_up_after_half_a_second() -> None:
    class Slow(FakeSock):
        def recv(self, n: int) -> bytes:
            time.sleep(0.05)
            return super().recv(n)

    sock = Slow()
    ws = FakeWS(sock)
    conn = Connection(ws)  # type: ignore[arg-type]
    started = time.monotonic()
    conn.close()
    assert 0.4 < time.monotonic() - started < 1.5
    assert ws.sent == [(CLOSE, (1000).to_bytes(2, "big"))] and ws.sock is None


def test_send_and_ping_go_through_the_websocket() -> None:
    conn, ws, _ = make()
    conn.send("text")
    conn.send(b"\x00bin")
    conn.ping(b"hb")
    assert ws.sent == [(FRAME_TEXT, b"text"), (FRAME_BINARY, b"\x00bin"), (PING, b"hb")]


def test_closed_carries_an_optional_error() -> None:
    plain = Closed("gone")
    assert (plain.reason, plain.code, plain.error) == ("gone", None, None)
    error = ProtocolError("bad")
    assert Closed("bad frame", 1002, error).error is error


# ------------------------------------------------------------------ check_ws_url and helpers

@pytest.mark.parametrize("url", ["ws://localhost:5000/v1/api/ws", "wss://api.example.com/feed?code=abc",
                                 "WSS://Example.com", "ws://[::1]:8080/x", "ws://127.0.0.1/ws"])
def test_check_ws_url_accepts_ws_and_wss(url: str) -> None:
    check_ws_url(url)


@pytest.mark.parametrize("url, message", [
    ("http://example.com/ws?token=s3cret", "must start with ws:// or wss://, not http://"),
    ("https://example.com/ws", "not https://"),
    ("example.com/ws", "no scheme"),
    ("", "no scheme"),
    ("ws:///path?token=s3cret", "has no host"),
    ("wss://:443/path", "has no host"),
    ("ws://example.com:notaport/ws?token=s3cret", "invalid WebSocket URL"),
])
def test_check_ws_url_rejects_other_urls_without_repeating_them(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        check_ws_url(url)
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize("value, expected", [
    ("12", 12.0), ("0", 0.0), ("-5", 0.0), ("inf", 3600.0), ("-inf", 0.0), ("1e400", 3600.0),
    ("99999999", 3600.0), ("nan", None), ("soon", None), ("", None),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0), ("Fri, 31 Dec 9999 23:59:59 GMT", 3600.0),
])
def test_retry_after_never_raises_and_is_clamped(value: str, expected: Optional[float]) -> None:
    assert transport._retry_after({"Retry-After": value}) == expected


def test_retry_after_of_a_near_http_date() -> None:
    from email.utils import formatdate

    seconds = transport._retry_after({"retry-after": formatdate(time.time() + 120, usegmt=True)})
    assert seconds is not None and 100 <= seconds <= 121
    assert transport._retry_after({}) is None and transport._retry_after(None) is None


def test_shown_url_hides_the_query_and_user_info_and_is_redacted() -> None:
    shown = transport._shown_url("wss://user:pw@gw.example.com:5000/feed/tok123?code=one-time&x=1#frag",
                                 lambda s: s.replace("tok123", "***"))
    assert shown == "wss://***@gw.example.com:5000/feed/***?..."
    assert transport._shown_url("ws://127.0.0.1:1/ws", None) == "ws://127.0.0.1:1/ws"


# ------------------------------------------------------------------ real loopback sockets

Handler = Callable[[socket.socket, threading.Event], None]


@contextlib.contextmanager
def raw_server(handler: Handler, connections: int = 1, tls: Optional[ssl.SSLContext] = None) -> Iterator[Tuple[int, List[int]]]:
    """A loopback server running ``handler`` for up to ``connections`` clients; stops by itself."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(0.05)
    port = listener.getsockname()[1]
    stop = threading.Event()
    accepted: List[int] = []

    def serve() -> None:
        deadline = time.monotonic() + 3.0
        while len(accepted) < connections and not stop.is_set() and time.monotonic() < deadline:
            try:
                client, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            accepted.append(1)
            client.settimeout(3.0)
            try:
                if tls is not None:
                    client = tls.wrap_socket(client, server_side=True)
                handler(client, stop)
            except (OSError, ssl.SSLError):
                pass
            finally:
                client.close()

    thread = threading.Thread(target=serve, name="test-raw-server", daemon=True)
    thread.start()
    try:
        yield port, accepted
    finally:
        stop.set()
        thread.join(5.0)
        listener.close()
        assert not thread.is_alive()


def ticks(stop: threading.Event, interval: float, total: float = 3.0) -> Iterator[None]:
    """Yield every ``interval`` seconds until ``stop`` is set or ``total`` seconds passed."""
    deadline = time.monotonic() + total
    while time.monotonic() < deadline and not stop.wait(interval):
        yield


def read_request(client: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = client.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def accept_value(request: bytes) -> str:
    for line in request.split(b"\r\n"):
        if line.lower().startswith(b"sec-websocket-key:"):
            key = line.split(b":", 1)[1].strip()
            digest = hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
            return base64.b64encode(digest).decode()
    raise AssertionError("no Sec-WebSocket-Key")


def switching(request: bytes) -> bytes:
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_value(request).encode() + b"\r\n\r\n")


def read_client_frame(client: socket.socket) -> Tuple[int, bytes]:
    """One (masked) client frame, read exactly."""
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = client.recv(n - len(data))
            if not chunk:
                raise ConnectionError("eof")
            data += chunk
        return data

    b0, b1 = exactly(2)
    length = b1 & 0x7F
    if length == 126:
        length = int.from_bytes(exactly(2), "big")
    elif length == 127:
        length = int.from_bytes(exactly(8), "big")
    key = exactly(4) if b1 & 0x80 else b"\0\0\0\0"
    payload = bytes(b ^ key[i % 4] for i, b in enumerate(exactly(length)))
    return b0 & 0x0F, payload


def no_deadline_thread() -> bool:
    return not any(t.name == "ws-connect-deadline" for t in threading.enumerate())


def open_conn(url: str, timeout: float = 2.0, **kwargs: Any) -> Connection:
    return Connection.open(ConnectTarget(url), timeout=timeout, verify=False, **kwargs)


def test_connection_refused_names_the_url_without_its_query() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    with pytest.raises(ConnectionFailed) as info:
        open_conn(f"ws://127.0.0.1:{port}/ws/tok123?code=one-time-secret",
                  redact=lambda s: s.replace("tok123", "***"))
    assert str(info.value) == f"connect to ws://127.0.0.1:{port}/ws/***?... failed: connection refused"
    assert no_deadline_thread()


def test_connect_refused_message_for_wss() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(ConnectionFailed, match=rf"^connect to wss://127\.0\.0\.1:{port}/ws failed: connection refused$"):
        open_conn(f"wss://127.0.0.1:{port}/ws")


def test_dns_failure_names_the_host() -> None:
    with pytest.raises(ConnectionFailed) as info:
        open_conn("wss://nosuch.invalid/ws?code=one-time-secret")
    assert str(info.value) == ("connect to wss://nosuch.invalid/ws?... failed: "
                               "DNS lookup failed for host 'nosuch.invalid'")


def test_a_url_that_is_not_ws_fails_clearly() -> None:
    with pytest.raises(ConnectionFailed, match="must start with ws:// or wss://, not http://"):
        open_conn("http://127.0.0.1:1/ws")


def test_the_timeout_bounds_the_whole_connect_not_each_read() -> None:
    def trickle(client: socket.socket, stop: threading.Event) -> None:
        answer = switching(read_request(client))
        for byte, _ in zip(answer, ticks(stop, 0.2)):  # each read is quick, the whole is not
            client.sendall(bytes([byte]))

    with raw_server(trickle) as (port, _):
        started = time.monotonic()
        with pytest.raises(ConnectionFailed) as info:
            open_conn(f"ws://127.0.0.1:{port}/ws", timeout=1)
        elapsed = time.monotonic() - started
    assert str(info.value) == f"connect to ws://127.0.0.1:{port}/ws failed: timed out after 1s"
    assert 0.9 < elapsed < 2.0
    assert no_deadline_thread()


def test_endless_header_lines_time_out() -> None:
    def endless(client: socket.socket, stop: threading.Event) -> None:
        read_request(client)
        client.sendall(b"HTTP/1.1 101 Switching Protocols\r\n")
        for _ in ticks(stop, 0.05):
            client.sendall(b"X-Padding: more\r\n")

    with raw_server(endless) as (port, _):
        started = time.monotonic()
        with pytest.raises(ConnectionFailed, match="timed out after 0.5s"):
            open_conn(f"ws://127.0.0.1:{port}/ws", timeout=0.5)
        assert time.monotonic() - started < 1.5


def test_the_timeout_bounds_a_trickled_tls_handshake_too() -> None:
    def tls_trickle(client: socket.socket, stop: threading.Event) -> None:
        client.recv(4096)  # the ClientHello
        client.sendall(b"\x16\x03\x03\x40\x00")  # a handshake record of 16 KiB ... trickled
        for _ in ticks(stop, 0.2):
            client.sendall(b"\x00")

    with raw_server(tls_trickle) as (port, _):
        started = time.monotonic()
        with pytest.raises(ConnectionFailed, match="timed out after 1s"):
            open_conn(f"wss://127.0.0.1:{port}/ws", timeout=1)
        assert time.monotonic() - started < 2.0
    assert no_deadline_thread()


def test_abort_interrupts_a_tls_handshake() -> None:
    # The TLS handshake runs on the first send, once the socket is reachable: stop() can abort it.
    def tls_trickle(client: socket.socket, stop: threading.Event) -> None:
        client.recv(4096)
        client.sendall(b"\x16\x03\x03\x40\x00")
        for _ in ticks(stop, 0.2):
            client.sendall(b"\x00")

    def abort_soon(conn: Connection) -> None:
        timer = threading.Timer(0.3, conn.abort)
        timer.daemon = True
        timer.start()
        timers.append(timer)

    timers: List[threading.Timer] = []
    with raw_server(tls_trickle) as (port, _):
        started = time.monotonic()
        with pytest.raises(ConnectionFailed):
            open_conn(f"wss://127.0.0.1:{port}/ws", timeout=10, started=abort_soon)
        assert time.monotonic() - started < 1.5
    for timer in timers:
        timer.join()


def _self_signed(tmp_path: Any) -> Tuple[str, str]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=30)
    return cert, key


def test_a_certificate_failure_says_how_to_fix_it(tmp_path: Any) -> None:
    cert, key = _self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    def answer(client: socket.socket, stop: threading.Event) -> None:
        client.sendall(switching(read_request(client)))

    with raw_server(answer, tls=context) as (port, _):
        with pytest.raises(ConnectionFailed) as info:
            Connection.open(ConnectTarget(f"wss://127.0.0.1:{port}/ws"), timeout=2, verify=True)
    message = str(info.value)
    assert message.startswith(f"connect to wss://127.0.0.1:{port}/ws failed: TLS certificate verification failed (")
    assert "self-signed" in message or "self signed" in message
    assert message.endswith("pass verify=False for a self-signed gateway certificate, "
                            "or verify='/path/to/ca-bundle.pem'")
    with raw_server(answer, tls=context) as (port, _):  # and the advice works
        conn = Connection.open(ConnectTarget(f"wss://127.0.0.1:{port}/ws"), timeout=2, verify=cert)
        conn.close()


def test_a_redirect_is_not_followed() -> None:
    def redirect(client: socket.socket, stop: threading.Event) -> None:
        read_request(client)
        here = client.getsockname()[1]  # a redirect to this same server: a second connect would show
        client.sendall(f"HTTP/1.1 302 Found\r\nLocation: ws://127.0.0.1:{here}/feed?code=minted-secret\r\n"
                       "Content-Length: 0\r\n\r\n".encode())

    with raw_server(redirect, connections=2) as (port, accepted):
        with pytest.raises(ConnectionFailed) as info:
            open_conn(f"ws://127.0.0.1:{port}/ws")
        assert len(accepted) == 1
    assert str(info.value) == (f"connect to ws://127.0.0.1:{port}/ws failed: "
                               "handshake answered HTTP 302 (a redirect; not followed)")
    assert "minted-secret" not in str(info.value)


def _status_server(status: str, headers: str = "", body: bytes = b"") -> Handler:
    def answer(client: socket.socket, stop: threading.Event) -> None:
        read_request(client)
        client.sendall(f"HTTP/1.1 {status}\r\n{headers}Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return answer


def test_a_429_with_retry_after_inf_is_rate_limited_with_a_finite_wait() -> None:
    with raw_server(_status_server("429 Too Many Requests", "Retry-After: inf\r\n", b"slow down")) as (port, _):
        with pytest.raises(RateLimited) as info:
            open_conn(f"ws://127.0.0.1:{port}/ws?code=abc")
    assert info.value.retry_after == 3600.0
    assert str(info.value) == f"connect to ws://127.0.0.1:{port}/ws?... failed: handshake rate-limited (HTTP 429): slow down"


def test_a_503_with_retry_after_is_rate_limited() -> None:
    with raw_server(_status_server("503 Service Unavailable", "Retry-After: 7\r\n")) as (port, _):
        with pytest.raises(RateLimited) as info:
            open_conn(f"ws://127.0.0.1:{port}/ws")
    assert info.value.retry_after == 7.0


@pytest.mark.parametrize("status, kind", [("401 Unauthorized", AuthenticationError),
                                          ("403 Forbidden", AuthenticationError),
                                          ("503 Service Unavailable", ConnectionFailed),
                                          ("500 Internal Server Error", ConnectionFailed)])
def test_other_handshake_statuses(status: str, kind: type) -> None:
    with raw_server(_status_server(status, body=b"token=abcdef1234 rejected")) as (port, _):
        with pytest.raises(kind) as info:
            open_conn(f"ws://127.0.0.1:{port}/ws", redact=lambda s: s.replace("abcdef1234", "***"))
    assert type(info.value) is kind
    assert f"HTTP {status[:3]}" in str(info.value) and "token=*** rejected" in str(info.value)
    assert info.value.__cause__ is None  # the original text holds the secret


def test_a_bad_accept_header_is_a_connection_failure() -> None:
    def bad(client: socket.socket, stop: threading.Event) -> None:
        read_request(client)
        client.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                       b"Sec-WebSocket-Accept: bm90IHRoZSByaWdodCBrZXk=\r\n\r\n")

    with raw_server(bad) as (port, _):
        with pytest.raises(ConnectionFailed, match="not a valid WebSocket upgrade"):
            open_conn(f"ws://127.0.0.1:{port}/ws")


def test_close_1001_sends_a_close_frame_with_1001() -> None:
    received: List[Tuple[int, bytes]] = []

    def server(client: socket.socket, stop: threading.Event) -> None:
        client.sendall(switching(read_request(client)))
        received.append(read_client_frame(client))
        client.sendall(close_frame(1001))

    with raw_server(server) as (port, _):
        conn = open_conn(f"ws://127.0.0.1:{port}/ws")
        started = time.monotonic()
        conn.close(1001)
        assert time.monotonic() - started < 0.4  # the server answered: no need to wait it out
    assert received == [(CLOSE, (1001).to_bytes(2, "big"))]


def test_nothing_of_the_stream_is_left_in_websocket_clients_buffer() -> None:
    def server(client: socket.socket, stop: threading.Event) -> None:
        # The 101 and the first frames in one TCP write.
        client.sendall(switching(read_request(client)) + frame(b"hello", FRAME_TEXT) + frame(b"\x01\x02"))
        stop.wait(2.0)

    with raw_server(server) as (port, _):
        conn = open_conn(f"ws://127.0.0.1:{port}/ws")
        try:
            assert not conn._ws.frame_buffer.recv_buffer
            assert conn.recv(2.0) == (FRAME_TEXT, b"hello")
            assert conn.buffered
            assert conn.recv(2.0) == (FRAME_BINARY, b"\x01\x02")
        finally:
            conn.abort()
            conn.close()


def test_a_too_big_frame_on_a_real_connection_is_answered_with_1009() -> None:
    received: List[Tuple[int, bytes]] = []

    def server(client: socket.socket, stop: threading.Event) -> None:
        client.sendall(switching(read_request(client)) + frame(form=64, length=2 ** 40))
        received.append(read_client_frame(client))

    with raw_server(server) as (port, _):
        conn = open_conn(f"ws://127.0.0.1:{port}/ws", max_message_size=1000)
        with pytest.raises(Closed) as info:
            conn.recv(2.0)
        conn.close()
    assert info.value.code == 1009 and isinstance(info.value.error, ProtocolError)
    assert received == [(CLOSE, (1009).to_bytes(2, "big"))]


def test_abort_wakes_a_blocked_recv() -> None:
    def server(client: socket.socket, stop: threading.Event) -> None:
        client.sendall(switching(read_request(client)))
        stop.wait(3.0)

    with raw_server(server) as (port, _):
        conn = open_conn(f"ws://127.0.0.1:{port}/ws")
        timer = threading.Timer(0.2, conn.abort)
        timer.start()
        started = time.monotonic()
        with pytest.raises(Closed):
            conn.recv(5.0)
        assert time.monotonic() - started < 1.5
        timer.join()
        conn.close()
