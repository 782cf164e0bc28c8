"""docs/conformance.md says what the receiver negotiates and answers: its tables are
compared with the engine's own lists and tables, and with one real association."""

# ruff: noqa: F811  (fixtures are imported from rx_harness: pytest finds them by name)

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import rx_dicom
import rx_send
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from rx_harness import MakeReceiver, make_receiver  # noqa: F401 (fixtures)

from seriesflow.receiver import admission, contexts, find, intake, pdu, server
from seriesflow.receiver.config import ReceiverConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "conformance.md"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
SIEMENS_CSA_NON_IMAGE = "1.3.12.2.1107.5.9.1"


def table(name: str) -> list[list[str]]:
    """The rows (cells, backticks stripped) of the table between a conformance marker pair."""
    text = DOC.read_text()
    match = re.search(f"<!-- conformance:{name} -->\n(.*?)<!-- /conformance:{name} -->", text, re.S)
    assert match, f"docs/conformance.md has no {name} table"
    lines = [line for line in match.group(1).splitlines() if line.startswith("|")]
    return [[cell.strip().strip("`") for cell in line.strip("|").split("|")] for line in lines[2:]]


def _status(text: str) -> int:
    return int(text, 16)


def test_the_sop_class_table_is_what_the_engine_accepts() -> None:
    documented = [row[1] for row in table("sop-classes")]
    assert len(documented) == len(set(documented))
    assert set(documented) == contexts.STORAGE_SOP_CLASSES | {
        contexts.VERIFICATION,
        *contexts.FIND_SOP_CLASSES,
    }


def test_the_transfer_syntax_table_is_what_the_engine_accepts() -> None:
    rows = table("transfer-syntaxes")
    assert [row[1] for row in rows] == list(contexts.TRANSFER_SYNTAXES)
    assert all(row[2] == "yes" for row in rows)
    assert [row[1] for row in rows if row[3] == "yes"] == list(contexts.UNCOMPRESSED)
    assert [row[1] for row in rows if row[4] == "yes"] == list(contexts.FIND_TRANSFER_SYNTAXES)


def test_the_find_status_table_is_the_c_find_scps() -> None:
    documented = {_status(row[0]) for row in table("find-statuses")}
    assert documented == {
        find.SUCCESS,
        find.PENDING,
        find.PENDING_WARNING,
        find.CANCEL,
        pdu.SOP_CLASS_NOT_SUPPORTED,
        *find.GRPC_STATUS.values(),
    }


def test_the_status_tables_are_intakes() -> None:
    refusals = {row[0]: _status(row[1]) for row in table("refusals")}
    assert refusals == intake.REFUSAL_STATUS
    statuses = {_status(row[0]) for row in table("statuses")}
    assert statuses == {intake.SUCCESS, *intake.REFUSAL_STATUS.values()}


def test_the_policy_table_states_the_settings_defaults() -> None:
    fields = {f"SERIESFLOW_{f.name.upper()}": f for f in dataclasses.fields(ReceiverConfig)}
    defaults = ReceiverConfig()
    rows = table("policies")
    assert rows
    for _, variable, default in rows:
        field = fields[variable]
        assert field.metadata["parse"](default) == getattr(defaults, field.name), variable


def test_the_rejection_table_states_the_engines_reasons() -> None:
    rows = table("rejections")
    rejections = {
        tuple(int(cell.split()[0]) for cell in row[2:5])
        for row in rows
        if row[1] == "A-ASSOCIATE-RJ"
    }
    assert rejections == {
        admission.CALLED_AE_NOT_RECOGNISED,
        admission.CALLING_AE_NOT_RECOGNISED,
        admission.USER_IDENTITY_NOT_ACCEPTED,
        pdu.RJ_APPLICATION_CONTEXT_NOT_SUPPORTED,
        pdu.RJ_PROTOCOL_VERSION_NOT_SUPPORTED,
        pdu.RJ_LOCAL_LIMIT_EXCEEDED,
        pdu.RJ_REQUEST_TOO_LARGE,
    }
    aborts = {int(row[4].split()[0]) for row in rows if row[1] == "A-ABORT"}
    assert aborts == {
        pdu.InvalidParameter.abort_reason,
        pdu.UnexpectedPdu.abort_reason,
        pdu.UnexpectedParameter.abort_reason,
        pdu.UnrecognizedPdu.abort_reason,
        pdu.ABORT_REASON_NOT_SPECIFIED,  # with source 0 (idle timeout): not significant
    }


def test_a_real_association_negotiates_what_the_document_states(
    make_receiver: MakeReceiver,
) -> None:
    implementation = {row[0]: row[1] for row in table("implementation")}
    assert implementation["Maximum PDU length received"] == str(server.MAX_PDU_LENGTH)
    receiver = make_receiver()
    ae = AE(ae_title="CONFORMANCE")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(rx_dicom.CT_IMAGE_STORAGE, "1.2.840.10008.1.2.4.203")  # HTJ2K
    ae.add_requested_context(rx_dicom.CT_IMAGE_STORAGE, "1.2.840.10008.1.2.1")
    ae.add_requested_context(SIEMENS_CSA_NON_IMAGE, "1.2.840.10008.1.2.1")
    ae.add_requested_context(STUDY_ROOT_FIND, "1.2.840.10008.1.2.1")
    ae.add_requested_context(STUDY_ROOT_MOVE, "1.2.840.10008.1.2.1")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", receiver.dicom_port, ae_title="STORESCP")
    assert assoc.is_established
    try:
        acceptor = assoc.acceptor
        assert acceptor.maximum_length == int(implementation["Maximum PDU length received"])
        assert acceptor.implementation_class_uid == implementation["Implementation Class UID"]
        assert acceptor.implementation_version_name == implementation["Implementation Version Name"]
        accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
        assert accepted == {
            (rx_dicom.CT_IMAGE_STORAGE, "1.2.840.10008.1.2.4.203"),
            (rx_dicom.CT_IMAGE_STORAGE, "1.2.840.10008.1.2.1"),
            (SIEMENS_CSA_NON_IMAGE, "1.2.840.10008.1.2.1"),
            (STUDY_ROOT_FIND, "1.2.840.10008.1.2.1"),
            (Verification, "1.2.840.10008.1.2"),
        }
        assert [(cx.abstract_syntax, cx.result) for cx in assoc.rejected_contexts] == [
            (STUDY_ROOT_MOVE, contexts.ABSTRACT_SYNTAX_NOT_SUPPORTED)
        ]
        assert assoc.send_c_echo().Status == 0x0000
        spec = rx_dicom.SeriesSpec()
        assert rx_send.store(assoc, rx_dicom.instance(spec, 1)).status == intake.SUCCESS
    finally:
        assoc.release()
    assert receiver.spool.stats()[0] == 1
