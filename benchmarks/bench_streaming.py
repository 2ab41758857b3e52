"""Memory of ``fhir-alliance map --ndjson`` over a JSON-lines input: resident-memory growth.

Runs the real command in a fresh process (``python -m fhir_alliance map --ndjson FILE -o OUT``) and
reads its peak resident set (``ru_maxrss`` of the child) against the same process mapping a tiny
input, so the figure is the growth caused by the records. Target: under 100 MB for 100,000 records.
``ratio`` = 100 MB / growth (>= 1 meets it). Printed for two sizes so the slope shows.
Run alone: ``python benchmarks/bench_streaming.py [--quick]``; or through ``benchmarks/run.py``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import orjson
from bench_load import make_forms

ROOT = Path(__file__).resolve().parents[1]
TARGET_MB = 100.0


def _peak_mb(count: int, tmp: Path) -> float:
    source, out = tmp / f"in-{count}.ndjson", tmp / f"out-{count}.ndjson"
    with source.open("wb") as handle:
        for form in make_forms(count):
            handle.write(orjson.dumps(form) + b"\n")
    code = (
        "import resource, sys\n"
        "from fhir_alliance.cli import main\n"
        f"code = main(['map', '--ndjson', {str(source)!r}, '-o', {str(out)!r}])\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True
    )
    return int(done.stdout.split()[-1]) / 1024  # kilobytes on Linux


def run(quick: bool = False) -> list[dict[str, Any]]:
    sizes = (10, 2_000, 10_000) if quick else (10, 10_000, 100_000)
    with tempfile.TemporaryDirectory() as tmp:
        peaks = {size: _peak_mb(size, Path(tmp)) for size in sizes}
    base = peaks[sizes[0]]
    growth = {size: peaks[size] - base for size in sizes[1:]}
    largest = sizes[-1]
    return [
        {
            "name": f"map --ndjson memory: {largest:,} records",
            "ours": growth[largest],
            "baseline": TARGET_MB,
            "unit": "MB resident growth (lower is better)",
            "ratio": TARGET_MB / max(growth[largest], 1e-9),
            "target_ratio": 1.0,
            "growth_mb": {str(size): round(mb, 1) for size, mb in growth.items()},
        }
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    for e in run(quick=args.quick):
        for size, mb in e["growth_mb"].items():
            print(f"{int(size):>8,} records: resident memory grows {mb:,.1f} MB")
        print(f"{e['name']}: {e['ours']:,.1f} MB (target < {TARGET_MB:.0f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
