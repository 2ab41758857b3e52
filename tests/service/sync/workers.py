"""Worker subprocesses for the crash-safety and scale-out tests: ``python -m fhir_alliance worker``
(the real command) with its settings in the environment, its log lines kept in a file."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fhir_alliance_service.store.interface import Store, SyncState
from fhir_alliance_service.usecases.intake import RecordIntake, intake_records

from tests.service.sync.conftest import now

PENDING = (SyncState.QUEUED, SyncState.FAILED)


def worker_env(database_url: str, base_url: str, **settings: object) -> dict[str, str]:
    """The environment of a worker process: ``FHIR_ALLIANCE_*`` settings, nothing inherited that
    could change them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_ALLIANCE_")}
    env["FHIR_ALLIANCE_DATABASE_URL"] = database_url
    env["FHIR_ALLIANCE_FHIR_BASE_URL"] = base_url
    env["FHIR_ALLIANCE_LOG_LEVEL"] = "INFO"
    for name, value in settings.items():
        env[f"FHIR_ALLIANCE_{name.upper()}"] = str(value)
    return env


def start_worker(env: Mapping[str, str], log_path: Path, name: str) -> subprocess.Popen[bytes]:
    log = log_path.open("ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "fhir_alliance", "worker", "--name", name],
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    finally:
        log.close()


def intake_in_chunks(
    store: Store, payloads: list[dict[str, object]], chunk: int = 500
) -> list[RecordIntake]:
    results: list[RecordIntake] = []
    for start in range(0, len(payloads), chunk):
        results.extend(intake_records(store, payloads[start : start + chunk], at=now()))
    return results


def audit_actions(store: Store, action: str) -> list[str | None]:
    """The record id of every audit entry with ``action``, paging through the whole log."""
    found: list[str | None] = []
    after: int | None = None
    while True:
        page = store.list_audit(limit=1000, after=after)
        if not page:
            return found
        found.extend(e.record_id for e in page if e.action == action)
        after = page[-1].id


def pending(store: Store) -> int:
    counts = store.counts_by_state()
    return sum(counts.get(state, 0) for state in PENDING)


def wait_until(
    condition: Callable[[], bool], *, timeout: float, interval: float = 0.2, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what or 'a condition'}")


def read_versions(
    http: object, base_url: str, references: Iterable[str], threads: int = 4
) -> dict[str, str | None]:
    """``versionId`` of each ``Type/id`` as the server holds it (None when it is not there)."""

    def read(reference: str) -> tuple[str, str | None]:
        response = http.get(f"{base_url}/{reference}")  # type: ignore[attr-defined]
        if response.status_code in (404, 410):
            return reference, None
        response.raise_for_status()
        return reference, str(response.json()["meta"]["versionId"])

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return dict(pool.map(read, list(references)))


def server_count(http: object, base_url: str, resource_type: str) -> int:
    """How many ``resource_type`` the server holds in all (``_summary=count``)."""
    response = http.get(  # type: ignore[attr-defined]
        f"{base_url}/{resource_type}", params={"_summary": "count"}
    )
    response.raise_for_status()
    return int(response.json()["total"])


def search_identifiers(
    http: object, base_url: str, resource_type: str, identifiers: Iterable[str], chunk: int = 50
) -> dict[str, list[dict[str, object]]]:
    """Every ``resource_type`` carrying each business identifier (OR-searches of ``chunk``)."""
    found: dict[str, list[dict[str, object]]] = {i: [] for i in identifiers}
    keys = list(found)
    for start in range(0, len(keys), chunk):
        part = keys[start : start + chunk]
        response = http.get(  # type: ignore[attr-defined]
            f"{base_url}/{resource_type}",
            params={"identifier": ",".join(part), "_count": str(4 * chunk)},
        )
        response.raise_for_status()
        for entry in response.json().get("entry", []):
            resource = entry["resource"]
            for ident in resource.get("identifier", []):
                token = f"{ident.get('system')}|{ident.get('value')}"
                if token in found:
                    found[token].append(resource)
    return found
