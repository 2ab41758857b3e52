"""``fhir-alliance map`` (records → FHIR, NDJSON out) against the library's fast validated path.

Over the same records (all four kinds, every instrument), measured in one run, per FHIR version:

* baseline (the reference to reach 80% of): the library's fast path,
  :func:`fhir_alliance.mapping.export.records_to_ndjson` over already-loaded domain records (map,
  validate, ``orjson``);
* ours: what ``fhir-alliance map --ndjson FILE`` does after start-up: read the NDJSON file strictly,
  load and check every record, map, validate, serialise (``map_items`` then ``orjson``).

R4 Observations and Provenances are validated by the compiled R4 JSON-schema validator on both
paths; R5 by the ``fhir.resources`` models on both (no R5 JSON schema is available offline).
Run alone: ``python benchmarks/bench_map.py [--quick]``; or through ``benchmarks/run.py``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import orjson
from bench_load import make_forms

from fhir_alliance.mapping.cli import map_items, paused_gc, read_items
from fhir_alliance.mapping.export import records_to_ndjson
from fhir_alliance.schemas.observations import load_record

TARGET_RATIO = 0.8


def map_file(path: Path, version: str) -> int:
    """``map --ndjson`` minus start-up and the write: bytes built for every resource."""
    with paused_gc():  # as ``fhir-alliance map`` runs it
        _, output = map_items(read_items([str(path)]), version=version)
    return sum(1 for item in output if orjson.dumps(item))


def library(records: list[Any], version: str) -> int:
    return sum(1 for _ in records_to_ndjson(records, version=version))


def _rate(func: Any, *args: Any) -> float:
    started = time.perf_counter()
    count = func(*args)
    return float(count / (time.perf_counter() - started))


def run(quick: bool = False) -> list[dict[str, Any]]:
    entries = []
    for version, size in (
        ("4.0.1", 1_000 if quick else 10_000),
        ("5.0.0", 200 if quick else 2_000),
    ):
        forms = make_forms(size)
        records = [load_record(f) for f in forms]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "records.ndjson"
            path.write_bytes(b"".join(orjson.dumps(f) + b"\n" for f in forms))
            library(records[:50], version)  # warm caches (compiled validators, model classes)
            baseline = _rate(library, records, version)
            ours = _rate(map_file, path, version)
        entries.append(
            {
                "name": f"map --ndjson: {size:,} records (FHIR {version})",
                "ours": ours,
                "baseline": baseline,
                "unit": "resources/s",
                "ratio": ours / baseline,
                "target_ratio": TARGET_RATIO,
            }
        )
    return entries


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    for e in run(quick=args.quick):
        print(
            f"{e['name']}: library fast path {e['baseline']:,.0f}, map {e['ours']:,.0f}"
            f" {e['unit']} ({e['ratio']:.0%} of the library; target {e['target_ratio']:.0%})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
