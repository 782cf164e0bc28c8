"""Association negotiation as modalities use it: presentation-context IDs, what is accepted
(unknown storage classes, video and new codecs), transfer-syntax choice, User Identity,
role selection and the asynchronous operations window. Each ends with a normal series."""

# ruff: noqa: F811  (fixtures are imported from rx_harness: pytest finds them by name)

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest
import rx_dicom
import rx_send
from conftest import require_tool
from pydicom.encaps import encapsulate
from pynetdicom import AE
from pynetdicom.pdu_primitives import (
    AsynchronousOperationsWindowNegotiation,
    SCP_SCU_RoleSelectionNegotiation,
    UserIdentityNegotiation,
)
from rx_assoc import CT, EXPLICIT, ac_contexts, associate_rq, read_pdu
from rx_harness import MakeReceiver, make_receiver, store  # noqa: F401 (fixtures)
from rx_store import StoreProcess, instance_syntaxes, series_counts, wait_for
from rx_tools import storescu

from seriesflow import settings
from seriesflow.receiver.app import Receiver
from seriesflow.receiver.config import ReceiverConfig

IMPLICIT = "1.2.840.10008.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
SIEMENS_CSA_NON_IMAGE = "1.3.12.2.1107.5.9.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"  # no C-MOVE: nothing is kept to retrieve
ENCAPSULATED_SENT_AS_IS = {
    "1.2.840.10008.1.2.4.100": "MPEG-2 MP@ML",
    "1.2.840.10008.1.2.4.102": "MPEG-4 AVC/H.264 HP@4.1",
    "1.2.840.10008.1.2.4.107": "HEVC/H.265 Main",
    "1.2.840.10008.1.2.4.201": "HTJ2K lossless",
    "1.2.840.10008.1.2.4.203": "HTJ2K",
    "1.2.840.10008.1.2.4.110": "JPEG XL lossless",
    "1.2.840.10008.1.2.4.112": "JPEG XL",
}


def _rejected(receiver: Receiver, reason: str) -> float:
    value = receiver.metrics.registry.get_sample_value(
        "seriesflow_receiver_presentation_contexts_rejected_total", {"reason": reason}
    )
    return value or 0.0


def _normal_series_arrives(port: int, database_url: str, n: int = 3) -> None:
    spec = rx_dicom.SeriesSpec()
    answers = rx_send.send_all(port, rx_dicom.series(spec, n))
    assert [a.status for a in answers] == [0] * n
    wait_for(lambda: series_counts(database_url).get(spec.series_uid) == n)


def _raw_associate(port: int, rq: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(5)
        sock.sendall(rq)
        return read_pdu(sock)


# -- presentation-context IDs (PS3.8 9.3.2.2) ------------------------------------------


@pytest.mark.parametrize(
    "ids",
    [[2], [1, 4], [1, 3, 1], [0]],
    ids=["even", "even-after-odd", "duplicate", "zero"],
)
def test_even_or_duplicate_context_ids_abort_with_invalid_parameter_value(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str, ids: list[int]
) -> None:
    receiver = make_receiver(store_address=store.address)
    rq = associate_rq([(i, CT, [EXPLICIT]) for i in ids])
    # A-ABORT, source 2 (service provider), reason 6 (invalid-PDU-parameter value)
    assert _raw_associate(receiver.dicom_port, rq) == (0x07, bytes([0, 0, 2, 6]))
    _normal_series_arrives(receiver.dicom_port, database_url)


def test_odd_unique_ids_up_to_255_are_each_answered(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str
) -> None:
    receiver = make_receiver(store_address=store.address)
    ids = list(range(1, 256, 2))  # 128 contexts, the most PS3.8 allows
    kind, body = _raw_associate(
        receiver.dicom_port, associate_rq([(i, CT, [EXPLICIT]) for i in ids])
    )
    assert kind == 0x02
    assert ac_contexts(body) == {i: (0, EXPLICIT) for i in ids}
    _normal_series_arrives(receiver.dicom_port, database_url)


def test_a_wrong_application_context_is_rejected_with_its_reason(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str
) -> None:
    receiver = make_receiver(store_address=store.address)
    rq = associate_rq([(1, CT, [EXPLICIT])], application_context=b"1.2.3.4")
    # rejected-permanent, service-user, application-context-name-not-supported
    assert _raw_associate(receiver.dicom_port, rq) == (0x03, bytes([0, 1, 1, 2]))
    _normal_series_arrives(receiver.dicom_port, database_url)


# -- what is accepted ------------------------------------------------------------------


def test_a_private_storage_class_is_accepted_and_stored_while_query_retrieve_is_refused(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str
) -> None:
    receiver = make_receiver(store_address=store.address)
    spec = rx_dicom.SeriesSpec()
    ds = rx_dicom.instance(spec, 1)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SIEMENS_CSA_NON_IMAGE
    del ds.PixelData
    assoc = rx_send.associate(
        receiver.dicom_port,
        contexts=[(SIEMENS_CSA_NON_IMAGE, [EXPLICIT]), (STUDY_ROOT_MOVE, [EXPLICIT])],
    )
    try:
        assert [cx.abstract_syntax for cx in assoc.accepted_contexts] == [SIEMENS_CSA_NON_IMAGE]
        assert [(cx.abstract_syntax, cx.result) for cx in assoc.rejected_contexts] == [
            (STUDY_ROOT_MOVE, 3)
        ]
        assert rx_send.store(assoc, ds).status == 0
    finally:
        assoc.release()
    wait_for(lambda: series_counts(database_url).get(spec.series_uid) == 1)
    assert _rejected(receiver, "abstract_syntax_not_supported") == 1
    _normal_series_arrives(receiver.dicom_port, database_url)


def test_with_unknown_classes_off_a_private_class_is_refused_logged_once_and_counted(
    make_receiver: MakeReceiver,
    store: StoreProcess,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver = make_receiver(store_address=store.address, accept_unknown_sop_classes=False)
    caplog.set_level(logging.INFO, logger="seriesflow.receiver.server")
    assoc = rx_send.associate(
        receiver.dicom_port,
        contexts=[(SIEMENS_CSA_NON_IMAGE, [EXPLICIT, IMPLICIT]), (CT, ["1.2.3.999"])],
    )
    assert not assoc.is_established  # nothing acceptable: pynetdicom aborts
    [record] = [r for r in caplog.records if r.getMessage() == "presentation contexts rejected"]
    assert record.levelno == logging.WARNING
    fields = record.fields  # type: ignore[attr-defined]
    assert fields["calling_ae_title"] == "TESTSCU" and fields["accepted"] == 0
    assert fields["rejected"] == [
        {
            "context_id": 1,
            "abstract_syntax": SIEMENS_CSA_NON_IMAGE,
            "transfer_syntaxes": [EXPLICIT],
            "reason": "abstract_syntax_not_supported",
        },
        {
            "context_id": 3,
            "abstract_syntax": SIEMENS_CSA_NON_IMAGE,
            "transfer_syntaxes": [IMPLICIT],
            "reason": "abstract_syntax_not_supported",
        },
        {
            "context_id": 5,
            "abstract_syntax": CT,
            "transfer_syntaxes": ["1.2.3.999"],
            "reason": "transfer_syntaxes_not_supported",
        },
    ]
    assert _rejected(receiver, "abstract_syntax_not_supported") == 2
    assert _rejected(receiver, "transfer_syntaxes_not_supported") == 1
    _normal_series_arrives(receiver.dicom_port, database_url)


def test_video_htj2k_and_jpeg_xl_are_accepted_and_stored_as_sent(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str
) -> None:
    receiver = make_receiver(store_address=store.address)
    spec = rx_dicom.SeriesSpec()
    syntaxes = list(ENCAPSULATED_SENT_AS_IS)
    datasets = []
    for number, _ in enumerate(syntaxes, 1):
        ds = rx_dicom.instance(spec, number)
        ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])  # never decoded
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        datasets.append(ds)
    assoc = rx_send.associate(receiver.dicom_port, contexts=[(CT, syntaxes)])
    try:
        assert sorted(cx.transfer_syntax[0] for cx in assoc.accepted_contexts) == sorted(syntaxes)
        statuses = [
            rx_send.store(assoc, ds, s).status for ds, s in zip(datasets, syntaxes, strict=True)
        ]
    finally:
        assoc.release()
    assert statuses == [0] * len(syntaxes)
    wait_for(lambda: series_counts(database_url).get(spec.series_uid) == len(syntaxes))
    stored = instance_syntaxes(database_url, spec.series_uid)
    assert {stored[str(ds.SOPInstanceUID)] for ds in datasets} == set(syntaxes)
    _normal_series_arrives(receiver.dicom_port, database_url)


@pytest.mark.parametrize(
    ("preference", "chosen"), [("sender", IMPLICIT), ("explicit-first", EXPLICIT)]
)
def test_the_transfer_syntax_preference_decides_among_a_contexts_proposals(
    make_receiver: MakeReceiver,
    store: StoreProcess,
    database_url: str,
    preference: str,
    chosen: str,
) -> None:
    receiver = make_receiver(store_address=store.address, transfer_syntax_preference=preference)
    rq = associate_rq([(1, CT, [IMPLICIT, EXPLICIT]), (3, MR, ["1.2.840.10008.1.2.4.50"])])
    kind, body = _raw_associate(receiver.dicom_port, rq)
    assert kind == 0x02
    assert ac_contexts(body) == {1: (0, chosen), 3: (0, "1.2.840.10008.1.2.4.50")}
    _normal_series_arrives(receiver.dicom_port, database_url)


def test_an_unknown_transfer_syntax_is_refused_unless_enabled(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str
) -> None:
    strict = make_receiver(store_address=store.address)
    lenient = make_receiver(store_address=store.address, accept_unknown_transfer_syntaxes=True)
    rq = associate_rq([(1, CT, ["1.2.3.4.5.6", EXPLICIT]), (3, CT, ["1.2.3.4.5.6"])])
    _, body = _raw_associate(strict.dicom_port, rq)
    assert ac_contexts(body) == {1: (0, EXPLICIT), 3: (4, "1.2.3.4.5.6")}
    _, body = _raw_associate(lenient.dicom_port, rq)
    assert ac_contexts(body) == {1: (0, "1.2.3.4.5.6"), 3: (0, "1.2.3.4.5.6")}
    _normal_series_arrives(lenient.dicom_port, database_url)


# -- extended negotiation (PS3.7 D.3.3) ------------------------------------------------


def _identity(kind: int, user: bytes, password: bytes = b"") -> UserIdentityNegotiation:
    item = UserIdentityNegotiation()
    item.user_identity_type = kind
    item.primary_field = user
    if kind == 2:
        item.secondary_field = password
    item.positive_response_requested = True
    return item


def _associate(port: int, calling: str = "TESTSCU", ext_neg: list[object] | None = None) -> object:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = (
        30  # generous: a loaded CI machine, not the receiver, is slow
    )
    ae.add_requested_context(CT, EXPLICIT)
    ae.add_requested_context(MR, EXPLICIT)
    return ae.associate("127.0.0.1", port, ae_title="STORESCP", ext_neg=ext_neg or [])


def _store_one(assoc: object, database_url: str) -> None:
    spec = rx_dicom.SeriesSpec()
    try:
        assert rx_send.store(assoc, rx_dicom.instance(spec, 1)).status == 0  # type: ignore[arg-type]
    finally:
        assoc.release()  # type: ignore[attr-defined]
    wait_for(lambda: series_counts(database_url).get(spec.series_uid) == 1)


def test_a_requested_user_identity_response_is_sent_without_checking(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str
) -> None:
    receiver = make_receiver(store_address=store.address)
    assoc = _associate(receiver.dicom_port, ext_neg=[_identity(2, b"alice", b"anything")])
    assert assoc.is_established  # type: ignore[attr-defined]
    response = assoc.acceptor.user_identity  # type: ignore[attr-defined]
    assert response is not None and response.server_response == b""
    _store_one(assoc, database_url)
    # Not asked for, no response item.
    quiet = _identity(1, b"bob")
    quiet.positive_response_requested = False
    assoc = _associate(receiver.dicom_port, ext_neg=[quiet])
    assert assoc.is_established and assoc.acceptor.user_identity is None  # type: ignore[attr-defined]
    _store_one(assoc, database_url)
    _normal_series_arrives(receiver.dicom_port, database_url)


@pytest.fixture
def identity_file(tmp_path: Path) -> Path:
    path = tmp_path / "users"
    path.write_text("# who may send\nalice:s3cret\nviewer\nCT_1 *:ct-shared\n")
    return path


@pytest.mark.parametrize(
    ("calling", "identity", "accepted"),
    [
        ("ANY", _identity(2, b"alice", b"s3cret"), True),
        ("ANY", _identity(2, b"alice", b"wrong"), False),
        ("ANY", _identity(1, b"alice"), False),  # alice has a password: a username is not enough
        ("ANY", _identity(1, b"viewer"), True),
        ("CT_1", _identity(2, b"whoever", b"ct-shared"), True),
        ("CT_2", _identity(2, b"whoever", b"ct-shared"), False),  # the secret is CT_1's
        ("ANY", _identity(5, b"jwt.token.here"), False),
        ("ANY", None, False),
    ],
    ids=[
        "password",
        "wrong-password",
        "username-only",
        "username",
        "ae-secret",
        "other-ae",
        "jwt",
        "none",
    ],
)
def test_user_identity_is_checked_against_the_file(
    make_receiver: MakeReceiver,
    store: StoreProcess,
    database_url: str,
    identity_file: Path,
    calling: str,
    identity: UserIdentityNegotiation | None,
    accepted: bool,
) -> None:
    receiver = make_receiver(store_address=store.address, user_identity_file=identity_file)
    assoc = _associate(receiver.dicom_port, calling, [identity] if identity else [])
    if accepted:
        assert assoc.is_established  # type: ignore[attr-defined]
        _store_one(assoc, database_url)
    else:
        assert assoc.is_rejected  # type: ignore[attr-defined]
        rj = assoc.acceptor.primitive  # type: ignore[attr-defined]
        assert (rj.result, rj.result_source, rj.diagnostic) == (1, 1, 1)
    good = _associate(receiver.dicom_port, ext_neg=[_identity(2, b"alice", b"s3cret")])
    _store_one(good, database_url)


def test_storescu_with_user_and_password_associates_and_a_wrong_one_is_rejected(
    make_receiver: MakeReceiver,
    store: StoreProcess,
    database_url: str,
    identity_file: Path,
    tmp_path: Path,
) -> None:
    tool = require_tool("storescu")
    receiver = make_receiver(store_address=store.address, user_identity_file=identity_file)
    spec = rx_dicom.SeriesSpec()
    files = rx_dicom.write_files(rx_dicom.series(spec, 3), tmp_path / "f")
    wrong = storescu(tool, receiver.dicom_port, files, extra=["--user", "alice", "--password", "x"])
    assert wrong.returncode != 0
    assert "Association Rejected" in wrong.stderr or "rejected" in wrong.stderr.lower()
    good = storescu(
        tool, receiver.dicom_port, files, extra=["--user", "alice", "--password", "s3cret", "-rsp"]
    )
    assert good.returncode == 0, good.stderr
    wait_for(lambda: series_counts(database_url).get(spec.series_uid) == 3)


def test_role_selection_accepts_the_scu_role_and_refuses_the_scp_role(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str
) -> None:
    receiver = make_receiver(store_address=store.address)
    both = SCP_SCU_RoleSelectionNegotiation()
    both.sop_class_uid, both.scu_role, both.scp_role = CT, True, True
    scp_only = SCP_SCU_RoleSelectionNegotiation()
    scp_only.sop_class_uid, scp_only.scu_role, scp_only.scp_role = MR, False, True
    assoc = _associate(receiver.dicom_port, ext_neg=[both, scp_only])
    assert assoc.is_established  # type: ignore[attr-defined]
    answered = assoc.acceptor.role_selection  # type: ignore[attr-defined]
    assert (answered[CT].scu_role, answered[CT].scp_role) == (True, False)
    assert (answered[MR].scu_role, answered[MR].scp_role) == (False, False)
    [ct] = assoc.accepted_contexts  # type: ignore[attr-defined]
    assert (ct.abstract_syntax, ct.as_scu, ct.as_scp) == (CT, True, False)
    [mr] = assoc.rejected_contexts  # type: ignore[attr-defined]
    assert mr.abstract_syntax == MR
    _store_one(assoc, database_url)
    assert _rejected(receiver, "role_not_supported") == 1
    _normal_series_arrives(receiver.dicom_port, database_url)


def test_the_asynchronous_operations_window_is_answered_one_by_one(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str
) -> None:
    receiver = make_receiver(store_address=store.address)
    window = AsynchronousOperationsWindowNegotiation()
    window.maximum_number_operations_invoked = 5
    window.maximum_number_operations_performed = 5
    assoc = _associate(receiver.dicom_port, ext_neg=[window])
    assert assoc.is_established  # type: ignore[attr-defined]
    assert assoc.acceptor.asynchronous_operations == (1, 1)  # type: ignore[attr-defined]
    _store_one(assoc, database_url)
    _normal_series_arrives(receiver.dicom_port, database_url)


@pytest.mark.parametrize(
    ("pdu_type", "reason"),
    [(0x04, 2), (0x02, 2), (0x09, 1), (0xFF, 1)],
    ids=["p-data", "associate-ac", "unknown-9", "unknown-255"],
)
def test_a_first_pdu_other_than_associate_rq_is_aborted_with_its_reason(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str, pdu_type: int, reason: int
) -> None:
    receiver = make_receiver(store_address=store.address)
    first = bytes([pdu_type, 0, 0, 0, 0, 4, 0, 0, 0, 0])
    # A-ABORT, service provider, unexpected-PDU (2) or unrecognized-PDU (1)
    assert _raw_associate(receiver.dicom_port, first) == (0x07, bytes([0, 0, 2, reason]))
    _normal_series_arrives(receiver.dicom_port, database_url)


# -- settings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("SERIESFLOW_TRANSFER_SYNTAX_PREFERENCE", "fastest", "expected one of sender"),
        ("SERIESFLOW_MAX_PENDING_CONNECTIONS", "0", "greater than 0"),
        ("SERIESFLOW_MAX_ASSOCIATE_REQUEST_BYTES", "lots", ""),
        ("SERIESFLOW_ASSOCIATION_REQUEST_TIMEOUT", "-1", ""),
        ("SERIESFLOW_ACCEPT_UNKNOWN_SOP_CLASSES", "perhaps", ""),
    ],
)
def test_bad_negotiation_settings_stop_the_receiver_naming_the_variable(
    variable: str, value: str, says: str
) -> None:
    with pytest.raises(settings.ConfigError) as caught:
        settings.load(ReceiverConfig, {variable: value})
    assert f"{variable}='{value}' is invalid" in str(caught.value)
    assert says in str(caught.value)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("alice:s3cret\nCT_1 bob:pw extra\n", "line 2: expected [CALLING_AE] username[:password]"),
        ("alice:\n", "line 1: empty username or password"),
        ("*\n", "line 1: '*' (any username) needs a password"),
        ("# only a comment\n", "holds no credential"),
    ],
)
def test_a_malformed_user_identity_file_stops_the_receiver_naming_the_line(
    tmp_path: Path, content: str, says: str
) -> None:
    path = tmp_path / "users"
    path.write_text(content)
    with pytest.raises(settings.ConfigError) as caught:
        settings.load(ReceiverConfig, {"SERIESFLOW_USER_IDENTITY_FILE": str(path)})
    assert "SERIESFLOW_USER_IDENTITY_FILE=" in str(caught.value)
    assert says in str(caught.value)
    assert "s3cret" not in str(caught.value)  # the file's secrets stay out of the message
