"""Held delivery steps: retried in order, a failure ends the round and doubles the wait,
nothing is dropped while the spool fails, and the wait starts over once all went through."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from seriesflow.receiver.held import HeldSteps
from seriesflow.receiver.metrics import ReceiverMetrics
from seriesflow.receiver.spool import SpoolUnavailable


class SpoolStandIn:
    """Steps that fail as a full spool does while `full`; records the ones taken."""

    def __init__(self) -> None:
        self.full = True
        self.taken: list[str] = []

    def step(self, name: str) -> Callable[[], None]:
        def attempt() -> None:
            if self.full:
                raise SpoolUnavailable("spool write failed: database or disk is full")
            self.taken.append(name)

        return attempt


def retries(metrics: ReceiverMetrics, step: str) -> float:
    value = metrics.registry.get_sample_value(
        "seriesflow_receiver_delivery_retries_total", {"step": step}
    )
    return value or 0.0


def test_held_steps_wait_with_doubling_backoff_and_go_out_in_order_once_the_spool_works() -> None:
    metrics, spool, stopping = ReceiverMetrics(), SpoolStandIn(), threading.Event()
    held = HeldSteps(metrics, lambda: None, backoff_initial=0.1, backoff_max=0.4)
    held.hold("assign", [spool.step("a1"), spool.step("a2")], SpoolUnavailable("full"))
    held.hold("retire", [spool.step("r1")], SpoolUnavailable("full"))
    assert len(held) == 3
    wait = held.wait()
    assert wait is not None and 0 < wait <= 0.1
    held.run_due(stopping)  # not due yet: nothing tried
    assert retries(metrics, "assign") == 1

    waits = []
    for _ in range(4):
        time.sleep(held.wait() or 0)
        held.run_due(stopping)  # tries the first step only, which fails
        waits.append(held.wait())
    assert len(held) == 3 and spool.taken == []
    assert retries(metrics, "assign") == 5
    for waited, delay in zip(waits, [0.2, 0.4, 0.4, 0.4], strict=True):  # doubled, capped
        assert waited is not None and delay / 2 < waited <= delay

    spool.full = False
    time.sleep(held.wait() or 0)
    held.run_due(stopping)
    assert spool.taken == ["a1", "a2", "r1"]
    assert (len(held), held.wait()) == (0, None)
    assert metrics.registry.get_sample_value("seriesflow_receiver_delivery_held") == 0

    # The next outage starts from the initial wait again.
    held.hold("retire", [spool.step("r2")], SpoolUnavailable("full"))
    wait = held.wait()
    assert wait is not None and wait <= 0.1
