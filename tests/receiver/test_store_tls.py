"""The StoreSeries stream over TLS with client certificates (mutual TLS) to the real store."""

# ruff: noqa: F811  (fixtures are imported from rx_harness: pytest finds them by name)

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import rx_dicom
import rx_send
from conftest import require_tool
from rx_harness import MakeReceiver, make_receiver  # noqa: F401 (fixtures)
from rx_store import StoreProcess, series_counts, wait_for


def _pki(folder: Path) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""
    openssl = require_tool("openssl")
    folder.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=folder)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=seriesflow-test-ca",
    )
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("server", "client"):
        run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
        )
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            f"{name}.pem",
            "-extfile",
            "san.ext",
        )
    return {
        n: folder / f
        for n, f in {
            "ca": "ca.pem",
            "cert": "server.pem",
            "key": "server.key",
            "client_ca": "ca.pem",
            "client_cert": "client.pem",
            "client_key": "client.key",
        }.items()
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
