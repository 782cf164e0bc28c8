"""The store's HTTP API described in OpenAPI 3.1, and an interactive page to try it.

    GET /openapi.json         the document (built here; docs/openapi.json is its committed
                              copy, so a change to the API shows in review, and a test
                              keeps the two equal and every route documented)
    GET /docs                 Swagger UI on that document
    GET /docs/static/{file}   Swagger UI's scripts and styles, from the swagger-ui-py wheel

Everything is served from this process: no CDN, so the page works offline and in an
air-gapped hospital network. swagger-ui-py (Apache-2.0) is used only for the Swagger UI
5 distribution it ships (Swagger UI 4, as in swagger-ui-bundle, cannot render OpenAPI 3.1);
the page itself is the few lines below. These routes hold no patient data and answer
without a token, like /healthz: the page's "Authorize" button takes the read token for the
routes it calls.

The query parameters of each search level are generated from the matching engine's
attribute table (store.matching.supported), so the document lists exactly the keys the
engine matches. Regenerate the copy with `python -m seriesflow.store.apidocs > docs/openapi.json`.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from seriesflow.store import matching
from seriesflow.store.matching import Level

_TITLE: Final = "seriesflow store HTTP API"
OPEN_PATHS: Final = ("/openapi.json", "/docs")  # answered without credentials
STATIC_PREFIX: Final = "/docs/static"

_PAGE: Final = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>seriesflow store API</title>
<link rel="stylesheet" href="docs/static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="docs/static/swagger-ui-bundle.js"></script>
<script>
// Relative URLs: the page also works behind a proxy that adds a path prefix.
window.ui = SwaggerUIBundle({url: "openapi.json", dom_id: "#swagger-ui", deepLinking: true});
</script></body></html>
"""


def swagger_ui_dir() -> Path:
    """The Swagger UI distribution inside the swagger-ui-py package (not imported: its
    framework adapters are not used)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or spec.origin is None:
        raise RuntimeError("swagger-ui-py is not installed (a dependency of seriesflow)")
    return Path(spec.origin).parent / "static"


def register(router: web.UrlDispatcher) -> None:
    text = json.dumps(document(), indent=2, ensure_ascii=False) + "\n"

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(text=text, content_type="application/json")

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=_PAGE, content_type="text/html")

    router.add_get("/openapi.json", openapi)
    router.add_get("/docs", page)
    router.add_static(STATIC_PREFIX, swagger_ui_dir(), append_version=False)


# -- the document ------------------------------------------------------------------------

_UID = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)*$", "maxLength": 64}


def _path_param(name: str, what: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": what, "schema": _UID}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


_WARNING = {
    "description": 'PS3.18 8.3.4 warnings, one per header: 299 {service}: "{text}" (keys '
    "the catalog does not hold, sequence matching, unsupported matching flags)",
    "schema": {"type": "string"},
}
_AUTH_ERRORS = {
    "401": _error("no or an unknown bearer token (when tokens are configured)"),
    "403": _error("a token without the read scope"),
    "503": _error("PostgreSQL is unavailable"),
}


def _attribute_param(attr: matching.Attribute) -> dict[str, Any]:
    return {
        "name": attr.keyword,
        "in": "query",
        "required": False,
        "description": f"({attr.tag[:4]},{attr.tag[4:]}) {attr.vr}, in DICOM matching syntax; "
        f"the tag {attr.tag} names it too",
        "schema": {"type": "string"},
    }


def _searchable() -> list[matching.Attribute]:
    levels = (Level.STUDY, Level.SERIES, Level.IMAGE)
    seen = {a.tag for level in levels for a in matching.supported(level)}
    return [a for a in matching.ATTRIBUTES if a.tag in seen]


def _match_params(level: Level) -> list[dict[str, Any]]:
    """A query parameter per attribute the engine matches at `level`."""
    return [{"$ref": f"#/components/parameters/{a.keyword}"} for a in matching.supported(level)]


def _search(level: Level, summary: str, path: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "get": {
            "tags": ["QIDO-RS"],
            "summary": summary,
            "description": "Attribute matching per PS3.4 C.2.2.2 (store.matching): universal, "
            "single value, wildcards * and ? for text and person names, ranges a-b, -b, a- "
            "for dates and times, UID lists (comma or backslash separated); person names "
            "match case-insensitively. Keys may also be given by tag (00100010=Doe*); keys "
            "the catalog does not hold are ignored with a Warning header.",
            "parameters": [
                *path,
                {"$ref": "#/components/parameters/includefield"},
                {"$ref": "#/components/parameters/limit"},
                {"$ref": "#/components/parameters/offset"},
                {"$ref": "#/components/parameters/fuzzymatching"},
                *_match_params(level),
            ],
            "responses": {
                "200": {
                    "description": "the matches (PS3.18 Annex F), in a stable order",
                    "headers": {"Warning": _WARNING},
                    "content": {
                        "application/dicom+json": {
                            "schema": {"$ref": "#/components/schemas/DicomJsonArray"}
                        },
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/DicomJsonArray"}
                        },
                    },
                },
                "204": {"description": "nothing matches", "headers": {"Warning": _WARNING}},
                "400": _error("a malformed query (bad date, unknown keyword, bad limit, ...)"),
                **({"404": _error("the study or series of the path is not in the catalog")}
                   if path else {}),
                "406": _error("the Accept header excludes application/dicom+json"),
                **_AUTH_ERRORS,
            },
        }
    }  # fmt: skip


def _png(
    summary: str, description: str, path: list[dict[str, Any]], others: dict[str, Any]
) -> dict[str, Any]:
    return {
        "get": {
            "tags": ["Previews"],
            "summary": summary,
            "description": description,
            "parameters": path,
            "responses": {
                "200": {
                    "description": "the preview PNG",
                    "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                },
                **others,
                "400": _error("a path UID is not a DICOM UID"),
                **_AUTH_ERRORS,
            },
        }
    }


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the store's HTTP API."""
    study = _path_param("study", "StudyInstanceUID")
    series = _path_param("series", "SeriesInstanceUID")
    rendered_note = (
        "The series' stored preview (its middle instance, rendered by the receiver). "
        "Rendering parameters (viewport, window, quality, annotation) are not supported "
        "and answered with a Warning header."
    )
    by_study = {
        "204": {
            "description": "the series has no preview (none received yet, or none could be "
            "rendered); the Warning header says which",
            "headers": {"Warning": _WARNING},
        },
        "404": _error("the study, or the series in it, is not in the catalog"),
        "406": _error("the Accept header excludes image/png"),
    }
    paths: dict[str, Any] = {
        "/studies": _search(Level.STUDY, "Search for studies", []),
        "/series": _search(Level.SERIES, "Search for series (with study attributes)", []),
        "/instances": _search(
            Level.IMAGE, "Search for instances (with study and series attributes)", []
        ),
        "/studies/{study}/series": _search(Level.SERIES, "Search a study's series", [study]),
        "/studies/{study}/instances": _search(
            Level.IMAGE, "Search a study's instances (with series attributes)", [study]
        ),
        "/studies/{study}/series/{series}/instances": _search(
            Level.IMAGE, "Search a series' instances", [study, series]
        ),
        "/studies/{study}/series/{series}/thumbnail": _png(
            "A series' thumbnail (PS3.18 10.4)", rendered_note, [study, series], by_study
        ),
        "/studies/{study}/series/{series}/rendered": _png(
            "A series rendered (PS3.18 10.4)", rendered_note, [study, series], by_study
        ),
        "/series/{series_uid}/preview.png": _png(
            "A series' preview PNG",
            "The series' stored preview; a 404 body says why there is none (reason "
            "`pending` while no preview was received, else the renderer's reason).",
            [_path_param("series_uid", "SeriesInstanceUID")],
            {"404": _error("no such series, or no preview (the body's reason says which)")},
        ),
        "/studies/{study_uid}/previews": {
            "get": {
                "tags": ["Previews"],
                "summary": "A study's contact sheet",
                "description": "An HTML page: every series of the study with its "
                "description, modality, instance count, status and preview.",
                "parameters": [_path_param("study_uid", "StudyInstanceUID")],
                "responses": {
                    "200": {"description": "the page", "content": {"text/html": {}}},
                    "400": _error("the path UID is not a DICOM UID"),
                    "404": _error("the study is not in the catalog"),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/healthz": {
            "get": {
                "tags": ["Service"],
                "summary": "Liveness of the store and its database",
                "security": [],
                "responses": {
                    "200": {"description": "PostgreSQL answers", "content": {"text/plain": {}}},
                    "503": {"description": "PostgreSQL does not", "content": {"text/plain": {}}},
                },
            }
        },
        "/openapi.json": {
            "get": {
                "tags": ["Service"],
                "summary": "This document",
                "security": [],
                "responses": {"200": {"description": "OpenAPI 3.1",
                                      "content": {"application/json": {}}}},
            }
        },
        "/docs": {
            "get": {
                "tags": ["Service"],
                "summary": "Interactive documentation (Swagger UI, served locally)",
                "security": [],
                "responses": {"200": {"description": "the page", "content": {"text/html": {}}}},
            }
        },
    }  # fmt: skip
    return {
        "openapi": "3.1.0",
        "info": {
            "title": _TITLE,
            "version": "1",
            "description": "The catalog over HTTP: QIDO-RS (DICOM PS3.18 10.6) searches "
            "through the same matching engine as the gRPC Query RPC and C-FIND, series "
            "previews, and health. With bearer tokens configured, every route but /healthz, "
            "/openapi.json and /docs needs a token of the read list.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a token of SERIESFLOW_GRPC_READ_TOKENS_FILE",
                }
            },
            "parameters": {
                # Every attribute some search level matches (the IMAGE level's are all).
                **{a.keyword: _attribute_param(a) for a in _searchable()},
                "includefield": {
                    "name": "includefield",
                    "in": "query",
                    "required": False,
                    "description": "attributes to return beside the level's required ones: "
                    "keywords or tags, repeated or comma-separated; `all` for every attribute "
                    "of the level the catalog holds (study and series levels add the "
                    "representative instance's header attributes). Other attributes of a "
                    "study or series are answered from that header.",
                    "style": "form",
                    "explode": True,
                    "schema": {"type": "array", "items": {"type": "string"}},
                },
                "limit": {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "description": "at most this many matches (without it: all of them, "
                    "streamed; the store has no maximum)",
                    "schema": {"type": "integer", "minimum": 0},
                },
                "offset": {
                    "name": "offset",
                    "in": "query",
                    "required": False,
                    "description": "skip this many matches first (same order every time)",
                    "schema": {"type": "integer", "minimum": 0, "default": 0},
                },
                "fuzzymatching": {
                    "name": "fuzzymatching",
                    "in": "query",
                    "required": False,
                    "description": "person names: each word of the value starts a word of "
                    "the name, ignoring case and accents, in any order",
                    "schema": {"type": "boolean", "default": False},
                },
            },
            "schemas": {
                "DicomJsonArray": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "description": "a DICOM JSON dataset keyed by 8-digit tag",
                        "propertyNames": {"pattern": "^[0-9A-F]{8}$"},
                        "additionalProperties": {
                            "type": "object",
                            "required": ["vr"],
                            "properties": {
                                "vr": {"type": "string", "pattern": "^[A-Z]{2}$"},
                                "Value": {"type": "array"},
                            },
                        },
                    },
                },
                "Error": {
                    "type": "object",
                    "required": ["error", "reason"],
                    "properties": {"error": {"type": "string"}, "reason": {"type": "string"}},
                },
            },
        },
    }


if __name__ == "__main__":
    print(json.dumps(document(), indent=2, ensure_ascii=False))
