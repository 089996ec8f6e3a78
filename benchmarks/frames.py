"""Pre-encoded server frames: realistic IBKR ``sor`` / ``smd`` payloads and raw WebSocket framing.

Every generator is deterministic (no randomness), so each repetition sends the same
bytes. Every ``sor`` frame changes something an :class:`~brokerfeeds.events.Order`
shows (status, filled quantity, ...), so each frame yields exactly one ``on_order``
call: what is counted is what reached user code.
"""

from __future__ import annotations

import json
import struct
from typing import Dict, Iterable, Iterator, List, Sequence, Tuple

ACCOUNT = "DU123456"
#: Instruments used for quotes: (conid, ticker, base price).
INSTRUMENTS: Tuple[Tuple[int, str, float], ...] = tuple(
    (265598 + i * 1117, f"SYM{i:02d}", 50.0 + 7.5 * i) for i in range(64)
)
_T0 = 1_712_935_800_000  # a fixed epoch-ms base: identical bytes on every run


def dumps(message: object) -> bytes:
    """Compact JSON, as the gateway sends it."""
    return json.dumps(message, separators=(",", ":")).encode()


def ws_frame(payload: bytes, binary: bool = True) -> bytes:
    """One unmasked server→client WebSocket frame (FIN set) around ``payload``."""
    opcode = 0x82 if binary else 0x81
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", opcode, size)
    elif size < 65536:
        header = struct.pack("!BBH", opcode, 126, size)
    else:
        header = struct.pack("!BBQ", opcode, 127, size)
    return header + payload


def chunked(frames: Iterable[bytes], binary: bool = True, chunk: int = 256 * 1024) -> List[bytes]:
    """WebSocket-framed payloads joined into ~``chunk``-byte blobs cut at frame boundaries."""
    out: List[bytes] = []
    buf: List[bytes] = []
    size = 0
    for payload in frames:
        framed = ws_frame(payload, binary)
        buf.append(framed)
        size += len(framed)
        if size >= chunk:
            out.append(b"".join(buf))
            buf, size = [], 0
    if buf:
        out.append(b"".join(buf))
    return out


# ------------------------------------------------------------------ IBKR sor
def _full_order(order_id: int, i: int) -> Dict[str, object]:
    conid, ticker, base = INSTRUMENTS[i % len(INSTRUMENTS)]
    quantity = float(100 * (1 + i % 5))
    side = "BUY" if i % 2 == 0 else "SELL"
    price = f"{base + (i % 40) * 0.01:.2f}"
    return {
        "acct": ACCOUNT, "conidex": str(conid), "conid": conid, "account": ACCOUNT, "orderId": order_id,
        "cashCcy": "USD", "sizeAndFills": f"0/{quantity:g}",
        "orderDesc": f"{side.title()} {quantity:g} {ticker} Limit {price}, Day", "description1": ticker,
        "ticker": ticker, "secType": "STK", "listingExchange": "NASDAQ.NMS", "remainingQuantity": quantity,
        "filledQuantity": 0.0, "totalSize": quantity, "companyName": f"{ticker} HOLDINGS INC",
        "status": "PreSubmitted", "order_ccp_status": "PreSubmitted", "origOrderType": "LIMIT",
        "supportsTaxOpt": "1", "lastExecutionTime": "240412153000", "orderType": "Limit",
        "bgColor": "#FFFFFF", "fgColor": "#0000CC", "isEventTrading": "0", "price": price,
        "timeInForce": "CLOSE", "lastExecutionTime_r": _T0 + i, "side": side,
    }


def order_lifecycle(order_id: int, i: int) -> List[Dict[str, object]]:
    """Five ``sor`` updates for one order: full, Submitted, two partial fills, final fill.

    One full update in five; the partial ones carry only what IBKR sends on change.
    """
    full = _full_order(order_id, i)
    quantity = float(full["totalSize"])  # type: ignore[arg-type]
    price = float(full["price"])  # type: ignore[arg-type]
    steps: List[Dict[str, object]] = [full, {
        "acct": ACCOUNT, "orderId": order_id, "status": "Submitted", "order_ccp_status": "Submitted",
        "lastExecutionTime_r": _T0 + i + 1,
    }]
    filled = 0.0
    for step, part in enumerate((0.25, 0.5, 0.25)):
        filled += quantity * part
        remaining = quantity - filled
        update: Dict[str, object] = {
            "acct": ACCOUNT, "orderId": order_id, "filledQuantity": filled, "remainingQuantity": remaining,
            "avgPrice": f"{price:.2f}", "sizeAndFills": f"{filled:g}/{quantity:g}",
            "lastExecutionTime": "240412153001", "lastExecutionTime_r": _T0 + i + 2 + step,
        }
        if remaining == 0:
            update["status"] = "Filled"
            update["order_ccp_status"] = "Filled"
        steps.append(update)
    return steps


def sor_frames(count: int, interleave: int = 50) -> List[bytes]:
    """``count`` ``sor`` payloads: order lifecycles, ``interleave`` orders in flight at once."""
    out: List[bytes] = []
    order_id = 1_000_000_000
    i = 0
    while len(out) < count:
        group = [order_lifecycle(order_id + k, i + k) for k in range(interleave)]
        order_id += interleave
        i += interleave
        for step in range(5):
            for lifecycle in group:
                out.append(dumps({"topic": "sor", "args": [lifecycle[step]]}))
    return out[:count]


def sor_toggle_frames(count: int, orders: int = 200) -> List[bytes]:
    """Partial ``sor`` updates for a fixed set of orders whose status flips every time.

    Sent again and again (soak), every frame is still a change (when ``count`` is a
    multiple of ``2 * orders``).
    """
    out = []
    for j in range(count):
        status = "Submitted" if (j // orders) % 2 == 0 else "PreSubmitted"
        out.append(dumps({"topic": "sor", "args": [{
            "acct": ACCOUNT, "orderId": 2_000_000_000 + j % orders, "status": status,
            "order_ccp_status": status, "ticker": "SYM00", "side": "BUY", "totalSize": 100.0,
        }]}))
    return out


# ------------------------------------------------------------------ IBKR smd
def quote_conids(count: int) -> List[str]:
    """The first ``count`` conids used for quotes."""
    return [str(conid) for conid, _, _ in INSTRUMENTS[:count]]


def smd_snapshot(conid: str) -> bytes:
    """The first full ``smd`` message for ``conid`` (what the gateway sends on subscribe)."""
    base = {str(c): b for c, _, b in INSTRUMENTS}[conid]
    return dumps({
        "server_id": "q0", "conidEx": conid, "conid": int(conid), "_updated": _T0, "6119": "q0",
        "6509": "RpB", "31": f"{base:.2f}", "84": f"{base - 0.01:.2f}", "86": f"{base + 0.01:.2f}",
        "88": "500", "85": "300", "7762": "1000000", "87": "1.00M", "topic": f"smd+{conid}",
    })


def smd_frames(count: int, conids: Sequence[str]) -> List[bytes]:
    """``count`` ``smd`` deltas, round-robin over ``conids``: every 8th tick a fuller update."""
    bases = {str(c): b for c, _, b in INSTRUMENTS}
    out = []
    for j in range(count):
        conid = conids[j % len(conids)]
        base = bases[conid]
        move = ((j * 7919) % 41 - 20) * 0.01
        delta: Dict[str, object] = {"server_id": "q0", "conidEx": conid, "conid": int(conid),
                                    "_updated": _T0 + j, "31": f"{base + move:.2f}"}
        if j % 8 == 0:
            delta.update({"84": f"{base + move - 0.01:.2f}", "86": f"{base + move + 0.01:.2f}",
                          "88": str(100 + j % 900), "85": str(100 + (j * 3) % 900),
                          "7762": str(1_000_000 + j), "87": f"{(1_000_000 + j) / 1e6:.2f}M"})
        elif j % 2 == 0:
            delta["7762"] = str(1_000_000 + j)
        delta["topic"] = f"smd+{conid}"
        out.append(dumps(delta))
    return out


def soak_frames(count: int, conids: Sequence[str]) -> List[bytes]:
    """One soak block: 4 quotes to 1 order update; repeatable (every frame stays a change)."""
    n_orders = count // 5
    orders = max(1, n_orders // 100)
    if n_orders % (2 * orders):
        raise ValueError(f"soak block of {count} frames cannot be repeated without repeating a state")
    sor = iter(sor_toggle_frames(n_orders, orders))
    smd = iter(smd_frames(count - n_orders, conids))
    out = []
    for j in range(count):
        out.append(next(sor) if j % 5 == 4 else next(smd))
    return out


def timed_sor(seq: int, sent: float) -> bytes:
    """A paced ``sor`` update carrying the server's send time (monotonic) as ``bench_ts``."""
    status = "Submitted" if seq % 2 == 0 else "PreSubmitted"
    return dumps({"topic": "sor", "args": [{"acct": ACCOUNT, "orderId": 3_000_000_000, "status": status,
                                             "order_ccp_status": status, "ticker": "SYM00", "side": "BUY",
                                             "totalSize": 100.0, "bench_seq": seq, "bench_ts": sent}]})


def sizes(frames: Sequence[bytes]) -> Dict[str, float]:
    """Mean / min / max payload size (bytes)."""
    lengths = [len(f) for f in frames]
    return {"mean": round(sum(lengths) / len(lengths), 1), "min": min(lengths), "max": max(lengths)}


def generate(name: str, count: int, conids: int = 0) -> List[bytes]:
    """Payloads by name (``sor``, ``smd``, ``soak``), for the server process."""
    if name == "sor":
        return sor_frames(count)
    if name == "smd":
        return smd_frames(count, quote_conids(conids))
    if name == "soak":
        return soak_frames(count, quote_conids(conids))
    if name == "clearstreet":
        return cs_frames(count)
    raise ValueError(f"unknown frame set {name!r}")


def iter_blocks(chunks: List[bytes], repeat: int) -> Iterator[bytes]:
    """Every chunk, ``repeat`` times over."""
    for _ in range(repeat):
        yield from chunks


# ------------------------------------------------------------------ Clear Street
def cs_frames(count: int, account: str = "100000", account_number: str = "ACC0001") -> List[bytes]:
    """``count`` sequenced activity messages (text): per order ``order-update`` new, a
    ``trade-notice``, a partial ``order-update``, a ``trade-notice``, the final ``order-update``."""
    out: List[bytes] = []
    i = 0
    while len(out) < count:
        order_id = str(12_000_000 + i)
        conid, symbol, base = INSTRUMENTS[i % len(INSTRUMENTS)]
        side = "buy" if i % 2 == 0 else "sell"
        quantity = 100 * (1 + i % 5)
        price = f"{base:.2f}"
        t = _T0 + i
        order = {"order_id": order_id, "reference_id": f"ref-{order_id}", "version": 1, "account_id": account,
                 "account_number": account_number, "state": "open", "status": "new", "symbol": symbol,
                 "order_type": "limit", "side": side, "quantity": str(quantity), "filled_quantity": "0",
                 "price": price, "time_in_force": "day", "average_price": None, "running_position": "0",
                 "order_update_reason": "place", "created_at": t, "updated_at": t}
        steps: List[Tuple[str, Dict[str, object]]] = [("order-update", dict(order))]
        filled = 0
        for part, last in ((quantity // 2, False), (quantity - quantity // 2, True)):
            filled += part
            steps.append(("trade-notice", {"trade_id": str(88_000_000 + 2 * i + int(last)), "order_id": order_id,
                                           "account_id": account, "account_number": account_number,
                                           "symbol": symbol, "side": side, "quantity": str(part), "price": price,
                                           "running_position": str(filled), "created_at": t + 1 + int(last)}))
            order.update(version=order["version"] + 1, filled_quantity=str(filled), average_price=float(base),
                         status="filled" if last else "partially-filled", state="closed" if last else "open",
                         order_update_reason="execution-report", updated_at=t + 1 + int(last))
            steps.append(("order-update", dict(order)))
        for kind, data in steps:
            out.append(dumps({"timestamp": t, "sequence": len(out) + 1, "payload": {"type": kind, "data": data}}))
        i += 1
    return out[:count]
