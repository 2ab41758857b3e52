"""fhir-alliance: therapeutic-alliance measures and client consents over FHIR (R4 and R5).

The public API is what ``__all__`` lists; everything else may change without notice. The
subpackages have public APIs of their own: ``fhir_alliance.instruments`` (scoring),
``fhir_alliance.mapping`` (``observation.MAPPER``, ``consent.MAPPER``, ``note.MAPPER``), ``fhir_alliance.schemas``,
``fhir_alliance.consent`` (the decision engine), ``fhir_alliance.client`` and
``fhir_alliance.profiles``.
"""

import logging as _logging
import typing as _typing
from importlib import import_module as _import_module

from fhir_alliance._version import __version__

# Where the library's log records go is the embedding application's choice: without a handler of
# its own here, an application that set up no logging would have Python's last-resort handler
# print the library's warnings on its stderr. The ``fhir-alliance`` command shows them itself
# (``fhir_alliance.cli``).
_logging.getLogger(__name__).addHandler(_logging.NullHandler())

if _typing.TYPE_CHECKING:
    from fhir_alliance.client import FhirClient, SmartBackendAuth
    from fhir_alliance.consent import (
        ActorDirectory,
        CombiningRule,
        ConsentDecision,
        ConsentEngine,
        DecisionOutcome,
        DecisionRequest,
        RedactObligation,
        RequestActor,
        RequestedResource,
    )
    from fhir_alliance.consent.gate import disclosure_request
    from fhir_alliance.errors import (
        ArtefactNotFoundError,
        AuthError,
        ConflictError,
        FhirAllianceError,
        InputError,
        InvalidResponseError,
        Issue,
        LimitExceededError,
        MappingError,
        MultipleMatchesError,
        NotFoundError,
        PreconditionFailedError,
        ProfilesPackageError,
        ProfileViolation,
        ResponseTooLargeError,
        ServerError,
        TransientServerError,
        TransportError,
        UnprocessableError,
        UnsafeLinkError,
        VersionConflictError,
    )
    from fhir_alliance.model.common import Coding, Identifier, Ref
    from fhir_alliance.model.consent import (
        ConsentKind,
        ConsentRecord,
        ConsentRevocation,
        ConsentStatus,
        Decision,
        Provision,
        apply_revocation,
    )
    from fhir_alliance.model.notes import AiDrafting, NoteCategory, NoteStatus, SessionNote
    from fhir_alliance.model.observations import (
        AutomatedRater,
        DimensionRating,
        InstrumentAdministration,
        Rater,
        RaterRole,
        RepairEvent,
        RuptureEvent,
    )
    from fhir_alliance.terminology import CANONICAL_BASE

#: Where each public name lives: imported on first use (PEP 562), so that ``import fhir_alliance``
#: and the CLI's start-up stay fast (the FHIR client, JWT and the consent engine are heavy).
_LAZY = {
    "FhirClient": "fhir_alliance.client",
    "SmartBackendAuth": "fhir_alliance.client",
    "ActorDirectory": "fhir_alliance.consent",
    "CombiningRule": "fhir_alliance.consent",
    "ConsentDecision": "fhir_alliance.consent",
    "ConsentEngine": "fhir_alliance.consent",
    "DecisionOutcome": "fhir_alliance.consent",
    "DecisionRequest": "fhir_alliance.consent",
    "RedactObligation": "fhir_alliance.consent",
    "RequestActor": "fhir_alliance.consent",
    "RequestedResource": "fhir_alliance.consent",
    "disclosure_request": "fhir_alliance.consent.gate",
    "ArtefactNotFoundError": "fhir_alliance.errors",
    "AuthError": "fhir_alliance.errors",
    "ConflictError": "fhir_alliance.errors",
    "FhirAllianceError": "fhir_alliance.errors",
    "InputError": "fhir_alliance.errors",
    "InvalidResponseError": "fhir_alliance.errors",
    "Issue": "fhir_alliance.errors",
    "LimitExceededError": "fhir_alliance.errors",
    "MappingError": "fhir_alliance.errors",
    "MultipleMatchesError": "fhir_alliance.errors",
    "NotFoundError": "fhir_alliance.errors",
    "PreconditionFailedError": "fhir_alliance.errors",
    "ProfilesPackageError": "fhir_alliance.errors",
    "ProfileViolation": "fhir_alliance.errors",
    "ResponseTooLargeError": "fhir_alliance.errors",
    "ServerError": "fhir_alliance.errors",
    "TransientServerError": "fhir_alliance.errors",
    "TransportError": "fhir_alliance.errors",
    "UnprocessableError": "fhir_alliance.errors",
    "UnsafeLinkError": "fhir_alliance.errors",
    "VersionConflictError": "fhir_alliance.errors",
    "Coding": "fhir_alliance.model.common",
    "Identifier": "fhir_alliance.model.common",
    "Ref": "fhir_alliance.model.common",
    "ConsentKind": "fhir_alliance.model.consent",
    "ConsentRecord": "fhir_alliance.model.consent",
    "ConsentRevocation": "fhir_alliance.model.consent",
    "ConsentStatus": "fhir_alliance.model.consent",
    "Decision": "fhir_alliance.model.consent",
    "Provision": "fhir_alliance.model.consent",
    "apply_revocation": "fhir_alliance.model.consent",
    "AiDrafting": "fhir_alliance.model.notes",
    "NoteCategory": "fhir_alliance.model.notes",
    "NoteStatus": "fhir_alliance.model.notes",
    "SessionNote": "fhir_alliance.model.notes",
    "AutomatedRater": "fhir_alliance.model.observations",
    "DimensionRating": "fhir_alliance.model.observations",
    "InstrumentAdministration": "fhir_alliance.model.observations",
    "Rater": "fhir_alliance.model.observations",
    "RaterRole": "fhir_alliance.model.observations",
    "RepairEvent": "fhir_alliance.model.observations",
    "RuptureEvent": "fhir_alliance.model.observations",
    "CANONICAL_BASE": "fhir_alliance.terminology",
}

__all__ = [
    "CANONICAL_BASE",
    "ActorDirectory",
    "AiDrafting",
    "ArtefactNotFoundError",
    "AuthError",
    "AutomatedRater",
    "Coding",
    "CombiningRule",
    "ConflictError",
    "ConsentDecision",
    "ConsentEngine",
    "ConsentKind",
    "ConsentRecord",
    "ConsentRevocation",
    "ConsentStatus",
    "Decision",
    "DecisionOutcome",
    "DecisionRequest",
    "DimensionRating",
    "FhirAllianceError",
    "FhirClient",
    "Identifier",
    "InputError",
    "InstrumentAdministration",
    "InvalidResponseError",
    "Issue",
    "LimitExceededError",
    "MappingError",
    "MultipleMatchesError",
    "NoteCategory",
    "NoteStatus",
    "NotFoundError",
    "PreconditionFailedError",
    "ProfileViolation",
    "ProfilesPackageError",
    "Provision",
    "Rater",
    "RaterRole",
    "RedactObligation",
    "Ref",
    "RepairEvent",
    "RequestActor",
    "RequestedResource",
    "ResponseTooLargeError",
    "RuptureEvent",
    "ServerError",
    "SessionNote",
    "SmartBackendAuth",
    "TransientServerError",
    "TransportError",
    "UnprocessableError",
    "UnsafeLinkError",
    "VersionConflictError",
    "__version__",
    "apply_revocation",
    "disclosure_request",
]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fhir_alliance' has no attribute {name!r}")
    value: object = getattr(_import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
