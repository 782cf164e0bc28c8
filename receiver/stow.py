"""STOW-RS (PS3.18 10.5): DICOM instances stored over HTTP, through the same intake as C-STORE.

    POST /studies                  multipart/related; type="application/dicom"; boundary=...
    POST /studies/{StudyInstanceUID}   the same; an instance of another study is refused

Each part is a DICOM Part 10 file. Its file meta group (explicit VR little endian, PS3.10
7.1) is read here, for its transfer syntax and SOP UIDs; the dataset after it streams,
piece by piece as the body arrives, into a receiver.incoming file, exactly as a C-STORE
dataset does, and then goes through `Intake.begin` / `Committing.complete`: the same
validation, the same durable spool, the same grouping and completion. A request larger
than memory is therefore fine: memory holds one piece of the body at a time.

One request is one "association" for the tracker (its own key, negative so it can never
meet a DICOM association's), released when the response is sent: a series that a request
carried completes after the release grace, as it would after an A-RELEASE.

The answer is the Store Instances Response Module (PS3.18 Annex I) as application/dicom+json:
ReferencedSOPSequence for what was stored, FailedSOPSequence with the C-STORE status intake
answered as FailureReason (0xA900, 0xC000, 0xC001, 0xA700). The HTTP status follows PS3.18
Table 10.5.3-1: 200 all stored, 202 some failed, 409 none stored, 503 (Retry-After) when
none was stored only for lack of resources (a full spool: 0xA700 for every instance), 400
for a body that is not multipart, 413 over SERIESFLOW_STOW_MAX_REQUEST_BYTES, 415 for any
other media type, 401/403 without or with a wrong bearer token (SERIESFLOW_STOW_TOKENS_FILE).
ErrorComments, which the JSON module has no place for, go in `Warning` headers.

aiohttp serves it in an event loop of its own thread: the DICOM engine's loop is private
to receiver.server (created, run and stopped there), and a loop here keeps each server's
start, drain and stop independent; both parse on their loop and await the same spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

from aiohttp import BodyPartReader, MultipartReader, web

from seriesflow.receiver import header
from seriesflow.receiver.bearer import TokenFile
from seriesflow.receiver.header import HeaderError
from seriesflow.receiver.incoming import IncomingFile
from seriesflow.receiver.intake import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH,
    OUT_OF_RESOURCES,
    SUCCESS,
    Answer,
    Committing,
    Intake,
    StoreCommand,
)
from seriesflow.receiver.part10 import FileMeta, NotPart10, split_meta

_log = logging.getLogger(__name__)

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
# Body bytes are read in pieces of at most this: what one request holds in memory.
_PIECE = 256 * 1024
_MAX_BOUNDARY = 200
# Instances of one request waiting for their group commit, at most (their files wait too).
_MAX_QUEUED = 64
_WARNINGS_SHOWN = 20  # Warning headers per response, at most
_CLIENT_CLOSED = 499  # nginx's "client closed request", for the requests counter
_DRAIN_SECONDS = 10.0


# -- one request --------------------------------------------------------------------------


@dataclass
class _Outcome:
    """One part's result: its UIDs (as far as known) and the status intake answered."""

    sop_class_uid: str
    sop_instance_uid: str
    status: int
    comment: str = ""


class _LenientReader(MultipartReader):
    """aiohttp's multipart reader, taking boundaries longer than RFC 2046's 70 characters:
    Orthanc's DICOMweb plugin (1.7) sends a 73-character one, and nothing in reading a body
    needs the limit."""

    def _get_boundary(self) -> str:
        boundary = str(self._mimetype.parameters["boundary"])
        if len(boundary) > _MAX_BOUNDARY:
            raise ValueError(f"boundary longer than {_MAX_BOUNDARY} characters")
        return boundary


class RequestTooLarge(Exception):
    """The body passed SERIESFLOW_STOW_MAX_REQUEST_BYTES."""


@dataclass
class _Queued:
    """An instance intake queued for the spool's group commit; its file waits with it
    (Committing.complete may keep it for the series' preview)."""

    step: Committing
    incoming: IncomingFile
    sop_class_uid: str
    sop_instance_uid: str

    def settle(self) -> _Outcome:
        """Once `step.committed` is done: tell the tracker, let go of the file."""
        try:
            answer = self.step.complete()
        finally:
            self.incoming.discard()
        return _Outcome(self.sop_class_uid, self.sop_instance_uid, answer.status, answer.comment)


@dataclass
class _Request:
    """The state of one POST: each part's result, and the body bytes read so far.

    A part's group commit is not awaited before the next part is read: the answer comes
    only at the end of the request, so the parts share commits (C-STORE, answered per
    instance, cannot) and every one is committed before the answer all the same."""

    max_bytes: int
    results: list[_Outcome | _Queued] = field(default_factory=list)
    body_bytes: int = 0
    _settled: int = 0  # results before this index are all settled

    @property
    def outcomes(self) -> list[_Outcome]:
        return [r for r in self.results if isinstance(r, _Outcome)]

    def settle_committed(self) -> None:
        """Settle what the spool has committed meanwhile (without waiting)."""
        for index in range(self._settled, len(self.results)):
            result = self.results[index]
            if isinstance(result, _Queued) and result.step.committed.done():
                self.results[index] = result.settle()
        while self._settled < len(self.results) and isinstance(
            self.results[self._settled], _Outcome
        ):
            self._settled += 1

    async def settle(self, at_most_queued: int = 0) -> None:
        """Wait for the oldest queued commits until at most `at_most_queued` remain."""
        queued = [
            i
            for i in range(self._settled, len(self.results))
            if isinstance(self.results[i], _Queued)
        ]
        for index in queued[: max(0, len(queued) - at_most_queued)]:
            result = self.results[index]
            assert isinstance(result, _Queued)
            with contextlib.suppress(Exception):  # settle() turns failures into statuses
                await asyncio.wrap_future(result.step.committed)
            self.results[index] = result.settle()

    async def piece(self, part: BodyPartReader) -> bytes:
        data = await part.read_chunk(_PIECE)
        self.body_bytes += len(data)
        if self.body_bytes > self.max_bytes:
            raise RequestTooLarge
        return data


def _media_type(value: str) -> tuple[str, dict[str, str]]:
    """A Content-Type's type/subtype and parameters, unquoted (RFC 9110 8.3.1)."""
    if not value.strip():
        return "", {}
    message = Message()
    message["content-type"] = value
    params = {k.lower(): str(v) for k, v in message.get_params([])[1:]}
    return message.get_content_type(), params


class StowServer:
    """The STOW-RS routes on host:port; `start()` returns once bound, `stop()` drains."""

    def __init__(
        self,
        intake: Intake,
        host: str,
        port: int,
        *,
        max_request_bytes: int,
        tokens: TokenFile | None,
        calling_ae_title: str,
    ) -> None:
        self.intake = intake
        self.host, self.requested_port = host, port
        self.port = 0
        self.max_request_bytes = max_request_bytes
        self.tokens = tokens
        self.calling_ae_title = calling_ae_title
        # Negative: DICOM associations are numbered 1, 2, ... in receiver.server.
        self._keys = itertools.count(-1, -1)
        self.requests = intake.metrics.stow_requests
        self.request_seconds = intake.metrics.stow_request_seconds
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="stow", daemon=True)
        self._runner: web.AppRunner | None = None

    # -- life cycle -------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._count])
        for path in ("/studies", "/studies/{study}"):
            app.router.add_route("POST", path, self.store, expect_handler=self._expect)
            app.router.add_route("OPTIONS", path, self.options)
            app.router.add_route("*", path, self.not_allowed)
        return app

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=30)

    async def _listen(self) -> None:
        runner = web.AppRunner(
            self.app(), access_log=None, handle_signals=False, shutdown_timeout=_DRAIN_SECONDS
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.requested_port).start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(
                f"cannot listen on {self.host}:{self.requested_port} for STOW-RS "
                f"({exc.strerror}): is the port in use? Set SERIESFLOW_STOW_PORT to a free one "
                "(or off)"
            ) from exc
        self._runner = runner
        self.port = int(runner.addresses[0][1])

    def stop(self) -> None:
        """Stop accepting; requests in flight get a while to finish (aiohttp's shutdown)."""
        try:
            if self._runner is not None:
                future = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
                future.result(timeout=_DRAIN_SECONDS + 10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    # -- routes -----------------------------------------------------------------------

    @web.middleware
    async def _count(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        started = time.monotonic()
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            self.requests.labels(status=str(exc.status)).inc()
            raise
        self.requests.labels(status=str(response.status)).inc()
        self.request_seconds.observe(time.monotonic() - started)
        return response

    async def _expect(self, request: web.Request) -> web.Response | None:
        """Expect: 100-continue (curl sends it for bodies over 1 MiB): a request refused
        anyway (token, media type, announced size) is answered before its body is sent."""
        refusal = self._refusal(request)
        if refusal is not None:
            refusal.headers["Connection"] = "close"
            return refusal
        if request.headers.get("Expect", "").lower() != "100-continue":
            return _error(417, "only 'Expect: 100-continue' is understood")
        if request.version >= (1, 1):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # the 100 is not part of the response proper
        return None

    async def options(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers={"Allow": "POST, OPTIONS", "Accept-Post": DICOM})

    async def not_allowed(self, request: web.Request) -> web.Response:
        return _error(
            405,
            f"{request.method} is not served here: STOW-RS takes POST (this receiver stores, "
            "it does not serve QIDO-RS or WADO-RS; the store answers queries)",
            Allow="POST, OPTIONS",
        )

    async def store(self, request: web.Request) -> web.Response:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        key = next(self._keys)
        self.intake.association_opened(key)
        released = False
        try:
            response = await self._store(request, key, request.match_info.get("study", ""))
            released = True
            return response
        except ConnectionError:
            # The client went away mid-body: like an aborted association, its series get
            # the idle wait, not the release grace; what it fully sent before is stored.
            _log.info("STOW-RS client closed the connection mid-request")
            return web.Response(status=_CLIENT_CLOSED)  # counted; no one reads it
        finally:
            self.intake.association_ended(key, released)

    def _refusal(self, request: web.Request) -> web.Response | None:
        """A response when the request is refused before its body is read."""
        if self.tokens is not None:
            scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return _error(
                    401,
                    "this receiver requires 'Authorization: Bearer <token>' with a token "
                    "listed in its SERIESFLOW_STOW_TOKENS_FILE",
                    **{"WWW-Authenticate": "Bearer"},
                )
            if not self.tokens.allows(token.strip()):
                return _error(
                    403,
                    "the bearer token is not one this receiver accepts for STOW-RS (check "
                    "SERIESFLOW_STOW_TOKENS_FILE)",
                )
        kind, params = _media_type(request.headers.get("Content-Type", ""))
        part_type = params.get("type", DICOM).strip("\"' ").lower()
        if kind != "multipart/related" or part_type != DICOM:
            return _error(
                415,
                f'STOW-RS here takes Content-Type multipart/related; type="{DICOM}"; '
                f"boundary=... (one DICOM Part 10 file per part), not {kind!r} with type "
                f"{part_type!r}; metadata and bulk data parts (application/dicom+json or "
                "+xml) are not supported",
            )
        if not params.get("boundary"):
            return _error(400, "the multipart/related Content-Type has no boundary parameter")
        length = request.content_length
        if length is not None and length > self.max_request_bytes:
            return _error(413, self._too_large_text(), Connection="close")
        return None

    def _too_large_text(self) -> str:
        return (
            f"request body larger than this receiver's limit of {self.max_request_bytes} bytes "
            "(SERIESFLOW_STOW_MAX_REQUEST_BYTES): send fewer instances per request"
        )

    async def _store(self, request: web.Request, key: int, study: str) -> web.Response:
        state = _Request(self.max_request_bytes)
        malformed = ""
        try:
            try:
                reader = _LenientReader(request.headers, request.content)
                while True:
                    part = await reader.next()
                    if part is None:
                        break
                    if not isinstance(part, BodyPartReader):
                        raise ValueError("nested multipart parts are not supported")
                    state.results.append(await self._part(state, part, key, study))
                    state.settle_committed()
                    await state.settle(at_most_queued=_MAX_QUEUED)
            finally:
                # Whatever ended the body: every queued instance reaches the tracker, or a
                # committed one would wait for the next start to be flushed.
                await state.settle()
        except RequestTooLarge:
            stored = sum(o.status == SUCCESS for o in state.outcomes)
            text = self._too_large_text()
            if stored:
                text += f"; the {stored} instances before the limit were stored"
            return _error(413, text, Connection="close")
        except (ValueError, AssertionError, RuntimeError) as exc:
            # aiohttp's multipart reader says a body is malformed with these.
            malformed = f"body is not a valid multipart/related message: {exc}"[:300]
        if malformed and not state.outcomes:
            return _error(400, malformed)
        return self._answer(state.outcomes, malformed)

    async def _part(
        self, state: _Request, part: BodyPartReader, key: int, study: str
    ) -> _Outcome | _Queued:
        kind, _ = _media_type(part.headers.get("Content-Type", DICOM))
        if kind != DICOM:
            await self._drain(state, part)
            return self._refused("", "", CANNOT_UNDERSTAND, f"part of type {kind}, not {DICOM}")
        buffer = bytearray()
        split: tuple[FileMeta, int] | None = None
        while split is None:
            data = await state.piece(part)
            buffer += data
            try:
                split = split_meta(buffer, final=not data)
            except NotPart10 as exc:
                await self._drain(state, part)
                return self._refused("", "", CANNOT_UNDERSTAND, str(exc))
            if split is None and not data:
                return self._refused("", "", CANNOT_UNDERSTAND, "empty part")
        meta, offset = split
        incoming = self.intake.incoming.create(meta.transfer_syntax_uid)
        try:
            incoming.write(memoryview(buffer)[offset:])
            del buffer
            while data := await state.piece(part):
                incoming.write(data)
            incoming.finish()
            result = self._intake(incoming, meta, key, study)
        except BaseException:
            incoming.discard()
            raise
        if isinstance(result, _Outcome):
            incoming.discard()
        return result

    def _intake(
        self, incoming: IncomingFile, meta: FileMeta, key: int, study: str
    ) -> _Outcome | _Queued:
        sop_class, sop_instance = meta.sop_class_uid, meta.sop_instance_uid
        if study or not (sop_class and sop_instance):
            # The study to check, or UIDs the file meta lacks: read the header once more
            # (a few milliseconds); what it cannot parse intake refuses below as usual.
            try:
                parsed = header.parse_file(
                    incoming.path, incoming.transfer_syntax_uid, incoming.received_bytes
                )
            except HeaderError:
                parsed = None
            if parsed is not None:
                sop_instance = sop_instance or parsed.sop_instance_uid
                sop_class = sop_class or header.text(parsed, "SOPClassUID").strip()
                if study and parsed.study_uid != study:
                    return self._refused(
                        sop_class,
                        sop_instance,
                        DATASET_DOES_NOT_MATCH,
                        "StudyInstanceUID differs from the study in the request's URL",
                    )
        step = self.intake.begin(
            incoming, self.calling_ae_title, key, StoreCommand(sop_class, sop_instance)
        )
        if isinstance(step, Answer):
            return _Outcome(sop_class, sop_instance, step.status, step.comment)
        return _Queued(step, incoming, sop_class, sop_instance)

    def _refused(self, sop_class: str, sop_instance: str, status: int, comment: str) -> _Outcome:
        """A part refused here, before intake: counted and logged as intake would."""
        reason = "command_mismatch" if status == DATASET_DOES_NOT_MATCH else "unparseable"
        self.intake.metrics.instances.labels(status="error", reason=reason).inc()
        _log.info(
            "instance refused",
            extra={"fields": {"status": f"0x{status:04X}", "reason": reason, "via": "stow"}},
        )
        return _Outcome(sop_class, sop_instance, status, comment[:64])

    async def _drain(self, state: _Request, part: BodyPartReader) -> None:
        while await state.piece(part):
            pass

    def _answer(self, outcomes: list[_Outcome], malformed: str) -> web.Response:
        stored = [o for o in outcomes if o.status == SUCCESS]
        failed = [o for o in outcomes if o.status != SUCCESS]
        if malformed:
            failed.append(_Outcome("", "", CANNOT_UNDERSTAND, malformed))
        headers: dict[str, Any] = {"Content-Type": DICOM_JSON}
        if not failed:
            status = 200
        elif stored:
            status = 202
        elif all(o.status >> 8 == OUT_OF_RESOURCES >> 8 for o in failed):
            status, headers["Retry-After"] = 503, "30"
        else:
            status = 409
        response = web.Response(status=status, body=_response_module(stored, failed))
        for name, value in headers.items():
            response.headers[name] = value
        numbered = [(f"part {n}", o) for n, o in enumerate(outcomes, 1) if o.status != SUCCESS]
        if malformed:
            numbered.append(("body", failed[-1]))
        for label, outcome in numbered[:_WARNINGS_SHOWN]:
            text = outcome.comment.replace('"', "'").replace("\\", "/")
            text = text.encode("ascii", "replace").decode()  # header values are Latin-1
            name = outcome.sop_instance_uid or label
            response.headers.add(
                "Warning", f'299 seriesflow "{name}: 0x{outcome.status:04X} {text}"'
            )
        return response


def _uid_element(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def _response_module(stored: list[_Outcome], failed: list[_Outcome]) -> bytes:
    """The Store Instances Response Module (PS3.18 Table I.1-1) in DICOM JSON (Annex F)."""
    # Retrieve URL is type 2: present and empty, since this receiver keeps no instances
    # to retrieve (WADO-RS is not served; the catalog is queried at the store).
    module: dict[str, Any] = {"00081190": {"vr": "UR"}}
    if failed:
        module["00081198"] = {
            "vr": "SQ",
            "Value": [
                {
                    "00081150": _uid_element(o.sop_class_uid),
                    "00081155": _uid_element(o.sop_instance_uid),
                    "00081197": {"vr": "US", "Value": [o.status]},
                }
                for o in failed
            ],
        }
    if stored:
        module["00081199"] = {
            "vr": "SQ",
            "Value": [
                {
                    "00081150": _uid_element(o.sop_class_uid),
                    "00081155": _uid_element(o.sop_instance_uid),
                    "00081190": {"vr": "UR"},
                }
                for o in stored
            ],
        }
    return json.dumps(module, sort_keys=True).encode()


def _error(status: int, message: str, **headers: str) -> web.Response:
    body = json.dumps({"error": message}, ensure_ascii=False)
    return web.Response(status=status, text=body, content_type="application/json", headers=headers)
