"""SMART Backend Services against a local token endpoint that really verifies our client assertions."""

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from fhir_alliance.client import FhirClient, RetryPolicy, SmartBackendAuth
from fhir_alliance.client.auth import CLIENT_ASSERTION_TYPE
from fhir_alliance.errors import AuthError, InputError

CLIENT_ID = "alliance-sync"
OBS = {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"}}


@dataclass
class TokenEndpoint:
    """A token endpoint holding the registered public key; verifies signature and claims."""

    server: HTTPServer
    public_key: Any
    algorithm: str
    kid: str = "key-1"
    seen_jti: set[str] = field(default_factory=set)
    issued: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    delay: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return self.server.url_for("/auth/token")

    def refuse(self, why: str) -> Response:
        self.refusals.append(why)
        return Response('{"error": "invalid_client"}', status=400, content_type="application/json")

    def handle(self, request: Request) -> Response:
        time.sleep(self.delay)
        form = {k: v[0] for k, v in parse_qs(request.get_data(as_text=True)).items()}
        if form.get("grant_type") != "client_credentials":
            return self.refuse("grant_type")
        if form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
            return self.refuse("client_assertion_type")
        assertion = form.get("client_assertion", "")
        header = jwt.get_unverified_header(assertion)
        if header.get("kid") != self.kid or header.get("typ") != "JWT":
            return self.refuse("header")
        if header.get("alg") != self.algorithm:
            return self.refuse("alg")
        try:
            claims = jwt.decode(
                assertion,
                self.public_key,
                algorithms=[self.algorithm],
                audience=self.url,
                issuer=CLIENT_ID,
                options={"require": ["exp", "jti", "iss", "sub", "aud"]},
            )
        except jwt.InvalidTokenError as exc:
            return self.refuse(type(exc).__name__)
        if claims["sub"] != CLIENT_ID:
            return self.refuse("sub")
        if claims["exp"] - time.time() > 300:
            return self.refuse("exp too far")
        with self.lock:
            if claims["jti"] in self.seen_jti:
                return self.refuse("jti reused")
            self.seen_jti.add(claims["jti"])
            token = f"token-{len(self.issued) + 1}"
            self.issued.append(token)
        body = f'{{"access_token": "{token}", "token_type": "bearer", "expires_in": 300}}'
        return Response(body, content_type="application/json")


def make_endpoint(httpserver: HTTPServer, algorithm: str) -> tuple[TokenEndpoint, Any]:
    if algorithm == "RS384":
        key: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ec.generate_private_key(ec.SECP384R1())
    endpoint = TokenEndpoint(httpserver, key.public_key(), algorithm)
    httpserver.expect_request("/fhir/.well-known/smart-configuration").respond_with_json(
        {
            "token_endpoint": endpoint.url,
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        }
    )
    httpserver.expect_request("/auth/token", method="POST").respond_with_handler(endpoint.handle)
    return endpoint, key


def serve_resource(httpserver: HTTPServer, accept: Callable[[str], bool]) -> list[str]:
    """The FHIR read answers 200 to tokens ``accept`` likes, else 401; records headers seen."""
    seen: list[str] = []

    def handle(request: Request) -> Response:
        value = request.headers.get("Authorization", "")
        seen.append(value)
        if accept(value):
            return Response('{"resourceType": "Observation", "id": "o1"}', status=200)
        return Response("", status=401)

    httpserver.expect_request("/fhir/Observation/o1").respond_with_handler(handle)
    return seen


@pytest.mark.parametrize("algorithm", ["RS384", "ES384"])
def test_token_from_verified_assertion(httpserver: HTTPServer, algorithm: str) -> None:
    """The assertion verifies with the registered key (RS384/ES384) and its claims; the token is
    then sent as a bearer token and reused."""
    endpoint, key = make_endpoint(httpserver, algorithm)
    seen = serve_resource(httpserver, lambda v: v == "Bearer token-1")
    auth = SmartBackendAuth(CLIENT_ID, key, key_id="key-1", algorithm=algorithm)
    client = FhirClient(httpserver.url_for("/fhir"), auth=auth)
    client.read("Observation", "o1")
    client.read("Observation", "o1")
    assert endpoint.refusals == []
    assert endpoint.issued == ["token-1"]
    assert seen == ["Bearer token-1", "Bearer token-1"]
    # discovery and token requests never carry a token
    for request, _ in httpserver.log:
        if not request.path.startswith("/fhir/Observation"):
            assert "Authorization" not in request.headers


def test_endpoint_rejects_a_reused_assertion(httpserver: HTTPServer) -> None:
    """A replayed client assertion (same jti) is refused; our client mints a fresh one each time."""
    endpoint, key = make_endpoint(httpserver, "RS384")
    auth = SmartBackendAuth(CLIENT_ID, key, key_id="key-1")
    assertion = auth.client_assertion(endpoint.url)
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": CLIENT_ASSERTION_TYPE,
        "client_assertion": assertion,
    }
    client = FhirClient(httpserver.url_for("/fhir"))
    client.post_token_request(endpoint.url, form)
    with pytest.raises(AuthError) as caught:
        client.post_token_request(endpoint.url, form)
    assert "invalid_client" in caught.value.message
    assert endpoint.refusals == ["jti reused"]
    assert auth.client_assertion(endpoint.url) != auth.client_assertion(endpoint.url)


def test_wrong_key_is_refused(httpserver: HTTPServer) -> None:
    """An assertion signed with an unregistered key fails verification → AuthError."""
    endpoint, _ = make_endpoint(httpserver, "RS384")
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    auth = SmartBackendAuth(CLIENT_ID, stranger, key_id="key-1")
    serve_resource(httpserver, lambda v: True)
    with pytest.raises(AuthError):
        FhirClient(httpserver.url_for("/fhir"), auth=auth).read("Observation", "o1")
    assert endpoint.refusals == ["InvalidSignatureError"]


def test_401_renews_the_token_once_and_retries(httpserver: HTTPServer) -> None:
    """A 401 (revoked token) → exactly one renewal, the request retried once with the new token."""
    endpoint, key = make_endpoint(httpserver, "ES384")
    seen = serve_resource(httpserver, lambda v: v == "Bearer token-2")
    auth = SmartBackendAuth(CLIENT_ID, key, key_id="key-1", algorithm="ES384")
    client = FhirClient(httpserver.url_for("/fhir"), auth=auth, retry=RetryPolicy(max_attempts=1))
    assert client.read("Observation", "o1")["id"] == "o1"
    assert endpoint.issued == ["token-1", "token-2"]
    assert seen == ["Bearer token-1", "Bearer token-2"]


def test_persistent_401_stops_after_one_renewal(httpserver: HTTPServer) -> None:
    """If the new token is refused too, AuthError: two token requests, two tries, no loop."""
    endpoint, key = make_endpoint(httpserver, "RS384")
    seen = serve_resource(httpserver, lambda v: False)
    auth = SmartBackendAuth(CLIENT_ID, key, key_id="key-1")
    with pytest.raises(AuthError):
        FhirClient(httpserver.url_for("/fhir"), auth=auth).read("Observation", "o1")
    assert len(endpoint.issued) == 2 and len(seen) == 2


def test_concurrent_requests_share_one_token_request(httpserver: HTTPServer) -> None:
    """Eight threads needing a token at once cause exactly one token request."""
    endpoint, key = make_endpoint(httpserver, "RS384")
    endpoint.delay = 0.3
    serve_resource(httpserver, lambda v: v == "Bearer token-1")
    auth = SmartBackendAuth(CLIENT_ID, key, key_id="key-1")
    client = FhirClient(httpserver.url_for("/fhir"), auth=auth)
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work() -> None:
        start.wait()
        try:
            client.read("Observation", "o1")
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert endpoint.issued == ["token-1"]
    assert auth.token_requests == 1


def test_token_renewed_before_it_expires(httpserver: HTTPServer) -> None:
    """With the clock past expires_in minus the margin, the next call fetches a new token."""
    endpoint, key = make_endpoint(httpserver, "RS384")
    serve_resource(httpserver, lambda v: True)
    now = [1000.0]
    auth = SmartBackendAuth(CLIENT_ID, key, key_id="key-1", clock=lambda: now[0], renew_margin=30)
    client = FhirClient(httpserver.url_for("/fhir"), auth=auth)
    client.read("Observation", "o1")
    now[0] += 269  # 300 s token, 30 s margin: still fresh
    client.read("Observation", "o1")
    assert endpoint.issued == ["token-1"]
    now[0] += 2
    client.read("Observation", "o1")
    assert endpoint.issued == ["token-1", "token-2"]


def test_assertion_claims_and_header() -> None:
    """iss = sub = client_id, aud = token URL, exp ≤ 300 s ahead, jti, kid, typ=JWT."""
    key = ec.generate_private_key(ec.SECP384R1())
    auth = SmartBackendAuth(CLIENT_ID, key, key_id="k9", algorithm="ES384", jku="https://a/jwks")
    token = auth.client_assertion("https://auth.example/token")
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(
        token, key.public_key(), algorithms=["ES384"], audience="https://auth.example/token"
    )
    assert header == {"alg": "ES384", "kid": "k9", "typ": "JWT", "jku": "https://a/jwks"}
    assert claims["iss"] == claims["sub"] == CLIENT_ID
    assert 0 < claims["exp"] - time.time() <= 300
    assert claims["jti"]


def test_settings_are_checked() -> None:
    """Wrong algorithm, key type or lifetime → InputError naming each field."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(InputError) as caught:
        SmartBackendAuth("", rsa_key, key_id="", algorithm="HS256", assertion_lifetime=600)
    assert {i.path for i in caught.value.issues} == {
        "client_id",
        "key_id",
        "algorithm",
        "assertion_lifetime",
    }
    with pytest.raises(InputError) as caught:
        SmartBackendAuth(CLIENT_ID, rsa_key, key_id="k", algorithm="ES384")
    assert caught.value.issues[0].path == "private_key"
    with pytest.raises(InputError):
        SmartBackendAuth(CLIENT_ID, b"not a pem", key_id="k")


def test_credentials_need_https_off_loopback() -> None:
    """Sending a token over plain http to a non-loopback host is refused at construction."""
    from fhir_alliance.client import BearerTokenAuth

    with pytest.raises(InputError) as caught:
        FhirClient("http://ehr.example.org/fhir", auth=BearerTokenAuth("t"))
    assert caught.value.issues[0].path == "base_url"
    FhirClient("http://ehr.example.org/fhir").close()  # no credentials: allowed
    assert "secret-value" not in repr(BearerTokenAuth("secret-value"))
