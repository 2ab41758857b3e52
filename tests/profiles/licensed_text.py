"""Finds wording of licensed instruments (WAI-SR, SRS, ORS) in FHIR artefacts (test helper).

Policy (docs/profiles.md): artefacts of these instruments ship structure only. Questionnaire items
carry no ``text`` or exactly the neutral placeholder ``Item <n>``; labels elsewhere (code displays,
definitions, designations, answer options) are short structural names (at most six words, no
first-person wording, as item statements are written); no narrative ``text``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

#: The neutral placeholder allowed as Questionnaire.item.text.
PLACEHOLDER = re.compile(r"Item [1-9][0-9]*")
MAX_LABEL_WORDS = 6
FIRST_PERSON = re.compile(r"\b(I|me|my|mine|myself|we|us|our|ours)\b", re.IGNORECASE)
LABEL_KEYS = frozenset({"display", "definition", "valueString", "value", "text"})
_TOKEN = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


def _tokens(value: str) -> list[str]:
    return [t.lower() for t in _TOKEN.findall(value)]


def is_licensed_instrument(resource: Mapping[str, Any]) -> bool:
    """True when id, name, url or title names WAI-SR, SRS or ORS."""
    for key in ("id", "name", "url", "title"):
        value = resource.get(key)
        if not isinstance(value, str):
            continue
        if key == "url":
            value = value.rstrip("/").rsplit("/", 1)[-1]
        tokens = _tokens(value)
        joined = "".join(tokens)
        if {"srs", "ors"} & set(tokens) or "waisr" in joined:
            return True
        lowered = value.lower()
        if "session rating scale" in lowered or "outcome rating scale" in lowered:
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


def findings(resource: Mapping[str, Any]) -> list[str]:
    """Element paths (with the reason) that may carry licensed wording; empty when clean or when
    the resource is not about a licensed instrument."""
    if not is_licensed_instrument(resource):
        return []
    kind = resource.get("resourceType", "Resource")
    found: list[str] = []
    if "text" in resource:
        found.append(f"{kind}.text: narrative on a licensed-instrument artefact")
    for key in ("item", "concept", "compose", "expansion"):
        if key == "item":
            found.extend(_walk_items(resource.get("item"), f"{kind}.item"))
        elif key in resource:
            found.extend(_walk_labels(resource[key], f"{kind}.{key}"))
    return found
