"""Bad updates are rejected alone, naming the field; the stream and its neighbours go on."""

# ruff: noqa: F811  (fixtures are imported from st_harness: pytest finds them by name)

from __future__ import annotations

import grpc
import pytest
from st_harness import (  # noqa: F401 (fixtures)
    StoreThread,
    make_update,
    migrated_url,
    rows,
    running_store,
    send,
    uid,
)

from seriesflow.v1 import series_store_pb2 as pb


def _bad(field: str) -> pb.SeriesUpdate:
    series = uid()
    update = make_update(series, [f"{series}.1", f"{series}.2"], update_id=f"bad-{field}")
    if field == "update_id":
        update.update_id = "  "
    elif field == "series.series_instance_uid":
        update.series.series_instance_uid = ""
    elif field == "study.study_instance_uid":
        update.study.study_instance_uid = "1.2.abc"
    elif field == "instances[1].sop_instance_uid":
        update.instances[1].sop_instance_uid = "1." + "2" * 70
    elif field == "instances":
        del update.instances[:]
    elif field == "patient.patient_name":
        update.patient.patient_name = "Doe\x00Jane"
    elif field == "series.series_description":
        update.series.series_description = "abc\x00"
    elif field == "representative_header_json":
        update.representative_header_json = '{"00100010": {"vr": "PN", "Value": ["\\u0000"]}}'
    elif field == "instances[0].size_bytes":
        update.instances[0].size_bytes = -1
    elif field == "instances[1].received_at":
        update.instances[1].received_at.seconds = 10**12  # year ~33658
    return update


FIELDS = [
    "update_id",
    "series.series_instance_uid",
    "study.study_instance_uid",
    "instances[1].sop_instance_uid",
    "instances",
    "patient.patient_name",
    "series.series_description",
    "representative_header_json",
    "instances[0].size_bytes",
    "instances[1].received_at",
]


@pytest.mark.parametrize("field", FIELDS)
def test_invalid_update_is_rejected_naming_the_field(
    running_store: StoreThread, field: str
) -> None:
    good = uid()
    updates = [
        make_update(good, [f"{good}.1"], update_id="before"),
        _bad(field),
        make_update(good, [f"{good}.2"], update_id="after"),
    ]
    acks = {a.update_id: a for a in send(running_store.channel(), updates)}
    assert len(acks) == 3
    bad = acks[updates[1].update_id]
    assert not bad.ok
    assert bad.error.kind == pb.AckError.KIND_INVALID
    assert bad.error.field == field
    assert field in bad.error.message
    assert acks["before"].ok and acks["after"].ok and acks["after"].num_instances == 2
    url = running_store.store.db.url
    assert rows(url, "SELECT count(*) FROM series") == [(1,)]


def test_undecodable_message_is_rejected_and_the_stream_continues(
    running_store: StoreThread,
) -> None:
    good = uid()
    first = make_update(good, [f"{good}.1"], update_id="first").SerializeToString()
    last = make_update(good, [f"{good}.2"], update_id="last").SerializeToString()
    # update_id "broken" then series (field 4) holding invalid UTF-8 in series_description.
    inner = b"\x22\x03\xff\xfe\x00"
    broken = b"\x0a\x06broken" + b"\x22" + bytes([len(inner)]) + inner
    call = running_store.channel().stream_stream(
        "/seriesflow.v1.SeriesStore/StoreSeries",
        request_serializer=lambda b: b,
        response_deserializer=pb.SeriesAck.FromString,
    )
    acks = {a.update_id: a for a in call(iter([first, broken, last]), timeout=60)}
    assert set(acks) == {"first", "broken", "last"}
    assert not acks["broken"].ok
    assert acks["broken"].error.kind == pb.AckError.KIND_INVALID
    assert "UTF-8" in acks["broken"].error.message
    assert acks["last"].ok and acks["last"].num_instances == 2


def test_nul_bytes_never_reach_postgresql(running_store: StoreThread) -> None:
    series = uid()
    update = make_update(series, [f"{series}.1"])
    update.patient.patient_id = "P\x00"
    [ack] = send(running_store.channel(), [update])
    assert not ack.ok and ack.error.field == "patient.patient_id"
    url = running_store.store.db.url
    assert rows(url, "SELECT count(*) FROM patients") == [(0,)]
    metrics = running_store.metrics_text()
    assert 'seriesflow_store_updates_total{result="invalid"} 1.0' in metrics


def test_bad_update_does_not_end_a_stream_of_many(running_store: StoreThread) -> None:
    updates = []
    for i in range(60):
        s = uid()
        u = make_update(s, [f"{s}.1"], update_id=f"u{i}")
        if i % 7 == 3:
            u.instances[0].sop_instance_uid = "not-a-uid"
        updates.append(u)
    acks = send(running_store.channel(), updates)
    assert len(acks) == 60
    assert sum(1 for a in acks if not a.ok) == len([i for i in range(60) if i % 7 == 3])
    with pytest.raises(grpc.RpcError):  # sanity: the helper really raises on call errors
        send(running_store.channel(), [None])  # type: ignore[list-item]


def test_update_postgresql_refuses_is_rejected_alone_in_its_batch(
    running_store: StoreThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defence in depth: if validation ever lets through something PostgreSQL refuses, the
    batch is retried update by update and only the culprit is rejected."""
    from seriesflow.store import stream
    from seriesflow.store.validation import validate as real_validate

    def lax_validate(update: pb.SeriesUpdate, **kwargs: object) -> object:
        name = update.patient.patient_name
        update.patient.patient_name = name.replace("\x00", "")
        valid = real_validate(update, **kwargs)  # type: ignore[arg-type]
        valid.patient["patient_name"] = name  # smuggle the NUL past validation
        return valid

    monkeypatch.setattr(stream, "validate", lax_validate)
    updates = []
    for i in range(20):
        s = uid()
        u = make_update(s, [f"{s}.1"], update_id=f"u{i}", patient_id=f"P{i}")
        if i == 7:
            u.patient.patient_name = "Nul\x00Name"
        updates.append(u)
    acks = {a.update_id: a for a in send(running_store.channel(), updates)}
    assert len(acks) == 20
    assert not acks["u7"].ok and acks["u7"].error.kind == pb.AckError.KIND_INVALID
    assert all(acks[f"u{i}"].ok for i in range(20) if i != 7)
    url = running_store.store.db.url
    assert rows(url, "SELECT count(*) FROM series") == [(19,)]


def test_header_with_a_number_beyond_a_double_keeps_it_as_text(
    running_store: StoreThread, migrated_url: str
) -> None:
    """1e400 is valid JSON that Python would read as Infinity (not JSON, refused by
    jsonb): it is kept as the string "1e400" and the update stored (see also
    test_poison_values for NaN and Infinity)."""
    s = uid()
    update = make_update(s, [f"{s}.1"], header='{"00280030": {"vr": "DS", "Value": [1e400]}}')
    [ack] = send(running_store.channel(), [update])
    assert ack.ok and ack.num_instances == 1
    assert rows(
        migrated_url,
        "SELECT representative_header->'00280030'->'Value' FROM series"
        " WHERE series_instance_uid = %s",
        s,
    ) == [(["1e400"],)]
