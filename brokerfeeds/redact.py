"""Keeping secrets out of logs, reprs and error messages.

Every feed owns a :class:`Redactor`. Credentials are registered with it the moment the
feed learns them (tokens, session ids, one-time codes); every log line, error message and
repr the feed produces passes through :meth:`Redactor.redact`, which replaces each
registered value, and every value of a sensitive-looking URL query parameter or header,
with ``***``.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any, Iterable, MutableMapping, Tuple

__all__ = ["Redactor", "RedactingLogger", "MASK"]

MASK = "***"

# Keys whose values are secrets whatever they are: as JSON keys, headers or query params.
_SENSITIVE_KEY = re.compile(
    r"(?i)((?:access_?token|refresh_?token|id_?token|jkey|jwt|session(?:id|token)?|password|"
    r"client_secret|secret|authorization|api_?key|oauth_token|susertoken|cookie)"
    r"[\"']?\s*[=:]\s*[\"']?)([^&\s\"',;}]+)"
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
        return _QUERY_CODE.sub(lambda m: m.group(1) + MASK, out)

    def redact_all(self, items: Iterable[Any]) -> Tuple[str, ...]:
        """Each item redacted."""
        return tuple(self.redact(i) for i in items)


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
        if not self.isEnabledFor(level):
            return
        text = (str(msg) % args) if args else str(msg)
        exc_info = kwargs.pop("exc_info", None)
        if exc_info:
            import traceback

            if exc_info is True:
                import sys

                exc_info = sys.exc_info()
            elif isinstance(exc_info, BaseException):
                exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
            text += "\n" + "".join(traceback.format_exception(*exc_info)).rstrip()
        kwargs.setdefault("stacklevel", 2)
        self.logger.log(level, "%s", self.prefix + self.redactor.redact(text), **kwargs)
