"""DICOM attribute matching (store.matching) through the Query RPC and the list RPCs,
against a real store and PostgreSQL: every matching kind at every level."""

# ruff: noqa: F811  (fixtures are imported from st_harness: pytest finds them by name)

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import shared_temp_dir
from st_harness import (  # noqa: F401 (fixtures)
    StoreThread,
    fresh_database,
    make_update,
    migrated_url,
    send,
    store_config,
    uid,
)

from seriesflow import migrations
from seriesflow.store import find, matching
from seriesflow.store.config import StoreConfig
from seriesflow.store.embedded_postgres import EmbeddedPostgres
from seriesflow.store.matching import Compiled, Level
from seriesflow.v1 import series_store_pb2 as pb
from seriesflow.v1 import series_store_pb2_grpc as pb_grpc

YAMADA = "Yamada^Tarou=山田^太郎=やまだ^たろう"
PATIENT, STUDY, SERIES, IMAGE = (
    pb.QUERY_LEVEL_PATIENT,
    pb.QUERY_LEVEL_STUDY,
    pb.QUERY_LEVEL_SERIES,
    pb.QUERY_LEVEL_IMAGE,
)
# Instances of the big series: more than one page of the Query stream (find.PAGE_ROWS).
BIG = 1203


def _header(**elements: tuple[str, Any]) -> str:
    return json.dumps(
        {tag: {"vr": vr, "Value": [value]} for tag, (vr, value) in elements.items()},
        ensure_ascii=False,
    )


def _http_port_override() -> dict[str, Any]:
    """The store's HTTP server (QIDO-RS) on an ephemeral port, where the setting exists."""
    if "store_http_port" in {f.name for f in dataclasses.fields(StoreConfig)}:
        return {"store_http_port": 0}
    return {}


@pytest.fixture(scope="module")
def store(postgres_server_url: str) -> Iterator[StoreThread]:
    with fresh_database(postgres_server_url) as url:
        thread = StoreThread(store_config(url, **_http_port_override()), url)
        try:
            yield thread
        finally:
            thread.stop()


@pytest.fixture(scope="module")
def cat(store: StoreThread) -> dict[str, str]:
    """Four patients (one Japanese, one accented), four studies, five series."""
    ids = {k: uid() for k in ("s1", "s2", "s3", "s4", "a", "b", "c", "d", "e")}
    plan = [
        # series, study, patient id, name, modality, description, body part, n instances
        ("a", "s1", "P1", "Doe^Jane", "CT", "Axial 5mm", "CHEST", 3),
        ("b", "s1", "P1", "Doe^Jane", "MR", "Scout", "CHEST", 1),
        ("c", "s2", "P2", YAMADA, "MR", "T1 axial", "HEAD", 2),
        ("d", "s3", "P3", "GARCÍA^José", "CT", "a*b?c", "ABDOMEN", BIG),
        ("e", "s4", "P4", "o'brien^mary", "US", "100%_x", "", 1),
    ]
    studies = {
        # date, time, accession, description, referring physician
        "s1": ("20240115", "093000", "ACC1", "CHEST CT", "Smith^John"),
        "s2": ("20240220", "140000", "ACC2", "頭部 MRI", "García^José"),
        "s3": ("20231231", "235959.5", "ACC_3%", "100% test_under", ""),
        "s4": ("", "", "", "", ""),
    }
    updates = []
    for key, study, patient, name, modality, description, body, count in plan:
        s = ids[key]
        update = make_update(
            s,
            [f"{s}.{n}" for n in range(1, count + 1)],
            study_uid=ids[study],
            patient_id=patient,
            patient_name=name,
            modality=modality,
            series_description=description,
            body_part_examined=body,
            series_number=ord(key) - ord("a") + 1,
            header=_header(
                **{
                    "00101010": ("AS", "045Y"),
                    "00080060": ("CS", "XX"),
                    "00080018": ("UI", f"{s}.1"),
                    "0008103E": ("LO", "from header"),
                }
            ),
        )
        date, time, accession, study_description, referring = studies[study]
        update.study.study_date = date
        update.study.study_time = time
        update.study.accession_number = accession
        update.study.study_description = study_description
        update.study.referring_physician_name = referring
        update.patient.patient_birth_date = "19800101" if patient == "P1" else "19700505"
        update.patient.patient_sex = "F" if patient == "P1" else "M"
        updates.append(update)
    acks = send(store.channel(), updates)
    assert all(a.ok for a in acks), acks
    return ids


@pytest.fixture(scope="module")
def stub(store: StoreThread) -> pb_grpc.SeriesStoreStub:
    return pb_grpc.SeriesStoreStub(store.channel())


def query(
    stub: pb_grpc.SeriesStoreStub,
    level: int,
    match: Sequence[tuple[str, str]] = (),
    include: Sequence[str] = (),
    **options: Any,
) -> tuple[list[dict[str, Any]], list[str]]:
    responses = list(
        stub.Query(
            pb.QueryRequest(
                level=level,  # type: ignore[arg-type]
                match=[pb.QueryKey(key=k, value=v) for k, v in match],
                include_fields=include,
                **options,
            ),
            timeout=60,
        )
    )
    assert responses, "the first message is always sent"
    assert all(not r.unsupported_keys for r in responses[1:])
    datasets = [json.loads(m.dataset_json) for r in responses for m in r.matches]
    return datasets, [u.key for u in responses[0].unsupported_keys]


def value(dataset: dict[str, Any], tag: str) -> Any:
    return dataset[tag].get("Value")


def uids(datasets: list[dict[str, Any]], tag: str) -> set[str]:
    return {value(d, tag)[0] for d in datasets}


def refused(fn: Any) -> str:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    return str(info.value.details())


STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"


# --- required attributes and DICOM JSON ---------------------------------------------


def test_a_study_match_holds_the_required_study_attributes_as_dicom_json(
    stub: pb_grpc.SeriesStoreStub, cat: dict[str, str]
) -> None:
    [study], unsupported = query(stub, STUDY, [("StudyInstanceUID", cat["s1"])])
    assert unsupported == []
    assert study[STUDY_UID] == {"vr": "UI", "Value": [cat["s1"]]}
    assert study["00080020"] == {"vr": "DA", "Value": ["20240115"]}
    assert study["00080030"] == {"vr": "TM", "Value": ["093000"]}
    assert study["00080050"] == {"vr": "SH", "Value": ["ACC1"]}
    assert study["00080061"] == {"vr": "CS", "Value": ["CT", "MR"]}
    assert study["00080090"] == {"vr": "PN", "Value": [{"Alphabetic": "Smith^John"}]}
    assert study["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]}
    assert study["00100020"] == {"vr": "LO", "Value": ["P1"]}
    assert study["00100030"] == {"vr": "DA", "Value": ["19800101"]}
    assert study["00100040"] == {"vr": "CS", "Value": ["F"]}
    assert study["00201206"] == {"vr": "IS", "Value": [2]}
    assert study["00201208"] == {"vr": "IS", "Value": [4]}
    assert "00200010" in study  # StudyID, empty: {"vr": "SH"}
    assert study["00200010"] == {"vr": "SH"}
    assert list(study) == sorted(study)


def test_series_and_image_matches_hold_their_required_attributes(
    stub: pb_grpc.SeriesStoreStub, cat: dict[str, str]
) -> None:
    [series], _ = query(stub, SERIES, [("SeriesInstanceUID", cat["a"])])
    assert series["00080060"] == {"vr": "CS", "Value": ["CT"]}
    assert series["0008103E"] == {"vr": "LO", "Value": ["Axial 5mm"]}
    assert series["00200011"] == {"vr": "IS", "Value": [1]}
    assert series["00201209"] == {"vr": "IS", "Value": [3]}
    assert value(series, STUDY_UID) == [cat["s1"]]
    images, _ = query(stub, IMAGE, [("0020000E", cat["a"])])
    assert [value(i, "00200013") for i in images] == [[1], [2], [3]]
    assert [value(i, SOP_UID) for i in images] == [[f"{cat['a']}.{n}"] for n in (1, 2, 3)]
    assert {value(i, "00080016")[0] for i in images} == {"1.2.840.10008.5.1.4.1.1.2"}


def test_a_patient_match_counts_the_patients_studies(
    stub: pb_grpc.SeriesStoreStub, cat: dict[str, str]
) -> None:
    [patient], _ = query(stub, PATIENT, [("PatientID", "P1")])
    assert value(patient, "00100010") == [{"Alphabetic": "Doe^Jane"}]
    assert value(patient, "00201200") == [1]
    assert STUDY_UID not in patient


def test_japanese_names_come_back_in_their_three_component_groups(
    stub: pb_grpc.SeriesStoreStub, cat: dict[str, str]
) -> None:
    [patient], _ = query(stub, PATIENT, [("PatientID", "P2")])
    assert value(patient, "00100010") == [
        {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}
    ]


# --- universal, single value, case ------------------------------------------------


def test_universal_matching_matches_everything_and_returns_the_key(
    stub: pb_grpc.SeriesStoreStub, cat: dict[str, str]
) -> None:
    for universal in ("", "*"):
        studies, _ = query(stub, STUDY, [("StudyDescription", universal)])
        assert uids(studies, STUDY_UID) >= {cat[s] for s in ("s1", "s2", "s3", "s4")}
    series, _ = query(stub, SERIES, [("ProtocolName", "")])
    assert all("00181030" in s for s in series)


def test_single_value_text_matching_is_exact_and_case_sensitive(
    stub: pb_grpc.SeriesStoreStub, cat: dict[str, str]
) -> None:
    studies, _ = query(stub, STUDY, [("StudyDescription", "CHEST CT")])
    assert uids(studies, STUDY_UID) == {cat["s1"]}
    assert query(stub, STUDY, [("StudyDescription", "chest ct")])[0] == []
    assert query(stub, STUDY, [("StudyDescription", "CHEST")])[0] == []
    series, _ = query(stub, SERIES, [("Modality", "MR")])
    assert uids(series, SERIES_UID) == {cat["b"], cat["c"]}


def test_person_names_match_case_insensitively(
    stub: pb_grpc.SeriesStoreStub, cat: dict[str, str]
) -> None:
    for name in ("doe^jane", "DOE^JANE", "Doe^Jane"):
        patients, _ = query(stub, PATIENT, [("PatientName", name)])
        assert uids(patients, "00100020") == {"P1"}, name
    patients, _ = query(stub, PATIENT, [("00100010", "garcía^josé")])
    assert uids(patients, "00100020") == {"P3"}


def test_a_japanese_name_matches_by_any_component_group(
    stub: pb_grpc.SeriesStoreStub, cat: dict[str, str]
) -> None:
    for name in ("山田^太郎", "yamada^tarou", "やまだ^たろう", YAMADA, "山田*", "*太郎"):
        patients, _ = query(stub, PATIENT, [("PatientName", name)])
        assert uids(patients, "00100020") == {"P2"}, name
    studies, _ = query(stub, STUDY, [("StudyDescription", "頭部*")])
    assert uids(studies, STUDY_UID) == {cat["s2"]}


def test_a_name_with_component_groups_matches_group_by_group(
    stub: pb_grpc.SeriesStoreStub, cat: dict[str, str]
) -> None:
    for name in (
        "Yamada^Tarou=山田^太郎",
        "=山田^太郎",
        "*=山田*=やまだ*",
        "YAMADA*==やまだ^たろう",
    ):
        patients, _ = query(stub, PATIENT, [("PatientName", name)])
        assert uids(patients, "00100020") == {"P2"}, name
    assert query(stub, PATIENT, [("PatientName", "山田^太郎=Yamada^Tarou")])[0] == []
    details = refused(lambda: query(stub, PATIENT, [("PatientName", "a=b=c=d")]))
    assert "at most 3 component groups" in details


def test_trailing_component_separators_do_not_matter(
    stub: pb_grpc.SeriesStoreStub, cat: dict[str, str]
) -> None:
    for name in ("Doe^Jane^^^", "doe^jane^"):
        patients, _ = query(stub, PATIENT, [("PatientName", name)])
        assert uids(patients, "00100020") == {"P1"}, name
    assert query(stub, PATIENT, [("PatientName", "Doe")])[0] == []


# --- wildcards ------------------------------------------------------------------------


def test_wildcards_match_any_run_and_one_character(
    stub: pb_grpc.SeriesStoreStub, cat: dict[str, str]
) -> None:
    assert uids(query(stub, PATIENT, [("PatientName", "doe*")])[0], "00100020") == {"P1"}
    assert uids(query(stub, PATIENT, [("PatientName", "?oe^J?ne")])[0], "00100020") == {"P1"}
    assert uids(query(stub, PATIENT, [("PatientName", "*O'BRIEN*")])[0], "00100020") == {"P4"}
    studies, _ = query(stub, STUDY, [("StudyDescription", "CHEST*")])
    assert uids(studies, STUDY_UID) == {cat["s1"]}
    assert query(stub, STUDY, [("StudyDescription", "chest*")])[0] == []
    series, _ = query(stub, SERIES, [("SeriesDescription", "*axial*")])
    assert uids(series, SERIES_UID) == {cat["c"]}
    series, _ = query(stub, SERIES, [("BodyPartExamined", "CHES?")])
    assert uids(series, SERIES_UID) == {cat["a"], cat["b"]}


def test_sql_like_metacharacters_in_values_are_literal(
    stub: pb_grpc.SeriesStoreStub, cat: dict[str, str]
) -> None:
    # % and _ are ordinary characters in DICOM: "100%*" must not match "100 test..." and
    # "1_0*" must not match "100..." (both would under an unescaped LIKE).
    studies, _ = query(stub, STUDY, [("StudyDescription", "100%*")])
    assert uids(studies, STUDY_UID) == {cat["s3"]}
    assert query(stub, STUDY, [("StudyDescription", "1_0*")])[0] == []
    assert query(stub, STUDY, [("StudyDescription", "%")])[0] == []
    studies, _ = query(stub, STUDY, [("AccessionNumber", "ACC_3%")])
    assert uids(studies, STUDY_UID) == {cat["s3"]}
    assert query(stub, STUDY, [("AccessionNumber", "ACC?3_")])[0] == []
    series, _ = query(stub, SERIES, [("SeriesDescription", "100%_?")])
    assert uids(series, SERIES_UID) == {cat["e"]}


def test_backslash_separated_values_match_any_of_them(
    stub: pb_grpc.SeriesStoreStub, cat: dict[str, str]
) -> None:
    series, _ = query(stub, SERIES, [("Modality", "US\\MR")])
    assert uids(series, SERIES_UID) == {cat["b"], cat["c"], cat["e"]}
    studies, _ = query(stub, STUDY, [("ModalitiesInStudy", "MR")])
    assert uids(studies, STUDY_UID) == {cat["s1"], cat["s2"]}
    studies, _ = query(stub, STUDY, [("ModalitiesInStudy", "US\\CT")])
    assert uids(studies, STUDY_UID) == {cat["s1"], cat["s3"], cat["s4"]}


# --- fuzzy ----------------------------------------------------------------------------


def test_fuzzy_matching_ignores_case_accents_and_word_order(
    stub: pb_grpc.SeriesStoreStub, cat: dict[str, str]
) -> None:
    for name in ("garcia jose", "JOSE^GARCIA", "jos", "garc^j", "GARCÍA"):
        found = query(stub, PATIENT, [("PatientName", name)], fuzzy_matching=True)[0]
        assert uids(found, "00100020") == {"P3"}, name
    assert query(stub, PATIENT, [("PatientName", "garcia jose")])[0] == []
    assert query(stub, PATIENT, [("PatientName", "arcia")], fuzzy_matching=True)[0] == []
    found = query(stub, PATIENT, [("PatientName", "山田")], fuzzy_matching=True)[0]
    assert uids(found, "00100020") == {"P2"}
    studies, _ = query(stub, STUDY, [("ReferringPhysicianName", "garc")], fuzzy_matching=True)
    assert uids(studies, STUDY_UID) == {cat["s2"]}
    # With wildcards, fuzzy is a wildcard match that ignores case and accents.
    found = query(stub, PATIENT, [("PatientName", "garcia*")], fuzzy_matching=True)[0]
    assert uids(found, "00100020") == {"P3"}
    assert query(stub, PATIENT, [("PatientName", "garcia*")])[0] == []


def test_fuzzy_words_with_like_metacharacters_are_literal(
    stub: pb_grpc.SeriesStoreStub, cat: dict[str, str]
) -> None:
    assert query(stub, PATIENT, [("PatientName", "%")], fuzzy_matching=True)[0] == []
    assert query(stub, PATIENT, [("PatientName", "d_e")], fuzzy_matching=True)[0] == []


# --- dates and times ------------------------------------------------------------------


def test_date_ranges_closed_and_open_ended(
    stub: pb_grpc.SeriesStoreStub, cat: dict[str, str]
) -> None:
    cases = {
        "20240115": {"s1"},
        "20240101-20240131": {"s1"},
        "20240115-20240220": {"s1", "s2"},
        "-20231231": {"s3"},
        "20240201-": {"s2"},
        "20231231\\20240220": {"s2", "s3"},
    }
    for date, expected in cases.items():
        studies, _ = query(stub, STUDY, [("StudyDate", date)])
        assert uids(studies, STUDY_UID) == {cat[s] for s in expected}, date
    patients, _ = query(stub, PATIENT, [("PatientBirthDate", "-19751231")])
    assert uids(patients, "00100020") == {"P2", "P3", "P4"}


def test_time_ranges_cover_the_period_of_their_bounds(
    stub: pb_grpc.SeriesStoreStub, cat: dict[str, str]
) -> None:
    cases = {
        "09": {"s1"},
        "0930": {"s1"},
        "09-10": {"s1"},
        "0931-": {"s2", "s3"},
        "2359-": {"s3"},
        "-235959.4": {"s1", "s2"},
        "-235959": {"s1", "s2", "s3"},
        "14:00": {"s2"},
    }
    for tm, expected in cases.items():
        studies, _ = query(stub, STUDY, [("StudyTime", tm)])
        assert uids(studies, STUDY_UID) == {cat[s] for s in expected}, tm


@pytest.mark.parametrize(
    ("key", "bad"),
    [
        ("StudyDate", "2024-01-01"),
        ("StudyDate", "20241301"),
        ("StudyDate", "20240201-20240101"),
        ("StudyDate", "-"),
        ("StudyDate", "2024*"),
        ("StudyTime", "25"),
        ("StudyTime", "10-09"),
        ("StudyTime", "ab"),
        ("SeriesNumber", "one"),
        ("StudyInstanceUID", "1.2.abc"),
        ("StudyInstanceUID", "1.2.*"),
        ("StudyInstanceUID", "1.2\\x"),
    ],
)
def test_malformed_values_are_invalid_argument_naming_the_key(
    stub: pb_grpc.SeriesStoreStub, cat: dict[str, str], key: str, bad: str
) -> None:
    level = SERIES if key == "SeriesNumber" else STUDY
    details = refused(lambda: query(stub, level, [("PatientID", ""), (key, bad)]))
    assert details.startswith(f"match[1] {key!r}: "), details


# --- UIDs, integers -------------------------------------------------------------------


def test_uid_lists_match_any_listed_uid_at_every_level(
    stub: pb_grpc.SeriesStoreStub, cat: dict[str, str]
) -> None:
    studies, _ = query(stub, STUDY, [("StudyInstanceUID", f"{cat['s1']}\\{cat['s3']}")])
    assert uids(studies, STUDY_UID) == {cat["s1"], cat["s3"]}
    series, _ = query(stub, SERIES, [("SeriesInstanceUID", f"{cat['a']}\\{cat['c']}\\1.2.3")])
    assert uids(series, SERIES_UID) == {cat["a"], cat["c"]}
    sops = [f"{cat['d']}.7", f"{cat['a']}.2"]
    images, _ = query(stub, IMAGE, [("SOPInstanceUID", "\\".join(sops))])
    assert uids(images, SOP_UID) == set(sops)
    series, _ = query(stub, SERIES, [("StudyInstanceUID", cat["s1"])])
    assert uids(series, SERIES_UID) == {cat["a"], cat["b"]}


def test_integer_keys_match_their_value(stub: pb_grpc.SeriesStoreStub, cat: dict[str, str]) -> None:
    series, _ = query(stub, SERIES, [("SeriesNumber", "3"), ("StudyInstanceUID", cat["s2"])])
    assert uids(series, SERIES_UID) == {cat["c"]}
    images, _ = query(stub, IMAGE, [("SeriesInstanceUID", cat["a"]), ("InstanceNumber", "2\\3")])
    assert [value(i, "00200013") for i in images] == [[2], [3]]
    studies, _ = query(stub, STUDY, [("NumberOfStudyRelatedSeries", "2")])
    assert cat["s1"] in uids(studies, STUDY_UID)
    assert cat["s2"] not in uids(studies, STUDY_UID)


def test_keys_of_several_levels_combine(stub: pb_grpc.SeriesStoreStub, cat: dict[str, str]) -> None:
    images, _ = query(
        stub,
        IMAGE,
        [
            ("PatientName", "doe*"),
            ("StudyDate", "20240101-"),
            ("Modality", "CT"),
            ("InstanceNumber", ""),
        ],
    )
    assert uids(images, SOP_UID) == {f"{cat['a']}.{n}" for n in (1, 2, 3)}
    assert all(value(i, "00100010") == [{"Alphabetic": "Doe^Jane"}] for i in images)


# --- limit, offset, paging ------------------------------------------------------------


def test_an_image_query_streams_every_instance_once_across_pages(
    stub: pb_grpc.SeriesStoreStub, cat: dict[str, str]
) -> None:
    images, _ = query(stub, IMAGE, [("SeriesInstanceUID", cat["d"])])
    numbers = [value(i, "00200013")[0] for i in images]
    assert numbers == list(range(1, BIG + 1))


def test_limit_and_offset_select_a_window_of_the_same_order(
    stub: pb_grpc.SeriesStoreStub, cat: dict[str, str]
) -> None:
    key = [("SeriesInstanceUID", cat["d"])]
    window, _ = query(stub, IMAGE, key, limit=600, offset=450)
    assert [value(i, "00200013")[0] for i in window] == list(range(451, 1051))
    tail, _ = query(stub, IMAGE, key, offset=BIG - 2)
    assert [value(i, "00200013")[0] for i in tail] == [BIG - 1, BIG]
    assert query(stub, IMAGE, key, offset=BIG)[0] == []
    studies, _ = query(stub, STUDY, limit=2)
    assert len(studies) == 2
    details = refused(lambda: query(stub, STUDY, limit=-1))
    assert details.startswith("limit: ")


# --- include fields, unsupported keys ---------------------------------------------


def test_include_all_adds_the_representative_header_under_the_catalog(
    stub: pb_grpc.SeriesStoreStub, cat: dict[str, str]
) -> None:
    [series], _ = query(stub, SERIES, [("SeriesInstanceUID", cat["a"])], ["all"])
    assert value(series, "00101010") == ["045Y"]  # PatientAge, from the header
    assert value(series, "00080060") == ["CT"]  # the catalog's Modality, not the header's
    assert value(series, "0008103E") == ["Axial 5mm"]
    assert SOP_UID not in series  # the representative instance's own attributes stay out
    assert value(series, "00081090") is None and "00081090" in series  # catalogued, empty
    [study], _ = query(stub, STUDY, [("StudyInstanceUID", cat["s1"])], ["all"])
    assert value(study, "00101010") == ["045Y"]
    assert "0008103E" not in study and "00080060" not in study  # series attributes


def test_an_include_field_the_catalog_lacks_is_answered_from_the_header(
    stub: pb_grpc.SeriesStoreStub, cat: dict[str, str]
) -> None:
    [series], unsupported = query(stub, SERIES, [("SeriesInstanceUID", cat["c"])], ["PatientAge"])
    assert unsupported == []
    assert value(series, "00101010") == ["045Y"]
    assert "00081090" not in series
    [series], _ = query(stub, SERIES, [("SeriesInstanceUID", cat["c"])], ["ManufacturerModelName"])
    assert series["00081090"] == {"vr": "LO"}


def test_unsupported_keys_are_reported_and_the_query_runs_without_them(
    stub: pb_grpc.SeriesStoreStub, cat: dict[str, str]
) -> None:
    studies, unsupported = query(
        stub,
        STUDY,
        [("PatientAge", "045Y"), ("Modality", "CT"), ("00091001", "x"), ("StudyDate", "20240115")],
    )
    assert unsupported == ["PatientAge", "Modality", "00091001"]
    assert uids(studies, STUDY_UID) == {cat["s1"]}
    _, unsupported = query(stub, IMAGE, [("SOPInstanceUID", f"{cat['a']}.1")], ["PatientAge"])
    assert unsupported == ["PatientAge"]
    _, unsupported = query(stub, PATIENT, [("StudyDate", "")], ["NumberOfStudyRelatedSeries"])
    assert unsupported == ["StudyDate", "NumberOfStudyRelatedSeries"]
    empty, unsupported = query(stub, STUDY, [("StudyDescription", "nothing like it")])
    assert empty == [] and unsupported == []
    # C-FIND's own keys are accepted silently.
    _, unsupported = query(stub, STUDY, [("QueryRetrieveLevel", "STUDY")])
    assert unsupported == []


# --- hostile input ----------------------------------------------------------------------


def test_hostile_requests_get_clear_errors(
    stub: pb_grpc.SeriesStoreStub, cat: dict[str, str]
) -> None:
    assert refused(lambda: query(stub, STUDY, [("PatientName", "a\0b")])).startswith(
        "match[0] 'PatientName': contains a NUL"
    )
    long_list = "\\".join(f"1.2.3.{n}" for n in range(10_000))
    details = refused(lambda: query(stub, IMAGE, [("SOPInstanceUID", long_list)]))
    assert "at most 1000" in details and len(details) < 300
    details = refused(lambda: query(stub, STUDY, [("NotAKeyword", "x")]))
    assert "neither a DICOM keyword" in details
    assert refused(lambda: query(stub, pb.QUERY_LEVEL_UNSPECIFIED)).startswith("level: ")
    many = [("PatientID", "")] * 501
    assert refused(lambda: query(stub, STUDY, many)).startswith("match: ")


def test_values_that_would_make_huge_statements_are_refused(
    stub: pb_grpc.SeriesStoreStub, cat: dict[str, str]
) -> None:
    details = refused(lambda: query(stub, STUDY, [("StudyDescription", "\\".join(["a*"] * 33))]))
    assert "at most 32" in details
    details = refused(lambda: query(stub, STUDY, [("StudyDate", "\\".join(["20240101"] * 33))]))
    assert "at most 32" in details
    words = " ".join(["w"] * 100_000)
    details = refused(lambda: query(stub, PATIENT, [("PatientName", words)], fuzzy_matching=True))
    assert "fuzzy matching takes at most 16" in details and len(details) < 300
    # The most a request may ask for is still answered.
    most = [("PatientName", "\\".join(f"*{n}?x*" for n in range(32)))] * 100
    assert query(stub, STUDY, most)[0] == []


def test_huge_values_are_queries_like_any_other(
    stub: pb_grpc.SeriesStoreStub, cat: dict[str, str]
) -> None:
    megabyte = "x" * (1 << 20)
    for v in (megabyte, megabyte + "*", "*" + megabyte + "?"):
        assert query(stub, STUDY, [("PatientName", v), ("StudyDescription", v)])[0] == []
    assert query(stub, PATIENT, [("PatientName", megabyte)], fuzzy_matching=True)[0] == []
    thousand = "\\".join(f"1.2.3.{n}" for n in range(999)) + "\\" + cat["a"]
    series, _ = query(stub, SERIES, [("SeriesInstanceUID", thousand)])
    assert uids(series, SERIES_UID) == {cat["a"]}


# --- the list RPCs ------------------------------------------------------------------


def test_list_series_text_filters_use_matching_syntax(
    stub: pb_grpc.SeriesStoreStub, cat: dict[str, str]
) -> None:
    def listed(**filters: str) -> set[str]:
        reply = stub.ListSeries(pb.ListSeriesRequest(**filters), timeout=30)  # type: ignore[arg-type]
        return {s.series_instance_uid for s in reply.series}

    assert listed(patient_name="doe*") == {cat["a"], cat["b"]}
    assert listed(patient_name="山田^太郎") == {cat["c"]}
    assert listed(accession_number="ACC?") == {cat["a"], cat["b"], cat["c"]}
    assert listed(study_description="100%*") == {cat["d"]}
    assert listed(series_description="*axial*") == {cat["c"]}
    assert listed(series_description="a*b?c") >= {cat["d"]}
    assert listed(referring_physician_name="GARCÍA*") == {cat["c"]}
    assert listed(body_part_examined="CHEST") == {cat["a"], cat["b"]}
    assert listed(modality="US\\MR") == {cat["b"], cat["c"], cat["e"]}
    assert listed(patient_id="P?", body_part_examined="HEAD") == {cat["c"]}


def test_list_studies_text_filters_use_matching_syntax(
    stub: pb_grpc.SeriesStoreStub, cat: dict[str, str]
) -> None:
    def listed(**filters: str) -> set[str]:
        reply = stub.ListStudies(pb.ListStudiesRequest(**filters), timeout=30)  # type: ignore[arg-type]
        return {s.study_instance_uid for s in reply.studies}

    assert listed(patient_name="DOE^JANE") == {cat["s1"]}
    assert listed(study_description="CHEST*") == {cat["s1"]}
    assert listed(referring_physician_name="smith*") == {cat["s1"]}
    assert listed(accession_number="ACC_3%") == {cat["s3"]}
    assert listed(series_description="Scout") == {cat["s1"]}
    assert listed(body_part_examined="HEAD\\ABDOMEN") == {cat["s2"], cat["s3"]}


def test_list_rpcs_and_query_agree(stub: pb_grpc.SeriesStoreStub, cat: dict[str, str]) -> None:
    for name in ("doe*", "*a*", "GARCÍA^josé", "?amada*", "山田*"):
        listed = stub.ListSeries(pb.ListSeriesRequest(patient_name=name), timeout=30)
        found, _ = query(stub, SERIES, [("PatientName", name)])
        assert {s.series_instance_uid for s in listed.series} == uids(found, SERIES_UID), name


def test_a_list_filter_with_a_malformed_value_names_the_field(
    stub: pb_grpc.SeriesStoreStub, cat: dict[str, str]
) -> None:
    details = refused(lambda: stub.ListSeries(pb.ListSeriesRequest(patient_name="a\0")))
    assert details.startswith("patient_name: ")
    long_list = "\\".join(["CT"] * 1001)
    details = refused(lambda: stub.ListStudies(pb.ListStudiesRequest(body_part_examined=long_list)))
    assert details.startswith("body_part_examined: ")


def test_page_size_above_the_maximum_is_clamped(
    stub: pb_grpc.SeriesStoreStub, cat: dict[str, str]
) -> None:
    series = stub.ListSeries(pb.ListSeriesRequest(page_size=1_000_000), timeout=30).series
    assert len(series) == 5
    studies = stub.ListStudies(pb.ListStudiesRequest(page_size=1001), timeout=30).studies
    assert len(studies) == 4
    patients = stub.ListPatients(pb.ListPatientsRequest(page_size=2**31 - 1), timeout=30)
    assert len(patients.patients) == 4
    details = refused(lambda: stub.ListSeries(pb.ListSeriesRequest(page_size=-1)))
    assert details.startswith("page_size: ")


@pytest.fixture
def own_store(migrated_url: str) -> Iterator[StoreThread]:
    thread = StoreThread(store_config(migrated_url, **_http_port_override()), migrated_url)
    try:
        yield thread
    finally:
        thread.stop()


def test_page_size_above_the_maximum_returns_a_page_of_the_maximum(own_store: StoreThread) -> None:
    study = uid()
    series = [uid() for _ in range(1001)]
    acks = send(own_store.channel(), [make_update(s, [f"{s}.1"], study_uid=study) for s in series])
    assert all(a.ok for a in acks)
    stub = pb_grpc.SeriesStoreStub(own_store.channel())
    page = stub.ListSeries(pb.ListSeriesRequest(page_size=5000), timeout=60)
    assert len(page.series) == 1000 and page.next_page_token
    rest = stub.ListSeries(
        pb.ListSeriesRequest(page_size=5000, page_token=page.next_page_token), timeout=60
    )
    assert len(rest.series) == 1 and not rest.next_page_token
    found, _ = query(stub, SERIES, [("StudyInstanceUID", study)])
    assert uids(found, SERIES_UID) == set(series)


def test_matches_of_megabyte_names_come_in_messages_under_the_client_limit(
    own_store: StoreThread,
) -> None:
    names = [f"{chr(ord('A') + n)}^{'x' * (1 << 20)}" for n in range(5)]
    updates = []
    for n, name in enumerate(names):
        s = uid()
        updates.append(
            make_update(s, [f"{s}.1"], study_uid=uid(), patient_id=f"P{n}", patient_name=name)
        )
    assert all(a.ok for a in send(own_store.channel(), updates))
    stub = pb_grpc.SeriesStoreStub(own_store.channel())
    request = pb.QueryRequest(level=SERIES, include_fields=["PatientName"])
    responses = list(stub.Query(request, timeout=60))
    assert len(responses) > 1
    assert all(r.ByteSize() < 4 * 1024 * 1024 for r in responses)
    found = [json.loads(m.dataset_json) for r in responses for m in r.matches]
    # Ingest order, not send order, fixes the catalog's ids: compare as sets.
    assert sorted(value(d, "00100010")[0]["Alphabetic"] for d in found) == names
    found, _ = query(stub, SERIES, [("PatientName", "c^x*")])
    assert [value(d, "00100010")[0]["Alphabetic"] for d in found] == [names[2]]


def test_query_is_unavailable_while_postgres_is_down() -> None:
    # Under shared_temp_dir, not tmp_path: PostgreSQL (run as its own user) must traverse
    # the folder, and pytest resets its base temp folder to 0700 whenever a session starts.
    with shared_temp_dir() as folder:
        _unavailable_while_down(folder)


def _unavailable_while_down(folder: Path) -> None:
    server = EmbeddedPostgres(folder)
    try:
        migrations.upgrade(server.url)
        thread = StoreThread(store_config(server.url, **_http_port_override()), server.url)
        try:
            stub = pb_grpc.SeriesStoreStub(thread.channel())
            assert query(stub, STUDY)[0] == []
            server.stop()
            deadline = time.monotonic() + 30
            while True:
                with pytest.raises(grpc.RpcError) as info:
                    query(stub, STUDY, [("PatientName", "doe*")])
                # Until the health probe notices, the query itself fails to connect:
                # UNAVAILABLE either way.
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
                if "health probe" in str(info.value.details()) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert "health probe" in str(info.value.details())
        finally:
            thread.stop()
    finally:
        with contextlib.suppress(Exception):  # already stopped
            server.stop()


def _search(store: StoreThread, compiled: Compiled, **options: Any) -> list[dict[str, Any]]:
    """find.search in-process (as QIDO-RS calls it), on the store's own event loop."""

    async def collect() -> list[dict[str, Any]]:
        return [d async for d in find.search(store.store.db, compiled, **options)]

    return asyncio.run_coroutine_threadsafe(collect(), store.loop).result(60)


@pytest.mark.parametrize("level", list(Level))
def test_in_process_search_pages_through_every_level_without_gaps_or_repeats(
    store: StoreThread, cat: dict[str, str], level: Level
) -> None:
    compiled = matching.compile_query(level, [("PatientName", "*")])
    whole = _search(store, compiled)
    assert len(whole) >= 4
    assert _search(store, compiled, page_rows=1) == whole
    assert _search(store, compiled, page_rows=3, limit=3, offset=1) == whole[1:4]
    # The gRPC door answers the same datasets in the same order.
    stub = pb_grpc.SeriesStoreStub(store.channel())
    assert query(stub, int(level), [("PatientName", "*")])[0] == whole
