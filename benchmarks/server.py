"""The burst server: a minimal IBKR gateway stand-in that runs in its own process.

It speaks just enough of the Client Portal protocol for :class:`~brokerfeeds.IbkrFeed`,
ibind's ``IbkrWsClient`` and a bare websocket-client loop: REST ``/tickle``,
``/iserver/auth/status``, ``/iserver/accounts``, ``/iserver/account/orders``; on the
socket ``system`` / ``act`` / ``sts`` on open, a ``system`` heartbeat, the ``ech+hb``
echo and one ``smd`` snapshot per quote subscription (ibind waits for it).

Once a client has sent its subscriptions (``trigger`` frames starting with
``trigger_prefix``), the server sends the payload set as fast as the socket takes it:
the frames are WebSocket-framed ahead of time and written to the transport in
256 KiB chunks cut at frame boundaries, so sending costs the server next to nothing
and the client under test is the bottleneck. Other modes: ``paced`` (a steady rate,
each frame stamped with the send time for latency), ``soak`` (one block sent
``repeat`` times) and ``idle`` (heartbeats only).

The parent talks to it through a :mod:`multiprocessing` pipe (see
:class:`~benchmarks.harness.ServerProcess`).
"""

from __future__ import annotations

import asyncio
import http.server
import json
import socketserver
import threading
import time
from typing import Any, Dict, List, Optional

from . import frames as fr


class BurstServer:
    """WebSocket + REST servers on 127.0.0.1 (run inside the server process)."""

    def __init__(self, config: Dict[str, Any]) -> None:
        self.config = config
        self.mode: str = config.get("mode", "burst")
        self.binary: bool = config.get("binary", True)
        self.trigger_prefix: str = config.get("trigger_prefix", "sor+")
        self.trigger: int = int(config.get("trigger", 1))
        self.hb_interval: float = float(config.get("hb_interval", 10.0))
        self.repeat: int = int(config.get("repeat", 1))
        self.rate: float = float(config.get("rate", 2000.0))
        self.duration: float = float(config.get("duration", 2.0))
        payloads = fr.generate(config["frames"], int(config["count"]), int(config.get("conids", 0))) \
            if config.get("frames") else []
        self.payload_sizes = fr.sizes(payloads) if payloads else {}
        self.chunks = fr.chunked(payloads, self.binary)
        self.count = len(payloads)
        del payloads
        self.blasts: List[Dict[str, Any]] = []
        self.connections = 0
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.ws_port = 0
        self.rest_port = 0
        self._http: Optional[socketserver.ThreadingTCPServer] = None

    # ------------------------------------------------------------- lifecycle
    def start(self) -> None:
        ready = threading.Event()
        thread = threading.Thread(target=self._run_loop, args=(ready,), daemon=True, name="burst-ws")
        thread.start()
        ready.wait(10)
        asyncio.run_coroutine_threadsafe(self._start_ws(), self.loop).result(10)
        self._start_http()

    def _run_loop(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(ready.set)
        self.loop.run_forever()

    async def _start_ws(self) -> None:
        from websockets.asyncio.server import serve

        self._server = await serve(self._serve, "127.0.0.1", 0, ping_interval=None, max_size=None,
                                   compression=None, max_queue=None)
        self.ws_port = self._server.sockets[0].getsockname()[1]

    # ------------------------------------------------------------- WebSocket
    def _encode(self, message: Dict[str, Any]) -> Any:
        data = fr.dumps(message)
        return data if self.binary else data.decode()

    async def _serve(self, ws: Any) -> None:
        with self.lock:
            self.connections += 1
        await ws.send(self._encode({"topic": "system", "success": "bench", "isFT": False, "isPaper": True}))
        await ws.send(self._encode({"topic": "act", "args": {"accounts": [fr.ACCOUNT],
                                                              "selectedAccount": fr.ACCOUNT}}))
        await ws.send(self._encode({"topic": "sts", "args": {"authenticated": True}}))
        tasks = [asyncio.ensure_future(self._heartbeats(ws))]
        seen: set = set()
        blasted = False
        try:
            async for message in ws:
                text = message if isinstance(message, str) else message.decode("utf-8", "replace")
                if text == "ech+hb":
                    await ws.send("ech+hb")
                    continue
                if text == "tic":
                    await ws.send(self._encode({"topic": "tic", "lastAccessed": 0}))
                    continue
                if text.startswith("smd+"):
                    conid = text.split("+")[1]
                    await ws.send(fr.smd_snapshot(conid) if self.binary else fr.smd_snapshot(conid).decode())
                if text.startswith(self.trigger_prefix):
                    seen.add(text.split("+")[1] if text.startswith("smd+") else text)
                    if not blasted and len(seen) >= self.trigger and self.mode != "idle":
                        blasted = True
                        tasks.append(asyncio.ensure_future(self._blast(ws)))
        except Exception:  # noqa: BLE001 - a client leaving mid-burst is normal
            pass
        finally:
            for task in tasks:
                task.cancel()

    async def _heartbeats(self, ws: Any) -> None:
        while True:
            await asyncio.sleep(self.hb_interval)
            await ws.send(self._encode({"topic": "system", "hb": int(time.time() * 1000)}))

    async def _blast(self, ws: Any) -> None:
        record: Dict[str, Any] = {"start": time.monotonic(), "end": None, "frames": 0}
        with self.lock:
            self.blasts.append(record)
        try:
            if self.mode == "paced":
                await self._paced(ws, record)
                return
            transport = ws.transport
            repeat = self.repeat if self.mode == "soak" else 1
            for chunk in fr.iter_blocks(self.chunks, repeat):
                transport.write(chunk)
                await ws.drain()
            record["frames"] = self.count * repeat
        except Exception as exc:  # noqa: BLE001
            record["error"] = repr(exc)
        finally:
            record["end"] = time.monotonic()

    async def _paced(self, ws: Any, record: Dict[str, Any]) -> None:
        """``rate`` frames per second for ``duration`` s, each stamped with its send time."""
        total = int(self.rate * self.duration)
        start = time.monotonic()
        transport = ws.transport
        seq = 0
        while seq < total:
            now = time.monotonic()
            due = start + seq / self.rate
            if now < due:
                await asyncio.sleep(due - now)
                continue
            while seq < total and start + seq / self.rate <= now:
                transport.write(fr.ws_frame(fr.timed_sor(seq, time.monotonic()), self.binary))
                seq += 1
            await ws.drain()
        record["frames"] = total

    # ------------------------------------------------------------- REST
    def _start_http(self) -> None:
        def reply(path: str, query: str) -> Any:
            if path.endswith("/tickle"):
                return {"session": "bench-session-0001", "ssoExpires": 600000, "collission": False,
                        "userId": 1, "iserver": {"authStatus": {"authenticated": True, "competing": False,
                                                                 "connected": True}}}
            if path.endswith("/iserver/auth/status"):
                return {"authenticated": True, "competing": False, "connected": True, "message": ""}
            if path.endswith("/iserver/accounts"):
                return {"accounts": [fr.ACCOUNT], "selectedAccount": fr.ACCOUNT}
            if path.endswith("/iserver/account/orders"):
                return {"orders": [], "snapshot": "force" not in query}
            if path.endswith("/portfolio/accounts"):
                return [{"accountId": fr.ACCOUNT, "id": fr.ACCOUNT}]
            return None

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                path, _, query = self.path.partition("?")
                body = reply(path, query)
                raw = json.dumps(body if body is not None else {"error": "not found"}).encode()
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = _serve

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 256

        self._http = Server(("127.0.0.1", 0), Handler)
        self.rest_port = self._http.server_address[1]
        threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.2},
                         daemon=True, name="burst-rest").start()

    def info(self) -> Dict[str, Any]:
        with self.lock:
            return {"blasts": [dict(b) for b in self.blasts], "connections": self.connections,
                    "count": self.count, "payload_bytes": self.payload_sizes}


    def addresses(self) -> Dict[str, Any]:
        return {"url": f"ws://127.0.0.1:{self.ws_port}/v1/api/ws",
                "rest_url": f"http://127.0.0.1:{self.rest_port}/v1/api",
                "count": self.count, "payload_bytes": self.payload_sizes}


def server_main(config: Dict[str, Any], conn: Any) -> None:
    """Entry point of the server process: serve until told to stop over ``conn``."""
    if config.get("sim"):
        from .sims import build

        server: Any = build(config)
    else:
        server = BurstServer(config)
    server.start()
    conn.send(server.addresses())
    while True:
        try:
            command = conn.recv()
        except EOFError:
            return
        if command == "info":
            conn.send(server.info())
        elif command == "stop":
            conn.send("bye")
            return
