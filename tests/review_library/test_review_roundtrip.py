"""Review (library, area b): odd but accepted values must still map to valid FHIR.

What the JSON loaders accept, the mappings must turn into resources a real validator accepts (the
test FHIR server with our profiles enforced); else the loader must refuse the value at its field.
A UTC offset with seconds (``+05:30:15``) is accepted by Python's ``fromisoformat`` and so by the
loaders, and written verbatim, but FHIR's dateTime allows only ``Z`` or ``±hh:mm``.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from fhir_alliance.errors import InputError
from fhir_alliance.mapping.consent import to_consent
from fhir_alliance.mapping.observation import to_observations
from fhir_alliance.schemas.consent import load_consent
from fhir_alliance.schemas.observations import load_record
from tests.fhir_server.plugin import FhirTestServer
from tests.review_library.foreign import example

OFFSET_WITH_SECONDS = "2026-11-20T15:50:00+05:30:15"
_JSON = {"Content-Type": "application/fhir+json"}


def _put(server: FhirTestServer, resource: dict[str, Any]) -> Any:
    return server.http.put(
        server.url(f"{resource['resourceType']}/{resource['id']}"),
        data=json.dumps(server.tagged(resource)),
        headers=_JSON,
    )


def test_observation_effective_with_an_offset_in_seconds(fhir_server: FhirTestServer) -> None:
    """An SRS administration dated with a seconds offset: refused at ``effective``, or every
    resource it maps to is accepted by the server."""
    data = copy.deepcopy(example("examples/observations/srs-administration.json"))
    data["effective"] = OFFSET_WITH_SECONDS
    try:
        record = load_record(data)
    except InputError as error:
        assert [issue.path for issue in error.issues] == ["effective"]
        return
    for resource in to_observations(record, version="4.0.1"):
        response = _put(fhir_server, resource)
        assert response.status_code in (200, 201), (
            resource.get("effectiveDateTime"),
            response.text[:600],
        )


def test_consent_date_with_an_offset_in_seconds(fhir_server: FhirTestServer) -> None:
    """A sharing consent given at a seconds offset: refused at ``date``, or its R4 Consent is
    accepted by the server."""
    data = copy.deepcopy(example("examples/consent/sharing.json"))
    data["date"] = "2025-03-01T10:15:00+01:00:30"
    data.pop("history", None)
    data.pop("verification", None)
    try:
        record = load_consent(data)
    except InputError as error:
        assert [issue.path for issue in error.issues] == ["date"]
        return
    resource = to_consent(record, version="4.0.1")
    response = _put(fhir_server, resource)
    assert response.status_code in (200, 201), (resource["dateTime"], response.text[:600])


@pytest.mark.parametrize("version", ["4.0.1", "5.0.0"])
def test_fhir_datetimes_we_write_match_the_fhir_grammar(version: str) -> None:
    """Without a server: the dateTime we write for such a record matches FHIR's dateTime regex
    (or the loader refused the value)."""
    fhir_datetime = re.compile(
        r"^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]"
        r"|3[0-1])(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3])"
        r":[0-5][0-9]|14:00)))?)?)?$"
    )
    data = copy.deepcopy(example("examples/observations/srs-administration.json"))
    data["effective"] = OFFSET_WITH_SECONDS
    try:
        record = load_record(data)
    except InputError:
        return
    written = to_observations(record, version=version)[0]["effectiveDateTime"]
    assert fhir_datetime.match(written), written
