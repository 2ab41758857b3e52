"""fhir-alliance: therapeutic-alliance measures and client consents over FHIR (R4 and R5).

The public API is what ``__all__`` lists; everything else may change without notice.
"""

from fhir_alliance.errors import (
    AuthError,
    ConflictError,
    FhirAllianceError,
    InputError,
    InvalidResponseError,
    Issue,
    MappingError,
    MultipleMatchesError,
    NotFoundError,
    PreconditionFailedError,
    ProfileViolation,
    ServerError,
    TransientServerError,
    TransportError,
    UnprocessableError,
    UnsafeLinkError,
    VersionConflictError,
)
from fhir_alliance.model.common import Coding, Identifier, Ref
from fhir_alliance.terminology import CANONICAL_BASE

__version__ = "0.1.0.dev0"

__all__ = [
    "CANONICAL_BASE",
    "AuthError",
    "Coding",
    "ConflictError",
    "FhirAllianceError",
    "Identifier",
    "InputError",
    "InvalidResponseError",
    "Issue",
    "MappingError",
    "MultipleMatchesError",
    "NotFoundError",
    "PreconditionFailedError",
    "ProfileViolation",
    "Ref",
    "ServerError",
    "TransientServerError",
    "TransportError",
    "UnprocessableError",
    "UnsafeLinkError",
    "VersionConflictError",
    "__version__",
]
