"""The console overview's 14-day trend: distinct records per UTC day and audit action. Ours:
``Store.audit_counts_by_day`` (one aggregate query). Baseline: reading the audit trail page by
page with ``Store.list_audit`` and counting in Python. SQLite (the embedded default), or the
PostgreSQL database named by ``--postgres URL`` (its tables are created by the migrations), with
200,000 audit entries (20,000 with ``--quick``) spread over 90 days, actions mixed as a synced
clinic writes them (intake, disclose, provenance, some hold and dead-letter). Target: >= 10x.

    python benchmarks/bench_console_trend.py [--quick] [--postgres URL]
"""

from __future__ import annotations

import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from fhir_alliance_service.store import AuditEntry, SqlStore, open_store, upgrade

TARGET_RATIO = 10
NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)
ACTIONS = ("intake", "disclose", "hold", "dead-letter")
MIX = (("intake", 35), ("disclose", 30), ("provenance", 30), ("hold", 4), ("dead-letter", 1))
SINCE = datetime(2026, 11, 18, tzinfo=UTC)
UNTIL = datetime(2026, 12, 2, tzinfo=UTC)


def _entries(count: int) -> list[AuditEntry]:
    rng = random.Random(20261206)
    names = [name for name, _ in MIX]
    weights = [weight for _, weight in MIX]
    entries = []
    for _ in range(count):
        when = NOW - timedelta(seconds=rng.uniform(0, 90 * 86_400))
        action = rng.choices(names, weights)[0]
        record = f"rec-{rng.randrange(count // 3):08d}"
        entries.append(
            AuditEntry(action, record, "Patient/bench", {"resourceType": "AuditEvent"}, when)
        )
    return entries


def scan_counts(store: SqlStore) -> dict[date, dict[str, int]]:
    """The baseline: every audit entry read page by page, the window counted in Python."""
    seen: dict[date, dict[str, set[str]]] = {}
    after = None
    while page := store.list_audit(limit=5_000, after=after):
        for entry in page:
            if entry.action in ACTIONS and entry.record_id and SINCE <= entry.at < UNTIL:
                day = seen.setdefault(entry.at.date(), {})
                day.setdefault(entry.action, set()).add(entry.record_id)
        after = page[-1].id
    return {day: {a: len(ids) for a, ids in actions.items()} for day, actions in seen.items()}


def _median_seconds(work: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def run(quick: bool = False, postgres: str | None = None) -> list[dict[str, Any]]:
    count = 20_000 if quick else 200_000
    workdir = Path(tempfile.mkdtemp(prefix="bench-trend-"))
    try:
        url = postgres or f"sqlite:///{workdir / 'bench.db'}"
        upgrade(url)
        store = open_store(url)
        try:
            entries = _entries(count)
            for start in range(0, count, 5_000):
                store.add_audit(entries[start : start + 5_000])

            def ours() -> dict[date, dict[str, int]]:
                return store.audit_counts_by_day(ACTIONS, since=SINCE, until=UNTIL)

            # Both must agree before their speed means anything.
            assert ours() == scan_counts(store)
            ours_s = _median_seconds(ours, 7)
            baseline_s = _median_seconds(lambda: scan_counts(store), 3)
        finally:
            store.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    backend = "PostgreSQL" if postgres else "SQLite"
    return [
        {
            "name": f"console trend, {count:,} audit entries, {backend}",
            "ours": ours_s * 1000,
            "baseline": baseline_s * 1000,
            "unit": "ms per overview",
            "ratio": baseline_s / ours_s,
            "target_ratio": TARGET_RATIO,
        }
    ]


def main() -> None:
    postgres = sys.argv[sys.argv.index("--postgres") + 1] if "--postgres" in sys.argv else None
    for entry in run(quick="--quick" in sys.argv, postgres=postgres):
        print(
            f"{entry['name']}: ours {entry['ours']:,.1f} {entry['unit']}, baseline (scan in "
            f"Python) {entry['baseline']:,.0f}, {entry['ratio']:.0f}x faster"
        )


if __name__ == "__main__":
    main()
