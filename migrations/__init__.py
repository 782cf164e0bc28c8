"""Alembic migrations for the seriesflow catalog: the only way the schema changes.

The store builds its Alembic configuration in code (`store.migrate.alembic_config`) with
`script_location` pointing at this package's folder, so migrating works from any working
directory and from an installed wheel. `alembic.ini` at the repository root is for running
the `alembic` command by hand (`alembic -x url=postgresql://... upgrade head`).
"""

from pathlib import Path

SCRIPT_LOCATION = Path(__file__).resolve().parent
