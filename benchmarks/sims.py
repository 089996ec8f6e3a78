"""Burst modes of the brokerfeeds simulators, for the server process (scenarios 3 and 4).

Each subclass keeps its simulator's handshake and protocol (auth, subscribe, acks) and,
at the moment the broker would start streaming, writes pre-framed payloads straight to
the transport in 256 KiB chunks (as :mod:`benchmarks.server` does), so the simulator is
not the bottleneck.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Dict, List

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

    async def _blast_to(self, connection: Any, after: Any = None) -> None:
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
            if client.info.get("subs") and not client.info.get("blasted"):
                client.info["blasted"] = True
                done = self._frame({"type": "replay-complete"})
                asyncio.ensure_future(self._blast_to(client.connection,
                                                     lambda: client.info["queue"].put_nowait(done)))

        def addresses(self) -> Dict[str, Any]:
            return {"url": self.url, "rest_url": self.rest_url, "token": self.token, "account": "100000",
                    "count": self.count, "payload_bytes": self.payload_sizes}

    return Burst()


BUILDERS = {"clearstreet": clearstreet}


def build(config: Dict[str, Any]) -> Any:
    """The simulator named by ``config["sim"]``, in burst mode."""
    return BUILDERS[config["sim"]](config)
