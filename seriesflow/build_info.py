"""`seriesflow_build_info`: which build a scraped process runs, as labels on a constant 1.

Both services export it, so a dashboard can show the versions running side by side and
join any per-process series (process_*, which every exporter in a shared Prometheus has
too) to seriesflow's targets: `process_resident_memory_bytes and on (job, instance)
seriesflow_build_info`.

- `version`: the installed distribution's version (importlib.metadata), the package's own
  `__version__` when it runs from a source tree that was never installed.
- `revision`: the source revision the build came from, from SERIESFLOW_REVISION (an image
  build sets it, e.g. `--build-arg REVISION=$(git rev-parse HEAD)` into `ENV`); "unknown"
  when unset. An environment variable, not a file, so the read-only image needs nothing
  written at run time and a rebuild with another revision changes one layer.
"""

from __future__ import annotations

import os
from importlib import metadata

from prometheus_client import CollectorRegistry, Gauge

import seriesflow

REVISION_VARIABLE = "SERIESFLOW_REVISION"


def version() -> str:
    try:
        return metadata.version("seriesflow")
    except metadata.PackageNotFoundError:
        return seriesflow.__version__


def revision() -> str:
    return os.environ.get(REVISION_VARIABLE, "").strip() or "unknown"


def register_build_info(registry: CollectorRegistry) -> Gauge:
    """Add seriesflow_build_info{version, revision} = 1 to `registry`."""
    gauge = Gauge(
        "seriesflow_build_info",
        "Always 1; the labels name the running build (version, source revision)",
        ["version", "revision"],
        registry=registry,
    )
    gauge.labels(version=version(), revision=revision()).set(1)
    return gauge
