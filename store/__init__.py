"""The seriesflow store: the gRPC SeriesStore service over the PostgreSQL catalog.

The data path, in module order: `servicer` (StoreSeries stream) -> `validation` ->
`ingest` (group-committed merge) -> PostgreSQL; queries go `servicer` -> `queries` /
`attributes`. `server` wires it all (health, reflection, TLS, metrics, shutdown).
"""
