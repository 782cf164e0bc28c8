"""Merge conflicts follow the documented rule (store.ingest), are counted and recorded."""

# ruff: noqa: F811  (fixtures are imported from st_harness: pytest finds them by name)

from __future__ import annotations

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


def test_instance_already_in_another_series_stays_with_the_first(
    running_store: StoreThread,
) -> None:
    first, second = uid(), uid()
    shared = f"{first}.7"
    ch = running_store.channel()
    send(ch, [make_update(first, [f"{first}.1", shared], update_id="a")])
    [ack] = send(ch, [make_update(second, [f"{second}.1", shared], update_id="b")])
    assert ack.ok and ack.num_instances == 1
    url = running_store.store.db.url
    assert rows(
        url,
        """SELECT s.series_instance_uid FROM instances i JOIN series s ON s.id = i.series_fk
           WHERE i.sop_instance_uid = %s""",
        shared,
    ) == [(first,)]
    assert rows(url, "SELECT series_instance_uid, num_instances FROM series ORDER BY 1") == sorted(
        [(first, 2), (second, 1)]
    )
    assert rows(
        url, "SELECT kind, subject_uid, kept_value, rejected_value, update_id FROM merge_conflicts"
    ) == [("instance_in_other_series", shared, first, second, "b")]
    metrics = running_store.metrics_text()
    assert 'seriesflow_store_merge_conflicts_total{kind="instance_in_other_series"} 1.0' in metrics
    assert 'seriesflow_store_instances_total{result="conflict"} 1.0' in metrics
    # Re-sending the conflicting update counts again but records no new row.
    send(ch, [make_update(second, [f"{second}.1", shared], update_id="b")])
    assert rows(url, "SELECT occurrences FROM merge_conflicts") == [(2,)]


def test_study_keeps_its_first_patient(running_store: StoreThread) -> None:
    study, s1, s2 = uid(), uid(), uid()
    ch = running_store.channel()
    send(ch, [make_update(s1, [f"{s1}.1"], study_uid=study, patient_id="FIRST")])
    [ack] = send(ch, [make_update(s2, [f"{s2}.1"], study_uid=study, patient_id="SECOND")])
    assert ack.ok
    url = running_store.store.db.url
    assert rows(
        url,
        """SELECT DISTINCT p.patient_id FROM series s JOIN studies st ON st.id = s.study_fk
           JOIN patients p ON p.id = st.patient_fk""",
    ) == [("FIRST",)]
    recorded = rows(
        url, "SELECT kind, subject_uid, kept_value, rejected_value FROM merge_conflicts"
    )
    assert recorded == [("study_patient_mismatch", study, "FIRST", "SECOND")]
    assert (
        'seriesflow_store_merge_conflicts_total{kind="study_patient_mismatch"} 1.0'
        in running_store.metrics_text()
    )


def test_conflicting_instance_within_one_batch_goes_to_one_series_only(
    running_store: StoreThread,
) -> None:
    a, b = uid(), uid()
    shared = f"{a}.99"
    acks = send(
        running_store.channel(),
        [
            make_update(a, [shared], reason=pb.COMPLETION_REASON_MAX_AGE),
            make_update(b, [shared], reason=pb.COMPLETION_REASON_MAX_AGE),
        ],
    )
    assert all(x.ok for x in acks)
    url = running_store.store.db.url
    assert rows(url, "SELECT sum(num_instances) FROM series") == [(1,)]
    assert rows(url, "SELECT count(*) FROM merge_conflicts") == [(1,)]
