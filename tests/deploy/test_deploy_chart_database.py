"""The chart's Bitnami-style database parts against a real PostgreSQL that demands a password.

With externalDatabase.host the chart gives the containers a URL without the password and
the password apart, as PGPASSWORD from a Secret, relying on libpq to combine them. This
starts a private embedded PostgreSQL whose pg_hba.conf requires scram-sha-256 for the
rendered user, and runs the real `seriesflow migrate` with the rendered environment (the
host swapped for the server's socket): it authenticates with PGPASSWORD, and fails without.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

import psycopg
import pytest
from deploy_support import CHART, container_env, containers, one, render
from psycopg import sql

from seriesflow.store.embedded_postgres import EmbeddedPostgres

PASSWORD = "s3cret:with@reserved/chars"  # would need escaping inside a URL; PGPASSWORD not


@pytest.fixture
def password_server(pg_tmp_path: Path) -> Iterator[tuple[EmbeddedPostgres, str]]:
    """A private server; (server, Unix socket folder). Our own, so pg_hba edits stay here."""
    server = EmbeddedPostgres(pg_tmp_path)
    try:
        socket_dir = psycopg.conninfo.conninfo_to_dict(server.url)["host"]
        assert isinstance(socket_dir, str)
        yield server, socket_dir
    finally:
        server.stop()


def _rendered_migrate_env() -> dict[str, object]:
    objects = render((CHART / "ci" / "external-db-parts-values.yaml",))
    job = one(objects, "Job", "-migrate")
    (migrate,) = [c for c in containers(job) if c["name"] == "migrate"]
    return container_env(migrate, objects)


def test_migrate_authenticates_with_the_rendered_url_and_pgpassword(
    password_server: tuple[EmbeddedPostgres, str],
) -> None:
    server, socket_dir = password_server
    env = _rendered_migrate_env()
    url = urlsplit(str(env["SERIESFLOW_DATABASE_URL"]))
    assert url.password is None and env["PGPASSWORD"] == {
        "secretKeyRef": {"name": "imaging-db", "key": "db-password"}
    }
    user, database = url.username, url.path.lstrip("/")
    assert user and database
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(user), sql.Literal(PASSWORD)
            )
        )
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(database), sql.Identifier(user)
            )
        )
        hba_file = conn.execute("SHOW hba_file").fetchone()
        assert hba_file is not None
        hba = Path(hba_file[0])
        # First match wins: this user must give a password, everyone else as before.
        hba.write_text(f"local all {user} scram-sha-256\n" + hba.read_text())
        conn.execute("SELECT pg_reload_conf()")

    # The rendered URL with its host swapped for the socket (sslmode does not apply there).
    query = dict(p.split("=", 1) for p in url.query.split("&") if p) | {"host": socket_dir}
    local_url = urlunsplit(("postgresql", f"{user}@", f"/{database}", urlencode(query), ""))
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "SERIESFLOW_"))}
    base["SERIESFLOW_DATABASE_URL"] = local_url
    command = [sys.executable, "-m", "seriesflow", "migrate"]

    refused = subprocess.run(command, env=base, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0
    assert "password" in (refused.stdout + refused.stderr).lower()

    done = subprocess.run(
        command, env={**base, "PGPASSWORD": PASSWORD}, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    with psycopg.connect(local_url, password=PASSWORD) as conn:
        version = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert version is not None and version[0]
