"""Shared fixtures: a real PostgreSQL for every test that needs one.

The server is the one named by SERIESFLOW_DATABASE_URL when set, otherwise an embedded
pgserver started once per test session. Each test gets its own fresh database in it, so
tests never see each other's rows.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from seriesflow.store.embedded_postgres import EmbeddedPostgres

# As the `seriesflow` command does (seriesflow.cli.main): this process forks only to exec
# (pg_ctl, the services under test), and gRPC's fork handlers have crashed such children.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_tool(name: str) -> str:
    """Path of an external tool; in CI a missing tool fails the test instead of skipping it."""
    found = shutil.which(name)
    if found is None:
        go_bin = Path(os.environ.get("GOPATH", Path.home() / "go")) / "bin" / name
        if go_bin.exists():
            return str(go_bin)
        message = f"{name} is not installed; run `make tools` (scripts/install-tools.sh)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


@contextlib.contextmanager
def shared_temp_dir() -> Iterator[Path]:
    """A fresh folder under /tmp that other users can traverse, removed afterwards.

    As root, pgserver runs PostgreSQL as its own user, which must traverse every parent of
    its data folder. pytest's base temp folder is private (0700, and pytest resets that
    whenever any pytest session starts), so data folders for PostgreSQL live here instead.
    """
    path = Path(tempfile.mkdtemp(prefix="seriesflow-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def pg_tmp_path() -> Iterator[Path]:
    """Like tmp_path, but usable as (a parent of) an embedded PostgreSQL data folder."""
    with shared_temp_dir() as path:
        yield path


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """URL of a PostgreSQL server's maintenance database, for creating test databases."""
    configured = os.environ.get("SERIESFLOW_DATABASE_URL")
    if configured:
        yield configured
        return
    with shared_temp_dir() as folder:
        embedded = EmbeddedPostgres(folder)
        try:
            yield embedded.url
        finally:
            embedded.stop()


@contextlib.contextmanager
def new_database(server_url: str, options: str = "") -> Iterator[str]:
    """URL of a brand-new empty database on the server, dropped on exit; `options` follow
    CREATE DATABASE (e.g. an ENCODING clause)."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" {options}')
    params = conninfo_to_dict(server_url)
    params["dbname"] = name
    try:
        yield make_conninfo(**params)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(postgres_server_url: str) -> Iterator[str]:
    """URL of a brand-new empty database, dropped after the test."""
    with new_database(postgres_server_url) as url:
        yield url


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1, free now, for a server the test starts a moment later.

    Taken from below the kernel's ephemeral range: a port bind(0) chose could be handed by
    the kernel to any other bind(0) or outgoing connection before the server binds it (seen
    in CI as a store failing to start); below that range only an explicit bind can take it,
    and this process hands each port out once."""
    import random
    import socket

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    while True:
        port = random.randrange(12000, max(low, 12001))
        if port in _HANDED_OUT:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
