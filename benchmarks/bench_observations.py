"""Map, validate and serialise 10,000 SRS and 10,000 WAI-SR administrations (R4).

Three paths over the same records, measured in one run:

* baseline: our mapping, then a ``fhir.resources`` (R4B) model per resource and ``model_dump_json``
  (the naive way: build models, let them serialise);
* ours: our mapping, then the compiled FHIR R4 JSON-schema validator on every dict (types, element
  names, primitive formats, base required bindings, required elements; it rejects invalid resources,
  see tests/mapping/test_export.py) and ``orjson.dumps``
  (:func:`fhir_alliance.mapping.export.records_to_ndjson`);
* ceiling: ``orjson.dumps`` of the prebuilt dicts only (no mapping, no validation).

Run alone: ``python benchmarks/bench_observations.py [--quick]``; or through ``benchmarks/run.py``.
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

import orjson

from fhir_alliance.instruments import INSTRUMENTS, InstrumentCode
from fhir_alliance.mapping.export import records_to_ndjson
from fhir_alliance.mapping.observation import to_observations
from fhir_alliance.mapping.validation import model_class
from fhir_alliance.model.common import Identifier, Ref
from fhir_alliance.model.observations import (
    InstrumentAdministration,
    ItemResponse,
    Rater,
    RaterRole,
)

TARGET_RATIO = 2.0


def make_records(count: int, code: InstrumentCode, seed: int) -> list[InstrumentAdministration]:
    rng = random.Random(seed)
    inst = INSTRUMENTS[code]
    start = datetime(2026, 1, 1, 9, tzinfo=UTC)
    records = []
    for n in range(count):
        responses = []
        for spec in inst.items:
            steps = int((spec.maximum - spec.minimum) / spec.step)
            responses.append(
                ItemResponse(spec.number, spec.minimum + spec.step * rng.randint(0, steps))
            )
        records.append(
            InstrumentAdministration(
                id=Identifier("https://bench.example/records", f"{code.value}-{n}"),
                instrument=code,
                patient=Ref(reference=f"Patient/p{n % 500}"),
                rater=Rater(role=RaterRole.CLIENT),
                effective=start + timedelta(minutes=n),
                responses=tuple(responses),
                counterpart=Ref(reference=f"Practitioner/t{n % 20}"),
                encounter=Ref(reference=f"Encounter/e{n}"),
            )
        )
    return records


def _baseline(records: list[InstrumentAdministration]) -> int:
    count = 0
    for record in records:
        for resource in to_observations(record):
            model = model_class(resource["resourceType"], "4.0.1").model_validate(resource)
            model.model_dump_json()
            count += 1
    return count


def _ours(records: list[InstrumentAdministration]) -> int:
    return sum(1 for _ in records_to_ndjson(records))


def _ceiling(prebuilt: list[dict[str, Any]]) -> int:
    for resource in prebuilt:
        orjson.dumps(resource)
    return len(prebuilt)


def _rate(func: Any, arg: Any) -> float:
    started = time.perf_counter()
    count = func(arg)
    return float(count / (time.perf_counter() - started))


def run(quick: bool = False) -> list[dict[str, Any]]:
    size = 500 if quick else 10_000
    entries = []
    for code in (InstrumentCode.SRS, InstrumentCode.WAI_SR):
        records = make_records(size, code, seed=7)
        prebuilt = [r for record in records for r in to_observations(record)]
        _ours(records[:50])  # warm caches (model classes, imports) for both paths
        _baseline(records[:50])
        baseline = _rate(_baseline, records)
        ours = _rate(_ours, records)
        ceiling = _rate(_ceiling, prebuilt)
        entries.append(
            {
                "name": f"observations: map+validate+serialise {size:,} {code.value} (R4)",
                "ours": ours,
                "baseline": baseline,
                "ceiling": ceiling,
                "unit": "resources/s",
                "ratio": ours / baseline,
                "target_ratio": TARGET_RATIO,
                "ceiling_ratio": ceiling / ours,
            }
        )
    return entries


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    entries = run(quick=args.quick)
    header = f"{'benchmark':<58} {'baseline':>10} {'ours':>10} {'ceiling':>10} {'ours/base':>9} {'ceil/ours':>9}"
    print(header)
    for e in entries:
        print(
            f"{e['name']:<58} {e['baseline']:>10,.0f} {e['ours']:>10,.0f} {e['ceiling']:>10,.0f}"
            f" {e['ratio']:>8.2f}x {e['ceiling_ratio']:>8.1f}x"
        )
    print(f"unit: resources/s; target ours/baseline >= {TARGET_RATIO}x")
    ok = all(e["ratio"] >= e["target_ratio"] for e in entries)
    return 0 if ok or args.quick else 1


if __name__ == "__main__":
    raise SystemExit(main())
