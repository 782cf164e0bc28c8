"""Delivery steps held while the spool cannot record them, retried with backoff.

A full disk (or an I/O error) can fail a spool write after the instances it concerns were
acknowledged: assigning a series to an update, retiring acked entries, keeping a rejected
update aside. Such a step must not be dropped (contract 1) and must not wait for a restart:
it is held here and tried again, in order, until the spool takes it.
"""

from __future__ import annotations

import collections
import logging
import sqlite3
import threading
import time
from collections.abc import Callable

from seriesflow.receiver.metrics import ReceiverMetrics
from seriesflow.receiver.spool import SpoolError

_log = logging.getLogger(__name__)

# What a failing spool raises: its own errors for writes, sqlite3's for reads.
SPOOL_FAILURES = (SpoolError, sqlite3.Error)

Attempt = Callable[[], None]


class HeldSteps:
    """Delivery steps the spool could not record yet, retried in order with backoff.

    Any thread may hold steps; only the flusher thread runs them. The first failure of a
    retry ends the round (the spool is still failing) and doubles the wait, up to
    `backoff_max`; once every held step went through, the wait starts again from
    `backoff_initial`. One WARNING when steps are first held, one INFO once all went out.
    """

    def __init__(
        self,
        metrics: ReceiverMetrics,
        wake: Callable[[], None],
        backoff_initial: float,
        backoff_max: float,
    ) -> None:
        self._metrics = metrics
        self._wake = wake
        self._initial = backoff_initial
        self._max = backoff_max
        self._lock = threading.Lock()
        self._steps: collections.deque[tuple[str, Attempt]] = collections.deque()
        self._delay = backoff_initial
        self._next_at = 0.0
        self._since: float | None = None  # when the current outage's first step was held
        self._failures = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._steps)

    def hold(self, step: str, attempts: list[Attempt], error: BaseException | None) -> None:
        """Keep `attempts` (in order) to try again later; `step` is the metric label.
        `error` is why the first of them failed; None for steps queued behind held ones
        without a try of their own (not counted as a failed attempt)."""
        if not attempts:
            return
        with self._lock:
            first = self._since is None
            if first:
                self._since = time.monotonic()
            if not self._steps:
                self._next_at = time.monotonic() + self._delay
            self._steps.extend((step, attempt) for attempt in attempts)
            if error is not None:
                self._failures += 1
            held = len(self._steps)
        if error is not None:
            self._metrics.delivery_retries.labels(step=step).inc()
        self._metrics.delivery_held.set(held)
        if first:
            _log.warning(
                "the spool cannot record delivery (disk full or I/O error); acknowledged "
                "instances are kept and delivery is retried with backoff",
                extra={"fields": {"step": step, "error": str(error)}},
            )
        self._wake()

    def wait(self) -> float | None:
        """Seconds until the next retry round, None when nothing is held."""
        with self._lock:
            if not self._steps:
                return None
            return max(0.0, self._next_at - time.monotonic())

    def run_due(self, stopping: threading.Event) -> None:
        """Try the held steps in order, if their time has come (flusher thread)."""
        wait = self.wait()
        if wait is None or wait > 0:
            return
        while not stopping.is_set():
            with self._lock:
                if not self._steps:
                    break
                step, attempt = self._steps[0]
            try:
                attempt()
            except SPOOL_FAILURES:
                with self._lock:
                    self._delay = min(self._delay * 2, self._max)
                    self._next_at = time.monotonic() + self._delay
                    self._failures += 1
                self._metrics.delivery_retries.labels(step=step).inc()
                return
            except Exception:
                # A bug, not the spool: retrying would fail the same way. The entries stay
                # in the spool (re-sent at the next start); delivery goes on.
                _log.exception("a held delivery step failed", extra={"fields": {"step": step}})
            with self._lock:
                self._steps.popleft()
                held = len(self._steps)
            self._metrics.delivery_held.set(held)
        self._resumed()

    def _resumed(self) -> None:
        with self._lock:
            if self._steps or self._since is None:
                return
            seconds, failures = time.monotonic() - self._since, self._failures
            self._since, self._failures, self._delay = None, 0, self._initial
        _log.info(
            "delivery resumed: every held step reached the spool",
            extra={"fields": {"outage_seconds": round(seconds, 3), "failed_attempts": failures}},
        )
