"""benchmarks/run.py: verdict per target, progress on long runs, --strict, results merged by name."""

import importlib.util
import json
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

RUNNER = Path(__file__).resolve().parents[2] / "benchmarks" / "run.py"


def load_runner() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_runner", RUNNER)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_bench(folder: Path, name: str, entries: str, *, sleep: float = 0.0) -> None:
    """A benchmark file following the run(quick) contract that returns the given entries."""
    (folder / f"bench_{name}.py").write_text(
        textwrap.dedent(
            f"""
            import time

            def run(quick=False):
                time.sleep({sleep})
                return {entries}
            """
        )
    )


def entry(name: str, ratio: float, target: float = 2.0) -> str:
    return (
        f"{{'name': {name!r}, 'ours': {ratio * 100}, 'baseline': 100.0, 'unit': 'x/s', "
        f"'ratio': {ratio}, 'target_ratio': {target}}}"
    )


@pytest.fixture
def bench_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    write_bench(folder, "fast", f"[{entry('fast path', 3.0)}]")
    write_bench(folder, "slow", f"[{entry('slow path', 1.9)}]")
    return folder


def test_each_target_and_its_verdict_is_printed(
    bench_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every entry is printed with met/MISSED, its figures and its target."""
    runner = load_runner()
    runner.main([], bench_dir=bench_dir, results_path=bench_dir / "results.json")
    out = capsys.readouterr().out
    assert "met     fast path" in out and "MISSED  slow path" in out
    assert "ratio 1.90x; target >= 2x" in out
    assert "1 of 2 targets met" in out


def test_a_miss_fails_the_run_only_with_strict(bench_dir: Path) -> None:
    """A missed target exits 0 by default (noise happens) and 1 with --strict."""
    runner = load_runner()
    results = bench_dir / "results.json"
    assert runner.main([], bench_dir=bench_dir, results_path=results) == 0
    assert runner.main(["--strict"], bench_dir=bench_dir, results_path=results) == 1
    assert runner.main(["--strict", "fast"], bench_dir=bench_dir, results_path=results) == 0


def test_a_crashing_benchmark_fails_the_run_and_the_others_still_run(
    bench_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A benchmark that raises exits 1 even without --strict; the other files' results are kept."""
    write_bench(bench_dir, "broken", "1 / 0")
    runner = load_runner()
    results = bench_dir / "results.json"
    assert runner.main([], bench_dir=bench_dir, results_path=results) == 1
    assert "bench_broken.py" in capsys.readouterr().out
    names = {e["name"] for e in json.loads(results.read_text())["benchmarks"]}
    assert names == {"fast path", "slow path"}


def test_running_a_subset_keeps_the_others_results(bench_dir: Path) -> None:
    """results.json is merged by name: a rerun of one file replaces its entries, keeps the rest."""
    runner = load_runner()
    results = bench_dir / "results.json"
    runner.main([], bench_dir=bench_dir, results_path=results)
    write_bench(bench_dir, "slow", f"[{entry('slow path', 2.5)}]")
    runner.main(["--quick", "slow"], bench_dir=bench_dir, results_path=results)
    saved = {e["name"]: e for e in json.loads(results.read_text())["benchmarks"]}
    assert set(saved) == {"fast path", "slow path"}
    assert saved["slow path"]["met_target"] is True and saved["slow path"]["quick"] is True
    assert saved["fast path"]["quick"] is False and saved["fast path"]["ratio"] == 3.0


def test_long_runs_show_progress(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A benchmark running longer than the heartbeat interval prints 'still running' lines."""
    write_bench(tmp_path, "long", f"[{entry('long path', 3.0)}]", sleep=0.5)
    runner = load_runner()
    runner.main(
        [], bench_dir=tmp_path, results_path=tmp_path / "results.json", heartbeat_seconds=0.1
    )
    out = capsys.readouterr().out
    assert "[1/1] bench_long.py" in out
    assert "bench_long.py still running" in out
