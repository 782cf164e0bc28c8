"""The receiver's bearer token to a real store that requires one (SERIESFLOW_STORE_TOKEN_FILE).

A refused token costs nothing: the instances stay in the spool, and once the token file
holds the right token (read again at each reconnect) everything acknowledged arrives.
"""

# ruff: noqa: F811  (fixtures are imported from rx_harness: pytest finds them by name)

from __future__ import annotations

import dataclasses
import io
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
import rx_dicom
import rx_send
from rx_harness import MakeReceiver, make_receiver, receiver_config  # noqa: F401 (fixtures)
from rx_store import StoreProcess, series_counts, wait_for
from test_dead_letters import FussyStore

from seriesflow.receiver import dead_letters
from seriesflow.receiver.app import Receiver
from seriesflow.v1 import series_store_pb2_grpc as pb_grpc

WRITE_TOKEN = "w-5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b"
READ_TOKEN = "r-0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e"


@pytest.fixture
def token_store(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[StoreProcess]:
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    (tokens / "write").write_text(f"{WRITE_TOKEN}\n")
    (tokens / "read").write_text(f"{READ_TOKEN}\n")
    monkeypatch.setenv("SERIESFLOW_GRPC_WRITE_TOKENS_FILE", str(tokens / "write"))
    monkeypatch.setenv("SERIESFLOW_GRPC_READ_TOKENS_FILE", str(tokens / "read"))
    store = StoreProcess(database_url, tmp_path / "store")
    store.start()
    try:
        yield store
    finally:
        store.stop()


def test_a_receiver_with_a_wrong_token_keeps_its_instances_and_delivers_them_once_fixed(
    make_receiver: MakeReceiver, token_store: StoreProcess, database_url: str, tmp_path: Path
) -> None:
    token_file = tmp_path / "store-token"
    token_file.write_text(f"{READ_TOKEN}\n")  # a real token, of the wrong scope
    receiver = make_receiver(store_address=token_store.address, store_token_file=token_file)
    spec = rx_dicom.SeriesSpec()
    answers = rx_send.send_all(receiver.dicom_port, rx_dicom.series(spec, 5))
    assert [a.status for a in answers] == [0x0000] * 5

    time.sleep(2.0)  # several refused attempts
    assert series_counts(database_url) == {}
    assert receiver.spool.stats()[0] == 5

    token_file.write_text(f"{WRITE_TOKEN}\n")  # the fix: read at the next reconnect
    wait_for(lambda: series_counts(database_url) == {spec.series_uid: 5}, timeout=30)
    wait_for(lambda: receiver.spool.stats()[0] == 0)

    later = rx_dicom.SeriesSpec()
    rx_send.send_all(receiver.dicom_port, rx_dicom.series(later, 2))
    wait_for(lambda: series_counts(database_url) == {spec.series_uid: 5, later.series_uid: 2})


def test_a_receiver_restarted_with_the_right_token_delivers_what_it_spooled(
    make_receiver: MakeReceiver, token_store: StoreProcess, database_url: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "rx"
    wrong = tmp_path / "wrong-token"
    wrong.write_text("w-not-a-token-this-store-knows\n")
    receiver = Receiver(
        receiver_config(data_dir, store_address=token_store.address, store_token_file=wrong)
    )
    receiver.start()
    spec = rx_dicom.SeriesSpec()
    rx_send.send_all(receiver.dicom_port, rx_dicom.series(spec, 3))
    time.sleep(1.5)
    assert series_counts(database_url) == {}
    receiver.stop()

    right = tmp_path / "right-token"
    right.write_text(f"# the store's write token\n{WRITE_TOKEN}\n")
    make_receiver(data_dir, store_address=token_store.address, store_token_file=right)
    wait_for(lambda: series_counts(database_url) == {spec.series_uid: 3}, timeout=30)


def test_dead_letter_replay_sends_the_token_and_keeps_letters_the_store_refuses(
    make_receiver: MakeReceiver, token_store: StoreProcess, database_url: str, tmp_path: Path
) -> None:
    fussy = FussyStore(set())
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_SeriesStoreServicer_to_server(fussy, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        refused = rx_dicom.SeriesSpec()
        fussy.refused.add(refused.series_uid)
        receiver = make_receiver(store_address=f"127.0.0.1:{port}")
        rx_send.send_all(receiver.dicom_port, rx_dicom.series(refused, 2))
        wait_for(lambda: receiver.spool.count_dead_letters() == 1)
    finally:
        server.stop(grace=None)

    to_store = dataclasses.replace(receiver.config, store_address=token_store.address)
    out = io.StringIO()
    assert dead_letters.main(to_store, replay=True, update_ids=[], out=out) == 1
    assert "UNAUTHENTICATED" in out.getvalue() and "kept" in out.getvalue()
    assert receiver.spool.count_dead_letters() == 1

    token_file = tmp_path / "token"
    token_file.write_text(f"{WRITE_TOKEN}\n")
    with_token = dataclasses.replace(to_store, store_token_file=token_file)
    out = io.StringIO()
    assert dead_letters.main(with_token, replay=True, update_ids=[], out=out) == 0
    assert "replayed\t2 instances" in out.getvalue()
    assert series_counts(database_url) == {refused.series_uid: 2}
    assert receiver.spool.count_dead_letters() == 0
