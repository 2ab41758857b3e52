"""A consent withdrawn or narrowed through the service's API is retracted from the test FHIR server
by a worker that runs without pulls (``fhir-alliance worker --no-pull``: ``Worker.run_forever``
with ``TwoWaySync(pull=False).tick`` between batches, as the CLI wires it). Intake notes the
patient for a retraction check in the consent's own write, and such a worker makes the checks
noted in the store. Before, only a worker's retraction pass over changed consents (which only a
worker that pulls runs) retracted for it: a deployment of push-only workers left on the server
the copies the patient had withdrawn consent for."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest
from fhir_alliance_service.auth import create_api_key
from fhir_alliance_service.sync import Worker
from fhir_alliance_service.sync.pull import TwoWaySync
from flask import Flask
from flask.testing import FlaskClient

from tests.service.sync import records as R
from tests.service.sync.conftest import SyncHarness, now
from tests.service.sync.workers import wait_until

#: Seconds a push-only worker gets to retract: its first tick makes the noted checks at once.
RETRACT_TIMEOUT = 20.0


@pytest.fixture
def api(harness: SyncHarness, make_app: Callable[..., Flask]) -> FlaskClient:
    """The service's API on the harness's store."""
    app = make_app(
        fhir_base_url=harness.server.base_url, recipients=list(harness.settings.recipients)
    )
    return app.test_client()


@pytest.fixture
def write(harness: SyncHarness) -> dict[str, str]:
    key = create_api_key(harness.store, "intake", ["write"])
    return {"Authorization": f"Bearer {key}"}


def _post(api: FlaskClient, path: str, body: Any, headers: dict[str, str]) -> dict[str, Any]:
    response = api.post(path, json=body, headers=headers)
    assert response.status_code in (200, 201), response.get_json()
    answer: dict[str, Any] = response.get_json()
    return answer


def _withdraw(
    route: str, harness: SyncHarness, api: FlaskClient, headers: dict[str, str], consent: str
) -> None:
    """Withdraw or narrow the patient's sharing (consent record ``consent``) through ``route``."""
    revocation = R.revocation(harness.run)
    if route == "revoke":
        body = {"at": revocation["at"], "by": revocation["by"]}
        _post(api, f"/v1/consents/{consent}/revoke", body, headers)
    elif route == "consents":
        _post(api, "/v1/consents", revocation, headers)
    elif route == "records":
        _post(api, "/v1/records", [revocation], headers)
    else:  # narrowed: a new consent denying the recipient what the first one permitted
        deny = {**R.sharing_consent(harness.run, n=2), "decision": "deny"}
        _post(api, "/v1/consents", deny, headers)


@contextmanager
def push_only_worker(harness: SyncHarness) -> Iterator[None]:
    """A worker wired as ``fhir-alliance worker --no-pull`` wires it, retracting by
    ``entered-in-error``, running in a thread of its own; stopped (its batches in hand
    finished) afterwards."""
    settings = replace(
        harness.settings, retraction_policy="entered-in-error", pull_interval_seconds=0.1
    )
    two_way = TwoWaySync(settings, harness.store, harness.client, pull=False)
    worker = Worker(
        settings,
        harness.store,
        harness.client,
        tags=[harness.server.run_tag],
        between_batches=two_way.tick,
    )
    stop = threading.Event()
    running = threading.Thread(target=worker.run_forever, args=(stop,), daemon=True)
    running.start()
    try:
        yield
    finally:
        stop.set()
        running.join(timeout=30)
        assert not running.is_alive(), "the worker did not stop"


@pytest.mark.parametrize("route", ["revoke", "consents", "records", "narrowed"])
def test_a_share_withdrawn_through_the_api_is_retracted_by_a_worker_that_does_not_pull(
    harness: SyncHarness, api: FlaskClient, write: dict[str, str], route: str
) -> None:
    """A consent and a rating posted through the API are pushed; the patient then withdraws the
    share through the API (``POST /v1/consents/<id>/revoke``, a revocation posted to
    ``/v1/consents`` or ``/v1/records``) or narrows it (a new consent denying the recipient).
    The only worker running does not pull: the rating's copy on the server is marked
    entered-in-error all the same, the consent left alone, and no check is left pending. It
    used to stay on the server (only a retraction pass, which such a worker never runs,
    looked at changed consents)."""
    posted = _post(
        api, "/v1/records", [R.sharing_consent(harness.run), R.rating(harness.run, 1)], write
    )
    consent, rating = (entry["id"] for entry in posted["records"])
    assert harness.drain().sent == 2
    observation = f"{R.RECORD_SYSTEM}|trust-{harness.run}-1"
    [shared] = harness.on_server("Observation", observation)
    assert shared["status"] == "final"

    _withdraw(route, harness, api, write, consent)

    def retracted() -> bool:
        status = harness.store.sync_status(rating)
        return status is not None and status.retraction == "entered-in-error"

    with push_only_worker(harness):
        wait_until(retracted, timeout=RETRACT_TIMEOUT, what="the rating retracted")
        wait_until(
            lambda: harness.store.pending_retraction_checks(now=now()).total == 0,
            timeout=RETRACT_TIMEOUT,
            what="the check cleared",
        )
    [on_server] = harness.on_server("Observation", observation)
    assert on_server["status"] == "entered-in-error"
    [kept] = harness.on_server("Consent", R.consent_id(harness.run, "Patient/p1"))
    assert kept["status"] != "entered-in-error"
    assert harness.store.get_pull_cursor(harness.server.base_url, "Consent") is None  # no pull
