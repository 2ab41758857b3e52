"""Steps shared by the sync review's reproductions: a concurrent action played just before the
worker's next send, the sharing consent sent first, and a resource's value."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.service.sync import records as R
from tests.service.sync.conftest import SyncHarness


def value_of(resource: dict[str, Any]) -> Any:
    return resource.get("valueQuantity", resource.get("valueInteger", resource.get("value")))


def before_send(harness: SyncHarness, action: Callable[[], object]) -> None:
    """Run ``action`` once, just before the worker's next transaction Bundle goes out: what a
    concurrent API request (or the worker's own between-batches pass) does while the batch,
    already claimed and gated, waits for its send."""
    original = harness.client.transaction
    done: list[bool] = []

    def transaction(*args: Any, **kwargs: Any) -> Any:
        if not done:
            done.append(True)
            action()
        return original(*args, **kwargs)

    harness.client.transaction = transaction  # type: ignore[method-assign]


def sent_consent_first(harness: SyncHarness) -> None:
    """The patient's sharing consent, sent: later ratings of Patient/p1 are permitted."""
    harness.intake([R.sharing_consent(harness.run)])
    assert harness.drain().sent == 1


def conflict_events(harness: SyncHarness, record_id: str) -> list[str]:
    """The outcomes of the record's ``conflict`` AuditEvents, in order."""
    return [
        str(a.resource.get("outcomeDesc"))
        for a in harness.store.list_audit(record_id=record_id)
        if a.action == "conflict"
    ]


def consent_on_server(harness: SyncHarness) -> dict[str, Any]:
    """The Patient/p1 sharing consent as the FHIR server holds it."""
    [on_server] = harness.on_server("Consent", R.consent_id(harness.run, "Patient/p1"))
    return on_server
