"""The decision use case: may ``recipient`` do ``action`` with ``patient``'s data for ``purpose``
at ``at``? Answered by the patient's stored consents (the same compiled engine the gate uses).

Deny by default: while any stored consent of the patient cannot be read, the answer is DENY with a
note saying so, never "no consent".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from fhir_alliance.consent import (
    ConsentDecision,
    DecisionOutcome,
    DecisionRequest,
    RequestActor,
)
from fhir_alliance.errors import InputError, Issue
from fhir_alliance.model.common import Coding, Identifier, Ref
from fhir_alliance.terminology import (
    CONSENT_ACTION,
    CONSENT_ACTION_CODES,
    PURPOSE_OF_USE_CODES,
    V3_ACT_REASON,
)
from fhir_alliance_service.store.interface import Store
from fhir_alliance_service.usecases.consents import engine_for_patient, patient_key
from fhir_alliance_service.usecases.references import IDENTIFIER_MESSAGE, identifier_issues

__all__ = ["PatientDecision", "decide_for_patient", "parse_party"]

#: A literal reference as the service accepts it: ``Type/id`` with a FHIR id.
_REFERENCE = re.compile(r"[A-Z][A-Za-z]{1,63}/[A-Za-z0-9\-.]{1,64}")


@dataclass(frozen=True, slots=True)
class PatientDecision:
    """The engine's decision, its explanation in words, and the stored consents it could not read."""

    decision: ConsentDecision
    explanation: str
    unreadable: tuple[str, ...] = ()


def _fail(path: str, message: str) -> InputError:
    return InputError(f"invalid input at {path}", issues=[Issue(path=path, message=message)])


def parse_party(text: str, *, path: str) -> Ref:
    """A party named as the service names them: a literal reference ``Type/id`` or an identifier
    token ``system|value``."""
    if "|" in text:
        identifier = Identifier.parse(text, path=path)
        if identifier_issues(identifier, path):
            raise _fail(path, IDENTIFIER_MESSAGE)
        return Ref(identifier=identifier)
    if not _REFERENCE.fullmatch(text):
        raise _fail(path, "expected a reference Type/id or an identifier system|value")
    return Ref(reference=text, type=text.partition("/")[0])


def decide_for_patient(
    store: Store,
    patient: str,
    recipient: str,
    purpose: str,
    *,
    action: str = "disclose",
    at: datetime,
) -> PatientDecision:
    """Decide from ``patient``'s stored consents; ``patient`` is the patient key (see
    :func:`~fhir_alliance_service.usecases.consents.patient_key`) in any spelling of its
    identifier. Raises :class:`InputError` at ``patient``, ``recipient``, ``purpose``, ``action``
    or ``at``."""
    issues: list[Issue] = []
    refs: dict[str, Ref] = {}
    for path, text in (("patient", patient), ("recipient", recipient)):
        try:
            refs[path] = parse_party(text, path=path)
        except InputError as exc:
            issues += exc.issues
    if purpose not in PURPOSE_OF_USE_CODES:
        issues.append(Issue(path="purpose", message="unknown PurposeOfUse code (v3-ActReason)"))
    if action not in CONSENT_ACTION_CODES:
        issues.append(Issue(path="action", message="unknown consent action code"))
    if at.tzinfo is None or at.utcoffset() is None:
        issues.append(Issue(path="at", message="the time needs a UTC offset"))
    if issues:
        raise InputError(f"invalid input at {', '.join(i.path for i in issues)}", issues=issues)
    request = DecisionRequest(
        patient=(refs["patient"],),
        actors=(RequestActor(reference=refs["recipient"]),),
        at=at,
        purposes=(Coding(system=V3_ACT_REASON, code=purpose),),
        action=Coding(system=CONSENT_ACTION, code=action),
    )
    consents = engine_for_patient(store, patient_key(refs["patient"]))
    decision = consents.engine.decide(request)
    if consents.unreadable:
        decision = ConsentDecision(
            outcome=DecisionOutcome.DENY,
            combining=decision.combining,
            notes=(
                f"{len(consents.unreadable)} stored consent(s) of this patient could not be read: "
                "denied until they are fixed",
            ),
        )
    return PatientDecision(
        decision=decision, explanation=decision.explain(), unreadable=consents.unreadable
    )
