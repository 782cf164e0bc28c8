"""Is a store serving? The client side of grpc health, for whatever starts a store and
must wait for it before sending (`seriesflow run`, the test harness, the benchmark)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def serving(address: str, timeout: float = 1.0) -> bool:
    """True when the store at host:port (plaintext) answers health SERVING."""
    with grpc.insecure_channel(address) as channel:
        try:
            # types-grpcio-health-checking declares HealthStub without its methods.
            stub: Any = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def wait_serving(address: str, alive: Callable[[], bool], timeout: float) -> bool:
    """Poll until the store is SERVING (True); False once `alive()` says the process is
    gone or `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if serving(address):
            return True
        if not alive():
            return False
        time.sleep(0.1)
    return False
