"""The Python vocabularies of alliance observations equal our built CodeSystems and Questionnaires."""

from fhir_alliance import profiles, terminology
from fhir_alliance.instruments import INSTRUMENTS, Dimension, RatingScale
from fhir_alliance.instruments.ruptures import RepairStrategy, RuptureMarker, RuptureType
from fhir_alliance.mapping import observation as mapping
from fhir_alliance.model.observations import RaterRole


def test_measure_codes_match_the_catalogue() -> None:
    """alliance-measures has exactly our instrument, item, score, event and component codes."""
    expected = set()
    for code, inst in INSTRUMENTS.items():
        expected |= {code.value, inst.score_code("total")}
        expected |= {inst.score_code(s.key) for s in inst.subscales}
        expected |= {inst.item_code(i.number) for i in inst.items}
    expected |= {getattr(mapping, name) for name in dir(mapping) if name.startswith("CODE_")}
    assert set(terminology.codes("alliance-measures")) == expected


def test_enum_code_systems_match() -> None:
    """Dimensions, scales, rater roles, rupture types, markers and strategies match their CodeSystems."""
    pairs = {
        "alliance-dimensions": Dimension,
        "alliance-rating-scales": RatingScale,
        "alliance-rater-roles": RaterRole,
        "rupture-types": RuptureType,
        "rupture-markers": RuptureMarker,
        "repair-strategies": RepairStrategy,
    }
    for name, enum in pairs.items():
        assert set(terminology.codes(name)) == {e.value for e in enum}, name


def test_questionnaires_match_the_catalogue_and_carry_no_item_text() -> None:
    """Each instrument Questionnaire lists its items by number with our codes and placeholder text only."""
    for code, inst in INSTRUMENTS.items():
        questionnaire = profiles.questionnaire(code.value)
        assert questionnaire["url"] == inst.questionnaire_url
        items = questionnaire["item"]
        assert [i["linkId"] for i in items] == [str(n) for n in inst.item_numbers]
        assert [i["code"][0]["code"] for i in items] == [
            inst.item_code(n) for n in inst.item_numbers
        ]
        assert all(i["text"] == f"Item {i['linkId']}" for i in items)
