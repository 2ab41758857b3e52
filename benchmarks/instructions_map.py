"""``bench_map.py``'s comparison counted in instructions (valgrind's callgrind), not CPU time.

CPU time on a shared 2-core machine moves by tens of percent between rounds; an instruction count
is the same on every run of the same code and input, whatever else the machine does. This runs
one process per (FHIR version, mode) under ``valgrind --tool=callgrind``: each builds the same
records and warms both paths alike, then does nothing more (``none``), the library's fast path
once (``lib``) or the ``map --ndjson`` command once (``map``). A path's count is its process's
total minus ``none``'s; the ratio is the library's count over the command's (what ``bench_map.py``
reports as a share, target 0.8). Instructions are not seconds (a cache miss costs more than an
add), so this cross-checks ``bench_map.py``; it does not replace it.

    python benchmarks/instructions_map.py [--records 2000]    # about 3 minutes per process

Needs ``valgrind`` on PATH. Not run by ``run.py`` (its name does not start with ``bench_``).
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

MODES = ("none", "lib", "map")
VERSIONS = ("4.0.1", "5.0.0")


def child(version: str, mode: str, count: int) -> None:
    """One measured process: build and warm, then run ``mode`` once."""
    import orjson
    from bench_load import make_forms
    from bench_map import library, map_file

    from fhir_alliance.schemas.observations import load_record

    forms = make_forms(count)
    records = [load_record(f) for f in forms]
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "records.ndjson", Path(tmp) / "out.ndjson"
        source.write_bytes(b"".join(orjson.dumps(f) + b"\n" for f in forms))
        library(records, version)  # warm both paths alike, in every mode
        map_file(source, target, version)
        gc.collect()
        gc.freeze()  # as bench_map.frozen_fixtures: the harness's data is not the command's
        if mode == "lib":
            library(records, version)
        elif mode == "map":
            map_file(source, target, version)


def count(version: str, mode: str, records: int) -> int:
    """Instructions of one child process, as callgrind reports them."""
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={os.path.join(tmp, 'out')}",
                sys.executable,
                __file__,
                "--child",
                version,
                mode,
                "--records",
                str(records),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    found = re.search(r"Collected\s*:\s*(\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in valgrind's report:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2_000)
    parser.add_argument("--child", nargs=2, metavar=("VERSION", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.records)
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not on PATH", file=sys.stderr)
        return 2
    for version in VERSIONS:
        counts = {mode: count(version, mode, args.records) for mode in MODES}
        library = counts["lib"] - counts["none"]
        command = counts["map"] - counts["none"]
        print(
            f"map --ndjson, {args.records:,} records (FHIR {version}): library fast path"
            f" {library:,} instructions, map {command:,} ({library / command:.1%} of the library;"
            f" target 80%)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
