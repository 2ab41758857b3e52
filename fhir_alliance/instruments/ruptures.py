"""Rupture and repair vocabulary: rupture types, observed markers and repair strategies (our codes).

Marker and strategy names follow the public rupture-resolution literature (3RS categories, the
clinical source's seed list); the descriptions are ours, never a manual's text.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "MARKER_TYPE",
    "REPAIR_STRATEGY_DISPLAY",
    "RUPTURE_MARKER_DISPLAY",
    "RepairStrategy",
    "RuptureMarker",
    "RuptureType",
]


class RuptureType(StrEnum):
    WITHDRAWAL = "withdrawal"
    CONFRONTATION = "confrontation"


class RuptureMarker(StrEnum):
    """Codes of our ``rupture-markers`` CodeSystem."""

    # Withdrawal: moving away from the therapist or the work.
    DENIAL = "denial"
    MINIMAL_RESPONSE = "minimal-response"
    TOPIC_SHIFT = "topic-shift"
    DEFERENCE = "deference"
    CONTENT_AFFECT_SPLIT = "content-affect-split"
    # Confrontation: moving against the therapist or the work.
    COMPLAINT_ABOUT_THERAPIST = "complaint-about-therapist"
    COMPLAINT_ABOUT_ACTIVITIES = "complaint-about-activities"
    COMPLAINT_ABOUT_PROGRESS = "complaint-about-progress"
    REJECTS_INTERVENTION = "rejects-intervention"
    CONTROLLING = "controlling"
    # Either kind (the clinical source's seed list).
    MISATTUNEMENT = "misattunement"
    PERCEIVED_JUDGEMENT = "perceived-judgement"


#: Which rupture type a marker belongs to; ``None`` = either.
MARKER_TYPE: dict[RuptureMarker, RuptureType | None] = {
    RuptureMarker.DENIAL: RuptureType.WITHDRAWAL,
    RuptureMarker.MINIMAL_RESPONSE: RuptureType.WITHDRAWAL,
    RuptureMarker.TOPIC_SHIFT: RuptureType.WITHDRAWAL,
    RuptureMarker.DEFERENCE: RuptureType.WITHDRAWAL,
    RuptureMarker.CONTENT_AFFECT_SPLIT: RuptureType.WITHDRAWAL,
    RuptureMarker.COMPLAINT_ABOUT_THERAPIST: RuptureType.CONFRONTATION,
    RuptureMarker.COMPLAINT_ABOUT_ACTIVITIES: RuptureType.CONFRONTATION,
    RuptureMarker.COMPLAINT_ABOUT_PROGRESS: RuptureType.CONFRONTATION,
    RuptureMarker.REJECTS_INTERVENTION: RuptureType.CONFRONTATION,
    RuptureMarker.CONTROLLING: RuptureType.CONFRONTATION,
    RuptureMarker.MISATTUNEMENT: None,
    RuptureMarker.PERCEIVED_JUDGEMENT: None,
}

RUPTURE_MARKER_DISPLAY: dict[RuptureMarker, str] = {
    RuptureMarker.DENIAL: "Denies a feeling that is evident",
    RuptureMarker.MINIMAL_RESPONSE: "Minimal responses",
    RuptureMarker.TOPIC_SHIFT: "Shifts away from the topic",
    RuptureMarker.DEFERENCE: "Defers or appeases",
    RuptureMarker.CONTENT_AFFECT_SPLIT: "Content and affect do not match",
    RuptureMarker.COMPLAINT_ABOUT_THERAPIST: "Complains about the therapist",
    RuptureMarker.COMPLAINT_ABOUT_ACTIVITIES: "Complains about the activities of therapy",
    RuptureMarker.COMPLAINT_ABOUT_PROGRESS: "Complains about progress",
    RuptureMarker.REJECTS_INTERVENTION: "Rejects an intervention",
    RuptureMarker.CONTROLLING: "Tries to control the session",
    RuptureMarker.MISATTUNEMENT: "Misattunement",
    RuptureMarker.PERCEIVED_JUDGEMENT: "Feels judged",
}


class RepairStrategy(StrEnum):
    """Codes of our ``repair-strategies`` CodeSystem."""

    NAMES_RUPTURE = "names-rupture"
    TAKES_OWNERSHIP = "takes-ownership"
    INVITES_FEEDBACK = "invites-feedback"
    CLARIFIES_MISUNDERSTANDING = "clarifies-misunderstanding"
    CHANGES_TASK_OR_GOAL = "changes-task-or-goal"
    GIVES_RATIONALE = "gives-rationale"
    VALIDATES_DEFENSIVE_POSTURE = "validates-defensive-posture"
    LINKS_TO_PATTERNS = "links-to-patterns"
    REDIRECTS = "redirects"


REPAIR_STRATEGY_DISPLAY: dict[RepairStrategy, str] = {
    RepairStrategy.NAMES_RUPTURE: "Therapist names the rupture",
    RepairStrategy.TAKES_OWNERSHIP: "Therapist takes ownership of their part",
    RepairStrategy.INVITES_FEEDBACK: "Therapist invites feedback",
    RepairStrategy.CLARIFIES_MISUNDERSTANDING: "Clarifies a misunderstanding",
    RepairStrategy.CHANGES_TASK_OR_GOAL: "Changes the task or goal",
    RepairStrategy.GIVES_RATIONALE: "Explains the rationale of a task",
    RepairStrategy.VALIDATES_DEFENSIVE_POSTURE: "Validates the client's defensive posture",
    RepairStrategy.LINKS_TO_PATTERNS: "Links the rupture to wider patterns",
    RepairStrategy.REDIRECTS: "Redirects or refocuses",
}
