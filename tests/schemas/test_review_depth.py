"""Review finding 6: a consent nested too deep is an InputError naming where, never a RecursionError.

The JSON form accepts provisions nested :data:`MAX_PROVISION_DEPTH` (32) levels below the root
provision, what the engine compiles; deeper nesting is refused before any recursive loader sees it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fhir_alliance.consent import ConsentEngine
from fhir_alliance.consent import engine as engine_module
from fhir_alliance.errors import InputError
from fhir_alliance.mapping import consent as mapping_module
from fhir_alliance.schemas.consent import MAX_PROVISION_DEPTH, dump_consent, load_consent

V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


def deep_consent(levels: int) -> dict[str, Any]:
    """A consent whose provisions nest ``levels`` deep below the root (as the reviewer's mk.py),
    built without recursion."""
    root: dict[str, Any] = {}
    node = root
    for i in range(levels):
        child = {
            "type": "deny" if i % 2 == 0 else "permit",
            "security_labels": [{"system": V3_ACT_CODE, "code": "PSY"}],
        }
        node["provisions"] = [child]
        node = child
    return {
        "kind": "consent",
        "id": "https://c.example|deep",
        "consent_kind": "sharing",
        "patient": {"reference": "Patient/p1"},
        "status": "active",
        "decision": "permit",
        "date": "2025-03-01T10:00:00+00:00",
        "policy_basis": [{"uri": "https://c.example/pol"}],
        "provision": root,
    }


def _too_deep_path(levels: int) -> str:
    return "provision" + ".provisions.0" * levels


def test_the_limits_agree() -> None:
    """The JSON form, the FHIR readers and the engine use one limit."""
    assert MAX_PROVISION_DEPTH == engine_module.MAX_PROVISION_DEPTH == 32
    assert mapping_module.MAX_PROVISION_DEPTH == MAX_PROVISION_DEPTH


def test_the_limit_itself_loads_and_compiles() -> None:
    """32 levels load, dump back the same and compile in the engine."""
    record = load_consent(deep_consent(MAX_PROVISION_DEPTH))
    assert load_consent(dump_consent(record)) == record
    ConsentEngine([record])


@pytest.mark.parametrize("levels", [MAX_PROVISION_DEPTH + 1, 100, 400, 5000])
def test_deeper_nesting_is_an_input_error_naming_where(levels: int) -> None:
    """33, 100, 400 and 5000 levels: one issue at the first provision too deep (was a
    RecursionError from the compiled loader and then marshmallow, from about 100 levels)."""
    with pytest.raises(InputError) as caught:
        load_consent(deep_consent(levels), prefix="3")
    [issue] = caught.value.issues
    assert issue.path == "3." + _too_deep_path(MAX_PROVISION_DEPTH + 1)
    assert "nested deeper than 32 levels" in issue.message


def test_the_check_looks_at_every_branch() -> None:
    """A deep branch after a shallow one is found too."""
    data = deep_consent(MAX_PROVISION_DEPTH + 1)
    data["provision"]["provisions"].insert(0, {"type": "deny"})
    with pytest.raises(InputError) as caught:
        load_consent(data)
    [issue] = caught.value.issues
    assert issue.path == "provision.provisions.1" + ".provisions.0" * MAX_PROVISION_DEPTH


def test_malformed_provisions_are_still_worded_by_the_schema() -> None:
    """The depth check passes over what is not a provision list; the schema names the error."""
    data = deep_consent(2)
    data["provision"]["provisions"][0]["provisions"] = "x"
    with pytest.raises(InputError) as caught:
        load_consent(data)
    assert {i.path for i in caught.value.issues} == {"provision.provisions.0.provisions"}


@pytest.mark.parametrize("levels", [100, 400, 5000])
def test_map_refuses_a_deep_consent_without_a_traceback(tmp_path: Path, levels: int) -> None:
    """``fhir-alliance map deep.json`` says what is wrong, exit code 1, no traceback. At 5000
    levels the JSON reader already refuses the text (nested too deeply for it)."""
    if levels == 5000:
        data = deep_consent(0)
        del data["provision"]  # json.dumps itself cannot write 5000 levels: the text by hand
        text = json.dumps(data)[:-1] + ', "provision": ' + _nested_text(levels) + "}"
    else:
        text = json.dumps(deep_consent(levels))
    path = tmp_path / "deep.json"
    path.write_text(text)
    done = subprocess.run(
        [sys.executable, "-m", "fhir_alliance", "map", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("error: ")
    reason = "JSON nested too deeply" if levels == 5000 else "nested deeper than 32 levels"
    assert reason in done.stderr


def _nested_text(levels: int) -> str:
    opening = '{"type": "deny", "provisions": [' * levels
    return '{"provisions": [' + opening + '{"type": "deny"}' + "]}" * levels + "]}"
