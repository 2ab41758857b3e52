"""Outside review of the clinic console: what a signed-in ``read`` session (reception staff) is
shown. Real components: the app from its factory on a migrated SQLite store, Flask's test client,
the console's own sign-in form."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from tests.service.console.test_views import sign_in

ROOT = Path(__file__).resolve().parents[2]
#: Words only the rupture's session narrative holds.
NARRATIVE_MARKER = "private-narrative-words"


def rupture_with_narrative(run: str) -> dict[str, Any]:
    """The docs' rupture example (docs/observations.md) with a session narrative: the library
    labels the resource PSYTHPN (psychotherapy-note content)."""
    rupture: dict[str, Any] = json.loads(
        (ROOT / "examples" / "observations" / "rupture.json").read_text(encoding="utf-8")
    )
    rupture["id"] = f"https://clinic.example.org/alliance-records|rupture-{run}"
    rupture["narrative"] = f"Client went quiet when we spoke of {NARRATIVE_MARKER}."
    return rupture


def _post(client: FlaskClient, keys: dict[str, str], body: Any) -> str:
    answer = client.post(
        "/v1/records", json=body, headers={"Authorization": f"Bearer {keys['write']}"}
    )
    assert answer.status_code == 201, answer.json
    record_id: str = answer.json["records"][0]["id"]
    return record_id


def test_a_read_session_is_never_shown_psychotherapy_narrative(
    app: Flask, api_keys: dict[str, str]
) -> None:
    """docs/console.md withholds session-note text from every console session because
    "Psychotherapy-note content leaves only with an explicit permit for PSYTHPN (45 CFR 164.508);
    a console session is no such permit", and reception signs in with ``read``. A rupture's
    ``narrative`` is session narrative that the library itself labels PSYTHPN
    (docs/observations.md). The record page shows the mapped Observation, whose ``note`` carries
    the narrative verbatim, to a ``read`` session: it must be withheld like a note's text."""
    client = app.test_client()
    record_id = _post(client, api_keys, rupture_with_narrative(uuid.uuid4().hex[:10]))
    assert sign_in(client, api_keys["read"]).status_code == 303
    page = client.get(f"/console/records/{record_id}")
    assert page.status_code == 200
    assert "PSYTHPN" in page.text  # the page shows the resource the library labelled
    shown = [line.strip() for line in page.text.splitlines() if NARRATIVE_MARKER in line]
    assert shown == [], f"a read session is shown psychotherapy narrative: {shown}"
