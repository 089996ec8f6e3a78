"""Burst modes of the brokerfeeds simulators, for the server process (scenarios 3 and 4).

Each subclass keeps its simulator's handshake and protocol (auth, subscribe, acks) and,
at the moment the broker would start streaming, writes pre-framed payloads straight to
the transport in 256 KiB chunks (as :mod:`benchmarks.server` does), so the simulator is
not the bottleneck. Every connection gets the burst once.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Dict, List, Optional

from . import frames as fr


class _Blaster:
    """Mixin: pre-framed chunks, a blast coroutine and the record the parent reads."""

    chunks: List[bytes]
    count: int

    def _setup_burst(self, payloads: List[bytes], binary: bool) -> None:
        self.chunks = fr.chunked(payloads, binary)
        self.count = len(payloads)
        self.payload_sizes = fr.sizes(payloads) if payloads else {}
        self.blasts: List[Dict[str, Any]] = []

    def _blast_once(self, client: Any, after: Optional[Callable[[], None]] = None) -> None:
        """Start the burst to ``client`` unless it already had one; ``after`` runs once it is sent."""
        if not client.info.get("blast"):
            client.info["blast"] = asyncio.ensure_future(self._blast_to(client.connection, after))

    async def _blast_to(self, connection: Any, after: Optional[Callable[[], None]] = None) -> None:
        await asyncio.sleep(0.02)  # let the acknowledgement go out first
        record: Dict[str, Any] = {"start": time.monotonic(), "end": None, "frames": 0}
        self.blasts.append(record)
        try:
            for chunk in self.chunks:
                connection.transport.write(chunk)
                await connection.drain()
            record["frames"] = self.count
            if after is not None:
                after()
        except Exception as exc:  # noqa: BLE001 - the client went away
            record["error"] = repr(exc)
        finally:
            record["end"] = time.monotonic()

    def info(self) -> Dict[str, Any]:
        return {"blasts": [dict(b) for b in self.blasts], "count": self.count, "payload_bytes": self.payload_sizes}

    def _addresses(self, **extra: Any) -> Dict[str, Any]:
        return {"count": self.count, "payload_bytes": self.payload_sizes, **extra}


def clearstreet(config: Dict[str, Any]) -> Any:
    """The Clear Street simulator replaying ``count`` sequenced messages after a subscribe."""
    from brokerfeeds.testing.clearstreet import ClearStreetSimulator

    class Burst(_Blaster, ClearStreetSimulator):
        def __init__(self) -> None:
            super().__init__(accounts=("100000",), hb_interval=5.0)
            self.withhold_replay_complete = True  # sent after the burst instead
            self._setup_burst(fr.cs_frames(int(config["count"]), "100000", self.accounts["100000"]), False)

        def _on_client_message(self, client: Any, message: Any) -> None:
            super()._on_client_message(client, message)
            if client.info.get("subs"):
                self._blast_once(client, lambda: client.info["queue"].put_nowait(
                    self._frame({"type": "replay-complete"})))

        def addresses(self) -> Dict[str, Any]:
            return self._addresses(url=self.url, rest_url=self.rest_url, token=self.token, account="100000")

    return Burst()


def upstox(config: Dict[str, Any]) -> Any:
    """The Upstox simulator sending ``count`` order updates on every authorized socket, as
    soon as the one-time URI is opened (the SDK's ``REDIRECT_PATH`` is answered with a 302 to one)."""
    from brokerfeeds.testing.upstox import REDIRECT_PATH, UpstoxSimulator

    class Burst(_Blaster, UpstoxSimulator):
        def __init__(self) -> None:
            super().__init__(ping_every=None)
            self._setup_burst(fr.upstox_frames(int(config["count"]), self.user_id), False)

        async def serve_client(self, client: Any) -> None:
            if "order" in client.info.get("types", ()):
                self._blast_once(client)
            await super().serve_client(client)

        def addresses(self) -> Dict[str, Any]:
            return self._addresses(url=self.ws_base + REDIRECT_PATH, rest_url=self.rest_url,
                                   token=self.token)

    return Burst()


def firstock(config: Dict[str, Any]) -> Any:
    """The Firstock simulator sending ``count`` order updates after a client's first subscribe
    (order updates need none, but every client subscribes once it reads the socket: the
    official SDK only starts its reader 0.5 s after the auth frame)."""
    from brokerfeeds.testing.firstock import FirstockSimulator

    class Burst(_Blaster, FirstockSimulator):
        def __init__(self) -> None:
            # Pings far apart (a ping queued behind a burst must not time a slow client out);
            # room for every contender's session, even one whose socket lingers.
            super().__init__(ping_every=600.0, max_sessions=1000)
            self._setup_burst(fr.firstock_frames(int(config["count"]), self.user_id), False)

        async def _on_client_message(self, client: Any, text: str) -> None:
            await super()._on_client_message(client, text)
            if client.info.get("subs"):
                self._blast_once(client)

        def addresses(self) -> Dict[str, Any]:
            return self._addresses(url=self.url, rest_url=self.rest_url, user_id=self.user_id, jkey=self.jkey)

    return Burst()


BUILDERS = {"clearstreet": clearstreet, "upstox": upstox, "firstock": firstock}


def build(config: Dict[str, Any]) -> Any:
    """The simulator named by ``config["sim"]``, in burst mode."""
    return BUILDERS[config["sim"]](config)
