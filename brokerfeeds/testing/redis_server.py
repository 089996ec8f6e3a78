"""A throw-away ``redis-server`` for tests, examples and benchmarks of :mod:`brokerfeeds.bus`.

It runs the real server binary found on ``PATH`` (the Debian / Ubuntu package
``redis-server``, or a source build), on a free loopback port, with its files in a fresh
temporary directory, and is stopped by its process id. Persistence is the append-only file
(``appendonly yes``, ``appendfsync everysec``): Redis writes each command to the file
before it replies ("we are required to write the AOF before replying to the client": the
comment on ``flushAppendOnlyFile`` in redis ``src/aof.c``; the fsync is what ``everysec``
delays, and a killed process does not lose what the kernel already has), so a server killed
with SIGKILL and started again on the same directory keeps every write it acknowledged, as
a production server with AOF would.

    with RedisServer() as server:
        publisher = RedisPublisher(server.url)
        ...
        server.kill()      # SIGKILL, mid-stream
        server.start()     # same port, same data
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Any, List, Optional

__all__ = ["RedisServer", "redis_server_path", "free_port"]


def redis_server_path() -> Optional[str]:
    """The ``redis-server`` binary on ``PATH`` (or ``/usr/bin``, ``/usr/sbin``), or None."""
    found = shutil.which("redis-server")
    if found:
        return found
    for candidate in ("/usr/bin/redis-server", "/usr/sbin/redis-server", "/usr/local/bin/redis-server"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1 (context manager).

    ``extra`` are more ``--name value`` configuration arguments (e.g.
    ``["--requirepass", "..."]``). :meth:`kill` and :meth:`start` keep the port and the
    data directory, so a client sees the same server come back.
    """

    def __init__(self, port: Optional[int] = None, directory: Optional[str] = None,
                 extra: Optional[List[str]] = None, binary: Optional[str] = None) -> None:
        found = binary or redis_server_path()
        if found is None:
            raise FileNotFoundError("redis-server is not installed (Debian/Ubuntu: apt-get install redis-server)")
        self.binary = found
        self.port = port or free_port()
        self._own_dir = directory is None
        self.directory = directory or tempfile.mkdtemp(prefix="brokerfeeds-redis-")
        self.extra = list(extra or [])
        self.process: Optional["subprocess.Popen[bytes]"] = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> Optional[int]:
        """The server's process id while it runs."""
        return self.process.pid if self.process is not None and self.process.poll() is None else None

    def start(self, timeout: float = 10.0) -> "RedisServer":
        """Start the server (again) and wait until it answers PING."""
        if self.pid is not None:
            return self
        command = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.directory,
            "--save", "", "--appendonly", "yes", "--appendfsync", "everysec", "--daemonize", "no",
            "--protected-mode", "no", "--logfile", os.path.join(self.directory, "redis.log"),
            *self.extra,
        ]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}; see {self.log_tail()}")
            if self.ping():
                return self
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"redis-server did not answer within {timeout:g}s; see {self.log_tail()}")

    def ping(self) -> bool:
        """True if the server answers PING (with or without a password set, a reply is a reply)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                reply = sock.recv(64)
                return reply.startswith((b"+PONG", b"-NOAUTH"))  # not "-LOADING": the AOF is still read
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL the server by its pid (no shutdown save: only the AOF survives) and reap it."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        """Stop the server by its pid (SIGTERM, then SIGKILL after 5 s)."""
        self._signal(signal.SIGTERM)

    def _signal(self, signum: int) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signum)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(5)

    def log_tail(self, lines: int = 5) -> str:
        """The last lines of the server's log (for error messages)."""
        try:
            with open(os.path.join(self.directory, "redis.log"), errors="replace") as f:
                return " | ".join(f.read().strip().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def close(self) -> None:
        """Stop the server and remove its directory (if this object created it)."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()
