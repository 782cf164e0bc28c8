"""Query RPCs over real gRPC: filters, ordering, paging, status codes, GetAttributes."""

# ruff: noqa: F811  (fixtures are imported from st_harness: pytest finds them by name)

from __future__ import annotations

import json
import threading

import grpc
import pytest
from st_harness import (  # noqa: F401 (fixtures)
    StoreThread,
    make_update,
    migrated_url,
    rows,
    running_store,
    send,
    shared_store,
    ts,
    uid,
)

from seriesflow.v1 import series_store_pb2 as pb
from seriesflow.v1 import series_store_pb2_grpc as pb_grpc


def _stub(store: StoreThread) -> pb_grpc.SeriesStoreStub:
    return pb_grpc.SeriesStoreStub(store.channel())


def _code(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value.code(), info.value.details()


@pytest.fixture(scope="module")
def catalog(shared_store: StoreThread) -> dict[str, str]:
    """Two patients, three studies, five series with varied attributes."""
    ids = {k: uid() for k in ("st1", "st2", "st3", "ct1", "ct2", "mr1", "mr2", "us1")}
    plan = [
        ("ct1", "st1", "P1", "CT", "20240105", pb.COMPLETION_REASON_IDLE, 1_700_000_000),
        ("ct2", "st1", "P1", "CT", "20240105", pb.COMPLETION_REASON_MAX_AGE, 1_700_000_100),
        ("mr1", "st2", "P1", "MR", "20240210", pb.COMPLETION_REASON_IDLE, 1_700_000_200),
        ("mr2", "st3", "P2", "MR", "20240320", pb.COMPLETION_REASON_IDLE, 1_700_000_300),
        ("us1", "st3", "P2", "US", "20240320", pb.COMPLETION_REASON_RELEASED, 1_700_000_400),
    ]
    ch = shared_store.channel()
    for key, study, patient, modality, date, reason, received in plan:
        s = ids[key]
        update = make_update(
            s,
            [f"{s}.{n}" for n in range(1, 4)],
            study_uid=ids[study],
            patient_id=patient,
            modality=modality,
            reason=reason,
            received=received,
            series_number=len(key),
        )
        update.study.study_date = date
        update.study.accession_number = f"ACC-{study}"
        if key == "ct1":
            update.representative_header_json = json.dumps(
                {
                    "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
                    "00080060": {"vr": "CS", "Value": ["CT"]},
                    "00280030": {"vr": "DS", "Value": [0.5, 0.5]},
                    "00291010": {"vr": "OB", "InlineBinary": "AAEC"},
                    "00081140": {"vr": "SQ", "Value": [{}, {}]},
                    "00100020": {"vr": "LO"},
                }
            )
        send(ch, [update])  # one call each, in order: ids grow in plan order
    return ids


def test_list_series_is_newest_first_with_all_fields(
    shared_store: StoreThread, catalog: dict[str, str]
) -> None:
    reply = _stub(shared_store).ListSeries(pb.ListSeriesRequest())
    assert [s.series_instance_uid for s in reply.series] == [
        catalog[k] for k in ("us1", "mr2", "mr1", "ct2", "ct1")
    ]
    us1 = reply.series[0]
    assert us1.patient_id == "P2" and us1.modality == "US" and us1.num_instances == 3
    assert us1.status == pb.SERIES_STATUS_COMPLETE
    assert us1.study_date == "2024-03-20" and us1.accession_number.startswith("ACC-")
    assert us1.first_received_at.seconds == 1_700_000_401
    assert us1.completion_reason == pb.COMPLETION_REASON_RELEASED
    assert us1.source_ae_title == "MODALITY" and us1.total_size_bytes > 0
    assert reply.next_page_token == ""


@pytest.mark.parametrize(
    ("request_fields", "expected"),
    [
        ({"patient_id": "P1"}, ["mr1", "ct2", "ct1"]),
        ({"modality": "MR"}, ["mr2", "mr1"]),
        ({"status": pb.SERIES_STATUS_RECEIVING}, ["ct2"]),
        ({"study_date_from": "20240201"}, ["us1", "mr2", "mr1"]),
        ({"study_date_from": "2024-02-01", "study_date_to": "2024-02-29"}, ["mr1"]),
        ({"received_after": ts(1_700_000_250)}, ["us1", "mr2"]),
        ({"received_before": ts(1_700_000_150)}, ["ct2", "ct1"]),
        ({"patient_id": "P2", "modality": "US"}, ["us1"]),
        ({"patient_id": "nobody"}, []),
    ],
)
def test_list_series_filters(
    shared_store: StoreThread, catalog: dict[str, str], request_fields: dict, expected: list
) -> None:
    reply = _stub(shared_store).ListSeries(pb.ListSeriesRequest(**request_fields))
    assert [s.series_instance_uid for s in reply.series] == [catalog[k] for k in expected]


def test_list_series_by_study(shared_store: StoreThread, catalog: dict[str, str]) -> None:
    reply = _stub(shared_store).ListSeries(pb.ListSeriesRequest(study_instance_uid=catalog["st3"]))
    assert [s.series_instance_uid for s in reply.series] == [catalog["us1"], catalog["mr2"]]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.ListSeriesRequest(page_token="garbage!"), "page_token"),
        (pb.ListSeriesRequest(page_size=-1), "page_size"),
        (pb.ListSeriesRequest(study_date_from="2024-13-01"), "study_date_from"),
        (pb.ListSeriesRequest(study_date_to="yesterday"), "study_date_to"),
        (pb.ListSeriesRequest(modality="C\x00T"), "modality"),
    ],
)
def test_bad_list_requests_are_invalid_argument_naming_the_field(
    shared_store: StoreThread, request_: pb.ListSeriesRequest, field: str
) -> None:
    code, details = _code(lambda: _stub(shared_store).ListSeries(request_))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(field)


def test_page_token_is_bound_to_its_filters(
    shared_store: StoreThread, catalog: dict[str, str]
) -> None:
    stub = _stub(shared_store)
    first = stub.ListSeries(pb.ListSeriesRequest(patient_id="P1", page_size=1))
    assert first.next_page_token
    code, details = _code(
        lambda: stub.ListSeries(
            pb.ListSeriesRequest(patient_id="P2", page_token=first.next_page_token)
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in details


def test_pages_have_no_duplicates_or_gaps_while_series_arrive(
    running_store: StoreThread,
) -> None:
    ch = running_store.channel()
    existing = [uid() for _ in range(60)]
    send(ch, [make_update(s, [f"{s}.1"], modality="CT") for s in existing])
    stop = threading.Event()

    def keep_inserting() -> None:
        wch = running_store.channel()
        n = 0
        while not stop.is_set():
            n += 1
            s = uid()
            # New series, and late instances received *earlier* than anything stored,
            # which move first_received_at: neither may disturb the pages.
            late = existing[n % len(existing)]
            send(
                wch,
                [
                    make_update(s, [f"{s}.1"], modality="CT"),
                    make_update(
                        late, [f"{late}.{n + 1}"], modality="CT", received=1_600_000_000 - n
                    ),
                ],
            )

    writer = threading.Thread(target=keep_inserting)
    writer.start()
    seen: list[str] = []
    token = ""
    stub = pb_grpc.SeriesStoreStub(ch)
    try:
        while True:
            page = stub.ListSeries(
                pb.ListSeriesRequest(modality="CT", page_size=7, page_token=token)
            )
            seen += [s.series_instance_uid for s in page.series]
            token = page.next_page_token
            if not token:
                break
    finally:
        stop.set()
        writer.join()
    assert len(seen) == len(set(seen))
    # Everything that existed when paging started is there, in newest-first (id) order.
    in_id_order = [
        r[0]
        for r in rows(
            running_store.store.db.url,
            "SELECT series_instance_uid FROM series WHERE series_instance_uid = ANY(%s) "
            "ORDER BY id DESC",
            existing,
        )
    ]
    assert len(in_id_order) == len(existing)
    assert [s for s in seen if s in set(existing)] == in_id_order
    # Rows really did arrive while paging (they are newer: a fresh first page shows them).
    assert rows(running_store.store.db.url, "SELECT count(*) FROM series")[0][0] > 60


def test_get_series_pages_its_instances_in_instance_number_order(
    running_store: StoreThread,
) -> None:
    s = uid()
    sops = [f"{s}.{n}" for n in range(1, 26)]
    send(running_store.channel(), [make_update(s, sops[::-1])])
    stub = _stub(running_store)
    got: list[str] = []
    token = ""
    while True:
        reply = stub.GetSeries(
            pb.GetSeriesRequest(series_instance_uid=s, page_size=10, page_token=token)
        )
        assert reply.series.num_instances == 25
        got += [i.sop_instance_uid for i in reply.instances]
        token = reply.next_page_token
        if not token:
            break
    assert got == sops


def test_unknown_series_and_study_are_not_found(shared_store: StoreThread) -> None:
    stub = _stub(shared_store)
    code, _ = _code(lambda: stub.GetSeries(pb.GetSeriesRequest(series_instance_uid="1.2.3")))
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = _code(lambda: stub.GetStudy(pb.GetStudyRequest(study_instance_uid="1.2.3")))
    assert code == grpc.StatusCode.NOT_FOUND
    code, details = _code(lambda: stub.GetSeries(pb.GetSeriesRequest()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "series_instance_uid" in details


def test_get_study_lists_its_series_by_series_number(
    shared_store: StoreThread, catalog: dict[str, str]
) -> None:
    reply = _stub(shared_store).GetStudy(pb.GetStudyRequest(study_instance_uid=catalog["st3"]))
    assert reply.study.patient_id == "P2"
    assert list(reply.study.modalities) == ["MR", "US"]
    assert reply.study.num_series == 2 and reply.study.num_instances == 6
    assert reply.study.study_date == "2024-03-20"
    assert {s.series_instance_uid for s in reply.series} == {catalog["mr2"], catalog["us1"]}


def test_list_studies_filters_and_pages(shared_store: StoreThread, catalog: dict[str, str]) -> None:
    stub = _stub(shared_store)
    reply = stub.ListStudies(pb.ListStudiesRequest(patient_id="P1"))
    assert [s.study_instance_uid for s in reply.studies] == [catalog["st2"], catalog["st1"]]
    reply = stub.ListStudies(pb.ListStudiesRequest(accession_number="ACC-st3"))
    assert [s.study_instance_uid for s in reply.studies] == [catalog["st3"]]
    reply = stub.ListStudies(pb.ListStudiesRequest(study_date_to="20240131"))
    assert [s.study_instance_uid for s in reply.studies] == [catalog["st1"]]
    first = stub.ListStudies(pb.ListStudiesRequest(page_size=2))
    second = stub.ListStudies(pb.ListStudiesRequest(page_size=2, page_token=first.next_page_token))
    assert [s.study_instance_uid for s in [*first.studies, *second.studies]] == [
        catalog["st3"],
        catalog["st2"],
        catalog["st1"],
    ]
    assert second.next_page_token == ""


def test_list_patients(shared_store: StoreThread, catalog: dict[str, str]) -> None:
    reply = _stub(shared_store).ListPatients(pb.ListPatientsRequest())
    assert [(p.patient_id, p.num_studies) for p in reply.patients] == [("P2", 1), ("P1", 2)]
    assert reply.patients[0].patient_name == "Doe^Jane"
    assert reply.patients[0].last_received_at.seconds > 1_700_000_400
    only = _stub(shared_store).ListPatients(pb.ListPatientsRequest(patient_id="P1"))
    assert [p.patient_id for p in only.patients] == ["P1"]


def test_get_attributes_by_keyword_and_tag_forms(
    shared_store: StoreThread, catalog: dict[str, str]
) -> None:
    reply_order = [
        "PatientName",
        "00080060",
        "(0028,0030)",
        "0029,1010",
        "ReferencedImageSequence",
        "PatientID",
        "StudyDate",
    ]
    reply = _stub(shared_store).GetAttributes(
        pb.GetAttributesRequest(
            series_instance_uid=catalog["ct1"],
            attributes=reply_order,
        )
    )
    by = {a.requested: a for a in reply.attributes}
    assert [a.requested for a in reply.attributes] == list(reply_order)
    name = by["PatientName"]
    assert (name.tag, name.keyword, name.vr, name.present) == (
        "00100010",
        "PatientName",
        "PN",
        True,
    )
    assert json.loads(name.value_json) == [{"Alphabetic": "Doe^Jane"}]
    assert name.value == "Doe^Jane"
    assert by["00080060"].keyword == "Modality" and by["00080060"].value == "CT"
    assert by["(0028,0030)"].value == "0.5\\0.5"
    assert by["0029,1010"].keyword == "" and by["0029,1010"].value == "<binary data>"
    assert by["ReferencedImageSequence"].value == "<sequence of 2 items>"
    assert by["PatientID"].present and by["PatientID"].value == ""
    assert not by["StudyDate"].present and by["StudyDate"].tag == "00080020"


def test_get_attributes_errors(shared_store: StoreThread, catalog: dict[str, str]) -> None:
    stub = _stub(shared_store)
    code, details = _code(
        lambda: stub.GetAttributes(
            pb.GetAttributesRequest(
                series_instance_uid=catalog["ct1"], attributes=["PatientName", "PatientNmae"]
            )
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("attributes[1]")
    code, _ = _code(
        lambda: stub.GetAttributes(
            pb.GetAttributesRequest(series_instance_uid="1.2.3.4.5", attributes=["PatientName"])
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND
    code, details = _code(
        lambda: stub.GetAttributes(pb.GetAttributesRequest(series_instance_uid=catalog["ct1"]))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("attributes")


def test_undecodable_query_is_invalid_argument(shared_store: StoreThread) -> None:
    call = shared_store.channel().unary_unary(
        "/seriesflow.v1.SeriesStore/ListSeries",
        request_serializer=lambda b: b,
        response_deserializer=pb.ListSeriesResponse.FromString,
    )
    code, details = _code(lambda: call(b"\x0a\x02\xff\xfe", timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "UTF-8" in details


def test_get_series_pages_instances_without_number_last(running_store: StoreThread) -> None:
    s = uid()
    numbered = [f"{s}.{n}" for n in range(1, 6)]
    unnumbered = [f"{s}.{n}" for n in range(50, 56)]
    update = make_update(s, numbered + unnumbered)
    for inst in update.instances:
        if inst.sop_instance_uid in unnumbered:
            inst.ClearField("instance_number")
    send(running_store.channel(), [update])
    stub = _stub(running_store)
    got: list[tuple[str, bool]] = []
    token = ""
    while True:
        reply = stub.GetSeries(
            pb.GetSeriesRequest(series_instance_uid=s, page_size=4, page_token=token)
        )
        got += [(i.sop_instance_uid, i.HasField("instance_number")) for i in reply.instances]
        token = reply.next_page_token
        if not token:
            break
    assert got == [(u, True) for u in numbered] + [(u, False) for u in sorted(unnumbered)]
