"""``fhir-alliance map --ndjson FILE`` (records → FHIR NDJSON) against the library's fast path.

Over the same records (all four kinds, every instrument), measured in one run, per FHIR version:

* baseline (the reference to reach 80% of): the library's fast path,
  :func:`fhir_alliance.mapping.export.records_to_ndjson` over already-loaded domain records (map,
  validate, ``orjson``), its lines consumed in memory;
* ours: the command itself after start-up, in this process (``fhir_alliance.cli.main(["map",
  "--ndjson", FILE, "-o", OUT])``): read the JSON lines strictly, load and check every record,
  map, validate, serialise and write the output file (the streaming path,
  :mod:`fhir_alliance.mapping.streaming`).

Observations and Provenances are validated by the compiled JSON-schema validators on both paths
(R4's and R5's, :mod:`fhir_alliance.mapping.fast_validation`). Both are timed in CPU time of this
process (``time.process_time``: both are single-threaded CPU work, the command's file I/O stays in
the page cache), since wall time on the shared 2-core machine mostly measured the other jobs'
load; the two are alternated for seven rounds and the best round of each is kept. While they
run, the harness's own inputs (the forms and the loaded records the library path is given) are
frozen out of the garbage collector's sight (``bench_load.frozen_fixtures``): the command never
holds them, and scanning them in each full collection charged the path that allocates more (the
command, which also loads) for the harness's data.

Also measured: the compiled R5 validator against the ``fhir.resources`` R5 models (what R5 used
before it), over the same R5 Observations and Provenances (target: faster than the models). Run alone: ``python benchmarks/bench_map.py [--quick]``; or through ``benchmarks/run.py``.
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
from bench_load import frozen_fixtures, make_forms

from fhir_alliance.cli import main as fhir_alliance_main
from fhir_alliance.mapping.export import records_to_ndjson
from fhir_alliance.mapping.fast_validation import FAST_RESOURCE_TYPES, validate_fast
from fhir_alliance.mapping.observation import to_observations
from fhir_alliance.mapping.validation import validate_resource
from fhir_alliance.schemas.observations import load_record

TARGET_RATIO = 0.8
ROUNDS = 7


def map_file(source: Path, target: Path, version: str) -> None:
    """``fhir-alliance map --ndjson SOURCE -o TARGET`` in this process (what is timed)."""
    argv = ["map", "--ndjson", str(source), "--fhir-version", version, "-o", str(target)]
    if fhir_alliance_main(argv) != 0:
        raise RuntimeError("map failed")


def lines_in(path: Path) -> int:
    """Resources the command wrote (counted after the timing: not part of the command)."""
    with path.open("rb") as written:
        return sum(1 for _ in written)


def library(records: list[Any], version: str) -> int:
    return sum(1 for _ in records_to_ndjson(records, version=version))


def _seconds(func: Any, *args: Any) -> tuple[float, int]:
    """CPU seconds of this process spent in ``func(*args)``, and what it returned."""
    started = time.process_time()
    count = func(*args)
    return time.process_time() - started, count


def _validate_all(validate: Any, resources: list[dict[str, Any]]) -> int:
    for resource in resources:
        validate(resource, version="5.0.0")
    return len(resources)


def _r5_validators(records: list[Any]) -> dict[str, Any]:
    """The compiled R5 validator against the ``fhir.resources`` R5 models, same resources."""
    resources = [
        r
        for record in records
        for r in to_observations(record, version="5.0.0")
        if r["resourceType"] in FAST_RESOURCE_TYPES
    ]
    _validate_all(validate_fast, resources[:20])
    _validate_all(validate_resource, resources[:20])
    models_s, compiled_s = float("inf"), float("inf")
    for _ in range(ROUNDS):
        models_s = min(models_s, _seconds(_validate_all, validate_resource, resources)[0])
        compiled_s = min(compiled_s, _seconds(_validate_all, validate_fast, resources)[0])
    return {
        "name": f"R5 validation: compiled schema vs fhir.resources models, {len(resources):,} resources",
        "ours": len(resources) / compiled_s,
        "baseline": len(resources) / models_s,
        "unit": "resources/s (CPU time)",
        "ratio": models_s / compiled_s,
        "target_ratio": 1.0,
    }


def run(quick: bool = False) -> list[dict[str, Any]]:
    entries = []
    size = 1_000 if quick else 10_000
    for version in ("4.0.1", "5.0.0"):
        forms = make_forms(size)
        records = [load_record(f) for f in forms]
        with tempfile.TemporaryDirectory() as tmp:
            source, target = Path(tmp) / "records.ndjson", Path(tmp) / "out.ndjson"
            source.write_bytes(b"".join(orjson.dumps(f) + b"\n" for f in forms))
            warm = Path(tmp) / "warm.ndjson"
            warm.write_bytes(b"".join(orjson.dumps(f) + b"\n" for f in forms[:50]))
            library(records[:50], version)  # warm caches (compiled validators, loaders)
            map_file(warm, target, version)
            baseline_s, ours_s = float("inf"), float("inf")
            with frozen_fixtures():
                for _ in range(1 if quick else ROUNDS):
                    seconds, count = _seconds(library, records, version)
                    baseline_s = min(baseline_s, seconds)
                    seconds, _ = _seconds(map_file, source, target, version)
                    ours_s = min(ours_s, seconds)
                    written = lines_in(target)
                    if written != count:
                        raise RuntimeError(f"map wrote {written} resources, the library {count}")
        baseline, ours = count / baseline_s, count / ours_s
        if version == "5.0.0":
            entries.append(_r5_validators(records[: size // 5]))
        entries.append(
            {
                "name": f"map --ndjson: {size:,} records (FHIR {version})",
                "ours": ours,
                "baseline": baseline,
                "unit": "resources/s (CPU time)",
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
        if e["name"].startswith("R5 validation"):
            print(
                f"{e['name']}: fhir.resources {e['baseline']:,.0f}, compiled {e['ours']:,.0f}"
                f" {e['unit']} ({e['ratio']:.1f}x)"
            )
            continue
        print(
            f"{e['name']}: library fast path {e['baseline']:,.0f}, map {e['ours']:,.0f}"
            f" {e['unit']} ({e['ratio']:.0%} of the library; target {e['target_ratio']:.0%})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
