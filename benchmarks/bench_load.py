"""Load the JSON form of observation records (json dict → validated domain record), all four kinds.

Two paths over the same records, measured in one run:

* baseline: marshmallow alone, one schema per kind built once (``load_or_raise`` with the cached schema of the record's kind, what
  ``load_record`` did before the compiled loader);
* ours: :func:`fhir_alliance.schemas.observations.load_record` (the compiled gate and load plan of
  ``fhir_alliance/schemas/compiled.py``, marshmallow only when the input is refused).

Also printed: marshmallow building a new schema per record, as ``load_record`` did when issue 10
was filed (about 3x slower than the baseline). Both paths produce equal records (checked here on every record). Run alone:
``python benchmarks/bench_load.py [--quick]``; or through ``benchmarks/run.py``.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fhir_alliance.instruments import INSTRUMENTS, InstrumentCode
from fhir_alliance.instruments.dimensions import SCALES, Dimension
from fhir_alliance.instruments.ruptures import RepairStrategy, RuptureType
from fhir_alliance.schemas.common import DEFAULT_FUTURE_TOLERANCE, load_or_raise
from fhir_alliance.schemas.observations import _schema, load_record

TARGET_RATIO = 10.0


def make_forms(count: int, seed: int = 11) -> list[dict[str, Any]]:
    """``count`` JSON forms cycling through administrations (every instrument), ratings, ruptures
    and repairs."""
    rng = random.Random(seed)
    start = datetime(2025, 1, 1, 9, tzinfo=UTC)
    forms: list[dict[str, Any]] = []
    codes = list(InstrumentCode)
    for n in range(count):
        base: dict[str, Any] = {
            "id": f"https://bench.example/records|r{n}",
            "patient": {"reference": f"Patient/p{n % 500}"},
            "effective": (start + timedelta(minutes=n)).isoformat(),
            "counterpart": {"reference": f"Practitioner/t{n % 20}"},
            "encounter": {"reference": f"Encounter/e{n}"},
        }
        therapist = {"role": "therapist", "who": {"reference": f"Practitioner/t{n % 20}"}}
        kind = n % 4
        if kind == 0:
            code = codes[n // 4 % len(codes)]
            inst = INSTRUMENTS[code]
            responses = {}
            for spec in inst.items:
                steps = int((spec.maximum - spec.minimum) / spec.step)
                value = spec.minimum + spec.step * rng.randint(0, steps)
                responses[str(spec.number)] = int(value) if spec.integral else float(value)
            rater = {"role": "client"} if inst.client_rated else therapist
            form = {"kind": "instrument-administration", "instrument": code.value, **base}
            form.update(rater=rater, responses=responses)
        elif kind == 1:
            scale = rng.choice(list(SCALES))
            spec = SCALES[scale]
            form = {"kind": "dimension-rating", **base, "rater": {"role": "client"}}
            form.update(
                dimension=rng.choice(list(Dimension)).value,
                scale=scale.value,
                value=int(spec.minimum),
            )
        elif kind == 2:
            form = {"kind": "rupture", **base, "rater": therapist}
            form.update(
                rupture_type=rng.choice(list(RuptureType)).value,
                tension=rng.randint(1, 5),
                repaired=True,
                repair_strategies=[RepairStrategy.NAMES_RUPTURE.value],
            )
        else:
            form = {"kind": "repair", **base, "rater": therapist}
            form.update(
                rupture=f"https://bench.example/records|r{n - 1}",
                strategies=[RepairStrategy.TAKES_OWNERSHIP.value],
                resolution=4,
            )
        forms.append(form)
    return forms


def _baseline(forms: list[dict[str, Any]]) -> list[Any]:
    return [load_or_raise(_schema(f["kind"], DEFAULT_FUTURE_TOLERANCE), f) for f in forms]


def _fresh_schema(forms: list[dict[str, Any]]) -> list[Any]:
    """Marshmallow with a new schema per record: how ``load_record`` worked when issue 10 was filed."""
    return [load_or_raise(type(_schema(f["kind"], DEFAULT_FUTURE_TOLERANCE))(), f) for f in forms]


def _ours(forms: list[dict[str, Any]]) -> list[Any]:
    return [load_record(f) for f in forms]


def _rate(func: Any, forms: list[dict[str, Any]]) -> tuple[float, list[Any]]:
    started = time.perf_counter()
    out = func(forms)
    return len(forms) / (time.perf_counter() - started), out


def run(quick: bool = False) -> list[dict[str, Any]]:
    size = 2_000 if quick else 20_000
    forms = make_forms(size)
    _ours(forms[:100])  # compile the loaders, warm caches for both paths
    _baseline(forms[:100])
    baseline, expected = _rate(_baseline, forms)
    ours, got = _rate(_ours, forms)
    fresh, _ = _rate(_fresh_schema, forms[: len(forms) // 4])
    if got != expected:
        raise AssertionError("the compiled loader and marshmallow loaded different records")
    return [
        {
            "name": f"load JSON form: {size:,} records, all kinds",
            "ours": ours,
            "baseline": baseline,
            "unit": "records/s",
            "ratio": ours / baseline,
            "target_ratio": TARGET_RATIO,
            "fresh_schema_per_record": fresh,
            "ratio_to_fresh_schema": ours / fresh,
        }
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    for e in run(quick=args.quick):
        print(
            f"{e['name']}: baseline {e['baseline']:,.0f}, ours {e['ours']:,.0f} {e['unit']}"
            f" ({e['ratio']:.1f}x, target {e['target_ratio']:.0f}x); marshmallow with a new schema"
            f" per record (as when issue 10 was filed) {e['fresh_schema_per_record']:,.0f}"
            f" ({e['ratio_to_fresh_schema']:.1f}x)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
