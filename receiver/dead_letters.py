"""`seriesflow receiver dead-letters [--replay] [UPDATE_ID...]`: list or re-send rejected updates.

An update the store rejected as INVALID is never dropped: it waits in the spool's
dead-letter table until someone looks at it (this command lists it with the store's reason)
and, once the cause is fixed (a store upgrade, a corrected rule), replays it.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Iterator
from typing import TextIO

import grpc

from seriesflow.receiver import client
from seriesflow.receiver.config import ReceiverConfig
from seriesflow.receiver.spool import DeadLetter, Spool
from seriesflow.v1 import series_store_pb2 as pb
from seriesflow.v1 import series_store_pb2_grpc as pb_grpc

_REPLAY_TIMEOUT_SECONDS = 60.0


def main(
    config: ReceiverConfig, replay: bool, update_ids: list[str], out: TextIO = sys.stdout
) -> int:
    """List (or replay) dead letters; exit 0 when all went well, 1 otherwise."""
    if not (config.spool_dir / "spool.sqlite3").exists():
        print(f"no spool in {config.spool_dir}: nothing was ever received here", file=out)
        return 0
    spool = Spool(config.spool_dir, config.spool_max_bytes)
    spool.open()
    try:
        letters = spool.dead_letters(update_ids)
        missing = sorted(set(update_ids) - {letter.update_id for letter in letters})
        for update_id in missing:
            print(f"no dead letter with update id {update_id}", file=out)
        if not replay:
            _print(letters, out)
            return 1 if missing else 0
        ok = _replay(config, spool, letters, out)
        return 0 if ok and not missing else 1
    finally:
        spool.close()


def _print(letters: list[DeadLetter], out: TextIO) -> None:
    if not letters:
        print("no dead letters", file=out)
        return
    print("update_id\trejected_at\tseries_instance_uid\tinstances\tkind\tfield\terror", file=out)
    for letter in letters:
        when = dt.datetime.fromtimestamp(letter.created_at, tz=dt.UTC).isoformat(timespec="seconds")
        print(
            f"{letter.update_id}\t{when}\t{letter.series_uid}\t{letter.num_instances}\t"
            f"{letter.error_kind}\t{letter.error_field}\t{letter.error_message}",
            file=out,
        )


def _replay(config: ReceiverConfig, spool: Spool, letters: list[DeadLetter], out: TextIO) -> bool:
    if not letters:
        print("no dead letters to replay", file=out)
        return True
    credentials = client.credentials(
        config.store_tls_ca, config.store_tls_cert, config.store_tls_key
    )
    if credentials is None:
        channel = grpc.insecure_channel(config.store_address)
    else:
        channel = grpc.secure_channel(config.store_address, credentials)
    updates = [pb.SeriesUpdate.FromString(letter.payload) for letter in letters]
    metadata = client.call_metadata(client.read_token(config.store_token_file))

    def requests() -> Iterator[pb.SeriesUpdate]:
        yield from updates

    all_ok = True
    answered: set[str] = set()
    try:
        stub = pb_grpc.SeriesStoreStub(channel)  # type: ignore[no-untyped-call]
        acks = stub.StoreSeries(requests(), timeout=_REPLAY_TIMEOUT_SECONDS, metadata=metadata)
        for ack in acks:
            answered.add(ack.update_id)
            if ack.ok:
                spool.delete_dead_letter(ack.update_id)
                print(f"{ack.update_id}\treplayed\t{ack.num_instances} instances", file=out)
            else:
                all_ok = False
                print(
                    f"{ack.update_id}\tstill rejected\t{ack.error.field}\t{ack.error.message}",
                    file=out,
                )
    except grpc.RpcError as exc:
        print(
            f"store at {config.store_address} did not answer ({exc.code().name}: "
            f"{exc.details()}); the dead letters are kept, try again when it is up",
            file=out,
        )
        return False
    finally:
        channel.close()
    unanswered = [u.update_id for u in updates if u.update_id not in answered]
    for update_id in unanswered:
        print(f"{update_id}\tnot answered; kept", file=out)
    return all_ok and not unanswered
