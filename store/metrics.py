"""Prometheus metrics of the store, on a registry of their own, and the port serving them.

One StoreMetrics per server (not module globals) so two stores in one process, as in the
tests, never share counters. Labels are bounded enums; no patient data ever appears in them.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    make_wsgi_app,
)
from prometheus_client.exposition import ThreadingWSGIServer

from seriesflow.build_info import register_build_info

if TYPE_CHECKING:
    from seriesflow.store.completion import Completion

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

CONFLICT_KINDS = ("instance_in_other_series", "study_patient_mismatch", "series_study_mismatch")

# Seconds from a series' last instance to its COMPLETE commit: the idle wait (seconds to
# minutes) dominates, so the buckets span 0.1 s .. 1 h.
_COMPLETION_DELAY_BUCKETS = (
    0.1,
    0.25,
    0.5,
    1,
    2,
    3,
    5,
    7.5,
    10,
    15,
    20,
    30,
    60,
    120,
    300,
    600,
    1800,
    3600,
)
# Seconds from an event's commit to its delivery to a watcher.
_DELIVERY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
COMPLETION_REASONS = ("idle", "released", "hold_expired")
# completion_version as a bounded label: a first completion, a second (one reopen), more.
COMPLETION_VERSIONS = ("1", "2", "3+")
EVENT_KINDS = ("created", "instances_added", "completed", "reopened")

AUTH_SCOPES = ("read", "write")
AUTH_REJECTION_REASONS = (
    "missing_credentials",  # no authorization metadata (or no client certificate)
    "malformed",  # authorization metadata that is not `Bearer <token>`
    "unknown_token",  # a token in neither file
    "unknown_identity",  # a client certificate whose names are in neither list
    "wrong_scope",  # known, but only for the other scope
)


class StoreMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # process_* (CPU, memory, file descriptors, start time), python_info and python_gc_*,
        # as the receiver exports them: the dashboard's resource panels need both services.
        for collector in (GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR):
            r.register(collector)
        self.build_info = register_build_info(r)
        self.updates = Counter(
            "seriesflow_store_updates_total",
            "SeriesUpdates answered, by result",
            ["result"],
            registry=r,
        )
        self.instances = Counter(
            "seriesflow_store_instances_total",
            "Instances in committed updates: new rows, re-sent duplicates, or claimed by "
            "another series (conflict)",
            ["result"],
            registry=r,
        )
        self.transaction_seconds = Histogram(
            "seriesflow_store_transaction_duration_seconds",
            "Duration of one group-commit transaction",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ack_latency = Histogram(
            "seriesflow_store_ack_latency_seconds",
            "Time from reading an update off the stream to sending its ack",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.active_streams = Gauge(
            "seriesflow_store_active_streams", "Open StoreSeries streams", registry=r
        )
        self.pool_connections = Gauge(
            "seriesflow_store_db_pool_connections",
            "Pooled PostgreSQL connections by state",
            ["state"],
            registry=r,
        )
        self.pool_waiting = Gauge(
            "seriesflow_store_db_pool_waiting",
            "Requests waiting for a pooled connection",
            registry=r,
        )
        self.merge_conflicts = Counter(
            "seriesflow_store_merge_conflicts_total",
            "Merge conflicts resolved by the documented rule (see store.ingest), by kind",
            ["kind"],
            registry=r,
        )
        self.database_up = Gauge(
            "seriesflow_store_database_up",
            "1 when the last PostgreSQL probe succeeded, else 0",
            registry=r,
        )
        self.auth_rejections = Counter(
            "seriesflow_store_auth_rejections_total",
            "gRPC calls refused by authentication (UNAUTHENTICATED or PERMISSION_DENIED), "
            "by the scope the call needed and the reason",
            ["scope", "reason"],
            registry=r,
        )
        self.http_requests = Counter(
            "seriesflow_store_http_requests_total",
            "HTTP API requests (QIDO-RS, previews, docs) by route pattern, method and status",
            ["route", "method", "code"],
            registry=r,
        )
        self.http_seconds = Histogram(
            "seriesflow_store_http_request_duration_seconds",
            "Time to answer an HTTP API request, streamed body included, by route pattern",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.completions = Counter(
            "seriesflow_store_series_completions_total",
            "Series that became COMPLETE, by reason and completion version (1 = first "
            "completion; 2 and 3+ follow reopens)",
            ["reason", "version"],
            registry=r,
        )
        self.completion_delay = Histogram(
            "seriesflow_store_completion_delay_seconds",
            "Time from a series' last received instance to its COMPLETE commit",
            buckets=_COMPLETION_DELAY_BUCKETS,
            registry=r,
        )
        self.events_written = Counter(
            "seriesflow_store_series_events_total",
            "Series events written to the event log, by kind",
            ["kind"],
            registry=r,
        )
        self.holds_expired = Counter(
            "seriesflow_store_holds_expired_total",
            "Receiver holds on a series that expired unrenewed (receiver gone or cut off)",
            registry=r,
        )
        self.events_pruned = Counter(
            "seriesflow_store_events_pruned_total",
            "Events deleted from the event log by retention",
            registry=r,
        )
        self.watchers = Gauge(
            "seriesflow_store_watchers", "Open WatchSeries streams on this store", registry=r
        )
        self.watch_lag = Gauge(
            "seriesflow_store_watch_lag_events",
            "Events committed to the log that a watcher has not been sent yet, by the "
            "consumer name it gave (unnamed watchers share one series: the largest lag)",
            ["consumer"],
            registry=r,
        )
        self.event_delivery = Histogram(
            "seriesflow_store_event_delivery_seconds",
            "Time from an event's commit to its sending to a watcher that was caught up",
            buckets=_DELIVERY_BUCKETS,
            registry=r,
        )
        # Pre-create every label value so dashboards see zeros, not missing series.
        for reason in COMPLETION_REASONS:
            for version in COMPLETION_VERSIONS:
                self.completions.labels(reason=reason, version=version)
        for kind in EVENT_KINDS:
            self.events_written.labels(kind=kind)
        for result in ("ok", "invalid", "unavailable"):
            self.updates.labels(result=result)
        for result in ("new", "duplicate", "conflict"):
            self.instances.labels(result=result)
        for kind in CONFLICT_KINDS:
            self.merge_conflicts.labels(kind=kind)
        for scope in AUTH_SCOPES:
            for reason in AUTH_REJECTION_REASONS:
                self.auth_rejections.labels(scope=scope, reason=reason)

    def record_decisions(
        self, completions: Iterable[Completion], events: Mapping[str, int], holds_expired: int
    ) -> None:
        """Count what a committed transaction decided (store.completion)."""
        for done in completions:
            version = str(done.version) if done.version < 3 else "3+"
            self.completions.labels(reason=done.reason.lower(), version=version).inc()
            if done.delay_seconds is not None:
                self.completion_delay.observe(done.delay_seconds)
        for kind, count in events.items():
            self.events_written.labels(kind=kind.lower()).inc(count)
        if holds_expired:
            self.holds_expired.inc(holds_expired)

    def watch_pool(self, stats: Callable[[], dict[str, int]]) -> None:
        """Read pool gauges from `stats` (psycopg_pool's get_stats) at scrape time."""

        def in_use() -> float:
            s = stats()
            return s.get("pool_size", 0) - s.get("pool_available", 0)

        self.pool_connections.labels(state="in_use").set_function(in_use)
        self.pool_connections.labels(state="idle").set_function(
            lambda: stats().get("pool_available", 0)
        )
        self.pool_waiting.set_function(lambda: stats().get("requests_waiting", 0))


METRICS_PATH = "/metrics"


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every few seconds would drown the log


def start_metrics_server(
    host: str, port: int, registry: CollectorRegistry
) -> tuple[WSGIServer, threading.Thread]:
    """Serve `registry` on GET /metrics only (404 elsewhere), in a daemon thread.

    prometheus_client's start_http_server answers every path with the metrics, so a
    probe or a typo (`/readyz`, `/metric`) would get 200 and look like success."""
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") == METRICS_PATH:
            return metrics_app(environ, start_response)
        body = b"not found: the store serves its metrics at /metrics\n"
        start_response(
            "404 Not Found",
            [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
        )
        return [body]

    # An IPv6 host (`::`) needs an AF_INET6 server; HTTPServer assumes AF_INET.
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]

    class Server(ThreadingWSGIServer):
        address_family = family

    httpd = make_server(str(address[0]), port, app, Server, handler_class=_Quiet)
    thread = threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return httpd, thread
