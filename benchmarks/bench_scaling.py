"""No quadratic step: ``fhir-alliance map --ndjson`` (records → FHIR R4) over 1k, 10k and 100k records.

Prints resources/s at each size; the largest size must run within 20% of the smallest's rate
(``ratio`` = rate at the largest size / rate at the smallest, target 0.8). Before the duplicate-id
check counted ids with a ``Counter`` it was quadratic (0.1 s at 1k records, 11 s at 10k).
What is timed is the command after start-up, in this process (``fhir_alliance.cli.main(["map",
"--ndjson", FILE, "-o", OUT])``, the streaming path: the only way to map 100,000 records, since a
Bundle holds at most 20,000), in CPU time of this process (the shared machine's load otherwise
decides the figure); the in-memory path (``map_items``, what a Bundle goes through) is printed
too, at the sizes a Bundle allows.
Run alone: ``python benchmarks/bench_scaling.py [--quick]``; or through ``benchmarks/run.py``.
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

from fhir_alliance.cli import main as fhir_alliance_main
from fhir_alliance.mapping.cli import map_items, paused_gc

TARGET_RATIO = 0.8


def _command_rate(size: int, tmp: Path) -> float:
    source, target = tmp / f"in-{size}.ndjson", tmp / f"out-{size}.ndjson"
    with source.open("wb") as handle:
        for form in make_forms(size):
            handle.write(orjson.dumps(form) + b"\n")
    started = time.process_time()
    if fhir_alliance_main(["map", "--ndjson", str(source), "-o", str(target)]) != 0:
        raise RuntimeError("map failed")
    seconds = time.process_time() - started
    with target.open("rb") as written:
        count = sum(1 for _ in written)
    source.unlink()
    target.unlink()
    return count / seconds


def _in_memory_rate(size: int) -> float:
    items = [(f"in:{i}", form) for i, form in enumerate(make_forms(size))]
    started = time.process_time()
    with paused_gc():  # as ``fhir-alliance map`` runs it
        _, output = map_items(items, version="4.0.1")
    return len(output) / (time.process_time() - started)


def run(quick: bool = False) -> list[dict[str, Any]]:
    sizes = (1_000, 3_000, 10_000) if quick else (1_000, 10_000, 100_000)
    with tempfile.TemporaryDirectory() as tmp:
        _command_rate(200, Path(tmp))  # compile validators and loaders
        rates = {size: _command_rate(size, Path(tmp)) for size in sizes}
    in_memory = {size: _in_memory_rate(size) for size in sizes if size <= 20_000}
    smallest, largest = sizes[0], sizes[-1]
    return [
        {
            "name": f"map scaling: {largest:,} vs {smallest:,} records (R4)",
            "ours": rates[largest],
            "baseline": rates[smallest],
            "unit": "resources/s (CPU time)",
            "ratio": rates[largest] / rates[smallest],
            "target_ratio": TARGET_RATIO,
            "rates": {str(size): round(rate) for size, rate in rates.items()},
            "in_memory_rates": {str(size): round(rate) for size, rate in in_memory.items()},
        }
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    for e in run(quick=args.quick):
        for size, rate in e["rates"].items():
            print(f"{int(size):>8,} records: {rate:>8,} resources/s (map --ndjson)")
        for size, rate in e["in_memory_rates"].items():
            print(f"{int(size):>8,} records: {rate:>8,} resources/s (in memory, as for a Bundle)")
        print(f"{e['name']}: {e['ratio']:.2f} (target >= {e['target_ratio']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
