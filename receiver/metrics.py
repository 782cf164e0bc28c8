"""Prometheus metrics of the receiver, on a registry of their own.

One ReceiverMetrics per receiver (not module globals), handed to each component that
counts, so two receivers in one process, as in the tests, never share counters. Labels
are bounded sets; no patient data ever appears in them.
"""

from __future__ import annotations

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)

from seriesflow.build_info import register_build_info

# The `step` label of delivery_retries: assigning a series to an update, re-sending an
# update recovered at start, retiring acked entries, keeping a rejected update aside.
DELIVERY_STEPS = ("assign", "resend", "retire", "dead_letter")
# The `result` label of previews: rendered, or the reason of receiver.render.NotRendered.
PREVIEW_RESULTS = ("rendered", "no_pixel_data", "undecodable", "unsupported", "too_large", "failed")
_ACK_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600)


class ReceiverMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # The process, platform and GC metrics prometheus_client puts in its default
        # registry, which the receiver exported before it had a registry of its own.
        for collector in (GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR):
            r.register(collector)
        self.build_info = register_build_info(r)
        self.associations_active = Gauge(
            "seriesflow_receiver_associations_active",
            "DICOM associations currently open",
            registry=r,
        )
        self.associations = Counter(
            "seriesflow_receiver_associations",
            "DICOM associations requested, by result",
            ["result"],
            registry=r,
        )
        self.instances = Counter(
            "seriesflow_receiver_instances",
            "C-STORE requests answered, by status and reason",
            ["status", "reason"],
            registry=r,
        )
        self.received_bytes = Counter(
            "seriesflow_receiver_received_bytes",
            "Dataset bytes received in C-STORE requests",
            registry=r,
        )
        self.previews = Counter(
            "seriesflow_receiver_previews_total",
            "Series previews rendered, or not rendered by reason (no_pixel_data, undecodable, "
            "unsupported, too_large, failed)",
            ["result"],
            registry=r,
        )
        self.preview_render_seconds = Histogram(
            "seriesflow_receiver_preview_render_seconds",
            "Time to render one preview in a worker process",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.stow_requests = Counter(
            "seriesflow_receiver_stow_requests",
            "STOW-RS requests answered, by HTTP status",
            ["status"],
            registry=r,
        )
        self.stow_request_seconds = Histogram(
            "seriesflow_receiver_stow_request_seconds",
            "Time from a STOW-RS request's start to its answer",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.hold_reports = Counter(
            "seriesflow_receiver_hold_reports_total",
            "Hold reports sent to the store (a series open here, reported or renewed)",
            registry=r,
        )
        self.series_flushed = Counter(
            "seriesflow_receiver_series_flushed",
            "Series groups flushed to the store, by completion reason",
            ["reason"],
            registry=r,
        )
        self.spool_pending = Gauge(
            "seriesflow_receiver_spool_pending_instances",
            "Spooled instances not yet acked by the store",
            registry=r,
        )
        self.spool_bytes = Gauge(
            "seriesflow_receiver_spool_bytes", "Bytes held by pending spool entries", registry=r
        )
        self.spool_limit_bytes = Gauge(
            "seriesflow_receiver_spool_limit_bytes",
            "SERIESFLOW_SPOOL_MAX_BYTES: pending spool bytes beyond which C-STORE answers "
            "0xA700 (free = this minus seriesflow_receiver_spool_bytes)",
            registry=r,
        )
        self.spool_oldest_age = Gauge(
            "seriesflow_receiver_spool_oldest_pending_age_seconds",
            "Age of the oldest spool entry not yet acked",
            registry=r,
        )
        self.stream_reconnects = Counter(
            "seriesflow_receiver_stream_reconnects",
            "StoreSeries stream (re)connection attempts after a failure",
            registry=r,
        )
        self.store_connected = Gauge(
            "seriesflow_receiver_store_connected",
            "1 while the StoreSeries stream is up",
            registry=r,
        )
        self.ack_latency = Histogram(
            "seriesflow_receiver_series_ack_latency_seconds",
            "Seconds from a series' last instance received to the store's ack of it",
            buckets=_ACK_LATENCY_BUCKETS,
            registry=r,
        )
        self.dead_letters = Gauge(
            "seriesflow_receiver_dead_letters",
            "Updates the store rejected as invalid, kept aside",
            registry=r,
        )
        self.delivery_retries = Counter(
            "seriesflow_receiver_delivery_retries",
            "Delivery steps that failed on the spool (disk full, I/O error) and were "
            "scheduled again with backoff, by step",
            ["step"],
            registry=r,
        )
        self.delivery_held = Gauge(
            "seriesflow_receiver_delivery_held",
            "Delivery steps waiting to be retried because the spool could not be written",
            registry=r,
        )
        self.contexts_rejected = Counter(
            "seriesflow_receiver_presentation_contexts_rejected",
            "Proposed presentation contexts answered with a rejection, by reason",
            ["reason"],
            registry=r,
        )
        self.connections_refused = Counter(
            "seriesflow_receiver_connections_refused",
            "TCP connections closed before association, by reason",
            ["reason"],
            registry=r,
        )
        self.connections_pending = Gauge(
            "seriesflow_receiver_connections_pending",
            "TCP connections open that have not yet sent a whole A-ASSOCIATE-RQ",
            registry=r,
        )
        # Pre-create every label value so dashboards see zeros, not missing series.
        for step in DELIVERY_STEPS:
            self.delivery_retries.labels(step=step)
        for reason in ("idle", "released", "max_age"):
            self.series_flushed.labels(reason=reason)
        for result in ("accepted", "rejected"):
            self.associations.labels(result=result)
        for result in PREVIEW_RESULTS:
            self.previews.labels(result=result)
        for reason in (
            "abstract_syntax_not_supported",
            "transfer_syntaxes_not_supported",
            "role_not_supported",
        ):
            self.contexts_rejected.labels(reason=reason)
        for reason in ("too_many_pending", "request_timeout", "request_too_large", "aborted"):
            self.connections_refused.labels(reason=reason)
