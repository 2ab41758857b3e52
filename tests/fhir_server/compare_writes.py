"""Compare the write throughput of two versions of the test server, side by side, alternating.

Profiled Observations (the golden ORS item, profile alliance-item): N POSTs one at a time, then M
PUTs in transaction Bundles of 250, per round, on each server in turn (store emptied first).

Prepare a directory per version holding its server.mjs and a node_modules link, e.g.:
    mkdir -p /tmp/before && git show <commit>:tests/fhir_server/server.mjs > /tmp/before/server.mjs
    ln -s "$PWD/tests/fhir_server/node_modules" /tmp/before/node_modules
Run: .venv/bin/python -m tests.fhir_server.compare_writes /tmp/before tests/fhir_server [--rounds 3]
"""

from __future__ import annotations

import argparse
import subprocess
import time
import uuid
from pathlib import Path

import requests

from tests.fhir_server import measure_writes

FHIR_JSON = {"Content-Type": "application/fhir+json"}
PROFILES = Path(__file__).parents[2] / "profiles/fsh-generated/resources"
BUNDLE = 250


def start(directory: Path) -> tuple[subprocess.Popen[str], str]:
    command = ["node", "server.mjs", "--port", "0", "--detached", "--profiles", str(PROFILES)]
    process = subprocess.Popen(
        command,
        cwd=directory,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,  # one line: "FHIR_TEST_SERVER <base url>"
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("FHIR_TEST_SERVER "):
        process.terminate()
        raise SystemExit(f"{directory}/server.mjs did not start")
    base = line.split()[1]
    while requests.get(f"{base}/metadata", timeout=30).status_code != 200:
        time.sleep(0.5)
    time.sleep(4)  # the validation worker starts after the first answer
    return process, base


def one_at_a_time(http: requests.Session, base: str, count: int) -> float:
    run = str(uuid.uuid4())
    started = time.perf_counter()
    for i in range(count):
        body = measure_writes.profiled_observation(i, run)
        http.post(f"{base}/Observation", json=body, headers=FHIR_JSON).raise_for_status()
    return count / (time.perf_counter() - started)


def in_transactions(http: requests.Session, base: str, count: int) -> float:
    run = str(uuid.uuid4())
    started = time.perf_counter()
    for first in range(0, count, BUNDLE):
        entries = []
        for i in range(first, min(count, first + BUNDLE)):
            body = {**measure_writes.profiled_observation(i, run), "id": f"m-{run}-{i}"}
            request = {"method": "PUT", "url": f"Observation/{body['id']}"}
            entries.append({"resource": body, "request": request})
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        http.post(base, json=bundle, headers=FHIR_JSON).raise_for_status()
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--singles", type=int, default=300)
    parser.add_argument("--bundled", type=int, default=1500)
    args = parser.parse_args()
    servers = {"before": start(args.before), "after": start(args.after)}
    http = requests.Session()
    try:
        for _, base in servers.values():  # warm-up (JIT, connections)
            one_at_a_time(http, base, 50)
            in_transactions(http, base, BUNDLE)
        for round_no in range(args.rounds):
            for name, (_, base) in servers.items():
                http.post(f"{base}/$reset").raise_for_status()
                single = one_at_a_time(http, base, args.singles)
                http.post(f"{base}/$reset").raise_for_status()
                bundled = in_transactions(http, base, args.bundled)
                print(
                    f"round {round_no} {name:6s} one POST at a time {single:5.0f}/s   "
                    f"transaction x{BUNDLE} PUT {bundled:5.0f}/s ({bundled / single:.1f}x)",
                    flush=True,
                )
    finally:
        http.close()
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=10)


if __name__ == "__main__":
    main()
