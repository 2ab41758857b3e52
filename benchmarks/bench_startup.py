"""Start-up: ``import fhir_alliance`` and ``fhir-alliance --help`` in a fresh interpreter.

Each is timed as the median wall time of fresh ``python`` processes, against a baseline measured in
the same run: the same process importing everything the package used to import eagerly (the FHIR
client, the consent engine, every built-in command module). ``ceiling`` is a bare ``python -c pass``
(the interpreter's own start-up, which no change of ours can beat). Target: under 150 ms.

Run alone: ``python benchmarks/bench_startup.py [--quick]``; or through ``benchmarks/run.py``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGET_MS = 150.0

EAGER = (
    "import fhir_alliance, fhir_alliance.client, fhir_alliance.consent, "
    "fhir_alliance.consent.gate, fhir_alliance.mapping.cli, fhir_alliance.consent.cli, "
    "fhir_alliance.check"
)
CASES = {
    "import fhir_alliance": ("import fhir_alliance", EAGER),
    "fhir-alliance --help": (
        "from fhir_alliance.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass",
        f"{EAGER}\nfrom fhir_alliance.cli import build_parser\nbuild_parser().format_help()",
    ),
}


def _median_ms(code: str, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, check=True, stdout=subprocess.DEVNULL
        )
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def run(quick: bool = False) -> list[dict[str, Any]]:
    runs = 5 if quick else 21
    bare = _median_ms("pass", runs)
    entries = []
    for name, (ours_code, baseline_code) in CASES.items():
        ours = _median_ms(ours_code, runs)
        baseline = _median_ms(baseline_code, runs)
        entries.append(
            {
                "name": f"start-up: {name}",
                "ours": ours,
                "baseline": baseline,
                "ceiling": bare,
                "unit": "ms (lower is better)",
                # run.py compares ratio >= target_ratio: here baseline/ours, and ours under 150 ms
                "ratio": baseline / ours if ours < TARGET_MS else 0.0,
                "target_ratio": 1.0,
                "target_ms": TARGET_MS,
            }
        )
    return entries


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    for e in run(quick=args.quick):
        print(
            f"{e['name']}: ours {e['ours']:.0f} ms, eager baseline {e['baseline']:.0f} ms,"
            f" bare python {e['ceiling']:.0f} ms (target < {e['target_ms']:.0f} ms)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
