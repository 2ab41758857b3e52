"""Outside review of the HTTP API (``/v1``): what a key reads and how input is handled. Real
components: the app from its factory on a migrated SQLite store and Flask's test client."""

from __future__ import annotations

import uuid
from typing import Any

from flask.testing import FlaskClient

from tests.review_console_notes_api.test_review_console import (
    NARRATIVE_MARKER,
    rupture_with_narrative,
)

Headers = dict[str, dict[str, str]]


def test_a_read_key_does_not_get_psychotherapy_narrative(
    client: FlaskClient, auth_headers: Headers
) -> None:
    """docs/console.md: "a `read` key (the one staff sign in with) gets session notes from
    `/v1/records` with their text withheld"; api/records.py: "Psychotherapy-note content
    (PSYTHPN) goes to no key: the service is no place to read it." A rupture's ``narrative`` is
    session narrative the library labels PSYTHPN, yet ``GET /v1/records/{id}`` and the patient's
    record list hand it verbatim to a ``read`` key."""
    rupture = rupture_with_narrative(uuid.uuid4().hex[:10])
    posted = client.post("/v1/records", json=rupture, headers=auth_headers["write"])
    assert posted.status_code == 201, posted.json
    record_id = posted.json["records"][0]["id"]
    one = client.get(f"/v1/records/{record_id}", headers=auth_headers["read"])
    listed = client.get(
        f"/v1/patients/{rupture['patient']['reference']}/records", headers=auth_headers["read"]
    )
    assert one.status_code == listed.status_code == 200
    read: list[Any] = [one.json["record"], *(r["record"] for r in listed.json["records"])]
    shown = [r.get("narrative") for r in read if NARRATIVE_MARKER in str(r.get("narrative"))]
    assert shown == [], f"a read key gets psychotherapy narrative: {shown}"
