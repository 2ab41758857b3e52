"""How the client authenticates: none, HTTP basic, a static bearer token, or SMART Backend Services.

SMART Backend Services (client-confidential-asymmetric): a ``client_credentials`` grant with a
``private_key_jwt`` client assertion signed RS384 or ES384. The token is cached, renewed before it
expires with at most one renewal in flight, and renewed once after a 401.
"""

from __future__ import annotations

import base64
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fhir_alliance.errors import AuthError, InputError, Issue

__all__ = [
    "Auth",
    "BasicAuth",
    "BearerTokenAuth",
    "NoAuth",
    "SmartBackendAuth",
    "TokenTransport",
]

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_OAUTH_ERROR_CODES = frozenset(
    {
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
    }
)
#: SMART: access tokens live at most 5 minutes; assume that when ``expires_in`` is missing.
_DEFAULT_TOKEN_LIFETIME = 300.0


class TokenTransport(Protocol):
    """What an auth method may ask of the client: discovery and the token request (no token sent)."""

    def smart_configuration(self) -> Mapping[str, Any]: ...

    def post_token_request(self, url: str, form: Mapping[str, str]) -> Mapping[str, Any]: ...


class Auth:
    """Base: no credentials. Subclasses return the ``Authorization`` header value."""

    #: Whether requests carry a secret (the client then refuses plain http to a non-loopback host).
    sends_credentials = False

    def authorization(self, transport: TokenTransport) -> str | None:
        return None

    def renew_after_401(self, used: str | None) -> bool:
        """Called on a 401 for a request sent with ``used``; True if one retry could succeed."""
        return False


class NoAuth(Auth):
    """No ``Authorization`` header (public sandboxes)."""


class BasicAuth(Auth):
    """HTTP basic authentication."""

    sends_credentials = True

    def __init__(self, username: str, password: str) -> None:
        if not username or ":" in username:
            raise InputError(
                "basic auth needs a user name without ':'",
                issues=[Issue(path="username", message="required, without ':'")],
            )
        raw = f"{username}:{password}".encode()
        self._header = "Basic " + base64.b64encode(raw).decode("ascii")

    def authorization(self, transport: TokenTransport) -> str | None:
        return self._header

    def __repr__(self) -> str:  # never show the secret
        return "BasicAuth(***)"


class BearerTokenAuth(Auth):
    """A static bearer token obtained elsewhere."""

    sends_credentials = True

    def __init__(self, token: str) -> None:
        if not token or any(c.isspace() for c in token):
            raise InputError(
                "bearer token must be non-empty without spaces",
                issues=[Issue(path="token", message="required, without spaces")],
            )
        self._header = f"Bearer {token}"

    def authorization(self, transport: TokenTransport) -> str | None:
        return self._header

    def __repr__(self) -> str:
        return "BearerTokenAuth(***)"


@dataclass(frozen=True, slots=True)
class _Token:
    header: str
    renew_at: float  # monotonic time after which we fetch a new one


PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def load_private_key(pem: bytes | str, *, password: bytes | None = None) -> PrivateKey:
    """Load a PEM private key (RSA or EC); InputError if it is neither."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except (ValueError, TypeError) as exc:
        raise InputError(
            "private key is not a readable PEM key",
            issues=[Issue(path="private_key", message="not a readable PEM private key")],
        ) from exc
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise InputError(
            "private key must be RSA or EC",
            issues=[Issue(path="private_key", message="must be RSA (RS384) or EC P-384 (ES384)")],
        )
    return key


class SmartBackendAuth(Auth):
    """SMART Backend Services: signed client assertion → short-lived access token, cached.

    ``token_url`` defaults to the ``token_endpoint`` of ``[base]/.well-known/smart-configuration``.
    ``assertion_lifetime`` must be at most 300 s (the spec's limit); the default leaves room for
    clock skew. Thread-safe: concurrent callers share one token request.
    """

    sends_credentials = True

    def __init__(
        self,
        client_id: str,
        private_key: PrivateKey | bytes | str,
        *,
        key_id: str,
        algorithm: str = "RS384",
        scope: str = "system/Observation.cruds system/Consent.cruds",
        token_url: str | None = None,
        jku: str | None = None,
        assertion_lifetime: float = 240.0,
        renew_margin: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        issues: list[Issue] = []
        if not client_id:
            issues.append(Issue(path="client_id", message="required"))
        if not key_id:
            issues.append(Issue(path="key_id", message="required (the kid of the registered key)"))
        if algorithm not in ("RS384", "ES384"):
            issues.append(Issue(path="algorithm", message="must be RS384 or ES384"))
        if not 0 < assertion_lifetime <= 300:
            issues.append(Issue(path="assertion_lifetime", message="must be in (0, 300] seconds"))
        if issues:
            raise InputError("invalid SMART backend services settings", issues=issues)
        key = (
            private_key
            if not isinstance(private_key, bytes | str)
            else load_private_key(private_key)
        )
        if algorithm == "RS384" and not isinstance(key, rsa.RSAPrivateKey):
            issues.append(Issue(path="private_key", message="RS384 needs an RSA key"))
        if algorithm == "ES384" and not (
            isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP384R1)
        ):
            issues.append(Issue(path="private_key", message="ES384 needs an EC P-384 key"))
        if issues:
            raise InputError("private key does not fit the algorithm", issues=issues)
        self.client_id = client_id
        self.key_id = key_id
        self.algorithm = algorithm
        self.scope = scope
        self.jku = jku
        self._key = key
        self._token_url = token_url
        self._assertion_lifetime = assertion_lifetime
        self._renew_margin = renew_margin
        self._clock = clock
        self._wall_clock = wall_clock
        self._token: _Token | None = None
        self._lock = threading.Lock()
        #: Number of token requests made (for operators' metrics and tests).
        self.token_requests = 0

    def __repr__(self) -> str:
        return (
            f"SmartBackendAuth(client_id=***, key_id={self.key_id!r}, algorithm={self.algorithm})"
        )

    def client_assertion(self, token_url: str) -> str:
        """A fresh signed JWT: iss = sub = client_id, aud = token URL, exp ≤ 5 min, unique jti."""
        now = int(self._wall_clock())
        headers: dict[str, Any] = {"kid": self.key_id, "typ": "JWT"}
        if self.jku:
            headers["jku"] = self.jku
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": token_url,
            "exp": now + int(self._assertion_lifetime),
            "jti": str(uuid.uuid4()),
        }
        return jwt.encode(claims, self._key, algorithm=self.algorithm, headers=headers)

    def _discover(self, transport: TokenTransport) -> str:
        if self._token_url is None:
            config = transport.smart_configuration()
            url = config.get("token_endpoint")
            if not isinstance(url, str) or not url.startswith(("https://", "http://")):
                raise AuthError("smart-configuration has no usable token_endpoint")
            self._token_url = url
        return self._token_url

    def _fetch(self, transport: TokenTransport) -> _Token:
        token_url = self._discover(transport)
        form = {
            "grant_type": "client_credentials",
            "scope": self.scope,
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": self.client_assertion(token_url),
        }
        self.token_requests += 1
        started = self._clock()
        answer = transport.post_token_request(token_url, form)
        access_token = answer.get("access_token")
        token_type = answer.get("token_type", "bearer")
        if (
            not isinstance(access_token, str)
            or not access_token
            or any(c.isspace() for c in access_token)
        ):
            raise AuthError("token endpoint answered without a usable access_token")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise AuthError("token endpoint answered with a token type other than bearer")
        expires_in = answer.get("expires_in", _DEFAULT_TOKEN_LIFETIME)
        if not isinstance(expires_in, int | float) or isinstance(expires_in, bool):
            expires_in = _DEFAULT_TOKEN_LIFETIME
        margin = min(self._renew_margin, float(expires_in) / 2)
        return _Token(
            header=f"Bearer {access_token}", renew_at=started + float(expires_in) - margin
        )

    def authorization(self, transport: TokenTransport) -> str | None:
        token = self._token
        if token is not None and self._clock() < token.renew_at:
            return token.header
        with self._lock:  # one renewal in flight; the others wait and reuse it
            token = self._token
            if token is None or self._clock() >= token.renew_at:
                token = self._fetch(transport)
                self._token = token
            return token.header

    def renew_after_401(self, used: str | None) -> bool:
        with self._lock:
            if self._token is not None and self._token.header == used:
                self._token = None  # the next authorization() fetches a new one
        return True


def oauth_error_code(answer: Mapping[str, Any]) -> str | None:
    """The OAuth ``error`` code of a token-endpoint refusal, only if it is a registered code."""
    code = answer.get("error")
    return code if isinstance(code, str) and code in _OAUTH_ERROR_CODES else None
