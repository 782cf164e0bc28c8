"""Prometheus metrics of the store, on a registry of their own.

One StoreMetrics per server (not module globals) so two stores in one process, as in the
tests, never share counters. Labels are bounded enums; no patient data ever appears in them.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

CONFLICT_KINDS = ("instance_in_other_series", "study_patient_mismatch", "series_study_mismatch")

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
        # Pre-create every label value so dashboards see zeros, not missing series.
        for result in ("ok", "invalid", "unavailable"):
            self.updates.labels(result=result)
        for result in ("new", "duplicate", "conflict"):
            self.instances.labels(result=result)
        for kind in CONFLICT_KINDS:
            self.merge_conflicts.labels(kind=kind)
        for scope in AUTH_SCOPES:
            for reason in AUTH_REJECTION_REASONS:
                self.auth_rejections.labels(scope=scope, reason=reason)

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
