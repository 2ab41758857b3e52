"""Fixtures for the profiles tests: a hand-made package directory the loader reads instead of the
committed one."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhir_alliance import profiles, terminology

WriteResource = Callable[[dict[str, Any]], Path]


def _clear_caches() -> None:
    profiles._package.cache_clear()
    profiles.package_info.cache_clear()
    profiles._expand.cache_clear()
    terminology._codes.cache_clear()


@pytest.fixture
def crafted_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WriteResource]:
    """Points the loader at an empty temp directory; the returned function writes one resource
    there as ``<type>-<id>.json`` (call it before the first lookup: the loader caches)."""
    directory = tmp_path / "package"
    directory.mkdir()
    monkeypatch.setattr(profiles, "_locate", lambda: (directory, "source"))
    _clear_caches()

    def write(resource: dict[str, Any]) -> Path:
        path = directory / f"{resource['resourceType']}-{resource['id']}.json"
        path.write_bytes(orjson.dumps(resource))
        return path

    yield write
    _clear_caches()
