"""Pytest plugin: starts the real FHIR R4 test server (or uses FHIR_ALLIANCE_TEST_BASE_URL) and gives tests fixtures.

Fixtures: ``fhir_base_url`` (session, str) and ``fhir_server`` (function, :class:`FhirTestServer`).
Tests using them are marked ``fhir_server`` automatically. See tests/fhir_server/README.md.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
import requests

from fhir_alliance.terminology import CANONICAL_BASE

#: Point the suite at another FHIR R4 server (HAPI in a container, a vendor sandbox, ...).
BASE_URL_ENV = "FHIR_ALLIANCE_TEST_BASE_URL"
#: Code system of the per-test tag every test resource carries in ``meta.tag``.
RUN_TAG_SYSTEM = f"{CANONICAL_BASE}/CodeSystem/test-run"
#: Resource types searched by tag when cleaning up a remote server (plus those seen in responses).
CLEANUP_TYPES = (
    "Observation",
    "Consent",
    "QuestionnaireResponse",
    "Questionnaire",
    "Provenance",
    "AuditEvent",
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "Device",
    "RelatedPerson",
)
DEFAULT_TIMEOUT = 30.0
SERVER_DIR = Path(__file__).resolve().parent
SERVER_SCRIPT = SERVER_DIR / "server.mjs"
STARTUP_TIMEOUT = 60.0
_FHIR_JSON = "application/fhir+json"


class TimeoutSession(requests.Session):
    """A ``requests.Session`` whose every request has a timeout unless the caller gives one."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__()
        self.default_timeout = timeout
        self.headers["Accept"] = _FHIR_JSON

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", self.default_timeout)
        return super().request(method, url, *args, **kwargs)


@dataclass
class FhirTestServer:
    """The FHIR server one test talks to: its base URL, whether it is our local one, and the test's tag."""

    base_url: str
    is_local: bool
    run_tag: dict[str, str]
    http: TimeoutSession = field(default_factory=TimeoutSession, repr=False)
    seen_types: set[str] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        self.http.hooks["response"].append(self._note_location)

    def _note_location(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        """Remember the resource types this test wrote through ``.http`` (for remote cleanup)."""
        location = response.headers.get("Location") or response.headers.get("Content-Location")
        absolute = self.resolve(location) if location else None
        if absolute and _within(absolute, self.base_url):
            first = absolute[len(self.base_url) :].lstrip("/").split("/", 1)[0]
            if first.isalpha():
                self.seen_types.add(first)

    def url(self, path: str = "") -> str:
        """Absolute URL of ``path`` under the base (``url("Observation?_count=5")``)."""
        return f"{self.base_url}/{path.lstrip('/')}" if path else self.base_url

    def resolve(self, location: str) -> str:
        """An absolute URL for a ``Location`` or link, which FHIR allows to be relative to the base
        (``Observation/1/_history/2`` in a Bundle response); absolute ones are returned as they are."""
        return urljoin(self.base_url + "/", location)

    @property
    def run_tag_param(self) -> str:
        """The run tag as a ``_tag`` search value: ``system|code``."""
        return f"{self.run_tag['system']}|{self.run_tag['code']}"

    def tagged(self, resource: dict[str, Any]) -> dict[str, Any]:
        """A copy of ``resource`` with this test's run tag added to ``meta.tag``."""
        meta = dict(resource.get("meta") or {})
        meta["tag"] = [*meta.get("tag", []), dict(self.run_tag)]
        self.seen_types.add(str(resource.get("resourceType")))
        return {**resource, "meta": meta}

    def track(self, *resource_types: str) -> None:
        """Declare resource types this test creates, so remote cleanup searches them by tag."""
        self.seen_types.update(resource_types)

    def load_profile(self, structure_definition: dict[str, Any]) -> None:
        """Make the local server enforce a StructureDefinition (with snapshot) until the next test.

        Only our local test server can do this; against a remote server it fails the test.
        """
        if not self.is_local:
            pytest.fail(
                "load_profile() needs the local test server; this run uses "
                f"{BASE_URL_ENV}. Mark the test with @pytest.mark.local_fhir_server."
            )
        response = self.http.post(
            self.url("$load-profile"),
            json=structure_definition,
            headers={"Content-Type": _FHIR_JSON},
        )
        if response.status_code != 200:
            pytest.fail(f"loading profile failed ({response.status_code}): {response.text[:2000]}")

    def reset(self) -> None:
        """Empty the local server's store and drop runtime-loaded profiles."""
        if not self.is_local:
            pytest.fail("reset() needs the local test server")
        response = self.http.post(self.url("$reset"))
        response.raise_for_status()

    def delete_tagged(self) -> list[str]:
        """Delete every resource carrying this test's run tag; returns references that would not go."""
        types = sorted(set(CLEANUP_TYPES) | {t for t in self.seen_types if t.isalpha()})
        remaining: list[str] = []
        for resource_type in types:
            remaining.extend(self._tagged_references(resource_type))
        # Referencing resources may block deletion of referenced ones (HAPI: 409); retry a few rounds.
        for _ in range(3):
            if not remaining:
                break
            failed = []
            for reference in remaining:
                response = self.http.delete(self.url(reference))
                if response.status_code not in (200, 202, 204, 404, 410):
                    failed.append(reference)
            remaining = failed
        return remaining

    def _tagged_references(self, resource_type: str) -> list[str]:
        references: list[str] = []
        response = self.http.get(
            self.url(resource_type), params={"_tag": self.run_tag_param, "_count": "100"}
        )
        for _page in range(100):
            if response.status_code != 200:
                break
            bundle = response.json()
            references.extend(
                f"{e['resource']['resourceType']}/{e['resource']['id']}"
                for e in bundle.get("entry", [])
                if e.get("resource", {}).get("id") and e.get("search", {}).get("mode") != "include"
            )
            next_url = next(
                (link["url"] for link in bundle.get("link", []) if link.get("relation") == "next"),
                None,
            )
            if not next_url or not _within(self.resolve(next_url), self.base_url):
                break
            response = self.http.get(self.resolve(next_url))
        return references


def _within(url: str, base_url: str) -> bool:
    """True when ``url`` has the scheme, host, port and path prefix of ``base_url``."""
    link, base = urlsplit(url), urlsplit(base_url)
    default = {"http": 80, "https": 443}
    return (
        link.scheme == base.scheme
        and link.hostname == base.hostname
        and (link.port or default.get(link.scheme)) == (base.port or default.get(base.scheme))
        and (link.path + "/").startswith(base.path.rstrip("/") + "/")
    )


@dataclass
class _LocalServer:
    process: subprocess.Popen[str]
    base_url: str
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(OSError):
                if self.process.stdin:
                    self.process.stdin.close()  # the server exits when its stdin closes
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.terminate()
                try:
                    self.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()


def _log_tail(path: Path, limit: int = 3000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-limit:]
    except OSError:
        return "(no server log)"


def start_local_server(log_dir: Path) -> _LocalServer:
    """Start ``node server.mjs --port 0`` and wait until it answers ``GET /metadata``."""
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "Node.js (20 or newer) is needed for the FHIR test server: install it, then run `make install`."
        )
    if not (SERVER_DIR / "node_modules" / "@medplum" / "fhir-router").is_dir():
        pytest.fail(
            "The FHIR test server's packages are missing: run `make install` "
            f"(or `npm ci` in {SERVER_DIR}); or set {BASE_URL_ENV} to use another server."
        )
    log_path = log_dir / "fhir-test-server.log"
    log = log_path.open("w", encoding="utf-8")
    process = subprocess.Popen(
        [node, str(SERVER_SCRIPT), "--port", "0"],
        cwd=SERVER_DIR,
        stdin=subprocess.PIPE,  # closes when pytest exits, however it exits: the server follows
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    log.close()
    assert process.stdout is not None
    deadline = time.monotonic() + STARTUP_TIMEOUT
    line = ""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while not line and time.monotonic() < deadline and process.poll() is None:
            if selector.select(timeout=0.2):
                line = process.stdout.readline()
                if not line:
                    break
    server = _LocalServer(process, "", log_path)
    if not line.startswith("FHIR_TEST_SERVER "):
        server.stop()
        pytest.fail(
            f"FHIR test server did not start (got {line!r}); its log:\n{_log_tail(log_path)}"
        )
    server.base_url = line.split(maxsplit=1)[1].strip()
    _wait_for_metadata(server.base_url, deadline, log_path)
    return server


def _wait_for_metadata(base_url: str, deadline: float, log_path: Path) -> None:
    last_error = ""
    while time.monotonic() < deadline:
        try:
            response = requests.get(f"{base_url}/metadata", timeout=5)
            if response.status_code == 200:
                return
            last_error = f"status {response.status_code}"
        except requests.RequestException as exc:
            last_error = type(exc).__name__
        time.sleep(0.1)
    pytest.fail(
        f"FHIR test server at {base_url} never answered /metadata ({last_error}):\n{_log_tail(log_path)}"
    )


@pytest.fixture(scope="session")
def fhir_base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of the FHIR server for this session: FHIR_ALLIANCE_TEST_BASE_URL, or our local one."""
    remote = os.environ.get(BASE_URL_ENV, "").strip()
    if remote:
        yield remote.rstrip("/")
        return
    server = start_local_server(tmp_path_factory.mktemp("fhir-server"))
    try:
        yield server.base_url
    finally:
        server.stop()


@pytest.fixture
def fhir_server(fhir_base_url: str) -> Iterator[FhirTestServer]:
    """The FHIR server for one test: emptied first (local) or cleaned by the test's tag afterwards (remote)."""
    is_local = not os.environ.get(BASE_URL_ENV, "").strip()
    server = FhirTestServer(
        base_url=fhir_base_url,
        is_local=is_local,
        run_tag={"system": RUN_TAG_SYSTEM, "code": str(uuid.uuid4())},
    )
    if is_local:
        server.reset()
    try:
        yield server
    finally:
        if not is_local:
            server.delete_tagged()
        server.http.close()


_FIXTURES = frozenset({"fhir_server", "fhir_base_url"})


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker for tests that only the local server can run (runtime profiles, reset)."""
    config.addinivalue_line(
        "markers",
        "local_fhir_server: needs the suite's own FHIR test server (skipped, with the reason, "
        f"when {BASE_URL_ENV} points elsewhere)",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests that use the server fixtures ``fhir_server``; skip local-only ones on a remote run."""
    remote = bool(os.environ.get(BASE_URL_ENV, "").strip())
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & _FIXTURES or item.get_closest_marker("local_fhir_server"):
            item.add_marker(pytest.mark.fhir_server)
        if remote and item.get_closest_marker("local_fhir_server"):
            item.add_marker(
                pytest.mark.skip(reason=f"needs the local FHIR test server, not {BASE_URL_ENV}")
            )
