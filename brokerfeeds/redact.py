"""Keeping secrets out of logs, reprs and error messages.

Every feed owns a :class:`Redactor`. Credentials are registered with it the moment the
feed learns them (tokens, session ids, one-time codes); every log line, error message and
repr the feed produces passes through :meth:`Redactor.redact`, which replaces each
registered value, and every value of a sensitive-looking URL query parameter or header,
with ``***``. Errors get the same treatment before they reach ``on_error`` or are raised
(:meth:`Redactor.redact_error`), whoever built their message (a broker's reply may echo a
credential back).

Reporting must never be what takes a feed thread down: :func:`safe_repr` / :func:`safe_str`
never raise, and :class:`RedactingLogger` never raises, whatever the objects it formats do.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any, Iterable, MutableMapping, Optional, Tuple, TypeVar

__all__ = ["Redactor", "RedactingLogger", "MASK", "safe_repr", "safe_str"]

E = TypeVar("E", bound=BaseException)

MASK = "***"

# Keys whose values are secrets whatever they are: as JSON keys, headers or query params.
_VALUE_CHAR = r"[^&\s\"',;}]"
_SENSITIVE_KEY = re.compile(
    r"(?i)((?:access_?token|refresh_?token|id_?token|jkey|jwt|session(?:id|token)|password|"
    r"client_secret|secret|authorization|api_?key|oauth_token|susertoken|cookie)"
    r"[\"']?\s*[=:]\s*[\"']?)(" + _VALUE_CHAR + r"+)"
)
# A bare "session" is also a word of prose ("the broker rejected the session: invalid
# key"): its unquoted "session: value" form counts only when the value has a digit.
_SESSION_KEY = re.compile(
    r"(?i)(session(?:[\"']?\s*=\s*[\"']?|[\"']\s*:\s*[\"']?|\s*:\s*[\"']|\s*:\s*(?=" + _VALUE_CHAR
    + r"*\d)))(" + _VALUE_CHAR + r"+)"
)
# One-time codes travel as ``?code=...`` in single-use socket URLs.
_QUERY_CODE = re.compile(r"(?i)([?&](?:code|token|auth)=)([^&\s\"']+)")
_BEARER = re.compile(r"(?i)(bearer\s+)([A-Za-z0-9._~+/=-]+)")


class Redactor:
    """Replaces registered secrets and sensitive-looking key=value pairs with ``***``."""

    def __init__(self) -> None:
        self._secrets: Tuple[str, ...] = ()
        self._lock = threading.Lock()

    def add(self, *secrets: Any) -> None:
        """Register secret values (short or empty ones are ignored: too likely to be noise)."""
        fresh = [str(s) for s in secrets if s is not None and len(str(s)) >= 4]
        if not fresh:
            return
        with self._lock:
            merged = set(self._secrets).union(fresh)
            # Longest first, so a secret containing another is replaced whole.
            self._secrets = tuple(sorted(merged, key=len, reverse=True))

    def redact(self, text: Any) -> str:
        """``text`` as a string, with every secret masked."""
        out = text if isinstance(text, str) else str(text)
        for secret in self._secrets:
            if secret in out:
                out = out.replace(secret, MASK)
        out = _BEARER.sub(lambda m: m.group(1) + MASK, out)
        out = _SENSITIVE_KEY.sub(lambda m: m.group(1) + MASK, out)
        out = _SESSION_KEY.sub(lambda m: m.group(1) + MASK, out)
        return _QUERY_CODE.sub(lambda m: m.group(1) + MASK, out)

    def redact_all(self, items: Iterable[Any]) -> Tuple[str, ...]:
        """Each item redacted."""
        return tuple(self.redact(i) for i in items)

    def redact_error(self, error: E) -> E:
        """Mask secrets in ``error``'s message, in place, and return it.

        The type and every attribute stay (only string ``args`` and a string ``frame``
        are rewritten). The causes along ``__cause__`` / ``__context__`` are masked the
        same way; one whose text still shows a secret after that (a ``__str__`` of its
        own) is cut from the chain. Never raises.
        """
        current: BaseException = error
        for _ in range(8):  # a chain is short; a cycle must not loop forever
            self._redact_in_place(current)
            following: Optional[BaseException] = current.__cause__
            if following is None and not current.__suppress_context__:
                following = current.__context__
            if following is None:
                break
            self._redact_in_place(following)
            text = safe_str(following)
            if self.redact(text) != text:
                current.__cause__ = None
                current.__suppress_context__ = True
                break
            current = following
        return error

    def _redact_in_place(self, exc: BaseException) -> None:
        try:
            args = exc.args
            clean = tuple(self.redact(a) if isinstance(a, str) else a for a in args)
            if clean != args:
                exc.args = clean
            frame = getattr(exc, "frame", None)
            if isinstance(frame, str):
                masked = self.redact(frame)
                if masked != frame:
                    setattr(exc, "frame", masked)  # noqa: B010 - any exception type may carry one
        except Exception:  # noqa: BLE001 - an exception type that refuses new args keeps its own
            pass


def safe_repr(obj: Any) -> str:
    """``repr(obj)``; if that raises, a stand-in naming the type. Never raises."""
    return _safe(repr, obj, "repr")


def safe_str(obj: Any) -> str:
    """``str(obj)``; if that raises, a stand-in naming the type. Never raises."""
    return _safe(str, obj, "str")


def _safe(render: Any, obj: Any, how: str) -> str:
    try:
        text = render(obj)
        if isinstance(text, str):
            return text
    except BaseException:  # noqa: BLE001 - whatever a hostile __repr__ / __str__ raises
        pass
    try:
        name = type(obj).__qualname__
    except BaseException:  # noqa: BLE001
        name = "object"
    return f"<{name} instance ({how}() failed)>"


class RedactingLogger(logging.LoggerAdapter):  # type: ignore[type-arg]  # generic only in typeshed, not at run time (3.9)
    """A logger adapter that formats the message first, then masks secrets in it.

    Exception tracebacks attached with ``exc_info`` are rendered and masked here too, so
    a secret inside an exception message cannot leak through a handler's formatter.
    """

    def __init__(self, logger: logging.Logger, redactor: Redactor, prefix: str = "") -> None:
        super().__init__(logger, {})
        self.redactor = redactor
        self.prefix = prefix

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> Tuple[Any, MutableMapping[str, Any]]:
        return msg, kwargs

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:  # noqa: D102
        # Never raises: a log line about a failure must not become a second failure
        # (an argument whose repr raises, a traceback that cannot be rendered).
        try:
            if not self.isEnabledFor(level):
                return
            try:
                text = (str(msg) % args) if args else str(msg)
            except BaseException:  # noqa: BLE001 - whatever a hostile __repr__ / __str__ raises
                text = f"{safe_str(msg)} [arguments could not be formatted: {', '.join(map(safe_repr, args))}]"
            exc_info = kwargs.pop("exc_info", None)
            if exc_info:
                text += "\n" + _traceback_text(exc_info)
            kwargs.setdefault("stacklevel", 2)
            self.logger.log(level, "%s", self.prefix + self.redactor.redact(text), **kwargs)
        except Exception:  # noqa: BLE001 - nothing sensible is left to do with a log line
            pass


def _traceback_text(exc_info: Any) -> str:
    import sys
    import traceback

    try:
        if exc_info is True:
            exc_info = sys.exc_info()
        elif isinstance(exc_info, BaseException):
            exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
        return "".join(traceback.format_exception(*exc_info)).rstrip()
    except Exception:  # noqa: BLE001
        return "(the traceback could not be rendered)"
