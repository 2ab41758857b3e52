"""Domain dataclasses: what the library and the service talk about, independent of FHIR versions."""

from fhir_alliance.model.common import Coding, Identifier, Ref

__all__ = ["Coding", "Identifier", "Ref"]
