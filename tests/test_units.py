"""Pure-data unit tests: reconnect policy, value parsing, redaction, trackers, events."""

from __future__ import annotations

import logging
from decimal import Decimal

import attrs
import pytest

from brokerfeeds import ReconnectPolicy
from brokerfeeds.auth import TokenSource
from brokerfeeds.events import Order, OrderStatus, Quote, Side
from brokerfeeds.redact import Redactor, RedactingLogger
from brokerfeeds.state import FillTracker, OrderTracker, Snapshots, side_of
from brokerfeeds.values import from_epoch_ms, to_decimal


class TestReconnectPolicy:
    def test_defaults_match_the_contract(self):
        policy = ReconnectPolicy()
        assert (policy.initial, policy.factor, policy.maximum, policy.max_attempts) == (0.5, 2.0, 30.0, None)

    def test_is_immutable(self):
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            ReconnectPolicy().initial = 1.0  # type: ignore[misc]

    def test_exponential_cap_and_full_jitter(self):
        policy = ReconnectPolicy(initial=0.5, factor=2.0, maximum=30.0)
        assert [policy.cap(n) for n in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
        assert policy.cap(10_000) == 30.0  # no overflow
        assert policy.delay(3, rand=lambda: 0.0) == 0.0
        assert policy.delay(3, rand=lambda: 0.5) == 2.0
        delays = {policy.delay(4) for _ in range(50)}
        assert len(delays) > 10 and all(0 <= d <= 8.0 for d in delays)

    def test_without_jitter_the_delay_is_the_cap(self):
        assert ReconnectPolicy(jitter=False).delay(2) == 2.0

    def test_max_attempts(self):
        assert not ReconnectPolicy().gives_up(10 ** 6)
        policy = ReconnectPolicy(max_attempts=3)
        assert not policy.gives_up(2) and policy.gives_up(3)

    @pytest.mark.parametrize("field", ["initial", "factor", "maximum", "reset_after"])
    def test_rejects_non_positive_values(self, field):
        with pytest.raises(ValueError):
            ReconnectPolicy(**{field: 0})


class TestValues:
    @pytest.mark.parametrize("raw, expected", [
        ("382.89", Decimal("382.89")), (100, Decimal(100)), (0.1, Decimal("0.1")),
        ("C7699.50", Decimal("7699.50")), ("H12.5", Decimal("12.5")), ("1.25M", Decimal("1250000.00")),
        ("3K", Decimal(3000)), ("1,234.5", Decimal("1234.5")), ("0.04%", Decimal("0.04")),
        ("N/A", None), ("", None), (None, None), ("abc", None), (True, None), (float("nan"), None),
    ])
    def test_to_decimal(self, raw, expected):
        assert to_decimal(raw) == expected

    def test_from_epoch_ms_is_timezone_aware(self):
        moment = from_epoch_ms(1593524408296)
        assert moment is not None and moment.tzinfo is not None and moment.year == 2020
        assert from_epoch_ms("junk") is None

    def test_stdlib_json_decoder_takes_bytes_and_text_and_rejects_bad_input(self):
        from brokerfeeds.values import _stdlib_loads

        assert _stdlib_loads(b'{"a": "\xc3\xa9"}') == {"a": "\u00e9"} == _stdlib_loads('{"a": "\u00e9"}')
        assert _stdlib_loads(bytearray(b"[1]")) == [1]
        for bad in (b'{"a": "\xff"}', b"{", "", b"ech+hb"):
            with pytest.raises(ValueError):
                _stdlib_loads(bad)

    def test_from_epoch_ms_repeats_and_out_of_range_values(self):
        first_time = from_epoch_ms(1712935800004)
        assert from_epoch_ms(1712935800004) == first_time  # second call: remembered
        assert first_time is not None and first_time.microsecond == 4000
        assert from_epoch_ms("1712935800004") == first_time
        assert from_epoch_ms(10 ** 15) is None  # year ~33,000: out of datetime's range
        assert from_epoch_ms(10 ** 15) is None  # and not remembered as a value
        for ms in range(5000):  # the memory is bounded; results stay right past the bound
            assert from_epoch_ms(ms) == from_epoch_ms(ms + 0) and from_epoch_ms(ms).year == 1970


class TestRedaction:
    def test_registered_secrets_and_sensitive_keys_are_masked(self):
        redactor = Redactor()
        redactor.add("5f3c9e0d8a7b", "ab")  # too-short values are ignored
        text = redactor.redact(
            'cookie api={"session":"5f3c9e0d8a7b"} url wss://h/feed?requestId=1&code=ONE-TIME '
            'Authorization: Bearer eyJ.abc jKey=deadbeef access_token=xyz on the table')
        for secret in ("5f3c9e0d8a7b", "ONE-TIME", "eyJ.abc", "deadbeef", "xyz"):
            assert secret not in text
        assert "requestId=1" in text and "table" in text

    def test_logger_masks_formatted_args_and_tracebacks(self, caplog):
        redactor = Redactor()
        redactor.add("TOPSECRET42")
        log = RedactingLogger(logging.getLogger("brokerfeeds.test"), redactor)
        caplog.set_level(logging.DEBUG, logger="brokerfeeds.test")
        try:
            raise RuntimeError("failed with TOPSECRET42")
        except RuntimeError as exc:
            log.error("token %s rejected", "TOPSECRET42", exc_info=exc)
        assert "TOPSECRET42" not in caplog.text and "rejected" in caplog.text

    def test_token_source_never_shows_the_token(self):
        redactor = Redactor()
        tokens = TokenSource("tok-123456", None, redactor)
        assert "tok-123456" not in repr(tokens) and tokens.current() == "tok-123456"
        assert not tokens.refresh()
        with pytest.raises(ValueError):
            TokenSource(None, None, redactor)
        with pytest.raises(ValueError):
            TokenSource("a", lambda: "b", redactor)

    def test_token_provider_refresh_means_a_different_token(self):
        values = iter(["t-1111", "t-2222", "t-2222"])
        tokens = TokenSource(None, lambda: next(values), Redactor())
        assert tokens.current() == "t-1111"
        assert tokens.refresh() is True
        assert tokens.refresh() is False


def _order(status=OrderStatus.OPEN, filled="0", avg=None, **kw):
    return Order(broker="x", order_id="1", status=status, quantity=Decimal(100),
                 filled_quantity=Decimal(filled), avg_price=None if avg is None else Decimal(avg), **kw)


class TestState:
    def test_order_tracker_emits_changes_only_and_never_regresses(self):
        tracker = OrderTracker()
        assert tracker.update_order(_order()) is not None
        assert tracker.update_order(_order(raw={"other": "raw"})) is None  # raw is not part of equality
        assert tracker.update_order(_order(OrderStatus.PARTIALLY_FILLED, "40")) is not None
        assert tracker.update_order(_order(OrderStatus.OPEN, "0")) is None  # stale snapshot
        assert tracker.update_order(_order(OrderStatus.FILLED, "100")) is not None
        assert tracker.update_order(_order(OrderStatus.OPEN, "100")) is None  # final stays final

    def test_fill_tracker_derives_quantity_and_price(self):
        fills = FillTracker()
        assert fills.observe(_order(filled="0")) is None
        assert fills.observe(_order(filled="40", avg="100")) == (Decimal(40), Decimal(100))
        assert fills.observe(_order(filled="40", avg="100")) is None
        qty, price = fills.observe(_order(filled="100", avg="101.5"))
        assert qty == Decimal(60) and price == Decimal("102.5")
        fills.seed(_order(filled="100", avg="101.5"))
        assert fills.observe(_order(filled="100", avg="101.5")) is None

    def test_snapshots_merge_with_a_keep_rule(self):
        snaps = Snapshots(keep=lambda name, old, new: new not in (0, None))
        snaps.merge("a", {"ltp": 10, "bid": 9})
        merged = snaps.merge("a", {"ltp": 0, "bid": 8, "ask": 0})
        assert merged == {"ltp": 10, "bid": 8, "ask": 0}

    def test_every_brokers_side_words(self):
        for word in ("BUY", "buy", "B", "BOT", " b "):
            assert side_of(word) is Side.BUY, word
        for word in ("SELL", "sell", "S", "SLD", "sell-short", "SELL_SHORT"):
            assert side_of(word) is Side.SELL, word
        assert side_of(None) is None and side_of("") is None and side_of("hold") is None

    def test_order_status_finality(self):
        assert OrderStatus.FILLED.is_final and not OrderStatus.PARTIALLY_FILLED.is_final

    def test_events_are_frozen(self):
        quote = Quote(broker="x", instrument="1")
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            quote.last = Decimal(1)  # type: ignore[misc]
