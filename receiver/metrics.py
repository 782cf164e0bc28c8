"""The receiver's Prometheus metrics. Labels are bounded sets; never patient data."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ASSOCIATIONS_ACTIVE = Gauge(
    "seriesflow_receiver_associations_active", "DICOM associations currently open"
)
ASSOCIATIONS = Counter(
    "seriesflow_receiver_associations",
    "DICOM associations requested, by result",
    ["result"],
)
INSTANCES = Counter(
    "seriesflow_receiver_instances",
    "C-STORE requests answered, by status and reason",
    ["status", "reason"],
)
RECEIVED_BYTES = Counter(
    "seriesflow_receiver_received_bytes", "Dataset bytes received in C-STORE requests"
)
SERIES_FLUSHED = Counter(
    "seriesflow_receiver_series_flushed",
    "Series groups flushed to the store, by completion reason",
    ["reason"],
)
SPOOL_PENDING = Gauge(
    "seriesflow_receiver_spool_pending_instances", "Spooled instances not yet acked by the store"
)
SPOOL_BYTES = Gauge("seriesflow_receiver_spool_bytes", "Bytes held by pending spool entries")
SPOOL_OLDEST_AGE = Gauge(
    "seriesflow_receiver_spool_oldest_pending_age_seconds",
    "Age of the oldest spool entry not yet acked",
)
STREAM_RECONNECTS = Counter(
    "seriesflow_receiver_stream_reconnects",
    "StoreSeries stream (re)connection attempts after a failure",
)
STORE_CONNECTED = Gauge(
    "seriesflow_receiver_store_connected", "1 while the StoreSeries stream is up"
)
ACK_LATENCY = Histogram(
    "seriesflow_receiver_series_ack_latency_seconds",
    "Seconds from a series' last instance received to the store's ack of it",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600),
)
DEAD_LETTERS = Gauge(
    "seriesflow_receiver_dead_letters", "Updates the store rejected as invalid, kept aside"
)

for _reason in ("idle", "released", "max_age"):
    SERIES_FLUSHED.labels(reason=_reason)
for _result in ("accepted", "rejected"):
    ASSOCIATIONS.labels(result=_result)
