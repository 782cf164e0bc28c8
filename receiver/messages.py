"""DIMSE message assembly for one association: a state machine over P-DATA fragments.

PS3.8 9.3.5 and Annex E: a message is its command set, in one or more command fragments,
then (when the command says so) its dataset, in one or more dataset fragments, all on the
presentation context the message was sent on. The assembler holds three states:

    idle ──command fragment──▶ command ──last fragment──▶ dataset ──last fragment──▶ idle
                                  │ (command has no dataset)                 ▲
                                  └──────────────────────────────────────────┘ (message)

and refuses, as a protocol error the engine answers with A-ABORT (PS3.8 9.3.8, source
service-provider): a fragment on a context that was not accepted (reason 6, invalid PDU
parameter value); a dataset fragment with no command before it, a new command while a
dataset is pending, or a fragment on another context than its message's (reason 5,
unexpected PDU parameter). Fragments of two messages can therefore never be glued
together.

Command fragments are small and kept in memory (up to _MAX_COMMAND); dataset fragments go
straight to their sink, a receiver.incoming file for a C-STORE, so no dataset is ever
held here (a C-FIND identifier, a few hundred bytes, is kept in memory up to a bound).
Pure bookkeeping: receiver.server does the I/O and answers the messages.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Protocol

from seriesflow.receiver import pdu
from seriesflow.receiver.contexts import FIND_SOP_CLASSES
from seriesflow.receiver.incoming import Incoming

C_FIND_RQ = 0x0020
# A command set is a few hundred bytes; this bounds what a hostile peer can make us hold.
_MAX_COMMAND = 64 * 1024


class Sink(Protocol):
    """Where a message's dataset fragments go."""

    received_bytes: int

    def write(self, fragment: bytes | memoryview) -> None: ...

    def finish(self) -> None: ...

    def discard(self) -> None: ...


class Discard:
    """A sink that counts and drops: datasets of messages we answer without reading them."""

    def __init__(self) -> None:
        self.received_bytes = 0

    def write(self, fragment: bytes | memoryview) -> None:
        self.received_bytes += len(fragment)

    def finish(self) -> None:
        pass

    def discard(self) -> None:
        pass


class Identifier:
    """A C-FIND identifier, kept in memory up to `limit` bytes; beyond it the bytes are
    dropped and `overflowed` is set (the request is then refused, the association goes on)."""

    def __init__(self, limit: int) -> None:
        self.received_bytes = 0
        self.limit = limit
        self.data = bytearray()
        self.overflowed = False

    def write(self, fragment: bytes | memoryview) -> None:
        self.received_bytes += len(fragment)
        if self.received_bytes > self.limit:
            self.overflowed = True
            self.data.clear()
        else:
            self.data += fragment

    def finish(self) -> None:
        pass

    def discard(self) -> None:
        self.data.clear()


# C-FIND identifiers held in memory at most (a real one is a few hundred bytes).
MAX_IDENTIFIER_BYTES = 1024 * 1024


class State(enum.Enum):
    IDLE = "idle"
    COMMAND = "command fragments"
    DATASET = "dataset fragments"


@dataclasses.dataclass
class Message:
    """One complete DIMSE message: its command set and, when it had one, its dataset."""

    context_id: int
    command: dict[int, bytes]
    dataset: Sink | None
    refusal: tuple[int, str] | None = None  # (status, ErrorComment) decided from the command

    @property
    def command_field(self) -> int:
        return pdu.us(self.command, 0x0100)


class Assembler:
    """The message state of one association; `contexts` maps accepted context IDs to
    (abstract syntax, transfer syntax)."""

    def __init__(self, contexts: dict[int, tuple[str, str]], incoming: Incoming) -> None:
        self.contexts = contexts
        self.incoming = incoming
        self.state = State.IDLE
        self._context_id = 0
        self._command = bytearray()
        self._message: Message | None = None

    def fragment(self, context_id: int, control: int, data: bytes, last: bool) -> Message | None:
        """Take (part of) one PDV: `data` is its fragment or a piece of it, `last` whether
        the piece ends the PDV. Returns the message it completes, if any."""
        if context_id not in self.contexts:
            raise pdu.InvalidParameter(f"PDV on presentation context {context_id}, not accepted")
        if control & pdu.PDV_COMMAND:
            return self._command_fragment(context_id, control, data, last)
        return self._dataset_fragment(context_id, control, data, last)

    def _command_fragment(
        self, context_id: int, control: int, data: bytes, last: bool
    ) -> Message | None:
        if self.state is State.DATASET:
            raise pdu.UnexpectedParameter("a new command while a dataset is still pending")
        if self.state is State.COMMAND and context_id != self._context_id:
            raise pdu.UnexpectedParameter(
                f"command fragment on context {context_id} inside a command on context "
                f"{self._context_id}"
            )
        self.state, self._context_id = State.COMMAND, context_id
        self._command += data
        if len(self._command) > _MAX_COMMAND:
            raise pdu.InvalidParameter(f"command set longer than {_MAX_COMMAND} bytes")
        if not (last and control & pdu.PDV_LAST):
            return None
        command = pdu.parse_command(bytes(self._command))
        self._command.clear()
        message = Message(context_id, command, None)
        if pdu.us(command, 0x0800) == pdu.NO_DATASET:
            self.state = State.IDLE
            return message
        message.dataset = self._sink(message)
        self.state, self._message = State.DATASET, message
        return None

    def _dataset_fragment(
        self, context_id: int, control: int, data: bytes, last: bool
    ) -> Message | None:
        if self.state is not State.DATASET or self._message is None:
            raise pdu.UnexpectedParameter(f"dataset fragment while in state '{self.state.value}'")
        if context_id != self._context_id:
            raise pdu.UnexpectedParameter(
                f"dataset fragment on context {context_id} for a message on context "
                f"{self._context_id}"
            )
        message = self._message
        assert message.dataset is not None
        message.dataset.write(data)
        if not (last and control & pdu.PDV_LAST):
            return None
        message.dataset.finish()
        self.state, self._message = State.IDLE, None
        return message

    def _sink(self, message: Message) -> Sink:
        """A file for a C-STORE we will read, memory for a C-FIND identifier on a FIND
        context; a counter for anything we answer unread."""
        abstract, syntax = self.contexts[message.context_id]
        field = message.command_field
        if field == C_FIND_RQ and abstract in FIND_SOP_CLASSES:
            return self._identifier(message, abstract)
        if field != pdu.C_STORE_RQ:
            return Discard()
        sop_class = pdu.ui(message.command, 0x0002)
        if sop_class and sop_class != abstract:
            # PS3.7 9.1.1: a C-STORE travels on a context of its own SOP class.
            message.refusal = (
                pdu.SOP_CLASS_NOT_SUPPORTED,
                f"SOP class not negotiated on presentation context {message.context_id}",
            )
            return Discard()
        return self.incoming.create(syntax)

    def _identifier(self, message: Message, abstract: str) -> Sink:
        sop_class = pdu.ui(message.command, 0x0002)
        if sop_class and sop_class != abstract:
            message.refusal = (  # PS3.7 9.1.2: as for C-STORE, the context's own SOP class
                pdu.SOP_CLASS_NOT_SUPPORTED,
                f"SOP class not negotiated on presentation context {message.context_id}",
            )
            return Discard()
        return Identifier(MAX_IDENTIFIER_BYTES)

    def close(self) -> None:
        """The association ended: drop a dataset still being received."""
        if self._message is not None and self._message.dataset is not None:
            self._message.dataset.discard()
        self._message = None
        self.state = State.IDLE
