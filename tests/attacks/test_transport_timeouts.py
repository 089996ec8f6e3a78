"""Hostile servers cannot hold the io thread: trickled frames, trickled upgrades, hanging connects.

Every server here is a raw socket on loopback (127.0.0.1 or ::1); nothing leaves the
machine. A hanging TCP connect is made with a listener whose accept queue is full (it
never accepts): the kernel drops further SYNs, so a client's connect retries and hangs.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from typing import Any, Callable, Iterator, List

import pytest

from brokerfeeds import FirstockFeed
from brokerfeeds.errors import BrokerFeedsError, ConnectionFailed
from brokerfeeds.transport import FRAME_BINARY, FRAME_TEXT, ConnectTarget, Connection
from helpers import FAST_RECONNECT, Recorder, feed_threads, wait_until
from test_transport import _self_signed, frame, raw_server, read_request, switching, ticks

pytestmark = pytest.mark.timeout(20)


def open_conn(url: str, timeout: float = 2.0, **kwargs: Any) -> Connection:
    return Connection.open(ConnectTarget(url), timeout=timeout, verify=False, **kwargs)


def helper_threads() -> List[str]:
    """Threads Connection.open may start (they must be gone once it returns)."""
    return [t.name for t in threading.enumerate() if t.name.startswith("ws-")]


@contextlib.contextmanager
def hanging_port() -> Iterator[int]:
    """A loopback port whose TCP connects hang: a listener with a full accept queue."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers: List[socket.socket] = []
    try:
        for _ in range(8):  # fill the queue until a connect no longer completes
            probe = socket.socket()
            probe.settimeout(0.3)
            try:
                probe.connect(("127.0.0.1", port))
            except socket.timeout:
                probe.close()
                break
            fillers.append(probe)
        else:
            pytest.skip("cannot make a TCP connect hang on loopback here")
        yield port
    finally:
        for sock in fillers:
            sock.close()
        listener.close()


# ------------------------------------------------------------------ 1. a trickled frame does not hold recv

def _upgrade_then_trickle(payload_size: int, interval: float = 0.1) -> Callable[[socket.socket, threading.Event], None]:
    """Completes the upgrade, then sends the frame of ``payload_size`` bytes one byte per ``interval``."""
    def handler(client: socket.socket, stop: threading.Event) -> None:
        client.sendall(switching(read_request(client)))
        data = frame(b"t" * payload_size, FRAME_TEXT)
        for byte, _ in zip(data, ticks(stop, interval, total=4.0)):
            client.sendall(bytes([byte]))
        stop.wait(3.0)
    return handler


def test_recv_returns_none_when_its_timeout_passes_however_bytes_trickle() -> None:
    with raw_server(_upgrade_then_trickle(1000)) as (port, _):
        conn = open_conn(f"ws://127.0.0.1:{port}/ws")
        try:
            for _ in range(3):
                started = time.monotonic()
                assert conn.recv(0.4) is None
                elapsed = time.monotonic() - started
                assert 0.35 < elapsed < 0.7, elapsed
        finally:
            conn.abort()
            conn.close()


def test_recv_returns_on_time_over_tls_too(tmp_path: Any) -> None:
    cert, key = _self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with raw_server(_upgrade_then_trickle(1000), tls=context) as (port, _):
        conn = Connection.open(ConnectTarget(f"wss://127.0.0.1:{port}/ws"), timeout=2, verify=cert)
        try:
            for _ in range(2):
                started = time.monotonic()
                assert conn.recv(0.4) is None
                assert 0.35 < time.monotonic() - started < 0.7
        finally:
            conn.abort()
            conn.close()


def test_a_trickled_frame_is_still_assembled_across_recv_calls() -> None:
    with raw_server(_upgrade_then_trickle(8, interval=0.05)) as (port, _):
        conn = open_conn(f"ws://127.0.0.1:{port}/ws")
        try:
            nones = 0
            started = time.monotonic()
            while True:
                got = conn.recv(0.15)
                if got is not None:
                    break
                nones += 1
                assert time.monotonic() - started < 3.0
            assert got == (FRAME_TEXT, b"t" * 8)
            assert nones >= 3  # 10 bytes at 0.05 s: several timeouts before the frame is whole
        finally:
            conn.abort()
            conn.close()


def test_a_feed_fed_a_never_ending_frame_byte_by_byte_reports_a_stale_connection() -> None:
    with raw_server(_upgrade_then_trickle(1 << 20), connections=2) as (port, accepted):
        feed = FirstockFeed("AB1", "jkey", url=f"ws://127.0.0.1:{port}/V2/ws", rest_url=None,
                            stale_after=0.5, auth_timeout=10, reconnect=FAST_RECONNECT)
        rec = Recorder(feed, kinds=("disconnect", "error"))
        with feed:
            wait_until(lambda: accepted, timeout=2.0)
            started = time.monotonic()
            lost = rec.wait_for("disconnect", timeout=2.5)
            assert time.monotonic() - started < 2.0
            assert "stale" in lost[0].reason, lost[0].reason
            wait_until(lambda: len(accepted) == 2, timeout=2.0)  # and it reconnected
    assert not feed_threads()


# ------------------------------------------------------------------ 2. a trickled or endless upgrade

def test_an_upgrade_answered_one_byte_per_second_times_out() -> None:
    def slow(client: socket.socket, stop: threading.Event) -> None:
        answer = switching(read_request(client))
        for byte, _ in zip(answer, ticks(stop, 1.0, total=10.0)):
            client.sendall(bytes([byte]))

    with raw_server(slow) as (port, _):
        started = time.monotonic()
        with pytest.raises(ConnectionFailed, match="timed out after 1s"):
            open_conn(f"ws://127.0.0.1:{port}/ws", timeout=1)
        assert time.monotonic() - started < 3.0
    assert not helper_threads()


def _endless_headers(client: socket.socket, stop: threading.Event) -> None:
    read_request(client)
    client.sendall(b"HTTP/1.1 101 Switching Protocols\r\n")
    for _ in ticks(stop, 0.02, total=10.0):
        client.sendall(b"X-Padding: more\r\n")


def test_an_endless_stream_of_header_lines_times_out() -> None:
    with raw_server(_endless_headers) as (port, _):
        started = time.monotonic()
        with pytest.raises(ConnectionFailed, match="timed out after 1s"):
            open_conn(f"ws://127.0.0.1:{port}/ws", timeout=1)
        assert time.monotonic() - started < 3.0
    assert not helper_threads()


def test_a_feed_facing_endless_header_lines_fails_the_attempt_within_the_connect_timeout() -> None:
    with raw_server(_endless_headers) as (port, _):
        feed = FirstockFeed("AB1", "jkey", url=f"ws://127.0.0.1:{port}/V2/ws", rest_url=None,
                            connect_timeout=1, reconnect=FAST_RECONNECT)
        errors: List[BrokerFeedsError] = []
        feed.on_error(errors.append)
        started = time.monotonic()
        with feed:
            wait_until(lambda: errors, timeout=3.0)
            assert time.monotonic() - started < 3.0
        assert "timed out after 1s" in str(errors[0])


# ------------------------------------------------------------------ 3. abort() at any stage of the connect

def test_abort_interrupts_a_hanging_tcp_connect() -> None:
    with hanging_port() as port:
        timer = threading.Timer(0.3, lambda: conns[0].abort())
        conns: List[Connection] = []

        def started(conn: Connection) -> None:
            conns.append(conn)
            timer.start()

        began = time.monotonic()
        with pytest.raises(ConnectionFailed) as info:
            open_conn(f"ws://127.0.0.1:{port}/ws", timeout=3, started=started)
        elapsed = time.monotonic() - began
        timer.join()
    assert 0.25 < elapsed < 0.8, elapsed
    assert "aborted" in str(info.value)
    assert not helper_threads()


def test_the_deadline_bounds_a_hanging_tcp_connect() -> None:
    with hanging_port() as port:
        began = time.monotonic()
        with pytest.raises(ConnectionFailed, match=r"timed out after 0\.5s$"):
            open_conn(f"ws://127.0.0.1:{port}/ws", timeout=0.5)
        assert time.monotonic() - began < 1.2
    assert not helper_threads()


def test_abort_before_the_tcp_connect_means_no_connect_at_all() -> None:
    def answer(client: socket.socket, stop: threading.Event) -> None:
        client.sendall(switching(read_request(client)))
        stop.wait(1.0)

    with raw_server(answer) as (port, accepted):
        began = time.monotonic()
        with pytest.raises(ConnectionFailed, match="aborted"):
            open_conn(f"ws://127.0.0.1:{port}/ws", timeout=3, started=lambda conn: conn.abort())
        assert time.monotonic() - began < 0.5
        time.sleep(0.2)
        assert accepted == []  # the abort came first: no TCP connection was made


def test_abort_interrupts_a_hanging_name_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    # No real lookup: getaddrinfo is replaced by one that hangs until the test ends.
    release = threading.Event()
    real = socket.getaddrinfo

    def hanging(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "hangs.example":
            if kwargs.get("flags", 0) & socket.AI_NUMERICHOST or (len(args) >= 5 and args[4] & socket.AI_NUMERICHOST):
                raise socket.gaierror(socket.EAI_NONAME, "not numeric")
            release.wait(10.0)
            raise socket.gaierror(socket.EAI_NONAME, "released")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    try:
        conns: List[Connection] = []
        timer = threading.Timer(0.3, lambda: conns[0].abort())

        def started(conn: Connection) -> None:
            conns.append(conn)
            timer.start()

        began = time.monotonic()
        with pytest.raises(ConnectionFailed, match="aborted"):
            open_conn("ws://hangs.example:1/ws", timeout=3, started=started)
        assert time.monotonic() - began < 0.8
        timer.join()
        began = time.monotonic()
        with pytest.raises(ConnectionFailed, match=r"timed out after 0\.4s"):  # and the deadline bounds it
            open_conn("ws://hangs.example:1/ws", timeout=0.4)
        assert time.monotonic() - began < 1.0
    finally:
        release.set()
    wait_until(lambda: not helper_threads(), timeout=2.0)


def test_stop_returns_promptly_while_the_tcp_connect_hangs() -> None:
    with hanging_port() as port:
        feed = FirstockFeed("AB1", "jkey", url=f"ws://127.0.0.1:{port}/V2/ws", rest_url=None,
                            connect_timeout=10, reconnect=FAST_RECONNECT)
        errors: List[BrokerFeedsError] = []
        feed.on_error(errors.append)
        feed.start()
        time.sleep(0.4)  # the io thread is inside the TCP connect by now
        assert not errors
        began = time.monotonic()
        assert feed.stop(timeout=2) is True
        assert time.monotonic() - began < 1.0
        assert not feed_threads()
        assert not errors  # an abort asked for by stop() is not reported as a failure


# ------------------------------------------------------------------ names and IPv6

def test_a_host_name_is_resolved_and_connected() -> None:
    def answer(client: socket.socket, stop: threading.Event) -> None:
        client.sendall(switching(read_request(client)) + frame(b"hi", FRAME_BINARY))
        stop.wait(1.0)

    with raw_server(answer) as (port, _):
        conn = open_conn(f"ws://localhost:{port}/ws")
        try:
            assert conn.recv(2.0) == (FRAME_BINARY, b"hi")
        finally:
            conn.abort()
            conn.close()
    assert not helper_threads()


def test_a_proxy_from_the_environment_is_still_used(monkeypatch: pytest.MonkeyPatch) -> None:
    # websocket-client connects through http_proxy itself; the target name is never looked up here.
    requests: List[bytes] = []

    def proxy(client: socket.socket, stop: threading.Event) -> None:
        requests.append(read_request(client))
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        client.sendall(switching(read_request(client)) + frame(b"via proxy", FRAME_TEXT))
        stop.wait(1.0)

    for name in ("no_proxy", "NO_PROXY", "https_proxy", "HTTPS_PROXY", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with raw_server(proxy) as (port, _):
        monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{port}")
        conn = open_conn("ws://feed.example.invalid:8080/ws")
        try:
            assert conn.recv(2.0) == (FRAME_TEXT, b"via proxy")
        finally:
            conn.abort()
            conn.close()
    assert requests[0].startswith(b"CONNECT feed.example.invalid:8080 ")


def test_an_ipv6_literal_connects() -> None:
    try:
        listener = socket.socket(socket.AF_INET6)
        listener.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    listener.listen(1)
    listener.settimeout(3.0)
    port = listener.getsockname()[1]

    def serve() -> None:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        with client:
            client.settimeout(3.0)
            client.sendall(switching(read_request(client)) + frame(b"v6", FRAME_TEXT))
            time.sleep(0.5)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        conn = open_conn(f"ws://[::1]:{port}/ws")
        try:
            assert conn.recv(2.0) == (FRAME_TEXT, b"v6")
        finally:
            conn.abort()
            conn.close()
    finally:
        thread.join(3.0)
        listener.close()
