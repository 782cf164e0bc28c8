"""Turn a flushed group of spooled instance records into SeriesUpdates for the store."""

from __future__ import annotations

from collections.abc import Sequence

from seriesflow.receiver.tracker import Reason
from seriesflow.v1 import series_store_pb2 as pb

# Instances per update: keeps each message far below gRPC's 4 MiB default and each of the
# store's transactions short. A bigger group is sent as several updates.
MAX_INSTANCES_PER_UPDATE = 1000
# The most the store's gRPC server takes in one message (its max_receive_message_length).
# An update over it would break the stream at every re-send and block all delivery.
STORE_MESSAGE_LIMIT = 64 * 1024 * 1024

COMPLETION = {
    Reason.IDLE: pb.COMPLETION_REASON_IDLE,
    Reason.RELEASED: pb.COMPLETION_REASON_RELEASED,
    Reason.MAX_AGE: pb.COMPLETION_REASON_MAX_AGE,
}


def chunks(seqs: Sequence[int]) -> list[list[int]]:
    return [
        list(seqs[i : i + MAX_INSTANCES_PER_UPDATE])
        for i in range(0, len(seqs), MAX_INSTANCES_PER_UPDATE)
    ]


def merge(update_id: str, payloads: Sequence[bytes], completion: int) -> pb.SeriesUpdate:
    """One update from one-instance records of the same series.

    Attributes come from the latest record (a sender's correction wins); the representative
    header from the latest record that has one; fallbacks are the union of all records'.
    """
    if not payloads:
        raise ValueError("an update needs at least one instance")
    update = pb.SeriesUpdate()
    fallbacks: set[str] = set()
    header = header_uid = ""
    seen: set[str] = set()
    for payload in payloads:
        record = pb.SeriesUpdate.FromString(payload)
        for instance in record.instances:
            # One SOPInstanceUID sent twice in one group counts once (the store would dedupe
            # too, but an update should not contradict itself).
            if instance.sop_instance_uid not in seen:
                seen.add(instance.sop_instance_uid)
                update.instances.append(instance)
        fallbacks.update(record.text_decoding_fallbacks)
        if record.representative_header_json:
            header = record.representative_header_json
            header_uid = record.instances[0].sop_instance_uid if record.instances else ""
        last = record
    update.patient.CopyFrom(last.patient)
    update.study.CopyFrom(last.study)
    update.series.CopyFrom(last.series)
    update.source.CopyFrom(last.source)
    update.update_id = update_id
    update.completion_reason = completion  # type: ignore[assignment]
    update.representative_header_json = header
    update.representative_sop_instance_uid = header_uid
    update.text_decoding_fallbacks.extend(sorted(fallbacks))
    return update
