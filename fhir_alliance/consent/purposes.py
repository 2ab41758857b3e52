"""The v3 PurposeOfUse is-a hierarchy, so that a permit for ``TREAT`` covers a request for
``ETREAT`` and a deny matches whenever either purpose subsumes the other.

Source: HL7 Terminology (THO) CodeSystem ``v3-ActReason`` (http://terminology.hl7.org/CodeSystem/v3-ActReason,
version 3.1.0 in THO 7.0.1; the same relations in the copy FHIR R4 4.0.1 ships), concepts below
``PurposeOfUse``: the nesting of ``concept`` and the ``subsumedBy`` property. Only the codes a consent
may name (:data:`fhir_alliance.terminology.PURPOSE_OF_USE_CODES`) are listed; the test
``tests/consent/test_purposes.py`` checks every relation against the CodeSystem in the
``hl7.terminology.r4`` package the profile build installs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from fhir_alliance.terminology import PURPOSE_OF_USE_CODES, V3_ACT_REASON

__all__ = ["PURPOSE_OF_USE_PARENT", "broader_purposes", "narrower_purposes"]

#: Each purpose code → the code directly above it (``None``: directly under the abstract
#: ``PurposeOfUse``).
PURPOSE_OF_USE_PARENT: Final[dict[str, str | None]] = {
    "TREAT": None,
    "ETREAT": "TREAT",
    "BTG": "ETREAT",
    "ERTREAT": "ETREAT",
    "COC": "TREAT",
    "CLINTRL": "TREAT",
    "POPHLTH": "TREAT",
    "HPAYMT": None,
    "CLMATTCH": "HPAYMT",
    "COVAUTH": "HPAYMT",
    "COVERAGE": "HPAYMT",
    "ELIGDTRM": "COVERAGE",
    "ELIGVER": "COVERAGE",
    "ENROLLM": "COVERAGE",
    "REMITADV": "HPAYMT",
    "HOPERAT": None,
    "CAREMGT": "HOPERAT",
    "DONAT": "HOPERAT",
    "FRAUD": "HOPERAT",
    "GOV": "HOPERAT",
    "HACCRED": "HOPERAT",
    "HCOMPL": "HOPERAT",
    "HDECD": "HOPERAT",
    "HDIRECT": "HOPERAT",
    "HDM": "HOPERAT",
    "HLEGAL": "HOPERAT",
    "HOUTCOMS": "HOPERAT",
    "HPRGRP": "HOPERAT",
    "HQUALIMP": "HOPERAT",
    "HSYSADMIN": "HOPERAT",
    "MEMADMIN": "HOPERAT",
    "PATADMIN": "HOPERAT",
    "PATSFTY": "HOPERAT",
    "PERFMSR": "HOPERAT",
    "RECORDMGT": "HOPERAT",
    "SYSDEV": "HOPERAT",
    "HTEST": "SYSDEV",
    "TRAIN": "HOPERAT",
    "HMARKT": None,
    "HRESCH": None,
    "CLINTRCH": "HRESCH",
    "PATRQT": None,
    "FAMRQT": "PATRQT",
    "PWATRNY": "PATRQT",
    "SUPNWK": "PATRQT",
    "PUBHLTH": None,
    "DISASTER": "PUBHLTH",
    "THREAT": "PUBHLTH",
}

_CodeKey = tuple[str, str]


def _ancestors(code: str) -> list[str]:
    found: list[str] = []
    parent = PURPOSE_OF_USE_PARENT.get(code)
    while parent is not None:
        found.append(parent)
        parent = PURPOSE_OF_USE_PARENT.get(parent)
    return found


_BROADER: Final = {code: frozenset(_ancestors(code)) for code in PURPOSE_OF_USE_PARENT}
_NARROWER: Final = {
    code: frozenset(c for c, above in _BROADER.items() if code in above)
    for code in PURPOSE_OF_USE_PARENT
}


def narrower_purposes(keys: Iterable[_CodeKey]) -> frozenset[_CodeKey]:
    """``keys`` and every PurposeOfUse code below any of them (``(system, code)`` pairs)."""
    out = set(keys)
    for system, code in tuple(out):
        if system == V3_ACT_REASON:
            out.update((V3_ACT_REASON, c) for c in _NARROWER.get(code, ()))
    return frozenset(out)


def broader_purposes(keys: Iterable[_CodeKey]) -> frozenset[_CodeKey]:
    """``keys`` and every PurposeOfUse code above any of them (``(system, code)`` pairs)."""
    out = set(keys)
    for system, code in tuple(out):
        if system == V3_ACT_REASON:
            out.update((V3_ACT_REASON, c) for c in _BROADER.get(code, ()))
    return frozenset(out)


if set(PURPOSE_OF_USE_PARENT) != PURPOSE_OF_USE_CODES:  # pragma: no cover - import-time guard
    raise RuntimeError("PURPOSE_OF_USE_PARENT must list exactly terminology.PURPOSE_OF_USE_CODES")
