"""Bounded before association: idle connections, oversized A-ASSOCIATE-RQs and the
association limit each cost only themselves; a real sender still gets in and stores."""

# ruff: noqa: F811  (fixtures are imported from rx_harness: pytest finds them by name)

from __future__ import annotations

import socket
import struct
import threading
import time
from contextlib import ExitStack

import rx_dicom
import rx_send
from rx_assoc import CT, EXPLICIT, associate_rq, read_pdu
from rx_harness import MakeReceiver, make_receiver, store  # noqa: F401 (fixtures)
from rx_store import StoreProcess, series_counts, wait_for

from seriesflow.receiver.app import Receiver


def _refused(receiver: Receiver, reason: str) -> float:
    value = receiver.metrics.registry.get_sample_value(
        "seriesflow_receiver_connections_refused_total", {"reason": reason}
    )
    return value or 0.0


def _send_series(port: int, database_url: str, n: int = 4) -> None:
    spec = rx_dicom.SeriesSpec()
    answers = rx_send.send_all(port, rx_dicom.series(spec, n))
    assert [a.status for a in answers] == [0] * n
    wait_for(lambda: series_counts(database_url).get(spec.series_uid) == n)


def test_many_idle_connections_never_lock_out_a_real_sender(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str
) -> None:
    receiver = make_receiver(
        store_address=store.address, max_associations=4, max_pending_connections=16
    )
    with ExitStack() as stack:
        idle = [
            stack.enter_context(socket.create_connection(("127.0.0.1", receiver.dicom_port)))
            for _ in range(100)
        ]
        # Once the server has accepted all 100, the oldest 84 were dropped for newer ones
        # (polled: on a loaded machine accepting them takes longer than any fixed sleep).
        wait_for(lambda: _refused(receiver, "too_many_pending") >= 84)
        assert len(receiver.dicom.pending) == 16  # type: ignore[union-attr]

        _send_series(receiver.dicom_port, database_url)  # associations, not sockets, count

        assert _refused(receiver, "too_many_pending") >= 84
        assert len(idle) == 100


def test_an_idle_connection_is_closed_at_the_association_request_timeout(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str
) -> None:
    receiver = make_receiver(store_address=store.address, association_request_timeout=1)
    with (
        socket.create_connection(("127.0.0.1", receiver.dicom_port)) as idle,
        socket.create_connection(("127.0.0.1", receiver.dicom_port)) as trickle,
    ):
        started = time.monotonic()
        rq = associate_rq([(1, CT, [EXPLICIT])])
        trickle.sendall(rq[:10])  # a slow sender: part of the request, then nothing
        idle.settimeout(5)
        trickle.settimeout(5)
        assert read_pdu(idle) == (0, b"")  # closed, without an A-ABORT: nothing associated
        assert read_pdu(trickle) == (0, b"")
        elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 2.5
    assert _refused(receiver, "request_timeout") == 2
    _send_series(receiver.dicom_port, database_url)


def _huge_request(port: int, outcome: dict[str, object]) -> None:
    """Announce a 60 MiB A-ASSOCIATE-RQ and keep sending it until the receiver hangs up."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(10)
        sock.sendall(struct.pack(">BBI", 0x01, 0, 60 * 1024 * 1024))
        chunk = b"\x00" * 65536
        sent = 0
        try:
            while sent < 60 * 1024 * 1024:
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
        outcome["sent"] = sent
        outcome["answer"] = read_pdu(sock)
    outcome["seconds"] = time.monotonic() - started


def test_a_60_mib_associate_request_is_refused_unread_while_echo_answers_promptly(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str
) -> None:
    receiver = make_receiver(store_address=store.address)
    outcomes: list[dict[str, object]] = [{} for _ in range(3)]
    threads = [
        threading.Thread(target=_huge_request, args=(receiver.dicom_port, o)) for o in outcomes
    ]
    for thread in threads:
        thread.start()
    echo_seconds = []
    assoc = rx_send.associate(receiver.dicom_port)
    try:
        for _ in range(5):
            started = time.monotonic()
            assert assoc.send_c_echo().Status == 0
            echo_seconds.append(time.monotonic() - started)
    finally:
        assoc.release()
    for thread in threads:
        thread.join(timeout=30)

    assert max(echo_seconds) < 0.5, echo_seconds
    for outcome in outcomes:
        assert float(outcome["seconds"]) < 5  # type: ignore[arg-type]
        # Far less than announced was taken in before the receiver hung up.
        assert int(outcome["sent"]) < 16 * 1024 * 1024  # type: ignore[call-overload]
        # The A-ASSOCIATE-RJ (rejected-permanent, presentation, local-limit-exceeded) when it
        # got through before the reset; a closed connection otherwise.
        assert outcome["answer"] in ((0x03, bytes([0, 1, 3, 2])), (0, b""))
    assert _refused(receiver, "request_too_large") == 3
    _send_series(receiver.dicom_port, database_url)


def test_a_request_just_under_the_cap_is_read_and_one_over_is_rejected(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str
) -> None:
    receiver = make_receiver(store_address=store.address, max_associate_request_bytes=4096)
    small = associate_rq([(1, CT, [EXPLICIT])])
    big = associate_rq([(2 * n + 1, CT, [EXPLICIT] * 3) for n in range(40)])
    assert len(small) - 6 <= 4096 < len(big) - 6
    with socket.create_connection(("127.0.0.1", receiver.dicom_port)) as sock:
        sock.settimeout(5)
        sock.sendall(small)
        assert read_pdu(sock)[0] == 0x02  # A-ASSOCIATE-AC
    with socket.create_connection(("127.0.0.1", receiver.dicom_port)) as sock:
        sock.settimeout(5)
        sock.sendall(big)
        assert read_pdu(sock) in ((0x03, bytes([0, 1, 3, 2])), (0, b""))
    _send_series(receiver.dicom_port, database_url)


def test_the_association_limit_counts_associations_and_answers_local_limit_exceeded(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str
) -> None:
    receiver = make_receiver(store_address=store.address, max_associations=2)
    first, second = rx_send.associate(receiver.dicom_port), rx_send.associate(receiver.dicom_port)
    try:
        assert first.is_established and second.is_established
        with socket.create_connection(("127.0.0.1", receiver.dicom_port)) as sock:
            sock.settimeout(5)
            sock.sendall(associate_rq([(1, CT, [EXPLICIT])]))
            # rejected-transient, presentation-related, local-limit-exceeded: retry later
            assert read_pdu(sock) == (0x03, bytes([0, 2, 3, 2]))
    finally:
        first.release()
        second.release()
    _send_series(receiver.dicom_port, database_url)
