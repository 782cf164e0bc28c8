"""The store's HTTP API: series previews, a study's contact sheet, /healthz.

    GET /series/{series_uid}/preview.png   the preview PNG (image/png), or 404 with a JSON
                                           body saying why there is none
    GET /studies/{study_uid}/previews      an HTML page: every series of the study with
                                           its description, modality, instance count,
                                           status and preview
    GET /healthz                           200 while PostgreSQL answers the probe, else 503
    GET /studies, /series, /instances, ... QIDO-RS searches and thumbnails (store.qido)
    GET /openapi.json, /docs               the API described (store.apidocs)

aiohttp serves it, in the store's own event loop (beside grpc.aio, sharing its pool):
handlers are coroutines like the servicer's, and aiohttp streams responses (multipart for
the STOW-RS/QIDO-RS endpoints to come) instead of buffering them as WSGI would. The port
is its own (SERIESFLOW_STORE_HTTP_PORT), not /metrics': that one stays open to scrapers,
this one answers patient data.

Authentication is the read scope of the gRPC API (store.auth): with bearer tokens
configured, every route but /healthz and the documentation (/openapi.json, /docs) needs
`Authorization: Bearer <token>` with a token of the read list (401 without or with an
unknown one, 403 with a write-only token). This server speaks plain HTTP, so with
mutual-TLS authentication (client certificates) it has no certificate to check and refuses
every route but those: put it behind a TLS proxy that authenticates, or use tokens. Store
errors map onto HTTP statuses once, in `_STATUS`.
"""

from __future__ import annotations

import html
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import grpc
from aiohttp import web

from seriesflow.store import apidocs, previews, qido
from seriesflow.store.auth import Authenticator
from seriesflow.store.database import Connection, Database
from seriesflow.store.errors import (
    BadRequest,
    DatabaseFault,
    DatabaseUnavailable,
    NotFound,
    RejectedData,
    RetryableConflict,
    SchemaNotAtHead,
    StoreError,
)
from seriesflow.store.metrics import StoreMetrics
from seriesflow.v1 import series_store_pb2 as pb

_log = logging.getLogger(__name__)

# StoreError -> HTTP status; tests check that every StoreError has one.
_STATUS: Final[dict[type[StoreError], int]] = {
    BadRequest: 400,
    NotFound: 404,
    DatabaseUnavailable: 503,
    RetryableConflict: 503,
    RejectedData: 500,
    SchemaNotAtHead: 500,
    DatabaseFault: 500,
}
_AUTH_STATUS: Final = {grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.PERMISSION_DENIED: 403}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# Routes answered without credentials: health and the API's documentation. Decided by the
# route matched, not by the path's text, so no spelling of a path can skip authentication.
_OPEN: Final = frozenset({"/healthz", *apidocs.OPEN_PATHS, apidocs.STATIC_PREFIX})


_METHODS = frozenset({"GET", "HEAD", "POST", "OPTIONS"})
_DRAIN_SECONDS = 5.0  # how long cleanup waits for in-flight requests at shutdown


def _open(request: web.Request) -> bool:
    resource = request.match_info.route.resource
    return resource is not None and resource.canonical in _OPEN


def _error(status: int, reason: str, message: str, **headers: str) -> web.Response:
    body = json.dumps({"error": message, "reason": reason}, ensure_ascii=False)
    return web.Response(status=status, text=body, content_type="application/json", headers=headers)


class HttpApi:
    """The routes; dependencies come in through the constructor."""

    def __init__(self, db: Database, authenticator: Authenticator, metrics: StoreMetrics):
        self._db = db
        self._auth = authenticator
        self._metrics = metrics

    def app(self) -> web.Application:
        # Metrics outermost: refused and failed requests are counted with their status too.
        app = web.Application(middlewares=[self._measure, self._errors])
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/series/{series_uid}/preview.png", self.preview_png)
        app.router.add_get("/studies/{study_uid}/previews", self.contact_sheet)
        qido.Qido(self._db).register(app.router)
        apidocs.register(app.router)
        return app

    @web.middleware
    async def _measure(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Requests by route (the matched pattern, never the path: UIDs stay out of labels),
        method and status; duration until the (possibly streamed) response is complete."""
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        method = request.method if request.method in _METHODS else "other"
        start = time.perf_counter()
        code = 500
        try:
            response = await handler(request)
            code = response.status
            return response
        except web.HTTPException as exc:
            code = exc.status
            raise
        finally:
            self._metrics.http_requests.labels(route=route, method=method, code=str(code)).inc()
            self._metrics.http_seconds.labels(route=route).observe(time.perf_counter() - start)

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not _open(request) and self._auth.mode != "none":
            header = request.headers.get("Authorization")
            refusal = self._auth.check(
                "read", [("authorization", header)] if header is not None else [], names=[]
            )
            if refusal is not None:
                self._metrics.auth_rejections.labels(scope="read", reason=refusal.reason).inc()
                extra = {"WWW-Authenticate": "Bearer"} if self._auth.mode == "token" else {}
                return _error(
                    _AUTH_STATUS.get(refusal.code, 401), refusal.reason, refusal.message, **extra
                )
        try:
            return await handler(request)
        except StoreError as exc:
            status = _STATUS[type(exc)]
            if status == 500:
                _log.error("HTTP request failed", extra={"fields": {"error": str(exc)}})
            return _error(status, type(exc).__name__, str(exc))

    async def _run(self, fn: Callable[[Connection], Awaitable[Any]]) -> Any:
        if not self._db.up:
            raise DatabaseUnavailable("PostgreSQL is unavailable (health probe failing)")
        return await self._db.run(fn)

    async def healthz(self, request: web.Request) -> web.Response:
        if self._db.up:
            return web.Response(text="ok\n")
        return web.Response(status=503, text="PostgreSQL is unavailable\n")

    async def preview_png(self, request: web.Request) -> web.Response:
        req = pb.GetSeriesPreviewRequest(series_instance_uid=request.match_info["series_uid"])
        preview: pb.SeriesPreview = await self._run(
            lambda conn: previews.get_series_preview(conn, req)
        )
        if not preview.png:
            detail = preview.failure_detail or preview.failure_reason
            return _error(
                404,
                preview.failure_reason,
                f"series {preview.series_instance_uid} has no preview: {detail}",
            )
        return web.Response(
            body=preview.png,
            content_type="image/png",
            # A nearer instance's preview may replace it: caches ask again.
            headers={"Cache-Control": "no-cache", "X-SOP-Instance-UID": preview.sop_instance_uid},
        )

    async def contact_sheet(self, request: web.Request) -> web.Response:
        uid = request.match_info["study_uid"]
        study = await self._run(lambda conn: previews.study_previews(conn, uid))
        return web.Response(text=_sheet_html(study), content_type="text/html", charset="utf-8")


def _sheet_html(study: previews.StudyPreviews) -> str:
    e = html.escape
    title = f"Study {study.study_uid}"
    if study.description:
        title = f"{study.description} ({study.study_uid})"
    cells = []
    for s in study.series:
        if s.has_png:
            # Relative, so the page also works behind a proxy that adds a path prefix.
            image = (
                f'<img src="../../series/{e(s.series_uid)}/preview.png" width="{s.width}"'
                f' height="{s.height}" alt="preview of series {e(s.series_uid)}">'
            )
        else:
            image = f'<div class="none">no preview: {e(s.failure_reason)}</div>'
        number = "" if s.series_number is None else f"#{s.series_number} "
        cells.append(
            f'<figure data-series="{e(s.series_uid)}">{image}<figcaption>'
            f"<b>{e(number)}{e(s.description or '(no description)')}</b><br>"
            f"{e(s.modality or '?')} · {s.num_instances} instances · {e(s.status)}"
            "</figcaption></figure>"
        )
    date = f"<p>Study date {e(study.date)}</p>" if study.date else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{e(title)}</title><style>"
        "body{font-family:sans-serif;background:#111;color:#ddd}"
        "figure{display:inline-block;vertical-align:top;margin:8px;width:260px}"
        "img{max-width:256px;height:auto;background:#000}"
        ".none{width:256px;height:256px;line-height:256px;text-align:center;background:#222}"
        f"</style></head><body><h1>{e(title)}</h1>{date}"
        f"<p>{len(study.series)} series</p>{''.join(cells)}</body></html>\n"
    )


async def start(host: str, port: int, api: HttpApi) -> tuple[web.AppRunner, int]:
    """Serve `api` on host:port (0: an ephemeral port); the runner and the bound port.

    Raises OSError naming the setting when the port cannot be bound."""
    # aiohttp waits up to 60 s for open connections at cleanup by default; a client that
    # keeps one open must not hold the store's shutdown that long.
    runner = web.AppRunner(
        api.app(), access_log=None, handle_signals=False, shutdown_timeout=_DRAIN_SECONDS
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise OSError(
            f"cannot listen on {host}:{port} for HTTP ({exc.strerror}): is the port in use? "
            "Set SERIESFLOW_STORE_HTTP_PORT / --store-http-port to a free one"
        ) from exc
    bound = int(runner.addresses[0][1])
    return runner, bound
