"""ClearStreetFeed against ClearStreetSimulator over real sockets, plus unit tests of the adapter.

The numbered tests follow 15 edge cases of the activity stream (sequences, replays, gaps; see docs/clearstreet.md).
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator, List, Tuple

import pytest
import websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from helpers import FAST_RECONNECT, Recorder, feed_threads, wait_until

from brokerfeeds.brokers.clearstreet import (
    ClearStreetFeed,
    ClearStreetProtocol,
    ClientCredentials,
    JsonFileMarkStore,
    map_status,
    trading_day,
)
from brokerfeeds.errors import (
    AuthenticationError,
    CallbackError,
    GapDetected,
    ProtocolError,
)
from brokerfeeds.events import (
    Balance,
    LocateInventory,
    Notice,
    Order,
    OrderStatus,
    ReplayComplete,
    Side,
    Trade,
)
from brokerfeeds.protocol import (
    Fatal,
    RawMessage,
    Reconnect,
    Report,
    Send,
    Subscription,
)
from brokerfeeds.testing.clearstreet import ClearStreetSimulator

ROOT = Path(__file__).resolve().parent.parent
A, B, C = "100000", "100001", "100002"

#: What a frame's ``sequence`` numbers is not documented: the exactly-once tests run under
#: both numberings the simulator can do (per account, per connection).
SCOPES = ("account", "connection")
scoped = pytest.mark.parametrize("scope", SCOPES)

pytestmark = pytest.mark.timeout(30)


def make_feed(sim: ClearStreetSimulator, **kwargs: Any) -> ClearStreetFeed:
    options = dict(access_token=sim.token, url=sim.url, rest_url=sim.rest_url, reconnect=FAST_RECONNECT,
                   stale_after=5.0, ping_interval=None)
    options.update(kwargs)
    return ClearStreetFeed(**options)


@contextmanager
def live_activity(sim: ClearStreetSimulator, **kwargs: Any) -> Iterator[Tuple[ClearStreetFeed, Recorder]]:
    """A running feed subscribed to account ``A`` whose first replay is complete."""
    feed = make_feed(sim, **kwargs)
    rec = Recorder(feed)
    feed.subscribe_activity(A)
    with feed:
        rec.wait_for("replay_complete")
        yield feed, rec


def seqs(events: List[Any], account: str = A) -> List[int]:
    """The sequence numbers of the delivered events of ``account``, in delivery order."""
    return [e.raw["sequence"] for e in events if getattr(e, "account", None) == account and isinstance(e.raw, dict)
            and "sequence" in e.raw]


def sequenced(rec: Recorder) -> List[Any]:
    return [e for k, e in rec.events if k in ("order", "trade", "position", "balance", "locate")]


def delivered(events: List[Any], account: str = A) -> List[Any]:
    """The data of the delivered sequenced events of ``account``, in delivery order (what
    the server journaled, whatever the numbering)."""
    return [e.raw["payload"]["data"] for e in events if getattr(e, "account", None) == account
            and isinstance(e.raw, dict) and "sequence" in e.raw]


def journaled(sim: ClearStreetSimulator, account: str = A, kinds: Tuple[str, ...] = ()) -> List[Any]:
    """The data of what ``sim`` journaled today for ``account`` (of ``kinds``, if given), in order."""
    return [data for _, kind, data in sim.journal(account) if not kinds or kind in kinds]


def gaps(rec: Recorder) -> List[GapDetected]:
    return [e for e in rec.of("error") if isinstance(e, GapDetected)]


_IDS = itertools.count(1)


def publish_orders(sim: ClearStreetSimulator, count: int, account: str = A) -> None:
    for _ in range(count):
        sim.publish(account, "order-update", {"order_id": f"o{next(_IDS)}", "version": 1, "account_id": account,
                                              "symbol": "AAPL", "side": "buy", "quantity": "1",
                                              "filled_quantity": "0", "status": "new", "state": "open"})


# ============================================================== unit tests: the sans-I/O adapter
def frame(seq: Any = None, kind: str = "order-update", account: str = A, ts: int = 1_711_076_850_000,
          **data: Any) -> bytes:
    message: dict = {"timestamp": ts, "payload": {"type": kind}}
    if seq is not None:
        message["sequence"] = seq
        message["payload"]["data"] = {"order_id": f"o{seq}", "version": 1, "account_id": account, **data}
    return json.dumps(message).encode()


def opened(accounts=(A,), token: str = "tok-1234") -> ClearStreetProtocol:
    protocol = ClearStreetProtocol(replay_timeout=1.0)
    protocol.use_token(token)
    protocol.on_open(0.0)
    protocol.subscribe([Subscription("activity", a) for a in accounts], 0.0)
    return protocol


def events_of(outputs: List[Any]) -> List[Any]:
    return [o for o in outputs if not isinstance(o, (RawMessage, Report, Reconnect, Send, Fatal))]


def test_unit_subscribe_frame_carries_token_per_account():
    protocol = ClearStreetProtocol()
    protocol.use_token("tok-abcdef")
    protocol.on_open(0.0)
    out = protocol.subscribe([Subscription("activity", A), Subscription("activity", B)], 0.0)
    assert [json.loads(o.frame) for o in out] == [
        {"authorization": "tok-abcdef", "payload": {"type": "subscribe-activity", "account_id": a}} for a in (A, B)]


def test_unit_duplicates_gaps_and_replay_flags():
    p = opened()
    assert events_of(p.on_frame(frame(1), False, 0.1))[0].replayed is True  # replaying until replay-complete
    out = p.on_frame(b'{"timestamp":1,"payload":{"type":"replay-complete"}}', False, 0.2)
    assert [type(e) for e in events_of(out)] == [ReplayComplete]
    assert events_of(p.on_frame(frame(2), False, 0.3))[0].replayed is False
    assert p.on_frame(frame(2), False, 0.3) == []  # duplicate
    assert p.on_frame(frame(1), False, 0.3) == []  # lower: duplicate, never a rewind
    assert p.marks[A] == 2 and p.counters()["duplicates"] == 2
    out = p.on_frame(frame(5), False, 0.4)
    gap = [o.error for o in out if isinstance(o, Report)][0]
    assert isinstance(gap, GapDetected) and (gap.account, gap.expected, gap.got) == (A, 3, 5)
    assert any(isinstance(o, Reconnect) for o in out) and not events_of(out)
    assert p.on_frame(frame(3), False, 0.5) == []  # held back until the reconnect-replay
    assert p.marks[A] == 2


def test_unit_day_rollover_resets_mark_and_old_day_is_stale():
    p = opened()
    day1, day2 = 1_711_076_850_000, 1_711_076_850_000 + 86_400_000
    for seq in (1, 2, 3):
        p.on_frame(frame(seq, ts=day1), False, 0.1)
    assert events_of(p.on_frame(frame(1, ts=day2), False, 0.2))  # new day, sequence 1
    assert p.counters()["day_resets"] == 1 and p.export_marks()[A] == {"sequence": 1, "trading_day": trading_day(day2)}
    assert p.on_frame(frame(4, ts=day1), False, 0.3) == []  # yesterday's: stale


def test_unit_acks_fifo_refusals_and_auth_retry_once():
    p = opened(accounts=(A, B))
    assert p.on_frame(b'{"payload":{"type":"subscribe-activity-ack","success":true}}', False, 0.1) == [
        RawMessage({"payload": {"type": "subscribe-activity-ack", "success": True}})]
    assert list(p._pending) == [B]  # the account-less ack matched the oldest pending subscribe
    out = p.on_frame(b'{"payload":{"type":"subscribe-activity-ack","success":false,'
                     b'"details":"Unauthorized: token expired"}}', False, 0.2)
    errors = [o.error for o in out if isinstance(o, Report)]
    assert isinstance(errors[0], AuthenticationError) and "Unauthorized: token expired" in str(errors[0])
    assert any(isinstance(o, Reconnect) and o.immediate and o.fresh_credentials for o in out)
    # Refused again after a fresh token: that account stops; A was fine, so the feed goes on.
    p.on_open(1.0)
    p.subscribe([Subscription("activity", A), Subscription("activity", B)], 1.0)
    p.on_frame(json.dumps({"payload": {"type": "subscribe-activity-ack", "account_id": B, "success": False,
                                       "details": "Unauthorized"}}).encode(), False, 1.1)
    assert p.failed == {B}
    assert p.subscribe([Subscription("activity", B)], 1.2) == []  # a stopped account is not re-sent


def test_unit_auth_refused_twice_for_the_only_account_is_fatal():
    p = opened()
    ack = b'{"payload":{"type":"subscribe-activity-ack","account_id":"100000","success":false,"details":"invalid token"}}'
    p.on_frame(ack, False, 0.1)
    p.on_open(1.0)
    p.subscribe([Subscription("activity", A)], 1.0)
    out = p.on_frame(ack, False, 1.1)
    assert isinstance(out[-1], Fatal) and isinstance(out[-1].error, AuthenticationError)


def test_unit_replay_timeout_in_maintain_and_malformed():
    p = opened()
    assert p.maintain(0.5) == []
    out = p.maintain(1.5)
    done = [o for o in out if isinstance(o, ReplayComplete)]
    assert done == [ReplayComplete(broker="clearstreet", account=A, timed_out=True)]
    assert p.maintain(5.0) == []
    with pytest.raises(ProtocolError):
        p.on_frame(b"{not json", False, 5.0)
    assert p.on_frame(b'{"timestamp":1,"payload":{"type":"heartbeat"}}', False, 5.0) == []


def test_unit_decoding_of_every_sequenced_type():
    p = opened()
    trade = {"trade_id": "t1", "order_id": "o1", "side": "sell-short", "quantity": "40", "price": "123.99",
             "running_position": "-40", "created_at": 1711076850000, "account_id": A, "symbol": "AAPL"}
    msgs = [
        {"sequence": 1, "payload": {"type": "order-update", "data": {
            "order_id": "o1", "version": 3, "account_id": A, "state": "open", "status": "partially-filled",
            "symbol": "AAPL", "order_type": "limit", "side": "buy", "quantity": "100", "filled_quantity": "40",
            "price": "123.99", "average_price": 123.98, "updated_at": 1711076850000}}},
        {"sequence": 2, "payload": {"type": "trade-notice", "data": trade}},
        {"sequence": 3, "payload": {"type": "position-update", "data": {
            "account_id": A, "account_number": "ACC1", "symbol": "AAPL", "quantity": "-40", "average_cost": 12.5}}},
        {"sequence": 4, "payload": {"type": "buying-power-update", "data": {"account_id": A, "buying_power": 5e5}}},
        {"sequence": 5, "payload": {"type": "locate-inventory-update", "data": {
            "account_id": A, "symbol": "GME", "available": "1000", "reserved": "10", "used": "5"}}},
        {"sequence": 6, "payload": {"type": "brand-new-type", "data": {"account_id": A}}},
    ]
    got = []
    for m in msgs:
        got.extend(events_of(p.on_frame(json.dumps(m).encode(), False, 0.1)))
    order, fill, position, balance, locate = got
    assert isinstance(order, Order) and order.status is OrderStatus.PARTIALLY_FILLED
    assert order.remaining_quantity == Decimal(60) and order.avg_price == Decimal("123.98")
    assert isinstance(fill, Trade) and fill.side is Side.SELL and fill.price == Decimal("123.99")
    assert position.quantity == Decimal(-40) and position.avg_price == Decimal("12.5")
    assert isinstance(balance, Balance) and balance.buying_power == Decimal("500000.0")  # spec's other name
    assert isinstance(locate, LocateInventory) and locate.quantity == Decimal(1000) and locate.values["used"] == "5"
    assert p.marks[A] == 6  # the unknown sequenced type still advanced the mark (on_message only)
    assert map_status("done-for-day", "closed") is OrderStatus.EXPIRED
    assert map_status(None, "closed", Decimal(5), Decimal(5)) is OrderStatus.FILLED


def test_unit_marks_restore_prefers_newer():
    p = ClearStreetProtocol(marks={A: {"sequence": 5, "trading_day": "2026-03-21"}, B: 7})
    p.restore_marks({A: {"sequence": 2, "trading_day": "2026-03-22"}, B: 3})
    assert p.export_marks() == {A: {"sequence": 2, "trading_day": "2026-03-22"},
                                B: {"sequence": 7, "trading_day": None}}
    with pytest.raises(ValueError):
        p.restore_marks({A: "x"})


def cs(seq: int, account: Any = A, kind: str = "order-update", ts: int = 1_711_076_850_000, **data: Any) -> bytes:
    """A sequenced frame; ``account=None`` leaves ``account_id`` out of its data."""
    body = {"order_id": f"o-{account}-{seq}", "version": 1, **data}
    if account is not None:
        body["account_id"] = account
    return json.dumps({"timestamp": ts, "sequence": seq, "payload": {"type": kind, "data": body}}).encode()


def feed_frames(p: ClearStreetProtocol, *frames: bytes) -> List[Any]:
    out: List[Any] = []
    for data in frames:
        out.extend(p.on_frame(data, False, 0.1))
    return out


def test_unit_a_connection_wide_numbering_is_learned_and_interleaving_is_no_gap():
    p = opened(accounts=(A, B))
    out = feed_frames(p, cs(1, A), cs(2, B), cs(3, A), cs(4, B), cs(5, B), cs(6, A))
    assert not [o for o in out if isinstance(o, (Report, Reconnect))]
    assert [(e.account, e.order_id) for e in events_of(out)] == [
        (A, f"o-{A}-1"), (B, f"o-{B}-2"), (A, f"o-{A}-3"), (B, f"o-{B}-4"), (B, f"o-{B}-5"), (A, f"o-{A}-6")]
    assert p.sequence_scope == "connection" and p.counters()["scope_connection"] == 1
    assert {a: m["sequence"] for a, m in p.export_marks().items()} == {A: 3, B: 3}  # each account's 3rd message
    # A new connection replays the day with new numbers: A's three, then B's three; then live.
    p.on_close()
    p.on_open(1.0)
    p.subscribe([Subscription("activity", A), Subscription("activity", B)], 1.0)
    replay = [cs(1, A), cs(2, A), cs(3, A), cs(4, B), cs(5, B), cs(6, B)]
    assert events_of(feed_frames(p, *replay)) == [] and p.counters()["duplicates"] == 6
    assert [e.order_id for e in events_of(feed_frames(p, cs(7, B, order_id="new-b"), cs(8, A, order_id="new-a")))] \
        == ["new-b", "new-a"]
    assert p.counters()["gaps"] == 0
    assert feed_frames(p, cs(8, A, order_id="again")) == []  # a repeat on the connection


def test_unit_a_per_account_numbering_is_learned():
    p = opened(accounts=(A, B))
    out = feed_frames(p, cs(1, A), cs(2, A), cs(1, B), cs(3, A), cs(2, B))
    assert len(events_of(out)) == 5 and not [o for o in out if isinstance(o, (Report, Reconnect))]
    assert p.sequence_scope == "account" and p.counters()["scope_account"] == 1
    assert feed_frames(p, cs(2, A)) == []  # A's own repeat
    assert p.export_marks()[A]["sequence"] == 3 and p.export_marks()[B]["sequence"] == 2


def test_unit_live_interleaving_untold_costs_one_reconnect_then_the_replay_tells():
    """Live, B=2 after A=1 may be a per-connection numbering or B's own 1 lost: one reconnect;
    the replay (read from the journal) tells, and the scope is kept for the run."""
    done = b'{"payload":{"type":"replay-complete"}}'
    p = opened(accounts=(A, B))
    feed_frames(p, done, done)  # nothing journaled yet: live from here
    out = feed_frames(p, cs(1, A), cs(2, B))
    assert [e.account for e in events_of(out)] == [A]
    assert any(isinstance(o, Reconnect) for o in out) and not [o for o in out if isinstance(o, Report)]
    assert p.sequence_scope is None and p.counters()["scope_untold"] == 1
    assert feed_frames(p, cs(3, A)) == []  # nothing more on this connection

    def connect(at: float) -> None:
        p.on_close()
        p.on_open(at)
        p.subscribe([Subscription("activity", A), Subscription("activity", B)], at)

    connect(1.0)
    out = feed_frames(p, cs(1, A), cs(2, A), done, cs(3, B), done, cs(4, B), cs(5, A))  # the replays, then live
    assert [(e.account, e.order_id) for e in events_of(out) if isinstance(e, Order)] == [
        (A, f"o-{A}-2"), (B, f"o-{B}-3"), (B, f"o-{B}-4"), (A, f"o-{A}-5")]
    assert p.sequence_scope == "connection" and not [o for o in out if isinstance(o, (Report, Reconnect))]
    connect(2.0)  # known from the start now: live interleaving is no question
    out = feed_frames(p, cs(1, A), cs(2, A), cs(3, A), done, cs(4, B), cs(5, B), done, cs(6, B), cs(7, A))
    assert [e.order_id for e in events_of(out) if isinstance(e, Order)] == [f"o-{B}-6", f"o-{A}-7"]
    assert p.counters()["scope_untold"] == 1 and p.counters()["gaps"] == 0
    # Per account, live interleaving tells at once: B's own 1 after A's 1.
    p = opened(accounts=(A, B))
    out = feed_frames(p, done, done, cs(1, A), cs(1, B), cs(2, A))
    assert len([e for e in events_of(out) if isinstance(e, Order)]) == 3
    assert p.sequence_scope == "account" and p.counters()["scope_untold"] == 0


@scoped
def test_unit_a_real_gap_is_detected_under_both_scopes(scope):
    p = opened(accounts=(A, B))
    if scope == "connection":  # A=1, B=2, then 3 is lost
        out = feed_frames(p, cs(1, A), cs(2, B), cs(4, A))
        gap = [o.error for o in out if isinstance(o, Report)][0]
        assert isinstance(gap, GapDetected) and (gap.expected, gap.got) == (3, 4)
        assert any(isinstance(o, Reconnect) for o in out)
        # Whose frame was lost is unknown: nothing more is delivered on this connection.
        assert feed_frames(p, cs(5, B)) == [] and feed_frames(p, cs(6, A)) == []
    else:  # A=1, B=1, then A's 2 is lost
        out = feed_frames(p, cs(1, A), cs(1, B), cs(3, A))
        gap = [o.error for o in out if isinstance(o, Report)][0]
        assert isinstance(gap, GapDetected) and (gap.account, gap.expected, gap.got) == (A, 2, 3)
        assert feed_frames(p, cs(4, A)) == []  # A waits for the replay ...
        assert [e.account for e in events_of(feed_frames(p, cs(2, B)))] == [B]  # ... B goes on
    assert p.sequence_scope == scope and p.counters()["gaps"] == 1


def test_unit_trade_notice_without_account_is_attributed_by_its_order():
    p = opened(accounts=(A, B))
    trade = dict(trade_id="t1", order_id=f"o-{B}-2", side="buy", quantity="5", price="10", running_position="5",
                 created_at=1_711_076_850_000)
    out = feed_frames(p, cs(1, A), cs(2, B), cs(3, None, kind="trade-notice", **trade), cs(4, B), cs(5, A))
    fills = [e for e in events_of(out) if isinstance(e, Trade)]
    assert [f.account for f in fills] == [B] and fills[0].raw["payload"]["data"].get("account_id") is None
    assert not [o for o in out if isinstance(o, (Report, Reconnect))] and p.counters()["unattributed"] == 0
    assert p.export_marks()[B]["sequence"] == 3
    # Per-account numbering: the same, by the order.
    p = opened(accounts=(A, B))
    out = feed_frames(p, cs(1, A), cs(1, B), cs(2, None, kind="trade-notice", **dict(trade, order_id=f"o-{B}-1")),
                      cs(3, B), cs(2, A))
    assert [(type(e).__name__, e.account) for e in events_of(out)] == [
        ("Order", A), ("Order", B), ("Trade", B), ("Order", B), ("Order", A)]
    assert not [o for o in out if isinstance(o, (Report, Reconnect))]
    # A single-account connection: that account.
    p = opened(accounts=(A,))
    out = feed_frames(p, cs(1, None, kind="trade-notice", **dict(trade, order_id="x")), cs(2, A))
    assert [e.account for e in events_of(out)] == [A, A] and not [o for o in out if isinstance(o, Report)]


@scoped
def test_unit_a_trade_of_an_order_never_seen_is_replayed_then_taken_without_account(scope):
    """Several accounts, a trade whose order never came (its order-update lost, most likely):
    per account nobody can tell whose it is: a reconnect, whose replay tells; a third time
    the same, it is delivered without an account and its number is no gap for its account.
    Per connection it is delivered at once, in the connection's order."""
    trade = dict(trade_id="t9", order_id="never-seen", side="buy", quantity="1", price="1",
                 running_position="1", created_at=1_711_076_850_000)
    p = opened(accounts=(A, B))

    def connect(at: float) -> None:
        p.on_close()
        p.on_open(at)
        p.subscribe([Subscription("activity", A), Subscription("activity", B)], at)

    if scope == "connection":
        out = feed_frames(p, cs(1, A), cs(2, B), cs(3, None, kind="trade-notice", **trade), cs(4, A))
        assert [(type(e).__name__, e.account) for e in events_of(out)] == [
            ("Order", A), ("Order", B), ("Trade", None), ("Order", A)]
        assert not [o for o in out if isinstance(o, (Report, Reconnect))] and p.counters()["unattributed"] == 1
        return
    replay = [cs(1, A), cs(1, B), cs(2, None, kind="trade-notice", **trade), cs(3, A), cs(2, B)]
    for attempt in range(2):
        out = feed_frames(p, *replay)
        assert [e.account for e in events_of(out)] == ([A, B] if attempt == 0 else [])
        assert any(isinstance(o, Reconnect) for o in out) and "no known account" in str(
            [o.error for o in out if isinstance(o, Report)][0])
        connect(1.0 + attempt)
    out = feed_frames(p, *replay)
    assert [(type(e).__name__, e.account) for e in events_of(out)] == [("Trade", None), ("Order", A), ("Order", B)]
    assert not [o for o in out if isinstance(o, (Report, Reconnect))] and p.counters()["unattributed"] == 1
    assert p.counters()["gaps"] == 0 and p.export_marks()[A]["sequence"] == 3


def test_unit_a_hole_in_the_journal_costs_two_replays_once():
    p = opened()

    def connect(at: float) -> None:
        p.on_close()
        p.on_open(at)
        p.subscribe([Subscription("activity", A)], at)

    for attempt in range(2):
        out = feed_frames(p, cs(1, A), cs(2, A), cs(4, A))  # 3 is missing from the journal
        assert any(isinstance(o, Reconnect) for o in out), attempt
        connect(1.0 + attempt)
    out = feed_frames(p, cs(1, A), cs(2, A), cs(4, A), cs(5, A))
    assert [e.order_id for e in events_of(out)] == [f"o-{A}-4", f"o-{A}-5"]  # accepted: reported, delivered
    assert [type(o.error) for o in out if isinstance(o, Report)] == [GapDetected]
    assert not any(isinstance(o, Reconnect) for o in out)
    connect(5.0)  # later replays show the same hole: no more reconnects for it
    out = feed_frames(p, cs(1, A), cs(2, A), cs(4, A), cs(5, A), cs(6, A))
    assert [e.order_id for e in events_of(out)] == [f"o-{A}-6"] and not any(isinstance(o, Reconnect) for o in out)


class _ModelServer:
    """A plain-data model of the channel for the property test below: per-account journals,
    numbered per account or per connection, replayed on every subscribe."""

    def __init__(self, scope: str, accounts: Tuple[str, ...]) -> None:
        self.scope, self.accounts = scope, accounts
        self.journals: dict = {a: [] for a in accounts}
        self.numbers = 0  # the connection's last number
        self.sent: dict = {}  # (account, index) -> frame, on this connection

    def publish(self, account: str, trade: bool) -> bytes:
        """Journal an order (or, once the account has one, a trade of its first order,
        without account_id); its frame."""
        journal = self.journals[account]
        journal.append(("trade" if trade and journal else "order", f"{account}-{len(journal)}"))
        return self.frame(account, len(journal) - 1)

    def frame(self, account: str, index: int) -> bytes:
        if self.scope == "account":
            seq = index + 1
        else:
            self.numbers += 1
            seq = self.numbers
        kind, ident = self.journals[account][index]
        if kind == "order":
            payload = {"type": "order-update", "data": {"order_id": ident, "version": 1, "account_id": account}}
        else:
            payload = {"type": "trade-notice", "data": {"trade_id": ident, "order_id": f"{account}-0",
                                                         "side": "buy", "quantity": "1", "price": "1"}}
        data = json.dumps({"timestamp": 1_711_076_850_000, "sequence": seq, "payload": payload}).encode()
        self.sent[(account, index)] = data
        return data

    def connect(self, p: ClearStreetProtocol, at: float) -> List[bytes]:
        """A new connection: what the replays send, in order."""
        p.on_close()
        p.on_open(at)
        p.subscribe([Subscription("activity", a) for a in self.accounts], at)
        self.numbers, self.sent = 0, {}
        frames: List[bytes] = []
        for account in self.accounts:
            frames.append(json.dumps({"payload": {"type": "subscribe-activity-ack", "account_id": account,
                                                  "success": True}}).encode())
            frames.extend(self.frame(account, i) for i in range(len(self.journals[account])))
            frames.append(b'{"payload":{"type":"replay-complete"}}')
        return frames


_STEP = st.one_of(st.tuples(st.sampled_from(["publish", "trade"]), st.integers(0, 2),
                            st.sampled_from(["sent", "sent", "sent", "lost"])),
                  st.tuples(st.just("repeat"), st.integers(0, 2), st.integers(0, 30)),
                  st.tuples(st.just("drop"), st.just(0), st.just("")))


@scoped
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(_STEP, max_size=40))
def test_unit_property_exactly_once_under_both_scopes(scope, steps):
    """Interleaved activity of three accounts (trades without account_id among it), live
    frames lost or repeated, drops: after a last reconnect every account's messages were
    delivered once each, in order, to that account; and only a lost frame ever caused a
    reconnect."""
    server = _ModelServer(scope, (A, B, C))
    p = ClearStreetProtocol(replay_timeout=1e9)
    p.use_token("tok")
    got: dict = {a: [] for a in (A, B, C)}
    reconnects = lost = 0

    def send(frames: List[bytes], at: float) -> bool:
        wants_reconnect = False
        for data in frames:
            for out in p.on_frame(data, False, at):
                if isinstance(out, Order):
                    got[out.account].append(out.order_id)
                elif isinstance(out, Trade):
                    got[out.account].append(out.trade_id)
                elif isinstance(out, Reconnect):
                    wants_reconnect = True
                elif isinstance(out, Report):  # a gap, or a trade of an order lost (a gap too)
                    assert isinstance(out.error, GapDetected) or "no known account" in str(out.error), out.error
        return wants_reconnect

    now = 1.0
    pending = server.connect(p, now)
    for kind, index, how in steps:
        now += 1.0
        if send(pending, now):
            reconnects += 1
            pending = server.connect(p, now)
            continue
        pending = []
        account = (A, B, C)[index]
        if kind in ("publish", "trade"):
            frame = server.publish(account, kind == "trade")
            if how == "lost":
                lost += 1
            else:
                pending = [frame]
        elif kind == "repeat" and server.sent:
            pending = [list(server.sent.values())[how % len(server.sent)]]
        elif kind == "drop":
            pending = server.connect(p, now)
    send(pending, now + 1)
    send(server.connect(p, now + 2), now + 2)  # the last reconnect replays everything
    for account in (A, B, C):
        assert got[account] == [ident for _, ident in server.journals[account]], (account, got)
    # (Per connection, a live interleaving before any replay told the scope costs one more.)
    assert reconnects <= lost + p.counters()["scope_untold"] and p.counters()["scope_untold"] <= 1


# ============================================================== §8 edge cases over real sockets
@scoped
def test_01_exactly_once_in_order_across_forced_reconnects(scope):
    """Several drops mid-stream: every sequence reaches the callbacks once, in order; missed ones replayed."""
    with ClearStreetSimulator(hb_interval=None, sequence_scope=scope) as sim:
        publish_orders(sim, 20)  # earlier today: replayed on the first subscribe
        with live_activity(sim) as (feed, rec):
            for batch in range(4):  # each drop lands while a batch is being published
                # the previous drop must have been noticed and replaced by a new connection
                wait_until(lambda: feed.stats.connects == batch + 1 and sim.subscribers() == 1, 10)
                before = len(rec.of("order"))
                thread = threading.Thread(target=publish_orders, args=(sim, 70))
                thread.start()
                wait_until(lambda: len(rec.of("order")) >= before + 5, 10)
                sim.drop()
                thread.join(20)
            wait_until(lambda: len(rec.of("order")) >= 300, 15)
            time.sleep(0.1)
            orders = rec.of("order")
            assert seqs(orders) == list(range(1, 301)) and delivered(orders) == journaled(sim)
            assert feed.stats.reconnects == 4 and feed.stats.extra["duplicates"] > 0
            assert all(o.replayed for o in orders[:20])
            assert feed.marks[A]["sequence"] == 300


@scoped
def test_02_gap_reported_then_healed_by_replay(scope):
    with ClearStreetSimulator(hb_interval=None, sequence_scope=scope) as sim:
        with live_activity(sim) as (feed, rec):
            publish_orders(sim, 2)
            rec.wait_for("order", count=2)
            sim.gap(2)  # sequences 3 and 4 journaled but never pushed live
            publish_orders(sim, 3)
            gap = rec.wait_for("error", lambda e: isinstance(e, GapDetected))[0]
            assert (gap.account, gap.expected, gap.got) == (A, 3, 5)
            rec.wait_for("order", count=5, timeout=10)
            orders = rec.of("order")
            assert seqs(orders) == [1, 2, 3, 4, 5]
            assert [o.replayed for o in orders[2:]] == [True, True, True]  # came from the healing replay
            assert feed.stats.reconnects == 1 and feed.stats.extra["gaps"] == 1


@scoped
def test_03_out_of_order_and_lower_sequence_live(scope):
    with ClearStreetSimulator(hb_interval=None, sequence_scope=scope) as sim:
        with live_activity(sim) as (feed, rec):
            publish_orders(sim, 3)
            rec.wait_for("order", count=3)
            sim.resend(sequence=1)  # a lower sequence on the live flow: a duplicate, no rewind
            sim.resend()  # the last one again
            publish_orders(sim, 1)
            rec.wait_for("order", count=4)
            assert seqs(rec.of("order")) == [1, 2, 3, 4] and feed.stats.extra["duplicates"] == 2
            assert feed.stats.reconnects == 0
            sim.reorder_next()  # 6 arrives before 5
            publish_orders(sim, 2)
            rec.wait_for("order", count=6, timeout=10)
            assert seqs(rec.of("order")) == [1, 2, 3, 4, 5, 6]
            assert any(isinstance(e, GapDetected) and e.expected == 5 and e.got == 6 for e in rec.of("error"))


def test_04_replay_complete_withheld_times_out_then_live():
    with ClearStreetSimulator(hb_interval=0.1) as sim:
        publish_orders(sim, 3)
        sim.withhold_replay_complete = True
        feed = make_feed(sim, replay_timeout=0.4, stale_after=2.0)
        rec = Recorder(feed)
        feed.subscribe_activity(A)
        with feed:
            done = rec.wait_for("replay_complete", timeout=5)[0]
            assert done.account == A and done.timed_out is True
            assert [o.replayed for o in rec.of("order")] == [True, True, True]
            publish_orders(sim, 1)
            live = rec.wait_for("order", count=4)[-1]
            assert live.replayed is False and feed.stats.extra["replay_timeouts"] == 1
            assert feed.stats.reconnects == 0  # heartbeats kept it alive; nothing hung


def test_05a_refused_subscribe_reports_details_and_keeps_other_accounts():
    with ClearStreetSimulator(accounts=(A, B), hb_interval=None) as sim:
        feed = make_feed(sim)
        rec = Recorder(feed)
        feed.subscribe_activity("999999")
        feed.subscribe_activity(A)
        with feed:
            error = rec.wait_for("error")[0]
            assert "Account 999999 not found" in str(error) and not isinstance(error, AuthenticationError)
            rec.wait_for("replay_complete", lambda d: d.account == A)
            publish_orders(sim, 1)
            assert rec.wait_for("order")[0].account == A
            assert feed.state == "connected" and feed.stats.reconnects == 0


def test_05b_auth_refusal_refreshes_token_once_and_resubscribes():
    with ClearStreetSimulator(hb_interval=None, token_lifetime=3600) as sim:
        provider = ClearStreetFeed.client_credentials(sim.client_id, sim.client_secret, auth_url=sim.auth_url)
        sim.refuse_next_subscribe("Unauthorized: token revoked")
        feed = make_feed(sim, access_token=None, token_provider=provider)
        rec = Recorder(feed)
        feed.subscribe_activity(A)
        with feed:
            error = rec.wait_for("error", lambda e: isinstance(e, AuthenticationError))[0]
            assert "token revoked" in str(error)
            rec.wait_for("replay_complete")
            assert provider.fetches == 2  # the cached token was not reused after the refusal
            first, second = sim.subscribes
            assert first[1] != second[1]
            assert feed.state == "connected"


def test_05c_refused_twice_stops_the_account_then_the_feed():
    with ClearStreetSimulator(accounts=(A, B), hb_interval=None) as sim:
        sim.refused_accounts[B] = "Forbidden: not authorized for this account"
        feed = make_feed(sim)
        rec = Recorder(feed)
        feed.subscribe_activity(A)
        feed.subscribe_activity(B)
        with feed:
            rec.wait_for("error", lambda e: "account stopped" in str(e), timeout=10)
            subscribes_to_b = [s for s in sim.subscribes if s[0] == B]
            assert len(subscribes_to_b) == 2  # once, then once more after a refresh: no storm
            publish_orders(sim, 1)
            rec.wait_for("order")
            assert feed.state == "connected"
        # A single account refused twice: the feed stops with AuthenticationError.
        with ClearStreetSimulator(hb_interval=None) as sim2:
            feed2 = make_feed(sim2, access_token="not-a-valid-token")
            feed2.subscribe_activity(A)
            feed2.start()
            try:
                with pytest.raises(AuthenticationError):
                    feed2.run_forever()
                assert len(sim2.subscribes) == 2
            finally:
                feed2.stop()


@scoped
def test_06_ack_without_account_id_matched_in_order(scope):
    with ClearStreetSimulator(accounts=(A, B), hb_interval=None, sequence_scope=scope) as sim:
        sim.ack_without_account = True
        publish_orders(sim, 2, A)
        publish_orders(sim, 3, B)
        feed = make_feed(sim)
        rec = Recorder(feed)
        feed.subscribe_activity(A)
        feed.subscribe_activity(B)
        with feed:
            done = rec.wait_for("replay_complete", count=2)
            assert [d.account for d in done] == [A, B]
            assert delivered(rec.of("order"), A) == journaled(sim, A) and len(journaled(sim, A)) == 2
            assert delivered(rec.of("order"), B) == journaled(sim, B) and len(journaled(sim, B)) == 3
            assert not rec.of("error")


def test_07_error_notice_reaches_on_error_and_notice():
    with ClearStreetSimulator(hb_interval=None) as sim:
        with live_activity(sim) as (feed, rec):
            sim.send_error_notice("Internal error: try again", close=True)
            notice = rec.wait_for("notice")[0]
            assert isinstance(notice, Notice) and notice.kind == "error" and "try again" in notice.text
            assert any("try again" in str(e) for e in rec.wait_for("error"))
            rec.wait_for("connect", lambda c: c.reconnect)  # the close that followed is recovered


def test_07b_simulator_answers_malformed_requests_with_error_notice():
    with ClearStreetSimulator(hb_interval=None) as sim:
        ws = websocket.create_connection(sim.url, timeout=5)
        try:
            ws.send("{not json")
            assert json.loads(ws.recv())["payload"]["type"] == "error-notice"
            ws.send(json.dumps({"payload": {"type": "subscribe-activity", "account_id": A}}))  # no token
            reply = json.loads(ws.recv())["payload"]
            assert reply["type"] == "error-notice" and "authorization" in reply["details"]
        finally:
            ws.close()


def test_08_subscribe_deadline_missed_server_closes_and_feed_reconnects():
    with ClearStreetSimulator(hb_interval=None, subscribe_deadline=0.2) as sim:
        feed = make_feed(sim)  # no account subscribed: nothing is sent in time
        rec = Recorder(feed)
        with feed:
            notice = rec.wait_for("notice", timeout=5)[0]
            assert "No subscription received" in notice.text
            wait_until(lambda: feed.stats.reconnects >= 1, 5)
            feed.subscribe_activity(A)
            rec.wait_for("replay_complete", timeout=5)


@scoped
def test_09_token_expiry_reconnects_with_a_fresh_token_and_resubscribes(scope):
    with ClearStreetSimulator(hb_interval=None, token_lifetime=0.6, sequence_scope=scope) as sim:
        provider = ClearStreetFeed.client_credentials(sim.client_id, sim.client_secret, auth_url=sim.auth_url)
        feed = make_feed(sim, access_token=None, token_provider=provider)
        rec = Recorder(feed)
        feed.subscribe_activity(A)
        with feed:
            rec.wait_for("replay_complete")
            publish_orders(sim, 2)
            rec.wait_for("connect", lambda c: c.reconnect, timeout=10)  # the server dropped us at expiry
            rec.wait_for("replay_complete", count=2, timeout=5)
            publish_orders(sim, 1)
            rec.wait_for("order", count=3)
            tokens = [t for _, t in sim.subscribes]
            assert len(tokens) >= 2 and len(set(tokens)) == len(tokens)  # a fresh token each time
            assert seqs(rec.of("order")) == [1, 2, 3]
            assert not [e for e in rec.of("error") if isinstance(e, AuthenticationError)]


def test_10_silent_server_detected_as_stale():
    with ClearStreetSimulator(hb_interval=None) as sim:
        feed = make_feed(sim, stale_after=0.4)
        rec = Recorder(feed)
        feed.subscribe_activity(A)
        with feed:
            rec.wait_for("replay_complete")
            sim.stall()
            gone = rec.wait_for("disconnect", timeout=5)[0]
            assert "stale" in gone.reason
            sim.resume()
            rec.wait_for("replay_complete", count=2, timeout=5)


def test_11_unknown_malformed_and_binary_frames_do_not_disconnect():
    with ClearStreetSimulator(hb_interval=None) as sim:
        with live_activity(sim) as (feed, rec):
            sim.send_unknown()
            sim.send_malformed()
            sim.send_binary()
            rec.wait_for("message", lambda m: isinstance(m, dict) and m["payload"]["type"] == "future-feature")
            errors = rec.wait_for("error", lambda e: isinstance(e, ProtocolError), count=2)
            assert len(errors) == 2
            publish_orders(sim, 1)
            rec.wait_for("order")
            assert feed.stats.malformed == 2 and feed.stats.reconnects == 0


@pytest.mark.timeout(60)
def test_12_large_replay_does_not_trip_the_stale_detector():
    with ClearStreetSimulator(hb_interval=None) as sim:
        sim.add_history(A, 20_000)
        # The replay takes several times stale_after to arrive: only its frames keep it alive.
        feed = make_feed(sim, stale_after=0.3)
        count = [0, 0]  # orders, out-of-order

        def on_order(order: Order) -> None:
            count[0] += 1
            if order.raw["sequence"] != count[0]:
                count[1] += 1

        feed.on_order(on_order)
        done = threading.Event()
        feed.on_replay_complete(lambda _: done.set())
        feed.subscribe_activity(A)
        with feed:
            assert done.wait(40)
            wait_until(lambda: count[0] == 20_000, 10)
            assert count[1] == 0
            assert feed.stats.reconnects == 0 and feed.stats.extra["replayed"] == 20_000


@scoped
def test_13_day_rollover_resets_marks(scope):
    with ClearStreetSimulator(hb_interval=None, sequence_scope=scope) as sim:
        publish_orders(sim, 3)
        with live_activity(sim) as (feed, rec):
            day1 = feed.marks[A]["trading_day"]
            yesterday = journaled(sim)
            sim.rollover()
            publish_orders(sim, 2)  # the new day's first two (per account: sequences 1 and 2 again)
            rec.wait_for("order", count=5)
            assert delivered(rec.of("order")) == yesterday + journaled(sim)
            assert feed.marks[A]["sequence"] == 2 and feed.marks[A]["trading_day"] > day1
            assert feed.stats.extra["day_resets"] == 1
            # Per connection, the new day's first frame (4, not 1) may as well be a gap of a
            # per-account numbering (its 1..3 lost): one reconnect, whose replay says nothing lost.
            untold = feed.stats.extra["scope_untold"]
            assert untold == (0 if scope == "account" else 1)
            wait_until(lambda: feed.stats.connects == 1 + untold and sim.subscribers() == 1)
            sim.drop()  # the new day's replay is de-duplicated against the new mark
            rec.wait_for("replay_complete", count=2 + untold)
            publish_orders(sim, 1)
            rec.wait_for("order", count=6)
            assert delivered(rec.of("order")) == yesterday + journaled(sim) and len(journaled(sim)) == 3
            assert feed.stats.reconnects == 1 + untold and not gaps(rec)


def test_14_callback_that_raises_is_reported_and_the_feed_goes_on():
    with ClearStreetSimulator(hb_interval=None) as sim:
        feed = make_feed(sim)
        rec = Recorder(feed)

        @feed.on_order
        def explode(order: Order) -> None:
            raise RuntimeError("user bug")

        feed.subscribe_activity(A)
        with feed:
            rec.wait_for("replay_complete")
            publish_orders(sim, 2)
            rec.wait_for("order", count=2)
            errors = rec.wait_for("error", lambda e: isinstance(e, CallbackError), count=2)
            assert isinstance(errors[0].__cause__, RuntimeError)
            assert feed.stats.callback_errors == 2 and feed.stats.reconnects == 0


def test_15_stop_while_reconnecting_and_from_a_callback_is_clean():
    sim = ClearStreetSimulator(hb_interval=None).start()
    feed = make_feed(sim)
    feed.subscribe_activity(A)
    try:
        feed.start()
        assert feed.wait_connected(5)
        sim.stop()  # the server is gone: the feed keeps retrying
        wait_until(lambda: feed.state == "reconnecting", 5)
    finally:
        assert feed.stop(3)
        assert feed.stop(3)  # idempotent
        sim.stop()
    assert feed.state == "stopped" and not feed_threads()
    # stop() from inside a callback, during the replay of a subscribe
    with ClearStreetSimulator(hb_interval=None) as sim2:
        publish_orders(sim2, 50)
        feed2 = make_feed(sim2)
        feed2.on_order(lambda order: feed2.stop())
        feed2.subscribe_activity(A)
        feed2.start()
        try:
            wait_until(lambda: feed2.state == "stopped", 5)
        finally:
            feed2.stop()


# ============================================================== feed features
@scoped
def test_marks_restored_in_a_new_feed_do_not_refire_the_day(tmp_path, scope):
    with ClearStreetSimulator(hb_interval=None, sequence_scope=scope) as sim:
        publish_orders(sim, 5)
        store = JsonFileMarkStore(str(tmp_path / "marks.json"))
        feed = make_feed(sim, sequence_store=store, store_interval=0.1)
        rec = Recorder(feed)
        feed.subscribe_activity(A)
        with feed:
            rec.wait_for("replay_complete")
            rec.wait_for("order", count=5)
        assert json.loads((tmp_path / "marks.json").read_text())[A]["sequence"] == 5
        publish_orders(sim, 2)  # while "the process" was down

        # A new process restores from the store: only the two missed orders arrive.
        feed2 = make_feed(sim, sequence_store=JsonFileMarkStore(str(tmp_path / "marks.json")))
        rec2 = Recorder(feed2)
        feed2.subscribe_activity(A)
        with feed2:
            rec2.wait_for("replay_complete")
            rec2.wait_for("order", count=2)
            assert seqs(rec2.of("order")) == [6, 7] and all(o.replayed for o in rec2.of("order"))
            assert feed2.stats.extra["duplicates"] == 5
        # ... and the same with the explicit hooks: feed.marks -> marks= / restore_marks().
        feed3 = make_feed(sim)
        feed3.restore_marks(feed2.marks)
        rec3 = Recorder(feed3)
        feed3.subscribe_activity(A)
        with feed3:
            rec3.wait_for("replay_complete")
            publish_orders(sim, 1)
            rec3.wait_for("order")
            assert seqs(rec3.of("order")) == [8]
        # Restarting the same feed object keeps its marks too.
        with feed3:
            rec3.wait_for("replay_complete", count=2)
            publish_orders(sim, 1)
            rec3.wait_for("order", count=2)
            assert seqs(rec3.of("order")) == [8, 9]


@scoped
def test_unsubscribe_recycles_the_connection_without_the_account(scope):
    with ClearStreetSimulator(accounts=(A, B), hb_interval=None, sequence_scope=scope) as sim:
        feed = make_feed(sim)
        rec = Recorder(feed)
        feed.subscribe_activity(A)
        feed.subscribe_activity(B)
        with feed:
            rec.wait_for("replay_complete", count=2)
            assert feed.unsubscribe_activity(B)
            rec.wait_for("connect", lambda c: c.reconnect and c.subscriptions == 1)
            rec.wait_for("replay_complete", count=3)
            assert [s[0] for s in sim.subscribes] == [A, B, A]
            publish_orders(sim, 1, B)
            publish_orders(sim, 1, A)
            rec.wait_for("order")
            assert [o.account for o in rec.of("order")] == [A]
            assert feed.accounts == (A,)


def test_heartbeats_are_liveness_and_reach_no_callback():
    with ClearStreetSimulator(hb_interval=0.05) as sim:
        feed = make_feed(sim, stale_after=0.3)
        rec = Recorder(feed)
        feed.subscribe_activity(A)
        with feed:
            rec.wait_for("replay_complete")
            start = feed.stats.messages
            wait_until(lambda: feed.stats.messages >= start + 20, 5)  # ~1 s of heartbeats only
            assert feed.stats.reconnects == 0
            assert not [m for m in rec.of("message") if m.get("payload", {}).get("type") == "heartbeat"]


def test_poll_pnl_and_every_event_kind():
    with ClearStreetSimulator(hb_interval=None) as sim:
        feed = make_feed(sim, poll_pnl=0.1)
        rec = Recorder(feed)
        feed.subscribe_activity(A)
        with feed:
            rec.wait_for("replay_complete")
            rec.wait_for("pnl")
            order_id = sim.place_order("AAPL", "buy", 100, 190.5)
            sim.fill(order_id, 100, 190.4)
            sim.set_locate("GME", available=500, reserved=10)
            sim.set_pnl(day_pnl=12.5, unrealized_pnl=-3.25)
            pnl = rec.wait_for("pnl", lambda p: p.daily_pnl == Decimal("12.5"))[0]
            assert pnl.unrealized_pnl == Decimal("-3.25") and pnl.account == A
            order = rec.wait_for("order", lambda o: o.status is OrderStatus.FILLED)[0]
            assert order.avg_price == Decimal("190.4") and order.remaining_quantity == 0
            assert rec.wait_for("trade")[0].quantity == Decimal(100)
            assert rec.wait_for("position")[0].quantity == Decimal(100)
            assert rec.wait_for("balance")[0].buying_power is not None
            assert rec.wait_for("locate")[0].symbol == "GME"
            assert len(rec.of("pnl")) == 2  # polls that change nothing produce nothing


def test_client_credentials_caches_and_maps_errors():
    with ClearStreetSimulator(hb_interval=None, token_lifetime=3600) as sim:
        provider = ClientCredentials(sim.client_id, sim.client_secret, auth_url=sim.auth_url)
        token = provider()
        assert provider() == token and sim.token_requests == 1
        provider.invalidate()
        assert provider() != token and sim.token_requests == 2
        assert sim.client_secret not in repr(provider)
        bad = ClientCredentials(sim.client_id, "wrong-secret-value", auth_url=sim.auth_url)
        with pytest.raises(AuthenticationError) as info:
            bad()
        assert "wrong-secret-value" not in str(info.value)
        short = ClientCredentials(sim.client_id, sim.client_secret, auth_url=sim.auth_url)
        sim.token_lifetime = 0.2
        first = short()
        time.sleep(0.15)  # past half the lifetime: the next call renews
        assert short() != first


def test_secrets_never_logged(debug_log):
    with ClearStreetSimulator(hb_interval=None, token_lifetime=3600) as sim:
        provider = ClearStreetFeed.client_credentials(sim.client_id, sim.client_secret, auth_url=sim.auth_url)
        feed = make_feed(sim, access_token=None, token_provider=provider, poll_pnl=0.1)
        rec = Recorder(feed)
        feed.subscribe_activity(A)
        with feed:
            rec.wait_for("replay_complete")
            rec.wait_for("pnl")
            sim.refuse_next_subscribe("Unauthorized: token expired")
            sim.drop()
            rec.wait_for("replay_complete", count=2, timeout=5)
            text = debug_log.text + repr(feed) + "".join(str(e) for e in rec.of("error"))
        tokens = {t for _, t in sim.subscribes}
        assert tokens and "authorization" in debug_log.text  # the subscribe frames were logged...
        for secret in tokens | {sim.client_secret}:
            assert secret not in text  # ... masked


def test_constructor_does_no_io_and_validates():
    feed = ClearStreetFeed(access_token="tok-x" * 3)
    assert feed.state == "idle" and feed.url == "wss://api.clearstreet.io/studio/v2/ws"
    assert feed.rest_url == "https://api.clearstreet.io/studio/v2"
    with pytest.raises(ValueError):
        ClearStreetFeed()
    with pytest.raises(ValueError):
        feed.subscribe_activity(" ")


@pytest.mark.timeout(60)
def test_example_runs_standalone_against_the_simulator():
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "clearstreet_activity.py")], cwd=ROOT,
                            capture_output=True, text=True, timeout=30,
                            env={k: v for k, v in __import__("os").environ.items()
                                 if not k.startswith("CLEARSTREET_")})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "PARTIALLY_FILLED (partially-filled), filled 30 (replayed)" in out
    assert "replay complete; live now" in out
    assert "-> FILLED (filled), filled 100\n" in out and "CANCELLED" in out


@pytest.mark.timeout(60)
def test_demo_runs_and_recovers():
    result = subprocess.run([sys.executable, "-m", "brokerfeeds.cli", "demo", "--broker", "clearstreet",
                             "--duration", "2"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "-- reconnected" in result.stdout and "(replayed)" in result.stdout
    assert "1 reconnect(s)" in result.stdout


# ============================================================== sequence scope, attribution, averages
def _interleave(sim: ClearStreetSimulator, rounds: int, accounts: Tuple[str, ...] = (A, B, C)) -> None:
    """Activity of several accounts, interleaved: an order on each in turn, every third filled."""
    for i in range(rounds):
        for account in accounts:
            order_id = sim.place_order("AAPL", "buy", 10, 100.0 + i, account=account)
            if i % 3 == 0:
                sim.fill(order_id, 10, 100.0 + i)


@scoped
@pytest.mark.parametrize("without_account", [False, True], ids=["trades-with-account", "trades-without-account"])
@pytest.mark.timeout(60)
def test_multi_account_interleaved_exactly_once_across_reconnects_and_replays(scope, without_account):
    """Three accounts, interleaved activity, drops mid-stream: every journaled message of
    each account once, in order; no gap, so no reconnect but the drops'."""
    with ClearStreetSimulator(accounts=(A, B, C), hb_interval=None, sequence_scope=scope,
                              trades_without_account=without_account) as sim:
        _interleave(sim, 4)  # earlier today: replayed on the first subscribe
        feed = make_feed(sim)
        rec = Recorder(feed)
        for account in (A, B, C):
            feed.subscribe_activity(account)
        with feed:
            rec.wait_for("replay_complete", count=3)
            for drop in range(3):
                wait_until(lambda: feed.stats.connects == drop + 1 and all(sim.subscribers(a) == 1 for a in (A, B, C)),
                           10)
                before = len(sequenced(rec))
                thread = threading.Thread(target=_interleave, args=(sim, 12))
                thread.start()
                wait_until(lambda: len(sequenced(rec)) >= before + 10, 10)
                sim.drop()
                thread.join(20)
            _interleave(sim, 2)
            wait_until(lambda: all(len(delivered(sequenced(rec), a)) == len(journaled(sim, a)) for a in (A, B, C)), 15)
            time.sleep(0.1)
            for account in (A, B, C):
                assert delivered(sequenced(rec), account) == journaled(sim, account)
            assert not gaps(rec) and feed.stats.extra["gaps"] == 0 and feed.stats.reconnects == 3
            assert feed.stats.extra["duplicates"] > 0 and feed.stats.extra["unattributed"] == 0
            other = "connection" if scope == "account" else "account"
            assert feed.stats.extra["scope_" + scope] >= 1 and feed.stats.extra["scope_" + other] == 0
            assert feed.sequence_scope == scope
            assert {t.account for t in rec.of("trade")} == {A, B, C}
            assert all(("account_id" not in t.raw["payload"]["data"]) == without_account for t in rec.of("trade"))


@scoped
def test_multi_account_real_gap_is_detected_and_healed(scope):
    with ClearStreetSimulator(accounts=(A, B), hb_interval=None, sequence_scope=scope) as sim:
        feed = make_feed(sim)
        rec = Recorder(feed)
        feed.subscribe_activity(A)
        feed.subscribe_activity(B)
        with feed:
            rec.wait_for("replay_complete", count=2)
            for account in (A, B, A, B):
                publish_orders(sim, 1, account)
            rec.wait_for("order", count=4)
            sim.gap(1)  # journaled, never pushed live
            publish_orders(sim, 1, A)
            for account in (B, A, B):
                publish_orders(sim, 1, account)
            gap = rec.wait_for("error", lambda e: isinstance(e, GapDetected))[0]
            assert (gap.expected, gap.got) == ((3, 4) if scope == "account" else (5, 6))
            rec.wait_for("replay_complete", count=4, timeout=10)
            wait_until(lambda: len(rec.of("order")) == 8, 10)
            for account in (A, B):
                assert delivered(rec.of("order"), account) == journaled(sim, account)
            assert feed.stats.reconnects >= 1


@scoped
def test_trade_notice_without_account_is_attributed_by_its_order(scope):
    with ClearStreetSimulator(accounts=(A, B), hb_interval=None, sequence_scope=scope,
                              trades_without_account=True) as sim:
        feed = make_feed(sim)
        rec = Recorder(feed)
        feed.subscribe_activity(A)
        feed.subscribe_activity(B)
        with feed:
            rec.wait_for("replay_complete", count=2)
            on_a = sim.place_order("AAPL", quantity=10, price=1.0, account=A)
            on_b = sim.place_order("MSFT", quantity=10, price=2.0, account=B)
            sim.fill(on_b, 4, 2.0)
            sim.fill(on_a, 10, 1.0)
            sim.fill(on_b, 6, 2.0)
            fills = rec.wait_for("trade", count=3)
            assert sorted((t.account, t.order_id) for t in fills) == sorted([(B, on_b), (A, on_a), (B, on_b)])
            assert all("account_id" not in t.raw["payload"]["data"] for t in fills)
            # Per connection, with nothing journaled before, the first interleaving is live:
            # one reconnect tells the numbering (see test_unit_live_interleaving_untold...).
            untold = feed.stats.extra["scope_untold"]
            assert untold == (0 if scope == "account" else 1)
            wait_until(lambda: feed.stats.connects == 1 + untold and sim.subscribers(A) == sim.subscribers(B) == 1)
            sim.drop()  # the replay attributes them the same way: nothing again, nothing missing
            rec.wait_for("replay_complete", count=4 + 2 * untold)
            _interleave(sim, 1, (A, B))
            wait_until(lambda: all(len(delivered(sequenced(rec), a)) == len(journaled(sim, a)) for a in (A, B)))
            for account in (A, B):
                assert delivered(sequenced(rec), account) == journaled(sim, account)
            assert not gaps(rec) and feed.stats.extra["unattributed"] == 0 and feed.stats.reconnects == 1 + untold
    # One account on the connection: its trades are its own.
    with ClearStreetSimulator(hb_interval=None, sequence_scope=scope, trades_without_account=True) as sim:
        with live_activity(sim) as (feed, rec):
            sim.fill(sim.place_order("AAPL", quantity=5, price=3.0), 5, 3.0)
            assert rec.wait_for("trade")[0].account == A
            rec.wait_for("balance")
            assert delivered(sequenced(rec)) == journaled(sim) and not gaps(rec)


def test_simulator_position_average_is_the_quantity_weighted_average_of_its_fills():
    with ClearStreetSimulator(hb_interval=None) as sim:
        with live_activity(sim) as (feed, rec):
            buy = sim.place_order("AAPL", "buy", 100, 190.5)
            sim.fill(buy, 50, 190.47)
            sim.fill(buy, 50, 190.5)
            position = rec.wait_for("position", count=2)[-1]
            assert position.quantity == Decimal(100) and position.avg_price == Decimal("190.485")  # not 190.5
            assert rec.wait_for("order", lambda o: o.status is OrderStatus.FILLED)[0].avg_price == Decimal("190.485")
            second = sim.place_order("AAPL", "buy", 100, 191.0)
            sim.fill(second, 100, 191.0)  # across orders too
            assert rec.wait_for("position", count=3)[-1].avg_price == Decimal("190.7425")
            sell = sim.place_order("AAPL", "sell", 250, 192.0)
            sim.fill(sell, 150, 192.0)  # a sale leaves the average of what is left
            assert rec.wait_for("position", count=4)[-1].avg_price == Decimal("190.7425")
            sim.fill(sell, 100, 189.0)  # through zero: short 50 at the fill's price
            last = rec.wait_for("position", count=5)[-1]
            assert last.quantity == Decimal(-50) and last.avg_price == Decimal("189")
        assert sim.positions[(A, "AAPL")]["average_cost"] == 189.0


def test_simulator_sequence_scope_option_numbers_per_connection():
    with ClearStreetSimulator(accounts=(A, B), hb_interval=None, sequence_scope="connection") as sim:
        for account in (A, B, A):
            publish_orders(sim, 1, account)
        ws = websocket.create_connection(sim.url, timeout=5)
        try:
            for account in (B, A):
                ws.send(json.dumps({"authorization": sim.token,
                                    "payload": {"type": "subscribe-activity", "account_id": account}}))
            frames = []
            while len([f for f in frames if f["payload"]["type"] == "replay-complete"]) < 2:
                frames.append(json.loads(ws.recv()))
            publish_orders(sim, 1, B)
            frames.append(json.loads(ws.recv()))
        finally:
            ws.close()
        numbered = [(f["sequence"], f["payload"]["data"]["account_id"]) for f in frames if "sequence" in f]
        assert numbered == [(1, B), (2, A), (3, A), (4, B)]
        assert [seq for seq, _, _ in sim.journal(A)] == [1, 2]
    with pytest.raises(ValueError):
        ClearStreetSimulator(sequence_scope="global")
