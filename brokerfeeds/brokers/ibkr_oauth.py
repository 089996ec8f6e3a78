"""IBKR Web API OAuth 1.0a (first party, "self-service"): credentials, the live session
token handshake and request signing.

With OAuth the Client Portal API is reached at ``https://api.ibkr.com/v1/api`` without a
gateway. Every request carries an ``Authorization: OAuth ...`` header; the key that signs
it is the *live session token* (LST), which the consumer negotiates with a Diffie-Hellman
exchange. The byte-level details follow ibind (``ibind/oauth/oauth1a.py``, 0.2.x), IBKR
Campus "OAuth 1.0a Extended"
(https://www.interactivebrokers.com/campus/ibkr-api-page/oauth-1-0a-extended/) and the
IBKR API team's Python OAuth demo scripts (copies in public repositories: a first-party
"Simple test script", a "Slightly more complex implementation" and a ``WebAPIConsumer``
class), so that what we send interoperates with what ibind sends:

1. **Prepend.** The access token secret (base64) is decrypted with the consumer's private
   *encryption* key (RSA, PKCS#1 v1.5); its hex form is the "prepend".
2. **LST request.** ``POST <base>/oauth/live_session_token`` with no body. OAuth params:
   ``oauth_consumer_key``, ``oauth_nonce``, ``oauth_signature_method=RSA-SHA256``,
   ``oauth_timestamp``, ``oauth_token`` (the access token) and
   ``diffie_hellman_challenge`` = hex(g^a mod p) for a random 256-bit ``a``. The base
   string is ``prepend + METHOD & quote_plus(url) & quote_plus(k=v&... sorted by key)``,
   signed RSA-SHA256 (PKCS#1 v1.5) with the private *signature* key; the signature goes
   into the header base64-encoded and then ``quote_plus``-ed.
3. **LST.** The reply holds ``diffie_hellman_response`` (hex B),
   ``live_session_token_signature`` and ``live_session_token_expiration`` (epoch ms).
   K = B^a mod p, as the big-endian two's-complement bytes of a positive number (Java's
   ``BigInteger.toByteArray``: a leading zero byte when the top bit is set);
   LST = HMAC-SHA1(key=K bytes, msg=decrypted secret), base64. It is valid when
   hex(HMAC-SHA1(key=LST, msg=consumer key)) equals ``live_session_token_signature``.
4. **Signed calls.** Every other request has the same OAuth params (no DH challenge, no
   prepend), ``oauth_signature_method=HMAC-SHA256`` and the signature
   quote_plus(base64(HMAC-SHA256(key=LST, msg=base string))).
5. **Header.** ``OAuth realm="<realm>", k="v", ...`` (sorted by key), and a
   ``User-Agent`` on every request ("required for all requests. Can have any value",
   IBKR's samples).

Query parameters and the base string are not settled by the sources:
``query_signing="ignore"`` (the default) signs the URL without its query and leaves the
query parameters out, as ibind does (it passes ``params`` to ``requests`` beside the
signed URL) and as IBKR's simple sample does for ``/iserver/marketdata/history``;
``"rfc5849"`` adds them to the sorted parameters (RFC 5849 §3.4.1.3, IBKR's text "a
lexicographically sorted list of key/value pairs including the authorization header
pairs, query parameters ...", and the ``WebAPIConsumer`` sample); ``"url"`` signs the
full URL with its query, as the first-party test script does for
``/iserver/auth/ssodh/init?publish=true&compete=true``. ibind users' calls with query
parameters get past IBKR's OAuth check (Voyz/ibind#44: ``live_marketdata_snapshot``
answered "no bridge", not 401), hence the default. The simulator
(:mod:`brokerfeeds.testing.ibkr_oauth`) checks any one, or several, of the three.

The LST lasts about 24 hours; it is renewed 10 minutes before it expires (the
``WebAPIConsumer`` sample's margin).

IBKR's errors are ``401`` with ``{"error": "id: 39687, error: invalid consumer",
"statusCode": 401}`` (seen on the LST endpoint: nsirons/ibkr_web_client#4,
Voyz/ibind#113). What a call signed with an expired LST gets is not documented: any 401
on a signed call is taken as "renew the LST and retry once" (:meth:`OAuthSession.refused`).

Nothing secret (keys, the access token and its secret, the prepend, the LST, signatures)
appears in a repr, a log line or an error message.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import secrets
import string
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import quote, quote_plus, unquote_plus, urlencode, urlsplit, urlunsplit

import attrs

from ..errors import AuthenticationError, ProtocolError
from ..redact import Redactor, RedactingLogger
from ..rest import RestClient
from ..transport import ConnectTarget
from ..values import to_text

try:
    from cryptography.hazmat.primitives import hashes, hmac, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "IBKR OAuth needs the 'cryptography' package: pip install 'brokerfeeds[oauth]'"
    ) from exc

__all__ = [
    "IbkrOAuth",
    "OAuthSession",
    "QUERY_SIGNING",
    "ENV_VARIABLES",
    "LIVE_SESSION_TOKEN_PATH",
    "decrypt_access_token_secret",
    "dh_challenge",
    "dh_random",
    "java_bytes",
    "compute_live_session_token",
    "live_session_token_signature",
    "base_string",
    "rsa_sha256_signature",
    "hmac_sha256_signature",
    "authorization_header",
    "oauth_nonce",
    "load_private_key",
    "signed_url_and_params",
]

#: The path of the LST endpoint under the base URL.
LIVE_SESSION_TOKEN_PATH = "oauth/live_session_token"

#: How query parameters enter the base string (see the module docs).
QUERY_SIGNING = ("ignore", "rfc5849", "url")

#: The environment variables :meth:`IbkrOAuth.from_env` reads: field → (variable, required).
ENV_VARIABLES: Mapping[str, Tuple[str, bool]] = {
    "consumer_key": ("IBKR_OAUTH_CONSUMER_KEY", True),
    "access_token": ("IBKR_OAUTH_ACCESS_TOKEN", True),
    "access_token_secret": ("IBKR_OAUTH_ACCESS_TOKEN_SECRET", True),
    "signature_key": ("IBKR_OAUTH_SIGNATURE_KEY", True),
    "encryption_key": ("IBKR_OAUTH_ENCRYPTION_KEY", True),
    "dh_prime": ("IBKR_OAUTH_DH_PRIME", True),
    "realm": ("IBKR_OAUTH_REALM", False),
    "dh_generator": ("IBKR_OAUTH_DH_GENERATOR", False),
    "base_url": ("IBKR_OAUTH_BASE_URL", False),
    "ws_url": ("IBKR_OAUTH_WS_URL", False),
}

_NONCE_ALPHABET = string.ascii_letters + string.digits
_LOG = logging.getLogger("brokerfeeds.ibkr.oauth")


class _FieldError(ValueError):
    """A credential field is invalid; the message names the field, never its value."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"IbkrOAuth.{field} {reason}")
        self.field = field
        self.reason = reason


# --------------------------------------------------------------------------- credentials
def _text(instance: object, attribute: "attrs.Attribute[str]", value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise _FieldError(attribute.name, "must be a non-empty string")


def _base64(instance: object, attribute: "attrs.Attribute[str]", value: Any) -> None:
    _text(instance, attribute, value)
    try:
        base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise _FieldError(attribute.name, "is not valid base64 (was it copied whole, with its "
                                          "trailing '=' padding?)") from None


def _dh_prime(instance: object, attribute: "attrs.Attribute[str]", value: Any) -> None:
    _text(instance, attribute, value)
    try:
        prime = int(value, 16)
    except ValueError:
        raise _FieldError(attribute.name, "is not a hexadecimal number") from None
    if prime.bit_length() < 512:
        raise _FieldError(attribute.name, "is too small for a Diffie-Hellman prime")


def _generator(instance: object, attribute: "attrs.Attribute[int]", value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise _FieldError(attribute.name, "must be an integer >= 2")


def _to_str(value: Any) -> Any:
    """Key paths may be given as ``os.PathLike``; everything else is kept for the validator."""
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _hex_text(value: Any) -> Any:
    """The DH prime as plain hex: without whitespace, ``:`` separators (``openssl dhparam
    -text`` prints it so) or a ``0x`` prefix."""
    if not isinstance(value, str):
        return value
    cleaned = "".join(value.split()).replace(":", "")
    return cleaned[2:] if cleaned[:2].lower() == "0x" else cleaned


def _url(value: Any) -> Any:
    return value.rstrip("/") if isinstance(value, str) else value


@attrs.frozen(slots=True)
class IbkrOAuth:
    """The credentials of an IBKR OAuth 1.0a consumer (from IBKR's self-service portal).

    ``signature_key`` and ``encryption_key`` are the consumer's private RSA keys, each a
    path to a PEM file or the PEM text itself. ``access_token_secret`` is the base64 text
    IBKR issued (encrypted with the public encryption key). ``dh_prime`` is the hex prime
    of the uploaded ``dhparam.pem`` (``openssl dhparam -in dhparam.pem -text`` prints it;
    whitespace, ``:`` and ``0x`` are accepted). ``realm`` is ``limited_poa``, or
    ``test_realm`` for IBKR's ``TESTCONS`` consumer.

    The repr shows the consumer key, realm and URLs only; every secret is left out.
    Invalid values raise :class:`ValueError` naming the field, never the value.
    """

    consumer_key: str = attrs.field(validator=_text)
    access_token: str = attrs.field(repr=False, validator=_text)
    access_token_secret: str = attrs.field(repr=False, validator=_base64)
    signature_key: str = attrs.field(repr=False, converter=_to_str, validator=_text)
    encryption_key: str = attrs.field(repr=False, converter=_to_str, validator=_text)
    dh_prime: str = attrs.field(repr=False, converter=_hex_text, validator=_dh_prime)
    realm: str = attrs.field(default="limited_poa", validator=_text)
    dh_generator: int = attrs.field(default=2, validator=_generator)
    base_url: str = attrs.field(default="https://api.ibkr.com/v1/api", converter=_url, validator=_text)
    ws_url: str = attrs.field(default="wss://api.ibkr.com/v1/api/ws", validator=_text)

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> "IbkrOAuth":
        """Credentials from ``IBKR_OAUTH_*`` environment variables (see :data:`ENV_VARIABLES`).

        Required: ``IBKR_OAUTH_CONSUMER_KEY``, ``IBKR_OAUTH_ACCESS_TOKEN``,
        ``IBKR_OAUTH_ACCESS_TOKEN_SECRET``, ``IBKR_OAUTH_SIGNATURE_KEY``,
        ``IBKR_OAUTH_ENCRYPTION_KEY`` (a PEM path or PEM text) and ``IBKR_OAUTH_DH_PRIME``;
        optional: ``IBKR_OAUTH_REALM``, ``IBKR_OAUTH_DH_GENERATOR``, ``IBKR_OAUTH_BASE_URL``,
        ``IBKR_OAUTH_WS_URL``. A missing or invalid one raises :class:`ValueError` naming
        the variable (never its value).
        """
        env = os.environ if environ is None else environ
        missing = [name for field, (name, required) in ENV_VARIABLES.items()
                   if required and not (env.get(name) or "").strip()]
        if missing:
            raise ValueError(f"IBKR OAuth credentials incomplete: {', '.join(missing)} not set")
        values: Dict[str, Any] = {}
        for field, (name, _required) in ENV_VARIABLES.items():
            raw = env.get(name)
            if raw is None or not raw.strip():
                continue
            if field == "dh_generator":
                try:
                    values[field] = int(raw.strip())
                except ValueError:
                    raise ValueError(f"{name} must be an integer >= 2") from None
            else:
                values[field] = raw.strip() if field not in ("signature_key", "encryption_key") else raw
        try:
            return cls(**values)
        except _FieldError as error:
            raise ValueError(f"{ENV_VARIABLES[error.field][0]} {error.reason}") from None

    @property
    def prime(self) -> int:
        """The Diffie-Hellman prime as an integer."""
        return int(self.dh_prime, 16)

    @property
    def secrets(self) -> Tuple[str, ...]:
        """Values a feed must mask in its logs (register them with its redactor)."""
        inline = [k for k in (self.signature_key, self.encryption_key) if "-----BEGIN" in k]
        return (self.access_token, self.access_token_secret, *inline)


def load_private_key(value: str, field: str) -> rsa.RSAPrivateKey:
    """An RSA private key from PEM text or a PEM file path (``field`` names it in errors)."""
    if "-----BEGIN" in value:
        data = value.encode()
    else:
        try:
            with open(value, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            raise ValueError(f"IbkrOAuth.{field}: the key file could not be read "
                             f"({exc.strerror or type(exc).__name__})") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        # cryptography's messages say nothing secret, but the key text stays out of the chain.
        raise ValueError(f"IbkrOAuth.{field} is not an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"IbkrOAuth.{field} is not an RSA private key")
    return key


# --------------------------------------------------------------------------- pure functions
def decrypt_access_token_secret(access_token_secret: str, encryption_key: rsa.RSAPrivateKey) -> bytes:
    """The decrypted access token secret (its ``.hex()`` is the LST request's prepend).

    A key of the wrong size is reported here; a wrong key of the right size is not: with
    OpenSSL's implicit rejection, PKCS#1 v1.5 decryption then returns random bytes instead
    of failing, and IBKR refuses the LST request's signature.
    """
    try:
        ciphertext = base64.b64decode("".join(access_token_secret.split()), validate=True)
        return encryption_key.decrypt(ciphertext, padding.PKCS1v15())
    except (ValueError, binascii.Error):
        raise AuthenticationError(
            "the access token secret cannot be decrypted with the encryption key: the key does "
            "not belong to this access token secret (or the secret was not copied whole)") from None


def dh_random() -> int:
    """A random 256-bit Diffie-Hellman exponent ``a`` (never 0), as ibind and IBKR draw it."""
    while True:
        value = secrets.randbits(256)
        if value:
            return value


def dh_challenge(prime: int, generator: int, a: int) -> str:
    """``hex(g^a mod p)`` without ``0x``: the ``diffie_hellman_challenge`` parameter."""
    return format(pow(generator, a, prime), "x")


def java_bytes(value: int) -> bytes:
    """A non-negative integer as Java's ``BigInteger.toByteArray`` gives it: big-endian
    two's complement, so a leading zero byte when the top bit of the first byte is set
    (ibind's ``to_byte_array``, IBKR's "prepend a null byte if lacking sign bit")."""
    if value < 0:
        raise ValueError("value must be non-negative")
    return value.to_bytes(value.bit_length() // 8 + 1, "big")


def _hmac(key: bytes, message: bytes, algorithm: hashes.HashAlgorithm) -> bytes:
    mac = hmac.HMAC(key, algorithm)
    mac.update(message)
    return mac.finalize()


def compute_live_session_token(dh_response: str, a: int, prime: int, secret: bytes) -> bytes:
    """The LST (raw bytes; base64 them for the usual text form): HMAC-SHA1 of the decrypted
    access token secret keyed with K = B^a mod p in :func:`java_bytes` form.

    Raises :class:`ProtocolError` when ``dh_response`` is not a usable public value (not
    hex, or 0, 1 or p-1) and :class:`AuthenticationError` when it is p or more (IBKR used
    another prime).
    """
    try:
        b_value = int(dh_response, 16)
    except (TypeError, ValueError):
        raise ProtocolError("diffie_hellman_response is not a hexadecimal number") from None
    if b_value >= prime:
        raise AuthenticationError(
            "IBKR's diffie_hellman_response is larger than the DH prime: the DH prime is not the one "
            "registered for this consumer")
    if not 2 <= b_value <= prime - 2:
        raise ProtocolError("diffie_hellman_response is a degenerate Diffie-Hellman value")
    shared = pow(b_value, a, prime)
    return _hmac(java_bytes(shared), secret, hashes.SHA1())


def live_session_token_signature(lst: bytes, consumer_key: str) -> str:
    """``hex(HMAC-SHA1(key=LST, msg=consumer key))``: what IBKR sends to prove it derived
    the same LST (``live_session_token_signature``)."""
    return _hmac(lst, consumer_key.encode("utf-8"), hashes.SHA1()).hex()


def base_string(method: str, url: str, params: Iterable[Tuple[str, str]], prepend: Optional[str] = None) -> str:
    """The OAuth signature base string exactly as ibind builds it:
    ``[prepend]METHOD&quote_plus(url)&quote_plus("k=v&k=v..." sorted by key)``."""
    joined = "&".join(f"{k}={v}" for k, v in sorted(params))
    text = f"{method.upper()}&{quote_plus(url)}&{quote_plus(joined)}"
    return text if prepend is None else prepend + text


def rsa_sha256_signature(base: str, signature_key: rsa.RSAPrivateKey) -> str:
    """quote_plus(base64(RSA-SHA256 PKCS#1 v1.5 signature of ``base``)): the LST request's
    ``oauth_signature``."""
    raw = signature_key.sign(base.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())
    return quote_plus(base64.b64encode(raw).decode("ascii"))


def hmac_sha256_signature(base: str, lst: bytes) -> str:
    """quote_plus(base64(HMAC-SHA256(key=LST, msg=``base``))): a signed call's ``oauth_signature``."""
    return quote_plus(base64.b64encode(_hmac(lst, base.encode("utf-8"), hashes.SHA256())).decode("ascii"))


def authorization_header(params: Mapping[str, str], realm: str) -> str:
    """``OAuth realm="<realm>", k="v", ...`` with the parameters sorted by key (ibind's form)."""
    pairs = ", ".join(f'{k}="{v}"' for k, v in sorted(params.items()))
    return f'OAuth realm="{realm}", {pairs}'


def oauth_nonce() -> str:
    """16 random letters and digits (ibind's nonce)."""
    return "".join(secrets.choice(_NONCE_ALPHABET) for _ in range(16))


def _query_pairs(params: Optional[Mapping[str, Any]]) -> List[Tuple[str, str]]:
    """Query parameters as ``requests`` would send them (lists repeat the key, None is dropped)."""
    pairs: List[Tuple[str, str]] = []
    for key, value in (params or {}).items():
        values: Sequence[Any] = value if isinstance(value, (list, tuple)) else [value]
        pairs.extend((str(key), str(v)) for v in values if v is not None)
    return pairs


def signed_url_and_params(url: str, params: Optional[Mapping[str, Any]],
                          query_signing: str) -> Tuple[str, List[Tuple[str, str]]]:
    """The URL that enters the base string and the query pairs that join the OAuth params,
    for ``query_signing`` in :data:`QUERY_SIGNING` (``url`` may carry a query of its own)."""
    parts = urlsplit(url)
    inline = [tuple(p.split("=", 1)) if "=" in p else (p, "") for p in parts.query.split("&") if p]
    bare = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    extra = _query_pairs(params)
    if query_signing == "ignore":
        return bare, []
    if query_signing == "rfc5849":
        decoded = [(unquote_plus(k), unquote_plus(v)) for k, v in inline]
        return bare, decoded + extra
    if query_signing == "url":
        query = "&".join(filter(None, [parts.query, urlencode(extra)]))
        return urlunsplit((parts.scheme, parts.netloc, parts.path, query, "")), []
    raise ValueError(f"query_signing must be one of {QUERY_SIGNING}")


def _ibkr_error_text(body: Any) -> Optional[str]:
    if isinstance(body, dict):
        return to_text(body.get("error")) or to_text(body.get("message"))
    return None


# --------------------------------------------------------------------------- the session
class OAuthSession:
    """One consumer's live session token and the signing of every request with it.

    Thread-safe. The LST is requested on first use and renewed ``renew_margin`` seconds
    (at most half its lifetime) before ``live_session_token_expiration``; :meth:`sign`
    does that by itself. After a signed call got 401 (:meth:`refused`), call
    :meth:`invalidate` and retry once: the retry renews the LST. :meth:`request` does all
    of that around a :class:`~brokerfeeds.rest.RestClient`.

    Errors: IBKR refusing the LST request (401/403) → :class:`AuthenticationError` with
    IBKR's reason; an LST whose signature does not match ours, or a secret that does not
    decrypt → :class:`AuthenticationError`; a malformed reply → :class:`ProtocolError`;
    network failures → :class:`~brokerfeeds.errors.ConnectionFailed`. Every secret the
    session learns is registered with ``redactor`` (pass the feed's).

    ``clock`` returns epoch seconds (the expiration IBKR sends is an epoch time).
    """

    def __init__(
        self,
        credentials: IbkrOAuth,
        *,
        verify: Union[bool, str] = True,
        timeout: float = 10.0,
        user_agent: str = "brokerfeeds",
        renew_margin: float = 600.0,
        query_signing: str = "ignore",
        redactor: Optional[Redactor] = None,
        clock: Callable[[], float] = time.time,
        logger: Optional[logging.Logger] = None,
    ) -> None:
        if query_signing not in QUERY_SIGNING:
            raise ValueError(f"query_signing must be one of {QUERY_SIGNING}")
        if not user_agent:
            raise ValueError("user_agent must not be empty: IBKR requires a User-Agent on every request")
        self.credentials = credentials
        self.user_agent = user_agent
        self.renew_margin = renew_margin
        self.query_signing = query_signing
        self._clock = clock
        self._redactor = redactor if redactor is not None else Redactor()
        self._redactor.add(*credentials.secrets)
        self._log = RedactingLogger(logger or _LOG, self._redactor)
        self._rest = RestClient(credentials.base_url, verify=verify, timeout=timeout,
                                redactor=self._redactor, error_text=_ibkr_error_text)
        self._lock = threading.RLock()
        self._signature_key: Optional[rsa.RSAPrivateKey] = None
        self._secret: Optional[bytes] = None
        self._lst: Optional[bytes] = None
        self._expires_at: Optional[float] = None
        self._renew_at = 0.0
        self.renewals = 0  #: how many LSTs were obtained (for tests and diagnostics)

    def __repr__(self) -> str:
        with self._lock:
            state = "none" if self._lst is None else "***"
        return f"OAuthSession(consumer_key={self.credentials.consumer_key!r}, lst={state}, renewals={self.renewals})"

    # ----------------------------------------------------------------- the LST
    @property
    def expires_at(self) -> Optional[float]:
        """When the current LST expires (epoch seconds), or None without one."""
        return self._expires_at

    def live_session_token(self, now: Optional[float] = None) -> str:
        """The current LST (base64), renewed first when missing or about to expire."""
        with self._lock:
            self.ensure_fresh(now)
            assert self._lst is not None
            return base64.b64encode(self._lst).decode("ascii")

    def ensure_fresh(self, now: Optional[float] = None) -> bool:
        """Renew the LST if there is none or it is within the renewal margin of its
        expiry; True if it was renewed."""
        with self._lock:
            moment = self._clock() if now is None else now
            if self._lst is not None and moment < self._renew_at:
                return False
            self.renew(moment)
            return True

    def invalidate(self, generation: Optional[int] = None) -> None:
        """Forget the LST (IBKR refused it): the next :meth:`sign` obtains a new one.

        ``generation`` (the value of :attr:`renewals` when the refused call was signed):
        forget it only if no newer LST was obtained since, so that two calls refused at
        once (another thread's call renewed already) cost one renewal, not two.
        """
        with self._lock:
            if generation is not None and generation != self.renewals:
                return
            self._lst = None
            self._expires_at = None

    def renew(self, now: Optional[float] = None) -> None:
        """Obtain a new LST now (the Diffie-Hellman handshake)."""
        with self._lock:
            moment = self._clock() if now is None else now
            creds = self.credentials
            secret = self._decrypted_secret()
            prepend = secret.hex()
            a = dh_random()
            params = self._oauth_params("RSA-SHA256", moment)
            params["diffie_hellman_challenge"] = dh_challenge(creds.prime, creds.dh_generator, a)
            url = f"{creds.base_url}/{LIVE_SESSION_TOKEN_PATH}"
            params["oauth_signature"] = rsa_sha256_signature(
                base_string("POST", url, params.items(), prepend), self._load_signature_key())
            headers = {"Authorization": authorization_header(params, creds.realm), "User-Agent": self.user_agent}
            try:
                reply = self._rest.post(LIVE_SESSION_TOKEN_PATH, headers=headers)
            except AuthenticationError as exc:
                raise AuthenticationError(
                    f"IBKR refused the live session token request ({exc}): check the consumer key, the "
                    "access token, the access token secret and both keys (a wrong encryption key shows "
                    "only here, as a bad signature); a new consumer key works only after IBKR's next "
                    "weekend restart") from None
            lst, expires_ms = self._read_reply(reply, a, secret)
            self._lst = lst
            self._redactor.add(base64.b64encode(lst).decode("ascii"))
            self._set_expiry(expires_ms, moment)
            self.renewals += 1
            self._log.info("IBKR live session token obtained (valid for %s)", _duration(self._expires_at, moment))

    def _read_reply(self, reply: Any, a: int, secret: bytes) -> Tuple[bytes, Optional[Any]]:
        if not isinstance(reply, dict):
            raise ProtocolError("the live session token reply is not a JSON object")
        response = reply.get("diffie_hellman_response")
        signature = reply.get("live_session_token_signature")
        if not isinstance(response, str) or not response:
            raise ProtocolError("the live session token reply has no diffie_hellman_response")
        if not isinstance(signature, str) or not signature:
            raise ProtocolError("the live session token reply has no live_session_token_signature")
        lst = compute_live_session_token(response, a, self.credentials.prime, secret)
        expected = live_session_token_signature(lst, self.credentials.consumer_key)
        if not secrets.compare_digest(expected, signature.strip().lower()):
            raise AuthenticationError(
                "IBKR's live session token signature does not match the token computed here: the "
                "DH prime, the encryption key or the access token secret is not the one registered "
                "for this consumer")
        return lst, reply.get("live_session_token_expiration")

    def _set_expiry(self, expires_ms: Any, now: float) -> None:
        expires: Optional[float] = None
        if isinstance(expires_ms, (int, float)) and not isinstance(expires_ms, bool):
            expires = float(expires_ms) / 1000.0
        elif isinstance(expires_ms, str) and expires_ms.strip().isdigit():
            expires = int(expires_ms.strip()) / 1000.0
        if expires is None:
            self._log.warning("the live session token reply has no usable expiration: renewing it within the hour")
            expires = now + 3600.0
        lifetime = expires - now
        if lifetime <= 60.0:
            # A clock far off IBKR's (or a token that lives a minute): do not renew on every call.
            self._log.warning("the live session token expires %s from now by this machine's clock",
                              _duration(expires, now))
            self._renew_at = now + 30.0
        else:
            self._renew_at = expires - min(self.renew_margin, lifetime / 2)
        self._expires_at = expires

    # ----------------------------------------------------------------- signing
    def sign(self, method: str, url: str, params: Optional[Mapping[str, Any]] = None,
             now: Optional[float] = None) -> Dict[str, str]:
        """The headers (``Authorization``, ``User-Agent``) for one request to ``url`` with
        query ``params``, renewing the LST first when needed."""
        return self._sign(method, url, params, now)[0]

    def _sign(self, method: str, url: str, params: Optional[Mapping[str, Any]],
              now: Optional[float]) -> Tuple[Dict[str, str], int]:
        """:meth:`sign`'s headers and the generation of the LST that signed them."""
        with self._lock:
            moment = self._clock() if now is None else now
            self.ensure_fresh(moment)
            assert self._lst is not None
            lst, generation = self._lst, self.renewals
        signed_url, query = signed_url_and_params(url, params, self.query_signing)
        oauth = self._oauth_params("HMAC-SHA256", moment)
        oauth["oauth_signature"] = hmac_sha256_signature(
            base_string(method, signed_url, [*oauth.items(), *query]), lst)
        headers = {"Authorization": authorization_header(oauth, self.credentials.realm), "User-Agent": self.user_agent}
        return headers, generation

    @staticmethod
    def refused(status: Optional[int], body: Any = None) -> bool:
        """True when a reply to a signed call means "IBKR refused our signature or LST"
        (renew and retry once). IBKR answers those with 401; its wording for an expired
        LST is undocumented, so any 401 counts."""
        return status == 401

    def request(self, rest: RestClient, method: str, path: str, *, params: Optional[Dict[str, Any]] = None,
                json: Any = None) -> Any:
        """``rest.request(method, path, ...)`` signed; on a 401 the LST is renewed and the
        call retried once (a second refusal raises)."""
        url = f"{rest.base_url}/{path.lstrip('/')}"
        for attempt in (0, 1):
            headers, generation = self._sign(method, url, params, None)
            try:
                return rest.request(method, path, params=params, json=json, headers=headers)
            except AuthenticationError as exc:
                if attempt or not (exc.status is None or self.refused(exc.status)):
                    raise
                self._log.info("IBKR refused a signed call: renewing the live session token")
                self.invalidate(generation)
        raise AssertionError("unreachable")  # pragma: no cover

    # ----------------------------------------------------------------- websocket
    def websocket_url(self) -> str:
        """The WebSocket URL with ``?oauth_token=<access token>`` (ibind ``_build_ws_url``,
        IBKR's sample)."""
        return f"{self.credentials.ws_url}?oauth_token={quote(self.credentials.access_token, safe='')}"

    def connect_target(self, session: str) -> ConnectTarget:
        """How to open the WebSocket: :meth:`websocket_url`, a ``User-Agent`` header (IBKR
        requires one there too; ibind sends ``ClientPortalGW/1``) and the cookie
        ``api=<session>``, ``session`` being ``/tickle``'s, without the gateway's JSON
        wrapper (ibind ``IbkrWsClient._get_cookie``, IBKR's sample)."""
        return ConnectTarget(self.websocket_url(), headers=(f"User-Agent: {self.user_agent}",),
                             cookie=f"api={session}")

    @property
    def secrets(self) -> Tuple[str, ...]:
        """Values to mask in logs: the credentials' secrets, the prepend and the LST."""
        with self._lock:
            found = list(self.credentials.secrets)
            if self._secret is not None:
                found.append(self._secret.hex())
            if self._lst is not None:
                found.append(base64.b64encode(self._lst).decode("ascii"))
            return tuple(found)

    def close(self) -> None:
        """Release the LST endpoint's pooled connections."""
        self._rest.close()

    def abort(self) -> None:
        """Make a live session token request in flight fail now (the feed is stopping)."""
        self._rest.abort()

    # ----------------------------------------------------------------- internals
    def _oauth_params(self, method: str, now: float) -> Dict[str, str]:
        return {
            "oauth_consumer_key": self.credentials.consumer_key,
            "oauth_nonce": oauth_nonce(),
            "oauth_signature_method": method,
            "oauth_timestamp": str(int(now)),
            "oauth_token": self.credentials.access_token,
        }

    def _load_signature_key(self) -> rsa.RSAPrivateKey:
        if self._signature_key is None:
            self._signature_key = load_private_key(self.credentials.signature_key, "signature_key")
        return self._signature_key

    def _decrypted_secret(self) -> bytes:
        if self._secret is None:
            key = load_private_key(self.credentials.encryption_key, "encryption_key")
            secret = decrypt_access_token_secret(self.credentials.access_token_secret, key)
            self._redactor.add(secret.hex())
            self._secret = secret
        return self._secret


def _duration(until: Optional[float], now: float) -> str:
    if until is None:
        return "an unknown time"
    seconds = int(until - now)
    if abs(seconds) >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds} s"

