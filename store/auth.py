"""Authentication of the gRPC API: bearer tokens or client-certificate names, two scopes.

Scopes: `write` is StoreSeries (what receivers call); `read` is every other SeriesStore
method (the queries, which return patient data). The scopes are separate: a token or a
certificate name has the scopes of the lists it appears in, so a receiver's write token
does not read patient data unless it is listed for reads too. Health and reflection stay
open (probes and `grpcurl list` need no credentials; they reveal no patient data).

Modes (SERIESFLOW_GRPC_AUTH): `token` checks `authorization: Bearer <token>` metadata
against the token files (one token a line, `#` comments; compared as SHA-256 digests in
constant time, against every token, so timing tells nothing about which one is close);
`mtls` checks the names (CN and SANs) of the verified client certificate; `none` lets
every caller in; `auto` is `token` when a token file is set, else `none`.

Token files are read at start (an unreadable file stops the store) and re-read when they
change (their inode, size or mtime, checked at most once a second): Kubernetes updates a
mounted Secret by swapping a symlink, so rotation needs no restart. A file that cannot be
read later keeps its last good tokens, with a warning.

Refusals: no or unknown credentials → UNAUTHENTICATED, known but for the other scope →
PERMISSION_DENIED, each with a message saying what to do, counted in
seriesflow_store_auth_rejections_total{scope, reason}.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from seriesflow.store.config import StoreConfig
from seriesflow.store.grpc_wrap import wrap
from seriesflow.store.metrics import StoreMetrics

_log = logging.getLogger(__name__)

WRITE_METHODS = frozenset({"/seriesflow.v1.SeriesStore/StoreSeries"})
OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)
_RECHECK_SECONDS = 1.0
_LOG_EVERY_SECONDS = 60.0

_TOKEN_FILE_VARIABLE = {
    "write": "SERIESFLOW_GRPC_WRITE_TOKENS_FILE",
    "read": "SERIESFLOW_GRPC_READ_TOKENS_FILE",
}
_IDENTITY_VARIABLE = {
    "write": "SERIESFLOW_GRPC_MTLS_WRITE_IDENTITIES",
    "read": "SERIESFLOW_GRPC_MTLS_READ_IDENTITIES",
}
_NEEDS = {"write": "StoreSeries", "read": "the query RPCs"}


class TokenFileError(OSError):
    """A token file cannot be read at start; fix the path or permissions named in it."""


def _digest(token: str | bytes) -> bytes:
    data = token.encode() if isinstance(token, str) else token
    return hashlib.sha256(data).digest()


def parse_tokens(text: str) -> list[bytes]:
    """SHA-256 digests of the tokens in a file's text: one a line, blanks and # lines skipped."""
    lines = (line.strip() for line in text.splitlines())
    return [_digest(line) for line in lines if line and not line.startswith("#")]


class TokenFile:
    """The tokens of one file, re-read when the file changes."""

    def __init__(self, path: Path, variable: str) -> None:
        self.path = path
        self.variable = variable
        self._lock = threading.Lock()
        self._checked = 0.0
        self._signature: tuple[int, int, int] | None = None
        try:
            self._signature = self._stat()
            self._digests = parse_tokens(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenFileError(
                f"cannot read {variable}={path}: {exc}; give a readable file with one token a line"
            ) from None
        if not self._digests:
            _log.warning(
                "token file holds no token: nobody gets its scope",
                extra={"fields": {"variable": variable, "path": str(path)}},
            )

    def _stat(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def digests(self) -> list[bytes]:
        now = time.monotonic()
        with self._lock:
            if now - self._checked >= _RECHECK_SECONDS:
                self._checked = now
                self._reload_if_changed()
            return self._digests

    def _reload_if_changed(self) -> None:
        try:
            signature = self._stat()
            if signature == self._signature:
                return
            digests = parse_tokens(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            _log.warning(
                "token file unreadable; keeping its previous tokens",
                extra={"fields": {"variable": self.variable, "error": str(exc)}},
            )
            return
        self._signature, self._digests = signature, digests
        _log.info(
            "token file re-read",
            extra={"fields": {"variable": self.variable, "tokens": len(digests)}},
        )


def _matches(presented: bytes, digests: Iterable[bytes]) -> bool:
    found = False
    for digest in digests:  # no early exit: the time does not depend on which one matches
        found |= hmac.compare_digest(presented, digest)
    return found


@dataclass(frozen=True)
class Refusal:
    """Why a call is refused: the gRPC code, the message for the caller, the metric reason."""

    code: grpc.StatusCode
    reason: str
    message: str


class Authenticator:
    """Decides, per call, whether its credentials carry the scope the method needs."""

    def __init__(
        self,
        mode: str,
        tokens: dict[str, TokenFile] | None = None,
        identities: dict[str, frozenset[str]] | None = None,
    ) -> None:
        self.mode = mode
        self._tokens = tokens or {}
        self._identities = identities or {}

    @classmethod
    def from_config(cls, config: StoreConfig) -> Authenticator:
        """Raises TokenFileError when a configured token file cannot be read."""
        mode = config.auth_mode
        tokens: dict[str, TokenFile] = {}
        if mode == "token":
            for scope, path in (
                ("write", config.grpc_write_tokens_file),
                ("read", config.grpc_read_tokens_file),
            ):
                if path is not None:
                    tokens[scope] = TokenFile(path, _TOKEN_FILE_VARIABLE[scope])
        identities = {
            "write": config.grpc_mtls_write_identities,
            "read": config.grpc_mtls_read_identities,
        }
        return cls(mode, tokens, identities)

    def check(
        self, scope: str, metadata: Iterable[tuple[str, Any]], names: list[str]
    ) -> Refusal | None:
        """None when the call may proceed. `names`: the verified client certificate's."""
        if self.mode == "token":
            return self._check_token(scope, metadata)
        if self.mode == "mtls":
            return self._check_names(scope, names)
        return None

    def _check_token(self, scope: str, metadata: Iterable[tuple[str, Any]]) -> Refusal | None:
        values = [v for k, v in metadata if k.lower() == "authorization"]
        variable = _TOKEN_FILE_VARIABLE[scope]
        if not values:
            return Refusal(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing_credentials",
                f"this store requires a bearer token for {_NEEDS[scope]}: send the metadata "
                f"'authorization: Bearer <token>' (grpcurl -H 'authorization: Bearer <token>'; "
                f"a receiver reads its token from SERIESFLOW_STORE_TOKEN_FILE) with a token "
                f"listed in the store's {variable}",
            )
        value = values[0]
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        scheme, _, token = text.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return Refusal(
                grpc.StatusCode.UNAUTHENTICATED,
                "malformed",
                "the authorization metadata must be 'Bearer <token>' (one space, no quotes)",
            )
        presented = _digest(token)
        if _matches(presented, self._scope_digests(scope)):
            return None
        other = "read" if scope == "write" else "write"
        if _matches(presented, self._scope_digests(other)):
            return Refusal(
                grpc.StatusCode.PERMISSION_DENIED,
                "wrong_scope",
                f"this token may call {_NEEDS[other]} but not {_NEEDS[scope]}: use a token "
                f"listed in the store's {variable}",
            )
        return Refusal(
            grpc.StatusCode.UNAUTHENTICATED,
            "unknown_token",
            f"the bearer token is not one this store accepts: {_NEEDS[scope]} needs a token "
            f"listed in the store's {variable} (check the token file or Secret on both sides)",
        )

    def _scope_digests(self, scope: str) -> list[bytes]:
        file = self._tokens.get(scope)
        return file.digests() if file is not None else []

    def _check_names(self, scope: str, names: list[str]) -> Refusal | None:
        variable = _IDENTITY_VARIABLE[scope]
        if not names:
            return Refusal(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing_credentials",
                "this store requires a client certificate: connect with mutual TLS "
                "(a receiver sets SERIESFLOW_STORE_TLS_CERT and SERIESFLOW_STORE_TLS_KEY)",
            )
        if set(names) & self._identities.get(scope, frozenset()):
            return None
        other = "read" if scope == "write" else "write"
        shown = ", ".join(sorted(names))[:200]
        if set(names) & self._identities.get(other, frozenset()):
            return Refusal(
                grpc.StatusCode.PERMISSION_DENIED,
                "wrong_scope",
                f"client certificate {shown!r} may call {_NEEDS[other]} but not "
                f"{_NEEDS[scope]}: add one of its names to the store's {variable}",
            )
        return Refusal(
            grpc.StatusCode.PERMISSION_DENIED,
            "unknown_identity",
            f"client certificate {shown!r} has no scope on this store: add one of its names "
            f"(CN or SAN) to the store's {variable}",
        )


def certificate_names(context: Any) -> list[str]:
    """CN and SANs of the verified client certificate ([] without mutual TLS)."""
    auth = context.auth_context() or {}
    names: list[str] = []
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        for value in auth.get(key, ()):
            names.append(value.decode() if isinstance(value, bytes) else str(value))
    return names


def scope_of(method: str) -> str | None:
    """The scope a full method name needs; None for the open services."""
    service = method.lstrip("/").rpartition("/")[0]
    if service in OPEN_SERVICES:
        return None
    return "write" if method in WRITE_METHODS else "read"


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks each call before its handler runs; compose it after MetricsInterceptor so
    refused calls are counted by code in seriesflow_store_grpc_server_handled_total too."""

    def __init__(self, authenticator: Authenticator, metrics: StoreMetrics) -> None:
        self._auth = authenticator
        self._metrics = metrics
        self._logged: dict[tuple[str, str, str], float] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        scope = scope_of(handler_call_details.method)
        if handler is None or scope is None or self._auth.mode == "none":
            return handler
        admit = self._admitter(scope, handler_call_details.method)

        @contextlib.asynccontextmanager
        async def admitted(context: Any) -> AsyncIterator[None]:
            await admit(context)
            yield

        return wrap(handler, admitted)

    def _admitter(self, scope: str, method: str) -> Callable[[Any], Awaitable[None]]:
        async def admit(context: Any) -> None:
            names = certificate_names(context) if self._auth.mode == "mtls" else []
            refusal = self._auth.check(scope, context.invocation_metadata() or (), names)
            if refusal is None:
                return
            self._metrics.auth_rejections.labels(scope=scope, reason=refusal.reason).inc()
            self._log(refusal, scope, method, context)
            await context.abort(refusal.code, refusal.message)

        return admit

    def _log(self, refusal: Refusal, scope: str, method: str, context: Any) -> None:
        # A misconfigured receiver retries every few seconds: one line a minute per cause.
        peer = str(context.peer()).rsplit(":", 1)[0]
        key = (peer, scope, refusal.reason)
        now = time.monotonic()
        if now - self._logged.get(key, -_LOG_EVERY_SECONDS) < _LOG_EVERY_SECONDS:
            return
        if len(self._logged) > 1000:
            self._logged.clear()
        self._logged[key] = now
        _log.warning(
            "gRPC call refused by authentication",
            extra={
                "fields": {
                    "peer": peer,
                    "method": method,
                    "scope": scope,
                    "reason": refusal.reason,
                    "code": refusal.code.name,
                }
            },
        )
