"""Prometheus metrics of the service, in a registry of its own (``REGISTRY``), served at ``/metrics``.

Counters and histograms (``SENDS``, ``SEND_FAILURES``, ``SEND_LATENCY``, ``DECISIONS``, ``HELD``,
``REQUEST_LATENCY``) count what **this process** did: with several gunicorn workers or several
``worker`` processes each has its own, and Prometheus sums them across scrape targets. The queue
depth by state is different: :class:`QueueDepthCollector` reads it from the store at scrape time, so
it is the truth across every process sharing the database (so do :class:`AuditPushDepthCollector`,
:class:`LandingUnknownCollector` and :class:`RetractionChecksCollector`).

The API serves them at ``/metrics``; a ``worker`` publishes its own with :func:`serve_metrics`
when ``worker_metrics_bind`` is set (a separate scrape target per worker process).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    start_wsgi_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fhir_alliance_service.store.interface import AuditPushState, Store, SyncState

__all__ = [
    "AUDIT_PUSHES",
    "CONFLICTS",
    "DECISIONS",
    "HELD",
    "PULLED",
    "REGISTRY",
    "REQUEST_LATENCY",
    "RETRACTIONS",
    "SENDS",
    "SEND_FAILURES",
    "SEND_LATENCY",
    "AuditPushDepthCollector",
    "LandingUnknownCollector",
    "QueueDepthCollector",
    "RetractionChecksCollector",
    "decision_counter",
    "render_metrics",
    "request_latency",
    "serve_metrics",
]

REGISTRY = CollectorRegistry(auto_describe=True)

SENDS = Counter(
    "fhir_alliance_sends",
    "FHIR resources sent to the clinic's server (per process).",
    ["resource_type"],
    registry=REGISTRY,
)
SEND_FAILURES = Counter(
    "fhir_alliance_send_failures",
    "Failed sends by kind: transient (retried) or permanent (dead-lettered) (per process).",
    ["kind"],
    registry=REGISTRY,
)
SEND_LATENCY = Histogram(
    "fhir_alliance_send_latency_seconds",
    "Time of one send (one request or Bundle) to the FHIR server (per process).",
    registry=REGISTRY,
)
DECISIONS = Counter(
    "fhir_alliance_decisions",
    "Consent decisions by outcome: permit, deny, no-consent (per process).",
    ["outcome"],
    registry=REGISTRY,
)
HELD = Counter(
    "fhir_alliance_held",
    "Outbox items held by the consent gate (per process).",
    registry=REGISTRY,
)
REQUEST_LATENCY = Histogram(
    "fhir_alliance_request_latency_seconds",
    "HTTP request latency by route rule (never the raw path) (per process).",
    ["route"],
    registry=REGISTRY,
)


#: Each labelled metric's children, looked up once (``labels()`` checks and locks on every call).
#: Bounded: the app's URL rules and ``<unmatched>``; the three decision outcomes.
_CHILDREN: dict[tuple[str, str], Any] = {}


def _child(metric: Any, value: str) -> Any:
    """``metric.labels(value)``, remembered."""
    key = (metric._name, value)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN.setdefault(key, metric.labels(value))
    return child


def request_latency(route: str) -> Histogram:
    """The request latency histogram of one route rule (what ``REQUEST_LATENCY.labels`` gives)."""
    child: Histogram = _child(REQUEST_LATENCY, route)
    return child


def decision_counter(outcome: str) -> Counter:
    """The decision counter of one outcome (what ``DECISIONS.labels`` gives)."""
    child: Counter = _child(DECISIONS, outcome)
    return child


class _StoreDepthCollector(Collector):
    """A gauge by ``state`` read from the store at each scrape (one query), so the figure is the
    same whichever process is scraped. Subclasses name the metric, its states and the read."""

    name: str
    documentation: str

    def __init__(self, store_provider: Callable[[], Store]) -> None:
        self._store_provider = store_provider

    def describe(self) -> list[GaugeMetricFamily]:
        return [self._family()]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        for state, count in self._counts(self._store_provider()):
            family.add_metric([state], count)
        yield family

    def _counts(self, store: Store) -> Iterator[tuple[str, int]]:
        raise NotImplementedError

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self.name, self.documentation, labels=["state"])


class QueueDepthCollector(_StoreDepthCollector):
    """``fhir_alliance_queue_depth{state=…}``: outbox items per sync state."""

    name = "fhir_alliance_queue_depth"
    documentation = (
        "Outbox items by sync state, read from the store at scrape time (all processes)."
    )

    def _counts(self, store: Store) -> Iterator[tuple[str, int]]:
        counts = store.counts_by_state()
        for state in SyncState:
            yield state.value, counts.get(state, 0)


class AuditPushDepthCollector(_StoreDepthCollector):
    """``fhir_alliance_audit_push_depth{state=…}``: audit rows waiting to be pushed (``pending``)
    and refused for good (``dead-lettered``; one indexed query; ``sync/audit_push.py``)."""

    name = "fhir_alliance_audit_push_depth"
    documentation = (
        "Audit rows to push to the FHIR server, by state, read from the store at scrape time."
    )

    def _counts(self, store: Store) -> Iterator[tuple[str, int]]:
        counts = store.audit_push_counts()
        for state in (AuditPushState.PENDING, AuditPushState.DEAD_LETTERED):
            yield state.value, counts.get(state, 0)


class LandingUnknownCollector(Collector):
    """``fhir_alliance_landing_unknown``: outbox items a send of which may have landed on the
    FHIR server unrecorded (its answer was lost) and is not known yet to have landed or not,
    read back by the workers until it is (``Store.landing_unknown_count``, one indexed count)."""

    name = "fhir_alliance_landing_unknown"
    documentation = (
        "Outbox items whose lost send may have landed, not yet read back (store, scrape time)."
    )

    def __init__(self, store_provider: Callable[[], Store]) -> None:
        self._store_provider = store_provider

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily(self.name, self.documentation)]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        count = self._store_provider().landing_unknown_count()
        yield GaugeMetricFamily(self.name, self.documentation, value=count)


class RetractionChecksCollector(_StoreDepthCollector):
    """``fhir_alliance_retraction_checks_pending{state=…}``: patients noted for a retraction
    check (``sync/retract.py``): ``due`` (the next retraction pass of any worker makes them) and
    ``leased`` (a check running, or one whose worker died: due once the lease ends; one query,
    ``Store.pending_retraction_checks``). A ``due`` count that stays above 0 says no worker makes
    them, or that they keep failing (the log says why)."""

    name = "fhir_alliance_retraction_checks_pending"
    documentation = "Patients noted for a retraction check, due now or leased (store, scrape time)."

    def _counts(self, store: Store) -> Iterator[tuple[str, int]]:
        pending = store.pending_retraction_checks(now=datetime.now(UTC))
        yield "due", pending.due
        yield "leased", pending.leased


def _scrape_registry(store: Store) -> CollectorRegistry:
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(_RegistryView(REGISTRY))
    scrape.register(QueueDepthCollector(lambda: store))
    scrape.register(AuditPushDepthCollector(lambda: store))
    scrape.register(LandingUnknownCollector(lambda: store))
    scrape.register(RetractionChecksCollector(lambda: store))
    return scrape


def render_metrics(store: Store) -> bytes:
    """The Prometheus text exposition of this process's metrics plus the store's queue depth."""
    return generate_latest(_scrape_registry(store))


def serve_metrics(bind: str, store: Store) -> Callable[[], None]:
    """Publish this process's metrics (and the queue depth) at ``http://<bind>/metrics`` from a
    background thread: how a ``worker`` process, which serves no API, lets Prometheus scrape its
    send counters. No key is asked (counts only, no data); bind it to a private address.
    Returns a function that stops the server."""
    host, _, port = bind.rpartition(":")
    server, thread = start_wsgi_server(int(port), addr=host, registry=_scrape_registry(store))

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop


class _RegistryView(Collector):
    """Lets a per-scrape registry include the process-wide one without re-registering metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from self._registry.collect()


# -- two-way sync (sync/pull.py, sync/retract.py, the worker's 412 policy) --------------------------
PULLED = Counter(
    "fhir_alliance_pulled",
    "Remote resources the pull read, by type and what became of them (per process).",
    ["resource_type", "outcome"],
    registry=REGISTRY,
)
CONFLICTS = Counter(
    "fhir_alliance_conflicts",
    "Resources we own changed on the server by someone else (412 on If-Match, or seen by the "
    "pull), by how the conflict policy settled them (per process).",
    ["outcome"],
    registry=REGISTRY,
)
RETRACTIONS = Counter(
    "fhir_alliance_retractions",
    "Shared resources no longer permitted, by what the retraction policy did (per process).",
    ["outcome"],
    registry=REGISTRY,
)
AUDIT_PUSHES = Counter(
    "fhir_alliance_audit_pushes",
    "Audit rows pushed to the FHIR server, by what became of them: pushed, retried (a failure "
    "tried again later), dead-lettered (per process; sync/audit_push.py).",
    ["outcome"],
    registry=REGISTRY,
)
