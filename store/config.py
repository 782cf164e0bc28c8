"""StoreConfig: the store's settings, from SERIESFLOW_* variables and same-named flags."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

from seriesflow import settings
from seriesflow.settings import ConfigError, setting


def database_url(value: str) -> str:
    """A libpq URL or key=value string, checked by libpq's own parser at start rather than
    at the first connection (the value is secret: the error never repeats it)."""
    settings.non_empty_text(value)
    parts = urlsplit(value)
    libpq = value
    if parts.scheme.startswith("postgresql+"):  # SQLAlchemy's form names a driver
        libpq = urlunsplit(parts._replace(scheme="postgresql"))
    try:
        conninfo_to_dict(libpq)
    except psycopg.ProgrammingError:
        raise ValueError(
            "is not a PostgreSQL connection URL;"
            " expected e.g. postgresql://user:password@host:5432/seriesflow"
        ) from None
    return value


AUTH_MODES = ("auto", "none", "token", "mtls")


# Receivers send at most this many instances in one update (receiver/updates.py); a lower
# limit here would reject, after their C-STORE was acknowledged, every update of a series
# larger than it.
RECEIVER_UPDATE_INSTANCES = 1000


def _instances_per_update(text: str) -> int:
    value = settings.positive_int(text)
    if value < RECEIVER_UPDATE_INSTANCES:
        raise ValueError(
            f"expected at least {RECEIVER_UPDATE_INSTANCES} (receivers send up to that many "
            "instances per update; fewer would reject acknowledged instances)"
        )
    return value


def _auth_mode(value: str) -> str:
    lowered = value.strip().lower()
    if lowered not in AUTH_MODES:
        raise ValueError(f"expected one of {', '.join(AUTH_MODES)}")
    return lowered


def _identities(value: str) -> frozenset[str]:
    return frozenset(part.strip() for part in value.split(",") if part.strip())


@dataclass(frozen=True)
class StoreConfig:
    """Everything the store reads at start. Build it with `settings.load(StoreConfig)`."""

    database_url: str | None = setting(
        None,
        database_url,
        "PostgreSQL URL (libpq form, e.g. postgresql://user:pass@host/seriesflow); "
        "unset starts an embedded PostgreSQL in data_dir/postgres (the 'embedded' extra, "
        "which make run installs; the image has none)",
        secret=True,
    )
    data_dir: Path = setting("./data", settings.path, "root folder of local state")
    listen_host: str = setting("127.0.0.1", settings.non_empty_text, "address servers bind")
    grpc_port: int = setting("50051", settings.port, "gRPC port of the SeriesStore service")
    store_metrics_port: int = setting("9101", settings.port, "HTTP port serving /metrics")
    store_http_port: int = setting(
        "8080",
        settings.port,
        "HTTP port of the store's web API (QIDO-RS, series previews, /docs, /healthz)",
    )
    db_pool_min_size: int = setting(
        "1", settings.non_negative_int, "connections the pool keeps open"
    )
    db_pool_max_size: int = setting(
        "10", settings.positive_int, "most connections the pool opens (bounds DB load)"
    )
    db_acquire_timeout: float = setting(
        "5",
        settings.positive_seconds,
        "seconds a request waits for a pooled connection before answering UNAVAILABLE",
    )
    db_probe_interval: float = setting(
        "1", settings.positive_seconds, "seconds between PostgreSQL health probes"
    )
    grpc_tls_cert: Path | None = setting(
        None, settings.path, "PEM certificate chain for gRPC TLS (with grpc_tls_key)"
    )
    grpc_tls_key: Path | None = setting(None, settings.path, "PEM private key for gRPC TLS")
    grpc_tls_client_ca: Path | None = setting(
        None,
        settings.path,
        "PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS)",
    )
    grpc_keepalive_min_time: float = setting(
        "10",
        settings.positive_seconds,
        "shortest interval between client keepalive pings the server permits (also on an "
        "idle stream); keep it at or below the receivers' SERIESFLOW_GRPC_KEEPALIVE_TIME",
    )
    grpc_auth: str = setting(
        "auto",
        _auth_mode,
        "gRPC API authentication: none, token (bearer tokens from the token files), mtls "
        "(client certificate identities) or auto (token when a token file is set, else none)",
    )
    grpc_write_tokens_file: Path | None = setting(
        None, settings.path, "file of bearer tokens (one a line) that may call StoreSeries"
    )
    grpc_read_tokens_file: Path | None = setting(
        None, settings.path, "file of bearer tokens (one a line) that may call the query RPCs"
    )
    grpc_mtls_write_identities: frozenset[str] = setting(
        "",
        _identities,
        "comma-separated client certificate names (CN or SAN) that may call StoreSeries "
        "(SERIESFLOW_GRPC_AUTH=mtls)",
    )
    grpc_mtls_read_identities: frozenset[str] = setting(
        "",
        _identities,
        "comma-separated client certificate names (CN or SAN) that may call the query RPCs "
        "(SERIESFLOW_GRPC_AUTH=mtls)",
    )
    shutdown_grace: float = setting(
        "10",
        settings.positive_seconds,
        "seconds in-flight RPCs get to finish after SIGTERM before they are cancelled",
    )
    batch_max_updates: int = setting(
        "128", settings.positive_int, "most updates of one stream merged in one transaction"
    )
    batch_max_instances: int = setting(
        "20000",
        settings.positive_int,
        "most instances merged in one transaction (a bigger single update still goes alone)",
    )
    stream_max_inflight: int = setting(
        "2",
        settings.positive_int,
        "transactions one stream may have in flight (each on its own pooled connection)",
    )
    max_instances_per_update: int = setting(
        "100000",
        _instances_per_update,
        "an update with more instances is rejected as INVALID (at least 1000)",
    )
    hold_timeout: int = setting(
        "300",
        settings.positive_int,
        "seconds a receiver's hold on a series lasts unless the receiver renews it; a "
        "receiver that disappears delays the completion of what it held by at most this",
    )
    event_retention: int = setting(
        "604800",
        settings.non_negative_int,
        "seconds series events are kept for WatchSeries replay (0 keeps them forever); a "
        "consumer further behind must resync from ListSeries",
    )
    log_level: str = setting("INFO", settings.log_level, "DEBUG, INFO, WARNING or ERROR")

    @property
    def auth_mode(self) -> str:
        """The effective mode: auto resolves to token or none."""
        if self.grpc_auth != "auto":
            return self.grpc_auth
        return "token" if self.grpc_write_tokens_file or self.grpc_read_tokens_file else "none"

    def __post_init__(self) -> None:
        if (self.grpc_tls_cert is None) != (self.grpc_tls_key is None):
            raise ConfigError(
                "SERIESFLOW_GRPC_TLS_CERT and SERIESFLOW_GRPC_TLS_KEY must be set together"
            )
        if self.grpc_tls_client_ca is not None and self.grpc_tls_cert is None:
            raise ConfigError(
                "SERIESFLOW_GRPC_TLS_CLIENT_CA needs SERIESFLOW_GRPC_TLS_CERT and _KEY: "
                "mutual TLS is TLS plus client certificates"
            )
        if self.grpc_auth == "token" and not (
            self.grpc_write_tokens_file or self.grpc_read_tokens_file
        ):
            raise ConfigError(
                "SERIESFLOW_GRPC_AUTH=token needs SERIESFLOW_GRPC_WRITE_TOKENS_FILE and/or "
                "SERIESFLOW_GRPC_READ_TOKENS_FILE (one token a line)"
            )
        if self.grpc_auth == "mtls" and self.grpc_tls_client_ca is None:
            raise ConfigError(
                "SERIESFLOW_GRPC_AUTH=mtls needs SERIESFLOW_GRPC_TLS_CLIENT_CA (with _CERT and "
                "_KEY): identities come from verified client certificates"
            )
        if self.grpc_auth == "mtls" and not (
            self.grpc_mtls_write_identities or self.grpc_mtls_read_identities
        ):
            raise ConfigError(
                "SERIESFLOW_GRPC_AUTH=mtls needs SERIESFLOW_GRPC_MTLS_WRITE_IDENTITIES and/or "
                "SERIESFLOW_GRPC_MTLS_READ_IDENTITIES (client certificate CN or SAN names)"
            )
        if self.db_pool_min_size > self.db_pool_max_size:
            raise ConfigError(
                f"SERIESFLOW_DB_POOL_MIN_SIZE={self.db_pool_min_size} is larger than "
                f"SERIESFLOW_DB_POOL_MAX_SIZE={self.db_pool_max_size}"
            )
