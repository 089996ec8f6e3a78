"""Pre-encoded server frames: realistic IBKR ``sor`` / ``smd``, Clear Street, Upstox and
Firstock payloads, and raw WebSocket framing.

Every generator is deterministic (no randomness), so each repetition sends the same
bytes. Every order update (IBKR ``sor``, Upstox, Firstock) changes something an
:class:`~brokerfeeds.events.Order` shows (status, filled quantity, ...), so each frame
yields exactly one ``on_order`` call: what is counted is what reached user code.
"""

from __future__ import annotations

import json
import struct
from typing import Callable, Dict, Iterable, Iterator, List, Sequence, Tuple

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


# ------------------------------------------------------------------ Upstox / Firstock (scenario 4)
def _ist(i: int) -> str:
    """An IST wall-clock text (``YYYY-MM-DD HH:MM:SS``, no offset, as Upstox sends) ``i`` s past 09:15."""
    seconds = 9 * 3600 + 15 * 60 + i % (6 * 3600)
    return f"2024-02-21 {seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _lifecycle_kind(i: int) -> str:
    """Order ``i``'s fate: 1 in 10 rejected, 1 in 5 cancelled after a partial fill, the rest filled."""
    return "rejected" if i % 10 == 9 else "cancelled" if i % 5 == 2 else "filled"


def _interleave(lifecycles: Sequence[Sequence[bytes]]) -> Iterator[bytes]:
    """One message of each lifecycle in turn (orders in flight together), until all are done."""
    for step in range(max(len(steps) for steps in lifecycles)):
        for steps in lifecycles:
            if step < len(steps):
                yield steps[step]


def _orders_in_flight(count: int, lifecycle: Callable[[int], List[bytes]], interleave: int) -> List[bytes]:
    """``count`` messages: groups of ``interleave`` order lifecycles sent interleaved."""
    out: List[bytes] = []
    i = 0
    while len(out) < count:
        out.extend(_interleave([lifecycle(i + k) for k in range(interleave)]))
        i += interleave
    return out[:count]


def upstox_order_lifecycle(i: int, user_id: str = "7AB123") -> List[bytes]:
    """Portfolio-stream ``order`` updates for one order (docs/upstox.md, every key).

    put order req received → validation pending → open pending → open, then: two partial
    fills and ``complete``; or one partial fill, ``cancel pending``, ``cancelled``; or (1 in
    10) ``rejected`` after validation. Every update changes the status or the filled
    quantity, so each one is an order change.
    """
    _, symbol, base = INSTRUMENTS[i % len(INSTRUMENTS)]
    key = f"NSE_EQ|INE{848 + i % 64:03d}E01016"
    quantity = 4 * (1 + i % 25)
    price = round(base + (i % 40) * 0.05, 2)
    order_id = str(240221025997024 + i)
    order: Dict[str, object] = {
        "update_type": "order", "user_id": user_id, "userId": user_id, "exchange": "NSE",
        "instrument_token": key, "instrument_key": key, "trading_symbol": f"{symbol}-EQ",
        "tradingsymbol": f"{symbol}-EQ", "product": "D" if i % 3 else "I", "order_type": "LIMIT",
        "average_price": 0, "price": price, "trigger_price": 0, "quantity": quantity, "disclosed_quantity": 0,
        "pending_quantity": quantity, "transaction_type": "BUY" if i % 2 == 0 else "SELL",
        "order_ref_id": str(57744821658411 + i), "exchange_order_id": "", "parent_order_id": None,
        "validity": "DAY", "status": "put order req received", "is_amo": False, "variety": "SIMPLE",
        "tag": None, "exchange_timestamp": None, "status_message": "", "order_id": order_id,
        "order_request_id": "1", "order_timestamp": _ist(i), "filled_quantity": 0, "guid": None,
        "placed_by": user_id, "status_message_raw": None,
    }
    steps: List[bytes] = []

    def push(**changes: object) -> None:
        order.update(changes)
        steps.append(dumps(order))

    push()
    push(status="validation pending")
    kind = _lifecycle_kind(i)
    if kind == "rejected":
        message = "Insufficient funds. Required margin is 95417.84 but available margin is 74251.80"
        push(status="rejected", pending_quantity=0, status_message=message, status_message_raw=message)
        return steps
    push(status="open pending")
    push(status="open", exchange_order_id=f"1100000{order_id[-8:]}", exchange_timestamp=_ist(i + 1))
    fills = (quantity // 4, quantity // 2) if kind == "filled" else (quantity // 2,)
    filled, value = 0, 0.0
    for n, part in enumerate(fills):
        fill_price = round(price - 0.05 * n, 2)
        filled, value = filled + part, value + part * fill_price
        push(filled_quantity=filled, pending_quantity=quantity - filled, average_price=round(value / filled, 4),
             exchange_timestamp=_ist(i + 2 + n))
    if kind == "filled":
        value += (quantity - filled) * price
        push(status="complete", filled_quantity=quantity, pending_quantity=0,
             average_price=round(value / quantity, 4), exchange_timestamp=_ist(i + 4))
    else:
        push(status="cancel pending", order_request_id="2")
        push(status="cancelled", pending_quantity=0, status_message="Cancelled by user",
             exchange_timestamp=_ist(i + 5))
    return steps


def upstox_frames(count: int, user_id: str = "7AB123", interleave: int = 50) -> List[bytes]:
    """``count`` Upstox ``order`` updates (text), ``interleave`` orders in flight at once."""
    return _orders_in_flight(count, lambda i: upstox_order_lifecycle(i, user_id), interleave)


def firstock_order_lifecycle(i: int, user_id: str = "AB1234") -> List[bytes]:
    """Firstock V2 order updates for one order (docs/firstock.md; every value a string).

    ORDER ACK → PENDING → OPEN, then: two ``PartialFill`` and a ``Fill`` (COMPLETE); or one
    partial fill and CANCELED; or (1 in 10) REJECTED. Fill fields (``fillshares``,
    ``avgprc``, ``flqty``, ``flprc``, ``flid``, ``fltm``) come once something filled, as the
    simulator sends them. Every update changes the status or the filled quantity.
    """
    conid, symbol, base = INSTRUMENTS[i % len(INSTRUMENTS)]
    quantity = 5 * (1 + i % 20)
    price = base + (i % 40) * 0.05
    order_id = str(26042400010001 + i)
    t = 1_745_483_337 + i
    order: Dict[str, object] = {
        "norenordno": order_id, "status": "ORDER ACK", "reporttype": "NewAck", "tsym": f"{symbol}-EQ",
        "exch": "NSE", "token": str(conid % 100000), "trantype": "B" if i % 2 == 0 else "S",
        "qty": str(quantity), "prc": f"{price:.2f}", "prctyp": "LMT", "pcode": "C" if i % 3 else "I",
        "ret": "DAY", "rejreason": " ", "remarks": "", "dscqty": "0", "uid": user_id, "actid": user_id,
        "tm": str(t), "ntm": str(t * 1_000_000_000 + 52296028), "kidid": "1",
        "handlinst": f"6f1c2e9a-7b4d-4c1e-9a2f-{i:012d}", "ls": "1", "ti": "0.05", "pp": "2", "mult": "1",
        "prcftr": "1.000000",
    }
    steps: List[bytes] = []

    def push(**changes: object) -> None:
        order.update(changes)
        steps.append(dumps(order))

    push()
    push(status="PENDING", reporttype="PendingNew")
    kind = _lifecycle_kind(i)
    if kind == "rejected":
        push(status="REJECTED", reporttype="Rejected", rejreason="RMS:Margin Exceeds,Required:95417.84, "
             "Available:74251.80 for entity account-" + user_id)
        return steps
    push(status="OPEN", reporttype="New", tm=str(t + 1))
    fills = (quantity // 4, quantity // 2, quantity - quantity // 4 - quantity // 2) if kind == "filled" \
        else (quantity // 2,)
    filled, value = 0, 0.0
    for n, part in enumerate(fills):
        fill_price = price - 0.05 * n
        filled, value = filled + part, value + part * fill_price
        done = filled == quantity
        push(status="COMPLETE" if done else "OPEN", reporttype="Fill" if done else "PartialFill",
             fillshares=str(filled), avgprc=f"{value / filled:.2f}", flqty=str(part), flprc=f"{fill_price:.2f}",
             flid=f"F{order_id[-6:]}{filled}", fltm=str(t + 2 + n), tm=str(t + 2 + n))
    if kind == "cancelled":
        push(status="CANCELED", reporttype="Canceled", tm=str(t + 5))
    return steps


def firstock_frames(count: int, user_id: str = "AB1234", interleave: int = 50) -> List[bytes]:
    """``count`` Firstock order updates (text), ``interleave`` orders in flight at once."""
    return _orders_in_flight(count, lambda i: firstock_order_lifecycle(i, user_id), interleave)
