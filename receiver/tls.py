"""DICOM TLS (PS3.15 B.1): the server side's certificate and key, or plain TCP."""

from __future__ import annotations

import ssl
from pathlib import Path


def tls_context(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    """A server TLS context for `cert` and `key`; None (plain TCP) unless both are set."""
    if cert is None or key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    return context
