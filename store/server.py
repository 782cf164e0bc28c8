"""Server wiring: gRPC (SeriesStore, health, reflection, TLS, auth, keepalive policy), /metrics,
probe, shutdown.

Shutdown on SIGTERM/SIGINT: health goes NOT_SERVING, open streams answer what they have
already read and end with UNAVAILABLE (their receivers reconnect elsewhere), the server
stops accepting calls and gives in-flight ones `shutdown_grace` seconds, then the pool
closes (an unfinished transaction is rolled back, never half-applied) and main returns 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import signal
import threading
from collections.abc import Coroutine, Set
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from seriesflow import settings
from seriesflow.store import completion, http, reflection, watch
from seriesflow.store.auth import Authenticator, AuthInterceptor
from seriesflow.store.config import StoreConfig
from seriesflow.store.database import Database, create_pool, resolve_url
from seriesflow.store.errors import StoreError
from seriesflow.store.grpc_metrics import GrpcMetrics, MetricsInterceptor
from seriesflow.store.metrics import StoreMetrics, start_metrics_server
from seriesflow.store.schema import require_head
from seriesflow.store.servicer import SERVICE_NAME, SeriesStoreServicer, generic_handler
from seriesflow.store.stream import Limits, Shared

_log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class RunningStore:
    """A started store; `grpc_port` / `metrics_port` / `http_port` are the bound ports
    (useful with 0)."""

    config: StoreConfig
    server: grpc.aio.Server
    db: Database
    health: HealthServicer
    metrics: StoreMetrics
    grpc_port: int
    metrics_port: int
    draining: asyncio.Event
    _httpd: WSGIServer
    http_port: int = 0
    _http: web.AppRunner | None = None
    _probe: asyncio.Task[None] | None = None
    _background: list[asyncio.Task[None]] = field(default_factory=list)
    _stopped: bool = field(default=False)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        grace = self.config.shutdown_grace
        _log.info("store shutting down", extra={"fields": {"grace_s": grace}})
        await self.health.enter_graceful_shutdown()
        self.draining.set()
        # Each step is bounded: a shutdown that waits for ever only ends in SIGKILL, which
        # rolls nothing back more cleanly than going on does.
        await _bounded("gRPC server stop", self.server.stop(grace), grace + _STEP_SECONDS)
        if self._http is not None:
            await _bounded("HTTP server stop", self._http.cleanup(), grace + _STEP_SECONDS)
        tasks = [*self._background, *([self._probe] if self._probe is not None else [])]
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=_STEP_SECONDS)
            for task in pending:
                _log.warning(
                    "store shutdown: a background task did not end when cancelled; going on",
                    extra={"fields": {"task": task.get_name(), "stack": _stack(task)}},
                )
        await _bounded("database pool close", self.db.close(), 2 * _STEP_SECONDS)
        self._httpd.shutdown()
        self._httpd.server_close()
        _log.info("store stopped")


_STEP_SECONDS = 5.0


async def _bounded(step: str, work: Coroutine[Any, Any, Any], seconds: float) -> None:
    """Await `work` for at most `seconds`; past that, log the stuck step and go on (the
    task is left cancelled, not awaited: awaiting a cancellation can hang as well)."""
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        _log.warning(
            "store shutdown: a step did not finish in time; going on",
            extra={"fields": {"step": step, "timeout_s": seconds, "stack": _stack(task)}},
        )
    elif not task.cancelled() and task.exception() is not None:
        _log.warning(
            "store shutdown: a step failed; going on",
            extra={"fields": {"step": step, "error": repr(task.exception())}},
        )


def _stack(task: asyncio.Future[Any]) -> str:
    buffer = io.StringIO()
    if isinstance(task, asyncio.Task):
        task.print_stack(file=buffer)
    return buffer.getvalue()


def server_options(config: StoreConfig) -> list[tuple[str, int]]:
    """Channel options, with a keepalive policy that permits the receivers' pings.

    gRPC's server default permits no ping without data more often than every 5 minutes and
    answers a client that pings more often (receivers ping every 20 s, also on an idle
    stream) with GOAWAY too_many_pings, tearing the stream down every few minutes."""
    min_ping_ms = int(config.grpc_keepalive_min_time * 1000)
    return [
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", min_ping_ms),
        # Pings sooner than permitted still cost the client its connection, after this many.
        ("grpc.http2.max_ping_strikes", 2),
    ]


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _credentials(config: StoreConfig) -> grpc.ServerCredentials | None:
    if config.grpc_tls_cert is None or config.grpc_tls_key is None:
        return None
    key, cert = config.grpc_tls_key.read_bytes(), config.grpc_tls_cert.read_bytes()
    ca = config.grpc_tls_client_ca.read_bytes() if config.grpc_tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


_HEALTH_NAMES = ("", SERVICE_NAME)


class _Health(HealthServicer):
    """grpc's health servicer, whose NOT_FOUND for an unknown service name comes with no
    message: here it names the services that have a status."""

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> Any:
        if request.service not in _HEALTH_NAMES:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"service: no health status for {request.service[:80]!r};"
                f' ask for "" (the whole store) or "{SERVICE_NAME}"',
            )
        return await super().Check(request, context)


async def _set_health(health: HealthServicer, status: int) -> None:
    for name in _HEALTH_NAMES:
        await health.set(name, status)


async def _probe_forever(store: RunningStore) -> None:
    """Health follows PostgreSQL: NOT_SERVING while a probe fails, SERVING when it answers."""
    while True:
        up = await store.db.probe()
        if up != store.db.up:
            _log.warning(
                "PostgreSQL is reachable again" if up else "PostgreSQL is unreachable",
                extra={"fields": {"database_up": up}},
            )
            if up:
                # Connections from before the outage are dead; replace them now rather
                # than on first use (checkout checks them too, so failure here is harmless).
                with contextlib.suppress(Exception):
                    await store.db.pool.check()
        store.db.up = up
        store.metrics.database_up.set(1 if up else 0)
        if not store.draining.is_set():
            await _set_health(store.health, SERVING if up else NOT_SERVING)
        await asyncio.sleep(store.config.db_probe_interval)


async def start(config: StoreConfig, url: str, schema_heads: Set[str]) -> RunningStore:
    """Check the schema is at `schema_heads`, open the pool and start serving.

    Raises SchemaNotAtHead (run `seriesflow migrate`), DatabaseUnavailable, OSError (port)."""
    await asyncio.to_thread(require_head, url, schema_heads)
    db = Database(create_pool(url, config), url)
    await db.open()
    try:
        return await _start_serving(config, db)
    except BaseException:
        await db.close()
        raise


async def _start_serving(config: StoreConfig, db: Database) -> RunningStore:
    metrics = StoreMetrics()
    metrics.watch_pool(db.pool.get_stats)
    authenticator = Authenticator.from_config(config)
    server = grpc.aio.server(
        # Metrics outermost, so calls refused by authentication are counted by code too.
        interceptors=[
            MetricsInterceptor(GrpcMetrics(metrics.registry)),
            AuthInterceptor(authenticator, metrics),
        ],
        options=server_options(config),
    )
    draining = asyncio.Event()
    limits = Limits(
        config.batch_max_updates,
        config.batch_max_instances,
        config.max_instances_per_update,
        config.stream_max_inflight,
    )
    policy = completion.Policy(hold_seconds=config.hold_timeout)
    signal = watch.EventSignal(db.url)
    watchers = watch.Watchers(db, signal, metrics, draining, config.event_retention)
    shared = Shared(db, metrics, limits, draining, policy)
    server.add_generic_rpc_handlers((generic_handler(SeriesStoreServicer(shared, watchers)),))
    health = _Health()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable(
        server, (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
    )
    address = _address(config.listen_host, config.grpc_port)
    credentials = _credentials(config)
    try:
        if credentials is None:
            grpc_port = server.add_insecure_port(address)
        else:
            grpc_port = server.add_secure_port(address, credentials)
    except RuntimeError:  # grpc reports a failed bind this way
        grpc_port = 0
    if grpc_port == 0:
        raise OSError(
            f"cannot listen on {address} for gRPC: is the port in use? "
            "Set SERIESFLOW_GRPC_PORT / --grpc-port to a free one"
        )
    api = http.HttpApi(db, authenticator, metrics)
    http_runner, http_port = await http.start(config.listen_host, config.store_http_port, api)
    try:
        httpd, _thread = start_metrics_server(
            config.listen_host, config.store_metrics_port, metrics.registry
        )
    except BaseException:
        await http_runner.cleanup()
        raise
    await server.start()
    store = RunningStore(
        config=config,
        server=server,
        db=db,
        health=health,
        metrics=metrics,
        grpc_port=grpc_port,
        metrics_port=int(httpd.server_port),
        draining=draining,
        _httpd=httpd,
        http_port=http_port,
        _http=http_runner,
    )
    store.db.up = await db.probe()
    metrics.database_up.set(1 if store.db.up else 0)
    await _set_health(health, SERVING if store.db.up else NOT_SERVING)
    store._probe = asyncio.create_task(_probe_forever(store))
    store._background = [
        asyncio.create_task(signal.run()),
        asyncio.create_task(completion.sweep_forever(db, policy, metrics)),
    ]
    if config.event_retention:
        store._background.append(
            asyncio.create_task(watch.prune_forever(db, metrics, config.event_retention))
        )
    _log.info(
        "store serving",
        extra={
            "fields": {
                "grpc": _address(config.listen_host, grpc_port),
                "metrics_port": store.metrics_port,
                "http_port": store.http_port,
                "tls": credentials is not None,
                "mutual_tls": config.grpc_tls_client_ca is not None,
                "auth": authenticator.mode,
                "keepalive_min_time_s": config.grpc_keepalive_min_time,
            }
        },
    )
    if authenticator.mode == "token" and credentials is None:
        _log.warning(
            "bearer tokens travel in clear text without TLS: set SERIESFLOW_GRPC_TLS_CERT and "
            "_KEY unless the network between receivers and store is trusted"
        )
    return store


async def serve(
    config: StoreConfig, url: str, schema_heads: Set[str], stop: asyncio.Event | None = None
) -> int:
    """Serve until SIGTERM/SIGINT (or `stop` is set); 0 after a clean shutdown."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    try:
        store = await start(config, url, schema_heads)
    except (StoreError, OSError) as exc:
        _log.error("store cannot start", extra={"fields": {"error": str(exc)}})
        return 1
    try:
        await stop.wait()
    finally:
        await store.stop()
    return 0


def main(config: StoreConfig, schema_heads: Set[str]) -> int:
    """Entry point of `seriesflow store`: blocks until SIGTERM/SIGINT; the exit code."""
    _log.info("store starting", extra={"fields": {"config": settings.describe(config)}})
    try:
        url, stop_embedded = resolve_url(config)
    except Exception as exc:
        _log.error("cannot start the embedded PostgreSQL", extra={"fields": {"error": str(exc)}})
        return 1
    try:
        return asyncio.run(serve(config, url, schema_heads))
    finally:
        if stop_embedded is not None:
            stop_embedded()


__all__ = ["RunningStore", "main", "serve", "start"]
