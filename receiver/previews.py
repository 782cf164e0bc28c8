"""Series previews: render the representative instance's kept file, send the result.

The flusher turns the middle instance of each flushed group (receiver.representative,
receiver.kept) into a preview job in the spool. Rendering runs in worker processes
(`workers` of them, niced, started with "spawn" so no gRPC thread is ever forked), one job
each at a time, after the instances were
acknowledged and the series update queued: a C-STORE response never waits for it, and a
series completes whether or not its preview is ready. A render that fails, or takes longer
than `timeout` seconds (its worker is then replaced), is sent as a preview report with a
failure reason: the series then has no preview and says why. Jobs survive a crash (they
are spool rows): after a restart they are rendered again.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import multiprocessing
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from seriesflow.receiver import render
from seriesflow.receiver.kept import KeptFiles, stored_syntax
from seriesflow.receiver.metrics import ReceiverMetrics
from seriesflow.receiver.spool import PreviewJob, Spool
from seriesflow.v1 import series_store_pb2 as pb

_log = logging.getLogger(__name__)


def _worker_start() -> None:
    with contextlib.suppress(OSError):
        os.nice(10)  # the receiver's own work (answering C-STORE) comes first
    # The native decoders (GDCM, OpenJPEG) print to the process's stdout and stderr, which
    # it shares with the receiver's structured log; results and errors come back pickled.
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.close(devnull)


def _render(path: str, syntax: str, max_side: int) -> render.Rendered | render.NotRendered:
    return render.render(Path(path), max_side, transfer_syntax_uid=syntax)


class Previewer:
    """Renders preview jobs and hands their reports to `submit`; `settled` on each ack."""

    def __init__(
        self,
        spool: Spool,
        files: KeptFiles,
        metrics: ReceiverMetrics,
        receiver_id: str,
        submit: Callable[[pb.SeriesUpdate], None],
        *,
        max_side: int,
        workers: int,
        timeout: float,
    ) -> None:
        self.spool = spool
        self.files = files
        self.metrics = metrics
        self.receiver_id = receiver_id
        self._submit = submit
        self.max_side = max_side
        self.workers = workers
        self.timeout = timeout
        self._jobs: queue.Queue[PreviewJob | None] = queue.Queue()
        self._sent: dict[str, int] = {}  # update id -> job seq
        self._lock = threading.Lock()
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    def start(self, recovered: list[PreviewJob]) -> None:
        for job in recovered:
            self._jobs.put(job)
        self._pool = self._new_pool()
        self._threads = [
            threading.Thread(target=self._run, name=f"preview-{n}", daemon=True)
            for n in range(self.workers)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stopping.set()
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout=10)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def schedule(self, job: PreviewJob) -> None:
        """Queue a job the spool already holds."""
        self._jobs.put(job)

    def settled(self, update_id: str, ok: bool) -> None:
        """The store answered a preview report: the job is done either way (a rejected
        preview would be rejected again; the series then simply has none)."""
        with self._lock:
            seq = self._sent.pop(update_id, None)
        if seq is None:
            return
        if not ok:
            _log.warning("store refused a preview report", extra={"fields": {"seq": seq}})

        def forget_file(done: concurrent.futures.Future[None]) -> None:
            if done.exception() is None:
                self.files.drop([seq])

        self.spool.finish_preview_job(seq).add_done_callback(forget_file)

    # -- worker threads ------------------------------------------------------------------

    def _new_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        return concurrent.futures.ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_start,
        )

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            if self._stopping.is_set():
                return
            try:
                preview = self._render(job)
            except Exception:  # a bug here must not stop previews for good
                _log.exception("rendering a preview failed unexpectedly")
                preview = pb.SeriesPreview(failure_reason="failed", failure_detail="render error")
            if self._stopping.is_set():
                return  # still a spool job: rendered again at the next start
            self._report(job, preview)

    def _render(self, job: PreviewJob) -> pb.SeriesPreview:
        path = self.files.path(job.seq)
        if not path.exists():
            return pb.SeriesPreview(
                failure_reason="failed", failure_detail="the instance's file is gone"
            )
        start = time.perf_counter()
        pool = self._pool
        assert pool is not None
        try:
            future = pool.submit(
                _render, str(path), stored_syntax(job.transfer_syntax_uid), self.max_side
            )
            result = future.result(timeout=self.timeout)
        except concurrent.futures.TimeoutError:
            self._replace_pool(pool)
            result = render.NotRendered("failed", f"rendering took over {self.timeout:g} s")
        except concurrent.futures.process.BrokenProcessPool:
            self._replace_pool(pool)
            result = render.NotRendered("failed", "the render worker died (out of memory?)")
        self.metrics.preview_render_seconds.observe(time.perf_counter() - start)
        if isinstance(result, render.NotRendered):
            self.metrics.previews.labels(result=result.reason).inc()
            return pb.SeriesPreview(failure_reason=result.reason, failure_detail=result.detail)
        self.metrics.previews.labels(result="rendered").inc()
        preview = pb.SeriesPreview(
            png=result.png,
            width=result.width,
            height=result.height,
            frame=result.frame,
            window=result.window,
            window_center=result.window_center,
            window_width=result.window_width,
        )
        preview.rendered_at.GetCurrentTime()
        return preview

    def _replace_pool(self, broken: concurrent.futures.ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is not broken:
                return  # another thread replaced it already
            self._pool = self._new_pool()
        # A hung render keeps its process: end the old pool's workers for good.
        for process in list(getattr(broken, "_processes", {}).values()):
            with contextlib.suppress(Exception):
                process.kill()
        broken.shutdown(wait=False, cancel_futures=True)

    def _report(self, job: PreviewJob, preview: pb.SeriesPreview) -> None:
        preview.series_instance_uid = job.series_uid
        preview.sop_instance_uid = job.sop_instance_uid
        update = pb.SeriesUpdate(
            update_id=f"preview-{uuid.uuid4().hex}",
            series=pb.SeriesAttributes(series_instance_uid=job.series_uid),
            source=pb.Source(receiver_id=self.receiver_id),
            preview=preview,
        )
        with self._lock:
            self._sent[update.update_id] = job.seq
        self._submit(update)
