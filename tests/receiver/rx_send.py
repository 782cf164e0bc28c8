"""Sending DICOM to a receiver under test with pynetdicom, including bytes no encoder makes."""

from __future__ import annotations

import dataclasses
import io
import itertools
import time
from collections.abc import Iterable

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from rx_dicom import encode

ALL_SYNTAXES = [
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
]


_MESSAGE_IDS = itertools.count(1)


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int
    comment: str


def associate(
    port: int,
    calling: str = "TESTSCU",
    called: str = "STORESCP",
    contexts: Iterable[tuple[str, list[str]]] | None = None,
) -> Association:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = (
        30  # generous: a loaded CI machine, not the receiver, is slow
    )
    if contexts is None:
        for sop_class in (
            "1.2.840.10008.5.1.4.1.1.2",
            "1.2.840.10008.5.1.4.1.1.7",
            "1.2.840.10008.5.1.4.1.1.4",
            "1.2.840.10008.5.1.4.1.1.1",
            "1.2.840.10008.5.1.4.1.1.20",
        ):
            for syntax in ALL_SYNTAXES:  # one context per syntax: each is then usable
                ae.add_requested_context(sop_class, syntax)
        ae.add_requested_context(Verification)
    else:
        for sop_class, syntaxes in contexts:
            for syntax in syntaxes:
                ae.add_requested_context(sop_class, syntax)
    return ae.associate("127.0.0.1", port, ae_title=called)


def send_raw(
    assoc: Association, raw: bytes, sop_class: str, sop_instance: str, syntax: str
) -> Answer:
    """C-STORE exactly `raw` as the dataset: hostile bytes reach the wire unchanged."""
    context = next(
        cx
        for cx in assoc.accepted_contexts
        if cx.abstract_syntax == sop_class and cx.transfer_syntax[0] == syntax
    )
    request = C_STORE()
    request.MessageID = next(_MESSAGE_IDS)
    request.AffectedSOPClassUID = sop_class
    request.AffectedSOPInstanceUID = sop_instance
    request.Priority = 0x0002
    request.DataSet = io.BytesIO(raw)
    # The same dance as Association.send_c_store: pause the reactor, send, read the answer.
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(request, context.context_id)
        _, response = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    if response is None:
        raise RuntimeError("no C-STORE response (association dropped?)")
    comment = getattr(response, "ErrorComment", None) or ""
    return Answer(int(response.Status), str(comment))


def store(assoc: Association, ds: Dataset, syntax: str | None = None) -> Answer:
    syntax = syntax or str(ds.file_meta.TransferSyntaxUID)
    return send_raw(assoc, encode(ds, syntax), str(ds.SOPClassUID), str(ds.SOPInstanceUID), syntax)


def send_all(port: int, datasets: Iterable[Dataset], calling: str = "TESTSCU") -> list[Answer]:
    """One association for all of them; released at the end."""
    assoc = associate(port, calling)
    assert assoc.is_established, "association was not accepted"
    try:
        return [store(assoc, ds) for ds in datasets]
    finally:
        assoc.release()
