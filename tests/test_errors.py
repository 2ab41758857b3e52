"""The error hierarchy: InputError messages that say what is wrong where, in natural path order."""

from __future__ import annotations

from fhir_alliance.errors import InputError, Issue


def test_input_error_message_carries_each_issue_message() -> None:
    """The message names every path with its reason, not the paths alone."""
    error = InputError.from_messages({"responses": {"2": ["Must be between 0 and 10."]}})
    assert str(error) == "invalid input: responses.2: Must be between 0 and 10."


def test_input_error_paths_sort_naturally() -> None:
    """responses.2 comes before responses.10, and items.9.value before items.10.value."""
    error = InputError.from_messages(
        {
            "responses": {"10": ["unknown item"], "2": ["too high"]},
            "items": {"10": {"value": ["bad"]}, "9": {"value": ["bad"]}},
        }
    )
    assert [i.path for i in error.issues] == [
        "items.9.value",
        "items.10.value",
        "responses.2",
        "responses.10",
    ]
    assert str(error).index("responses.2:") < str(error).index("responses.10:")


def test_input_error_from_issues_summarises_a_long_list() -> None:
    """Many issues give a bounded message that says how many more there are."""
    issues = [Issue(path=f"{n}.id", message="duplicate") for n in range(25)]
    error = InputError.from_issues(issues)
    assert str(error).startswith("invalid input: 0.id: duplicate; 1.id: duplicate")
    assert str(error).endswith("(and 15 more)")
    assert len(error.issues) == 25


def test_root_issue_is_named_root() -> None:
    """A schema-level message (no path) reads as (root)."""
    error = InputError.from_messages({"_schema": ["expected a JSON object"]})
    assert str(error) == "invalid input: (root): expected a JSON object"
