"""The receiver's DICOM engine: an asyncio Storage SCP (C-STORE and C-ECHO), one event loop;
also a C-FIND SCP when given a receiver.find.Finder (queries answered by the store).

Why not pynetdicom's server: it polls (each association runs two threads that sleep 1 ms
between checks), which capped one sender near 250 instances/s and burned a core on
polling with four. Here each association is a coroutine woken only by its socket; an
instance is parsed on the loop and its coroutine then awaits the spool's group commit,
so other associations keep moving meanwhile. (pynetdicom serves the SCU side: `seriesflow
send` and the tests' senders.)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import socket
import ssl
import struct
import threading
import time

from seriesflow.receiver import pdu
from seriesflow.receiver.admission import Admission
from seriesflow.receiver.contexts import (
    ACCEPTANCE,
    FIND_SOP_CLASSES,
    REJECTION_REASONS,
    USER_REJECTION,
    Policy,
)
from seriesflow.receiver.find import IDENTIFIER_DOES_NOT_MATCH, Find, Finder
from seriesflow.receiver.incoming import IncomingFile
from seriesflow.receiver.intake import CANNOT_UNDERSTAND, SUCCESS, Answer, Intake, StoreCommand
from seriesflow.receiver.messages import C_FIND_RQ, Assembler, Identifier, Message, State

_log = logging.getLogger(__name__)

# What we accept per PDU: 256 KiB keeps a CT slice to two PDUs and memory per association
# bounded; a sender must respect it (PS3.8 D.1).
MAX_PDU_LENGTH = 256 * 1024
_STREAM_LIMIT = 4 * 1024 * 1024
_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)
# Data transfer reads a P-DATA fragment in pieces of at most this (whatever the PDU's
# length); A-RELEASE-RQ and A-ABORT bodies are 4 bytes, a little slack allowed.
_PIECE = 256 * 1024
_CONTROL_PDU_BODY = 1024
_CLOSE_GRACE = 5.0
# How long a rejected requestor gets to close its side (PS3.8 ARTIM) before we close ours.
_ARTIM_SECONDS = 2.0
# At most one log line per this many seconds about connections closed before association
# (a flood of idle connections must not become a flood of log lines).
_REFUSAL_LOG_INTERVAL = 10.0


class PeerNotReading(Exception):
    """Our output waited longer than the network timeout: the connection is dropped."""


class DicomServer:
    """Listens in its own thread; `start()` returns once bound, `stop()` drains and closes."""

    def __init__(
        self,
        intake: Intake,
        host: str,
        port: int,
        *,
        max_associations: int,
        admission: Admission,
        acse_timeout: float,
        network_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
        max_pending_connections: int = 64,
        association_request_timeout: float = 5.0,
        max_associate_request_bytes: int = 64 * 1024,
        policy: Policy | None = None,
        finder: Finder | None = None,
    ) -> None:
        self.intake = intake
        self.host, self.requested_port = host, port
        self.port = 0
        self.max_associations = max_associations
        self.admission = admission
        self.acse_timeout, self.network_timeout = acse_timeout, network_timeout
        self.ssl_context = ssl_context
        # Connections that have not yet delivered an A-ASSOCIATE-RQ are bounded apart from
        # associations, with their own short timeout: idle sockets cannot lock senders out.
        self.max_pending_connections = max_pending_connections
        self.association_request_timeout = association_request_timeout
        self.max_associate_request_bytes = max_associate_request_bytes
        # The FIND models are negotiated only when there is a C-FIND service to answer them.
        self.finder = finder
        self.policy = dataclasses.replace(policy or Policy(), find=finder is not None)
        # Not yet associated, oldest first: when full, the oldest is dropped for the newest
        # (a real sender's A-ASSOCIATE-RQ follows its connect at once; an idle one never does).
        self.pending: dict[int, _Association] = {}
        self.associated = 0
        self._refusals_unlogged = 0
        self._refusal_logged_at = 0.0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="dicom", daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self.listening = False

    # -- life cycle -----------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        future.result(timeout=30)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._serve,
            self.host,
            self.requested_port,
            ssl=self.ssl_context,
            backlog=128,
            ssl_handshake_timeout=self.association_request_timeout if self.ssl_context else None,
            # The stream pauses the socket whenever it buffers 2 x limit; the default
            # (64 KiB) paused and resumed it several times per CT slice.
            limit=_STREAM_LIMIT,
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        self.listening = True

    def stop(self, drain_seconds: float) -> None:
        """Stop accepting; let associations in flight finish, then abort what is left."""
        future = asyncio.run_coroutine_threadsafe(self._shutdown(drain_seconds), self._loop)
        try:
            future.result(timeout=drain_seconds + 10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    async def _shutdown(self, drain_seconds: float) -> None:
        self.listening = False
        if self._server is not None:
            self._server.close()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=drain_seconds)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        if self.finder is not None:
            await self.finder.close()

    # -- one association --------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self.pending) >= self.max_pending_connections:
            oldest = next(iter(self.pending.values()))
            oldest.request_read()
            oldest.task.cancel()
            self.refused_before_association("too_many_pending", oldest.writer)
        self._tasks.add(task)
        association = _Association(self, reader, writer, next(self._ids), task)
        self.pending[association.key] = association
        self.intake.metrics.connections_pending.inc()
        try:
            await association.run()
        except (asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError):
            pass
        except pdu.ProtocolError as exc:
            _log.warning(
                "DICOM protocol error; association aborted",
                extra={"fields": {"error": str(exc), "abort_reason": exc.abort_reason}},
            )
            association.send(pdu.abort(reason=exc.abort_reason))
        except PeerNotReading:
            # Nothing more can reach it, an A-ABORT included: the socket is dropped.
            _log.info(
                "peer stopped reading its responses; connection dropped",
                extra={"fields": association.peer_fields()},
            )
            writer.transport.abort()
        except TimeoutError:
            # Our decision, not a protocol error: A-ABORT from the service-user (source 0,
            # reason not significant), as PS3.8 7.3 has an application abort.
            _log.info(
                "association idle too long; aborted", extra={"fields": association.peer_fields()}
            )
            association.send(pdu.abort(source=pdu.ABORT_SOURCE_USER))
        except Exception:
            _log.exception("unexpected error in an association; aborted")
            association.send(pdu.abort(source=pdu.ABORT_SOURCE_USER))
        finally:
            association.request_read()
            if association.counted:
                self.associated -= 1
            self._tasks.discard(task)
            self.intake.association_ended(association.key, association.released)
            association.close()

    def refused_before_association(self, reason: str, writer: asyncio.StreamWriter) -> None:
        """Count a connection closed before association; log it, at most once per interval."""
        self.intake.metrics.connections_refused.labels(reason=reason).inc()
        self._refusals_unlogged += 1
        now = time.monotonic()
        if now - self._refusal_logged_at >= _REFUSAL_LOG_INTERVAL:
            peer = writer.get_extra_info("peername") or ("?", 0)
            fields = {"reason": reason, "peer": f"{peer[0]}:{peer[1]}"}
            fields["connections_since_last_line"] = str(self._refusals_unlogged)
            _log.warning("connection closed before association", extra={"fields": fields})
            self._refusals_unlogged, self._refusal_logged_at = 0, now


class _Association:
    def __init__(
        self,
        server: DicomServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        key: int,
        task: asyncio.Task[None],
    ) -> None:
        self.server, self.reader, self.writer, self.key = server, reader, writer, key
        self.task = task
        self.released = False
        self.counted = False  # counted in server.associated
        self.calling = ""
        self.contexts: dict[int, tuple[str, str]] = {}  # id -> (abstract, transfer syntax)
        self.peer_max_pdu = 0
        # The C-FIND in progress: it runs as its own task so that its C-CANCEL-RQ is read.
        self.find: Find | None = None
        self.find_task: asyncio.Task[None] | None = None
        sock = writer.get_extra_info("socket")
        self.sock: socket.socket | None = sock
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def peer_fields(self) -> dict[str, str]:
        peer = self.writer.get_extra_info("peername") or ("?", 0)
        return {"calling_ae_title": self.calling, "peer": f"{peer[0]}:{peer[1]}"}

    def send(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    def quick_ack(self) -> None:
        # A sender that leaves Nagle on (Debian's dcmtk) holds each small write until its
        # previous one is ACKed, and Linux delays ACKs ~40 ms on request/response traffic:
        # one stall per C-STORE. Asking for an immediate ACK whenever we read avoids it.
        if _TCP_QUICKACK is not None and self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)

    async def run(self) -> None:
        request = await self.read_associate_rq()
        if request is None or not await self.associate(request):
            return
        await self.serve_messages()

    def request_read(self) -> None:
        """The connection is no longer pending (its request arrived, or it ended)."""
        if self.server.pending.pop(self.key, None) is not None:
            self.server.intake.metrics.connections_pending.dec()

    async def read_associate_rq(self) -> pdu.AssociateRequest | None:
        """The A-ASSOCIATE-RQ, within the request timeout and size cap; None when refused.

        The size is checked from the 6-byte PDU header, before any of the body is read."""
        server = self.server
        try:
            async with asyncio.timeout(server.association_request_timeout):
                head = await self.reader.readexactly(6)
                kind, length = head[0], struct.unpack(">I", head[2:6])[0]
                if kind != pdu.ASSOCIATE_RQ:
                    if not pdu.ASSOCIATE_RQ <= kind <= pdu.ABORT:
                        error = pdu.ProtocolError(f"unrecognised PDU type {kind}")
                        error.abort_reason = pdu.ABORT_UNRECOGNIZED_PDU
                        raise error
                    raise pdu.UnexpectedPdu(f"expected A-ASSOCIATE-RQ, got PDU type {kind}")
                if length > server.max_associate_request_bytes:
                    await self.refuse_unread(length)
                    return None
                body = await self.reader.readexactly(length)
        except TimeoutError:
            # PS3.8's ARTIM timer: no association yet, so no A-ABORT; the socket is closed.
            server.refused_before_association("request_timeout", self.writer)
            return None
        except asyncio.IncompleteReadError:
            server.refused_before_association("aborted", self.writer)
            return None
        finally:
            self.request_read()
        self.quick_ack()
        return pdu.parse_associate_rq(body)

    async def refuse_unread(self, length: int) -> None:
        self.server.refused_before_association("request_too_large", self.writer)
        result, source, reason = pdu.RJ_REQUEST_TOO_LARGE
        self.send(pdu.associate_rj(result, source, reason))
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(1.0):
                await self.writer.drain()
        _log.info(
            "A-ASSOCIATE-RQ too large; rejected unread",
            extra={
                "fields": {
                    **self.peer_fields(),
                    "length": length,
                    "limit": self.server.max_associate_request_bytes,
                }
            },
        )

    async def await_peer_close(self) -> None:
        """PS3.8 Sta13: after A-ASSOCIATE-RJ the requestor closes the connection, and the
        acceptor waits for that (ARTIM timer) rather than closing first: a sender that reads
        its socket late then still finds the rejection and its reason, not a reset."""
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(_ARTIM_SECONDS):
                while await self.reader.read(64 * 1024):
                    pass  # nothing more is expected; whatever comes is dropped

    async def associate(self, request: pdu.AssociateRequest) -> bool:
        self.calling = request.calling_ae_title
        called = request.called_ae_title
        server = self.server
        refusal = _request_refusal(request) or server.admission.refusal(
            self.calling, called, request.user_identity
        )
        if refusal is None and server.associated >= server.max_associations:
            refusal = pdu.RJ_LOCAL_LIMIT_EXCEEDED, "too many associations"
        if refusal is not None:
            (result, source, reason), why = refusal
            self.send(pdu.associate_rj(result, source, reason))
            async with asyncio.timeout(server.acse_timeout):
                await self.writer.drain()
            peer = self.peer_fields()["peer"]
            server.intake.association_rejected(self.calling, called, peer, why)
            await self.await_peer_close()
            return False
        server.associated += 1
        self.counted = True
        results, negotiated = self.negotiate(request)
        self.peer_max_pdu = request.max_pdu_length
        self.send(pdu.associate_ac(request, results, MAX_PDU_LENGTH, negotiated))
        async with asyncio.timeout(server.acse_timeout):
            await self.writer.drain()
        server.intake.association_opened(self.key)
        return True

    def negotiate(
        self, request: pdu.AssociateRequest
    ) -> tuple[list[tuple[int, int, str]], pdu.Negotiated]:
        """Each context's result, and the extended negotiation answers (PS3.7 D.3.3)."""
        policy = self.server.policy
        # Role selection: the requestor may be SCU of what we serve as SCP; we are never
        # SCU (no C-GET sub-operations), so an SCP role for the requestor is refused, and a
        # context whose requestor declines the SCU role is of no use: it is rejected.
        roles = [
            pdu.RoleProposal(r.sop_class_uid, r.scu and policy.serves(r.sop_class_uid), False)
            for r in request.roles
        ]
        not_scu = {r.sop_class_uid for r in request.roles if not r.scu}
        results, rejected = [], []
        for context in request.contexts:
            if context.abstract_syntax in not_scu:
                result = USER_REJECTION
                syntax = context.transfer_syntaxes[0] if context.transfer_syntaxes else ""
            else:
                result, syntax = policy.negotiate(
                    context.abstract_syntax, context.transfer_syntaxes
                )
            results.append((context.context_id, result, syntax))
            if result == ACCEPTANCE:
                self.contexts[context.context_id] = (context.abstract_syntax, syntax)
            else:
                reason = REJECTION_REASONS.get(result, "role_not_supported")
                self.server.intake.metrics.contexts_rejected.labels(reason=reason).inc()
                rejected.append(
                    {
                        "context_id": context.context_id,
                        "abstract_syntax": context.abstract_syntax,
                        "transfer_syntaxes": context.transfer_syntaxes,
                        "reason": reason,
                    }
                )
        if rejected:  # once per association, all of them
            _log.warning(
                "presentation contexts rejected",
                extra={
                    "fields": {
                        **self.peer_fields(),
                        "accepted": len(self.contexts),
                        "rejected": rejected,
                    }
                },
            )
        negotiated = pdu.Negotiated(
            roles=roles,
            async_window=request.async_window is not None,
            user_identity_response=self.server.admission.identity_response(request.user_identity),
        )
        return results, negotiated

    # -- data transfer ----------------------------------------------------------------

    async def serve_messages(self) -> None:
        """Data transfer (PS3.8 9.3.5): P-DATA read in bounded pieces and assembled into
        messages by receiver.messages, each answered before the next PDU is read. Memory
        per association is the stream's buffer and one piece, whatever a PDU's length."""
        assembler = Assembler(self.contexts, self.server.intake.incoming)
        try:
            while True:
                head = await self.read_exactly(6)
                self.quick_ack()
                kind, length = head[0], struct.unpack(">I", head[2:6])[0]
                if kind == pdu.P_DATA_TF:
                    await self.read_p_data(assembler, length)
                    continue
                if kind not in (pdu.RELEASE_RQ, pdu.ABORT):
                    if pdu.ASSOCIATE_RQ <= kind <= pdu.ABORT:
                        raise pdu.UnexpectedPdu(f"PDU type {kind} during data transfer")
                    raise pdu.UnrecognizedPdu(f"unrecognised PDU type {kind}")
                if length > _CONTROL_PDU_BODY:
                    raise pdu.InvalidParameter(f"PDU type {kind} of {length} bytes")
                await self.read_exactly(length)
                if kind == pdu.ABORT:
                    return
                if assembler.state is not State.IDLE:
                    raise pdu.UnexpectedPdu(
                        f"A-RELEASE-RQ in the middle of a message ({assembler.state.value})"
                    )
                await self.finish_find()  # its final response goes before A-RELEASE-RP
                self.send(pdu.release_rp())
                await self.drain()
                self.released = True
                return
        finally:
            assembler.close()
            task = self.find_task
            if task is not None and not task.done():
                task.cancel()  # the association is gone: nobody to answer
            elif task is not None and not task.cancelled():
                task.exception()  # retrieved: a failure was already handled in the task

    async def read_exactly(self, size: int) -> bytes:
        """`size` bytes; the peer gets the network timeout for each piece, not per PDU."""
        # asyncio.timeout, not wait_for: wait_for wraps each read in a new task.
        async with asyncio.timeout(self.server.network_timeout):
            return await self.reader.readexactly(size)

    async def read_p_data(self, assembler: Assembler, length: int) -> None:
        """One P-DATA-TF body, PDV by PDV, each fragment in pieces of at most _PIECE."""
        remaining = length
        while remaining:
            if remaining < pdu.PDV_HEADER:
                raise pdu.InvalidParameter("P-DATA-TF item header cut short")
            size, context_id, control = pdu.pdv_header(await self.read_exactly(pdu.PDV_HEADER))
            remaining -= pdu.PDV_HEADER
            if size > remaining:
                raise pdu.InvalidParameter("P-DATA-TF item length does not fit its PDU")
            remaining -= size
            while True:
                piece = await self.read_exactly(min(size, _PIECE)) if size else b""
                size -= len(piece)
                message = assembler.fragment(context_id, control, piece, last=size == 0)
                if message is not None:
                    self.quick_ack()
                    await self.answer(message)
                if size == 0:
                    break
        self.quick_ack()

    async def answer(self, message: Message) -> None:
        """Answer one complete message; the association goes on whatever it asked."""
        command = message.command
        field = message.command_field
        if field == pdu.C_CANCEL_RQ:
            # PS3.7 9.3.2.3: no response of its own; a C-FIND it names ends with Cancel.
            if self.find is not None and pdu.us(command, 0x0120) == self.find.message_id:
                self.find.cancel()
            return
        # One operation at a time (no asynchronous window): a request that arrives while a
        # C-FIND is still answering is answered after it.
        await self.finish_find()
        if field & pdu.RESPONSE_BIT:
            _log.info(
                "DIMSE response received and ignored (this SCP sends no requests)",
                extra={"fields": {**self.peer_fields(), "command_field": f"0x{field:04X}"}},
            )
            return
        message_id = pdu.us(command, 0x0110)
        abstract, _ = self.contexts[message.context_id]
        # N-GET, N-SET, N-ACTION and N-DELETE name their class and instance "Requested".
        sop_class = pdu.ui(command, 0x0002) or pdu.ui(command, 0x0003) or abstract
        if field == C_FIND_RQ and abstract in FIND_SOP_CLASSES and self.server.finder:
            self.start_find(message, message_id, sop_class)
            return
        if field == pdu.C_ECHO_RQ:
            reply = pdu.response(pdu.C_ECHO_RSP, message_id, sop_class, None, SUCCESS)
        elif field == pdu.C_STORE_RQ:
            answer = await self.store(message)
            sop_instance = pdu.ui(command, 0x1000)
            reply = pdu.response(
                pdu.C_STORE_RSP,
                message_id,
                sop_class,
                sop_instance,
                answer.status,
                answer.comment,
            )
        else:
            name = pdu.UNSUPPORTED_REQUESTS.get(field, f"command 0x{field:04X}")
            _log.info(
                "DIMSE request not offered; answered 0x0211",
                extra={"fields": {**self.peer_fields(), "command": name}},
            )
            instance = pdu.ui(command, 0x1000) or pdu.ui(command, 0x1001) or None
            reply = pdu.response(
                field | pdu.RESPONSE_BIT,
                message_id,
                sop_class,
                instance,
                pdu.UNRECOGNIZED_OPERATION,
                f"{name} is not offered by this Storage SCP",
            )
        self.send(pdu.p_data(message.context_id, reply, self.peer_max_pdu))
        await self.drain()

    def start_find(self, message: Message, message_id: int, sop_class: str) -> None:
        """Answer a C-FIND in its own task (receiver.find): reading goes on meanwhile, for
        its C-CANCEL-RQ; finish_find() waits for it before anything else is answered."""
        finder = self.server.finder
        assert finder is not None
        _, syntax = self.contexts[message.context_id]
        find = Find(
            finder,
            message_id,
            message.context_id,
            sop_class,
            syntax,
            self.send_and_drain,
            self.peer_max_pdu,
        )
        sink = message.dataset
        identifier: bytes | None = None
        refusal = message.refusal
        if isinstance(sink, Identifier):
            if sink.overflowed:
                refusal = refusal or (IDENTIFIER_DOES_NOT_MATCH, "identifier larger than 1 MiB")
            identifier = bytes(sink.data)
        fields: dict[str, object] = {
            **self.peer_fields(),
            "message_id": message_id,
            "sop_class": sop_class,
        }

        async def run() -> None:
            try:
                outcome = await find.run(identifier, refusal)
            except (PeerNotReading, ConnectionError):
                # As for any response: nothing more can reach the peer; the read loop ends.
                self.writer.transport.abort()
                return
            except Exception:
                # A bug, not a status: the requestor would wait for a final response forever.
                _log.exception("unexpected error in a C-FIND; association aborted")
                self.send(pdu.abort(source=pdu.ABORT_SOURCE_USER))
                self.writer.close()
                return
            fields.update(status=f"0x{outcome.status:04X}", matches=outcome.matches)
            if outcome.status != IDENTIFIER_DOES_NOT_MATCH:  # that one may quote a key's value
                fields["comment"] = outcome.comment
            _log.info("C-FIND answered", extra={"fields": fields})

        self.find = find
        self.find_task = asyncio.create_task(run())

    async def finish_find(self) -> None:
        """Wait for the C-FIND in progress, if any, to send its final response."""
        task, self.find_task = self.find_task, None
        if task is not None:
            try:
                await task
            finally:
                self.find = None

    async def send_and_drain(self, data: bytes) -> None:
        self.send(data)
        await self.drain()

    async def store(self, message: Message) -> Answer:
        """Hand a C-STORE's dataset file to intake; the file goes once it has answered."""
        if message.refusal is not None:
            return Answer(*message.refusal)
        instance = message.dataset
        if not isinstance(instance, IncomingFile):
            return Answer(CANNOT_UNDERSTAND, "C-STORE-RQ without a dataset")
        command = StoreCommand(pdu.ui(message.command, 0x0002), pdu.ui(message.command, 0x1000))
        with instance:
            # Parsing runs here, on the loop (CPU under the GIL either way; a thread hop
            # per instance cost more than it saved); only the group commit is awaited.
            step = self.server.intake.begin(instance, self.calling, self.key, command)
            if isinstance(step, Answer):
                return step
            with contextlib.suppress(Exception):  # complete() turns failures into statuses
                await asyncio.wrap_future(step.committed)
            return step.complete()

    async def drain(self) -> None:
        """Wait until the peer takes our output, at most the network timeout: a peer that
        stops reading cannot make us buffer without end, nor keep its socket."""
        try:
            async with asyncio.timeout(self.server.network_timeout):
                await self.writer.drain()
        except TimeoutError:
            raise PeerNotReading("the peer stopped reading our responses") from None

    def close(self) -> None:
        """Close gracefully; output the peer never takes is dropped after _CLOSE_GRACE."""
        transport = self.writer.transport
        self.writer.close()
        if transport.get_write_buffer_size():
            asyncio.get_running_loop().call_later(_CLOSE_GRACE, transport.abort)


def _request_refusal(request: pdu.AssociateRequest) -> tuple[tuple[int, int, int], str] | None:
    """A-ASSOCIATE-RJ for a request we cannot take whoever sends it (PS3.8 9.3.2, 7.1.1.2)."""
    if not request.protocol_version & 0x0001:
        return pdu.RJ_PROTOCOL_VERSION_NOT_SUPPORTED, "protocol version 1 not offered"
    if request.application_context != pdu.APPLICATION_CONTEXT:
        return pdu.RJ_APPLICATION_CONTEXT_NOT_SUPPORTED, "application context not supported"
    return None
