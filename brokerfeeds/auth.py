"""Bearer-token credentials shared by the brokers that use them (Upstox, Clear Street)."""

from __future__ import annotations

import threading
from typing import Callable, Optional

from .redact import Redactor

__all__ = ["TokenSource"]

TokenProvider = Callable[[], str]


class TokenSource:
    """Either a fixed ``access_token`` or a ``token_provider`` callable (exactly one).

    :meth:`current` is called before every connect attempt (asking the provider each
    time). After the broker rejects a token, :meth:`refresh` asks the provider once
    more: a *different* token means "try again", the same one (or no provider) means
    "give up" — so a bad credential never turns into a retry storm. Every token seen is
    registered with the feed's redactor.
    """

    def __init__(
        self,
        access_token: Optional[str],
        token_provider: Optional[TokenProvider],
        redactor: Redactor,
    ) -> None:
        if (access_token is None) == (token_provider is None):
            raise ValueError("pass exactly one of access_token= or token_provider=")
        if access_token is not None and not isinstance(access_token, str):
            raise TypeError("access_token must be a str")
        if token_provider is not None and not callable(token_provider):
            raise TypeError("token_provider must be a zero-argument callable returning a str")
        self._fixed = access_token
        self._provider = token_provider
        self._redactor = redactor
        self._lock = threading.Lock()
        self._token: Optional[str] = access_token
        redactor.add(access_token)

    def __repr__(self) -> str:
        kind = "provider" if self._provider is not None else "fixed"
        return f"TokenSource({kind}, token=***)"

    def current(self) -> str:
        """The token to use now (asks the provider, if any)."""
        with self._lock:
            if self._provider is not None:
                self._token = self._call_provider()
            assert self._token is not None
            return self._token

    def refresh(self) -> bool:
        """After a rejection: True if the provider now gives a different token."""
        with self._lock:
            if self._provider is None:
                return False
            old = self._token
            self._token = self._call_provider()
            return self._token != old

    def _call_provider(self) -> str:
        assert self._provider is not None
        token = self._provider()
        if not isinstance(token, str) or not token:
            raise TypeError("token_provider must return a non-empty str")
        self._redactor.add(token)
        return token
