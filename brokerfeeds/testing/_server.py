"""What every broker simulator shares: a real WebSocket server and a REST server on
127.0.0.1, run on background threads, scriptable from ordinary synchronous test code.

The WebSocket side is the ``websockets`` library (the ``sim`` extra) on an asyncio loop
in its own thread; the REST side is the standard library's threading HTTP server.
Subclasses implement :meth:`SimulatorBase.serve_client` (one coroutine per connection)
and register REST routes with :meth:`SimulatorBase.route`.

Faults every simulator supports: :meth:`drop` (TCP reset, no close frame),
:meth:`close_all` (a close frame with a chosen code), :meth:`stall` (stop sending
anything and stop reading, so pings go unanswered), :meth:`restart` (the server goes
away and comes back on the same ports) and :meth:`send_raw` (any bytes, text or binary).
"""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import socketserver
import sys
import threading
import time
import urllib.parse
from typing import Any, Callable, Coroutine, Dict, List, Optional, Sequence, Set, Tuple, TypeVar, Union

try:
    from websockets.asyncio.server import Server, ServerConnection, serve
    from websockets.datastructures import Headers
    from websockets.http11 import Request, Response
except ImportError as exc:  # pragma: no cover
    raise ImportError(
        "brokerfeeds.testing needs the 'websockets' package: pip install 'brokerfeeds[sim]'"
    ) from exc

__all__ = ["SimulatorBase", "HttpRequest", "HttpReply", "Client"]

T = TypeVar("T")

#: websockets' logger for the simulators: its DEBUG lines (headers, frames) would show secrets,
#: so they are filtered out; INFO and above follow the application's logging as before.
_WS_LOG = logging.getLogger("websockets.simulator")
_WS_LOG.addFilter(lambda record: record.levelno >= logging.INFO)

#: How :meth:`SimulatorBase.check_handshake` refuses: ``(status, body)`` or with headers.
Refusal = Union[Tuple[int, str], Tuple[int, str, Dict[str, str]]]
S = TypeVar("S", bound="SimulatorBase")


class HttpRequest:
    """A REST request as a route handler sees it."""

    def __init__(self, method: str, path: str, query: Dict[str, str], headers: Dict[str, str], body: bytes):
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        """The body decoded as JSON (None if empty or invalid)."""
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None

    def header(self, name: str) -> Optional[str]:
        """A header's value, case-insensitively."""
        lowered = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lowered:
                return value
        return None


HttpReply = Tuple[int, Any, Dict[str, str]]
RouteHandler = Callable[[HttpRequest], Union[HttpReply, Tuple[int, Any]]]


class Client:
    """One connected client, as the simulator tracks it."""

    def __init__(self, connection: ServerConnection, info: Dict[str, Any]):
        self.connection = connection
        self.info = info  # what the subclass learned at handshake (account, token, ...)
        self.stalled = False


class SimulatorBase:
    """Base class of the broker simulators (context manager; ``url`` and ``rest_url``)."""

    ws_path = "/"
    #: websockets keep-alive: server pings every N seconds and drops a client whose pong
    #: is later than ``ping_timeout`` (None disables).
    ping_interval: Optional[float] = None
    ping_timeout: Optional[float] = None

    def __init__(self, host: str = "127.0.0.1", port: int = 0, rest_port: int = 0, with_rest: bool = True):
        self.host = host
        self._port = port
        self._rest_port = rest_port
        self._with_rest = with_rest
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._server: Optional[Server] = None
        self._http: Optional[http.server.HTTPServer] = None
        self._http_thread: Optional[threading.Thread] = None
        self._routes: Dict[Tuple[str, str], RouteHandler] = {}
        self.clients: Set[Client] = set()
        self.lock = threading.RLock()
        self.connections = 0  # accepted WebSocket connections, ever
        self.rejected = 0  # refused handshakes, ever
        self.requests: List[Tuple[str, str]] = []  # (method, path?query) of every REST call
        self.received: List[Tuple[float, Any]] = []  # every client frame (monotonic time, data)
        self.http_fault: Optional[Tuple[int, Any, Dict[str, str]]] = None
        self._clients_changed = threading.Condition(self.lock)

    # ----------------------------------------------------------------- lifecycle
    def start(self: S) -> S:
        """Start both servers; returns once they accept connections."""
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, args=(ready,), name=f"{type(self).__name__}-ws", daemon=True)
        self._thread.start()
        ready.wait(10)
        self._call(self._start_ws())
        if self._with_rest:
            self._start_http()
        return self

    def stop(self) -> None:
        """Stop both servers and their threads."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._loop is not None and self._thread is not None:
            try:
                self._call(self._stop_ws(), timeout=5)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(5)
                self._loop.close()
                self._loop = None

    def restart(self, down_for: float = 0.0) -> None:
        """Drop every client and stop listening; listen again (same port) after ``down_for`` s."""
        self._call(self._stop_ws())
        if down_for:
            time.sleep(down_for)
        self._call(self._start_ws())

    def __enter__(self: S) -> S:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The WebSocket server's port."""
        return self._port

    @property
    def rest_port(self) -> int:
        """The REST server's port."""
        return self._rest_port

    @property
    def ws_base(self) -> str:
        """``ws://127.0.0.1:<port>``."""
        return f"ws://{self.host}:{self._port}"

    @property
    def rest_base(self) -> str:
        """``http://127.0.0.1:<rest_port>``."""
        return f"http://{self.host}:{self._rest_port}"

    # ----------------------------------------------------------------- for subclasses
    async def serve_client(self, client: Client) -> None:
        """Speak the broker's protocol with one client until it disconnects."""
        raise NotImplementedError

    async def read_messages(self, client: Client, handle: Optional[Callable[[Client, Any], Any]] = None,
                            tasks: Sequence["asyncio.Future[Any]"] = (), as_text: bool = True) -> None:
        """Record every message ``client`` sends until it disconnects, passing each to
        ``handle`` (decoded to text unless ``as_text`` is False; awaited if it is a
        coroutine function); then cancel ``tasks`` (the client's pingers, writers, ...)."""
        try:
            async for message in client.connection:
                self.record(message)
                if handle is not None:
                    if as_text and isinstance(message, bytes):
                        message = message.decode()
                    result = handle(client, message)
                    if asyncio.iscoroutine(result):
                        await result
        finally:
            for task in tasks:
                task.cancel()

    def check_handshake(self, request: Request) -> Union[Dict[str, Any], Refusal]:
        """Accept (return info for the :class:`Client`) or refuse: ``(status, body)`` or
        ``(status, body, headers)`` (e.g. a 302 with its ``Location``)."""
        return {}

    def route(self, method: str, path: str, handler: RouteHandler) -> None:
        """Serve ``method path`` on the REST server with ``handler``."""
        self._routes[(method.upper(), path)] = handler

    # ----------------------------------------------------------------- scripting helpers
    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run ``coro`` on the simulator's loop and wait for its result."""
        return self._call(coro, timeout)

    def broadcast(self, message: Union[str, bytes, Dict[str, Any], List[Any]], binary: bool = False) -> int:
        """Send ``message`` (dicts/lists as JSON) to every live client; returns how many got it."""
        data = _encode(message, binary)
        return self._call(self._broadcast(data))

    def send_raw(self, data: Union[str, bytes], text: bool = True) -> int:
        """Send raw bytes as a text (possibly invalid UTF-8) or binary frame to every client."""
        payload = data.encode() if isinstance(data, str) else data
        return self._call(self._broadcast(payload, text=text))

    def drop(self) -> None:
        """Cut every client's TCP connection without a close frame (like a network loss)."""
        self._call(self._each(lambda c: c.connection.transport.abort()))

    def close_all(self, code: int = 1000, reason: str = "") -> None:
        """Close every client with a close frame carrying ``code``."""
        self._call(self._close_all(code, reason))

    def stall(self) -> None:
        """Go silent: send nothing and stop reading (pings go unanswered) until :meth:`resume`."""

        def _pause(client: Client) -> None:
            client.stalled = True
            client.connection.transport.pause_reading()

        self._call(self._each(_pause))

    def resume(self) -> None:
        """Undo :meth:`stall`."""

        def _resume(client: Client) -> None:
            client.stalled = False
            client.connection.transport.resume_reading()

        self._call(self._each(_resume))

    def wait_for_clients(self, count: int = 1, timeout: float = 10.0) -> bool:
        """Block until at least ``count`` clients are connected."""
        deadline = time.monotonic() + timeout
        with self._clients_changed:
            while len(self.clients) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._clients_changed.wait(remaining)
        return True

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01) -> bool:
        """Poll ``predicate`` until true or ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(interval)
        return predicate()

    def record(self, data: Any) -> None:
        """Remember a frame received from a client (tests inspect :attr:`received`)."""
        with self.lock:
            self.received.append((time.monotonic(), data))

    def received_texts(self) -> List[str]:
        """Every client frame received so far, as text."""
        with self.lock:
            return [d.decode("utf-8", "replace") if isinstance(d, bytes) else str(d) for _, d in self.received]

    # ----------------------------------------------------------------- internals
    def _run_loop(self, ready: threading.Event) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(ready.set)
        self._loop.run_forever()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        assert self._loop is not None, "simulator not started"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _start_ws(self) -> None:
        # websockets logs every header and frame at DEBUG: cookies, one-time codes and tokens.
        # The simulators log through a logger of their own that never goes below INFO.
        self._server = await serve(
            self._handle,
            self.host,
            self._port,
            logger=_WS_LOG,
            process_request=self._process_request,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            max_size=None,
            compression=None,
        )
        self._port = self._server.sockets[0].getsockname()[1]

    async def _stop_ws(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close(close_connections=False)
        for client in list(self.clients):
            client.connection.transport.abort()
        await server.wait_closed()

    def _process_request(self, connection: ServerConnection, request: Request) -> Optional[Response]:
        verdict = self.check_handshake(request)
        if isinstance(verdict, tuple):
            if verdict[0] >= 400:
                with self.lock:
                    self.rejected += 1
            response = connection.respond(verdict[0], verdict[1])
            for name, value in (verdict[2] if len(verdict) > 2 else {}).items():
                response.headers[name] = value
            return response
        connection.sim_info = verdict  # type: ignore[attr-defined]  # our own tag on websockets' connection
        return None

    async def _handle(self, connection: ServerConnection) -> None:
        client = Client(connection, getattr(connection, "sim_info", {}))
        with self._clients_changed:
            self.clients.add(client)
            self.connections += 1
            self._clients_changed.notify_all()
        try:
            await self.serve_client(client)
        except Exception:  # noqa: BLE001 - a client going away mid-send is normal here
            pass
        finally:
            with self._clients_changed:
                self.clients.discard(client)
                self._clients_changed.notify_all()

    async def _broadcast(self, data: Union[str, bytes], text: Optional[bool] = None) -> int:
        sent = 0
        for client in list(self.clients):
            if await self.send_to(client, data, text=text):
                sent += 1
        return sent

    async def send_to(self, client: Client, data: Union[str, bytes, Dict[str, Any], List[Any]],
                      text: Optional[bool] = None, binary: bool = False) -> bool:
        """Send to one client (coroutine; for subclasses). False if stalled or gone."""
        if client.stalled:
            return False
        if isinstance(data, (dict, list)):
            data = _encode(data, binary)
        try:
            await client.connection.send(data, text=text)
        except Exception:  # noqa: BLE001
            return False
        return True

    async def _each(self, fn: Callable[[Client], None]) -> None:
        for client in list(self.clients):
            fn(client)

    async def _close_all(self, code: int, reason: str) -> None:
        for client in list(self.clients):
            try:
                await client.connection.close(code, reason)
            except Exception:  # noqa: BLE001
                pass

    def _start_http(self) -> None:
        sim = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                parsed = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = HttpRequest(self.command, parsed.path, query, dict(self.headers.items()), body)
                with sim.lock:
                    sim.requests.append((self.command, self.path))
                fault = sim.http_fault
                handler = sim._routes.get((self.command, parsed.path)) or sim._match_route(self.command, parsed.path)
                if fault is not None:
                    status, payload, headers = fault
                elif handler is None:
                    status, payload, headers = 404, {"error": f"no route {self.command} {parsed.path}"}, {}
                else:
                    try:
                        reply = handler(request)
                    except Exception as exc:  # noqa: BLE001
                        reply = (500, {"error": repr(exc)})
                    status, payload = reply[0], reply[1]
                    headers = reply[2] if len(reply) > 2 else {}
                raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                # A client that went away mid-reply (a feed's stop() cuts its REST calls)
                # is normal for a server; anything else is printed as socketserver does.
                if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
                    return
                super().handle_error(request, client_address)

        server = self._http = Server((self.host, self._rest_port), Handler)
        self._rest_port = int(server.server_address[1])
        self._http_thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                             name=f"{type(self).__name__}-rest", daemon=True)
        self._http_thread.start()

    def _match_route(self, method: str, path: str) -> Optional[RouteHandler]:
        """Routes may contain ``{param}`` segments (the handler reads them from ``request.path``)."""
        parts = path.strip("/").split("/")
        for (m, pattern), handler in self._routes.items():
            if m != method or "{" not in pattern:
                continue
            pparts = pattern.strip("/").split("/")
            if len(pparts) != len(parts):
                continue
            if all(p == q or (p.startswith("{") and p.endswith("}")) for p, q in zip(pparts, parts)):
                return handler
        return None


def _encode(message: Any, binary: bool) -> Union[str, bytes]:
    if isinstance(message, (dict, list)):
        text = json.dumps(message, separators=(",", ":"))
        return text.encode() if binary else text
    if isinstance(message, str) and binary:
        return message.encode()
    return message  # type: ignore[no-any-return]  # already str or bytes (a frame as given)


def query_of(request: Request) -> Dict[str, str]:
    """The query parameters of a handshake request."""
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(request.path).query, keep_blank_values=True))


def header_of(request: Request, name: str) -> Optional[str]:
    """A handshake header (the first, if repeated)."""
    headers: Headers = request.headers
    try:
        values = headers.get_all(name)
    except KeyError:
        return None
    return values[0] if values else None
