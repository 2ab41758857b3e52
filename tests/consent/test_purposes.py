"""The PurposeOfUse hierarchy matches HL7's v3-ActReason CodeSystem, and expands both ways."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from fhir_alliance.consent.purposes import (
    PURPOSE_OF_USE_PARENT,
    broader_purposes,
    narrower_purposes,
)
from fhir_alliance.terminology import PURPOSE_OF_USE_CODES, V3_ACT_REASON

ACT_REASON = (
    Path(__file__).resolve().parents[2]
    / "profiles"
    / "node_modules"
    / "hl7.terminology.r4"
    / "CodeSystem-v3-ActReason.json"
)


def _parents_in_code_system() -> dict[str, set[str]]:
    if not ACT_REASON.is_file():
        pytest.fail("needs profiles/node_modules (hl7.terminology.r4): run `make node`")
    system: dict[str, Any] = json.loads(ACT_REASON.read_text())
    assert system["url"] == V3_ACT_REASON and system["hierarchyMeaning"] == "is-a"
    parents: dict[str, set[str]] = {}

    def walk(concepts: Iterable[dict[str, Any]], parent: str | None) -> None:
        for concept in concepts:
            found = parents.setdefault(concept["code"], set())
            if parent is not None:
                found.add(parent)
            found.update(
                p["valueCode"] for p in concept.get("property", ()) if p["code"] == "subsumedBy"
            )
            walk(concept.get("concept", ()), concept["code"])

    walk(system["concept"], None)
    return parents


def test_every_relation_is_hl7s() -> None:
    """Each listed parent is the code's parent in v3-ActReason (PurposeOfUse for top codes)."""
    parents = _parents_in_code_system()
    for code, parent in PURPOSE_OF_USE_PARENT.items():
        assert parents[code] == {parent or "PurposeOfUse"}, code


def test_exactly_the_codes_a_consent_may_name() -> None:
    """The hierarchy lists the PurposeOfUse codes of terminology, no more and no fewer."""
    assert set(PURPOSE_OF_USE_PARENT) == PURPOSE_OF_USE_CODES


def test_expansion_both_ways() -> None:
    """TREAT reaches BTG downwards; BTG reaches TREAT upwards; other systems stay as they are."""
    treat, etreat, btg = ((V3_ACT_REASON, c) for c in ("TREAT", "ETREAT", "BTG"))
    assert {etreat, btg} <= narrower_purposes([treat])
    assert treat not in narrower_purposes([etreat])
    assert broader_purposes([btg]) == {btg, etreat, treat}
    other = ("urn:other", "TREAT")
    assert narrower_purposes([other]) == broader_purposes([other]) == {other}
