"""Poison values never poison: one update's data costs only that update.

Long incompressible text is stored exactly and found by the filters (its indexes hold a
hash); PostgreSQL refusing one update's data rejects it alone as INVALID; sizes that would
overflow a series' totals are rejected naming the field; NaN/Infinity in a representative
header are kept as strings; pages stay under gRPC clients' 4 MiB receive limit.
"""

# ruff: noqa: F811  (fixtures are imported from st_harness: pytest finds them by name)

from __future__ import annotations

import json
import random
import struct
import subprocess

import grpc
import psycopg
import pytest
from conftest import require_tool
from st_harness import (  # noqa: F401 (fixtures)
    StoreThread,
    make_update,
    migrated_url,
    rows,
    running_store,
    send,
    uid,
)

from seriesflow.store import matching, queries
from seriesflow.store.validation import MAX_INSTANCE_SIZE
from seriesflow.v1 import series_store_pb2 as pb
from seriesflow.v1 import series_store_pb2_grpc as pb_grpc

MiB = 1024 * 1024


def noise(length: int, seed: int, *, cjk: float = 0.3) -> str:
    """`length` characters of incompressible text (random letters and digits, a `cjk`
    share of CJK ideographs), so PostgreSQL cannot compress an index entry below the btree
    limit."""
    rng = random.Random(seed)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789^ -."
    return "".join(
        chr(rng.randrange(0x4E00, 0x9FFF)) if rng.random() < cjk else rng.choice(alphabet)
        for _ in range(length)
    )


def _stub(store: StoreThread) -> pb_grpc.SeriesStoreStub:
    return pb_grpc.SeriesStoreStub(store.channel())


def _ok(acks: list[pb.SeriesAck], count: int) -> None:
    assert [a.ok for a in acks] == [True] * count, acks


def test_long_incompressible_text_is_stored_exactly_and_found_by_every_filter(
    running_store: StoreThread, migrated_url: str
) -> None:
    s, study = uid(), uid()
    values = {
        "patient_id": noise(5_000, 1),
        "patient_name": noise(100_000, 2),
        "issuer_of_patient_id": noise(8_000, 3),
        "accession_number": noise(20_000, 4),
        "study_description": noise(50_000, 5),
        "modality": noise(6_000, 6),
        "series_description": noise(100_000, 7),
        "institution_name": noise(9_000, 8),
    }
    update = make_update(
        s,
        [f"{s}.1", f"{s}.2"],
        study_uid=study,
        patient_id=values["patient_id"],
        patient_name=values["patient_name"],
        modality=values["modality"],
        series_description=values["series_description"],
        institution_name=values["institution_name"],
    )
    update.patient.issuer_of_patient_id = values["issuer_of_patient_id"]
    update.study.accession_number = values["accession_number"]
    update.study.study_description = values["study_description"]
    normal_series = uid()
    normal = make_update(normal_series, [f"{normal_series}.1"])

    # One stream: the long update and a normal one after it are both stored.
    acks = send(running_store.channel(), [update, normal])
    _ok(acks, 2)
    assert {a.update_id: a.num_instances for a in acks}[update.update_id] == 2

    [stored] = rows(
        migrated_url,
        """SELECT p.patient_id, p.patient_name, p.issuer_of_patient_id, st.accession_number,
                  st.study_description, s.modality, s.series_description, s.institution_name
           FROM series s JOIN studies st ON st.id = s.study_fk
           JOIN patients p ON p.id = s.patient_fk
           WHERE s.series_instance_uid = %s""",
        s,
    )
    assert list(stored) == list(values.values())  # exactly as received, not cut

    stub = _stub(running_store)
    by_patient = stub.ListSeries(pb.ListSeriesRequest(patient_id=values["patient_id"]))
    assert [x.series_instance_uid for x in by_patient.series] == [s]
    assert by_patient.series[0].patient_name == values["patient_name"]
    by_modality = stub.ListSeries(pb.ListSeriesRequest(modality=values["modality"]))
    assert [x.series_instance_uid for x in by_modality.series] == [s]
    # A filter one character short of the stored value finds nothing: equality is exact.
    near = stub.ListSeries(pb.ListSeriesRequest(modality=values["modality"][:-1]))
    assert list(near.series) == []
    studies = stub.ListStudies(pb.ListStudiesRequest(accession_number=values["accession_number"]))
    assert [x.study_instance_uid for x in studies.studies] == [study]
    patients = stub.ListPatients(pb.ListPatientsRequest(patient_id=values["patient_id"]))
    assert [p.issuer_of_patient_id for p in patients.patients] == [values["issuer_of_patient_id"]]

    # The same patient again (same long identity) merges into the same row; a normal
    # update after everything is stored.
    again = make_update(
        s, [f"{s}.3"], study_uid=study, patient_id=values["patient_id"], modality="CT"
    )
    again.patient.issuer_of_patient_id = values["issuer_of_patient_id"]
    later_series = uid()
    acks = send(running_store.channel(), [again, make_update(later_series, [f"{later_series}.1"])])
    _ok(acks, 2)
    assert {a.update_id: a.num_instances for a in acks}[again.update_id] == 3
    assert rows(
        migrated_url, "SELECT count(*) FROM patients WHERE patient_id = %s", values["patient_id"]
    ) == [(1,)]
    assert rows(
        migrated_url,
        "SELECT num_instances FROM series WHERE series_instance_uid = %s",
        later_series,
    ) == [(1,)]


@pytest.mark.parametrize(
    ("table", "keyword", "index"),
    [
        ("series s", "Modality", "series_modality_keyset"),
        ("studies st", "AccessionNumber", "studies_accession_number"),
        ("patients p", "PatientID", "patients_identity_key"),
    ],
)
def test_each_text_filter_is_an_index_scan(
    migrated_url: str, table: str, keyword: str, index: str
) -> None:
    # The exact-match condition the list RPCs, Query and QIDO-RS all use (store.matching).
    alias = table.split()[1]
    params = matching.Params()
    condition = matching.compile_filter(keyword, noise(5_000, 9), keyword, params)
    sql = (
        f"EXPLAIN SELECT {alias}.id FROM {table} WHERE {condition}"
        f" ORDER BY {alias}.id DESC LIMIT 101"
    )
    with psycopg.connect(migrated_url) as conn:
        conn.execute("SET enable_seqscan = off")  # tables are empty: force the choice
        plan = "\n".join(r[0] for r in conn.execute(sql, params.values).fetchall())
    assert index in plan, plan


def test_an_update_postgresql_refuses_is_rejected_alone_and_its_batch_goes_on(
    running_store: StoreThread, migrated_url: str
) -> None:
    # A plain btree index on a free-text column (as an operator might add): PostgreSQL
    # refuses a long value with SQLSTATE 54000, "index row size ... exceeds btree maximum".
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        conn.execute("CREATE INDEX operator_added ON series (station_name)")
        # and a CHECK constraint (class 23) PostgreSQL enforces on another column
        conn.execute(
            "ALTER TABLE series ADD CONSTRAINT operator_check CHECK (protocol_name <> 'REFUSED')"
        )
    before, long_one, checked, after = uid(), uid(), uid(), uid()
    updates = [
        make_update(before, [f"{before}.1", f"{before}.2"], update_id="before"),
        make_update(long_one, [f"{long_one}.1"], update_id="long", station_name=noise(3_000, 10)),
        make_update(checked, [f"{checked}.1"], update_id="checked", protocol_name="REFUSED"),
        make_update(after, [f"{after}.1"], update_id="after"),
    ]
    acks = {a.update_id: a for a in send(running_store.channel(), updates)}

    assert set(acks) == {"before", "long", "checked", "after"}
    assert acks["before"].ok and acks["before"].num_instances == 2
    assert acks["after"].ok and acks["after"].num_instances == 1
    for name, expected in (("long", "index row"), ("checked", "operator_check")):
        assert not acks[name].ok
        assert acks[name].error.kind == pb.AckError.KIND_INVALID
        assert expected in acks[name].error.message, acks[name].error.message
    stored = rows(migrated_url, "SELECT series_instance_uid FROM series ORDER BY 1")
    assert {r[0] for r in stored} == {before, after}
    # and the stream after it: a normal update is stored
    later = uid()
    _ok(send(running_store.channel(), [make_update(later, [f"{later}.1"])]), 1)


@pytest.mark.parametrize("size", [2**63 - 1, MAX_INSTANCE_SIZE + 1, -1, -(2**63)])
def test_an_instance_size_that_would_overflow_the_totals_is_rejected_naming_it(
    running_store: StoreThread, migrated_url: str, size: int
) -> None:
    s = uid()
    first = make_update(s, [f"{s}.1"], update_id="first")
    bad = make_update(s, [f"{s}.2", f"{s}.3"], update_id="bad")
    bad.instances[1].size_bytes = size
    following = make_update(s, [f"{s}.4"], update_id="following")

    acks = send(running_store.channel(), [first, bad, following])

    assert [a.update_id for a in acks if a.ok] == ["first", "following"]
    [rejected] = [a for a in acks if not a.ok]
    assert rejected.error.kind == pb.AckError.KIND_INVALID
    assert rejected.error.field == "instances[1].size_bytes"
    assert str(size) in rejected.error.message
    assert rows(
        migrated_url,
        "SELECT num_instances, total_size_bytes FROM series WHERE series_instance_uid = %s",
        s,
    ) == [(2, first.instances[0].size_bytes + following.instances[0].size_bytes)]


def test_a_series_total_saturates_instead_of_failing_every_later_update(
    running_store: StoreThread, migrated_url: str
) -> None:
    s = uid()
    _ok(send(running_store.channel(), [make_update(s, [f"{s}.1"])]), 1)
    rows(
        migrated_url,
        "UPDATE series SET total_size_bytes = 9223372036854775000"
        " WHERE series_instance_uid = %s RETURNING 1",
        s,
    )
    big = make_update(s, [f"{s}.2", f"{s}.3"])
    big.instances[0].size_bytes = big.instances[1].size_bytes = MAX_INSTANCE_SIZE
    _ok(send(running_store.channel(), [big]), 1)
    _ok(send(running_store.channel(), [make_update(s, [f"{s}.4"])]), 1)
    assert rows(
        migrated_url,
        "SELECT num_instances, total_size_bytes FROM series WHERE series_instance_uid = %s",
        s,
    ) == [(4, 2**63 - 1)]


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def test_an_int32_sent_out_of_range_on_the_wire_is_read_as_protobuf_defines(
    running_store: StoreThread, migrated_url: str
) -> None:
    """instance_number and series_number are int32 in the contract: protobuf keeps the low
    32 bits of a longer varint, so no value out of PostgreSQL's integer range can arrive."""
    s = uid()
    update = make_update(s, [f"{s}.7"], update_id="wide")
    update.series.ClearField("series_number")
    instance = update.instances[0]
    instance.ClearField("instance_number")
    wide = 2**40 + 5
    # Instance field 3 (instance_number) and SeriesAttributes field 3 (series_number), as
    # varints no int32 setter would produce.
    raw_instance = instance.SerializeToString() + b"\x18" + _varint(wide)
    raw_series = update.series.SerializeToString() + b"\x18" + _varint(-(2**40))
    del update.instances[:]
    update.ClearField("series")
    body = update.SerializeToString()
    for number, payload in ((4, raw_series), (5, raw_instance)):
        body += _varint(number << 3 | 2) + _varint(len(payload)) + payload
    assert pb.SeriesUpdate.DESCRIPTOR.fields_by_name["series"].number == 4
    assert pb.SeriesUpdate.DESCRIPTOR.fields_by_name["instances"].number == 5
    call = running_store.channel().stream_stream(
        "/seriesflow.v1.SeriesStore/StoreSeries",
        request_serializer=lambda b: b,
        response_deserializer=pb.SeriesAck.FromString,
    )
    later = uid()
    following = make_update(later, [f"{later}.1"]).SerializeToString()
    acks = list(call(iter([body, following]), timeout=60))
    _ok(acks, 2)
    low32 = struct.unpack("<i", struct.pack("<I", wide & 0xFFFFFFFF))[0]
    assert rows(
        migrated_url,
        """SELECT i.instance_number, s.series_number FROM instances i
           JOIN series s ON s.id = i.series_fk WHERE s.series_instance_uid = %s""",
        s,
    ) == [(low32, 0)]


NON_FINITE_HEADER = json.dumps(
    {
        "00189327": {"vr": "FD", "Value": ["NaN", "Infinity", "-Infinity", 1.5]},
        "00181320": {"vr": "FL", "Value": ["NaN"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
    }
)
# What an older receiver wrote (Python's json.dumps default): bare literals, not JSON.
LITERAL_HEADER = (
    '{"00189327":{"vr":"FD","Value":[NaN,Infinity,-Infinity,1.5]},'
    '"00181320":{"vr":"FL","Value":[NaN]},"00280030":{"vr":"DS","Value":[1e400,2]}}'
)


@pytest.mark.parametrize("header", [NON_FINITE_HEADER, LITERAL_HEADER], ids=["strings", "literals"])
def test_nan_and_infinity_in_a_header_are_stored_and_returned_as_strings(
    running_store: StoreThread, migrated_url: str, header: str
) -> None:
    s = uid()
    later = uid()
    acks = send(
        running_store.channel(),
        [make_update(s, [f"{s}.1"], header=header), make_update(later, [f"{later}.1"])],
    )
    _ok(acks, 2)

    answered = _stub(running_store).GetAttributes(
        pb.GetAttributesRequest(
            series_instance_uid=s, attributes=["TablePosition", "B1rms", "PixelSpacing"]
        )
    )
    table, b1, spacing = answered.attributes
    assert table.present and table.vr == "FD"
    assert json.loads(table.value_json) == ["NaN", "Infinity", "-Infinity", 1.5]
    assert table.value == "NaN\\Infinity\\-Infinity\\1.5"
    assert b1.value == "NaN"
    if header is LITERAL_HEADER:
        assert json.loads(spacing.value_json) == ["1e400", 2]  # beyond a double: as text
    [(stored,)] = rows(
        migrated_url,
        "SELECT representative_header::text FROM series WHERE series_instance_uid = %s",
        s,
    )
    assert "NaN" in stored and json.loads(stored)["00189327"]["Value"][0] == "NaN"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('{"00100010": nope}', "is not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"00100010": {"vr": "PN", "Value": [NaN', "is not valid JSON"),
        ('{"00100010": {"vr": "PN", "Value": ["\\u0000"]}}', "NUL"),
        ('{"00100010": {"vr": "PN", "Value": ["\\ud800"]}}', "unpaired surrogate"),
    ],
)
def test_real_garbage_in_a_header_is_still_rejected_alone(
    running_store: StoreThread, header: str, expected: str
) -> None:
    s, later = uid(), uid()
    acks = send(
        running_store.channel(),
        [make_update(s, [f"{s}.1"], header=header), make_update(later, [f"{later}.1"])],
    )
    assert not acks[0].ok and acks[0].error.field == "representative_header_json"
    assert expected in acks[0].error.message, acks[0].error.message
    assert acks[1].ok and acks[1].num_instances == 1


def _series_with_big_names(store: StoreThread, count: int, size: int) -> list[str]:
    made = []
    for n in range(count):
        s = uid()
        update = make_update(
            s,
            [f"{s}.1"],
            patient_id=f"BIG{n}",
            patient_name=noise(size, 100 + n),
            modality="MR",
        )
        _ok(send(store.channel(), [update]), 1)
        made.append(s)
    return made


def test_list_series_pages_stay_under_the_clients_receive_limit(running_store: StoreThread) -> None:
    made = _series_with_big_names(running_store, 6, MiB)
    stub = _stub(running_store)  # the Python client's receive limit is also 4 MiB
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = stub.ListSeries(pb.ListSeriesRequest(modality="MR", page_token=token))
        assert page.ByteSize() <= queries.RESPONSE_BUDGET + 4096
        assert 1 <= len(page.series) < 6
        seen += [x.series_instance_uid for x in page.series]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(made))  # newest first, each exactly once
    assert pages >= 2


def test_grpcurl_lists_series_with_one_mib_names(running_store: StoreThread) -> None:
    grpcurl = require_tool("grpcurl")
    made = _series_with_big_names(running_store, 5, MiB)

    def list_page(token: str) -> dict[str, object]:
        request = json.dumps({"modality": "MR", "pageToken": token})
        result = subprocess.run(
            [
                grpcurl,
                "-plaintext",
                "-d",
                request,
                running_store.address,
                "seriesflow.v1.SeriesStore/ListSeries",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        parsed = json.loads(result.stdout)
        assert isinstance(parsed, dict)
        return parsed

    seen: list[str] = []
    token = ""
    while True:
        page = list_page(token)
        series = page["series"]
        assert isinstance(series, list) and series
        seen += [x["seriesInstanceUid"] for x in series]
        token = str(page.get("nextPageToken", ""))
        if not token:
            break
    assert seen == list(reversed(made))


def test_a_row_larger_than_the_budget_comes_back_alone(running_store: StoreThread) -> None:
    small, big = uid(), uid()
    _ok(send(running_store.channel(), [make_update(small, [f"{small}.1"], modality="US")]), 1)
    huge = make_update(
        big, [f"{big}.1"], modality="US", series_description=noise(int(3.5 * MiB), 11, cjk=0)
    )
    _ok(send(running_store.channel(), [huge]), 1)
    stub = _stub(running_store)
    first = stub.ListSeries(pb.ListSeriesRequest(modality="US"))
    assert [x.series_instance_uid for x in first.series] == [big]
    assert first.next_page_token
    second = stub.ListSeries(pb.ListSeriesRequest(modality="US", page_token=first.next_page_token))
    assert [x.series_instance_uid for x in second.series] == [small]
    assert second.next_page_token == ""
    # A row over the budget but under the client's limit (3.5 of 4 MiB) still arrives;
    # GetSeries answers it too, with at least one instance.
    got = stub.GetSeries(pb.GetSeriesRequest(series_instance_uid=big))
    assert [i.sop_instance_uid for i in got.instances] == [f"{big}.1"]


def test_a_client_with_a_smaller_limit_gets_resource_exhausted_not_a_hang(
    running_store: StoreThread,
) -> None:
    """The budget is the store's; a client whose limit is below one row says so."""
    s = uid()
    _ok(
        send(
            running_store.channel(),
            [make_update(s, [f"{s}.1"], modality="XA", series_description=noise(MiB, 12))],
        ),
        1,
    )
    channel = grpc.insecure_channel(
        running_store.address, options=[("grpc.max_receive_message_length", 512 * 1024)]
    )
    try:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.SeriesStoreStub(channel).ListSeries(pb.ListSeriesRequest(modality="XA"))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        channel.close()


def test_a_conflict_about_long_patient_ids_is_recorded_once_per_claim(
    running_store: StoreThread, migrated_url: str
) -> None:
    study = uid()
    first_id, other_id = noise(5_000, 20), noise(5_000, 21)
    s1, s2 = uid(), uid()
    claims = [
        make_update(s1, [f"{s1}.1"], study_uid=study, patient_id=first_id),
        make_update(s2, [f"{s2}.1"], study_uid=study, patient_id=other_id),
        make_update(s2, [f"{s2}.2"], study_uid=study, patient_id=other_id),
    ]
    for update in claims:  # one at a time: the first names the study's patient
        _ok(send(running_store.channel(), [update]), 1)
    assert rows(
        migrated_url,
        "SELECT kind, kept_value = %s, rejected_value = %s, occurrences FROM merge_conflicts",
        first_id,
        other_id,
    ) == [("study_patient_mismatch", True, True, 2)]
    later = uid()
    _ok(send(running_store.channel(), [make_update(later, [f"{later}.1"])]), 1)


def test_a_header_nested_twice_as_deep_as_a_receiver_sends_is_stored(
    running_store: StoreThread,
) -> None:
    """The receiver sends headers of at most 64 sequence levels; 130 levels (391 JSON
    levels, which the store's recursive NUL scan refused before) are stored, and the top
    of the header is still answered."""
    item: dict[str, object] = {"00080100": {"vr": "SH", "Value": ["x"]}}
    for _ in range(130):
        item = {"0040A730": {"vr": "SQ", "Value": [item]}}
    item["00100010"] = {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]}
    s, later = uid(), uid()
    acks = send(
        running_store.channel(),
        [
            make_update(s, [f"{s}.1"], header=json.dumps(item)),
            make_update(later, [f"{later}.1"]),
        ],
    )
    _ok(acks, 2)
    [name] = (
        _stub(running_store)
        .GetAttributes(pb.GetAttributesRequest(series_instance_uid=s, attributes=["PatientName"]))
        .attributes
    )
    assert name.value == "Doe^Jane"


def test_every_text_field_of_an_update_may_be_long_at_once(
    running_store: StoreThread, migrated_url: str
) -> None:
    s = uid()
    update = make_update(s, [f"{s}.1"], update_id=noise(5_000, 30))
    long_fields = []
    for part in (update.patient, update.study, update.series, update.source):
        for field in part.DESCRIPTOR.fields:
            if field.type == field.TYPE_STRING and not field.name.endswith("instance_uid"):
                setattr(part, field.name, noise(5_000, 31 + len(long_fields)))
                long_fields.append(f"{part.DESCRIPTOR.name}.{field.name}")
    update.text_decoding_fallbacks.append(noise(5_000, 99))
    assert len(long_fields) >= 24  # every text field of the contract but the UIDs
    later = uid()
    acks = send(running_store.channel(), [update, make_update(later, [f"{later}.1"])])
    _ok(acks, 2)
    [(description, station, calling, fallbacks)] = rows(
        migrated_url,
        """SELECT series_description, station_name, source_ae_title, text_decoding_fallbacks
           FROM series WHERE series_instance_uid = %s""",
        s,
    )
    assert description == update.series.series_description
    assert station == update.series.station_name
    assert calling == update.source.calling_ae_title
    assert fallbacks == list(update.text_decoding_fallbacks)
