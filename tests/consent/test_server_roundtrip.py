"""Consents stored on a real FHIR server, read back over every search page, decide as locally."""

from __future__ import annotations

import pytest

from fhir_alliance.client import FhirClient
from fhir_alliance.consent.decision import DecisionOutcome, DecisionRequest, RequestActor
from fhir_alliance.consent.directory import ActorDirectory
from fhir_alliance.consent.engine import ConsentEngine
from fhir_alliance.mapping.consent import R4, from_consent, to_consent
from fhir_alliance.model.common import Identifier, Ref
from tests.consent.builders import MRN, ORG_IDS, act, actor, consent, pou, resource, t
from tests.fhir_server.plugin import FhirTestServer


@pytest.mark.fhir_server
def test_decides_over_every_page(fhir_server: FhirTestServer) -> None:
    """Twelve consents read in pages of five (LEAP reads the first page only) decide exactly as
    the same records do locally, with actor and patient named by identifier."""
    fhir_server.track("Consent", "Patient", "Organization")
    run = fhir_server.run_tag["code"]
    mrn = Identifier(MRN, f"p-{run}")
    org_id = Identifier(ORG_IDS, f"urn:oid:2.16.840.1.113883.20.{abs(hash(run)) % 10**6}")
    with FhirClient(fhir_server.base_url) as client:
        patient = client.create(
            fhir_server.tagged({"resourceType": "Patient", "identifier": [mrn.to_fhir()]})
        )
        org = client.create(
            fhir_server.tagged({"resourceType": "Organization", "identifier": [org_id.to_fhir()]})
        )
        patient_ref = Ref(reference=f"Patient/{patient.id}")
        org_ref = Ref(reference=f"Organization/{org.id}")
        records = [
            consent(
                f"{run}-{n}",
                "deny" if n == 7 else "permit",
                date=f"2025-01-{n + 1:02d}",
                patient=patient_ref,
                actors=[actor(org_ref)],
                purposes=[pou("TREAT")],
                actions=[act("disclose")],
            )
            for n in range(12)
        ]
        for record in records:
            body = to_consent(record, version=R4)
            # Stored as a foreign Consent would be: profile conformance is the mapping's tests'
            # concern, and a remote server may not have our profiles loaded.
            body.get("meta", {}).pop("profile", None)
            client.create(fhir_server.tagged(body))
        pages = list(
            client.search_pages(
                "Consent",
                {
                    "patient": patient_ref.reference or "",
                    "_tag": fhir_server.run_tag_param,
                    "_count": "5",
                },
            )
        )
        read = [
            from_consent(e["resource"])
            for p in pages
            for e in p.get("entry", [])
            if e.get("search", {}).get("mode", "match") == "match"
        ]
        actors = [
            client.read("Patient", patient.id or ""),
            client.read("Organization", org.id or ""),
        ]
    assert len(pages) >= 3
    assert sorted(str(r.id) for r in read) == sorted(str(r.id) for r in records)
    request = DecisionRequest(
        patient=(Ref(identifier=mrn),),
        actors=(RequestActor(Ref(identifier=org_id)),),
        at=t("2025-06-01"),
        purposes=(pou("TREAT"),),
        action=act("disclose"),
        resource=resource(),
    )
    directory = ActorDirectory.from_resources(actors)
    remote = ConsentEngine(read, directory=directory).decide(request)
    local = ConsentEngine(records, directory=directory).decide(request)
    assert remote.outcome is DecisionOutcome.DENY
    assert (remote.outcome, remote.basis) == (local.outcome, local.basis)
    assert [b.consent.value for b in remote.basis] == [f"{run}-7"]
