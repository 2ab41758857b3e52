"""Run every benchmark under benchmarks/, print one table and write benchmarks/results.json.

Each ``benchmarks/bench_*.py`` exposes ``run(quick: bool = False) -> list[dict]``; every entry has
``name``, ``ours``, ``baseline``, ``unit``, ``ratio`` and ``target_ratio`` (and may add ``ceiling`` or
``target_abs``). Target and baseline are always measured in the same run, so a ratio can be checked by
rerunning one command::

    make bench                 # all benchmarks, full size
    python benchmarks/run.py --quick consent   # smaller runs, only names containing "consent"
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.json"


def _load(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def _met(entry: dict[str, Any]) -> bool:
    ok = entry.get("ratio", 0) >= entry.get("target_ratio", 0)
    if "target_abs" in entry:
        ok = ok and entry["ours"] >= entry["target_abs"]
    return bool(ok)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (smoke test)")
    parser.add_argument(
        "only", nargs="*", help="run only benchmark files whose name contains these"
    )
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE.parent))

    entries: list[dict[str, Any]] = []
    for path in sorted(HERE.glob("bench_*.py")):
        if args.only and not any(word in path.stem for word in args.only):
            continue
        print(f"running {path.name} …", flush=True)
        started = time.perf_counter()
        for entry in _load(path).run(quick=args.quick):
            entry.setdefault("file", path.name)
            entry["met_target"] = _met(entry)
            entries.append(entry)
        print(f"  done in {time.perf_counter() - started:.1f} s", flush=True)

    header = ("benchmark", "ours", "baseline", "unit", "ratio", "target", "met")
    rows = [
        (
            e["name"],
            _fmt(e["ours"]),
            _fmt(e["baseline"]),
            e["unit"],
            f"{e['ratio']:.1f}x",
            f">={e['target_ratio']}x" + (f", >={e['target_abs']:,}" if "target_abs" in e else ""),
            "yes" if e["met_target"] else "NO",
        )
        for e in entries
    ]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
    RESULTS.write_text(
        json.dumps(
            {
                "python": platform.python_version(),
                "machine": platform.machine(),
                "quick": args.quick,
                "benchmarks": entries,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS.relative_to(HERE.parent)}")
    return 0 if all(e["met_target"] for e in entries) or args.quick else 1


if __name__ == "__main__":
    raise SystemExit(main())
