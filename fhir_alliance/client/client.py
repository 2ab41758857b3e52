"""The FHIR REST client: one ``requests.Session``, timeouts on every call, bounded retries of
idempotent requests, safe paging, writes with versions, transaction/batch Bundles, and logs free of PHI.
"""

from __future__ import annotations

import copy
import logging
import re
import socket
import ssl
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson
import requests
import urllib3
from urllib3.util.retry import Retry

from fhir_alliance._version import __version__
from fhir_alliance.client.auth import Auth, NoAuth, oauth_error_code
from fhir_alliance.client.bundles import (
    BundleRequest,
    EntryOutcome,
    answered_identity,
    build_bundle,
    entry_outcomes,
    server_id,
)
from fhir_alliance.client.bundles import search_token as _search_token
from fhir_alliance.client.capabilities import ServerCapabilities, WriteStrategy
from fhir_alliance.client.deadline import Deadline, DeadlineAdapter, running_under
from fhir_alliance.client.deadline import current as current_deadline
from fhir_alliance.client.links import BaseUrl, is_fhir_id, is_resource_type, path_template
from fhir_alliance.client.responses import (
    RequestFacts,
    error_for_status,
    etag_for,
    outcome_in,
    parse_resource,
)
from fhir_alliance.client.retry import Replay, RetryPolicy
from fhir_alliance.errors import (
    AuthError,
    InputError,
    InvalidResponseError,
    Issue,
    LimitExceededError,
    MappingError,
    MultipleMatchesError,
    ResponseTooLargeError,
    ServerError,
    TransportError,
    loggable_outcome,
)
from fhir_alliance.model.common import Identifier
from fhir_alliance.terminology import CANONICAL_BASE

__all__ = ["FhirClient", "WriteResult", "deterministic_id"]

log = logging.getLogger("fhir_alliance.client")

FHIR_JSON = "application/fhir+json"
#: Namespace of deterministic ids: uuid5 over ``type|system|value`` of the business identifier.
ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, f"{CANONICAL_BASE}/id")


def deterministic_id(
    resource_type: str, identifier: Identifier, *, namespace: uuid.UUID = ID_NAMESPACE
) -> str:
    """A stable FHIR id for a business identifier: the same record always lands on the same id.

    A UUIDv5 (a hash): the identifier cannot be read back from it, but a guessable identifier can
    be confirmed by hashing guesses; pass a private ``namespace`` if identifiers are guessable.
    """
    return str(uuid.uuid5(namespace, f"{resource_type}|{identifier.system}|{identifier.value}"))


@dataclass(frozen=True, slots=True)
class WriteResult:
    """The server's answer to a write: where the resource is now and at which version."""

    status: int
    resource_type: str | None
    id: str | None
    version_id: str | None
    etag: str | None
    location: str | None = None
    resource: dict[str, Any] | None = None
    outcome: dict[str, Any] | None = None
    #: What was odd about an answer that still succeeded (e.g. a 201 whose body was unreadable).
    warnings: tuple[str, ...] = ()

    @property
    def created(self) -> bool:
        return self.status == 201


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes


def _identifier_of(resource: Mapping[str, Any]) -> Identifier:
    """The first business identifier (system and value) of a resource; InputError if none."""
    ids = resource.get("identifier")
    if isinstance(ids, dict):  # Consent.identifier is 0..1 in R5 but 0..* in R4
        ids = [ids]
    if isinstance(ids, list):
        for ident in ids:
            if (
                isinstance(ident, Mapping)
                and isinstance(ident.get("system"), str)
                and isinstance(ident.get("value"), str)
                and ident["system"]
                and ident["value"]
            ):
                return Identifier(system=ident["system"], value=ident["value"])
    raise InputError(
        "an idempotent write needs a business identifier with system and value",
        issues=[Issue(path="identifier", message="needs an identifier with system and value")],
    )


def _resource_type(resource: Mapping[str, Any]) -> str:
    rtype = resource.get("resourceType") if isinstance(resource, Mapping) else None
    if not isinstance(rtype, str) or not rtype.isalpha():
        raise InputError(
            "resource without a valid resourceType",
            issues=[Issue(path="resourceType", message="required")],
        )
    return rtype


def _instance_path(resource_type: str, resource_id: object) -> str:
    """``Type/id`` for a caller-given type and id; InputError unless both are safe as path
    segments (a FHIR id: 1-64 of ``A-Z a-z 0-9 - .``, not ``.``/``..``). The id is not quoted
    in the message: ``Observation/../Patient/p1`` must not reach the server (requests would
    normalise it to ``Patient/p1``)."""
    if not is_resource_type(resource_type):
        raise InputError(
            "not a FHIR resource type", issues=[Issue(path="resource_type", message="invalid")]
        )
    if not is_fhir_id(resource_id):
        raise InputError(
            f"not a valid FHIR id for {resource_type} (1-64 of A-Z a-z 0-9 - .; not . or ..)",
            issues=[Issue(path="id", message="not a valid FHIR id")],
        )
    return f"{resource_type}/{resource_id}"


#: A URL path (with any query), alone or after ``scheme://host``; ``HTTP/1.1`` is left alone
#: because its slash follows a letter.
_URL_PATH = re.compile(r"""(?<![\w.%:/-])((?:[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s'"]*)?)/[^\s'"]*""")


class _RedactPaths(logging.Filter):
    """Drop every URL path and query from the records of the libraries below the client.

    urllib3 logs request paths (``"GET /fhir/Observation/abc?x=1"``), retried URLs and redirect
    targets: ids and query values, which may be identifiers. The record is rendered, each path is
    replaced by ``[path]`` (the host is kept), and the record keeps only that text.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except (TypeError, ValueError):
            text = str(record.msg)
        record.msg = _URL_PATH.sub(r"\1/[path]", text)
        record.args = None
        return True


_REDACTOR = _RedactPaths()
#: Loggers of the libraries the client runs on (urllib3 creates one per module at import).
_LIBRARY_LOGGERS = ("urllib3", "requests", "charset_normalizer")


def _install_redaction() -> None:
    """Put the filter on every logger of those libraries (a logger's filters only see its own
    records, not those propagated from its children)."""
    names = {
        name
        for name in logging.Logger.manager.loggerDict
        if name.split(".", 1)[0] in _LIBRARY_LOGGERS
    }
    names.update(("urllib3.connectionpool", "urllib3.connection", "urllib3.util.retry"))
    for name in names:
        logger = logging.getLogger(name)
        if _REDACTOR not in logger.filters:
            logger.addFilter(_REDACTOR)


#: Seconds one call may take in all (connect, send, read the body, retries and their waits).
DEFAULT_DEADLINE = 120.0

#: Values of the ``Prefer: return=`` header (FHIR RESTful API, "Managing Return Content").
RETURN_PREFERENCES = ("minimal", "representation", "OperationOutcome")


class FhirClient:
    """A client for one FHIR server (one base URL). Thread-safe for concurrent calls.

    ``timeout`` is (connect, read) seconds and applies to every request; ``deadline`` (seconds,
    default 120, always on) bounds each call as a whole: connecting, sending, reading the body,
    retries and their waits (see :mod:`fhir_alliance.client.deadline`). ``connect_retries``
    covers only failures to connect (nothing reached the server); everything else is retried by
    :class:`RetryPolicy` for idempotent requests only. ``max_pages`` bounds search paging.
    TLS verification is always on (``ca_bundle`` names a private CA); ``proxies`` are explicit.
    ``return_preference`` (``"minimal"``, ``"representation"`` or ``"OperationOutcome"``) is sent as
    ``Prefer: return=…`` on every write: ``"minimal"`` spares the server echoing each resource back
    (ids and versions still come from ``Location``/``ETag``), which is what a sync pushing many
    resources wants.
    """

    def __init__(
        self,
        base_url: str,
        *,
        auth: Auth | None = None,
        timeout: tuple[float, float] = (5.0, 30.0),
        retry: RetryPolicy | None = None,
        connect_retries: int = 2,
        max_pages: int = 100,
        max_response_bytes: int = 64 * 1024 * 1024,
        max_bundle_entries: int = 1000,
        allow_insecure_http: bool = False,
        pool_maxsize: int = 10,
        ca_bundle: str | None = None,
        proxies: Mapping[str, str] | None = None,
        return_preference: str | None = None,
        deadline: float = DEFAULT_DEADLINE,
    ) -> None:
        self.base = BaseUrl.parse(base_url)
        self.auth = auth or NoAuth()
        bad = [
            Issue(path=name, message="must be positive")
            for name, value in (
                ("timeout.connect", timeout[0]),
                ("timeout.read", timeout[1]),
                ("max_pages", max_pages),
                ("max_response_bytes", max_response_bytes),
                ("max_bundle_entries", max_bundle_entries),
                ("pool_maxsize", pool_maxsize),
                ("deadline", deadline),
            )
            if not value > 0
        ]
        if connect_retries < 0:
            bad.append(Issue(path="connect_retries", message="must not be negative"))
        if return_preference not in (None, *RETURN_PREFERENCES):
            bad.append(
                Issue(
                    path="return_preference",
                    message=f"expected one of {', '.join(RETURN_PREFERENCES)}",
                )
            )
        if bad:
            raise InputError("invalid client settings", issues=bad)
        if (
            self.base.scheme == "http"
            and self.auth.sends_credentials
            and not self.base.is_loopback
            and not allow_insecure_http
        ):
            raise InputError(
                "credentials would travel unencrypted; use https",
                issues=[Issue(path="base_url", message="https required when sending credentials")],
            )
        self.timeout = timeout
        self.deadline = float(deadline)
        self._write_headers = {"Prefer": f"return={return_preference}"} if return_preference else {}
        self.retry = retry or RetryPolicy()
        self.max_pages = max_pages
        self.max_response_bytes = max_response_bytes
        self.max_bundle_entries = max_bundle_entries
        self._allow_insecure_http = allow_insecure_http
        self._capabilities: ServerCapabilities | None = None
        self.session = requests.Session()
        # No proxies, CA paths or .netrc credentials picked up silently from the environment
        # (.netrc would replace our Authorization header).
        self.session.trust_env = False
        adapter = DeadlineAdapter(
            max_retries=Retry(
                total=connect_retries,
                connect=connect_retries,
                read=0,
                status=0,
                other=0,
                redirect=0,
                backoff_factor=0.1,
                raise_on_status=False,
            ),
            pool_maxsize=pool_maxsize,
        )
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.session.headers.update(
            {"Accept": FHIR_JSON, "User-Agent": f"fhir-alliance/{__version__}"}
        )
        # TLS verification is always on; a private CA is given as a bundle path, never by
        # switching verification off. Proxies are explicit (environment settings are ignored).
        self.session.verify = ca_bundle or True
        if proxies:
            self.session.proxies.update(proxies)
        _install_redaction()

    def __repr__(self) -> str:
        return f"FhirClient({self.base.url!r}, auth={self.auth!r})"

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> FhirClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ transport

    def _read_body(self, response: requests.Response) -> bytes:
        """The answer's body, up to ``max_response_bytes``; beyond it ResponseTooLargeError (the
        server answered: a write may have been applied)."""
        declared = response.headers.get("Content-Length", "")
        # ASCII digits only: a superscript passes ``isdigit`` and fails ``int``.
        if declared.isascii() and declared.isdigit() and int(declared) > self.max_response_bytes:
            raise _too_large(response)
        chunks: list[bytes] = []
        total = 0
        for chunk in response.iter_content(chunk_size=256 * 1024):
            total += len(chunk)
            if total > self.max_response_bytes:
                raise _too_large(response)
            chunks.append(chunk)
        return b"".join(chunks)

    def _request(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        replay: Replay,
        facts: RequestFacts | None = None,
        send_auth: bool = True,
        content_type: str = FHIR_JSON,
        check_status: bool = True,
    ) -> _Answer:
        """Send one request with retries as ``replay`` allows; return a 2xx answer or raise.

        The whole call, retries and waits included, runs under the client's ``deadline`` (a call
        made inside another, such as a token request, gets what is left of the outer one).
        With ``check_status=False`` any HTTP answer is returned as is (for non-FHIR endpoints).
        """
        outer = current_deadline()
        seconds = self.deadline if outer is None else min(self.deadline, outer.remaining())
        if seconds <= 0:
            raise TransportError(f"request exceeded its deadline of {_secs(outer)} s")
        with running_under(Deadline(seconds)) as deadline:
            return self._attempts(
                method,
                url,
                deadline,
                body=body,
                headers=headers,
                replay=replay,
                facts=facts or RequestFacts(method=method),
                send_auth=send_auth,
                content_type=content_type,
                check_status=check_status,
            )

    def _attempts(
        self,
        method: str,
        url: str,
        deadline: Deadline,
        *,
        body: bytes | None,
        headers: Mapping[str, str] | None,
        replay: Replay,
        facts: RequestFacts,
        send_auth: bool,
        content_type: str,
        check_status: bool,
    ) -> _Answer:
        policy = self.retry
        template = path_template(self.base, url) if url.startswith(self.base.url) else "[token]"
        started = policy.clock()
        attempt = 0
        renewed = False

        def wait_before_retry(error: ServerError) -> float | None:
            if not replay.allows(error):
                return None
            wait = policy.next_delay(attempt, started, error)
            return None if wait is None or wait >= deadline.remaining() else wait

        while True:
            attempt += 1
            send_headers = dict(headers or {})
            if body is not None:
                send_headers["Content-Type"] = content_type
            authorization = self.auth.authorization(self) if send_auth else None
            if authorization:
                send_headers["Authorization"] = authorization
            left = deadline.remaining()
            if left <= 0 or deadline.expired:
                raise _deadline_error(deadline)
            t0 = time.perf_counter()
            try:
                response = self.session.request(
                    method,
                    url,
                    data=body,
                    headers=send_headers,
                    timeout=(min(self.timeout[0], left), min(self.timeout[1], left)),
                    allow_redirects=False,
                    stream=True,
                )
                try:
                    content = self._read_body(response)
                finally:
                    deadline.release()  # the connection goes back to the pool: not ours to cut
                    response.close()
                if deadline.expired:  # the watchdog cut the body short: it is not the answer
                    raise _deadline_error(deadline)
            except requests.RequestException as exc:
                # Never chain the requests exception: its text holds the URL with query values.
                ms = (time.perf_counter() - t0) * 1000
                if deadline.expired:
                    log.warning(
                        "%s %s -> deadline of %s s exceeded after %.0f ms (attempt %d)",
                        method,
                        template,
                        _secs(deadline),
                        ms,
                        attempt,
                    )
                    raise _deadline_error(deadline) from None
                failure = transport_error(exc)
                wait = wait_before_retry(failure)
                log.warning(
                    "%s %s -> %s after %.0f ms (attempt %d)%s",
                    method,
                    template,
                    failure.message,
                    ms,
                    attempt,
                    f"; retrying in {wait:.2f} s" if wait is not None else "",
                )
                if wait is None:
                    raise failure from None
                policy.sleep(wait)
                continue
            ms = (time.perf_counter() - t0) * 1000
            status = response.status_code
            if (
                status == 401
                and authorization
                and not renewed
                and self.auth.renew_after_401(authorization)
            ):
                log.info("%s %s -> 401; renewing the token once", method, template)
                renewed = True
                attempt -= 1
                continue
            if not check_status:
                log.debug("%s %s -> %d in %.0f ms", method, template, status, ms)
                return _Answer(status=status, headers=response.headers, body=content)
            outcome = outcome_in(content) if status >= 300 else None
            error_or_none = error_for_status(
                status,
                facts,
                outcome=outcome,
                retry_after=response.headers.get("Retry-After"),
                now=policy.wall_clock(),
            )
            if error_or_none is None:
                log.debug(
                    "%s %s -> %d in %.0f ms (attempt %d)", method, template, status, ms, attempt
                )
                return _Answer(status=status, headers=response.headers, body=content)
            error = error_or_none
            wait = wait_before_retry(error)
            log.log(
                logging.WARNING if error.retryable else logging.INFO,
                "%s %s -> %d in %.0f ms (attempt %d)%s outcome=%s",
                method,
                template,
                status,
                ms,
                attempt,
                f"; retrying in {wait:.2f} s" if wait is not None else "",
                loggable_outcome(error.outcome),
            )
            if wait is None:
                raise error
            policy.sleep(wait)

    def _get_resource(
        self, url: str, *, expect: str | None = None, headers: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        answer = self._request("GET", url, headers=headers, replay=Replay.IDEMPOTENT)
        resource = parse_resource(answer.body, status=answer.status)
        if expect and resource["resourceType"] != expect:
            got = resource["resourceType"]
            got = got if got.isalpha() and len(got) <= 64 else "resource of another type"
            raise InvalidResponseError(
                f"server answered with a {got}, expected {expect}", status=answer.status
            )
        return resource

    # ------------------------------------------------------------------ TokenTransport

    def smart_configuration(self) -> Mapping[str, Any]:
        """``[base]/.well-known/smart-configuration`` (sent without credentials)."""
        try:
            answer = self._request(
                "GET",
                self.base.join(".well-known/smart-configuration"),
                replay=Replay.IDEMPOTENT,
                send_auth=False,
            )
        except ServerError as exc:
            raise AuthError(
                "could not read the server's SMART configuration", status=exc.status
            ) from None
        try:
            data = orjson.loads(answer.body)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            raise AuthError("SMART configuration is not a JSON object", status=answer.status)
        return data

    def post_token_request(self, url: str, form: Mapping[str, str]) -> Mapping[str, Any]:
        """POST a token request; never retried here (each assertion's ``jti`` is single-use)."""
        parts = urlsplit(url)
        loopback = (parts.hostname or "") in ("localhost", "127.0.0.1", "::1")
        if parts.scheme != "https" and not (
            parts.scheme == "http" and (loopback or self._allow_insecure_http)
        ):
            raise AuthError("token endpoint must use https")
        answer = self._request(
            "POST",
            url,
            body=urlencode(dict(form)).encode("ascii"),
            headers={"Accept": "application/json"},
            replay=Replay.NEVER,
            send_auth=False,
            content_type="application/x-www-form-urlencoded",
            check_status=False,
        )
        try:
            data = orjson.loads(answer.body)
        except orjson.JSONDecodeError:
            data = None
        if answer.status in (400, 401, 403):
            code = oauth_error_code(data) if isinstance(data, dict) else None
            raise AuthError(
                f"token endpoint refused the client ({code or 'no error code'})",
                status=answer.status,
            )
        error = error_for_status(
            answer.status,
            RequestFacts("POST"),
            retry_after=answer.headers.get("Retry-After"),
            now=self.retry.wall_clock(),
        )
        if error is not None:
            raise error
        if not isinstance(data, dict):
            raise AuthError("token endpoint answer is not a JSON object", status=answer.status)
        return data

    # ------------------------------------------------------------------ capabilities

    def capabilities(self, *, refresh: bool = False) -> ServerCapabilities:
        """The server's CapabilityStatement (``GET [base]/metadata``), read once and cached."""
        if self._capabilities is None or refresh:
            statement = self._get_resource(self.base.join("metadata"), expect="CapabilityStatement")
            try:
                self._capabilities = ServerCapabilities.from_capability_statement(statement)
            except MappingError as exc:
                raise InvalidResponseError(
                    f"CapabilityStatement unreadable at {exc.element}"
                ) from None
        return self._capabilities

    # ------------------------------------------------------------------ reads and search

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        """``GET [type]/[id]``; NotFoundError (``gone`` for 410) when absent, InvalidResponseError
        when the server answers with a resource of another type."""
        return self._get_resource(
            self.base.join(_instance_path(resource_type, resource_id)), expect=resource_type
        )

    def search_pages(
        self,
        resource_type: str,
        params: Mapping[str, str | Sequence[str]] | Sequence[tuple[str, str]] | None = None,
        *,
        max_pages: int | None = None,
        strict: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """Search-set Bundles one page at a time, following ``next`` links inside the base only.

        ``strict`` sends ``Prefer: handling=strict``: a server that does not support a parameter
        should then refuse the search rather than ignore the parameter (and answer more than was
        asked for); a server may still ignore the preference, so check what comes back.

        Raises UnsafeLinkError before requesting a link outside the base, InvalidResponseError
        before requesting a page already read (a ``next`` link that loops back: the search would
        never end), and LimitExceededError when more than ``max_pages`` pages would be needed.
        """
        cap = max_pages or self.max_pages
        headers = {"Prefer": "handling=strict"} if strict else None
        query = urlencode(params or {}, doseq=True)
        url: str | None = self.base.join(resource_type) + (f"?{query}" if query else "")
        read: set[str] = set()  # the pages' URLs, as checked (absolute, no fragment)
        while url is not None:
            if url in read:
                raise InvalidResponseError("search answer's next link repeats a page already read")
            if len(read) >= cap:
                raise LimitExceededError(f"search needs more than {cap} pages")
            bundle = self._get_resource(url, expect="Bundle", headers=headers)
            read.add(url)
            next_link = _link(bundle, "next")
            yield bundle
            url = self.base.check_link(next_link, relative_to=url) if next_link else None

    def search(
        self,
        resource_type: str,
        params: Mapping[str, str | Sequence[str]] | Sequence[tuple[str, str]] | None = None,
        *,
        max_pages: int | None = None,
        strict: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """Matching resources, streamed page by page (constant memory); includes are skipped.
        ``strict``: see :meth:`search_pages`."""
        for bundle in self.search_pages(resource_type, params, max_pages=max_pages, strict=strict):
            entries = bundle.get("entry", [])
            if not isinstance(entries, list):
                raise InvalidResponseError("search answer's Bundle.entry is not a list")
            for i, entry in enumerate(entries):
                search = entry.get("search", {}) if isinstance(entry, Mapping) else None
                if not isinstance(search, Mapping):
                    raise InvalidResponseError(
                        f"search answer's Bundle.entry[{i}] (or its search) is not an object"
                    )
                resource = entry.get("resource")
                if search.get("mode", "match") == "match" and isinstance(resource, dict):
                    yield resource

    def find_by_identifier(
        self, resource_type: str, identifier: Identifier | str, *, limit: int = 10
    ) -> list[dict[str, Any]]:
        """Resources carrying this business identifier: what to ask after a write's answer was lost."""
        ident = identifier if isinstance(identifier, Identifier) else Identifier.parse(identifier)
        found: list[dict[str, Any]] = []
        params = {"identifier": _search_token(ident.system, ident.value), "_count": str(limit)}
        for resource in self.search(resource_type, params, max_pages=1):
            found.append(resource)
            if len(found) >= limit:
                break
        return found

    # ------------------------------------------------------------------ writes

    def _write_result(
        self, answer: _Answer, *, sent_type: str, sent_id: str | None = None
    ) -> WriteResult:
        """Read a write's answer. The write succeeded (2xx), so a body that cannot be read does
        not undo it: the id comes from ``Location`` (or the id the PUT was sent to), the version
        from ``Location`` or ``ETag``, and ``warnings`` says so. Only when nothing names the
        resource is it an InvalidResponseError."""
        location = answer.headers.get("Location") or answer.headers.get("Content-Location")
        etag = answer.headers.get("ETag")
        warnings: tuple[str, ...] = ()
        resource: dict[str, Any] | None = None
        if answer.body.strip():
            try:
                resource = parse_resource(answer.body, status=answer.status)
            except InvalidResponseError as exc:
                if not (location or sent_id):
                    raise
                warnings = (f"the write succeeded (HTTP {answer.status}) but {exc.message}",)
                log.warning(
                    "write answered HTTP %d with an unreadable body; using Location/ETag",
                    answer.status,
                )
        outcome = None
        if resource is not None and resource["resourceType"] == "OperationOutcome":
            outcome, resource = resource, None
        rtype, rid, vid = answered_identity(
            self.base,
            location=location,
            etag=etag,
            resource=resource,
            resource_type=sent_type,
            resource_id=sent_id,
            where="the write answer's",
        )
        return WriteResult(
            status=answer.status,
            resource_type=rtype or sent_type,
            id=rid or sent_id,
            version_id=vid,
            etag=etag_for(vid) if vid else None,
            location=location,
            resource=resource,
            outcome=outcome,
            warnings=warnings,
        )

    def create(
        self, resource: Mapping[str, Any], *, if_none_exist: Mapping[str, str] | None = None
    ) -> WriteResult:
        """``POST [type]`` (the server assigns the id; any ``id`` given is dropped).

        With ``if_none_exist`` (search params) it is a conditional create: 200 and the existing
        resource when one matches, MultipleMatchesError when several do. Not retried after a
        timeout (see docs/client.md).
        """
        rtype = _resource_type(resource)
        body = {k: v for k, v in resource.items() if k != "id"}
        headers = dict(self._write_headers)
        if if_none_exist:
            headers["If-None-Exist"] = urlencode(dict(if_none_exist))
        answer = self._request(
            "POST",
            self.base.join(rtype),
            body=orjson.dumps(body),
            headers=headers,
            replay=Replay.IF_REFUSED if if_none_exist else Replay.NEVER,
            facts=RequestFacts("POST", conditional=bool(if_none_exist)),
        )
        return self._write_result(answer, sent_type=rtype)

    def update(self, resource: Mapping[str, Any], *, if_match: str | None = None) -> WriteResult:
        """``PUT [type]/[id]``; with ``if_match`` (a versionId or ETag) only if still that version.

        A stale ``if_match`` raises VersionConflictError. Without it, this is also the create at a
        deterministic id where the server allows ``updateCreate``.
        """
        rtype = _resource_type(resource)
        rid = resource.get("id")
        if not isinstance(rid, str) or not rid:
            raise InputError("update needs the resource id", issues=[Issue("id", "required")])
        path = _instance_path(rtype, rid)
        headers = dict(self._write_headers)
        if if_match:
            headers["If-Match"] = etag_for(if_match)
        answer = self._request(
            "PUT",
            self.base.join(path),
            body=orjson.dumps(dict(resource)),
            headers=headers,
            replay=Replay.IDEMPOTENT,
            facts=RequestFacts("PUT", if_match=bool(if_match)),
        )
        return self._write_result(answer, sent_type=rtype, sent_id=rid)

    def delete(self, resource_type: str, resource_id: str) -> int:
        """``DELETE [type]/[id]``; returns the status (200, 202 or 204).

        Retried like every idempotent request; servers differ on deleting what is already gone
        (200/204 or 404/410 → NotFoundError), so after a timeout treat NotFoundError as done.
        """
        answer = self._request(
            "DELETE",
            self.base.join(_instance_path(resource_type, resource_id)),
            replay=Replay.IDEMPOTENT,
        )
        return answer.status

    def create_once(
        self,
        resource: Mapping[str, Any],
        *,
        strategy: WriteStrategy | None = None,
        id_namespace: uuid.UUID = ID_NAMESPACE,
    ) -> WriteResult:
        """Write ``resource`` so that sending it again never makes a second one.

        Keyed on its first business identifier; for PUT, an ``id`` already in the resource (our
        mappers derive one from the identifier) is kept, else :func:`deterministic_id` gives one.
        The strategy defaults to the best the server's
        CapabilityStatement allows (PUT to a deterministic id, conditional create, or search then
        create). The caller keeps one writer per identifier (conditional create is not atomic).
        """
        rtype = _resource_type(resource)
        ident = _identifier_of(resource)
        chosen = strategy or self.capabilities().write_strategy(rtype)
        if chosen is None:
            raise ServerError(f"server offers no idempotent write for {rtype}")
        if chosen is WriteStrategy.PUT_DETERMINISTIC_ID:
            body = copy.deepcopy(dict(resource))
            if not isinstance(body.get("id"), str) or not body["id"]:
                body["id"] = deterministic_id(rtype, ident, namespace=id_namespace)
            return self.update(body)
        if chosen is WriteStrategy.CONDITIONAL_CREATE:
            return self.create(
                resource, if_none_exist={"identifier": _search_token(ident.system, ident.value)}
            )
        existing = self.find_by_identifier(rtype, ident, limit=2)
        if len(existing) > 1:
            raise MultipleMatchesError("more than one resource carries this identifier")
        if existing:
            found = existing[0]
            meta = found.get("meta") if isinstance(found.get("meta"), Mapping) else {}
            vid = server_id(
                meta.get("versionId") if isinstance(meta, Mapping) else None,
                resource_type=rtype,
                source="a search answer",
                what="versionId",
            )
            return WriteResult(
                status=200,
                resource_type=rtype,
                id=server_id(found.get("id"), resource_type=rtype, source="a search answer"),
                version_id=vid,
                etag=etag_for(vid) if vid else None,
                resource=found,
            )
        return self.create(resource)

    # ------------------------------------------------------------------ bundles

    def transaction(
        self, requests_: Sequence[BundleRequest], *, chunk_size: int = 100
    ) -> list[EntryOutcome]:
        """Send as transaction Bundles of ``chunk_size`` entries; one outcome per request, in order.

        Each chunk is all-or-nothing on its own; a failed chunk gives every entry of it the
        chunk's error, and the next chunks are still sent.
        """
        return self._bundles("transaction", requests_, chunk_size)

    def batch(
        self, requests_: Sequence[BundleRequest], *, chunk_size: int = 100
    ) -> list[EntryOutcome]:
        """Send as batch Bundles: each entry succeeds or fails on its own."""
        return self._bundles("batch", requests_, chunk_size)

    def _entry_error(
        self, status: int, outcome: dict[str, Any] | None, request: BundleRequest
    ) -> ServerError | None:
        facts = RequestFacts(
            request.method, if_match=bool(request.if_match), conditional=bool(request.if_none_exist)
        )
        return error_for_status(status, facts, outcome=outcome)

    def _bundles(
        self, kind: str, requests_: Sequence[BundleRequest], chunk_size: int
    ) -> list[EntryOutcome]:
        if not 1 <= chunk_size <= self.max_bundle_entries:
            raise InputError(
                f"chunk_size must be between 1 and {self.max_bundle_entries}",
                issues=[Issue(path="chunk_size", message="out of range")],
            )
        outcomes: list[EntryOutcome] = []
        for start in range(0, len(requests_), chunk_size):
            chunk = list(requests_[start : start + chunk_size])
            body = orjson.dumps(build_bundle(kind, chunk))
            try:
                answer = self._request(
                    "POST",
                    self.base.url,
                    body=body,
                    headers=self._write_headers,
                    replay=Replay.weakest([r.replay for r in chunk]),
                )
                response = parse_resource(answer.body, status=answer.status)
                outcomes.extend(
                    entry_outcomes(
                        response,
                        chunk,
                        base=self.base,
                        offset=start,
                        error_for=self._entry_error,
                    )
                )
            except ServerError as exc:
                outcomes.extend(
                    EntryOutcome(
                        index=start + i,
                        request=req,
                        status=exc.status,
                        outcome=exc.outcome,
                        error=exc,
                    )
                    for i, req in enumerate(chunk)
                )
        return outcomes


def _secs(deadline: Deadline | None) -> str:
    return f"{deadline.seconds:g}" if deadline is not None else "0"


def _deadline_error(deadline: Deadline) -> TransportError:
    return TransportError(f"request exceeded its deadline of {_secs(deadline)} s")


def _too_large(response: requests.Response) -> ResponseTooLargeError:
    return ResponseTooLargeError(
        "server answer is larger than max_response_bytes", status=response.status_code
    )


def _not_sent(message: str) -> TransportError:
    """A :class:`TransportError` from before any of the request was sent."""
    error = TransportError(message)
    error.may_have_arrived = False
    return error


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception, what it wraps (urllib3's ``reason``) and its causes, outermost first."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        item = todo.pop(0)
        if id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        nested = [getattr(item, "reason", None), item.__cause__, item.__context__]
        nested += [a for a in item.args if isinstance(a, BaseException)]
        todo.extend(n for n in nested if isinstance(n, BaseException))


def transport_error(exc: requests.RequestException) -> TransportError:
    """Name what went wrong without an HTTP answer, without the URL (which the text of requests'
    exceptions holds). A certificate failure is not retryable: it will not fix itself. Failures
    certainly before anything of the request was sent (no such host, refused, a connect timeout,
    a certificate refused) say so (``may_have_arrived`` False): a write cannot have landed.
    Any other (a reset, a read timeout, another TLS error) may have come after it was sent."""
    chain = list(_causes(exc))
    name = type(exc).__name__
    if any(isinstance(e, ssl.SSLCertVerificationError) for e in chain):
        verify = next(e for e in chain if isinstance(e, ssl.SSLCertVerificationError))
        why = verify.verify_message or "not trusted"
        error = _not_sent(f"TLS certificate verification failed ({why})")
        error.retryable = False
        return error
    if isinstance(exc, requests.exceptions.SSLError):
        error = TransportError(f"TLS handshake failed ({name})")
        error.retryable = False
        return error
    if any(isinstance(e, socket.gaierror | urllib3.exceptions.NameResolutionError) for e in chain):
        return _not_sent(f"host not found: the name does not resolve ({name})")
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return _not_sent(f"connection refused: nothing listens at that port ({name})")
    if isinstance(exc, requests.ConnectTimeout):
        return _not_sent(f"request timed out while connecting ({name})")
    if isinstance(exc, requests.Timeout) or any(
        isinstance(e, TimeoutError | urllib3.exceptions.TimeoutError) for e in chain
    ):
        return TransportError(f"request timed out ({name})")
    return TransportError(f"request connection failed ({name})")


def _link(bundle: Mapping[str, Any], relation: str) -> str | None:
    links = bundle.get("link")
    if not isinstance(links, list):
        return None
    for link in links:
        if isinstance(link, Mapping) and link.get("relation") == relation:
            url = link.get("url")
            return url if isinstance(url, str) and url else None
    return None
