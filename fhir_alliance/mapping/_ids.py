"""Deterministic FHIR resource ids derived from a record's business identifier.

Every mapper uses the same scheme, so that a record always lands on the same server id
(``PUT [type]/[id]`` is idempotent) and no two record kinds collide:
``uuid5(NAMESPACE_URL, CANONICAL_BASE + "|" + system + "|" + value + suffix)``.
"""

from __future__ import annotations

import uuid

from fhir_alliance.model.common import Identifier
from fhir_alliance.terminology import CANONICAL_BASE

__all__ = ["resource_id"]


def resource_id(identifier: Identifier, suffix: str = "") -> str:
    """The id of the resource carrying ``identifier``; ``suffix`` tells apart several resources
    made from one record (e.g. ``"/Permission"``). Pure: the same input always gives the same id."""
    name = f"{CANONICAL_BASE}|{identifier.system}|{identifier.value}{suffix}"
    return str(uuid.uuid5(uuid.NAMESPACE_URL, name))
