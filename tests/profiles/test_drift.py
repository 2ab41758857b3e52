"""The committed profiles/fsh-generated/resources is exactly what the FSH builds to (no drift)."""

from __future__ import annotations

import difflib
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROFILES = REPO / "profiles"
COMMITTED = PROFILES / "fsh-generated" / "resources"
BUILD = PROFILES / "tools" / "build.mjs"


def _rebuild(out: Path) -> Path:
    node = shutil.which("node")
    if node is None or not (PROFILES / "node_modules" / "fsh-sushi").is_dir():
        pytest.fail("the drift test needs Node and profiles/node_modules: run `make node`")
    result = subprocess.run(
        [node, str(BUILD), "--out", str(out)],
        cwd=PROFILES,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"SUSHI build failed:\n{result.stdout}\n{result.stderr}"
    return out / "fsh-generated" / "resources"


def _json_files(directory: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(directory.glob("*.json"))}


@pytest.mark.slow
def test_committed_output_matches_a_fresh_build(tmp_path: Path) -> None:
    """Rebuilding the FSH into a temp dir gives byte-identical files, no more, no fewer."""
    fresh = _json_files(_rebuild(tmp_path))
    committed = _json_files(COMMITTED)
    assert fresh, "the build produced nothing"
    missing = sorted(fresh.keys() - committed.keys())
    stale = sorted(committed.keys() - fresh.keys())
    changed = sorted(
        name for name in fresh.keys() & committed.keys() if fresh[name] != committed[name]
    )
    if missing or stale or changed:
        diff = "".join(
            "".join(
                difflib.unified_diff(
                    committed[name].splitlines(keepends=True),
                    fresh[name].splitlines(keepends=True),
                    f"committed/{name}",
                    f"rebuilt/{name}",
                    n=1,
                )
            )[:3000]
            for name in changed[:3]
        )
        pytest.fail(
            "profiles/fsh-generated/resources is out of date with the FSH; run `make profiles` "
            f"and commit the result.\nnot committed: {missing}\nno longer built: {stale}\n"
            f"different: {changed}\n{diff}"
        )
