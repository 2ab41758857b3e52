"""Every JSON example in docs/consent.md loads, and the docs show each shipped example verbatim."""

from __future__ import annotations

import json
import re
from pathlib import Path

from fhir_alliance.schemas.consent import load_consent_records

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "consent.md"


def _blocks() -> list[object]:
    return [json.loads(b) for b in re.findall(r"```json\n(.*?)```", DOC.read_text(), re.S)]


def test_every_json_block_in_the_docs_loads() -> None:
    """All consent and revocation blocks load together (revocations after their consents)."""
    blocks = _blocks()
    assert len(blocks) >= 7
    consents = [b for b in blocks if isinstance(b, dict) and b.get("kind") == "consent"]
    revocations = [b for b in blocks if isinstance(b, dict) and b.get("kind") != "consent"]
    assert len(load_consent_records([*consents, *revocations])) == len(consents)


def test_docs_show_every_shipped_example() -> None:
    """Each file under examples/consent/ appears in the docs unchanged."""
    blocks = _blocks()
    for path in (ROOT / "examples" / "consent").rglob("*.json"):
        assert json.loads(path.read_text()) in blocks, path.name
