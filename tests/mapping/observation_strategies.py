"""Hypothesis strategies for valid alliance observation records (shared by mapping tests)."""

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import strategies as st

from fhir_alliance import terminology as t
from fhir_alliance.instruments import INSTRUMENTS, Dimension, RatingScale
from fhir_alliance.instruments.dimensions import SCALES
from fhir_alliance.instruments.ruptures import MARKER_TYPE, RepairStrategy, RuptureType
from fhir_alliance.model.common import Coding, Identifier, Ref
from fhir_alliance.model.observations import (
    AutomatedRater,
    DimensionRating,
    InstrumentAdministration,
    ItemResponse,
    ObservationStatus,
    Rater,
    RaterRole,
    RepairEvent,
    RuptureEvent,
)

_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-.", min_size=1, max_size=12)
identifiers = st.builds(
    Identifier, system=st.sampled_from(["https://a.example/ids", "urn:oid:1.2.3"]), value=_token
)


def refs(resource_type: str) -> st.SearchStrategy[Ref]:
    literal = _token.map(lambda v: f"{resource_type}/{v}")
    return st.one_of(
        st.builds(Ref, reference=literal),
        st.builds(Ref, identifier=identifiers, type=st.just(resource_type)),
        st.builds(Ref, reference=literal, identifier=identifiers, display=st.just("x")),
    )


instants = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2030, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=2))]),
)
statuses = st.sampled_from(list(ObservationStatus))
#: Labels another system may add (never one the mapping derives: R, BH, PSYTHPN, AIAST).
extra_labels = st.lists(
    st.sampled_from(
        [
            Coding(system=t.V3_ACT_CODE, code="SUD"),
            Coding(system=t.V3_ACT_CODE, code="HIV"),
            Coding(system=t.V3_ACT_CODE, code="PSY"),
            Coding(system=t.V3_CONFIDENTIALITY, code="V", display="very restricted"),
        ]
    ),
    unique=True,
    max_size=2,
).map(tuple)
automated = st.builds(
    AutomatedRater,
    tool=_token,
    version=_token,
    clinician_reviewed=st.booleans(),
    confidence=st.none() | st.decimals(0, 1, places=2),
    source=st.none() | refs("DocumentReference"),
)
raters = st.one_of(
    st.just(Rater(role=RaterRole.CLIENT)),
    st.builds(
        Rater,
        role=st.sampled_from([RaterRole.THERAPIST, RaterRole.OBSERVER]),
        who=refs("Practitioner"),
    ),
    st.builds(Rater, role=st.just(RaterRole.AUTOMATED), automated=automated),
)


def _context() -> dict:
    return {
        "id": identifiers,
        "patient": refs("Patient"),
        "effective": instants,
        "counterpart": st.none() | refs("Practitioner"),
        "encounter": st.none() | refs("Encounter"),
        "questionnaire_response": st.none() | refs("QuestionnaireResponse"),
        "status": statuses,
        "security_labels": extra_labels,
    }


@st.composite
def administrations(draw: st.DrawFn) -> InstrumentAdministration:
    code = draw(st.sampled_from(list(INSTRUMENTS)))
    inst = INSTRUMENTS[code]
    numbers = draw(st.sets(st.sampled_from(inst.item_numbers), min_size=1))
    responses = []
    for n in sorted(numbers):
        spec = inst.items[n - 1]
        steps = int((spec.maximum - spec.minimum) / spec.step)
        responses.append(ItemResponse(n, spec.minimum + spec.step * draw(st.integers(0, steps))))
    if inst.client_rated:
        rater = draw(
            st.just(Rater(role=RaterRole.CLIENT))
            | st.builds(Rater, role=st.just(RaterRole.AUTOMATED), automated=automated)
        )
    else:
        rater = draw(st.builds(Rater, role=st.just(RaterRole.THERAPIST), who=refs("Practitioner")))
    return draw(
        st.builds(
            InstrumentAdministration,
            instrument=st.just(code),
            rater=st.just(rater),
            responses=st.just(tuple(responses)),
            **_context(),
        )
    )


@st.composite
def ratings(draw: st.DrawFn) -> DimensionRating:
    scale = draw(st.sampled_from(list(RatingScale)))
    spec = SCALES[scale]
    steps = int((spec.maximum - spec.minimum) / spec.step)
    value = spec.minimum + spec.step * draw(st.integers(0, steps))
    return draw(
        st.builds(
            DimensionRating,
            dimension=st.sampled_from(list(Dimension)),
            scale=st.just(scale),
            value=st.just(value),
            rater=raters,
            **_context(),
        )
    )


narratives = st.none() | st.text(
    st.characters(blacklist_categories=("Cc", "Cs")) | st.sampled_from("\n\t"),
    min_size=1,
    max_size=40,
).filter(lambda s: s.strip() != "")


@st.composite
def ruptures(draw: st.DrawFn) -> RuptureEvent:
    kind = draw(st.sampled_from(list(RuptureType)))
    fitting = [m for m, k in MARKER_TYPE.items() if k in (None, kind)]
    repaired = draw(st.none() | st.booleans())
    strategies = (
        draw(st.lists(st.sampled_from(list(RepairStrategy)), max_size=3)) if repaired else []
    )
    return draw(
        st.builds(
            RuptureEvent,
            rupture_type=st.just(kind),
            tension=st.integers(1, 5),
            markers=st.lists(st.sampled_from(fitting), unique=True, max_size=4).map(tuple),
            repaired=st.just(repaired),
            repair_strategies=st.just(tuple(strategies)),
            resolution=st.none() | st.integers(1, 5),
            narrative=narratives,
            rater=raters,
            **_context(),
        )
    )


repairs = st.builds(
    RepairEvent,
    rupture=identifiers,
    strategies=st.lists(st.sampled_from(list(RepairStrategy)), min_size=1, max_size=3).map(tuple),
    resolution=st.none() | st.integers(1, 5),
    narrative=narratives,
    rater=raters,
    **_context(),
)

records = st.one_of(administrations(), ratings(), ruptures(), repairs)
