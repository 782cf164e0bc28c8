"""The StoreSeries stream over TLS with client certificates (mutual TLS) to the real store."""

# ruff: noqa: F811  (fixtures are imported from rx_harness: pytest finds them by name)

from __future__ import annotations

import time
from pathlib import Path

import rx_dicom
import rx_send
from pki import make_pki
from rx_harness import MakeReceiver, make_receiver  # noqa: F401 (fixtures)
from rx_store import StoreProcess, series_counts, wait_for


def _pki(folder: Path) -> dict[str, Path]:
    """The test PKI in the form StoreProcess and the receiver settings take."""
    pki = make_pki(folder)
    return {
        "ca": pki.ca,
        "cert": pki.server_cert,
        "key": pki.server_key,
        "client_ca": pki.ca,
        "client_cert": pki.client_cert,
        "client_key": pki.client_key,
    }


def test_updates_reach_a_store_that_requires_client_certificates(
    make_receiver: MakeReceiver, database_url: str, tmp_path: Path
) -> None:
    pki = _pki(tmp_path / "pki")
    store = StoreProcess(database_url, tmp_path / "store", tls=pki)
    store.start()
    try:
        anonymous = make_receiver(
            store_address=store.address, store_tls_ca=pki["ca"], receiver_id="no-cert"
        )
        trusted = make_receiver(
            store_address=store.address,
            store_tls_ca=pki["ca"],
            store_tls_cert=pki["client_cert"],
            store_tls_key=pki["client_key"],
        )
        refused, accepted = rx_dicom.SeriesSpec(), rx_dicom.SeriesSpec()
        rx_send.send_all(anonymous.dicom_port, rx_dicom.series(refused, 2))
        rx_send.send_all(trusted.dicom_port, rx_dicom.series(accepted, 4))

        wait_for(lambda: series_counts(database_url) == {accepted.series_uid: 4})
        assert trusted.client.connected
        time.sleep(1.0)  # the one without a client certificate never gets through...
        assert series_counts(database_url) == {accepted.series_uid: 4}
        assert anonymous.spool.stats()[0] == 2  # ...and keeps its instances
    finally:
        store.stop()
