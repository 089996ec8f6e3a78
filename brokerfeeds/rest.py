"""The REST side of a feed: one ``requests.Session`` with timeouts and clear errors."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Union

import requests

from .errors import AuthenticationError, ConnectionFailed, ProtocolError, RateLimited
from .redact import Redactor

__all__ = ["RestClient"]

ErrorText = Callable[[Any], Optional[str]]


class RestClient:
    """Calls a broker's REST API under ``base_url`` and returns decoded JSON.

    HTTP 401/403 raise :class:`AuthenticationError`, 429 :class:`RateLimited` (with the
    ``Retry-After`` seconds), other failures :class:`ConnectionFailed`, undecodable
    bodies :class:`ProtocolError`. ``error_text`` pulls the broker's own explanation out
    of an error body for the message. Messages are redacted.
    """

    def __init__(
        self,
        base_url: str,
        *,
        verify: Union[bool, str] = True,
        timeout: float = 10.0,
        redactor: Optional[Redactor] = None,
        error_text: Optional[ErrorText] = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._redactor = redactor or Redactor()
        self._error_text = error_text
        self.session = requests.Session()
        self.session.verify = verify
        self.session.headers["User-Agent"] = "brokerfeeds"

    def __repr__(self) -> str:
        return f"RestClient({self.base_url!r})"

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Optional[Dict[str, Any]] = None,
        json: Any = None,
        headers: Optional[Dict[str, str]] = None,
        url: Optional[str] = None,
    ) -> Any:
        """Send one request (``path`` under ``base_url``, or an absolute ``url``)."""
        target = url or f"{self.base_url}/{path.lstrip('/')}"
        what = f"{method} {path if url is None else 'auth endpoint'}"
        try:
            response = self.session.request(
                method, target, params=params, json=json, headers=headers, timeout=self.timeout
            )
        except requests.RequestException as exc:
            raise ConnectionFailed(self._redactor.redact(f"{what} failed: {type(exc).__name__}")) from None
        status = response.status_code
        if status >= 400:
            detail = self._detail(response)
            message = self._redactor.redact(f"{what} returned HTTP {status}{detail}")
            if status in (401, 403):
                raise AuthenticationError(message)
            if status == 429:
                raise RateLimited(message, _seconds(response.headers.get("Retry-After")))
            error = ConnectionFailed(message)
            error.status = status
            raise error
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ProtocolError(self._redactor.redact(f"{what} returned a body that is not JSON")) from None

    def get(self, path: str, **kwargs: Any) -> Any:
        """``request("GET", path, ...)``."""
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        """``request("POST", path, ...)``."""
        return self.request("POST", path, **kwargs)

    def close(self) -> None:
        """Release pooled connections."""
        self.session.close()

    def _detail(self, response: requests.Response) -> str:
        text: Optional[str] = None
        try:
            body = response.json()
        except ValueError:
            body = response.text[:200]
        if self._error_text is not None:
            try:
                text = self._error_text(body)
            except Exception:  # noqa: BLE001 - a broken error body must not hide the status
                text = None
        if text is None and isinstance(body, str):
            text = " ".join(body.split())[:200] or None
        return f": {text}" if text else ""


def _seconds(value: Optional[str]) -> Optional[float]:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
