"""seriesflow: DICOM ingestion into an exact PostgreSQL catalog.

The package is a small shared floor (`v1`: the generated contract; `settings`; `logs`)
under which the services live: `seriesflow.receiver`, `seriesflow.store`,
`seriesflow.migrations`, and `seriesflow.cli`, the `seriesflow` command that wires them.
"""

__version__ = "0.1.0"
