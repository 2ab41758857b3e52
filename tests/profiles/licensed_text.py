"""Finds wording of licensed instruments (WAI-SR, SRS, ORS) in FHIR artefacts (test helper).

Policy (docs/profiles.md): artefacts of these instruments ship structure only. Questionnaire items
carry no ``text`` or exactly the neutral placeholder ``Item <n>``; labels elsewhere (code displays,
definitions, designations, answer options) are short structural names (at most ten words, no
first-person wording, as item statements are written); no narrative ``text``. Concepts whose code
names one of these instruments (``wai-sr.3``, ``srs.total``) are checked in any CodeSystem or
ValueSet, even one that is not itself about a licensed instrument.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

#: The neutral placeholder allowed as Questionnaire.item.text.
PLACEHOLDER = re.compile(r"Item [1-9][0-9]*")
MAX_LABEL_WORDS = 10
FIRST_PERSON = re.compile(r"\b(I|me|my|mine|myself|we|us|our|ours)\b", re.IGNORECASE)
LABEL_KEYS = frozenset({"display", "definition", "valueString", "value", "text"})
_TOKEN = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


def _tokens(value: str) -> list[str]:
    return [t.lower() for t in _TOKEN.findall(value)]


def names_licensed_instrument(value: str) -> bool:
    """True when an identifier-like string (id, name, code, URL tail) names WAI-SR, SRS or ORS."""
    tokens = _tokens(value)
    if {"srs", "ors"} & set(tokens) or "waisr" in "".join(tokens):
        return True
    lowered = value.lower()
    return "session rating scale" in lowered or "outcome rating scale" in lowered


def is_licensed_instrument(resource: Mapping[str, Any]) -> bool:
    """True when id, name, url or title names WAI-SR, SRS or ORS."""
    for key in ("id", "name", "url", "title"):
        value = resource.get(key)
        if not isinstance(value, str):
            continue
        if key == "url":
            value = value.rstrip("/").rsplit("/", 1)[-1]
        if names_licensed_instrument(value):
            return True
    return False


def _label_problem(text: str) -> str | None:
    if FIRST_PERSON.search(text):
        return "first-person wording"
    if len(text.split()) > MAX_LABEL_WORDS:
        return f"more than {MAX_LABEL_WORDS} words"
    return None


def _walk_items(items: Any, path: str) -> Iterator[str]:
    if not isinstance(items, list):
        return
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            continue
        here = f"{path}[{index}]"
        text = item.get("text")
        if text is not None and not (isinstance(text, str) and PLACEHOLDER.fullmatch(text)):
            yield f"{here}.text: not absent and not the placeholder 'Item <n>'"
        for key, value in item.items():
            if key in ("item", "text"):
                continue
            yield from _walk_labels(value, f"{here}.{key}")
        yield from _walk_items(item.get("item"), f"{here}.item")


def _walk_labels(value: Any, path: str) -> Iterator[str]:
    if isinstance(value, Mapping):
        for key, child in value.items():
            child_path = f"{path}.{key}"
            if key in LABEL_KEYS and isinstance(child, str):
                problem = _label_problem(child)
                if problem:
                    yield f"{child_path}: {problem}"
            else:
                yield from _walk_labels(child, child_path)
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _walk_labels(child, f"{path}[{index}]")


def _walk_concepts(concepts: Any, path: str) -> Iterator[str]:
    """Concepts (CodeSystem.concept, ValueSet...include.concept, expansion.contains) whose code
    names a licensed instrument, with everything under them."""
    if not isinstance(concepts, list):
        return
    for index, concept in enumerate(concepts):
        if not isinstance(concept, Mapping):
            continue
        here = f"{path}[{index}]"
        code = concept.get("code")
        if isinstance(code, str) and names_licensed_instrument(code):
            yield from _walk_labels(dict(concept), here)
        else:
            for key in ("concept", "contains"):
                yield from _walk_concepts(concept.get(key), f"{here}.{key}")


def _concept_lists(resource: Mapping[str, Any], kind: str) -> Iterator[tuple[Any, str]]:
    yield resource.get("concept"), f"{kind}.concept"
    compose = resource.get("compose")
    if isinstance(compose, Mapping):
        for part in ("include", "exclude"):
            for index, entry in enumerate(compose.get(part) or []):
                if isinstance(entry, Mapping):
                    yield entry.get("concept"), f"{kind}.compose.{part}[{index}].concept"
    expansion = resource.get("expansion")
    if isinstance(expansion, Mapping):
        yield expansion.get("contains"), f"{kind}.expansion.contains"


def findings(resource: Mapping[str, Any]) -> list[str]:
    """Element paths (with the reason) that may carry licensed wording; empty when clean or when
    nothing in the resource is about a licensed instrument."""
    kind = resource.get("resourceType", "Resource")
    if not is_licensed_instrument(resource):
        return [
            finding
            for concepts, path in _concept_lists(resource, str(kind))
            for finding in _walk_concepts(concepts, path)
        ]
    found: list[str] = []
    if "text" in resource:
        found.append(f"{kind}.text: narrative on a licensed-instrument artefact")
    for key in ("item", "concept", "compose", "expansion"):
        if key == "item":
            found.extend(_walk_items(resource.get("item"), f"{kind}.item"))
        elif key in resource:
            found.extend(_walk_labels(resource[key], f"{kind}.{key}"))
    return found
