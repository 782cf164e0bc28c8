"""One bad C-STORE among good ones on one association; DICOM TLS; fragmented PDUs from dcmtk."""

# ruff: noqa: F811  (fixtures are imported from rx_harness: pytest finds them by name)

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import rx_dicom
import rx_send
from conftest import require_tool
from pki import Pki, make_pki
from pynetdicom import AE
from rx_harness import MakeReceiver, make_receiver, store  # noqa: F401 (fixtures)
from rx_store import StoreProcess, series_counts, wait_for
from rx_tools import storescu


def test_a_refused_instance_mid_association_costs_only_itself(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str, tmp_path: Path
) -> None:
    receiver = make_receiver(store_address=store.address)
    spec = rx_dicom.SeriesSpec()
    datasets = rx_dicom.series(spec, 5)
    no_uid = rx_dicom.instance(spec, 99)
    del no_uid.SeriesInstanceUID

    assoc = rx_send.associate(receiver.dicom_port)
    try:
        answers = [rx_send.store(assoc, ds) for ds in datasets[:3]]
        refused = rx_send.store(assoc, no_uid)
        answers += [rx_send.store(assoc, ds) for ds in datasets[3:]]
        assert assoc.send_c_echo().Status == 0
    finally:
        assoc.release()

    assert [a.status for a in answers] == [0] * 5
    assert (refused.status, refused.comment) == (0xA900, "SeriesInstanceUID is missing or empty")
    wait_for(lambda: series_counts(database_url) == {spec.series_uid: 5})


def test_storescu_with_small_pdus_fragments_every_dataset_and_all_arrive(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str, tmp_path: Path
) -> None:
    tool = require_tool("storescu")
    receiver = make_receiver(store_address=store.address)
    spec = rx_dicom.SeriesSpec(size=64)  # 8 KiB of pixels: three PDUs of 4 KiB each
    files = rx_dicom.write_files(rx_dicom.series(spec, 6), tmp_path / "f")

    result = storescu(tool, receiver.dicom_port, files, extra=["--max-send-pdu", "4096"])

    assert result.returncode == 0, result.stderr
    wait_for(lambda: series_counts(database_url) == {spec.series_uid: 6})


@pytest.fixture
def certificate(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


def test_dicom_tls_carries_instances_and_plain_tcp_is_refused(
    make_receiver: MakeReceiver, certificate: Pki
) -> None:
    receiver = make_receiver(
        dicom_tls_cert=certificate.server_cert,
        dicom_tls_key=certificate.server_key,
    )
    spec = rx_dicom.SeriesSpec()

    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certificate.ca))
    ae = AE(ae_title="TLSSCU")
    ae.add_requested_context(rx_dicom.CT_IMAGE_STORAGE, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", receiver.dicom_port, tls_args=(context, "127.0.0.1"))
    assert assoc.is_established
    try:
        statuses = [assoc.send_c_store(ds).Status for ds in rx_dicom.series(spec, 3)]
    finally:
        assoc.release()
    assert statuses == [0, 0, 0]
    assert receiver.spool.stats()[0] == 3

    plain = AE(ae_title="PLAIN")
    plain.acse_timeout = plain.network_timeout = 3
    plain.add_requested_context(rx_dicom.CT_IMAGE_STORAGE, "1.2.840.10008.1.2.1")
    refused = plain.associate("127.0.0.1", receiver.dicom_port)
    assert not refused.is_established
