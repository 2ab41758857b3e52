"""No quadratic step: ``map`` (records → FHIR R4, in process) over 1k, 10k and 100k records.

Prints resources/s at each size; the largest size must run within 20% of the smallest's rate
(``ratio`` = rate at the largest size / rate at the smallest, target 0.8). Before the duplicate-id
check counted ids with a ``Counter`` it was quadratic (0.1 s at 1k records, 11 s at 10k).
Run alone: ``python benchmarks/bench_scaling.py [--quick]``; or through ``benchmarks/run.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_load import make_forms

from fhir_alliance.mapping.cli import map_items, paused_gc

TARGET_RATIO = 0.8


def _rate(size: int) -> float:
    items = [(f"in:{i}", form) for i, form in enumerate(make_forms(size))]
    started = time.perf_counter()
    with paused_gc():  # as ``fhir-alliance map`` runs it
        _, output = map_items(items, version="4.0.1")
    return len(output) / (time.perf_counter() - started)


def run(quick: bool = False) -> list[dict[str, Any]]:
    sizes = (1_000, 3_000, 10_000) if quick else (1_000, 10_000, 100_000)
    _rate(200)  # compile validators and loaders
    rates = {size: _rate(size) for size in sizes}
    smallest, largest = sizes[0], sizes[-1]
    return [
        {
            "name": f"map scaling: {largest:,} vs {smallest:,} records (R4)",
            "ours": rates[largest],
            "baseline": rates[smallest],
            "unit": "resources/s",
            "ratio": rates[largest] / rates[smallest],
            "target_ratio": TARGET_RATIO,
            "rates": {str(size): round(rate) for size, rate in rates.items()},
        }
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    for e in run(quick=args.quick):
        for size, rate in e["rates"].items():
            print(f"{int(size):>8,} records: {rate:>8,} resources/s")
        print(f"{e['name']}: {e['ratio']:.2f} (target >= {e['target_ratio']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
