"""IBKR's side of OAuth 1.0a, for the simulator: the live session token endpoint and the
check of every signed call.

An independent implementation of what ``api.ibkr.com`` does (see
:mod:`brokerfeeds.brokers.ibkr_oauth` for the protocol and its sources): it parses the
``Authorization`` header itself, verifies the RSA-SHA256 signature of the LST request with
the consumer's public signature key, answers the Diffie-Hellman challenge, and checks the
HMAC-SHA256 signature of every later call with the LST it derived. It works on plain
values, ``(method, url, headers, body)`` in and ``(status, json)`` out, so any HTTP
server can use it::

    oauth = IbkrOAuthServer()                       # test keys made in-process
    creds = oauth.credentials(base_url=sim.rest_url)  # IbkrOAuth for the client
    ...
    reply = oauth.handle(method, url, headers, body)  # in the HTTP handler
    if reply is not None:
        return reply                                 # the LST reply, or a refusal
    ...                                              # a properly signed call: serve it

``url`` is the full URL the client addressed (scheme, host, port, path and query).

Refusals look like IBKR's: ``401`` with ``{"error": "id: <n>, error: <reason>",
"statusCode": 401}`` (the shape and the "invalid consumer" and "LST failed, error: No
access secret key found for <token>" reasons are IBKR's, seen in nsirons/ibkr_web_client#4
and Voyz/ibind#113; the other reasons are ours: IBKR's words for them are unknown). A
request without a ``User-Agent`` gets ``403`` (IBKR: "required for all requests"; its
actual answer is unknown).

The Diffie-Hellman arithmetic uses Python integers (IBKR's values are plain hex numbers and
the LST needs the exact bytes of K; ``cryptography``'s finite-field DH is deprecated);
RSA and HMAC are ``cryptography``'s. The default prime is RFC 3526's 2048-bit MODP group
14 prime (generator 2), the kind of prime ``openssl dhparam 2048`` produces.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import re
import secrets
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Union
from urllib.parse import parse_qsl, quote_plus, unquote, urlsplit, urlunsplit

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ..brokers.ibkr_oauth import LIVE_SESSION_TOKEN_PATH, QUERY_SIGNING, IbkrOAuth

__all__ = ["IbkrOAuthServer", "OAuthTestKeys", "MODP_2048_PRIME", "MODP_2048_PRIME_HEX", "Reply"]

#: RFC 3526 §3, the 2048-bit MODP group (14) prime; generator 2. (Checked against
#: OpenSSL's built-in ``modp_2048`` group.)
MODP_2048_PRIME_HEX = (
    "ffffffffffffffffc90fdaa22168c234c4c6628b80dc1cd129024e088a67cc74020bbea63b139b22514a08798e3404dd"
    "ef9519b3cd3a431b302b0a6df25f14374fe1356d6d51c245e485b576625e7ec6f44c42e9a637ed6b0bff5cb6f406b7ed"
    "ee386bfb5a899fa5ae9f24117c4b1fe649286651ece45b3dc2007cb8a163bf0598da48361c55d39a69163fa8fd24cf5f"
    "83655d23dca3ad961c62f356208552bb9ed529077096966d670c354e4abc9804f1746c08ca18217c32905e462e36ce3b"
    "e39e772c180e86039b2783a2ec07a28fb5c55df06f4c52c9de2bcbf6955817183995497cea956ae515d2261898fa0510"
    "15728e5a8aacaa68ffffffffffffffff"
)
MODP_2048_PRIME = int(MODP_2048_PRIME_HEX, 16)

#: ``(status, json body)``, as the simulator's routes return them.
Reply = Tuple[int, Any]

_PARAM = re.compile(r'([A-Za-z0-9_]+)\s*=\s*(?:"([^"]*)"|([^,\s]*))')
_ERROR_IDS = itertools.count(19001)


@attrs.frozen(slots=True)
class OAuthTestKeys:
    """A consumer's two RSA key pairs (signature and encryption), made in-process.

    Generating 2048-bit keys takes a moment: make them once per test module and share them.
    """

    signature_key: rsa.RSAPrivateKey = attrs.field(repr=False)
    encryption_key: rsa.RSAPrivateKey = attrs.field(repr=False)

    @classmethod
    def generate(cls, key_size: int = 2048) -> "OAuthTestKeys":
        """Two new key pairs (IBKR asks for 2048-bit keys)."""
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=key_size),
                   rsa.generate_private_key(public_exponent=65537, key_size=key_size))

    @staticmethod
    def pem(key: rsa.RSAPrivateKey) -> str:
        """``key`` as unencrypted PKCS#1 PEM text (what ``openssl genrsa`` writes)."""
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption()).decode("ascii")


@attrs.define
class _Token:
    lst: bytes
    expires_at: float  # epoch seconds


class IbkrOAuthServer:
    """The consumer registry and LST bookkeeping of ``api.ibkr.com``, for one consumer.

    Options: ``query_signing`` is the base-string variant accepted for query parameters,
    one of :data:`~brokerfeeds.brokers.ibkr_oauth.QUERY_SIGNING` or a sequence of them
    (any matches); ``lst_lifetime`` in seconds; ``timestamp_tolerance`` (seconds, None
    turns the check off) bounds how far ``oauth_timestamp`` may be from ``clock()``;
    nonces are single-use when ``unique_nonces``; ``require_user_agent``.

    Faults: :meth:`expire_live_session_tokens`; ``refuse_consumer = True`` (the consumer
    key is not, or no longer, active: "invalid consumer"); ``wrong_lst_signature = True``
    (the LST reply's signature does not match the LST).

    Counters for tests: ``lst_issued``, ``accepted`` (signed calls let through) and
    ``refusals`` (the reason of every refusal, in order).
    """

    def __init__(
        self,
        keys: Optional[OAuthTestKeys] = None,
        *,
        consumer_key: str = "BFTESTKEY",
        access_token: Optional[str] = None,
        realm: str = "limited_poa",
        dh_prime: int = MODP_2048_PRIME,
        dh_generator: int = 2,
        lst_lifetime: float = 86400.0,
        query_signing: Union[str, Sequence[str]] = "ignore",
        timestamp_tolerance: Optional[float] = 600.0,
        unique_nonces: bool = True,
        require_user_agent: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        modes = (query_signing,) if isinstance(query_signing, str) else tuple(query_signing)
        if not modes or any(m not in QUERY_SIGNING for m in modes):
            raise ValueError(f"query_signing must be one or more of {QUERY_SIGNING}")
        self.keys = keys or OAuthTestKeys.generate()
        self.consumer_key = consumer_key
        self.access_token = access_token or secrets.token_hex(10)
        self.realm = realm
        self.dh_prime = dh_prime
        self.dh_generator = dh_generator
        self.lst_lifetime = lst_lifetime
        self.query_signing: Tuple[str, ...] = modes
        self.timestamp_tolerance = timestamp_tolerance
        self.unique_nonces = unique_nonces
        self.require_user_agent = require_user_agent
        self.refuse_consumer = False
        self.wrong_lst_signature = False  # fault: answer with a live_session_token_signature that does not match
        self._clock = clock
        self._lock = threading.Lock()
        # What IBKR holds for the consumer: the public keys it was given, and the access
        # token secret in the clear (it issued it, encrypted for the consumer).
        self._signature_public = self.keys.signature_key.public_key()
        self._secret = secrets.token_bytes(32)
        self.encrypted_access_token_secret = base64.b64encode(
            self.keys.encryption_key.public_key().encrypt(self._secret, padding.PKCS1v15())).decode("ascii")
        self._tokens: Dict[str, _Token] = {}  # access token → its current LST
        self._nonces: Set[str] = set()
        self._nonce_order: Deque[str] = deque()
        self.lst_issued = 0
        self.accepted = 0
        self.refusals: List[str] = []

    def __repr__(self) -> str:
        return f"IbkrOAuthServer(consumer_key={self.consumer_key!r}, lst_issued={self.lst_issued})"

    # ----------------------------------------------------------------- for the test
    def credentials(self, base_url: str, ws_url: Optional[str] = None, **overrides: Any) -> IbkrOAuth:
        """Client credentials that this server accepts (``overrides`` replace any field)."""
        values: Dict[str, Any] = dict(
            consumer_key=self.consumer_key,
            access_token=self.access_token,
            access_token_secret=self.encrypted_access_token_secret,
            signature_key=OAuthTestKeys.pem(self.keys.signature_key),
            encryption_key=OAuthTestKeys.pem(self.keys.encryption_key),
            dh_prime=format(self.dh_prime, "x"),
            dh_generator=self.dh_generator,
            realm=self.realm,
            base_url=base_url,
        )
        if ws_url is not None:
            values["ws_url"] = ws_url
        values.update(overrides)
        return IbkrOAuth(**values)

    def expire_live_session_tokens(self) -> None:
        """Every LST issued so far expires now (signed calls get 401 until a new one)."""
        with self._lock:
            now = self._clock()
            for token in self._tokens.values():
                token.expires_at = min(token.expires_at, now - 1.0)

    def current_lst(self, access_token: Optional[str] = None) -> Optional[bytes]:
        """The LST this server derived for ``access_token`` (default: its own), if any."""
        with self._lock:
            token = self._tokens.get(access_token or self.access_token)
            return None if token is None else token.lst

    # ----------------------------------------------------------------- HTTP entry points
    @staticmethod
    def is_live_session_token_request(method: str, url: str) -> bool:
        """True for ``POST .../oauth/live_session_token``."""
        path = urlsplit(url).path.rstrip("/")
        return method.upper() == "POST" and path.endswith("/" + LIVE_SESSION_TOKEN_PATH)

    def handle(self, method: str, url: str, headers: Mapping[str, str], body: Any = None) -> Optional[Reply]:
        """The LST endpoint's reply, a refusal of a badly signed call, or None when the call
        is properly signed (serve it as usual)."""
        if self.is_live_session_token_request(method, url):
            return self.answer_live_session_token(method, url, headers, body)
        return self.check(method, url, headers, body)

    def answer_live_session_token(self, method: str, url: str, headers: Mapping[str, str], body: Any = None) -> Reply:
        """``POST /oauth/live_session_token``: verify, then answer the DH challenge."""
        refusal = self._common_checks(headers, "RSA-SHA256")
        if isinstance(refusal, tuple):
            return refusal
        params = refusal
        challenge = params.get("diffie_hellman_challenge", "")
        try:
            a_public = int(challenge, 16)
        except ValueError:
            a_public = 0
        if not 2 <= a_public <= self.dh_prime - 2:
            return self._refuse("invalid diffie_hellman_challenge", 400)
        base = self._secret.hex() + self._base_string(method, url, params, "ignore")
        signature = _signature_bytes(params.get("oauth_signature", ""))
        try:
            self._signature_public.verify(signature, base.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return self._refuse("invalid signature")
        b_private = secrets.randbits(256) or 1
        b_public = pow(self.dh_generator, b_private, self.dh_prime)
        shared = pow(a_public, b_private, self.dh_prime)
        lst = _hmac(_signed_magnitude(shared), self._secret, hashes.SHA1())
        with self._lock:
            expires_at = self._clock() + self.lst_lifetime
            self._tokens[params["oauth_token"]] = _Token(lst, expires_at)
            self.lst_issued += 1
        return 200, {
            "diffie_hellman_response": format(b_public, "x"),
            "live_session_token_signature": _hmac(
                lst if not self.wrong_lst_signature else lst[::-1], self.consumer_key.encode("utf-8"), hashes.SHA1()
            ).hex(),
            "live_session_token_expiration": int(expires_at * 1000),
        }

    def check(self, method: str, url: str, headers: Mapping[str, str], body: Any = None) -> Optional[Reply]:
        """None if the call is signed with a valid LST, else IBKR's refusal."""
        refusal = self._common_checks(headers, "HMAC-SHA256")
        if isinstance(refusal, tuple):
            return refusal
        params = refusal
        with self._lock:
            token = self._tokens.get(params["oauth_token"])
            now = self._clock()
        if token is None:
            return self._refuse("no live session token for this access token")
        if now >= token.expires_at:
            return self._refuse("live session token expired")
        signature = _signature_bytes(params.get("oauth_signature", ""))
        for mode in self.query_signing:
            mac = hmac.HMAC(token.lst, hashes.SHA256())
            mac.update(self._base_string(method, url, params, mode).encode("utf-8"))
            try:
                mac.verify(signature)
            except InvalidSignature:
                continue
            with self._lock:
                self.accepted += 1
            return None
        return self._refuse("invalid signature")

    # ----------------------------------------------------------------- internals
    def _common_checks(self, headers: Mapping[str, str], signature_method: str) -> Union[Reply, Dict[str, str]]:
        """The checks both kinds of request share; the OAuth params, or a refusal."""
        if self.require_user_agent and not (_header(headers, "User-Agent") or "").strip():
            return self._refuse("User-Agent header required", 403)
        params = _parse_authorization(_header(headers, "Authorization"))
        if params is None:
            return self._refuse("missing OAuth Authorization header")
        if params.get("realm") != self.realm:
            return self._refuse("invalid realm")
        if params.get("oauth_consumer_key") != self.consumer_key or self.refuse_consumer:
            return self._refuse("invalid consumer")
        if params.get("oauth_signature_method") != signature_method:
            return self._refuse("invalid signature method")
        token = params.get("oauth_token", "")
        if token != self.access_token:
            return self._refuse(f"LST failed, error: No access secret key found for {token}")
        for required in ("oauth_nonce", "oauth_timestamp", "oauth_signature"):
            if not params.get(required):
                return self._refuse(f"missing {required}")
        if self.timestamp_tolerance is not None:
            try:
                stamp = int(params["oauth_timestamp"])
            except ValueError:
                return self._refuse("invalid timestamp")
            if abs(stamp - self._clock()) > self.timestamp_tolerance:
                return self._refuse("invalid timestamp")
        if self.unique_nonces and not self._fresh_nonce(params["oauth_nonce"]):
            return self._refuse("nonce already used")
        return params

    def _fresh_nonce(self, nonce: str) -> bool:
        with self._lock:
            if nonce in self._nonces:
                return False
            self._nonces.add(nonce)
            self._nonce_order.append(nonce)
            if len(self._nonce_order) > 100_000:
                self._nonces.discard(self._nonce_order.popleft())
            return True

    def _base_string(self, method: str, url: str, params: Mapping[str, str], mode: str) -> str:
        """The base string of a request as received (``mode``: how the query enters it)."""
        parts = urlsplit(url)
        pairs = [(k, v) for k, v in params.items() if k not in ("realm", "oauth_signature")]
        if mode == "url":
            signed_url = urlunsplit((parts.scheme, parts.netloc, parts.path, parts.query, ""))
        else:
            signed_url = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
            if mode == "rfc5849":
                pairs.extend(parse_qsl(parts.query, keep_blank_values=True))
        pairs.sort()
        joined = "&".join(f"{k}={v}" for k, v in pairs)
        return "&".join((method.upper(), quote_plus(signed_url), quote_plus(joined)))

    def _refuse(self, reason: str, status: int = 401) -> Reply:
        with self._lock:
            self.refusals.append(reason)
        return status, {"error": f"id: {next(_ERROR_IDS)}, error: {reason}", "statusCode": status}


def _header(headers: Mapping[str, str], name: str) -> Optional[str]:
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return None


def _parse_authorization(value: Optional[str]) -> Optional[Dict[str, str]]:
    """``OAuth realm="x", k="v", ...`` → its parameters (an unquoted realm, as in one of
    IBKR's samples, is accepted); None if it is not an OAuth header."""
    if not value or not value.strip().lower().startswith("oauth "):
        return None
    found: Dict[str, str] = {}
    for match in _PARAM.finditer(value.strip()[6:]):
        quoted, bare = match.group(2), match.group(3)
        found[match.group(1)] = quoted if quoted is not None else bare
    return found or None


def _signature_bytes(value: str) -> bytes:
    """The raw signature from a header value (percent-encoded base64); b"" if unreadable."""
    try:
        return base64.b64decode(unquote(value), validate=True)
    except (binascii.Error, ValueError):
        return b""


def _signed_magnitude(value: int) -> bytes:
    """K as IBKR's Java side serialises it (``BigInteger.toByteArray``), written the way
    IBKR's sample does: even-length hex, then a zero byte if the top bit is set."""
    text = format(value, "x")
    if len(text) % 2:
        text = "0" + text
    raw = bytes.fromhex(text)
    return b"\x00" + raw if value.bit_length() % 8 == 0 else raw


def _hmac(key: bytes, message: bytes, algorithm: hashes.HashAlgorithm) -> bytes:
    mac = hmac.HMAC(key, algorithm)
    mac.update(message)
    return mac.finalize()
