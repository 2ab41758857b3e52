"""The public API is exactly what ``fhir_alliance.__all__`` lists, and every name in it exists."""

import fhir_alliance


def test_all_names_exist() -> None:
    """Every name in __all__ is importable from the package."""
    missing = [name for name in fhir_alliance.__all__ if not hasattr(fhir_alliance, name)]
    assert missing == []


def test_all_matches_public_names() -> None:
    """No public (non-underscore) module attribute is left out of __all__, except submodules."""
    import types

    public = {
        name
        for name in dir(fhir_alliance)  # names are imported on first use (PEP 562)
        if not name.startswith("_")
        and not isinstance(getattr(fhir_alliance, name), types.ModuleType)
    }
    assert public == set(fhir_alliance.__all__) - {"__version__"}


def test_session_note_types_are_public() -> None:
    """The session-note record and its enums are part of the public API (issue 13)."""
    assert {"SessionNote", "NoteCategory", "NoteStatus", "AiDrafting"} <= set(fhir_alliance.__all__)
