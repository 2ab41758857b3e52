"""Review (consent engine, deny by default): a security label of a code system the engine does not
know, whose code is an HL7 label code (``R`` under the value set's URL, ``PSYTHPN`` under an EHR's
own system), may mean that label: a missing fact. It meets deny provisions naming the label and
the explicit-permit rule of PSYTHPN and V; permits match labels as written."""

from __future__ import annotations

import dataclasses

from fhir_alliance.consent import ConsentEngine, DecisionOutcome
from fhir_alliance.consent.decision import RedactMode
from fhir_alliance.consent.engine import deny_label_keys
from fhir_alliance.consent.gate import disclosure_request
from fhir_alliance.model.common import Coding, Ref
from fhir_alliance.terminology import V3_ACT_CODE, V3_CONFIDENTIALITY
from tests.consent.builders import consent, label, prov, request, resource, t

EHR = Ref(reference="Organization/ehr")
#: The value set of confidentiality codes given as if it were their code system.
VALUE_SET = "http://terminology.hl7.org/ValueSet/v3-ConfidentialityClassification"
#: An EHR's own label system.
EHR_LABELS = "http://ehr.example/labels"


def _labelled(*labels: Coding, known: tuple[str, ...] = ()) -> object:
    """A resource carrying ``known`` HL7 labels (by code) and ``labels`` as given."""
    base = resource(labels=known)
    return dataclasses.replace(base, labels=(*base.labels, *labels))


def _ask(engine: ConsentEngine, *labels: Coding, known: tuple[str, ...] = ()) -> DecisionOutcome:
    res = _labelled(*labels, known=known)
    return engine.decide(request(EHR, res=res)).outcome  # type: ignore[arg-type]


def test_a_deny_on_r_meets_an_r_of_an_unknown_system() -> None:
    """A sharing permit with a nested deny for R content: a resource labelled R under the value
    set's URL (or an EHR's system) is denied, as one labelled with the HL7 system is; the label
    was read as some other label and the permit released it."""
    engine = ConsentEngine([consent("share", "permit", prov("deny", labels=[label("R")]))])
    assert _ask(engine, Coding(VALUE_SET, "R")) is DecisionOutcome.DENY
    assert _ask(engine, Coding(EHR_LABELS, "R")) is DecisionOutcome.DENY
    assert _ask(engine, known=("R",)) is DecisionOutcome.DENY
    # An opt-out scoped to HIV content at the root, beside a sharing permit.
    opt_out = consent("no-hiv", "deny", labels=[label("HIV")], date="2025-02-01")
    engine = ConsentEngine([consent("share", "permit"), opt_out])
    assert _ask(engine, Coding(EHR_LABELS, "HIV")) is DecisionOutcome.DENY
    assert _ask(engine, Coding(EHR_LABELS, "SUD")) is DecisionOutcome.PERMIT


def test_a_plain_permit_does_not_release_psythpn_or_v_of_an_unknown_system() -> None:
    """PSYTHPN and V content needs a permit naming the label; a plain sharing permit released
    it when the label came under another system. The answer says why in a note."""
    engine = ConsentEngine([consent("share", "permit")])
    for code in ("PSYTHPN", "V"):
        answer = engine.decide(request(EHR, res=_labelled(Coding(EHR_LABELS, code))))  # type: ignore[arg-type]
        assert answer.outcome is DecisionOutcome.DENY, answer.explain()
        assert any("another code system" in n and code in n for n in answer.notes)
        assert any("does not name" in n for n in answer.notes)


def test_a_permit_naming_psythpn_releases_psythpn_of_an_unknown_system() -> None:
    """A permit that meets the resource (by the R it carries) and names PSYTHPN releases it: it
    permits that content explicitly whichever it is."""
    engine = ConsentEngine(
        [consent("share", "permit", prov("permit", labels=[label("R"), label("PSYTHPN")]))]
    )
    assert _ask(engine, Coding(EHR_LABELS, "PSYTHPN"), known=("R",)) is DecisionOutcome.PERMIT
    # Named at the root, beside the HL7 label the resource also carries.
    engine = ConsentEngine([consent("share", "permit", labels=[label("PSYTHPN")])])
    assert _ask(engine, Coding(EHR_LABELS, "PSYTHPN"), known=("PSYTHPN",)) is DecisionOutcome.PERMIT


def test_a_permit_scoped_to_r_is_unchanged() -> None:
    """A permit scoped to R does not start releasing a resource whose only R is of another system
    (the label may mean something else), and does not stop releasing one with the HL7 R."""
    engine = ConsentEngine([consent("share-r", "permit", labels=[label("R")])])
    assert _ask(engine, Coding(VALUE_SET, "R")) is DecisionOutcome.NO_CONSENT
    assert _ask(engine, Coding(VALUE_SET, "R"), known=("R",)) is DecisionOutcome.PERMIT
    # Nested: the deny around it decides for the foreign R, the permit for the HL7 R.
    engine = ConsentEngine([consent("deny-but-r", "deny", prov("permit", labels=[label("R")]))])
    assert _ask(engine, Coding(EHR_LABELS, "R")) is DecisionOutcome.DENY
    assert _ask(engine, known=("R",)) is DecisionOutcome.PERMIT


def test_labels_of_unknown_systems_with_other_codes_behave_as_before() -> None:
    """A foreign label whose code is no HL7 label code (``psy`` in lower case, ``secret``) is no
    label the engine knows: no deny on PSY meets it and a plain permit releases it."""
    engine = ConsentEngine(
        [consent("share", "permit", prov("deny", labels=[label("PSY"), label("R")]))]
    )
    for code in ("psy", "secret", "r"):
        answer = engine.decide(request(EHR, res=_labelled(Coding(EHR_LABELS, code))))  # type: ignore[arg-type]
        assert answer.outcome is DecisionOutcome.PERMIT
        assert not any("another code system" in n for n in answer.notes)
    assert deny_label_keys([Coding(EHR_LABELS, "secret")]) == {(EHR_LABELS, "secret")}
    # Known systems spelt another way are those systems, not foreign ones.
    assert deny_label_keys([Coding("urn:oid:2.16.840.1.113883.5.25", "R")]) == {
        (V3_CONFIDENTIALITY, "R")
    }
    assert deny_label_keys([Coding(EHR_LABELS, "PSYTHPN")]) == {
        (EHR_LABELS, "PSYTHPN"),
        (V3_ACT_CODE, "PSYTHPN"),
    }


def test_the_gate_reads_a_foreign_label_the_same_way() -> None:
    """Through ``disclosure_request`` (the service's gate): the resource's foreign R meets the
    deny, its foreign V needs a permit naming V."""
    engine = ConsentEngine(
        [consent("share", "permit", prov("deny", labels=[label("R")]), actors=[])]
    )
    for system, code, outcome in ((VALUE_SET, "R", "deny"), (EHR_LABELS, "V", "deny")):
        observation = {
            "resourceType": "Observation",
            "id": "o1",
            "meta": {"security": [{"system": system, "code": code}]},
            "effectiveDateTime": "2025-05-01T10:00:00Z",
        }
        asked = disclosure_request(
            observation, patient="Patient/p1", recipient=EHR, purposes=["TREAT"], at=t("2025-06-01")
        )
        assert engine.decide(asked).outcome.value == outcome


def test_a_general_answer_redacts_by_label_codes_a_recipient_must_read_so() -> None:
    """Without a resource the answer redacts R and PSYTHPN by their HL7 codings; a resource whose
    labels meet those obligations as ``deny_label_keys`` reads them is denied when asked about,
    one that does not is permitted: the general answer never releases more."""
    engine = ConsentEngine([consent("share", "permit", prov("deny", labels=[label("R")]))])
    general = engine.decide(request(EHR))
    assert general.outcome is DecisionOutcome.PERMIT
    redacted = {
        (c.system, c.code)
        for o in general.obligations
        if o.mode is RedactMode.MATCHING
        for c in o.labels
    }
    for labels in (
        [Coding(VALUE_SET, "R")],
        [Coding(EHR_LABELS, "PSYTHPN")],
        [Coding(EHR_LABELS, "x")],
    ):
        survives = deny_label_keys(labels).isdisjoint(redacted)
        outcome = _ask(engine, *labels)
        assert (outcome is DecisionOutcome.PERMIT) is survives, (labels, outcome)


def test_a_general_release_of_psythpn_leaves_psythpn_of_an_unknown_system_redacted() -> None:
    """A plain sharing permit beside a permit scoped to PSYTHPN content: asked about content
    labelled PSYTHPN under an EHR's own system, the engine denies it (the scoped permit reads
    labels as written and does not meet it; the plain one does not name PSYTHPN). No obligation
    says "PSYTHPN of other systems only", so the general answer keeps redacting PSYTHPN (under
    every system: more than needed, never less) and says why. Before, it dropped the redaction
    and that content survived every obligation."""
    engine = ConsentEngine(
        [consent("share", "permit"), consent("psy", "permit", labels=[label("PSYTHPN")])]
    )
    general = engine.decide(request(EHR))
    assert general.outcome is DecisionOutcome.PERMIT
    redacts_psythpn = any(
        o.mode is RedactMode.MATCHING and any(c.code == "PSYTHPN" for c in o.labels)
        for o in general.obligations
    )
    exact = engine.decide(request(EHR, res=_labelled(Coding(EHR_LABELS, "PSYTHPN"))))  # type: ignore[arg-type]
    assert redacts_psythpn or exact.outcome is DecisionOutcome.PERMIT, general.explain()
    assert any("as labelled under HL7's code system" in n for n in general.notes)
    # The content labelled PSYTHPN as written is still released when asked about.
    assert _ask(engine, known=("PSYTHPN",)) is DecisionOutcome.PERMIT


def test_a_general_release_of_psythpn_stays_where_it_is_whole() -> None:
    """Where what the general answer releases cannot hold PSYTHPN of another system alone, the
    release stays: a deny scoped to PSYTHPN reads the label as ``deny_label_keys`` does, so the
    permit inside it releases that content too; a consent that permits only PSYTHPN content
    keeps it as written (``redact-all-except``), which removes PSYTHPN of other systems."""
    within_deny = ConsentEngine(
        [consent("share", "permit", prov("deny", prov("permit"), labels=[label("PSYTHPN")]))]
    )
    only = ConsentEngine([consent("psy", "permit", labels=[label("PSYTHPN")])])
    for engine, foreign in (
        (within_deny, DecisionOutcome.PERMIT),
        (only, DecisionOutcome.NO_CONSENT),
    ):
        general = engine.decide(request(EHR))
        assert general.outcome is DecisionOutcome.PERMIT
        redacted = [
            c.code for o in general.obligations if o.mode is RedactMode.MATCHING for c in o.labels
        ]
        assert redacted == ["V"], general.explain()
        assert _ask(engine, Coding(EHR_LABELS, "PSYTHPN")) is foreign
        assert _ask(engine, known=("PSYTHPN",)) is DecisionOutcome.PERMIT
    kept = [c.code for o in only.decide(request(EHR)).obligations for c in o.labels]
    assert kept == ["PSYTHPN", "V"]  # keep PSYTHPN as written, then redact V
