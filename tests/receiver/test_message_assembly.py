"""DIMSE message assembly: statuses for messages that are wrong, A-ABORT for broken fragments.

Raw sockets put on the wire what no DICOM library sends (rx_dimse): a command naming
another instance, C-FIND on a storage context, a new command in the middle of a dataset,
fragments on the wrong context. Each case asserts the exact status or A-ABORT reason and
that a normal series sent afterwards is stored complete, with exact counts.
"""

# ruff: noqa: F811  (fixtures are imported from rx_harness: pytest finds them by name)

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import rx_dicom
import rx_send
from rx_dimse import (
    C_CANCEL,
    C_ECHO,
    C_FIND,
    C_GET,
    C_MOVE,
    C_STORE,
    CT,
    MR,
    N_ACTION,
    VERIFICATION,
    RawAssociation,
    p_data,
    pdv,
    request,
)
from rx_harness import MakeReceiver, make_receiver, store  # noqa: F401 (fixtures)
from rx_store import StoreProcess, series_counts, wait_for

from seriesflow.receiver.app import Receiver


def _normal_series_arrives(receiver: Receiver, database_url: str, expected: dict[str, int]) -> None:
    """A normal series from pynetdicom after the hostile traffic: stored, exact counts."""
    spec = rx_dicom.SeriesSpec()
    answers = rx_send.send_all(receiver.dicom_port, rx_dicom.series(spec, 4))
    assert [a.status for a in answers] == [0, 0, 0, 0]
    wanted = {**expected, spec.series_uid: 4}
    wait_for(lambda: series_counts(database_url) == wanted)


def _incoming_files(receiver: Receiver) -> list[Path]:
    return sorted((receiver.config.spool_dir / "incoming").iterdir())


def test_a_dataset_that_is_not_the_instance_its_command_names_gets_0xA900(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str
) -> None:
    receiver = make_receiver(store_address=store.address)
    spec = rx_dicom.SeriesSpec()
    good = rx_dicom.series(spec, 3)

    def instance(number: int) -> rx_dicom.Dataset:
        return rx_dicom.instance(spec, 100 + number)

    no_class = instance(4)
    del no_class.SOPClassUID
    mr = instance(5)
    mr.SOPClassUID = MR
    # (what, dataset bytes, command's AffectedSOPInstanceUID, command's class, ErrorComment)
    cases = [
        ("other instance", instance(1), rx_dicom.uid(), CT, "differs from the command's"),
        ("no instance in command", instance(2), None, CT, "no AffectedSOPInstanceUID"),
        ("no class in command", instance(3), "", None, "no AffectedSOPClassUID"),
        ("no class in dataset", no_class, "", CT, "SOPClassUID is missing"),
        ("class differs", mr, "", CT, "SOPClassUID differs"),
    ]
    association = RawAssociation(receiver.dicom_port)
    try:
        for message_id, (what, ds, command_uid, sop_class, words) in enumerate(cases, start=1):
            uid = str(ds.SOPInstanceUID) if command_uid == "" else command_uid
            answer = association.store(
                rx_dicom.encode(ds), uid, sop_class=sop_class, message_id=message_id
            )
            assert answer.Status == 0xA900, what
            assert words in answer.ErrorComment, (what, answer.ErrorComment)
            assert answer.MessageIDBeingRespondedTo == message_id
        for number, ds in enumerate(good, start=10):  # the same association goes on
            answer = association.store(
                rx_dicom.encode(ds), str(ds.SOPInstanceUID), message_id=number
            )
            assert answer.Status == 0x0000
        association.release()
    finally:
        association.close()
    wait_for(lambda: series_counts(database_url) == {spec.series_uid: 3})
    _normal_series_arrives(receiver, database_url, {spec.series_uid: 3})
    assert _incoming_files(receiver) == []


def test_a_c_store_on_a_context_of_another_sop_class_gets_0x0122(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str
) -> None:
    receiver = make_receiver(store_address=store.address)
    ds = rx_dicom.instance(rx_dicom.SeriesSpec(), 1)  # CT, sent on the MR context (5)
    association = RawAssociation(receiver.dicom_port)
    try:
        answer = association.store(rx_dicom.encode(ds), str(ds.SOPInstanceUID), context_id=5)
        assert answer.Status == 0x0122
        assert "not negotiated on presentation context 5" in answer.ErrorComment
        association.release()
    finally:
        association.close()
    _normal_series_arrives(receiver, database_url, {})


def test_requests_this_scp_does_not_perform_get_0x0211_and_the_association_goes_on(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str
) -> None:
    receiver = make_receiver(store_address=store.address)
    spec = rx_dicom.SeriesSpec()
    identifier = rx_dicom.encode(rx_dicom.instance(spec, 1))[:200]  # any bytes: never read
    association = RawAssociation(receiver.dicom_port)
    try:
        for message_id, field in enumerate((C_FIND, C_GET, C_MOVE, N_ACTION), start=1):
            with_dataset = field != N_ACTION
            association.command(1, request(field, message_id, dataset=with_dataset))
            if with_dataset:
                association.dataset(1, identifier)
            answer = association.response()
            assert answer.CommandField == field | 0x8000
            assert answer.Status == 0x0211
            assert answer.MessageIDBeingRespondedTo == message_id
            assert "is not offered" in answer.ErrorComment
        # C-CANCEL has no response: the next answer is the C-ECHO's.
        association.command(1, request(C_CANCEL, 1))
        association.command(3, request(C_ECHO, 77, sop_class=VERIFICATION))
        echo = association.response()
        assert (echo.CommandField, echo.Status, echo.MessageIDBeingRespondedTo) == (0x8030, 0, 77)
        ds = rx_dicom.instance(spec, 2)
        stored = association.store(rx_dicom.encode(ds), str(ds.SOPInstanceUID), message_id=78)
        assert stored.Status == 0x0000
        association.release()
    finally:
        association.close()
    wait_for(lambda: series_counts(database_url) == {spec.series_uid: 1})
    _normal_series_arrives(receiver, database_url, {spec.series_uid: 1})


def _store_command(context_id: int = 1) -> bytes:
    return p_data(pdv(context_id, 0x03, request(C_STORE, 1, sop_instance="1.2.3", dataset=True)))


def _half_a_dataset(context_id: int = 1) -> bytes:
    raw = rx_dicom.encode(rx_dicom.instance(rx_dicom.SeriesSpec(), 1))
    return p_data(pdv(context_id, 0x00, raw[: len(raw) // 2]))  # not the last fragment


# (what goes on the wire after association, A-ABORT reason: PS3.8 9.3.8, source 2)
VIOLATIONS: dict[str, tuple[Callable[[], bytes], int]] = {
    "new command while a dataset is pending": (
        lambda: _store_command() + _half_a_dataset() + _store_command(),
        5,
    ),
    "dataset fragment without a command": (lambda: _half_a_dataset(), 5),
    "dataset fragment on another context than its command": (
        lambda: _store_command(1) + _half_a_dataset(3),
        5,
    ),
    "command fragment on another context than its first fragment": (
        lambda: p_data(pdv(1, 0x01, b"\x00\x00")) + p_data(pdv(3, 0x03, b"\x00\x00")),
        5,
    ),
    "fragment on a context never accepted": (
        lambda: p_data(pdv(9, 0x03, request(C_ECHO, 1, sop_class=VERIFICATION))),
        6,
    ),
    "PDV longer than its PDU": (
        lambda: struct.pack(">BBI", 4, 0, 10) + struct.pack(">IBB", 50, 1, 3) + b"\x00" * 4,
        6,
    ),
    "command set that does not parse": (lambda: p_data(pdv(1, 0x03, b"\x00\x00\x00")), 6),
    "A-ASSOCIATE-RQ inside the association": (
        lambda: struct.pack(">BBI", 1, 0, 4) + bytes(4),
        2,
    ),
    "release in the middle of a dataset": (
        lambda: _store_command() + _half_a_dataset() + struct.pack(">BBI", 5, 0, 4) + bytes(4),
        2,
    ),
    "PDU type PS3.8 does not define": (lambda: struct.pack(">BBI", 9, 0, 4) + bytes(4), 1),
}


def test_broken_message_assembly_is_aborted_with_its_ps38_reason(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str
) -> None:
    # One receiver for all cases (a store per case would cost seconds each): after every
    # violation, a normal series must still arrive complete.
    receiver = make_receiver(store_address=store.address)
    reasons: dict[str, tuple[int, int]] = {}
    expected: dict[str, int] = {}
    for what, (wire, _) in VIOLATIONS.items():
        association = RawAssociation(receiver.dicom_port)
        try:
            association.send(wire())
            reasons[what] = association.abort_reason()
        finally:
            association.close()
        spec = rx_dicom.SeriesSpec()
        answers = rx_send.send_all(receiver.dicom_port, rx_dicom.series(spec, 2))
        assert [a.status for a in answers] == [0, 0], what
        expected[spec.series_uid] = 2
    assert reasons == {what: (2, reason) for what, (_, reason) in VIOLATIONS.items()}
    wait_for(lambda: series_counts(database_url) == expected)
    wait_for(lambda: _incoming_files(receiver) == [])  # pending datasets' files are gone
