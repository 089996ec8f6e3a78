"""Small, lenient converters from brokers' loosely typed values.

Brokers send numbers as strings, floats, ints, with thousands separators, unit
suffixes (``1.25M``), status prefixes (IBKR's ``C123.4`` for a prior close) or
placeholders (``""``, ``"N/A"``, ``"-"``). These helpers turn them into
:class:`~decimal.Decimal` (never binary floats) or ``None``, and never raise, whatever
they are given (a list, a dict nested a thousand deep, ``"1e999999K"``).

A number is accepted only if it is finite and within what a double can hold (zero, or a
magnitude from about 1e-324 to below 1e309; see :func:`to_decimal`): ``"1e999999"`` is
not a price. The bound is what makes the adapters' arithmetic safe: a sum or product of
a few accepted numbers stays far inside the decimal context (exponents up to 999999),
so it can never raise :class:`decimal.Overflow`, and ``float(number)`` is always finite.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
from decimal import Decimal, DecimalException
from types import ModuleType
from typing import Any, Callable, Dict, Optional

_orjson: Optional[ModuleType]
try:  # the "fast" extra (imported by name, so type checks pass with or without it installed)
    _orjson = importlib.import_module("orjson")
except ImportError:  # pragma: no cover - exercised when the extra is absent
    _orjson = None

__all__ = ["to_decimal", "to_text", "loads", "FAST_JSON", "from_epoch_ms", "utc"]

FAST_JSON = _orjson is not None
utc = _dt.timezone.utc

_decode_json = json.JSONDecoder().decode


def _stdlib_loads(data: Any) -> Any:
    # json.loads(bytes) sniffs the encoding first; frames are UTF-8 (RFC 6455), so decode
    # directly (~20% faster). Invalid UTF-8 raises UnicodeDecodeError, a ValueError.
    if type(data) is bytes or type(data) is bytearray:
        data = data.decode("utf-8")
    return _decode_json(data)


#: ``orjson.dumps`` when the ``fast`` extra is installed, else None.
orjson_dumps: Optional[Callable[..., bytes]] = _orjson.dumps if _orjson is not None else None

#: JSON decoder used for every frame: orjson when the ``fast`` extra is installed.
loads: Callable[[Any], Any] = _orjson.loads if _orjson is not None else _stdlib_loads

_SUFFIX = {"K": Decimal(1000), "M": Decimal(1_000_000), "B": Decimal(1_000_000_000)}
_EXACT = 2 ** 53  # ints below this convert to float exactly
_PLACEHOLDERS = frozenset({"", "N/A", "NA", "-", "--", "null", "None", "nan", "NaN"})
# The accepted range of adjusted exponents (that of the most significant digit): a double's,
# subnormals included (5e-324 ... 1.8e308).
_MIN_EXPONENT, _MAX_EXPONENT = -324, 308
_INT_LIMIT = 10 ** (_MAX_EXPONENT + 1)  # ints with a smaller magnitude need no exponent check
_ZERO = Decimal(0)


def to_decimal(value: Any) -> Optional[Decimal]:
    """``value`` as a Decimal, or None when it is missing or not a finite number a double
    could hold (never raises: anything else, a list or a dict included, is None)."""
    kind = type(value)
    if kind is str:
        # Brokers repeat the same few strings (prices, sizes) endlessly: remember them.
        number = _TEXT_CACHE.get(value, _UNSET)
        if number is _UNSET:
            number = _text_to_decimal(value)
            if len(value) <= 32:
                if len(_TEXT_CACHE) >= _CACHE_SIZE:
                    _TEXT_CACHE.clear()
                _TEXT_CACHE[value] = number
        return number  # type: ignore[return-value]  # the cache holds Decimal or None, never _UNSET
    if kind is float:
        number = _FLOAT_CACHE.get(value)  # zeros and NaN are never cached
        if number is not None:
            return number
    if value is None or isinstance(value, bool):
        return None
    if kind is int and -_INT_LIMIT < value < _INT_LIMIT:
        return Decimal(value)
    if isinstance(value, Decimal):
        return _bounded(value)
    if isinstance(value, int):
        return _bounded(Decimal(int(value)))
    if isinstance(value, float):
        if value != value or value in _INFINITIES:
            return None
        if kind is not float or value == 0:  # 0.0 == -0.0: never cache zeros
            return Decimal(repr(value))
        number = _FLOAT_CACHE.get(value)
        if number is None:
            number = Decimal(repr(value))
            if len(_FLOAT_CACHE) >= _CACHE_SIZE:
                _FLOAT_CACHE.clear()
            _FLOAT_CACHE[value] = number
        return number
    if isinstance(value, (dict, list, tuple, set, frozenset, bytes, bytearray)):
        return None  # never a number; str() of a deeply nested one would even raise
    try:
        text = str(value)
    except Exception:  # noqa: BLE001 - an object whose __str__ fails is not a number either
        return None
    return _text_to_decimal(text)


_UNSET = object()
_INFINITIES = (float("inf"), float("-inf"))
_CACHE_SIZE = 4096
_TEXT_CACHE: Dict[str, Optional[Decimal]] = {}
_FLOAT_CACHE: Dict[float, Decimal] = {}
_EPOCH_CACHE: Dict[int, _dt.datetime] = {}


def _bounded(number: Decimal) -> Optional[Decimal]:
    """``number`` if it is finite and inside the accepted range, else None (a zero outside
    it, ``0E-1000000``, is plain zero)."""
    if not number.is_finite():
        return None
    if _MIN_EXPONENT <= number.adjusted() <= _MAX_EXPONENT:
        return number
    return None if number else _ZERO


def _text_to_decimal(value: str) -> Optional[Decimal]:
    text = value.strip().replace(",", "")
    if text in _PLACEHOLDERS:
        return None
    scale = None
    if text[-1] in "KMBkmb" and len(text) > 1:
        scale = _SUFFIX[text[-1].upper()]
        text = text[:-1]
    if text and text[0] in "CH" and len(text) > 1:  # IBKR: C = prior close, H = halted
        text = text[1:]
    text = text.rstrip("%")
    try:
        parsed = Decimal(text)
    except (DecimalException, ValueError):
        return None
    number = _bounded(parsed)  # checked before scaling: "1e999999K" must not overflow
    if number is None or scale is None:
        return number
    return _bounded(number * scale)


def to_text(value: Any) -> Optional[str]:
    """``value`` as a stripped string, or None when missing, empty or not a scalar (a JSON
    object or array is no text: never ``"{'a': 1}"``)."""
    if type(value) is str:
        return value.strip() or None
    if value is None or isinstance(value, (dict, list, tuple, set, frozenset, bytes, bytearray)):
        return None
    try:
        text = str(value).strip()
    except Exception:  # noqa: BLE001 - an object whose __str__ fails has no text
        return None
    return text or None


def from_epoch_ms(value: Any) -> Optional[_dt.datetime]:
    """A UTC datetime from milliseconds since the epoch, or None."""
    if type(value) is int and -_EXACT < value < _EXACT:
        # Partial updates repeat the last known time over and over: remember it.
        moment = _EPOCH_CACHE.get(value)
        if moment is None:
            try:
                moment = _dt.datetime.fromtimestamp(value / 1000.0, tz=utc)
            except (OverflowError, OSError, ValueError):
                return None
            if len(_EPOCH_CACHE) >= _CACHE_SIZE:
                _EPOCH_CACHE.clear()
            _EPOCH_CACHE[value] = moment
        return moment
    number = to_decimal(value)
    if number is None:
        return None
    seconds = float(number) / 1000.0
    try:
        return _dt.datetime.fromtimestamp(seconds, tz=utc)
    except (OverflowError, OSError, ValueError):
        return None
