"""A local Clear Street Studio activity channel: OAuth token endpoint, REST P&L and the WebSocket.

Behaves as docs/clearstreet.md describes: the client must send one
``subscribe-activity`` per account (token in ``authorization``) within
``subscribe_deadline`` seconds; each subscribe is validated (token, account) and acked,
then the account's journal for the day is replayed in order and ``replay-complete``
follows. Sequenced messages are journaled per account and pushed live to subscribed
connections. Heartbeats go out every ``hb_interval`` seconds. A connection lives as long
as the tokens it subscribed with: when one expires, the server closes the socket.

What a frame's ``sequence`` numbers is not documented: Clear Street's Activity channel
reference (https://docs.clearstreet.io/studio/reference/orders-websocket) says only "a
monotonic sequence number you can use to detect gaps", and no official client reads it
(``studio_sdk``, PyPI ``clear-street-studio-sdk``, has no WebSocket code). So
``sequence_scope`` chooses:

* ``"account"`` (default): each account's journal numbers its messages 1, 2, 3, ... per
  trading day; a replay repeats the same numbers;
* ``"connection"``: each connection numbers the sequenced frames it sends 1, 2, 3, ...
  whatever their account (A=1, B=2, A=3), replays included (a replay's frames get the
  connection's next numbers), and the numbering does not restart at a new trading day.

``trades_without_account=True`` sends ``trade-notice`` data without ``account_id`` and
``account_number``, which studio_sdk's ``Trade`` model declares Optional
(``src/studio_sdk/types/shared/trade.py`` in github.com/clear-street/studio-sdk-python).
A position's ``average_cost`` ("The average cost of the position", studio_sdk
``types/shared/position.py``; cf. ``Order.average_price``, "Calculated average price of
all fills on this order") is the quantity-weighted average price of the fills that
opened it, across orders; fills that reduce it leave it unchanged and a fill through
zero starts anew at its price (the usual average-cost method: how Clear Street treats
reductions is not documented).

    with ClearStreetSimulator(accounts=("100000",)) as sim:
        feed = ClearStreetFeed(access_token=sim.token, url=sim.url, rest_url=sim.rest_url)
        feed.subscribe_activity("100000")
        ...
        order_id = sim.place_order("AAPL", "buy", 100, 190.5)
        sim.fill(order_id, 40, 190.45)

Faults, beyond the base class's ``drop()``, ``stall()``, ``close_all()``, ``restart()``:
:meth:`gap` (journal but do not push the next messages live), :meth:`resend`
(a duplicate / lower sequence), :meth:`reorder_next` (out of order), :meth:`rollover`
(a new trading day: sequences restart at 1), ``withhold_replay_complete``,
``ack_without_account``, :meth:`refuse_next_subscribe`, :meth:`expire_tokens`,
:meth:`send_error_notice`, :meth:`send_malformed`, :meth:`send_unknown`,
:meth:`send_binary`, :meth:`inject` (a sequenced frame pushed live but never journaled,
with any timestamp and sequence) and :meth:`send_far_future` (one frame dated 2286).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import time
from decimal import Decimal
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

from ._server import Client, HttpRequest, SimulatorBase

__all__ = ["ClearStreetSimulator"]

_ORDER_IDS = itertools.count(12_390_001)
_TRADE_IDS = itertools.count(88_000_001)
_DAY_MS = 86_400_000
SEQUENCE_SCOPES = ("account", "connection")


class _Entry(NamedTuple):
    """One journaled message: its number in the account's day, and its frame."""

    seq: int
    kind: str
    data: Dict[str, Any]
    text: str  # the frame as sent when sequences are per account
    stamp: int  # its timestamp (ms)
    body: str  # its payload, as JSON

    def numbered(self, sequence: int) -> str:
        """The frame with ``sequence`` in place of the account's number."""
        return _frame_text(self.stamp, sequence, self.body)


def _frame_text(stamp: int, sequence: int, body: str) -> str:
    return f'{{"timestamp":{stamp},"sequence":{sequence},"payload":{body}}}'


class ClearStreetSimulator(SimulatorBase):
    """A faithful local stand-in for Clear Street Studio's activity WebSocket (+ OAuth, P&L REST)."""

    ws_path = "/studio/v2/ws"

    def __init__(
        self,
        accounts: Sequence[str] = ("100000",),
        client_id: str = "sim-client-id",
        client_secret: str = "sim-client-secret-0123456789",
        token_lifetime: float = 86_400.0,
        hb_interval: Optional[float] = 5.0,
        subscribe_deadline: float = 30.0,
        sequence_scope: str = "account",
        trades_without_account: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if sequence_scope not in SEQUENCE_SCOPES:
            raise ValueError(f"sequence_scope must be one of {SEQUENCE_SCOPES}, got {sequence_scope!r}")
        #: What ``sequence`` numbers: "account" or "connection" (module docs).
        self.sequence_scope = sequence_scope
        #: Send ``trade-notice`` data without ``account_id`` / ``account_number``.
        self.trades_without_account = trades_without_account
        self.accounts: Dict[str, str] = {str(a): f"ACC{i + 1:04d}" for i, a in enumerate(accounts)}
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_lifetime = token_lifetime  # seconds, for tokens from the OAuth endpoint
        self.hb_interval = hb_interval
        self.subscribe_deadline = subscribe_deadline
        self.tokens: Dict[str, float] = {}  # token -> monotonic expiry
        self.token = self.issue_token(lifetime=10 * 86_400.0)  # a long-lived token for tests
        self.journals: Dict[str, List[_Entry]] = {a: [] for a in self.accounts}
        self.day_offset = 0  # whole days added to every timestamp (rollover moves it)
        # Knobs / faults.
        self.ack_without_account = False  # acks like the older guide: no account_id
        self.withhold_replay_complete = False
        self.heartbeats = True
        self._refusals: List[str] = []
        self.refused_accounts: Dict[str, str] = {}  # account -> details: every subscribe to it is refused
        self._skip_live = 0
        self._reorder = False
        self._held: List[Tuple[Client, str]] = []  # frames numbered, to be sent after the next one
        # What happened (for tests).
        self.subscribes: List[Tuple[str, str]] = []  # (account, token) of every subscribe received
        self.token_requests = 0
        self.error_notices = 0
        # Account state the scripting helpers maintain.
        self.orders: Dict[str, Dict[str, Any]] = {}
        self.positions: Dict[Tuple[str, str], Dict[str, Any]] = {}
        self.buying_power: Dict[str, float] = {a: 1_000_000.0 for a in self.accounts}
        self.pnl: Dict[str, Dict[str, Any]] = {a: _pnl_body(a) for a in self.accounts}
        self.route("POST", "/oauth/token", self._oauth)
        self.route("GET", "/studio/v2/accounts/{account_id}/pnl-summary", self._pnl_rest)

    # ----------------------------------------------------------------- addresses
    @property
    def url(self) -> str:
        """The WebSocket URL to give ``ClearStreetFeed(url=...)``."""
        return self.ws_base + self.ws_path

    @property
    def rest_url(self) -> str:
        """The REST base URL to give ``ClearStreetFeed(rest_url=...)``."""
        return self.rest_base + "/studio/v2"

    @property
    def auth_url(self) -> str:
        """The OAuth2 token endpoint to give ``ClearStreetFeed.client_credentials(auth_url=...)``."""
        return self.rest_base + "/oauth/token"

    @property
    def account(self) -> str:
        """The first account."""
        return next(iter(self.accounts))

    # ----------------------------------------------------------------- tokens
    def issue_token(self, lifetime: Optional[float] = None) -> str:
        """A new valid access token that expires after ``lifetime`` seconds."""
        token = "eyJsim." + secrets.token_urlsafe(24)
        with self.lock:
            self.tokens[token] = time.monotonic() + (self.token_lifetime if lifetime is None else lifetime)
        return token

    def token_valid(self, token: Optional[str]) -> bool:
        """Whether ``token`` was issued here and has not expired."""
        with self.lock:
            expiry = self.tokens.get(token or "")
        return expiry is not None and time.monotonic() < expiry

    def expire_tokens(self) -> None:
        """Every token expires now: subscribed connections are dropped, as at the 24 h limit."""
        with self.lock:
            now = time.monotonic()
            for token in self.tokens:
                self.tokens[token] = now

    # ----------------------------------------------------------------- scripting
    def publish(self, account: str, kind: str, data: Dict[str, Any]) -> int:
        """Journal a sequenced message for ``account`` and push it live; returns its sequence."""
        return self.call(self._publish(str(account), kind, data))

    def add_history(self, account: Optional[str] = None, count: int = 1000) -> None:
        """Journal ``count`` order updates without pushing them (activity while nobody listened)."""
        account = account or self.account

        async def add() -> None:
            order_id = str(next(_ORDER_IDS))
            base = self._order_data(account, order_id, "AAPL", "buy", 1_000_000, 100.0, "limit")
            for version in range(1, count + 1):
                data = dict(base, version=version, filled_quantity=str(version), status="partially-filled",
                            state="open", order_update_reason="execution-report")
                self._journal(account, "order-update", data)

        self.call(add(), timeout=60)

    def place_order(self, symbol: str, side: str = "buy", quantity: float = 100, price: Optional[float] = None,
                    order_type: str = "limit", account: Optional[str] = None) -> str:
        """A new order (``order-update`` status ``new``); returns its id."""
        account = account or self.account
        order_id = str(next(_ORDER_IDS))
        order = self._order_data(account, order_id, symbol, side, quantity, price, order_type)
        self.orders[order_id] = order
        self.publish(account, "order-update", dict(order))
        return order_id

    def fill(self, order_id: str, quantity: float, price: float) -> str:
        """Fill part of an order: ``order-update``, ``trade-notice``, ``position-update`` and
        ``buying-power-update``. Returns the trade id."""
        order = self.orders[str(order_id)]
        account = order["account_id"]
        before = Decimal(order["filled_quantity"])
        qty = Decimal(str(quantity))
        filled = before + qty
        avg_before = Decimal(str(order.get("average_price") or 0))
        avg = (avg_before * before + Decimal(str(price)) * qty) / filled
        total = Decimal(order["quantity"])
        sign = Decimal(1) if order["side"] == "buy" else Decimal(-1)
        key = (account, order["symbol"])
        position = self.positions.get(key) or {"account_id": account, "account_number": self.accounts[account],
                                               "symbol": order["symbol"], "quantity": "0", "average_cost": 0.0}
        held = Decimal(position["quantity"])
        pos_qty = held + sign * qty
        order.update(filled_quantity=_s(filled), average_price=float(avg), version=order["version"] + 1,
                     status="filled" if filled >= total else "partially-filled",
                     state="closed" if filled >= total else "open", order_update_reason="execution-report",
                     running_position=_s(pos_qty), updated_at=self._now_ms())
        trade_id = str(next(_TRADE_IDS))
        trade: Dict[str, Any] = {
            "trade_id": trade_id, "order_id": str(order_id), "account_id": account,
            "account_number": self.accounts[account], "symbol": order["symbol"], "side": order["side"],
            "quantity": _s(qty), "price": _s(Decimal(str(price))), "running_position": _s(pos_qty),
            "created_at": self._now_ms()}
        if self.trades_without_account:
            del trade["account_id"], trade["account_number"]
        cost = _average_cost(held, Decimal(str(position["average_cost"])), sign * qty, Decimal(str(price)))
        position.update(quantity=_s(pos_qty), average_cost=float(cost))
        self.positions[key] = position
        self.buying_power[account] -= float(sign * qty * Decimal(str(price)))
        self.publish(account, "order-update", dict(order))
        self.publish(account, "trade-notice", trade)
        self.publish(account, "position-update", dict(position))
        self.set_buying_power(account, self.buying_power[account])
        return trade_id

    def cancel(self, order_id: str) -> None:
        """Cancel an order (``order-update`` status ``canceled``)."""
        order = self.orders[str(order_id)]
        order.update(status="canceled", state="closed", version=order["version"] + 1,
                     order_update_reason="cancel", updated_at=self._now_ms())
        self.publish(order["account_id"], "order-update", dict(order))

    def set_position(self, symbol: str, quantity: float, average_cost: float, account: Optional[str] = None) -> None:
        """A ``position-update``."""
        account = account or self.account
        position = {"account_id": account, "account_number": self.accounts[account], "symbol": symbol,
                    "quantity": _s(Decimal(str(quantity))), "average_cost": float(average_cost)}
        self.positions[(account, symbol)] = position
        self.publish(account, "position-update", dict(position))

    def set_buying_power(self, account: Optional[str] = None, amount: float = 0.0) -> None:
        """A ``buying-power-update``."""
        account = account or self.account
        self.buying_power[account] = amount
        self.publish(account, "buying-power-update",
                     {"account_id": account, "account_number": self.accounts[account], "amount": float(amount)})

    def set_locate(self, symbol: str, available: float, reserved: float = 0, used: float = 0,
                   account: Optional[str] = None) -> None:
        """A ``locate-inventory-update``."""
        account = account or self.account
        self.publish(account, "locate-inventory-update", {
            "account_id": account, "account_number": self.accounts[account], "symbol": symbol,
            "available": _s(Decimal(str(available))), "reserved": _s(Decimal(str(reserved))),
            "used": _s(Decimal(str(used)))})

    def set_pnl(self, account: Optional[str] = None, **values: float) -> None:
        """Change what REST ``/accounts/{id}/pnl-summary`` answers (``day_pnl=...``, ...)."""
        account = account or self.account
        with self.lock:
            self.pnl[account].update(values, timestamp=self._now_ms())

    def journal(self, account: Optional[str] = None) -> List[Tuple[int, str, Dict[str, Any]]]:
        """``(number, type, data)`` of every message journaled today for ``account`` (the
        number is its place in the account's day: its ``sequence`` if sequences are per account)."""
        return [(e.seq, e.kind, e.data) for e in self.journals.get(account or self.account, [])]

    def subscribers(self, account: Optional[str] = None) -> int:
        """How many connections receive ``account``'s live messages."""
        account = account or self.account
        return sum(1 for c in list(self.clients) if account in c.info.get("subs", ()))

    # faults ----------------------------------------------------------
    def gap(self, count: int = 1) -> None:
        """The next ``count`` published messages are journaled but not pushed live (with a
        per-connection ``sequence_scope`` they still take their connection numbers: lost)."""
        self._skip_live += count

    def reorder_next(self) -> None:
        """Push the next published message *after* the one following it (out of order; per
        connection it keeps the number it was given first)."""
        self._reorder = True

    def resend(self, account: Optional[str] = None, sequence: Optional[int] = None) -> None:
        """Push a journaled message again (default: the last one; ``sequence`` is its number
        in the account's journal) as each subscriber got it: a duplicate / lower sequence."""
        account = account or self.account
        entries = self.journals[account]
        entry = entries[-1] if sequence is None else next(e for e in entries if e.seq == sequence)

        async def again() -> None:
            for client in self._subscribers_of(account):
                text = client.info["sent"].get((account, entry.seq)) if self._per_connection else entry.text
                if text is not None:
                    client.info["queue"].put_nowait(text)

        self.call(again())

    def rollover(self) -> None:
        """A new trading day: journals are emptied and sequences restart at 1 (dates move on a day)."""

        async def roll() -> None:
            self.day_offset += 1
            for account in self.journals:
                self.journals[account] = []

        self.call(roll())

    def refuse_next_subscribe(self, details: str = "Unauthorized: invalid token", count: int = 1) -> None:
        """The next ``count`` subscribes are acked with ``success: false`` and ``details``."""
        self._refusals.extend([details] * count)

    def send_error_notice(self, details: str = "Internal error", close: bool = False) -> None:
        """An ``error-notice`` to every client (then close, if ``close``)."""

        async def notice() -> None:
            for client in list(self.clients):
                self._error_notice(client, details, close)

        self.call(notice())

    def send_malformed(self) -> None:
        """A text frame that is not JSON."""
        self.send_raw('{"timestamp": 1, "payload": {"type": "order-upd', text=True)

    def send_unknown(self) -> None:
        """A well-formed message of a type nobody knows."""
        self.broadcast({"timestamp": self._now_ms(), "payload": {"type": "future-feature", "x": 1}})

    def send_binary(self) -> None:
        """A binary frame with garbage in it."""
        self.send_raw(b"\x00\x01\x02binary", text=False)

    def inject(self, account: Optional[str] = None, kind: str = "order-update",
               data: Optional[Dict[str, Any]] = None, *, timestamp_ms: Optional[int] = None,
               sequence: Optional[int] = None) -> int:
        """Push one sequenced frame live to ``account``'s subscribers without journaling it
        (a bad frame from a faulty server: a replay never repeats it). ``sequence``
        defaults to the next one (the account's, or each connection's; not used up: the
        next real message gets it too), ``timestamp_ms`` to now, ``data`` to a new order of
        1 share. Returns the sequence used (for the last subscriber)."""
        account = account or self.account
        if data is None:
            data = self._order_data(account, str(next(_ORDER_IDS)), "BOGUS", "buy", 1, 1.0, "limit")
        stamp = self._now_ms() if timestamp_ms is None else timestamp_ms
        body = json.dumps({"type": kind, "data": data}, separators=(",", ":"))
        used = [len(self.journals.get(account, ())) + 1 if sequence is None else sequence]

        async def push() -> None:
            for client in self._subscribers_of(account):
                if sequence is None and self._per_connection:
                    used[0] = client.info["seq"] + 1
                client.info["queue"].put_nowait(_frame_text(stamp, used[0], body))

        self.call(push())
        return used[0]

    def send_far_future(self, account: Optional[str] = None, timestamp_ms: int = 9_999_999_999_999,
                        sequence: Optional[int] = None) -> int:
        """One sequenced frame dated 2286-11-20 (``timestamp`` 9999999999999 ms), pushed live
        and never journaled; returns its sequence (by default the account's next one)."""
        return self.inject(account, timestamp_ms=timestamp_ms, sequence=sequence)

    # ----------------------------------------------------------------- internals
    def _now_ms(self) -> int:
        return int(time.time() * 1000) + self.day_offset * _DAY_MS

    def _order_data(self, account: str, order_id: str, symbol: str, side: str, quantity: float,
                    price: Optional[float], order_type: str) -> Dict[str, Any]:
        now = self._now_ms()
        return {"order_id": order_id, "reference_id": f"ref-{order_id}", "version": 1, "account_id": account,
                "account_number": self.accounts[account], "state": "open", "status": "new", "symbol": symbol,
                "order_type": order_type, "side": side, "quantity": _s(Decimal(str(quantity))),
                "filled_quantity": "0", "price": None if price is None else _s(Decimal(str(price))),
                "time_in_force": "day", "average_price": None, "running_position": "0",
                "order_update_reason": "place", "created_at": now, "updated_at": now}

    @property
    def _per_connection(self) -> bool:
        return self.sequence_scope == "connection"

    def _journal(self, account: str, kind: str, data: Dict[str, Any]) -> _Entry:
        entries = self.journals.setdefault(account, [])
        seq, stamp = len(entries) + 1, self._now_ms()
        body = json.dumps({"type": kind, "data": data}, separators=(",", ":"))
        entry = _Entry(seq, kind, data, _frame_text(stamp, seq, body), stamp, body)
        entries.append(entry)
        return entry

    def _subscribers_of(self, account: str) -> List[Client]:
        return [c for c in list(self.clients) if account in c.info.get("subs", ())]

    def _numbered(self, client: Client, account: str, entry: _Entry) -> str:
        """``entry``'s frame for ``client``: with a per-connection scope it takes the
        connection's next number (remembered, for :meth:`resend`)."""
        if not self._per_connection:
            return entry.text
        client.info["seq"] += 1
        text = entry.numbered(client.info["seq"])
        client.info["sent"][(account, entry.seq)] = text
        return text

    async def _publish(self, account: str, kind: str, data: Dict[str, Any]) -> int:
        entry = self._journal(account, kind, data)
        clients = self._subscribers_of(account)
        if self._skip_live > 0:
            self._skip_live -= 1
            for client in clients:
                self._numbered(client, account, entry)  # sent, and lost on the way
            return entry.seq
        if self._reorder:
            self._reorder = False
            self._held = [(client, self._numbered(client, account, entry)) for client in clients]
            return entry.seq
        for client in clients:
            client.info["queue"].put_nowait(self._numbered(client, account, entry))
        held, self._held = self._held, []
        for client, text in held:
            client.info["queue"].put_nowait(text)
        return entry.seq

    def _frame(self, payload: Dict[str, Any]) -> str:
        return json.dumps({"timestamp": self._now_ms(), "payload": payload}, separators=(",", ":"))

    def _error_notice(self, client: Client, details: str, close: bool = False) -> None:
        self.error_notices += 1
        client.info["queue"].put_nowait(self._frame({"type": "error-notice", "details": details}))
        if close:
            client.info["queue"].put_nowait(("close", 1008, details[:100]))

    def check_handshake(self, request: Any) -> Union[Dict[str, Any], Tuple[int, str]]:
        if request.path.split("?")[0] != self.ws_path:
            return 404, "not found"
        return {}

    async def serve_client(self, client: Client) -> None:
        client.info.update(queue=asyncio.Queue(), subs=set(), tokens=set(), subscribed=False, seq=0, sent={})
        tasks = [asyncio.ensure_future(self._writer(client)), asyncio.ensure_future(self._heartbeat_loop(client)),
                 asyncio.ensure_future(self._deadline(client)), asyncio.ensure_future(self._expiry(client))]
        await self.read_messages(client, self._on_client_message, tasks, as_text=False)

    async def _writer(self, client: Client) -> None:
        queue: asyncio.Queue[Union[str, Tuple[str, int, str]]] = client.info["queue"]
        while True:
            item = await queue.get()
            if isinstance(item, tuple):
                await client.connection.close(item[1], item[2])
                return
            await self.send_to(client, item)

    async def _heartbeat_loop(self, client: Client) -> None:
        while self.hb_interval:
            await asyncio.sleep(self.hb_interval)
            if self.heartbeats:
                client.info["queue"].put_nowait(self._frame({"type": "heartbeat"}))

    async def _deadline(self, client: Client) -> None:
        await asyncio.sleep(self.subscribe_deadline)
        if not client.info["subscribed"]:
            self._error_notice(client, f"No subscription received within {self.subscribe_deadline:g} seconds",
                               close=True)

    async def _expiry(self, client: Client) -> None:
        while True:
            await asyncio.sleep(0.05)
            tokens = client.info["tokens"]
            if tokens and not all(self.token_valid(t) for t in tokens):
                await client.connection.close(1008, "token expired")
                return

    def _on_client_message(self, client: Client, message: Union[str, bytes]) -> None:
        if isinstance(message, bytes):
            self._error_notice(client, "Malformed request: binary frames are not supported")
            return
        try:
            request = json.loads(message)
        except ValueError:
            self._error_notice(client, "Malformed request: body is not valid JSON")
            return
        payload = request.get("payload") if isinstance(request, dict) else None
        if (not isinstance(payload, dict) or payload.get("type") != "subscribe-activity"
                or not request.get("authorization") or not payload.get("account_id")):
            self._error_notice(client, "Malformed request: expected authorization and "
                                       "payload{type: subscribe-activity, account_id}")
            return
        account, token = str(payload["account_id"]), str(request["authorization"])
        client.info["subscribed"] = True
        with self.lock:
            self.subscribes.append((account, token))
        if self._refusals:
            self._ack(client, account, False, self._refusals.pop(0))
        elif account in self.refused_accounts:
            self._ack(client, account, False, self.refused_accounts[account])
        elif not self.token_valid(token):
            self._ack(client, account, False, "Unauthorized: invalid or expired token")
        elif account not in self.accounts:
            self._ack(client, account, False, f"Account {account} not found")
        else:
            self._ack(client, account, True, "Subscribed successfully")
            client.info["tokens"].add(token)
            queue = client.info["queue"]
            for entry in self.journals.get(account, []):
                queue.put_nowait(self._numbered(client, account, entry))
            if not self.withhold_replay_complete:
                queue.put_nowait(self._frame({"type": "replay-complete"}))
            client.info["subs"].add(account)

    def _ack(self, client: Client, account: str, success: bool, details: str) -> None:
        payload: Dict[str, Any] = {"type": "subscribe-activity-ack", "account_id": account,
                                   "success": success, "details": details}
        if self.ack_without_account:
            del payload["account_id"]
        client.info["queue"].put_nowait(self._frame(payload))

    # REST --------------------------------------------------------------
    def _oauth(self, request: HttpRequest) -> Tuple[int, Any]:
        with self.lock:
            self.token_requests += 1
        body = request.json() or {}
        if body.get("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type", "error_description": "grant_type must be client_credentials"}
        if body.get("client_id") != self.client_id or body.get("client_secret") != self.client_secret:
            return 401, {"error": "access_denied", "error_description": "Unauthorized"}
        return 200, {"access_token": self.issue_token(), "expires_in": self.token_lifetime, "token_type": "Bearer",
                     "scope": "trading"}

    def _pnl_rest(self, request: HttpRequest) -> Tuple[int, Any]:
        auth = request.header("Authorization") or ""
        if not auth.startswith("Bearer ") or not self.token_valid(auth[7:]):
            return 401, {"type": "about:blank", "title": "Unauthorized", "status": 401,
                         "detail": "invalid or expired token"}
        account = request.path.rstrip("/").split("/")[-2]
        with self.lock:
            body = self.pnl.get(account)
            if body is None:
                return 404, {"type": "about:blank", "title": "Not Found", "status": 404,
                             "detail": f"account {account} not found"}
            return 200, dict(body)


def _average_cost(held: Decimal, cost: Decimal, change: Decimal, price: Decimal) -> Decimal:
    """A position's average cost after a fill of signed ``change`` at ``price``: weighted by
    quantity while the position grows (from zero too), unchanged while it shrinks, the
    fill's price for what is left after a fill through zero, and 0 when flat."""
    after = held + change
    if after == 0:
        return Decimal(0)
    if held == 0 or (held > 0) == (change > 0):
        return (abs(held) * cost + abs(change) * price) / abs(after)
    if (after > 0) == (held > 0):
        return cost
    return price


def _s(value: Decimal) -> str:
    """A decimal as Clear Street's quantity/price strings (no exponent, no trailing zeros)."""
    text = f"{value.normalize():f}"
    return text


def _pnl_body(account: str) -> Dict[str, Any]:
    return {"account_id": account, "entity_id": "E1", "timestamp": int(time.time() * 1000),
            "sod_equity": 100000.0, "equity": 100000.0, "gross_market_value": 0.0, "net_market_value": 0.0,
            "long_market_value": 0.0, "short_market_value": 0.0, "overnight_pnl": 0.0, "day_pnl": 0.0,
            "realized_pnl": 0.0, "unrealized_pnl": 0.0, "total_pnl": 0.0, "net_pnl": 0.0, "total_fees": 0.0}
