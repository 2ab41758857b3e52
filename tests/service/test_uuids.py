"""The service's name-based UUID text is exactly ``str(uuid.uuid5(...))``."""

from __future__ import annotations

import uuid

from fhir_alliance_service.uuids import uuid5_text
from hypothesis import given
from hypothesis import strategies as st


@given(st.uuids(), st.text())
def test_uuid5_text_is_the_standard_library_uuid5(namespace: uuid.UUID, name: str) -> None:
    """Any namespace and any name (surrogates aside: not UTF-8) give the standard library's text."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return
    assert uuid5_text(namespace, name) == str(uuid.uuid5(namespace, name))
