"""Collection Bundles of mapped resources, whose references resolve inside the Bundle.

FHIR resolves a reference in a Bundle against the entries' ``fullUrl``: a relative reference
(``Observation/…``) resolves only against a RESTful ``fullUrl`` (``base/Observation/…``), and an
entry identified by ``urn:uuid:…`` is found only by that URN (R4 Bundle, "Resolving references in
Bundles"). So :func:`collection_bundle` either

* takes the server's ``base_url``: every ``fullUrl`` is ``base/Type/id`` and references stay
  relative, as the mappers wrote them; or
* without one, gives every entry ``urn:uuid:{id}`` (our ids are UUIDs) and rewrites each reference
  to a resource of the Bundle (``hasMember``, ``Provenance.target``, ``derivedFrom`` …) to that URN.
  References to resources outside the Bundle (the patient, the encounter) are left as they are.

:func:`bundle_resources` undoes the rewrite when a Bundle is read back, so the mappers always see
``Type/id`` references. Pure: nothing here generates an id or reads a clock.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from fhir_alliance.errors import InputError, Issue

__all__ = ["bundle_resources", "collection_bundle"]


def _urn(resource: Mapping[str, Any]) -> str:
    resource_id = str(resource["id"])
    try:
        return f"urn:uuid:{uuid.UUID(resource_id)}"
    except ValueError:  # a foreign id: a stable UUID derived from it
        name = f"{resource['resourceType']}/{resource_id}"
        return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, name)}"


def _relative(resource: Mapping[str, Any]) -> str:
    return f"{resource['resourceType']}/{resource['id']}"


def _rewrite(value: Any, references: Mapping[str, str]) -> Any:
    """A copy of ``value`` with every ``reference`` string found in ``references`` replaced."""
    if isinstance(value, Mapping):
        out = {key: _rewrite(item, references) for key, item in value.items()}
        reference = out.get("reference")
        if isinstance(reference, str) and reference in references:
            out["reference"] = references[reference]
        return out
    if isinstance(value, list):
        return [_rewrite(item, references) for item in value]
    return value


def collection_bundle(
    resources: Sequence[Mapping[str, Any]], *, base_url: str | None = None
) -> dict[str, Any]:
    """A ``collection`` Bundle of ``resources`` (each needs ``resourceType`` and ``id``), with a
    ``fullUrl`` per entry and references among them resolvable inside the Bundle."""
    for index, resource in enumerate(resources):
        if not isinstance(resource.get("resourceType"), str) or not resource.get("id"):
            message = "a resource in a collection Bundle needs resourceType and id"
            raise InputError(message, issues=[Issue(path=f"entry[{index}]", message=message)])
    if base_url is not None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
            message = "the base URL must be an absolute http(s) URL without a query"
            raise InputError(message, issues=[Issue(path="base_url", message=message)])
        base = base_url.rstrip("/")
        entries = [{"fullUrl": f"{base}/{_relative(r)}", "resource": r} for r in resources]
    else:
        urns = {_relative(r): _urn(r) for r in resources}
        entries = [
            {"fullUrl": urns[_relative(r)], "resource": _rewrite(r, urns)} for r in resources
        ]
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def bundle_resources(bundle: Mapping[str, Any], *, source: str = "Bundle") -> list[Any]:
    """The resources of a Bundle's entries, with references to another entry's ``fullUrl``
    rewritten to that entry's ``Type/id``. An entry without a resource object is an error."""
    entries = bundle.get("entry")
    if entries is None:
        return []
    if not isinstance(entries, list):
        message = "Bundle.entry must be an array"
        raise InputError(message, issues=[Issue(path=f"{source}.entry", message=message)])
    resources = [e.get("resource") if isinstance(e, Mapping) else None for e in entries]
    missing = [i for i, resource in enumerate(resources) if not isinstance(resource, Mapping)]
    if missing:
        message = "a Bundle entry without a resource object"
        issues = [Issue(path=f"{source}.entry[{i}].resource", message=message) for i in missing]
        raise InputError.from_issues(issues)
    references: dict[str, str] = {}
    for entry, resource in zip(entries, resources, strict=True):
        full_url = entry.get("fullUrl") if isinstance(entry, Mapping) else None
        if (
            isinstance(full_url, str)
            and isinstance(resource, Mapping)
            and isinstance(resource.get("resourceType"), str)
            and isinstance(resource.get("id"), str)
        ):
            relative = _relative(resource)
            if full_url != relative:
                references[full_url] = relative
    if not references:
        return resources
    return [_rewrite(r, references) for r in resources]
