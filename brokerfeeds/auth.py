"""Bearer-token credentials shared by the brokers that use them (Upstox, Clear Street):
a fixed token or a provider (:class:`TokenSource`), and an OAuth2 client-credentials
provider any broker can use (:class:`ClientCredentials`)."""

from __future__ import annotations

import re
import threading
import time
from typing import Any, Callable, Optional, Tuple, Union

from .errors import BrokerFeedsError, ConnectionFailed, ProtocolError
from .redact import MASK, Redactor
from .rest import RestClient
from .protocol import first
from .values import to_decimal, to_text

__all__ = ["TokenSource", "ClientCredentials", "TokenProvider"]

TokenProvider = Callable[[], str]


class TokenSource:
    """Either a fixed ``access_token`` or a ``token_provider`` callable (exactly one).

    :meth:`current` is called before every connect attempt (asking the provider each
    time). After the broker rejects a token, :meth:`refresh` asks the provider once
    more: a *different* token means "try again", the same one (or no provider) means
    "give up" — so a bad credential never turns into a retry storm. Every token seen is
    registered with the feed's redactor.

    A provider that raises (anything but a :class:`~brokerfeeds.errors.BrokerFeedsError`,
    which passes through: e.g. :class:`ClientCredentials` refused with 401 is an
    :class:`~brokerfeeds.errors.AuthenticationError`) or returns no token (None, ``""``,
    not a str) makes :meth:`current` and :meth:`refresh` raise
    :class:`~brokerfeeds.errors.ConnectionFailed` naming the provider's failure (redacted,
    never a token): a failed connect attempt like any other, retried with backoff.
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
        """The token to use now (asks the provider, if any; see the class docs for failures)."""
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
        try:
            token = self._provider()
        except BrokerFeedsError:
            raise
        except Exception as exc:  # noqa: BLE001 - a user's provider failing is a failed attempt
            # "from None": the provider's own exception (and its traceback) may hold a token,
            # a new one the redactor cannot know yet: its message is masked twice.
            reason = _mask_opaque(self._redactor.redact(str(exc)))
            raise ConnectionFailed(f"token provider failed: {type(exc).__name__}" + (f": {reason}" if reason else "")) \
                from None
        if token is None:
            raise ConnectionFailed("token provider returned None instead of a token")
        if not isinstance(token, str):
            raise ConnectionFailed(f"token provider returned a {type(token).__name__}, not a str token")
        if not token.strip():
            raise ConnectionFailed("token provider returned an empty token")
        self._redactor.add(token)
        return token


class ClientCredentials:
    """An OAuth2 client-credentials token provider that caches the token.

    Calling it returns the cached access token, fetching a new one (``POST auth_url``)
    when none is cached or the cached one is within ``refresh_margin`` seconds of its
    ``expires_in`` (the margin is capped at half the lifetime). :meth:`invalidate`
    forgets the cached token (the feed calls it when the server refuses the token).

    Errors: 401/403 → :class:`AuthenticationError`, 429 → :class:`RateLimited`, network
    and other HTTP failures → :class:`ConnectionFailed`. Messages never include the
    secret or a token.
    """

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        auth_url: str,
        audience: Optional[str] = None,
        *,
        refresh_margin: float = 300.0,
        timeout: float = 10.0,
        verify: Union[bool, str] = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not client_id or not client_secret:
            raise ValueError("client_id and client_secret are required")
        self.client_id = client_id
        self._secret = client_secret
        self.auth_url = auth_url
        self.audience = audience
        self.refresh_margin = refresh_margin
        self.timeout = timeout
        self.verify = verify
        self._clock = clock
        self._lock = threading.Lock()
        self._token: Optional[str] = None
        self._renew_at = 0.0
        self.fetches = 0  #: how many tokens were fetched (for tests and diagnostics)
        redactor = Redactor()
        redactor.add(client_secret)
        self._rest = RestClient(auth_url, verify=verify, timeout=timeout, redactor=redactor,
                                error_text=_oauth_error_text)

    def __repr__(self) -> str:
        return f"ClientCredentials(client_id={self.client_id!r}, client_secret=***)"

    @property
    def secrets(self) -> Tuple[str, ...]:
        """Values a feed must mask in its logs (the client secret and the cached token)."""
        return tuple(s for s in (self._secret, self._token) if s)

    def __call__(self) -> str:
        with self._lock:
            if self._token is None or self._clock() >= self._renew_at:
                self._fetch()
            assert self._token is not None
            return self._token

    def invalidate(self) -> None:
        """Forget the cached token: the next call fetches a new one."""
        with self._lock:
            self._token = None

    def abort(self) -> None:
        """Make a token request in flight fail now (a feed using this provider is stopping)."""
        self._rest.abort()

    def _fetch(self) -> None:
        body = {"grant_type": "client_credentials", "client_id": self.client_id,
                "client_secret": self._secret}
        if self.audience is not None:
            body["audience"] = self.audience
        reply = self._rest.post("", url=self.auth_url, json=body)
        token = reply.get("access_token") if isinstance(reply, dict) else None
        if not isinstance(token, str) or not token:
            raise ProtocolError("token response has no access_token")
        lifetime = to_decimal(reply.get("expires_in"))
        seconds = float(lifetime) if lifetime is not None else 86400.0
        self._token = token
        self._renew_at = self._clock() + max(0.0, seconds - min(self.refresh_margin, seconds / 2))
        self.fetches += 1


_OPAQUE = re.compile(r"[A-Za-z0-9._~+/=-]{16,}")


def _mask_opaque(text: str) -> str:
    """``text`` with every word that may be a token (16 or more characters of a token's
    alphabet, letters and digits both) masked: for messages that may hold a token not
    registered anywhere (a provider's exception naming the token it could not renew)."""
    def mask(match: "re.Match[str]") -> str:
        word = match.group()
        return MASK if any(c.isdigit() for c in word) and any(c.isalpha() for c in word) else word

    return _OPAQUE.sub(mask, text)


def _oauth_error_text(body: Any) -> Optional[str]:
    """An OAuth2 error reply's explanation (``error_description``, else ``error``)."""
    if isinstance(body, dict):
        return to_text(first(body.get("error_description"), body.get("error")))
    return None

