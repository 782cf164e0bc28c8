"""Requests a hurried or hostile client sends: each gets INVALID_ARGUMENT naming the field,
with a short message, before any query runs; and counts that must reconcile do."""

# ruff: noqa: F811  (fixtures are imported from st_harness: pytest finds them by name)

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import grpc
import pytest
from st_harness import (  # noqa: F401 (fixtures)
    StoreThread,
    make_update,
    migrated_url,
    running_store,
    send,
    shared_store,
    ts,
    uid,
)

from seriesflow.v1 import series_store_pb2 as pb
from seriesflow.v1 import series_store_pb2_grpc as pb_grpc

MEGABYTE = "x" * 1_000_000


@pytest.fixture(scope="module")
def stub(shared_store: StoreThread) -> pb_grpc.SeriesStoreStub:
    """A store holding two series of one patient (so every list has a second page)."""
    channel = shared_store.channel()
    for _ in range(2):
        series = uid()
        send(channel, [make_update(series, [f"{series}.1"], study_uid=uid())])
    return pb_grpc.SeriesStoreStub(channel)


def _refusal(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


@pytest.mark.parametrize(
    ("method", "request_", "field"),
    [
        (
            "ListSeries",
            pb.ListSeriesRequest(study_date_from="20260101", study_date_to="20200101"),
            "study_date_to",
        ),
        (
            "ListStudies",
            pb.ListStudiesRequest(study_date_from="2026-01-01", study_date_to="2020-01-01"),
            "study_date_to",
        ),
        (
            "ListSeries",
            pb.ListSeriesRequest(
                received_after=ts(1_800_000_000), received_before=ts(1_700_000_000)
            ),
            "received_before",
        ),
        ("ListSeries", pb.ListSeriesRequest(study_instance_uid=MEGABYTE), "study_instance_uid"),
        ("GetSeries", pb.GetSeriesRequest(series_instance_uid=MEGABYTE), "series_instance_uid"),
        ("GetStudy", pb.GetStudyRequest(study_instance_uid="1.2" * 300_000), "study_instance_uid"),
        (
            "GetAttributes",
            pb.GetAttributesRequest(series_instance_uid=MEGABYTE, attributes=["PatientName"]),
            "series_instance_uid",
        ),
        ("GetSeries", pb.GetSeriesRequest(series_instance_uid=" 1.2.3 "), "series_instance_uid"),
        ("GetStudy", pb.GetStudyRequest(study_instance_uid="1.2.3\x00"), "study_instance_uid"),
    ],
)
def test_impossible_filters_are_invalid_argument_with_a_short_message(
    stub: pb_grpc.SeriesStoreStub, method: str, request_: object, field: str
) -> None:
    code, details = _refusal(lambda: getattr(stub, method)(request_))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(f"{field}: ")
    assert len(details) < 300  # a 1 MB value is not echoed back


@pytest.mark.parametrize(
    ("method", "request_"),
    [
        ("ListSeries", pb.ListSeriesRequest(patient_id=MEGABYTE)),
        ("ListSeries", pb.ListSeriesRequest(modality=MEGABYTE)),
        ("ListStudies", pb.ListStudiesRequest(accession_number=MEGABYTE)),
        ("ListPatients", pb.ListPatientsRequest(patient_id=MEGABYTE)),
    ],
)
def test_a_megabyte_text_filter_is_a_query_like_any_other(
    stub: pb_grpc.SeriesStoreStub, method: str, request_: object
) -> None:
    """Stored text is never cut, so a value of any length can be in the catalog and a
    filter of any length is answered (here: nothing matches), through the text's index."""
    reply = getattr(stub, method)(request_)
    assert reply.ByteSize() == 0


def test_inverted_date_range_message_says_how_to_fix_it(stub: pb_grpc.SeriesStoreStub) -> None:
    request_ = pb.ListSeriesRequest(study_date_from="20260101", study_date_to="20200101")
    _, details = _refusal(lambda: stub.ListSeries(request_))
    assert "2020-01-01" in details and "study_date_from 2026-01-01" in details
    assert "swap" in details


def test_equal_date_bounds_are_one_day_not_an_error(stub: pb_grpc.SeriesStoreStub) -> None:
    reply = stub.ListSeries(
        pb.ListSeriesRequest(study_date_from="20240131", study_date_to="2024-01-31")
    )
    assert len(reply.series) == 2


@pytest.mark.parametrize(
    ("method", "request_type"),
    [("ListStudies", pb.ListStudiesRequest), ("ListPatients", pb.ListPatientsRequest)],
)
def test_a_list_series_page_token_is_refused_by_other_lists(
    stub: pb_grpc.SeriesStoreStub, method: str, request_type: type
) -> None:
    token = stub.ListSeries(pb.ListSeriesRequest(page_size=1)).next_page_token
    assert token
    code, details = _refusal(lambda: getattr(stub, method)(request_type(page_token=token)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("page_token: ") and "another request" in details


def test_an_instance_listed_twice_in_one_update_counts_as_a_duplicate(
    running_store: StoreThread,
) -> None:
    series = uid()
    sops = [f"{series}.1", f"{series}.2", f"{series}.1", f"{series}.1"]
    [ack] = send(running_store.channel(), [make_update(series, sops)])
    assert ack.ok and ack.num_instances == 2
    metrics = running_store.metrics_text()
    assert 'seriesflow_store_instances_total{result="new"} 2.0' in metrics
    assert 'seriesflow_store_instances_total{result="duplicate"} 2.0' in metrics


def test_migrating_logs_revisions_but_not_alembic_plugin_chatter(database_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "seriesflow", "migrate", "--database-url", database_url],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "SERIESFLOW_LOG_LEVEL": "INFO"},
    )
    assert result.returncode == 0, result.stderr
    assert "Running upgrade" in result.stderr
    assert "setup plugin" not in result.stderr


@pytest.mark.parametrize(
    ("method", "request_type", "keyset"),
    [
        ("ListSeries", pb.ListSeriesRequest, ["abc"]),
        ("ListSeries", pb.ListSeriesRequest, [2**70]),
        ("ListSeries", pb.ListSeriesRequest, [1.5]),
        ("ListPatients", pb.ListPatientsRequest, [None]),
        ("ListStudies", pb.ListStudiesRequest, [{"a": 1}]),
        ("ListStudies", pb.ListStudiesRequest, [True]),
    ],
)
def test_a_hand_edited_page_token_is_invalid_argument_not_a_crash(
    stub: pb_grpc.SeriesStoreStub, method: str, request_type: type, keyset: list
) -> None:
    from seriesflow.store import tokens

    forged = tokens.encode(keyset, tokens.fingerprint(request_type()))
    code, details = _refusal(lambda: getattr(stub, method)(request_type(page_token=forged)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("page_token: ")


def test_a_hand_edited_get_series_token_is_invalid_argument(
    stub: pb_grpc.SeriesStoreStub,
) -> None:
    from seriesflow.store import tokens

    [series] = stub.ListSeries(pb.ListSeriesRequest(page_size=1)).series
    request_ = pb.GetSeriesRequest(series_instance_uid=series.series_instance_uid)
    forged = tokens.encode(["1", 5], tokens.fingerprint(request_))
    request_.page_token = forged
    code, details = _refusal(lambda: stub.GetSeries(request_))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("page_token: ")


def test_health_check_of_an_unknown_service_names_the_known_ones(
    shared_store: StoreThread,
) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(shared_store.channel())
    code, details = _refusal(
        lambda: health.Check(health_pb2.HealthCheckRequest(service="SeriesStore"), timeout=5)
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert "'SeriesStore'" in details and "seriesflow.v1.SeriesStore" in details


def test_get_attributes_answers_from_a_header_that_is_not_well_formed_dicom_json(
    running_store: StoreThread,
) -> None:
    """Any StoreSeries client can store a header; a malformed one must not make reading it
    an UNKNOWN error."""
    series = uid()
    header = {
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": 5}]},
        "00080060": {"vr": "CS", "Value": "CT"},
        "00081140": {"vr": "SQ", "Value": 3},
        "00200013": {"vr": "IS", "Value": 7},
    }
    update = make_update(series, [f"{series}.1"], header=json.dumps(header))
    [ack] = send(running_store.channel(), [update])
    assert ack.ok
    stub = pb_grpc.SeriesStoreStub(running_store.channel())
    reply = stub.GetAttributes(
        pb.GetAttributesRequest(
            series_instance_uid=series,
            attributes=["PatientName", "Modality", "ReferencedImageSequence", "InstanceNumber"],
        )
    )
    assert [a.value for a in reply.attributes] == ["5", "CT", "<sequence of 1 item>", "7"]


def test_a_deeply_nested_header_is_rejected_alone_and_the_stream_goes_on(
    running_store: StoreThread,
) -> None:
    deep, fine = uid(), uid()
    nested = '{"00081140": {"vr": "SQ", "Value": ' + "[" * 100_000 + "]" * 100_000 + "}}"
    acks = send(
        running_store.channel(),
        [
            make_update(deep, [f"{deep}.1"], update_id="deep", header=nested),
            make_update(fine, [f"{fine}.1"], update_id="fine"),
        ],
    )
    by_id = {a.update_id: a for a in acks}
    assert not by_id["deep"].ok
    assert by_id["deep"].error.field == "representative_header_json"
    assert by_id["fine"].ok and by_id["fine"].num_instances == 1
