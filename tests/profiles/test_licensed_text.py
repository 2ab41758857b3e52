"""The licensed-text check (tests/profiles/licensed_text.py) flags what it must, and only that."""

from __future__ import annotations

from tests.profiles.licensed_text import findings, is_licensed_instrument

# Invented stand-ins for item wording: shaped like item statements, not real item text.
SENTENCE = "I sense that the two of us agree about what to work on today"


def _questionnaire(**extra: object) -> dict[str, object]:
    return {"resourceType": "Questionnaire", "id": "wai-sr", "status": "draft", **extra}


def test_recognises_licensed_instruments_by_id_name_url_title() -> None:
    """WAI-SR, SRS and ORS are recognised in ids, CamelCase names, URLs and titles; others are not."""
    assert is_licensed_instrument({"id": "wai-sr-t"})
    assert is_licensed_instrument({"name": "WAISRItems"})
    assert is_licensed_instrument({"name": "InstrumentSRS"})
    assert is_licensed_instrument({"url": "https://x.org/fhir/CodeSystem/ors-items"})
    assert is_licensed_instrument({"title": "Session Rating Scale structure"})
    assert not is_licensed_instrument({"id": "seed-dimensions", "name": "SeedDimensions"})
    assert not is_licensed_instrument({"id": "sources", "name": "Colors"})


def test_item_text_must_be_absent_or_placeholder() -> None:
    """Questionnaire item text other than 'Item <n>' is flagged, nested items included."""
    clean = _questionnaire(item=[{"linkId": "1", "text": "Item 1", "item": [{"linkId": "1.1"}]}])
    assert findings(clean) == []
    dirty = _questionnaire(item=[{"linkId": "1", "item": [{"linkId": "1.1", "text": "Bond"}]}])
    assert findings(dirty) == [
        "Questionnaire.item[0].item[0].text: not absent and not the placeholder 'Item <n>'"
    ]


def test_answer_option_and_code_labels_must_be_short_and_impersonal() -> None:
    """Sentence-like or first-person labels in answer options and concepts are flagged."""
    questionnaire = _questionnaire(
        item=[
            {
                "linkId": "1",
                "answerOption": [
                    {"valueCoding": {"code": "1", "display": "Seldom"}},
                    {"valueCoding": {"code": "5", "display": SENTENCE}},
                ],
            }
        ]
    )
    assert findings(questionnaire) == [
        "Questionnaire.item[0].answerOption[1].valueCoding.display: first-person wording"
    ]
    system = {
        "resourceType": "CodeSystem",
        "id": "srs-items",
        "concept": [
            {"code": "relationship", "display": "Relationship"},
            {
                "code": "x",
                "display": "x",
                "definition": "one two three four five six seven 8 9 10 11",
            },
        ],
    }
    assert findings(system) == ["CodeSystem.concept[1].definition: more than 10 words"]


def test_instrument_concepts_in_a_general_code_system_are_checked() -> None:
    """In a CodeSystem not named after an instrument, concepts coded wai-sr.* / srs.* are checked,
    children included; other concepts may carry any wording."""
    system = {
        "resourceType": "CodeSystem",
        "id": "alliance-measures",
        "concept": [
            {"code": "seed.trust", "display": SENTENCE},
            {
                "code": "wai-sr",
                "display": "Working Alliance Inventory - Short Revised",
                "concept": [
                    {"code": "wai-sr.1", "display": "WAI-SR item 1"},
                    {"code": "wai-sr.2", "display": SENTENCE},
                ],
            },
        ],
    }
    assert findings(system) == ["CodeSystem.concept[1].concept[1].display: first-person wording"]
    value_set = {
        "resourceType": "ValueSet",
        "id": "alliance-items",
        "compose": {
            "include": [{"system": "x", "concept": [{"code": "srs.1", "display": SENTENCE}]}]
        },
    }
    assert findings(value_set) == [
        "ValueSet.compose.include[0].concept[0].display: first-person wording"
    ]


def test_narrative_on_licensed_artefact_is_flagged() -> None:
    """A narrative (text.div) on a licensed-instrument artefact is flagged."""
    assert findings(_questionnaire(text={"status": "generated", "div": "<div>x</div>"})) == [
        "Questionnaire.text: narrative on a licensed-instrument artefact"
    ]


def test_our_own_instruments_may_carry_text() -> None:
    """Artefacts not about WAI-SR/SRS/ORS (e.g. seed dimensions) are not checked."""
    ours = {"resourceType": "Questionnaire", "id": "seed-dimensions", "item": [{"text": SENTENCE}]}
    assert findings(ours) == []
