"""QIDO-RS (store.qido) and the API documentation (store.apidocs) against a real store.

Searches go through dicomweb-client (PyPI), a DICOMweb client no one here wrote, and
through raw HTTP where status codes and headers are the point. The catalog is written
over StoreSeries, as receivers write it.
"""

# ruff: noqa: F811  (fixtures are imported from st_harness: pytest finds them by name)

from __future__ import annotations

import http.client
import io
import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import require_tool
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from st_harness import (  # noqa: F401 (fixtures)
    ROOT,
    StoreThread,
    fresh_database,
    make_update,
    migrated_url,
    send,
    store_config,
    uid,
)

from seriesflow.store import apidocs
from seriesflow.v1 import series_store_pb2 as pb
from seriesflow.v1 import series_store_pb2_grpc as pb_grpc

YAMADA = "Yamada^Tarou=山田^太郎=やまだ^たろう"
GARCIA = "GARCÍA^José"
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
PATIENT_NAME, STUDY_DATE, MODALITY = "00100010", "00080020", "00080060"
BIG = 7  # instances of series d: enough to page through
READ_TOKEN = "read-" + "r" * 40
WRITE_TOKEN = "write-" + "w" * 40


def _header(**elements: tuple[str, Any]) -> str:
    return json.dumps(
        {tag: {"vr": vr, "Value": [value]} for tag, (vr, value) in elements.items()},
        ensure_ascii=False,
    )


def png_bytes(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (width, height), 99).save(out, "PNG")
    return out.getvalue()


def preview_report(series: str, sop: str, png: bytes = b"", failure: str = "") -> pb.SeriesUpdate:
    size = Image.open(io.BytesIO(png)).size if png else (0, 0)
    return pb.SeriesUpdate(
        update_id=uuid.uuid4().hex,
        series=pb.SeriesAttributes(series_instance_uid=series),
        source=pb.Source(receiver_id="r0"),
        preview=pb.SeriesPreview(
            series_instance_uid=series,
            sop_instance_uid=sop,
            png=png,
            width=size[0],
            height=size[1],
            failure_reason=failure,
        ),
    )


@pytest.fixture(scope="module")
def store(postgres_server_url: str) -> Iterator[StoreThread]:
    with fresh_database(postgres_server_url) as url:
        thread = StoreThread(store_config(url, store_http_port=0), url)
        try:
            yield thread
        finally:
            thread.stop()


@pytest.fixture(scope="module")
def cat(store: StoreThread) -> dict[str, str]:
    """Three patients (one Japanese, one accented), three studies, four series."""
    ids = {k: uid() for k in ("s1", "s2", "s3", "a", "b", "c", "d")}
    plan = [
        # series, study, patient id, name, modality, description, n instances
        ("a", "s1", "P1", "Doe^Jane", "CT", "Axial 5mm", 3),
        ("b", "s1", "P1", "Doe^Jane", "MR", "Scout", 1),
        ("c", "s2", "P2", YAMADA, "MR", "T1 axial", 2),
        ("d", "s3", "P3", GARCIA, "CT", "Abdomen", BIG),
    ]
    studies = {  # date, accession, description
        "s1": ("20240115", "ACC1", "CHEST CT"),
        "s2": ("20240220", "ACC2", "頭部 MRI"),
        "s3": ("20231231", "ACC3", "ABDOMEN"),
    }
    updates = []
    for key, study, patient, name, modality, description, count in plan:
        s = ids[key]
        update = make_update(
            s,
            [f"{s}.{n}" for n in range(1, count + 1)],
            study_uid=ids[study],
            patient_id=patient,
            patient_name=name,
            modality=modality,
            series_description=description,
            series_number=ord(key) - ord("a") + 1,
            header=_header(**{"00101010": ("AS", "045Y"), "00180050": ("DS", "5")}),
        )
        date, accession, study_description = studies[study]
        update.study.study_date = date
        update.study.accession_number = accession
        update.study.study_description = study_description
        updates.append(update)
    acks = send(store.channel(), updates)
    acks += send(store.channel(), [preview_report(ids["a"], f"{ids['a']}.2", png_bytes(40, 30))])
    acks += send(
        store.channel(), [preview_report(ids["b"], f"{ids['b']}.1", failure="no_pixel_data")]
    )
    assert all(a.ok for a in acks), acks
    return ids


def base(store: StoreThread) -> str:
    return f"http://127.0.0.1:{store.store.http_port}"


@pytest.fixture(scope="module")
def client(store: StoreThread) -> DICOMwebClient:
    return DICOMwebClient(url=base(store))


def get(
    store: StoreThread, path: str, accept: str | None = None, token: str | None = None
) -> requests.Response:
    headers = {} if accept is None else {"Accept": accept}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return requests.get(base(store) + path, headers=headers, timeout=30)


def value(dataset: dict[str, Any], tag: str) -> Any:
    return dataset[tag].get("Value")


def uids(datasets: Sequence[dict[str, Any]], tag: str) -> set[str]:
    return {value(d, tag)[0] for d in datasets}


# -- searching with dicomweb-client ---------------------------------------------------------


def test_dicomweb_client_finds_studies_by_wildcard_and_date_range(
    client: DICOMwebClient, cat: dict[str, str]
) -> None:
    found = client.search_for_studies(search_filters={"PatientName": "doe*"})
    assert uids(found, STUDY_UID) == {cat["s1"]}
    found = client.search_for_studies(search_filters={"StudyDate": "20240101-20241231"})
    assert uids(found, STUDY_UID) == {cat["s1"], cat["s2"]}
    found = client.search_for_studies(search_filters={"StudyDate": "-20231231"})
    assert uids(found, STUDY_UID) == {cat["s3"]}
    found = client.search_for_studies(search_filters={"00080050": "ACC?"})  # by tag
    assert uids(found, STUDY_UID) == {cat["s1"], cat["s2"], cat["s3"]}
    assert client.search_for_studies(search_filters={"AccessionNumber": "NONE*"}) == []


def test_a_study_match_holds_the_attributes_of_table_10_6_3_3(
    client: DICOMwebClient, cat: dict[str, str]
) -> None:
    [study] = client.search_for_studies(search_filters={"StudyInstanceUID": cat["s1"]})
    for tag in ("00080020", "00080030", "00080050", "00080061", "00080090", "00100010",
                "00100020", "00100030", "00100040", "0020000D", "00200010", "00201206",
                "00201208"):  # fmt: skip
        assert tag in study, tag
    assert value(study, "00080061") == ["CT", "MR"]  # ModalitiesInStudy
    assert value(study, "00201206") == [2] and value(study, "00201208") == [4]
    assert value(study, PATIENT_NAME) == [{"Alphabetic": "Doe^Jane"}]
    assert study[STUDY_DATE] == {"vr": "DA", "Value": ["20240115"]}


def test_dicomweb_client_searches_a_studys_series_and_a_series_instances(
    client: DICOMwebClient, cat: dict[str, str]
) -> None:
    series = client.search_for_series(cat["s1"])
    assert uids(series, SERIES_UID) == {cat["a"], cat["b"]}
    assert all("00201209" in s and MODALITY in s for s in series)
    mr = client.search_for_series(cat["s1"], search_filters={"Modality": "MR"})
    assert uids(mr, SERIES_UID) == {cat["b"]}
    instances = client.search_for_instances(cat["s1"], cat["a"])
    assert [value(i, "00200013")[0] for i in instances] == [1, 2, 3]
    assert uids(instances, SOP_UID) == {f"{cat['a']}.{n}" for n in (1, 2, 3)}
    assert all(value(i, "00080016") == ["1.2.840.10008.5.1.4.1.1.2"] for i in instances)
    in_study = client.search_for_instances(cat["s1"])
    assert len(in_study) == 4
    assert all(SERIES_UID in i and MODALITY in i for i in in_study)  # series attributes


def test_all_series_carry_study_attributes_and_all_instances_study_and_series_ones(
    client: DICOMwebClient, cat: dict[str, str]
) -> None:
    series = client.search_for_series(search_filters={"PatientID": "P2"})
    assert uids(series, SERIES_UID) == {cat["c"]}
    [one] = series
    assert value(one, "00081030") == ["頭部 MRI"] and value(one, STUDY_DATE) == ["20240220"]
    assert value(one, "00080050") == ["ACC2"]
    instances = client.search_for_instances(search_filters={"SeriesInstanceUID": cat["c"]})
    assert len(instances) == 2
    for instance in instances:
        assert value(instance, "00080050") == ["ACC2"]  # study
        assert value(instance, MODALITY) == ["MR"] and "0008103E" in instance  # series
    # The study-level-only aggregates are not computed per series.
    assert "00201206" not in one


def test_includefield_adds_attributes_repeated_comma_separated_or_all(
    client: DICOMwebClient, store: StoreThread, cat: dict[str, str]
) -> None:
    [series] = client.search_for_series(
        cat["s1"], search_filters={"SeriesInstanceUID": cat["a"]}, fields=["PatientAge"]
    )
    assert value(series, "00101010") == ["045Y"]  # from the representative header
    response = get(
        store,
        f"/studies/{cat['s1']}/series?SeriesInstanceUID={cat['a']}"
        "&includefield=PatientAge,00180050&includefield=StationName",
    )
    [series] = response.json()
    assert value(series, "00101010") == ["045Y"] and value(series, "00180050") == ["5"]
    assert series["00081010"] == {"vr": "SH"}  # catalogued, no value
    [everything] = client.search_for_series(
        cat["s1"], search_filters={"SeriesInstanceUID": cat["a"]}, fields=["all"]
    )
    assert value(everything, "00101010") == ["045Y"] and "00081090" in everything
    assert "00180050" in everything  # SliceThickness: a header attribute of the series


def test_limit_and_offset_page_through_one_order(
    client: DICOMwebClient, store: StoreThread, cat: dict[str, str]
) -> None:
    whole = client.search_for_instances(cat["s3"], cat["d"])
    assert [value(i, "00200013")[0] for i in whole] == list(range(1, BIG + 1))
    pages = [
        client.search_for_instances(cat["s3"], cat["d"], limit=3, offset=offset)
        for offset in range(0, BIG, 3)
    ]
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [i for p in pages for i in p] == whole
    # dicomweb-client's get_remaining pages with offset until an empty answer (our 204).
    assert client.search_for_instances(cat["s3"], cat["d"], limit=2, get_remaining=True) == whole
    instances = f"/studies/{cat['s3']}/series/{cat['d']}/instances"
    assert get(store, f"{instances}?offset={BIG}").status_code == 204
    # limit is an unsigned integer; 0 asks for no results (PS3.18 8.3.4.4.1).
    assert get(store, f"{instances}?limit=0").status_code == 204
    assert get(store, f"/studies/{uid()}/series?limit=0").status_code == 404


def test_fuzzy_matching_ignores_case_accents_and_word_order(
    client: DICOMwebClient, cat: dict[str, str]
) -> None:
    found = client.search_for_studies(
        search_filters={"PatientName": "jose garcia"}, fuzzymatching=True
    )
    assert uids(found, STUDY_UID) == {cat["s3"]}
    assert client.search_for_studies(search_filters={"PatientName": "jose garcia"}) == []


def test_japanese_and_accented_names_come_back_in_utf8_json(
    store: StoreThread, cat: dict[str, str]
) -> None:
    response = get(store, "/studies?PatientName=山田*")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/dicom+json"
    assert "山田^太郎".encode() in response.content  # UTF-8, not \\u escapes
    [study] = json.loads(response.content.decode("utf-8"))
    assert value(study, PATIENT_NAME) == [
        {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}
    ]
    [study] = get(store, "/studies?PatientName=GARCÍA*").json()
    assert value(study, PATIENT_NAME) == [{"Alphabetic": GARCIA}]
    assert (
        GARCIA.encode()
        in get(store, f"/studies/{cat['s3']}/series?includefield=PatientName").content
    )


# -- status codes and headers ---------------------------------------------------------------


def test_no_match_is_204_without_a_body(store: StoreThread, cat: dict[str, str]) -> None:
    response = get(store, "/studies?PatientID=NOBODY")
    assert (response.status_code, response.content) == (204, b"")
    response = get(store, f"/studies/{cat['s1']}/series?Modality=US")  # known study
    assert response.status_code == 204


def test_head_answers_the_status_and_headers_of_get_without_a_body(
    store: StoreThread, cat: dict[str, str]
) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", store.store.http_port, timeout=10)
    try:
        for path, status in (("/studies?PatientAge=1", 200), ("/studies?PatientID=NOBODY", 204)):
            connection.request("HEAD", path)
            response = connection.getresponse()
            assert response.status == status and response.read() == b"", path
            if status == 200:
                assert "PatientAge" in response.getheader("Warning", ""), path
        # The connection is still in step: the next answer is the next request's.
        connection.request("GET", f"/studies?StudyInstanceUID={cat['s1']}")
        response = connection.getresponse()
        assert response.status == 200 and uids(json.loads(response.read()), STUDY_UID) == {
            cat["s1"]
        }
    finally:
        connection.close()


def test_malformed_queries_are_400_naming_what_is_wrong(store: StoreThread) -> None:
    cases = {
        "/studies?StudyDate=20240230": "query key 'StudyDate'",
        "/studies?StudyDate=20241231-20240101": "ends before it starts",
        "/studies?NoSuchKeyword=1": "NoSuchKeyword",
        "/studies?includefield=NoSuchKeyword": "includefield",
        "/studies?includefield=00100010&PatientName=Doe\\a\\b\\c\\d" + "\\x" * 1000: "at most",
        "/studies?limit=-1": "limit",
        "/studies?limit=\uff11": "limit",  # FULLWIDTH DIGIT ONE: isdigit() to Python
        "/studies?limit=ten": "limit",
        "/studies?offset=x": "offset",
        "/studies?fuzzymatching=maybe": "fuzzymatching",
        "/studies?PatientID=a&PatientID=b": "more than once",
        "/series?StudyInstanceUID=1.2.x": "StudyInstanceUID",
        "/studies/not-a-uid/series": "not a DICOM UID",
    }
    for path, named in cases.items():
        response = get(store, path)
        assert response.status_code == 400, (path, response.text)
        assert named in response.json()["error"], (path, response.text)


def test_an_unknown_study_or_series_in_the_path_is_404(
    store: StoreThread, cat: dict[str, str]
) -> None:
    assert get(store, f"/studies/{uid()}/series").status_code == 404
    assert get(store, f"/studies/{uid()}/instances").status_code == 404
    response = get(store, f"/studies/{cat['s1']}/series/{uid()}/instances")
    assert response.status_code == 404 and "no series" in response.json()["error"]
    # A series that exists, but in another study, is not in this one.
    assert get(store, f"/studies/{cat['s2']}/series/{cat['a']}/instances").status_code == 404
    assert get(store, f"/studies/{cat['s1']}/series/{cat['a']}/instances").status_code == 200


def test_unsupported_keys_and_parameters_are_named_in_warning_headers(
    store: StoreThread, cat: dict[str, str]
) -> None:
    response = get(
        store,
        f"/studies?StudyInstanceUID={cat['s1']}&PatientAge=045Y&Modality=CT"
        "&emptyvaluematching=true&ReferencedStudySequence.ReferencedSOPInstanceUID=1.2",
    )
    assert response.status_code == 200
    assert uids(response.json(), STUDY_UID) == {cat["s1"]}  # ran without them
    warnings = response.raw.headers.getlist("Warning")
    service = base(store)
    assert all(w.startswith(f'299 {service}: "') and w.endswith('"') for w in warnings), warnings
    text = "\n".join(warnings)
    assert "PatientAge" in text and "Modality" in text and "sequence matching" in text
    assert "The emptyvaluematching parameter is not supported" in text
    assert len(warnings) == 4
    clean = get(store, f"/studies?StudyInstanceUID={cat['s1']}&fuzzymatching=true")
    assert "Warning" not in clean.headers  # fuzzy matching is supported
    none = get(store, "/studies?PatientID=NOBODY&PatientAge=1")
    assert none.status_code == 204 and "PatientAge" in none.headers["Warning"]


def test_many_warnings_are_capped_and_summed_up(store: StoreThread) -> None:
    keys = "&".join(f"0009{n:04X}=x" for n in range(30))  # private tags: not catalogued
    response = get(store, f"/studies?PatientID=NOBODY&{keys}")
    assert response.status_code == 204
    warnings = response.raw.headers.getlist("Warning")
    assert len(warnings) == 21
    assert warnings[-1].endswith('"10 more warnings left out"')


def test_accept_is_negotiated_and_406_when_no_json_type_is_acceptable(store: StoreThread) -> None:
    def kind(accept: str | None) -> tuple[int, str]:
        response = get(store, "/studies", accept)
        return response.status_code, response.headers.get("Content-Type", "")

    assert kind(None) == (200, "application/dicom+json")
    assert kind("*/*") == (200, "application/dicom+json")
    assert kind("application/json") == (200, "application/json")
    assert kind("application/dicom+json, application/json") == (200, "application/dicom+json")
    assert kind("application/*;q=0.5, application/json") == (200, "application/json")
    assert kind('multipart/related; type="application/dicom+xml"')[0] == 406
    assert kind("application/dicom+json;q=0, application/json;q=0")[0] == 406
    response = get(store, "/studies?accept=application/json", "application/dicom+xml")
    assert response.headers["Content-Type"] == "application/json"  # the query parameter wins


# -- thumbnails --------------------------------------------------------------------------------


def test_thumbnail_and_rendered_are_the_series_preview_png(
    store: StoreThread, cat: dict[str, str]
) -> None:
    for resource in ("thumbnail", "rendered"):
        path = f"/studies/{cat['s1']}/series/{cat['a']}/{resource}"
        response = get(store, path, "image/png")
        assert (response.status_code, response.headers["Content-Type"]) == (200, "image/png")
        assert Image.open(io.BytesIO(response.content)).size == (40, 30)
        assert get(store, path, "image/*").status_code == 200
        assert get(store, path, "image/jpeg").status_code == 406
        # A series without a rendered preview: no content, and the reason in a Warning.
        none = get(store, f"/studies/{cat['s1']}/series/{cat['b']}/{resource}")
        assert none.status_code == 204 and "no_pixel_data" in none.headers["Warning"]
        pending = get(store, f"/studies/{cat['s2']}/series/{cat['c']}/{resource}")
        assert pending.status_code == 204 and "pending" in pending.headers["Warning"]
        assert get(store, f"/studies/{cat['s2']}/series/{cat['a']}/{resource}").status_code == 404
    ignored = get(store, f"/studies/{cat['s1']}/series/{cat['a']}/rendered?viewport=64,64")
    assert ignored.status_code == 200 and "viewport" in ignored.headers["Warning"]


# -- one engine ----------------------------------------------------------------------------


def test_qido_and_the_grpc_query_rpc_return_the_same_matches(
    store: StoreThread, client: DICOMwebClient, cat: dict[str, str]
) -> None:
    stub = pb_grpc.SeriesStoreStub(store.channel())

    def grpc_query(level: int, match: dict[str, str]) -> list[dict[str, Any]]:
        request = pb.QueryRequest(
            level=level,  # type: ignore[arg-type]
            match=[pb.QueryKey(key=k, value=v) for k, v in match.items()],
        )
        return [
            json.loads(m.dataset_json) for r in stub.Query(request, timeout=30) for m in r.matches
        ]

    cases: list[tuple[int, str, dict[str, str]]] = [
        (pb.QUERY_LEVEL_STUDY, STUDY_UID, {"PatientName": "*a*"}),
        (pb.QUERY_LEVEL_STUDY, STUDY_UID, {"StudyDate": "20240101-"}),
        (pb.QUERY_LEVEL_STUDY, STUDY_UID, {"ModalitiesInStudy": "MR"}),
        (pb.QUERY_LEVEL_SERIES, SERIES_UID, {"Modality": "CT"}),
        (pb.QUERY_LEVEL_SERIES, SERIES_UID, {"PatientName": "yamada*"}),
        (pb.QUERY_LEVEL_IMAGE, SOP_UID, {"InstanceNumber": "2"}),
        (pb.QUERY_LEVEL_IMAGE, SOP_UID, {"StudyInstanceUID": cat["s1"]}),
    ]
    search: dict[int, Callable[..., list[dict[str, Any]]]] = {
        pb.QUERY_LEVEL_STUDY: client.search_for_studies,
        pb.QUERY_LEVEL_SERIES: client.search_for_series,
        pb.QUERY_LEVEL_IMAGE: client.search_for_instances,
    }
    for level, key, match in cases:
        over_grpc = grpc_query(level, match)
        over_qido = search[level](search_filters=match)
        assert over_grpc, match  # each case matches something
        assert [value(d, key) for d in over_qido] == [value(d, key) for d in over_grpc], match
        # Same engine, same datasets: QIDO's are the gRPC ones plus the target's additions.
        for qido_dataset, grpc_dataset in zip(over_qido, over_grpc, strict=True):
            assert qido_dataset.items() >= grpc_dataset.items(), match


# -- authentication ---------------------------------------------------------------------------


def test_searches_need_a_read_token_when_tokens_are_configured_and_docs_do_not(
    migrated_url: str, tmp_path: Path
) -> None:
    write, read = tmp_path / "write", tmp_path / "read"
    write.write_text(WRITE_TOKEN + "\n")
    read.write_text(READ_TOKEN + "\n")
    config = store_config(
        migrated_url, store_http_port=0, grpc_write_tokens_file=write, grpc_read_tokens_file=read
    )
    store = StoreThread(config, migrated_url)
    try:
        for path in ("/studies", "/series", "/instances", f"/studies/{uid()}/series"):
            assert get(store, path).status_code == 401, path
            assert get(store, path, token="nope").status_code == 401, path
            assert get(store, path, token=WRITE_TOKEN).status_code == 403, path
        assert get(store, "/studies", token=READ_TOKEN).status_code == 204  # empty catalog
        assert get(store, f"/studies/{uid()}/series", token=READ_TOKEN).status_code == 404
        authed = DICOMwebClient(url=base(store), headers={"Authorization": f"Bearer {READ_TOKEN}"})
        assert authed.search_for_series() == []
        # The documentation holds no patient data and is open, so its page can load.
        assert get(store, "/openapi.json").status_code == 200
        assert get(store, "/docs").status_code == 200
        assert get(store, "/docs/static/swagger-ui.css").status_code == 200
        # A path that only looks like the static folder's is no way around the check.
        for sneaky in ("/docs/static/../studies", "/docs/static/%2e%2e/studies"):
            connection = http.client.HTTPConnection("127.0.0.1", store.store.http_port, timeout=10)
            connection.request("GET", sneaky)
            status = connection.getresponse().status
            connection.close()
            assert status in (401, 403, 404), (sneaky, status)
    finally:
        store.stop()


# -- OpenAPI --------------------------------------------------------------------------------


def test_the_served_openapi_document_is_the_committed_one(store: StoreThread) -> None:
    committed = (ROOT / "docs" / "openapi.json").read_text(encoding="utf-8")
    response = get(store, "/openapi.json")
    assert response.status_code == 200
    assert response.text == committed, (
        "docs/openapi.json is stale: python -m seriesflow.store.apidocs > docs/openapi.json"
    )
    assert json.loads(committed)["openapi"].startswith("3.1")


def test_every_route_is_documented_and_every_documented_route_exists(store: StoreThread) -> None:
    app = store.store._http.app  # type: ignore[union-attr]
    served: set[tuple[str, str]] = set()
    for resource in app.router.resources():
        if resource.canonical == apidocs.STATIC_PREFIX:
            continue  # Swagger UI's files, not an API
        for route in resource:
            if route.method != "HEAD":  # aiohttp adds HEAD to every GET
                served.add((route.method.lower(), resource.canonical))
    document = apidocs.document()
    documented = {(method, path) for path, item in document["paths"].items() for method in item}
    assert served == documented


def test_the_docs_page_loads_swagger_ui_from_the_store_not_a_cdn(store: StoreThread) -> None:
    page = get(store, "/docs")
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "http://" not in page.text and "https://" not in page.text
    import re

    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets)
    for asset in assets:
        response = get(store, "/" + asset)
        assert response.status_code == 200 and len(response.content) > 1000, asset
    # The bundle is Swagger UI 5, the first to render OpenAPI 3.1.
    bundle = (apidocs.swagger_ui_dir() / "swagger-ui-bundle.js").read_text(errors="replace")
    assert "isOAS31" in bundle


def test_urllib_reads_a_404_body_as_json(store: StoreThread) -> None:
    # Plain HTTP clients (no DICOMweb library) get a JSON reason with each error.
    try:
        urllib.request.urlopen(f"{base(store)}/studies/{uid()}/series", timeout=10)
    except urllib.error.HTTPError as exc:
        assert exc.code == 404
        assert json.loads(exc.read())["reason"] == "NotFound"
    else:
        raise AssertionError("expected 404")


# -- Orthanc's DICOMweb plugin as the client ----------------------------------------------

ORTHANC_DICOMWEB = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


class DicomWebOrthanc:
    """A private Orthanc (own folder and HTTP port, loopback only, no DICOM listener) whose
    DICOMweb plugin knows seriesflow's QIDO-RS base URL as the server "seriesflow"."""

    def __init__(self, binary: str, folder: Path, qido_url: str) -> None:
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.http_port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.http_port}"
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "seriesflow-qido-test",
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "index"),
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": False,
            "Plugins": [ORTHANC_DICOMWEB],
            "DicomWeb": {"Enable": True, "Servers": {"seriesflow": {"Url": qido_url}}},
        }
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.log = folder / "orthanc.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [binary, str(folder / "orthanc.json")], stdout=log, stderr=log, cwd=folder
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(self.log.read_text()[-2000:])
            try:
                requests.get(self.url + "/system", timeout=5).raise_for_status()
                return
            except requests.ConnectionError:
                time.sleep(0.1)
        self.stop()
        raise TimeoutError("Orthanc did not answer on its HTTP port")

    def qido(self, uri: str, arguments: dict[str, str]) -> Any:
        body = {"Uri": uri, "Arguments": arguments}
        answer = requests.post(
            self.url + "/dicom-web/servers/seriesflow/qido", json=body, timeout=60
        )
        assert answer.status_code == 200, (answer.status_code, answer.text)
        return answer.json()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def orthanc_uids(datasets: list[dict[str, Any]], tag: str) -> set[str]:
    """Orthanc hands QIDO answers back in its own form: {"Value": "text", "vr": ...}."""
    return {d[tag]["Value"] for d in datasets}


def test_orthanc_dicomweb_plugin_queries_seriesflow_as_a_dicomweb_server(
    store: StoreThread, cat: dict[str, str], tmp_path: Path
) -> None:
    binary = require_tool("Orthanc")
    assert Path(ORTHANC_DICOMWEB).exists(), "Debian's orthanc-dicomweb is not installed"
    orthanc = DicomWebOrthanc(binary, tmp_path / "orthanc", base(store) + "/")
    try:
        studies = orthanc.qido("/studies", {"PatientName": "doe*"})
        assert orthanc_uids(studies, STUDY_UID) == {cat["s1"]}
        assert studies[0][PATIENT_NAME]["Value"] == "Doe^Jane"
        studies = orthanc.qido("/studies", {"00080020": "20240101-", "includefield": "00081030"})
        assert orthanc_uids(studies, STUDY_UID) == {cat["s1"], cat["s2"]}
        assert orthanc_uids(studies, "00081030") == {"CHEST CT", "頭部 MRI"}
        series = orthanc.qido(f"/studies/{cat['s1']}/series", {"Modality": "CT"})
        assert orthanc_uids(series, SERIES_UID) == {cat["a"]}
        instances = orthanc.qido(f"/studies/{cat['s3']}/series/{cat['d']}/instances", {})
        assert orthanc_uids(instances, SOP_UID) == {f"{cat['d']}.{n}" for n in range(1, BIG + 1)}
        # Matched by its ideographic group; Orthanc's simplified form keeps the alphabetic
        # one (and drops IS numbers such as NumberOfStudyRelatedSeries: its limitation,
        # PS3.18 F.2.3 encodes IS as JSON numbers, which dicomweb-client reads above).
        [study] = orthanc.qido("/studies", {"PatientName": "山田*"})
        assert study[PATIENT_NAME]["Value"] == "Yamada^Tarou"
        assert study["00081030"]["Value"] == "頭部 MRI"
        # Not asked here: a search without matches. PS3.18 answers it 204 No Content, and
        # this Orthanc (1.10, DICOMweb plugin 1.7) reports an empty body as "Bad file
        # format" instead of an empty list.
    finally:
        orthanc.stop()
