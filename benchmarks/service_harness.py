"""Shared pieces of the service benchmarks (``bench_service_*.py``): a migrated SQLite store with an
API key, ``fhir-alliance serve`` as a real gunicorn process, the bare-Flask baseline under the same
gunicorn configuration, and one HTTP client loop (threads with a keep-alive connection each) that
drives both the same way. The service's store is SQLite by default, or a fresh schema of a given
PostgreSQL database. Not a benchmark itself (``run.py`` only loads ``bench_*.py``)."""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

#: gunicorn worker processes for both the service and its baseline (the machine has 2 cores).
WEB_WORKERS = 2
#: Threads per worker process for both (None: the service's default, ``web_threads``).
WEB_THREADS: int | None = None
#: Client threads driving a server; each has its own keep-alive ``http.client`` connection.
CLIENT_THREADS = 4
STARTUP_TIMEOUT = 60.0


def fhir_alliance_command() -> str:
    beside = Path(sys.executable).with_name("fhir-alliance")
    return str(beside) if beside.exists() else "fhir-alliance"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def service_env(database_url: str, **settings: str) -> dict[str, str]:
    """The environment for a service process: ours only, nothing inherited from FHIR_ALLIANCE_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_ALLIANCE_")}
    env["FHIR_ALLIANCE_DATABASE_URL"] = database_url
    env["FHIR_ALLIANCE_LOG_LEVEL"] = "WARNING"
    env.update({f"FHIR_ALLIANCE_{name.upper()}": value for name, value in settings.items()})
    return env


@dataclass
class RunningServer:
    url: str
    api_key: str
    database_url: str
    workdir: Path
    pid: int = 0  # gunicorn's master process

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server's processes have used so far: gunicorn's master
        and its workers (``/proc/<pid>/stat``; 0.0 where there is no ``/proc``)."""
        return process_tree_cpu_seconds(self.pid)


_TICKS: float = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # after "pid (comm) "


def process_tree_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and of its children (gunicorn's workers), in seconds."""
    if not pid or not Path("/proc").is_dir():
        return 0.0
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        # fields[1] is the parent's pid, [11] utime, [12] stime (stat(5), counted from "state")
        if fields is not None and (int(entry.name) == pid or int(fields[1]) == pid):
            total += int(fields[11]) + int(fields[12])
    return total / _TICKS


def _wait_for(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(
                f"server stopped (exit {process.returncode}):\n{log.read_text()[-2000:]}"
            )
        with contextlib.suppress(requests.ConnectionError, requests.Timeout):
            if requests.get(url, timeout=5).status_code == 200:
                return
        time.sleep(0.1)
    raise SystemExit(f"server at {url} did not answer within {STARTUP_TIMEOUT:.0f} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()  # gunicorn: graceful
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def migrated_store(workdir: Path) -> Iterator[str]:
    from fhir_alliance_service.store import upgrade

    url = f"sqlite:///{workdir / 'bench.db'}"
    upgrade(url)
    yield url


@contextlib.contextmanager
def migrated_postgres_schema(database_url: str) -> Iterator[str]:
    """A fresh schema of its own in the PostgreSQL database at ``database_url``, migrated; the
    store URL (``search_path`` set to it) is yielded and the schema dropped afterwards."""
    from fhir_alliance_service.store import normalise_url, upgrade
    from sqlalchemy import create_engine, text

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    base = normalise_url(database_url)
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = base.update_query_dict({"options": f"-csearch_path={schema}"})
        rendered = url.render_as_string(hide_password=False)
        upgrade(rendered)
        yield rendered
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def create_key(database_url: str, scopes: Sequence[str]) -> str:
    from fhir_alliance_service.auth import create_api_key
    from fhir_alliance_service.store import open_store

    store = open_store(database_url)
    try:
        return create_api_key(store, "benchmark", scopes)
    finally:
        store.close()


@contextlib.contextmanager
def service(
    scopes: Sequence[str], *, postgres_url: str | None = None, **settings: str
) -> Iterator[RunningServer]:
    """``fhir-alliance serve`` (gunicorn, ``WEB_WORKERS`` workers) on a fresh SQLite store, or
    with ``postgres_url`` on a fresh schema of that PostgreSQL database (dropped afterwards)."""
    with (
        tempfile.TemporaryDirectory(prefix="fhir-alliance-bench-") as tmp,
        (
            migrated_store(Path(tmp))
            if postgres_url is None
            else migrated_postgres_schema(postgres_url)
        ) as database_url,
    ):
        key = create_key(database_url, scopes)
        port = free_port()
        log = Path(tmp) / "serve.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    fhir_alliance_command(),
                    "serve",
                    "--bind",
                    f"127.0.0.1:{port}",
                    "--workers",
                    str(WEB_WORKERS),
                    *(["--threads", str(WEB_THREADS)] if WEB_THREADS is not None else []),
                ],
                env=service_env(database_url, **settings),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            _wait_for(f"http://127.0.0.1:{port}/healthz", process, log)
            yield RunningServer(
                f"http://127.0.0.1:{port}", key, database_url, Path(tmp), process.pid
            )
        finally:
            _stop(process)


#: The baseline server: a bare Flask app whose one POST endpoint only parses the JSON body, run by
#: the same ``ServiceApplication`` with the same ``gunicorn_options`` as ``fhir-alliance serve``.
_BARE_SERVER = """
import sys
from flask import Flask, request
from fhir_alliance_service.cli_serve import ServiceApplication, gunicorn_options
from fhir_alliance_service.config import load_settings

def bare_app():
    app = Flask("bare")

    @app.post("/<path:anything>")
    def parse_only(anything):
        body = request.get_json()
        return {"parsed": len(body) if isinstance(body, (list, dict)) else 1}, 201

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    return app

threads = int(sys.argv[3]) if sys.argv[3:] else None
options = gunicorn_options(
    load_settings(), bind=sys.argv[1], workers=int(sys.argv[2]), threads=threads
)
ServiceApplication(bare_app, options).run()
"""


@contextlib.contextmanager
def bare_flask() -> Iterator[RunningServer]:
    """The baseline: bare Flask under the same gunicorn configuration as the service."""
    with tempfile.TemporaryDirectory(prefix="fhir-alliance-bench-bare-") as tmp:
        port = free_port()
        log = Path(tmp) / "bare.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _BARE_SERVER,
                    f"127.0.0.1:{port}",
                    str(WEB_WORKERS),
                    *([str(WEB_THREADS)] if WEB_THREADS is not None else []),
                ],
                env=service_env(f"sqlite:///{Path(tmp) / 'unused.db'}"),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            _wait_for(f"http://127.0.0.1:{port}/healthz", process, log)
            yield RunningServer(f"http://127.0.0.1:{port}", "", "", Path(tmp), process.pid)
        finally:
            _stop(process)


@dataclass
class LoadResult:
    requests: int
    seconds: float
    latencies: list[float]  # seconds, one per request
    server_cpu_seconds: float = 0.0  # the server's processes over the run (when given)
    client_cpu_seconds: float = 0.0  # this process (the client loop) over the run

    def server_cpu_ms(self) -> float:
        """The server's CPU time per request, in ms: steadier than rates on a shared machine."""
        return 1000 * self.server_cpu_seconds / self.requests

    def client_cpu_ms(self) -> float:
        return 1000 * self.client_cpu_seconds / self.requests

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

    def percentile_ms(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def median_ms(self) -> float:
        return 1000 * statistics.median(self.latencies)


def drive(
    url: str,
    bodies: Sequence[bytes],
    *,
    api_key: str = "",
    expect: Callable[[int], bool] = lambda status: status < 300,
    threads: int = CLIENT_THREADS,
    server: RunningServer | None = None,
) -> LoadResult:
    """POST every body once to ``url`` from ``threads`` threads (each its own keep-alive
    connection, bodies dealt round-robin); wall time from the first request to the last answer,
    each latency, the CPU time of this process and (given ``server``) of the server's."""
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    shares = [bodies[i::threads] for i in range(threads)]
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors: list[str] = []
    start_gate = threading.Barrier(threads + 1)

    target = urlsplit(url)
    path = target.path + (f"?{target.query}" if target.query else "")

    def worker(n: int) -> None:
        # http.client rather than requests: a tenth of the client's CPU per request, so that the
        # load generator (sharing the machine's cores) is not what gets measured. It reconnects
        # by itself when a server closes the connection.
        connection = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
        try:
            start_gate.wait()
            for body in shares[n]:
                started = time.perf_counter()
                connection.request("POST", path, body=body, headers=headers)
                response = connection.getresponse()
                answer = response.read()
                latencies[n].append(time.perf_counter() - started)
                if not expect(response.status):
                    errors.append(f"HTTP {response.status}: {answer[:300]!r}")
                    return
        finally:
            connection.close()

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    server_cpu = server.cpu_seconds() if server is not None else 0.0
    client_cpu = time.process_time()
    start_gate.wait()
    started = time.perf_counter()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - started
    client_cpu = time.process_time() - client_cpu
    server_cpu = server.cpu_seconds() - server_cpu if server is not None else 0.0
    if errors:
        raise SystemExit(f"{len(errors)} request(s) failed; first: {errors[0]}")
    flat = [x for part in latencies for x in part]
    return LoadResult(
        requests=len(flat),
        seconds=elapsed,
        latencies=flat,
        server_cpu_seconds=server_cpu,
        client_cpu_seconds=client_cpu,
    )


def add_gunicorn_options(parser: Any) -> None:
    """``--workers`` and ``--threads`` for a benchmark's command line (both servers get them)."""
    parser.add_argument(
        "--workers", type=int, default=WEB_WORKERS, help=f"gunicorn workers (default {WEB_WORKERS})"
    )
    parser.add_argument(
        "--threads", type=int, help="threads per worker (default: the service's web_threads)"
    )


def use_gunicorn_options(args: Any) -> dict[str, int | None]:
    """Apply ``--workers``/``--threads`` to both servers; what to print beside the figures."""
    global WEB_WORKERS, WEB_THREADS
    WEB_WORKERS, WEB_THREADS = args.workers, args.threads
    return {"web_workers": WEB_WORKERS, "web_threads": WEB_THREADS}


def cpu_figures(ours: LoadResult, baseline: LoadResult) -> dict[str, float]:
    """CPU time per request (ms) of each server's processes and of the client loop, and the ratio
    those give (the baseline's server + client over ours): steadier than the rates, which swing
    with whatever else the shared machine runs."""
    figures = {
        "server_cpu_ms": round(ours.server_cpu_ms(), 3),
        "baseline_server_cpu_ms": round(baseline.server_cpu_ms(), 3),
        "client_cpu_ms": round(ours.client_cpu_ms(), 3),
        "baseline_client_cpu_ms": round(baseline.client_cpu_ms(), 3),
    }
    spent = figures["server_cpu_ms"] + figures["client_cpu_ms"]
    if spent > 0:
        figures["cpu_ratio"] = round(
            (figures["baseline_server_cpu_ms"] + figures["baseline_client_cpu_ms"]) / spent, 3
        )
    figures["load_average"] = round(os.getloadavg()[0], 2)
    return figures


def entry(
    name: str, ours: float, baseline: float, unit: str, target_ratio: float, **extra: Any
) -> dict[str, Any]:
    """One result in ``benchmarks/run.py``'s shape."""
    return {
        "name": name,
        "ours": round(ours, 1),
        "baseline": round(baseline, 1),
        "unit": unit,
        "ratio": round(ours / baseline, 2) if baseline else 0.0,
        "target_ratio": target_ratio,
        **extra,
    }


def print_entries(entries: Sequence[dict[str, Any]]) -> None:
    for e in entries:
        extra = {
            k: v
            for k, v in e.items()
            if k not in {"name", "ours", "baseline", "unit", "ratio", "target_ratio"}
        }
        print(
            f"{e['name']}\n  ours {e['ours']:,} {e['unit']}, baseline {e['baseline']:,}, "
            f"ratio {e['ratio']}x (target >= {e['target_ratio']}x) {extra or ''}"
        )
