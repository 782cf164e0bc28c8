"""The receiver's DICOM engine: an asyncio Storage SCP (C-STORE and C-ECHO), one event loop.

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
import itertools
import logging
import socket
import ssl
import struct
import threading

from seriesflow.receiver import pdu
from seriesflow.receiver.admission import Admission
from seriesflow.receiver.contexts import ACCEPTANCE, negotiate
from seriesflow.receiver.intake import SUCCESS, Answer, Intake

_log = logging.getLogger(__name__)

# What we accept per PDU: 256 KiB keeps a CT slice to two PDUs and memory per association
# bounded; a sender must respect it (PS3.8 D.1).
MAX_PDU_LENGTH = 256 * 1024
_ABSURD_PDU = 64 * 1024 * 1024
_STREAM_LIMIT = 4 * 1024 * 1024
_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


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
    ) -> None:
        self.intake = intake
        self.host, self.requested_port = host, port
        self.port = 0
        self.max_associations = max_associations
        self.admission = admission
        self.acse_timeout, self.network_timeout = acse_timeout, network_timeout
        self.ssl_context = ssl_context
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

    # -- one association --------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        association = _Association(self, reader, writer, next(self._ids))
        try:
            await association.run()
        except (asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError):
            pass
        except pdu.ProtocolError as exc:
            _log.warning(
                "DICOM protocol error; association aborted", extra={"fields": {"error": str(exc)}}
            )
            association.send(pdu.abort())
        except TimeoutError:
            _log.info(
                "association idle too long; aborted", extra={"fields": association.peer_fields()}
            )
            association.send(pdu.abort())
        except Exception:
            _log.exception("unexpected error in an association; aborted")
            association.send(pdu.abort())
        finally:
            self._tasks.discard(task)
            self.intake.association_ended(association.key, association.released)
            writer.close()


class _Association:
    def __init__(
        self,
        server: DicomServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        key: int,
    ) -> None:
        self.server, self.reader, self.writer, self.key = server, reader, writer, key
        self.released = False
        self.calling = ""
        self.contexts: dict[int, tuple[str, str]] = {}  # id -> (abstract, transfer syntax)
        self.peer_max_pdu = 0
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

    async def read_pdu(self, timeout: float) -> tuple[int, bytes]:
        # asyncio.timeout, not wait_for: wait_for wraps each read in a new task.
        async with asyncio.timeout(timeout):
            head = await self.reader.readexactly(6)
            self.quick_ack()
            kind, length = head[0], struct.unpack(">I", head[2:6])[0]
            if length > _ABSURD_PDU:
                raise pdu.ProtocolError(f"PDU of {length} bytes refused")
            body = await self.reader.readexactly(length)
            self.quick_ack()
        return kind, body

    async def run(self) -> None:
        kind, body = await self.read_pdu(self.server.acse_timeout)
        if kind != pdu.ASSOCIATE_RQ:
            raise pdu.ProtocolError(f"expected A-ASSOCIATE-RQ, got PDU type {kind}")
        if not await self.associate(pdu.parse_associate_rq(body)):
            return
        await self.serve_messages()

    async def associate(self, request: pdu.AssociateRequest) -> bool:
        self.calling = request.calling_ae_title
        called = request.called_ae_title
        refusal = self.server.admission.refusal(self.calling, called)
        if refusal is None and len(self.server._tasks) > self.server.max_associations:
            refusal = (2, 3, 2), "too many associations"
        if refusal is not None:
            (result, source, reason), why = refusal
            self.send(pdu.associate_rj(result, source, reason))
            await self.writer.drain()
            peer = self.peer_fields()["peer"]
            self.server.intake.association_rejected(self.calling, called, peer, why)
            return False
        results = []
        for context in request.contexts:
            result, syntax = negotiate(context.abstract_syntax, context.transfer_syntaxes)
            results.append((context.context_id, result, syntax))
            if result == ACCEPTANCE:
                self.contexts[context.context_id] = (context.abstract_syntax, syntax)
        self.peer_max_pdu = request.max_pdu_length
        self.send(pdu.associate_ac(request, results, MAX_PDU_LENGTH))
        await self.writer.drain()
        self.server.intake.association_opened(self.key)
        return True

    async def serve_messages(self) -> None:
        command: list[memoryview] = []
        dataset: list[memoryview] = []
        parsed: dict[int, bytes] | None = None
        context_id = 0
        while True:
            kind, body = await self.read_pdu(self.server.network_timeout)
            if kind == pdu.RELEASE_RQ:
                self.send(pdu.release_rp())
                await self.writer.drain()
                self.released = True
                return
            if kind == pdu.ABORT:
                return
            if kind != pdu.P_DATA_TF:
                raise pdu.ProtocolError(f"unexpected PDU type {kind} in an association")
            for pdv_context, control, fragment in pdu.pdvs(body):
                if pdv_context not in self.contexts:
                    raise pdu.ProtocolError(f"presentation context {pdv_context} not accepted")
                if control & 0x01:  # command fragment
                    command.append(fragment)
                    if control & 0x02:
                        parsed, context_id = pdu.parse_command(b"".join(command)), pdv_context
                        command.clear()
                        if pdu.us(parsed, 0x0800) == pdu.NO_DATASET:
                            await self.answer(parsed, context_id, b"")
                            parsed = None
                else:
                    if parsed is None:
                        raise pdu.ProtocolError("dataset fragment without a command")
                    dataset.append(fragment)
                    if control & 0x02:
                        # One copy for the whole dataset, however many fragments it came in.
                        await self.answer(parsed, context_id, b"".join(dataset))
                        dataset.clear()
                        parsed = None

    async def answer(self, command: dict[int, bytes], context_id: int, dataset: bytes) -> None:
        field = pdu.us(command, 0x0100)
        message_id = pdu.us(command, 0x0110)
        sop_class = pdu.ui(command, 0x0002)
        abstract, syntax = self.contexts[context_id]
        if field == pdu.C_ECHO_RQ:
            reply = pdu.response(pdu.C_ECHO_RSP, message_id, sop_class or abstract, None, SUCCESS)
        elif field == pdu.C_STORE_RQ:
            sop_instance = pdu.ui(command, 0x1000)
            # Parsing runs here, on the loop (CPU under the GIL either way; a thread hop
            # per instance cost more than it saved); only the group commit is awaited.
            step = self.server.intake.begin(
                dataset, syntax, self.calling, self.key, sop_class or abstract
            )
            if isinstance(step, Answer):
                answer = step
            else:
                with contextlib.suppress(Exception):  # complete() turns failures into statuses
                    await asyncio.wrap_future(step.committed)
                answer = step.complete()
            reply = pdu.response(
                pdu.C_STORE_RSP,
                message_id,
                sop_class or abstract,
                sop_instance,
                answer.status,
                answer.comment,
            )
        else:
            raise pdu.ProtocolError(f"DIMSE command 0x{field:04X} is not offered here")
        self.send(pdu.p_data(context_id, reply, self.peer_max_pdu))
        await self.writer.drain()
