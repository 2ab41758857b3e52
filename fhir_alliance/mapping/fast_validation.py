"""Compiled validators for the resources we emit (Observation, Provenance), R4 and R5: the official
FHIR JSON schema of each version (the part these resources reach, ``data/fhir-r4-observation.schema.json``
and ``data/fhir-r5-observation.schema.json``, extracted by ``profiles/tools/extract_fhir_json_schema.py``)
compiled to Python code by ``fastjsonschema``.

They check element names (unknown elements are refused), JSON types, primitive formats (dates, ids,
codes, strings without control characters), code values of required bindings in the base spec (e.g.
``Observation.status``) and required elements (``min >= 1``). They do not check invariants or our
profiles; the test FHIR server does that in the test suite. Errors never carry the offending value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from functools import cache
from importlib import resources
from typing import Any

import fastjsonschema

from fhir_alliance.errors import Issue, ProfileViolation

__all__ = ["FAST_RESOURCE_TYPES", "FAST_VERSIONS", "validate_fast", "validate_r4_fast"]

#: Resource types the compiled validators cover (others fall back to the model validator).
FAST_RESOURCE_TYPES = frozenset({"Observation", "Provenance"})

#: FHIR versions with a compiled validator, and the schema file of each.
FAST_VERSIONS = {
    "4.0.1": "fhir-r4-observation.schema.json",
    "5.0.0": "fhir-r5-observation.schema.json",
}
_RELEASES = {"4.0.1": "R4", "5.0.0": "R5"}


@cache
def _schema(version: str = "4.0.1") -> dict[str, Any]:
    text = (
        resources.files("fhir_alliance.mapping")
        .joinpath("data", FAST_VERSIONS[version])
        .read_text(encoding="utf-8")
    )
    loaded: dict[str, Any] = json.loads(text)
    return loaded


#: In the code fastjsonschema generates, each array item's name for error paths is built with
#: ``"....[{data__x_x}]".format(**locals())``: a dict of every local variable of a large validation
#: function, per item, whether or not an error follows. That was most of the time spent validating
#: an Observation. Such a literal whose placeholders are plain names is the same f-string, which
#: reads only the names it uses; any other literal is left as generated.
_FORMAT_LOCALS = re.compile(
    r'"((?:[^"\\{}]|\{[A-Za-z_][A-Za-z0-9_]*\})*)"\.format\(\*\*locals\(\)\)'
)


def _without_locals_format(code: str) -> str:
    return _FORMAT_LOCALS.sub(lambda match: f'f"{match.group(1)}"', code)


@cache
def _compiled(resource_type: str, version: str = "4.0.1") -> Callable[[Any], Any]:
    schema = {**_schema(version), "$ref": f"#/definitions/{resource_type}"}
    code = _without_locals_format(fastjsonschema.compile_to_code(schema, use_formats=False))
    namespace: dict[str, Any] = {}
    # fastjsonschema.compile() runs its generated code the same way.
    exec(compile(code, f"<FHIR {version} {resource_type} validator>", "exec"), namespace)  # noqa: S102
    validator: Callable[[Any], Any] = namespace["validate"]
    return validator


def _element_path(resource_type: str, path: list[Any]) -> str:
    out = resource_type
    for part in path[1:]:  # path[0] is "data"; array indices come as digit strings
        text = str(part)
        out += f"[{text}]" if text.isdigit() else f".{text}"
    return out


def validate_fast(resource: Mapping[str, Any], *, version: str = "4.0.1") -> None:
    """Raise :class:`ProfileViolation` unless ``resource`` (Observation or Provenance) is valid
    JSON of FHIR ``version`` (4.0.1 or 5.0.0)."""
    resource_type = resource.get("resourceType")
    if resource_type not in FAST_RESOURCE_TYPES:
        raise ProfileViolation("not a resource type of the fast validator", element="resourceType")
    if version not in FAST_VERSIONS:
        raise ProfileViolation("no compiled validator for this FHIR version", element="(version)")
    try:
        _compiled(str(resource_type), version)(resource)
    except fastjsonschema.JsonSchemaValueException as exc:
        element = _element_path(str(resource_type), list(exc.path or []))
        message = f"not valid FHIR {_RELEASES[version]} (JSON schema rule '{exc.rule}')"
        raise ProfileViolation(
            message, issues=[Issue(path=element, message=message, code="structure")]
        ) from None


def validate_r4_fast(resource: Mapping[str, Any]) -> None:
    """Raise :class:`ProfileViolation` unless ``resource`` (Observation or Provenance) is valid R4 JSON."""
    validate_fast(resource, version="4.0.1")
