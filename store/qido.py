"""QIDO-RS (PS3.18 10.6): the catalog searched over HTTP, through the one matching engine.

    GET /studies                                      studies
    GET /series                                       series (with their study attributes)
    GET /instances                                    instances (with study and series ones)
    GET /studies/{study}/series                       a study's series
    GET /studies/{study}/instances                    a study's instances (with series ones)
    GET /studies/{study}/series/{series}/instances    a series' instances
    GET /studies/{study}/series/{series}/thumbnail    the series' preview PNG
    GET /studies/{study}/series/{series}/rendered     the same PNG (the one rendering kept)

A search is compiled by store.matching and run by store.find.search in this process, the
same code the gRPC Query RPC and (through it) C-FIND run, so the three cannot disagree.
Query parameters (PS3.18 8.3.4): `{keyword or tag}={value}` in DICOM matching syntax (UID
lists may also be comma-separated), `includefield` (repeatable, comma-separated, `all`),
`limit` (none: every match, streamed; the store sets no maximum), `offset`,
`fuzzymatching`; `accept` overrides the Accept header (8.3.3.1).

Answers: 200 with an `application/dicom+json` array (PS3.18 F.2), streamed as it is read;
204 when nothing matches; 400 for a malformed query (bad date, unknown keyword, bad limit);
404 when the study or series named in the path is not in the catalog (the target resource
does not exist, PS3.18 8.5), so a client can tell "no such study" from "no such series in
it"; 406 when the Accept header excludes every type served. What the catalog cannot do is
said in `Warning: 299 {service}: "..."` headers (PS3.18 8.3.4, with the warn-text quoted as
RFC 7234 5.5 requires): keys it does not hold, sequence matching, emptyvaluematching and
multiplevaluematching. Fuzzy matching is supported (store.matching describes it).

Attributes per level are the engine's (matching.REQUIRED, PS3.18 Tables 10.6.3-3..5) plus
what PS3.18 10.6.3.3 adds by target: All Series carry the study attributes, All Instances
the study and series ones, a study's instances the series ones. Not returned: RetrieveURL
(no WADO-RS: no pixel data is kept), and at those added study attributes ModalitiesInStudy
and the study's counts (aggregates the engine computes at the study level only).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web
from multidict import MultiMapping

from seriesflow.store import find, matching, previews
from seriesflow.store.attributes import resolve
from seriesflow.store.database import Database
from seriesflow.store.errors import BadRequest, NotFound, StoreError
from seriesflow.store.matching import Level
from seriesflow.store.validation import is_uid
from seriesflow.v1 import series_store_pb2 as pb

_log = logging.getLogger(__name__)

DICOM_JSON: Final = "application/dicom+json"
JSON_TYPES: Final = (DICOM_JSON, "application/json")
PNG: Final = "image/png"
# Warning headers per response; the rest are summed up in one more (headers stay small).
MAX_WARNINGS: Final = 20
# Bytes of JSON gathered before a write: fewer, larger chunks than one per match.
_CHUNK: Final = 64 * 1024

_BOOLEAN: Final = {"true": True, "false": False}
# Query parameters that are not attributes (PS3.18 8.3.3, 8.3.4).
_PARAMETERS: Final = frozenset(
    {"includefield", "limit", "offset", "fuzzymatching", "emptyvaluematching",
     "multiplevaluematching", "accept", "charset"}
)  # fmt: skip
_UNSUPPORTED_FLAGS: Final = {
    "emptyvaluematching": "The emptyvaluematching parameter is not supported."
    " Empty Value Matching has not been performed.",
    "multiplevaluematching": "The multiplevaluematching parameter is not supported."
    " Multiple Value Matching has not been performed.",
}
# Rendering parameters (PS3.18 8.3.5) the stored preview cannot honour.
_RENDER_PARAMETERS: Final = ("viewport", "window", "quality", "annotation", "iccprofile")
# Characters kept of the Host header in the Warning's service URI (it is client-supplied).
_HOST_UNSAFE: Final = re.compile(r"[^A-Za-z0-9.:\-\[\]_]")


@dataclass
class _Search:
    """A QIDO request parsed: what to compile and what to warn about."""

    level: Level
    match: list[tuple[str, str]]
    include: list[str]
    fuzzy: bool = False
    limit: int | None = None  # None: no limit (results are streamed, no system maximum)
    offset: int = 0
    accept: str | None = None
    warnings: list[str] = field(default_factory=list)


def negotiate(accept: str | None, offered: Sequence[str]) -> str | None:
    """The offered media type the Accept value prefers (RFC 9110 12.5.1), or None when it
    excludes them all. No Accept (or an empty one) takes the first offered."""
    if accept is None or not accept.strip():
        return offered[0]
    best: tuple[float, int, str] | None = None
    for index, kind in enumerate(offered):
        main = kind.split("/")[0]
        quality, specificity = 0.0, -1
        for part in accept.split(","):
            pieces = [p.strip() for p in part.split(";")]
            media = pieces[0].lower()
            q = 1.0
            for param in pieces[1:]:
                name, _, value = param.partition("=")
                if name.strip().lower() == "q":
                    try:
                        q = float(value)
                    except ValueError:
                        q = 0.0
            rank = {kind: 2, f"{main}/*": 1, "*/*": 0}.get(media, -1)
            # The most specific range that names the type decides its quality.
            if rank > specificity:
                quality, specificity = q, rank
        if specificity >= 0 and quality > 0:
            candidate = (quality, -index, kind)
            if best is None or candidate > best:
                best = candidate
    return best[2] if best else None


def _service(request: web.Request) -> str:
    """The origin server's base URI, as PS3.18 names it in Warning headers."""
    return f"{request.scheme}://{_HOST_UNSAFE.sub('', request.host)}"


def _warning(service: str, text: str) -> str:
    quoted = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'299 {service}: "{quoted}"'


def _headers(request: web.Request, warnings: Sequence[str]) -> list[tuple[str, str]]:
    service = _service(request)
    shown = list(warnings[:MAX_WARNINGS])
    if len(warnings) > MAX_WARNINGS:
        shown.append(f"{len(warnings) - MAX_WARNINGS} more warnings left out")
    return [("Warning", _warning(service, w)) for w in shown]


def _integer(query: MultiMapping[str], name: str) -> int | None:
    values = query.getall(name, [])
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest(name, "given more than once")
    text = values[0].strip()
    if not text.isascii() or not text.isdigit():
        raise BadRequest(name, f"{text[:32]!r} is not an unsigned integer")
    return int(text)


def _flag(query: MultiMapping[str], name: str) -> bool:
    values = {v.strip().lower() for v in query.getall(name, [])}
    if not values:
        return False
    if len(values) > 1 or not values <= _BOOLEAN.keys():
        raise BadRequest(name, "must be true or false")
    return _BOOLEAN[values.pop()]


def _implicit(level: Level, *levels: Level) -> list[str]:
    """Required attributes of `levels` that the engine can return at `level`."""
    out = []
    for upper in levels:
        for attr in matching.REQUIRED[upper]:
            if matching.lookup(attr.tag, level, "") is attr:
                out.append(attr.keyword)
    return out


def parse(
    query: MultiMapping[str],
    level: Level,
    path: Sequence[tuple[str, str]],
    implicit: Sequence[str] = (),
) -> _Search:
    """A search from the query parameters; `path` are the UID keys of the target resource,
    `implicit` the include fields its target adds. BadRequest names the culprit."""
    search = _Search(level, list(path), list(implicit))
    search.limit = _integer(query, "limit")
    search.offset = _integer(query, "offset") or 0
    search.fuzzy = _flag(query, "fuzzymatching")
    for name, text in _UNSUPPORTED_FLAGS.items():
        if _flag(query, name):
            search.warnings.append(text)
    accepts = query.getall("accept", [])
    if accepts:
        search.accept = ",".join(accepts)
    seen: set[str] = set()
    for key, value in query.items():
        if key == "includefield":
            for item in value.split(","):
                if not item.strip():
                    continue
                if item.strip().lower() != "all":
                    resolve(item, f"includefield {item.strip()[:64]!r}")
                search.include.append(item.strip())
            continue
        if key in _PARAMETERS:
            continue
        if "." in key:
            # A sequence path (ReferencedStudySequence.ReferencedSOPInstanceUID).
            for part in key.split("."):
                resolve(part, f"query key {key[:64]!r}")
            search.warnings.append(f"{key}: sequence matching is not supported; key ignored")
            continue
        tag, _ = resolve(key, f"query key {key[:64]!r}")
        if tag in seen:
            raise BadRequest(
                f"query key {key[:64]!r}",
                "given more than once; list alternative values in one key"
                " (UIDs separated by commas or backslashes)",
            )
        seen.add(tag)
        attr = matching.BY_TAG.get(tag)
        if attr is not None and attr.vr == "UI":
            value = value.replace(",", "\\")  # UID list matching (PS3.18 8.3.4.1)
        search.match.append((key, value))
    return search


class Qido:
    """The QIDO-RS routes; `register` adds them to the store's aiohttp router."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_get("/studies", self.studies)
        router.add_get("/series", self.all_series)
        router.add_get("/instances", self.all_instances)
        router.add_get("/studies/{study}/series", self.study_series)
        router.add_get("/studies/{study}/instances", self.study_instances)
        router.add_get("/studies/{study}/series/{series}/instances", self.series_instances)
        router.add_get("/studies/{study}/series/{series}/thumbnail", self.thumbnail)
        router.add_get("/studies/{study}/series/{series}/rendered", self.rendered)

    # -- searches ---------------------------------------------------------------------

    async def studies(self, request: web.Request) -> web.StreamResponse:
        return await self._search(request, Level.STUDY)

    async def all_series(self, request: web.Request) -> web.StreamResponse:
        return await self._search(
            request, Level.SERIES, implicit=_implicit(Level.SERIES, Level.STUDY)
        )

    async def all_instances(self, request: web.Request) -> web.StreamResponse:
        implicit = _implicit(Level.IMAGE, Level.STUDY, Level.SERIES)
        return await self._search(request, Level.IMAGE, implicit=implicit)

    async def study_series(self, request: web.Request) -> web.StreamResponse:
        return await self._search(request, Level.SERIES, study=_path_uid(request, "study"))

    async def study_instances(self, request: web.Request) -> web.StreamResponse:
        return await self._search(
            request,
            Level.IMAGE,
            study=_path_uid(request, "study"),
            implicit=_implicit(Level.IMAGE, Level.SERIES),
        )

    async def series_instances(self, request: web.Request) -> web.StreamResponse:
        return await self._search(
            request,
            Level.IMAGE,
            study=_path_uid(request, "study"),
            series=_path_uid(request, "series"),
        )

    async def _search(
        self,
        request: web.Request,
        level: Level,
        *,
        study: str = "",
        series: str = "",
        implicit: Sequence[str] = (),
    ) -> web.StreamResponse:
        path = [("StudyInstanceUID", study)] if study else []
        if series:
            path.append(("SeriesInstanceUID", series))
        search = parse(request.query, level, path, implicit)
        kind = negotiate(
            search.accept if search.accept is not None else request.headers.get("Accept"),
            JSON_TYPES,
        )
        if kind is None:
            return _not_acceptable(JSON_TYPES)
        compiled = _compile(search)
        warnings = list(search.warnings) + [
            f"{u.reason if u.reason.startswith(u.key) else f'{u.key}: {u.reason}'}"
            "; not used for matching or returned"
            for u in compiled.unsupported
        ]
        matches = find.search(self._db, compiled, limit=search.limit or 0, offset=search.offset)
        # limit=0 asks for no results (PS3.18 8.3.4.4.1: results <= 0 is a 204).
        first = None if search.limit == 0 else await anext(matches, None)
        headers = _headers(request, warnings)
        if first is None:
            await self._require_parent(study, series)
            return web.Response(status=204, headers=headers)
        if request.method == "HEAD":
            # aiohttp sends whatever a StreamResponse writes, even to HEAD: the status and
            # headers of the GET, no body.
            return web.Response(status=200, headers=headers, content_type=kind)
        response = web.StreamResponse(status=200, headers=headers)
        response.content_type = kind
        await response.prepare(request)
        try:
            await _write_array(response, first, matches)
        except StoreError as exc:
            # The status line is sent: all that is left is to cut the body short, which a
            # client sees as a truncated response rather than a complete, shorter answer.
            _log.error("QIDO-RS search failed mid-response", extra={"fields": {"error": str(exc)}})
            raise _Aborted(str(exc)) from exc
        await response.write_eof()
        return response

    async def _require_parent(self, study: str, series: str) -> None:
        """NotFound when the study (or the series in it) of the path is not catalogued."""
        if not study:
            return
        if series:
            level, keys = Level.SERIES, [("StudyInstanceUID", study), ("SeriesInstanceUID", series)]
        else:
            level, keys = Level.STUDY, [("StudyInstanceUID", study)]
        if not await self._exists(level, keys):
            if series:
                raise NotFound(f"no series {series!r} in study {study!r} in the catalog")
            raise NotFound(f"no study {study!r} in the catalog")

    async def _exists(self, level: Level, keys: list[tuple[str, str]]) -> bool:
        compiled = matching.compile_query(level, keys)
        return await anext(find.search(self._db, compiled, limit=1), None) is not None

    # -- previews ---------------------------------------------------------------------

    async def thumbnail(self, request: web.Request) -> web.StreamResponse:
        return await self._preview(request, [])

    async def rendered(self, request: web.Request) -> web.StreamResponse:
        ignored = [p for p in _RENDER_PARAMETERS if p in request.query]
        notes = [
            f"The {p} parameter is not supported: the stored preview is returned as rendered."
            for p in ignored
        ]
        return await self._preview(request, notes)

    async def _preview(self, request: web.Request, warnings: list[str]) -> web.StreamResponse:
        study, series = _path_uid(request, "study"), _path_uid(request, "series")
        accept = request.query.get("accept", request.headers.get("Accept"))
        if negotiate(accept, (PNG,)) is None:
            return _not_acceptable((PNG,))
        keys = [("StudyInstanceUID", study), ("SeriesInstanceUID", series)]
        if not await self._exists(Level.SERIES, keys):
            raise NotFound(f"no series {series!r} in study {study!r} in the catalog")
        req = pb.GetSeriesPreviewRequest(series_instance_uid=series)
        preview: pb.SeriesPreview = await self._db.run(
            lambda conn: previews.get_series_preview(conn, req)
        )
        if not preview.png:
            # The series exists but has no image (yet, or none renders): no content.
            detail = preview.failure_detail or preview.failure_reason
            why = f"no preview of series {series}: {preview.failure_reason} ({detail})"
            return web.Response(status=204, headers=_headers(request, [*warnings, why]))
        headers = _headers(request, warnings)
        # A nearer instance's preview may replace it: caches ask again.
        headers += [("Cache-Control", "no-cache"), ("X-SOP-Instance-UID", preview.sop_instance_uid)]
        return web.Response(body=preview.png, content_type=PNG, headers=headers)


_ENGINE_FIELD: Final = re.compile(r"(match|include_fields)\[(\d+)\]")


def _compile(search: _Search) -> matching.Compiled:
    """The engine's compilation, its errors naming the query parameter (the engine names
    its own list positions, which mean nothing to an HTTP client)."""
    try:
        return matching.compile_query(
            search.level, search.match, search.include, fuzzy=search.fuzzy
        )
    except BadRequest as exc:
        found = _ENGINE_FIELD.match(exc.field)
        if found is None:
            raise
        index = int(found.group(2))
        if found.group(1) == "match":
            name, key = "query key", search.match[index][0]
        else:
            name, key = "includefield", search.include[index]
        raise BadRequest(f"{name} {key[:64]!r}", str(exc)[len(exc.field) + 2 :]) from None


class _Aborted(Exception):
    """A search failed after its response started; aiohttp closes the connection."""


def _path_uid(request: web.Request, name: str) -> str:
    uid = request.match_info[name]
    if not is_uid(uid):
        shown = uid if len(uid) <= 64 else uid[:64] + "…"
        raise BadRequest(f"path {name}", f"{shown!r} is not a DICOM UID (digits and dots)")
    return uid


def _not_acceptable(offered: Sequence[str]) -> web.Response:
    body = json.dumps(
        {"error": f"the Accept header excludes every type served here: {', '.join(offered)}",
         "reason": "NotAcceptable"}
    )  # fmt: skip
    return web.Response(status=406, text=body, content_type="application/json")


async def _write_array(
    response: web.StreamResponse, first: dict[str, Any], rest: AsyncIterator[dict[str, Any]]
) -> None:
    """Write `first` and `rest` as one JSON array, in chunks of about _CHUNK bytes."""
    parts = [b"[", _encode(first)]
    size = len(parts[1])
    async for match in rest:
        encoded = _encode(match)
        parts += [b",", encoded]
        size += len(encoded) + 1
        if size >= _CHUNK:
            await response.write(b"".join(parts))
            parts, size = [], 0
    parts.append(b"]")
    await response.write(b"".join(parts))


def _encode(dataset: dict[str, Any]) -> bytes:
    return json.dumps(dataset, ensure_ascii=False, separators=(",", ":")).encode()
