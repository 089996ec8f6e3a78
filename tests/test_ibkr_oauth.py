"""IBKR OAuth 1.0a: our client (``brokerfeeds.brokers.ibkr_oauth``) against our IBKR side
(``brokerfeeds.testing.ibkr_oauth``) over real HTTP on 127.0.0.1, and both against ibind's
own OAuth functions (``ibind.oauth.oauth1a``, unmodified) for conformance."""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import logging
import secrets
import threading
import urllib.parse
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
import requests

pytest.importorskip("cryptography")

from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

from brokerfeeds.brokers import ibkr_oauth as oauth  # noqa: E402
from brokerfeeds.brokers.ibkr_oauth import ENV_VARIABLES, IbkrOAuth, OAuthSession  # noqa: E402
from brokerfeeds.errors import AuthenticationError  # noqa: E402
from brokerfeeds.rest import RestClient  # noqa: E402
from brokerfeeds.testing.ibkr_oauth import MODP_2048_PRIME, IbkrOAuthServer, OAuthTestKeys  # noqa: E402
from helpers import official_client  # noqa: E402

SESSION_ID = "7d1c9a33be4f4f0e8c2ab7d6e5f40912"


@pytest.fixture(scope="module")
def keys() -> OAuthTestKeys:
    return OAuthTestKeys.generate()


@pytest.fixture(scope="module")
def other_keys() -> OAuthTestKeys:
    return OAuthTestKeys.generate()


class OAuthHttp:
    """A tiny IBKR on 127.0.0.1: every request goes through an :class:`IbkrOAuthServer`;
    properly signed calls to a few Client Portal routes are answered."""

    ROUTES = {
        ("POST", "/v1/api/tickle"): {"session": SESSION_ID, "iserver": {"authStatus": {"authenticated": True}}},
        ("GET", "/v1/api/portfolio/accounts"): [{"accountId": "DU123456", "id": "DU123456"}],
        ("GET", "/v1/api/iserver/account/orders"): {"orders": [], "snapshot": True},
        ("POST", "/v1/api/iserver/auth/ssodh/init"): {"authenticated": True, "connected": True},
    }

    def __init__(self, server: IbkrOAuthServer) -> None:
        self.oauth = server
        self.seen: List[Tuple[str, str, Dict[str, str]]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = dict(self.headers.items())
                host, port = self.server.server_address[:2]
                url = f"http://{host}:{port}{self.path}"
                outer.seen.append((self.command, self.path, headers))
                reply = outer.oauth.handle(self.command, url, headers, body)
                if reply is None:
                    route = (self.command, urllib.parse.urlsplit(self.path).path)
                    reply = (200, outer.ROUTES[route]) if route in outer.ROUTES else (404, {"error": "no route"})
                raw = json.dumps(reply[1]).encode()
                self.send_response(reply[0])
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = _serve

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self._thread = threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="oauth-test-http", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}/v1/api"

    def __enter__(self) -> "OAuthHttp":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(5)


@pytest.fixture
def ibkr(keys: OAuthTestKeys) -> Iterator[OAuthHttp]:
    with OAuthHttp(IbkrOAuthServer(keys)) as server:
        yield server


@pytest.fixture
def rest(ibkr: OAuthHttp) -> Iterator[RestClient]:
    client = RestClient(ibkr.base_url, error_text=ibkr_error)
    yield client
    client.close()


def ibkr_error(body: Any) -> Optional[str]:
    """IBKR's explanation in an error body (what IbkrFeed's RestClient shows)."""
    return body.get("error") if isinstance(body, dict) else None


def new_session(ibkr: OAuthHttp, **kwargs: Any) -> OAuthSession:
    overrides = kwargs.pop("credentials", {})
    return OAuthSession(ibkr.oauth.credentials(ibkr.base_url, **overrides), **kwargs)


# --------------------------------------------------------------------------- end to end
def test_handshake_then_signed_calls_are_accepted(ibkr: OAuthHttp, rest: RestClient) -> None:
    session = new_session(ibkr)
    assert session.request(rest, "POST", "tickle")["session"] == SESSION_ID
    assert session.request(rest, "GET", "iserver/account/orders", params={"force": "true"})["snapshot"] is True
    assert session.request(rest, "GET", "portfolio/accounts")[0]["accountId"] == "DU123456"
    assert ibkr.oauth.lst_issued == 1 and session.renewals == 1
    assert ibkr.oauth.accepted == 3 and ibkr.oauth.refusals == []
    # Both sides derived the same LST from the Diffie-Hellman exchange.
    assert base64.b64decode(session.live_session_token()) == ibkr.oauth.current_lst()
    lst_request = ibkr.seen[0]
    assert lst_request[:2] == ("POST", "/v1/api/oauth/live_session_token")
    assert 'oauth_signature_method="RSA-SHA256"' in lst_request[2]["Authorization"]
    assert 'diffie_hellman_challenge="' in lst_request[2]["Authorization"]
    for _method, _path, headers in ibkr.seen:
        assert headers["User-Agent"] == "brokerfeeds"
        assert headers["Authorization"].startswith('OAuth realm="limited_poa", ')
    session.close()


def test_sign_gives_authorization_and_user_agent(ibkr: OAuthHttp) -> None:
    session = new_session(ibkr, user_agent="my-app/1.0")
    url = ibkr.base_url + "/portfolio/accounts"
    headers = session.sign("GET", url)
    assert set(headers) == {"Authorization", "User-Agent"} and headers["User-Agent"] == "my-app/1.0"
    assert 'oauth_signature_method="HMAC-SHA256"' in headers["Authorization"]
    assert requests.get(url, headers=headers, timeout=5).status_code == 200
    # The same headers again: the nonce is single-use, as IBKR's is.
    replay = requests.get(url, headers=headers, timeout=5)
    assert replay.status_code == 401 and "nonce already used" in replay.json()["error"]
    # No User-Agent at all (http.client adds none, unlike urllib3): refused whatever the signature.
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
    connection.request("GET", parts.path, headers={"Authorization": session.sign("GET", url)["Authorization"]})
    refused = connection.getresponse()
    assert refused.status == 403 and "User-Agent" in json.loads(refused.read())["error"]
    connection.close()
    session.close()


@pytest.mark.parametrize("mode", oauth.QUERY_SIGNING)
def test_query_parameters_are_signed_as_configured(keys: OAuthTestKeys, mode: str) -> None:
    with OAuthHttp(IbkrOAuthServer(keys, query_signing=mode)) as ibkr:
        rest = RestClient(ibkr.base_url)
        session = new_session(ibkr, query_signing=mode)
        reply = session.request(rest, "GET", "iserver/account/orders", params={"force": "true", "filters": "a b"})
        assert reply["snapshot"] is True and ibkr.oauth.refusals == []
        # A call signed another way with a query is refused by this server.
        other = "rfc5849" if mode != "rfc5849" else "ignore"
        url = ibkr.base_url + "/iserver/account/orders"
        wrong = new_session(ibkr, query_signing=other).sign("GET", url, {"force": "true"})
        assert requests.get(url, params={"force": "true"}, headers=wrong, timeout=5).status_code == 401
        rest.close()


def test_server_can_accept_every_query_variant(keys: OAuthTestKeys) -> None:
    with OAuthHttp(IbkrOAuthServer(keys, query_signing=oauth.QUERY_SIGNING)) as ibkr:
        rest = RestClient(ibkr.base_url)
        for mode in oauth.QUERY_SIGNING:
            session = new_session(ibkr, query_signing=mode)
            assert session.request(rest, "GET", "iserver/account/orders", params={"force": "true"})["snapshot"]
        assert ibkr.oauth.refusals == []
        rest.close()


def test_expired_lst_is_renewed_silently(ibkr: OAuthHttp, rest: RestClient) -> None:
    session = new_session(ibkr)
    session.request(rest, "POST", "tickle")
    first = session.live_session_token()
    ibkr.oauth.expire_live_session_tokens()
    assert session.request(rest, "GET", "portfolio/accounts")[0]["accountId"] == "DU123456"
    assert ibkr.oauth.refusals == ["live session token expired"]
    assert session.renewals == 2 and ibkr.oauth.lst_issued == 2
    assert session.live_session_token() != first


def test_a_refusal_of_an_older_lst_keeps_the_newer_one(ibkr: OAuthHttp, rest: RestClient) -> None:
    """Two calls refused at once (two feed threads): one renewal, not two."""
    session = new_session(ibkr)
    session.request(rest, "POST", "tickle")
    _headers, generation = session._sign("POST", f"{rest.base_url}/tickle", None, None)
    ibkr.oauth.expire_live_session_tokens()
    session.request(rest, "POST", "tickle")  # refused, renewed: generation + 1
    session.invalidate(generation)  # the other thread's refusal, of the old LST: ignored
    session.request(rest, "GET", "portfolio/accounts")
    assert session.renewals == 2 and ibkr.oauth.lst_issued == 2
    session.invalidate()  # without a generation: always
    session.request(rest, "GET", "portfolio/accounts")
    assert session.renewals == 3


def test_a_403_is_not_taken_for_a_refused_lst(ibkr: OAuthHttp, rest: RestClient) -> None:
    session = new_session(ibkr)
    session.request(rest, "POST", "tickle")
    session.user_agent = ""  # IBKR requires a User-Agent: our IBKR answers 403
    with pytest.raises(AuthenticationError, match="403") as caught:
        session.request(rest, "POST", "tickle")
    assert caught.value.status == 403 and ibkr.oauth.lst_issued == 1  # no renewal for a 403


def test_lst_is_renewed_before_it_expires(keys: OAuthTestKeys) -> None:
    with OAuthHttp(IbkrOAuthServer(keys, lst_lifetime=3600.0, timestamp_tolerance=None)) as ibkr:
        session = new_session(ibkr, renew_margin=600.0)
        assert session.ensure_fresh() is True
        expires_at = session.expires_at
        assert expires_at is not None
        assert session.ensure_fresh(now=expires_at - 601.0) is False
        assert session.ensure_fresh(now=expires_at - 599.0) is True
        assert session.renewals == 2


def test_a_refusal_that_survives_renewal_is_raised_not_looped(keys: OAuthTestKeys) -> None:
    with OAuthHttp(IbkrOAuthServer(keys, query_signing="rfc5849")) as ibkr:
        rest = RestClient(ibkr.base_url, error_text=ibkr_error)
        session = new_session(ibkr, query_signing="ignore")
        with pytest.raises(AuthenticationError, match="HTTP 401: id: [0-9]+, error: invalid signature"):
            session.request(rest, "GET", "iserver/account/orders", params={"force": "true"})
        assert ibkr.oauth.lst_issued == 2  # one renewal, then the error
        rest.close()


def test_wrong_signature_key_is_a_clear_error(ibkr: OAuthHttp, other_keys: OAuthTestKeys) -> None:
    session = new_session(ibkr, credentials={"signature_key": OAuthTestKeys.pem(other_keys.signature_key)})
    with pytest.raises(AuthenticationError) as caught:
        session.live_session_token()
    assert "refused the live session token request" in str(caught.value)
    assert "invalid signature" in str(caught.value)
    assert ibkr.oauth.refusals == ["invalid signature"]


def test_wrong_encryption_key_is_a_clear_error(ibkr: OAuthHttp, other_keys: OAuthTestKeys) -> None:
    # Same key size: OpenSSL's implicit rejection decrypts to random bytes, IBKR refuses the signature.
    session = new_session(ibkr, credentials={"encryption_key": OAuthTestKeys.pem(other_keys.encryption_key)})
    with pytest.raises(AuthenticationError, match="invalid signature.*both keys"):
        session.live_session_token()
    # Another key size: caught before anything is sent.
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    session = new_session(ibkr, credentials={"encryption_key": OAuthTestKeys.pem(small)})
    sent = len(ibkr.seen)
    with pytest.raises(AuthenticationError, match="cannot be decrypted with the encryption key"):
        session.live_session_token()
    assert len(ibkr.seen) == sent


def test_wrong_dh_prime_is_a_clear_error(ibkr: OAuthHttp) -> None:
    mersenne_521 = 2 ** 521 - 1  # a prime, but not the one IBKR holds for this consumer
    session = new_session(ibkr, credentials={"dh_prime": format(mersenne_521, "x")})
    with pytest.raises(AuthenticationError, match="the DH prime is not the one registered"):
        session.live_session_token()


def test_lst_signature_mismatch_is_a_clear_error(ibkr: OAuthHttp) -> None:
    ibkr.oauth.wrong_lst_signature = True
    with pytest.raises(AuthenticationError, match="signature does not match the token computed here"):
        new_session(ibkr).live_session_token()
    ibkr.oauth.wrong_lst_signature = False
    assert new_session(ibkr).live_session_token()


@pytest.mark.parametrize("how", ["refused", "unknown"])
def test_refused_consumer_key_is_a_clear_error(ibkr: OAuthHttp, how: str) -> None:
    if how == "refused":
        ibkr.oauth.refuse_consumer = True
        session = new_session(ibkr)
    else:
        session = new_session(ibkr, credentials={"consumer_key": "NOTOURKEY"})
    with pytest.raises(AuthenticationError, match="invalid consumer") as caught:
        session.live_session_token()
    assert "weekend restart" in str(caught.value)


def test_refused_detects_ibkr_401_only() -> None:
    assert OAuthSession.refused(401, {"error": "id: 1, error: invalid signature", "statusCode": 401})
    assert not OAuthSession.refused(403, None)
    assert not OAuthSession.refused(200, {})


def test_websocket_connect_target(ibkr: OAuthHttp) -> None:
    session = new_session(ibkr, credentials={"ws_url": "wss://api.ibkr.com/v1/api/ws"})
    target = session.connect_target(SESSION_ID)
    assert target.url == f"wss://api.ibkr.com/v1/api/ws?oauth_token={ibkr.oauth.access_token}"
    assert target.headers == ("User-Agent: brokerfeeds",)
    assert target.cookie == f"api={SESSION_ID}"
    assert SESSION_ID not in repr(target) and ibkr.oauth.access_token not in repr(session)


# --------------------------------------------------------------------------- secrets
def test_no_secret_in_reprs_logs_or_errors(ibkr: OAuthHttp, rest: RestClient, other_keys: OAuthTestKeys,
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    creds = ibkr.oauth.credentials(ibkr.base_url)
    session = OAuthSession(creds)
    session.request(rest, "POST", "tickle")
    ibkr.oauth.expire_live_session_tokens()
    session.request(rest, "GET", "portfolio/accounts")  # a refusal and a renewal, logged
    errors: List[BaseException] = []
    for overrides in ({"signature_key": OAuthTestKeys.pem(other_keys.signature_key)},
                      {"encryption_key": OAuthTestKeys.pem(other_keys.encryption_key)},
                      {"access_token": "0123456789abcdef0123"},
                      {"dh_prime": format(2 ** 521 - 1, "x")}):
        try:
            OAuthSession(ibkr.oauth.credentials(ibkr.base_url, **overrides)).live_session_token()
        except AuthenticationError as exc:
            errors.append(exc)
    assert len(errors) == 4
    signatures = [urllib.parse.unquote(h["Authorization"].split('oauth_signature="')[1].split('"')[0])
                  for _m, _p, h in ibkr.seen]
    secret_values = [
        creds.access_token, creds.access_token_secret, "0123456789abcdef0123",
        OAuthTestKeys.pem(ibkr.oauth.keys.signature_key).splitlines()[1],
        OAuthTestKeys.pem(ibkr.oauth.keys.encryption_key).splitlines()[1],
        session.secrets[-2],  # the decrypted access token secret (prepend)
        session.live_session_token(),
        *signatures,
    ]
    shown = "\n".join([repr(creds), str(creds), repr(session), str(session), caplog.text,
                       *(str(e) for e in errors), *(repr(e) for e in errors),
                       *(str(e.__cause__ or e.__context__ or "") for e in errors)])
    assert "live session token obtained" in caplog.text  # the log is not empty
    for value in secret_values:
        assert value not in shown
    assert "BFTESTKEY" in repr(creds)  # the consumer key is an identifier, not a secret


def test_credentials_repr_and_validation_hide_values() -> None:
    good = dict(consumer_key="ABCDEFGHI", access_token="tok3n0123456789", access_token_secret="c2VjcmV0",
                signature_key="/nonexistent/sig.pem", encryption_key="/nonexistent/enc.pem", dh_prime="f" * 256)
    creds = IbkrOAuth(**good)  # type: ignore[arg-type]
    for value in ("tok3n0123456789", "c2VjcmV0", "/nonexistent", "f" * 64):
        assert value not in repr(creds)
    with pytest.raises(ValueError, match="access_token_secret is not valid base64") as caught:
        IbkrOAuth(**{**good, "access_token_secret": "not base64 at all!"})  # type: ignore[arg-type]
    assert "not base64 at all" not in str(caught.value)
    with pytest.raises(ValueError, match="dh_prime is not a hexadecimal number") as caught:
        IbkrOAuth(**{**good, "dh_prime": "xyz-secret-ish"})  # type: ignore[arg-type]
    assert "xyz" not in str(caught.value)
    with pytest.raises(ValueError, match="encryption_key: the key file could not be read"):
        OAuthSession(creds).live_session_token()


def test_dh_prime_as_openssl_prints_it() -> None:
    hexed = format(MODP_2048_PRIME, "x")
    spaced = "    00:" + ":".join(hexed[i:i + 2] for i in range(0, len(hexed), 2)) + "\n"
    creds = IbkrOAuth(consumer_key="K", access_token="T", access_token_secret="c2VjcmV0", signature_key="s",
                      encryption_key="e", dh_prime=spaced)
    assert creds.prime == MODP_2048_PRIME


def _env(server: IbkrOAuthServer, tmp_path: Any) -> Dict[str, str]:
    signature = tmp_path / "private_signature.pem"
    signature.write_text(OAuthTestKeys.pem(server.keys.signature_key))
    creds = server.credentials("http://127.0.0.1:1/v1/api")
    return {
        "IBKR_OAUTH_CONSUMER_KEY": creds.consumer_key,
        "IBKR_OAUTH_ACCESS_TOKEN": creds.access_token,
        "IBKR_OAUTH_ACCESS_TOKEN_SECRET": creds.access_token_secret,
        "IBKR_OAUTH_SIGNATURE_KEY": str(signature),  # a path
        "IBKR_OAUTH_ENCRYPTION_KEY": creds.encryption_key,  # PEM text
        "IBKR_OAUTH_DH_PRIME": creds.dh_prime,
    }


def test_from_env(ibkr: OAuthHttp, tmp_path: Any) -> None:
    env = _env(ibkr.oauth, tmp_path)
    env["IBKR_OAUTH_BASE_URL"] = ibkr.base_url + "/"
    creds = IbkrOAuth.from_env(env)
    assert creds.base_url == ibkr.base_url and creds.realm == "limited_poa" and creds.dh_generator == 2
    session = OAuthSession(creds)
    assert session.live_session_token()  # a key given as a path works too
    assert set(name for name, _ in ENV_VARIABLES.values()) >= set(env)


@pytest.mark.parametrize("variable", [name for name, required in ENV_VARIABLES.values() if required])
def test_from_env_names_a_missing_variable(keys: OAuthTestKeys, tmp_path: Any, variable: str) -> None:
    env = _env(IbkrOAuthServer(keys), tmp_path)
    del env[variable]
    with pytest.raises(ValueError, match=f"{variable} not set"):
        IbkrOAuth.from_env(env)


def test_from_env_names_an_invalid_variable_not_its_value(keys: OAuthTestKeys, tmp_path: Any) -> None:
    env = _env(IbkrOAuthServer(keys), tmp_path)
    env["IBKR_OAUTH_ACCESS_TOKEN_SECRET"] = "s3cr3t-but-not-base64!"
    with pytest.raises(ValueError) as caught:
        IbkrOAuth.from_env(env)
    assert "IBKR_OAUTH_ACCESS_TOKEN_SECRET is not valid base64" in str(caught.value)
    assert "s3cr3t" not in str(caught.value) and caught.value.__cause__ is None


# --------------------------------------------------------------------------- byte-level details
@pytest.mark.parametrize("value, expected", [
    (0, b"\x00"), (1, b"\x01"), (0x7F, b"\x7f"), (0x80, b"\x00\x80"), (0xFF, b"\x00\xff"),
    (0x100, b"\x01\x00"), (0x7FFF, b"\x7f\xff"), (0x8000, b"\x00\x80\x00"),
])
def test_java_bytes_is_bigintegers_two_complement(value: int, expected: bytes) -> None:
    assert oauth.java_bytes(value) == expected


def test_modp_prime_is_rfc3526_group_14() -> None:
    # RFC 3526 §3: p = 2^2048 - 2^1984 - 1 + 2^64 * ( [2^1918 pi] + 124476 ); its first and
    # last 64 bits are ones and it is a safe prime; spot-check what is cheap to check.
    assert MODP_2048_PRIME.bit_length() == 2048
    assert MODP_2048_PRIME >> 1984 == 2 ** 64 - 1 and MODP_2048_PRIME & (2 ** 64 - 1) == 2 ** 64 - 1
    assert pow(2, MODP_2048_PRIME - 1, MODP_2048_PRIME) == 1  # Fermat
    q = (MODP_2048_PRIME - 1) // 2
    assert pow(3, q - 1, q) == 1  # q = (p-1)/2 is (probably) prime too


# --------------------------------------------------------------------------- conformance (ibind)
@pytest.fixture(scope="module")
def ibind_oauth() -> Any:
    return official_client("ibind.oauth.oauth1a")


def _ibind_key(key: rsa.RSAPrivateKey) -> Any:
    from Crypto.PublicKey import RSA

    return RSA.importKey(OAuthTestKeys.pem(key))


def test_ibind_byte_conversion_matches_ours(ibind_oauth: Any) -> None:
    values = [0, 1, 0x7F, 0x80, 0xFF, 0x100, 2 ** 2047, 2 ** 2048 - 1, MODP_2048_PRIME - 2]
    values += [secrets.randbits(bits) for bits in (8, 15, 16, 17, 255, 256, 2047, 2048) for _ in range(10)]
    for value in values:
        assert oauth.java_bytes(value) == bytes(ibind_oauth.to_byte_array(value)), hex(value)


def test_ibind_computations_match_ours(ibind_oauth: Any, keys: OAuthTestKeys) -> None:
    server = IbkrOAuthServer(keys)
    creds = server.credentials("https://api.ibkr.com/v1/api")
    encryption = oauth.load_private_key(creds.encryption_key, "encryption_key")
    secret = oauth.decrypt_access_token_secret(creds.access_token_secret, encryption)
    prepend = ibind_oauth.calculate_live_session_token_prepend(creds.access_token_secret,
                                                               _ibind_key(keys.encryption_key))
    assert secret.hex() == prepend
    a = oauth.dh_random()
    assert oauth.dh_challenge(MODP_2048_PRIME, 2, a) == ibind_oauth.generate_dh_challenge(
        creds.dh_prime, format(a, "x"), 2)
    # The LST from a DH response, with K both with and without its top bit set.
    kinds = set()
    while len(kinds) < 2:
        a = oauth.dh_random()
        b_public = pow(2, secrets.randbits(256), MODP_2048_PRIME)
        shared = pow(b_public, a, MODP_2048_PRIME)
        kinds.add(shared.bit_length() % 8 == 0)
        ours = oauth.compute_live_session_token(format(b_public, "x"), a, MODP_2048_PRIME, secret)
        theirs = ibind_oauth.calculate_live_session_token(creds.dh_prime, format(a, "x"), format(b_public, "x"),
                                                          prepend)
        assert base64.b64encode(ours).decode() == theirs
        signature = oauth.live_session_token_signature(ours, creds.consumer_key)
        assert ibind_oauth.validate_live_session_token(theirs, signature, creds.consumer_key)
    # Base string, signatures and the Authorization header, byte for byte.
    params = {"oauth_consumer_key": creds.consumer_key, "oauth_nonce": oauth.oauth_nonce(),
              "oauth_signature_method": "RSA-SHA256", "oauth_timestamp": "1700000000",
              "oauth_token": creds.access_token, "diffie_hellman_challenge": "abc123"}
    url = "https://api.ibkr.com/v1/api/oauth/live_session_token"
    base = oauth.base_string("POST", url, params.items(), prepend)
    assert base == ibind_oauth.generate_base_string("POST", url, dict(params), prepend=prepend)
    signature_key = oauth.load_private_key(creds.signature_key, "signature_key")
    assert oauth.rsa_sha256_signature(base, signature_key) == ibind_oauth.generate_rsa_sha_256_signature(
        base, _ibind_key(keys.signature_key))
    lst_text = base64.b64encode(ours).decode()
    assert oauth.hmac_sha256_signature(base, ours) == ibind_oauth.generate_hmac_sha_256_signature(base, lst_text)
    assert oauth.authorization_header(params, "limited_poa") == ibind_oauth.generate_authorization_header_string(
        dict(params), "limited_poa")


def _ibind_client(ibind_oauth: Any, ibkr: OAuthHttp, query: Optional[str] = None) -> Any:
    from ibind import IbkrClient

    creds = ibkr.oauth.credentials(ibkr.base_url)
    config = ibind_oauth.OAuth1aConfig(
        oauth_rest_url=ibkr.base_url + "/", access_token=creds.access_token,
        access_token_secret=creds.access_token_secret, consumer_key=creds.consumer_key,
        dh_prime=creds.dh_prime, encryption_key=creds.encryption_key, signature_key=creds.signature_key,
        dh_generator="2", realm="limited_poa", init_oauth=False, maintain_oauth=False, shutdown_oauth=False,
        init_brokerage_session=False)
    return IbkrClient(use_oauth=True, oauth_config=config, use_session=False, max_retries=0,
                      auto_register_shutdown=False), config


def test_ibind_handshake_and_calls_against_our_server(ibind_oauth: Any, ibkr: OAuthHttp) -> None:
    client, config = _ibind_client(ibind_oauth, ibkr)
    lst, expires_ms, signature = ibind_oauth.req_live_session_token(client, config)
    assert ibind_oauth.validate_live_session_token(lst, signature, config.consumer_key)
    assert base64.b64decode(lst) == ibkr.oauth.current_lst()
    assert expires_ms > 0
    client.live_session_token = lst
    assert client.tickle().data["session"] == SESSION_ID
    assert client.get("iserver/account/orders", params={"force": "true"}).data["snapshot"] is True
    assert ibkr.oauth.refusals == [] and ibkr.oauth.accepted == 2
    # The verifier really checks ibind's signatures: signed with another LST, refused.
    from ibind.support.errors import ExternalBrokerError

    client.live_session_token = base64.b64encode(secrets.token_bytes(20)).decode()
    with pytest.raises(ExternalBrokerError, match="401"):
        client.tickle()
    assert ibkr.oauth.refusals == ["invalid signature"]
    client.close()


def test_ibind_and_our_client_share_one_consumer(ibind_oauth: Any, ibkr: OAuthHttp, rest: RestClient) -> None:
    """An LST negotiated by ibind signs our calls, and ours signs ibind's: same bytes."""
    client, config = _ibind_client(ibind_oauth, ibkr)
    lst, _expires, _signature = ibind_oauth.req_live_session_token(client, config)
    session = new_session(ibkr)
    # Our session adopts nothing from ibind: it negotiates its own LST, which replaces ibind's.
    session.request(rest, "POST", "tickle")
    client.live_session_token = session.live_session_token()
    assert client.get("portfolio/accounts").data[0]["accountId"] == "DU123456"
    assert ibkr.oauth.refusals == []
    client.close()
