"""Demo of the sync service on embedded defaults: a synthetic clinic goes through the HTTP API to a
real FHIR server, gated by its clients' consents.

``make demo`` runs it. Without ``--base-url`` it starts the suite's own FHIR R4 test server
(tests/fhir_server, Medplum's router) on a free loopback port. Then, as separate processes, exactly
as a clinic would run them:

1. ``fhir-alliance db upgrade`` on a SQLite file in a temporary directory, and
   ``fhir-alliance create-api-key`` (the key is printed once; only its hash is stored);
2. ``fhir-alliance serve`` (gunicorn) and ``fhir-alliance worker``;
3. the clinic (examples/demo/clinic/) is posted through the API: consents to ``/v1/consents``,
   session measures to ``/v1/records``; the worker gates, maps and sends them;
4. once the queue is drained, one client revokes the share (``/v1/consents/{id}/revoke``), the
   decision endpoint says what that means for the EHR, and the client's next session is posted:
   it is held;
5. what was sent (with the server's URLs), what was held and why;
6. with ``--console`` (``make demo-console``) the clinic console's URL and a sign-in key for it
   (printed once), and the service keeps running until Ctrl-C. Then everything is stopped, even
   on failure or Ctrl-C.

All data is synthetic. Exit status 0 when the clinic synced as expected.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CLINIC = HERE / "demo" / "clinic"
sys.path.insert(0, str(ROOT))

#: How the demo clinic's consents name its EHR (the recipient of every push).
EHR = "Organization/demo-ehr"
#: The client who revokes her share in step 4.
REVOKING_CLIENT = "Patient/demo-client-3"
#: Sync states a record leaves only when the worker gets to it.
PENDING = frozenset({"queued", "failed"})
START_TIMEOUT = 60.0
DRAIN_TIMEOUT = 120.0


def _fhir_alliance() -> str:
    """The ``fhir-alliance`` command of the Python running this demo (the project's venv)."""
    beside = Path(sys.executable).with_name("fhir-alliance")
    return str(beside) if beside.exists() else "fhir-alliance"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _load(name: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads((CLINIC / name).read_text(encoding="utf-8"))
    return data


@dataclass
class Service:
    """The service's processes and how to reach its API."""

    env: dict[str, str]
    workdir: Path
    api: str = ""
    key: str = ""
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    http: requests.Session = field(default_factory=requests.Session)

    def run(self, *args: str) -> str:
        """Run one ``fhir-alliance`` command to completion; its stdout."""
        result = subprocess.run(
            [_fhir_alliance(), *args], env=self.env, capture_output=True, text=True, timeout=120
        )
        if result.returncode != 0:
            raise SystemExit(f"fhir-alliance {args[0]} failed: {result.stderr.strip()}")
        return result.stdout

    def start(self, name: str, *args: str) -> None:
        log = (self.workdir / f"{name}.log").open("wb")
        self.processes[name] = subprocess.Popen(
            [_fhir_alliance(), name, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()

    def stop(self) -> None:
        """SIGTERM every process (the worker finishes its batch, gunicorn its requests); kill what
        does not end in time."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.http.close()

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                log = (self.workdir / f"{name}.log").read_text(errors="replace")[-2000:]
                raise SystemExit(
                    f"`fhir-alliance {name}` stopped (exit {process.returncode}):\n{log}"
                )

    def call(self, method: str, path: str, body: Any = None) -> Any:
        response = self.http.request(
            method,
            f"{self.api}{path}",
            json=body,
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=30,
        )
        if response.status_code >= 400:
            raise SystemExit(f"{method} {path}: HTTP {response.status_code} {response.text[:500]}")
        return response.json()


@contextlib.contextmanager
def running_service(fhir_base_url: str) -> Iterator[Service]:
    """Migrate a fresh SQLite store, create an API key, start ``serve`` and ``worker``; stop both
    (and remove the store) afterwards, however the block ends."""
    with tempfile.TemporaryDirectory(prefix="fhir-alliance-demo-") as tmp:
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_ALLIANCE_")}
        env.update(
            FHIR_ALLIANCE_DATABASE_URL=f"sqlite:///{Path(tmp) / 'demo.db'}",
            FHIR_ALLIANCE_FHIR_BASE_URL=fhir_base_url,
            FHIR_ALLIANCE_RECIPIENTS=EHR,
            FHIR_ALLIANCE_BIND=f"127.0.0.1:{port}",
            FHIR_ALLIANCE_WEB_WORKERS="1",
            FHIR_ALLIANCE_POLL_INTERVAL_SECONDS="0.2",
            FHIR_ALLIANCE_LOG_LEVEL="WARNING",
        )
        service = Service(env=env, workdir=Path(tmp), api=f"http://127.0.0.1:{port}")
        try:
            print("1. " + service.run("db", "upgrade").strip())
            service.key = service.run(
                "create-api-key", "demo", "--scope", "read", "--scope", "write"
            ).strip()
            print("   created an API key with scopes read and write (shown once, stored hashed)")
            service.start("serve")
            service.start("worker")
            _wait_until_ready(service)
            print(f"2. the service answers at {service.api} (gunicorn); a worker is running")
            yield service
        finally:
            service.stop()


def _wait_until_ready(service: Service) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        service.check_alive()
        with contextlib.suppress(requests.ConnectionError, requests.Timeout):
            if service.http.get(f"{service.api}/readyz", timeout=5).status_code == 200:
                return
        time.sleep(0.2)
    raise SystemExit(f"the service did not become ready within {START_TIMEOUT:.0f} s")


def _post(service: Service, path: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    answer: list[dict[str, Any]] = service.call("POST", path, records)["records"]
    return answer


def _patients(records: Sequence[dict[str, Any]]) -> list[str]:
    return sorted({r["patient"]["reference"] for r in records if "patient" in r})


def _records_of(service: Service, patient: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    path: str | None = f"/v1/patients/{patient}/records?limit=100"
    while path:
        page = service.call("GET", path)
        records.extend(page["records"])
        path = page.get("next")
    return records


def _wait_until_drained(service: Service, patients: Sequence[str]) -> list[dict[str, Any]]:
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while True:
        service.check_alive()
        records = [r for p in patients for r in _records_of(service, p)]
        pending = [r for r in records if (r.get("status") or {}).get("state") in PENDING]
        if not pending:
            return records
        if time.monotonic() > deadline:
            raise SystemExit(f"{len(pending)} record(s) still pending after {DRAIN_TIMEOUT:.0f} s")
        time.sleep(0.3)


def _label(record: dict[str, Any]) -> str:
    body = record.get("record") or {}
    what = body.get("instrument") or body.get("dimension") or body.get("consent_kind") or ""
    value = str(record.get("identifier", "")).rpartition("|")[2]
    return f"{record.get('kind', '?')}{f' ({what})' if what else ''} {value}"


def report(records: Sequence[dict[str, Any]], fhir_base_url: str) -> Counter[str]:
    """Print each patient's records: sent (with the server URLs) or held (with the reason)."""
    states: Counter[str] = Counter()
    by_patient: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_patient.setdefault(str(record.get("patient")), []).append(record)
    for patient, rows in sorted(by_patient.items()):
        print(f"   {patient}")
        for record in sorted(rows, key=_label):
            sync = record.get("status") or {}
            state = str(sync.get("state"))
            states[state] += 1
            if state == "sent":
                urls = [
                    f"{fhir_base_url}/{r['resource_type']}/{r['id']}" for r in sync.get("sent", [])
                ]
                more = f" (and {len(urls) - 1} more resources)" if len(urls) > 1 else ""
                print(f"     sent  {_label(record)}: {urls[0] if urls else '?'}{more}")
            elif state == "held":
                print(f"     held  {_label(record)}: {sync.get('held_reason')}")
            else:
                print(f"     {state:5s} {_label(record)}")
    return states


def run(
    fhir_base_url: str,
    *,
    observe: Callable[[Service], None] | None = None,
    keep_running: bool = False,
) -> int:
    """The demo against ``fhir_base_url``; ``observe`` (tests) is shown the running service;
    ``keep_running`` leaves the service and the console up until Ctrl-C."""
    consents, sessions = _load("1-consents.json"), _load("2-sessions.json")
    later = _load("3-later.json")
    revocation = next(r for r in later if r["kind"] == "consent-revocation")
    later_sessions = [r for r in later if r["kind"] != "consent-revocation"]
    patients = _patients(consents + sessions + later_sessions)
    with running_service(fhir_base_url) as service:
        if observe is not None:
            observe(service)
        _post(service, "/v1/consents", consents)
        _post(service, "/v1/records", sessions)
        print(
            f"3. posted {len(consents)} consents and {len(sessions)} session records "
            f"of {len(patients)} clients"
        )
        _wait_until_drained(service, patients)

        sharing = next(
            r
            for r in _records_of(service, REVOKING_CLIENT)
            if r["identifier"] == revocation["consent"]
        )
        body = {k: revocation[k] for k in ("at", "by", "reason") if k in revocation}
        revoked = service.call("POST", f"/v1/consents/{sharing['id']}/revoke", body)
        _post(service, "/v1/records", later_sessions)
        decision = service.call(
            "GET", f"/v1/patients/{REVOKING_CLIENT}/decision?recipient={EHR}&purpose=TREAT"
        )
        print(
            f"4. {REVOKING_CLIENT} revoked the share (consent now {revoked['record']['status']}); "
            f"the decision for the EHR is now {decision['decision']}; "
            f"posted {len(later_sessions)} later session records"
        )
        records = _wait_until_drained(service, patients)
        print("5. the queue is drained:")
        states = report(records, fhir_base_url)
        print(f"   in all: {dict(sorted(states.items()))}")
        print("   look on the FHIR server:")
        for patient in patients:
            print(f"     {fhir_base_url}/Observation?subject={patient}")
        print(f"     {fhir_base_url}/Consent?patient={patients[0]}")
        show_console(service, keep_running=keep_running)
    print("   stopped the service and its worker")
    return 0 if _as_expected(records) else 1


def show_console(service: Service, *, keep_running: bool) -> None:
    """Print the clinic console's URL and a sign-in key made for it (admin: it may replay), shown
    once; with ``keep_running`` wait for Ctrl-C (or SIGTERM) before everything is stopped."""
    if not keep_running:
        # the service stops with the demo: a key and a URL for it would lead nowhere
        print("6. the clinic console: make demo-console (or --console) keeps the service")
        print("   running and prints its URL and a key to sign in with")
        return
    console_key = service.run("create-api-key", "console", "--scope", "admin").strip()
    print(f"6. the clinic console: {service.api}/console/")
    print(f"   sign in with this key (scope admin; shown once, stored hashed): {console_key}")
    print("   the service keeps running; press Ctrl-C to stop it")
    try:
        while True:
            service.check_alive()
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("   stopping")


def _as_expected(records: Sequence[dict[str, Any]]) -> bool:
    """The clinic's story holds: something was sent, nothing failed or went to the dead letter,
    the rupture's session narrative (PSYTHPN) and the AI rating were held, and the revoking
    client's later sessions were held."""

    def state(record: dict[str, Any]) -> str:
        return str((record.get("status") or {}).get("state"))

    def kinds_held(predicate: Any) -> bool:
        chosen = [r for r in records if predicate(r)]
        return bool(chosen) and all(state(r) == "held" for r in chosen)

    later_ids = {r["id"] for r in _load("3-later.json") if "id" in r}
    checks = {
        "some records were sent": any(state(r) == "sent" for r in records),
        "nothing failed or was dead-lettered": not any(
            state(r) in ("failed", "dead-lettered", "queued") for r in records
        ),
        "the rupture with session narrative was held": kinds_held(lambda r: r["kind"] == "rupture"),
        "the automated rating was held": kinds_held(
            lambda r: (r.get("record") or {}).get("rater", {}).get("role") == "automated"
        ),
        "sessions after the revocation were held": kinds_held(
            lambda r: r["identifier"] in later_ids
        ),
    }
    failed = [name for name, ok in checks.items() if not ok]
    for name in failed:
        print(f"   NOT as expected: {name}")
    return not failed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--base-url", help="an R4 server to use instead of the local test server (it gets data!)"
    )
    parser.add_argument(
        "--console",
        action="store_true",
        help="keep the service running afterwards, with the clinic console, until Ctrl-C",
    )
    args = parser.parse_args(argv)
    # A SIGTERM to the demo ends it like Ctrl-C: the finally blocks stop every process.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        if args.base_url:
            return run(args.base_url.rstrip("/"), keep_running=args.console)
        from tests.fhir_server.plugin import start_local_server

        with tempfile.TemporaryDirectory() as log_dir:
            server = start_local_server(Path(log_dir))
            try:
                print(f"started the local FHIR R4 test server at {server.base_url}")
                return run(server.base_url, keep_running=args.console)
            finally:
                server.stop()
    except KeyboardInterrupt:
        print("interrupted: everything was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
