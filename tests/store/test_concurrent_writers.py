"""Two store processes writing the same series at the same moment: exact counts."""

# ruff: noqa: F811  (fixtures are imported from st_harness: pytest finds them by name)

from __future__ import annotations

import random
import threading

import grpc
from st_harness import (  # noqa: F401 (fixtures)
    StoreProcess,
    StoreThread,
    make_update,
    migrated_url,
    rows,
    send,
    store_config,
    uid,
)

from seriesflow.v1 import series_store_pb2 as pb


def test_two_store_processes_on_one_series_count_each_instance_exactly_once(
    migrated_url: str,
) -> None:
    series, other = uid(), uid()
    sops = [f"{series}.{n}" for n in range(1, 1201)]
    # The second series shares some SOP UIDs with the first: the conflict path runs under
    # contention too, and must neither deadlock nor double count.
    other_sops = [f"{other}.{n}" for n in range(1, 201)] + sops[::50]
    process = StoreProcess(migrated_url)
    local = StoreThread(store_config(migrated_url), migrated_url)
    errors: list[BaseException] = []
    acks: list[pb.SeriesAck] = []
    lock = threading.Lock()

    def writer(address: str, seed: int) -> None:
        rng = random.Random(seed)
        mine = sops[:]
        rng.shuffle(mine)  # every writer sends every instance, each in its own order
        updates = [
            make_update(series, mine[i : i + 40], reason=pb.COMPLETION_REASON_MAX_AGE)
            for i in range(0, len(mine), 40)
        ]
        theirs = other_sops[:]
        rng.shuffle(theirs)
        updates += [make_update(other, theirs[i : i + 25]) for i in range(0, len(theirs), 25)]
        rng.shuffle(updates)
        try:
            with grpc.insecure_channel(address) as ch:
                got = send(ch, updates)
            with lock:
                acks.extend(got)
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [
            threading.Thread(target=writer, args=(addr, seed))
            for seed, addr in enumerate([process.address, local.address] * 3)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors
        assert len(acks) == 6 * (30 + 9) and all(a.ok for a in acks)
        # Each series' counters equal the rows it really holds, and together they hold
        # every distinct SOP UID exactly once (1,200 + 200; shared UIDs went to one of them).
        stored = rows(
            migrated_url,
            """SELECT s.series_instance_uid, s.num_instances, s.total_size_bytes,
                      count(i.*), COALESCE(sum(i.size_bytes), 0)
               FROM series s LEFT JOIN instances i ON i.series_fk = s.id
               GROUP BY s.id ORDER BY 1""",
        )
        assert len(stored) == 2
        for _uid, count, size, actual_count, actual_size in stored:
            assert (count, size) == (actual_count, actual_size)
        assert sum(r[1] for r in stored) == len(set(sops) | set(other_sops)) == 1400
        conflicts = rows(migrated_url, "SELECT count(*) FROM merge_conflicts")[0][0]
        assert conflicts == len(sops[::50])
    finally:
        local.stop()
        code, _ = process.terminate()
        assert code == 0
