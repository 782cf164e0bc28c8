"""C-FIND SCP against a real store and PostgreSQL: dcmtk findscu and pynetdicom as clients.

The catalog is filled the way modalities fill it (C-STORE to the receiver), then queried at
PATIENT, STUDY, SERIES and IMAGE level; names in Latin-1, UTF-8 and ISO 2022 IR 87 come back
decoded correctly; C-CANCEL ends a query with Cancel; a store that is down or refuses the
read token gives a failure status with a comment; gRPC Query and C-FIND return one set.
"""

# ruff: noqa: F811  (fixtures are imported from rx_harness: pytest finds them by name)

from __future__ import annotations

import dataclasses
import io
import json
import struct
import subprocess
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import rx_dicom
import rx_send
from conftest import new_database, require_tool
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pynetdicom import AE
from rx_assoc import read_pdu
from rx_dimse import C_FIND, RawAssociation, request
from rx_harness import MakeReceiver, make_receiver, receiver_config  # noqa: F401 (fixtures)
from rx_store import StoreProcess, series_counts, wait_for
from rx_tools import Orthanc

from seriesflow.receiver import find
from seriesflow.receiver.app import Receiver, quiet_libraries
from seriesflow.v1 import series_store_pb2 as pb
from seriesflow.v1 import series_store_pb2_grpc as pb_grpc

PATIENT_ROOT = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_ROOT = "1.2.840.10008.5.1.4.1.2.2.1"
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
EXPLICIT, IMPLICIT, BIG = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"


@dataclasses.dataclass
class Catalog:
    port: int
    store: StoreProcess
    doe: rx_dicom.SeriesSpec  # study 2024-01-31: CT (3) and MR (2) series
    doe_mr: rx_dicom.SeriesSpec
    muller: rx_dicom.SeriesSpec  # Latin-1 name, study 2023-06-15
    ivanov: rx_dicom.SeriesSpec  # UTF-8 name
    japanese: Dataset  # pydicom's chrH31.dcm, ISO 2022 IR 87
    doe_sops: list[str]


def _dated(spec: rx_dicom.SeriesSpec, count: int, date: str, charset: str) -> list[Dataset]:
    out = rx_dicom.series(spec, count)
    for ds in out:
        ds.StudyDate = date
        ds.SpecificCharacterSet = charset
    return out


@pytest.fixture(scope="module")
def catalog_store(
    postgres_server_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StoreProcess]:
    """One store and database for the module's read-only queries (a store takes seconds)."""
    with new_database(postgres_server_url) as url:
        process = StoreProcess(url, tmp_path_factory.mktemp("find-store"))
        process.start()
        try:
            yield process
        finally:
            process.stop()


@pytest.fixture(scope="module")
def catalog(
    catalog_store: StoreProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Catalog]:
    """The catalog every query test reads, filled by C-STORE through a receiver (which then
    answers the C-FINDs). Tests that add data add their own series and match on it."""
    quiet_libraries()
    store = catalog_store
    receiver = Receiver(
        receiver_config(tmp_path_factory.mktemp("find-rx"), store_address=store.address)
    )
    receiver.start()
    try:
        yield _fill(receiver, store)
    finally:
        receiver.stop()


def _fill(receiver: Receiver, store: StoreProcess) -> Catalog:
    doe = rx_dicom.SeriesSpec(patient_id="PAT-DOE", patient_name="Doe^Jane")
    doe_mr = dataclasses.replace(doe, series_uid=rx_dicom.uid(), modality="MR")
    muller = rx_dicom.SeriesSpec(patient_id="PAT-MUL", patient_name="Müller^Zoë")
    ivanov = rx_dicom.SeriesSpec(patient_id="PAT-IVA", patient_name="Иванов^Пётр")
    ct = _dated(doe, 3, "20240131", "ISO_IR 100")
    mr = _dated(doe_mr, 2, "20240131", "ISO_IR 100")
    for ds in mr:
        ds.SeriesNumber = 2
    datasets = [
        *ct,
        *mr,
        *_dated(muller, 1, "20230615", "ISO_IR 100"),
        *_dated(ivanov, 1, "20220301", "ISO_IR 192"),
    ]
    japanese = rx_dicom.sample("chrH31.dcm")
    datasets.append(japanese)
    answers = rx_send.send_all(receiver.dicom_port, datasets)
    assert {a.status for a in answers} == {0}
    expected = {
        doe.series_uid: 3,
        doe_mr.series_uid: 2,
        muller.series_uid: 1,
        ivanov.series_uid: 1,
        str(japanese.SeriesInstanceUID): 1,
    }
    wait_for(lambda: series_counts(store.database_url) == expected)
    return Catalog(
        receiver.dicom_port,
        store,
        doe,
        doe_mr,
        muller,
        ivanov,
        japanese,
        [str(ds.SOPInstanceUID) for ds in ct],
    )


# -- clients ---------------------------------------------------------------------------


def findscu(port: int, folder: Path, keys: list[str], *options: str) -> list[Dataset]:
    """dcmtk findscu; every response identifier it received, read back from its -X files."""
    folder.mkdir(parents=True, exist_ok=True)
    command = [require_tool("findscu"), "-aet", "FINDSCU", "-aec", "STORESCP", "-X"]
    command += ["-od", str(folder), *options, "127.0.0.1", str(port)]
    for key in keys:
        command += ["-k", key]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr + done.stdout
    return [dcmread(path, force=True) for path in sorted(folder.glob("rsp*.dcm"))]


def c_find(
    port: int,
    identifier: Dataset,
    model: str = STUDY_ROOT,
    syntax: str = EXPLICIT,
) -> list[tuple[int, Dataset | None, str]]:
    """pynetdicom: (status, identifier, ErrorComment) of every response, final one last."""
    ae = AE(ae_title="PYNETFIND")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context(model, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title="STORESCP")
    assert assoc.is_established
    try:
        out = []
        for status, ds in assoc.send_c_find(identifier, model):
            assert status is not None, "no response"
            out.append((int(status.Status), ds, str(status.get("ErrorComment", ""))))
        return out
    finally:
        assoc.release()


def query(**keys: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def identifiers(responses: list[tuple[int, Dataset | None, str]]) -> list[Dataset]:
    assert responses[-1][0] == find.SUCCESS, responses[-1]
    pendings = responses[:-1]
    assert all(status in (find.PENDING, find.PENDING_WARNING) for status, _, _ in pendings)
    return [ds for _, ds, _ in pendings if ds is not None]


# -- findscu ------------------------------------------------------------------------------


def test_findscu_study_level_with_a_wildcard_and_a_date_range_returns_only_requested_keys(
    catalog: Catalog, tmp_path: Path
) -> None:
    found = findscu(
        catalog.port,
        tmp_path / "study",
        [
            "QueryRetrieveLevel=STUDY",
            "PatientName=D*",
            "StudyDate=20240101-20241231",
            "StudyInstanceUID",
            "ModalitiesInStudy",
            "NumberOfStudyRelatedInstances",
        ],
        "-S",
    )
    assert len(found) == 1
    study = found[0]
    assert study.StudyInstanceUID == catalog.doe.study_uid
    assert str(study.PatientName) == "Doe^Jane"
    assert list(study.ModalitiesInStudy) == ["CT", "MR"]
    assert int(study.NumberOfStudyRelatedInstances) == 5
    assert study.QueryRetrieveLevel == "STUDY"
    keywords = {e.keyword for e in study}
    assert keywords == {
        "QueryRetrieveLevel",
        "PatientName",
        "StudyDate",
        "StudyInstanceUID",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedInstances",
    }  # only what was asked (PS3.4 C.4.1.1.3.2), no SpecificCharacterSet for ASCII


def test_findscu_open_date_range_finds_every_dated_study_until(
    catalog: Catalog, tmp_path: Path
) -> None:
    found = findscu(
        catalog.port,
        tmp_path / "until",
        ["QueryRetrieveLevel=STUDY", "StudyDate=-20231231", "StudyInstanceUID"],
        "-S",
    )
    # Not the Japanese sample's study: it has no StudyDate, and a range matches dates only.
    assert {ds.StudyInstanceUID for ds in found} == {
        catalog.muller.study_uid,
        catalog.ivanov.study_uid,
    }


def test_findscu_series_level_in_one_study(catalog: Catalog, tmp_path: Path) -> None:
    found = findscu(
        catalog.port,
        tmp_path / "series",
        [
            "QueryRetrieveLevel=SERIES",
            f"StudyInstanceUID={catalog.doe.study_uid}",
            "Modality=M?",
            "SeriesInstanceUID",
            "SeriesNumber",
            "NumberOfSeriesRelatedInstances",
        ],
        "-S",
    )
    assert [(ds.SeriesInstanceUID, ds.Modality) for ds in found] == [
        (catalog.doe_mr.series_uid, "MR")
    ]
    assert int(found[0].NumberOfSeriesRelatedInstances) == 2
    assert int(found[0].SeriesNumber) == 2


def test_findscu_image_level_lists_a_series_instances_in_order(
    catalog: Catalog, tmp_path: Path
) -> None:
    found = findscu(
        catalog.port,
        tmp_path / "image",
        [
            "QueryRetrieveLevel=IMAGE",
            f"StudyInstanceUID={catalog.doe.study_uid}",
            f"SeriesInstanceUID={catalog.doe.series_uid}",
            "SOPInstanceUID",
            "InstanceNumber",
        ],
        "-S",
    )
    assert [ds.SOPInstanceUID for ds in found] == catalog.doe_sops
    assert [int(ds.InstanceNumber) for ds in found] == [1, 2, 3]


def test_findscu_patient_root_accented_name_comes_back_decoded(
    catalog: Catalog, tmp_path: Path
) -> None:
    found = findscu(
        catalog.port,
        tmp_path / "patient",
        ["QueryRetrieveLevel=PATIENT", "PatientName=*ller*", "PatientID"],
        "-P",
    )
    assert [(str(ds.PatientName), ds.PatientID) for ds in found] == [("Müller^Zoë", "PAT-MUL")]
    assert found[0].SpecificCharacterSet == "ISO_IR 192"


def test_findscu_japanese_name_found_by_its_romaji_and_returned_whole_in_utf8(
    catalog: Catalog, tmp_path: Path
) -> None:
    found = findscu(
        catalog.port,
        tmp_path / "japanese",
        ["QueryRetrieveLevel=STUDY", "PatientName=Yamada*", "StudyInstanceUID"],
        "-S",
    )
    assert len(found) == 1
    assert str(found[0].PatientName) == str(catalog.japanese.PatientName)
    assert found[0].StudyInstanceUID == catalog.japanese.StudyInstanceUID
    assert found[0].SpecificCharacterSet == "ISO_IR 192"
    # The same patient asked by its ideographic name, the query itself in UTF-8.
    found = findscu(
        catalog.port,
        tmp_path / "japanese-utf8",
        [
            "QueryRetrieveLevel=STUDY",
            "SpecificCharacterSet=ISO_IR 192",
            "PatientName=山田*",
            "StudyInstanceUID",
        ],
        "-S",
    )
    assert [str(ds.PatientName) for ds in found] == [str(catalog.japanese.PatientName)]


def test_findscu_cancel_after_one_response_ends_the_query(catalog: Catalog, tmp_path: Path) -> None:
    found = findscu(
        catalog.port,
        tmp_path / "cancel",
        ["QueryRetrieveLevel=IMAGE", "SOPInstanceUID"],
        "-S",
        "--cancel",
        "1",
    )
    assert len(found) >= 1  # the response it cancelled after (others may have crossed it)


# -- pynetdicom: character sets, syntaxes, statuses -------------------------------------


def test_a_japanese_query_in_iso_2022_ir_87_matches_the_ideographic_name(
    catalog: Catalog,
) -> None:
    identifier = query(
        SpecificCharacterSet=["", "ISO 2022 IR 87"],
        QueryRetrieveLevel="PATIENT",
        PatientName="山田^太郎",
        PatientID="",
    )
    found = identifiers(c_find(catalog.port, identifier, PATIENT_ROOT))
    assert [str(ds.PatientName) for ds in found] == [str(catalog.japanese.PatientName)]
    assert found[0].PatientID == catalog.japanese.PatientID


def test_a_latin1_client_gets_its_own_character_set_back_when_it_suffices(
    catalog: Catalog,
) -> None:
    identifier = query(
        SpecificCharacterSet="ISO_IR 100", QueryRetrieveLevel="PATIENT", PatientName="MÜLLER*"
    )
    found = identifiers(c_find(catalog.port, identifier, PATIENT_ROOT))
    assert [(str(ds.PatientName), ds.SpecificCharacterSet) for ds in found] == [
        ("Müller^Zoë", "ISO_IR 100")
    ]
    cyrillic = query(
        SpecificCharacterSet="ISO_IR 100",
        QueryRetrieveLevel="PATIENT",
        PatientID="PAT-IVA",
        PatientName="",
    )
    # Not in Latin-1: the request's set cannot carry it, so the answer is UTF-8.
    found = identifiers(c_find(catalog.port, cyrillic, PATIENT_ROOT))
    assert [(str(ds.PatientName), ds.SpecificCharacterSet) for ds in found] == [
        ("Иванов^Пётр", "ISO_IR 192")
    ]


@pytest.mark.parametrize("syntax", [IMPLICIT, EXPLICIT, BIG])
def test_each_uncompressed_syntax_carries_the_identifier_both_ways(
    catalog: Catalog, syntax: str
) -> None:
    identifier = query(
        QueryRetrieveLevel="SERIES",
        StudyInstanceUID=catalog.doe.study_uid,
        SeriesInstanceUID="",
        SeriesNumber="",
        RetrieveAETitle="",
    )
    found = identifiers(c_find(catalog.port, identifier, syntax=syntax))
    assert sorted((ds.SeriesInstanceUID, int(ds.SeriesNumber)) for ds in found) == sorted(
        [(catalog.doe.series_uid, 1), (catalog.doe_mr.series_uid, 2)]
    )
    assert {ds.RetrieveAETitle for ds in found} == {"STORESCP"}  # our AE title


def test_keys_the_catalog_cannot_match_give_pending_warning_and_come_back_empty(
    catalog: Catalog,
) -> None:
    identifier = query(
        QueryRetrieveLevel="IMAGE",
        SeriesInstanceUID=catalog.doe.series_uid,
        SOPInstanceUID="",
        PatientAge="042Y",  # not catalogued: not matched
    )
    responses = c_find(catalog.port, identifier)
    assert [status for status, _, _ in responses] == [find.PENDING_WARNING] * 3 + [find.SUCCESS]
    first = responses[0][1]
    assert first is not None
    assert "PatientAge" in first and first.PatientAge in ("", None)


def test_study_root_at_patient_level_and_a_bad_level_are_refused_0xa900(catalog: Catalog) -> None:
    for level in ("PATIENT", "SERIESX", ""):
        responses = c_find(catalog.port, query(QueryRetrieveLevel=level, PatientID=""))
        assert len(responses) == 1
        status, _, comment = responses[0]
        assert status == find.IDENTIFIER_DOES_NOT_MATCH
        assert "QueryRetrieveLevel" in comment


def test_a_value_its_vr_cannot_hold_is_refused_with_the_stores_reason(catalog: Catalog) -> None:
    responses = c_find(
        catalog.port, query(QueryRetrieveLevel="STUDY", StudyDate="2024-13-45", StudyInstanceUID="")
    )
    assert len(responses) == 1
    status, _, comment = responses[0]
    assert status == find.IDENTIFIER_DOES_NOT_MATCH
    assert "00080020" in comment or "StudyDate" in comment


def test_move_and_get_are_not_negotiated(catalog: Catalog) -> None:
    ae = AE(ae_title="PYNETMOVE")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    for model in (PATIENT_ROOT_MOVE, STUDY_ROOT_GET, STUDY_ROOT):
        ae.add_requested_context(model, EXPLICIT)
    assoc = ae.associate("127.0.0.1", catalog.port, ae_title="STORESCP")
    assert assoc.is_established
    try:
        assert [cx.abstract_syntax for cx in assoc.accepted_contexts] == [STUDY_ROOT]
        assert sorted((cx.abstract_syntax, cx.result) for cx in assoc.rejected_contexts) == [
            (PATIENT_ROOT_MOVE, 3),
            (STUDY_ROOT_GET, 3),
        ]
    finally:
        assoc.release()


# -- C-CANCEL -----------------------------------------------------------------------------


def _many_instances(store: StoreProcess, count: int) -> str:
    """One series of `count` instances put straight into the store (StoreSeries)."""
    root = f"1.2.826.0.1.3680043.10.1337.{uuid.uuid4().int % 10**12}"
    update = pb.SeriesUpdate(
        update_id=uuid.uuid4().hex,
        patient=pb.PatientAttributes(patient_id="PAT-MANY", patient_name="Many^Images"),
        study=pb.StudyAttributes(study_instance_uid=f"{root}.1", study_date="20240201"),
        series=pb.SeriesAttributes(series_instance_uid=f"{root}.2", modality="CT"),
        instances=[
            pb.Instance(
                sop_instance_uid=f"{root}.3.{n}",
                sop_class_uid=rx_dicom.CT_IMAGE_STORAGE,
                instance_number=n,
                transfer_syntax_uid=EXPLICIT,
                size_bytes=1000,
            )
            for n in range(1, count + 1)
        ],
        source=pb.Source(calling_ae_title="MODALITY", called_ae_title="SF", receiver_id="r0"),
        completion_reason=pb.COMPLETION_REASON_IDLE,
    )
    with grpc.insecure_channel(store.address) as channel:
        acks = list(pb_grpc.SeriesStoreStub(channel).StoreSeries(iter([update]), timeout=60))
    assert [a.ok for a in acks] == [True], acks
    return f"{root}.2"


def test_c_cancel_ends_a_long_query_with_status_cancel(catalog: Catalog) -> None:
    series_uid = _many_instances(catalog.store, 5000)
    ae = AE(ae_title="PYNETFIND")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context(STUDY_ROOT, EXPLICIT)
    assoc = ae.associate("127.0.0.1", catalog.port, ae_title="STORESCP")
    assert assoc.is_established
    try:
        identifier = query(
            QueryRetrieveLevel="IMAGE", SeriesInstanceUID=series_uid, SOPInstanceUID=""
        )
        statuses = []
        for status, _ in assoc.send_c_find(identifier, STUDY_ROOT, msg_id=7):
            statuses.append(int(status.Status))
            if len(statuses) == 1:
                assoc.send_c_cancel(7, assoc.accepted_contexts[0].context_id)
        assert statuses[-1] == find.CANCEL
        assert set(statuses[:-1]) == {find.PENDING}
        assert len(statuses) - 1 < 5000
        # The association goes on: the same query again, to the end.
        again = list(assoc.send_c_find(identifier, STUDY_ROOT, msg_id=8))
        assert int(again[-1][0].Status) == find.SUCCESS
        assert len(again) == 5001
    finally:
        assoc.release()


# -- the store down or refusing -----------------------------------------------------------


def test_with_the_store_down_c_find_fails_0xa700_with_a_comment(
    make_receiver: MakeReceiver,
) -> None:
    receiver = make_receiver()  # its store address is a closed port
    responses = c_find(receiver.dicom_port, query(QueryRetrieveLevel="STUDY", StudyInstanceUID=""))
    assert len(responses) == 1
    status, _, comment = responses[0]
    assert status == find.OUT_OF_RESOURCES
    assert "unavailable" in comment and "retry later" in comment


READ_TOKEN = "r-find-0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e"
WRITE_TOKEN = "w-find-5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b"


@pytest.fixture
def token_store(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[StoreProcess]:
    (tmp_path / "write").write_text(f"{WRITE_TOKEN}\n")
    (tmp_path / "read").write_text(f"{READ_TOKEN}\n")
    monkeypatch.setenv("SERIESFLOW_GRPC_WRITE_TOKENS_FILE", str(tmp_path / "write"))
    monkeypatch.setenv("SERIESFLOW_GRPC_READ_TOKENS_FILE", str(tmp_path / "read"))
    process = StoreProcess(database_url, tmp_path / "store")
    process.start()
    yield process
    process.stop()


def test_queries_use_the_read_token_and_without_it_the_store_refuses_0xc001(
    make_receiver: MakeReceiver, token_store: StoreProcess, tmp_path: Path, database_url: str
) -> None:
    (tmp_path / "w").write_text(f"{WRITE_TOKEN}\n")
    (tmp_path / "r").write_text(f"{READ_TOKEN}\n")
    writer_only = make_receiver(store_address=token_store.address, store_token_file=tmp_path / "w")
    spec = rx_dicom.SeriesSpec()
    assert {
        a.status for a in rx_send.send_all(writer_only.dicom_port, rx_dicom.series(spec, 2))
    } == {0}
    wait_for(lambda: series_counts(database_url) == {spec.series_uid: 2})
    identifier = query(QueryRetrieveLevel="SERIES", SeriesInstanceUID="")
    refused = c_find(writer_only.dicom_port, identifier)
    assert [(status, comment) for status, _, comment in refused] == [
        (find.STORE_REFUSED, "store refused the query: needs a read token")
    ]
    reader = make_receiver(
        store_address=token_store.address,
        store_token_file=tmp_path / "w",
        store_read_token_file=tmp_path / "r",
    )
    found = identifiers(c_find(reader.dicom_port, identifier))
    assert [ds.SeriesInstanceUID for ds in found] == [spec.series_uid]


def test_every_grpc_code_has_a_c_find_status() -> None:
    assert set(find.GRPC_STATUS) == set(grpc.StatusCode)
    failures = {find.OUT_OF_RESOURCES, find.IDENTIFIER_DOES_NOT_MATCH}
    assert set(find.GRPC_STATUS.values()) <= failures | {
        find.UNABLE_TO_PROCESS,
        find.STORE_REFUSED,
    }


# -- one engine: gRPC Query, QIDO-RS and C-FIND agree ----------------------------------------

_QIDO_PATH = {"STUDY": "/studies", "SERIES": "/series", "IMAGE": "/instances"}


def _via_qido(store: StoreProcess, name: str, keys: dict[str, str], tag: str) -> set[str]:
    query_string = urllib.parse.urlencode(keys)
    url = f"http://127.0.0.1:{store.http_port}{_QIDO_PATH[name]}?{query_string}"
    with urllib.request.urlopen(url, timeout=20) as answer:
        body = answer.read()
    return {dataset[tag]["Value"][0] for dataset in json.loads(body)} if body else set()


def test_grpc_query_qido_rs_and_c_find_return_the_same_set(catalog: Catalog) -> None:
    cases = [
        (pb.QUERY_LEVEL_STUDY, "STUDY", {"StudyDate": "20220101-20231231"}, "StudyInstanceUID"),
        (pb.QUERY_LEVEL_SERIES, "SERIES", {"Modality": "CT"}, "SeriesInstanceUID"),
        (pb.QUERY_LEVEL_IMAGE, "IMAGE", {"PatientName": "doe*"}, "SOPInstanceUID"),
        (pb.QUERY_LEVEL_PATIENT, "PATIENT", {"PatientName": "*^*"}, "PatientID"),
    ]
    with grpc.insecure_channel(catalog.store.address) as channel:
        stub = pb_grpc.SeriesStoreStub(channel)
        for level, name, keys, unique in cases:
            request = pb.QueryRequest(
                level=level,  # type: ignore[arg-type]
                match=[pb.QueryKey(key=k, value=v) for k, v in keys.items()],
            )
            tag = {"StudyInstanceUID": "0020000D", "SeriesInstanceUID": "0020000E",
                   "SOPInstanceUID": "00080018", "PatientID": "00100020"}[unique]  # fmt: skip
            via_grpc = {
                json.loads(m.dataset_json)[tag]["Value"][0]
                for response in stub.Query(request, timeout=20)
                for m in response.matches
            }
            identifier = query(QueryRetrieveLevel=name, **keys, **{unique: ""})
            model = PATIENT_ROOT if name == "PATIENT" else STUDY_ROOT
            via_c_find = {
                getattr(ds, unique) for ds in identifiers(c_find(catalog.port, identifier, model))
            }
            assert via_c_find == via_grpc, name
            assert via_grpc, name  # each case matches something: the comparison says something
            if name in _QIDO_PATH:  # QIDO-RS has no patient level
                assert _via_qido(catalog.store, name, keys, tag) == via_grpc, name


# -- Orthanc as a query client ---------------------------------------------------------------


def _orthanc_query(orthanc: Orthanc, level: str, keys: dict[str, str]) -> list[dict[str, Any]]:
    """Orthanc's C-FIND to seriesflow as a DICOM modality; each answer's tags by keyword."""
    body = json.dumps({"Level": level, "Query": keys}).encode()
    started = orthanc.post("/modalities/seriesflow/query", body)
    path = started["Path"]
    answers = orthanc.get(f"{path}/answers")
    return [orthanc.get(f"{path}/answers/{index}/content?simplify") for index in answers]


def test_orthanc_queries_seriesflow_as_a_modality(catalog: Catalog, tmp_path: Path) -> None:
    orthanc = Orthanc(require_tool("Orthanc"), tmp_path / "orthanc", catalog.port)
    orthanc.start()
    try:
        studies = _orthanc_query(
            orthanc,
            "Study",
            {"PatientName": "*", "StudyDate": "20230101-20240131", "StudyInstanceUID": ""},
        )
        assert {s["StudyInstanceUID"] for s in studies} == {
            catalog.doe.study_uid,
            catalog.muller.study_uid,
        }
        names = {s["StudyInstanceUID"]: s["PatientName"] for s in studies}
        assert names[catalog.muller.study_uid] == "Müller^Zoë"
        series = _orthanc_query(
            orthanc,
            "Series",
            {"StudyInstanceUID": catalog.doe.study_uid, "SeriesInstanceUID": "", "Modality": ""},
        )
        assert sorted((s["SeriesInstanceUID"], s["Modality"]) for s in series) == sorted(
            [(catalog.doe.series_uid, "CT"), (catalog.doe_mr.series_uid, "MR")]
        )
        images = _orthanc_query(
            orthanc,
            "Instance",
            {
                "StudyInstanceUID": catalog.doe.study_uid,
                "SeriesInstanceUID": catalog.doe.series_uid,
                "SOPInstanceUID": "",
            },
        )
        assert [i["SOPInstanceUID"] for i in images] == catalog.doe_sops
    finally:
        orthanc.stop()


# -- the DIMSE edges, on a raw association ---------------------------------------------------


def _raw_responses(association: RawAssociation, count: int) -> list[tuple[Dataset, bytes]]:
    """The next `count` responses: (command set, identifier bytes or b"")."""
    out: list[tuple[Dataset, bytes]] = []
    command = dataset = b""
    while len(out) < count:
        kind, body = read_pdu(association.sock)
        assert kind == 0x04, f"expected P-DATA-TF, got PDU type {kind}"
        pos = 0
        while pos < len(body):
            length = struct.unpack_from(">I", body, pos)[0]
            control = body[pos + 5]
            fragment = body[pos + 6 : pos + 4 + length]
            pos += 4 + length
            if control & 0x01:
                command += fragment
                if control & 0x02:
                    parsed = read_dataset(io.BytesIO(command), True, True)
                    command = b""
                    if parsed.CommandDataSetType == 0x0101:
                        out.append((parsed, b""))
                    else:
                        pending = parsed
            else:
                dataset += fragment
                if control & 0x02:
                    out.append((pending, dataset))
                    dataset = b""
    return out


def _identifier(**keys: Any) -> bytes:
    return rx_dicom.encode(query(**keys))


def test_wrong_sop_class_missing_or_oversized_identifiers_are_refused_and_the_association_goes_on(
    catalog: Catalog,
) -> None:
    association = RawAssociation(catalog.port, contexts=[(1, STUDY_ROOT, [EXPLICIT])])
    try:
        assert association.accepted == {1: (0, EXPLICIT)}
        keys = _identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID="")
        association.command(1, request(C_FIND, 1, sop_class=PATIENT_ROOT, dataset=True))
        association.dataset(1, keys)
        association.command(1, request(C_FIND, 2, sop_class=STUDY_ROOT))  # no identifier
        association.command(1, request(C_FIND, 3, sop_class=STUDY_ROOT, dataset=True))
        association.dataset(1, b"\x00" * (1024 * 1024 + 2), fragment=60000)
        answers = _raw_responses(association, 3)
        assert [(a.MessageIDBeingRespondedTo, a.Status) for a, _ in answers] == [
            (1, 0x0122),
            (2, find.IDENTIFIER_DOES_NOT_MATCH),
            (3, find.IDENTIFIER_DOES_NOT_MATCH),
        ]
        assert all(a.ErrorComment for a, _ in answers)
        # A query that matches nothing: its final response alone.
        association.command(1, request(C_FIND, 4, sop_class=STUDY_ROOT, dataset=True))
        association.dataset(1, _identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID="1.2.3.4"))
        ((answer, identifier),) = _raw_responses(association, 1)
        assert (answer.MessageIDBeingRespondedTo, answer.Status, identifier) == (4, 0, b"")
        association.release()
    finally:
        association.close()


def test_a_release_right_after_a_c_find_gets_every_response_first(catalog: Catalog) -> None:
    association = RawAssociation(catalog.port, contexts=[(1, STUDY_ROOT, [EXPLICIT])])
    try:
        keys = _identifier(
            QueryRetrieveLevel="IMAGE", SeriesInstanceUID=catalog.doe.series_uid, SOPInstanceUID=""
        )
        association.command(1, request(C_FIND, 9, sop_class=STUDY_ROOT, dataset=True))
        association.dataset(1, keys)
        association.send(struct.pack(">BBI", 0x05, 0, 4) + bytes(4))  # A-RELEASE-RQ at once
        answers = _raw_responses(association, 4)
        assert [a.Status for a, _ in answers] == [find.PENDING] * 3 + [find.SUCCESS]
        uids = [read_dataset(io.BytesIO(d), False, True).SOPInstanceUID for _, d in answers[:3]]
        assert uids == catalog.doe_sops
        kind, _ = read_pdu(association.sock)
        assert kind == 0x06  # A-RELEASE-RP, after the final response
    finally:
        association.close()
