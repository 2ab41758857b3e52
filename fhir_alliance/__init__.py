"""fhir-alliance: therapeutic-alliance measures and client consents over FHIR (R4 and R5).

The public API is what ``__all__`` lists; everything else may change without notice. The
subpackages have public APIs of their own: ``fhir_alliance.instruments`` (scoring),
``fhir_alliance.mapping`` (``observation.MAPPER``, ``consent.MAPPER``, ``note.MAPPER``), ``fhir_alliance.schemas``,
``fhir_alliance.consent`` (the decision engine), ``fhir_alliance.client`` and
``fhir_alliance.profiles``.
"""

from fhir_alliance._version import __version__
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
