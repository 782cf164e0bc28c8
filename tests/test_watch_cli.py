"""`seriesflow watch` against a real store and PostgreSQL: the CLI runs as its own process,
series updates go in over the store's gRPC stream, events come out as JSON lines.

Proves the lines and their cursors, the filters, `--exec` (series JSON on stdin, the line only
after success, a failing command stops with exit 1 and the cursor to resume from), resuming
after `kill -9` and after a store restart without a miss or a repeat, refusals (exit 2), and
that grpcurl reads the same feed through server reflection.
"""

# ruff: noqa: F811  (fixtures are imported from st_harness: pytest finds them by name)

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import free_port, require_tool

# tests/store is not a package; its harness is imported by basename like its own tests do.
sys.path.insert(0, str(Path(__file__).resolve().parent / "store"))
from st_harness import (  # noqa: F401 (fixtures)
    StoreThread,
    make_update,
    migrated_url,
    running_store,
    send,
    store_config,
    uid,
)

from seriesflow.cli import watch as watch_cli
from seriesflow.v1 import series_store_pb2 as pb
from seriesflow.v1 import series_store_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[1]
COMPLETED = "SERIES_EVENT_KIND_COMPLETED"
WRITE_TOKEN = "w-watch-5e4d3c2b1a0f9e8d7c6b5a49"
READ_TOKEN = "r-watch-0a1b2c3d4e5f60718293a4b5"

Event = dict[str, Any]


class WatchProcess:
    """`python -m seriesflow watch ...`, its stdout read line by line as it comes."""

    def __init__(self, address: str, *args: str, env: dict[str, str] | None = None) -> None:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("SERIESFLOW_")}
        environ.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "seriesflow", "watch", "--store-address", address, *args],
            cwd=ROOT,
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        self.printed: list[Event] = []
        self._stderr: list[bytes] = []
        threading.Thread(target=self._pump_stdout, daemon=True).start()
        self._stderr_thread = threading.Thread(target=self._pump_stderr, daemon=True)
        self._stderr_thread.start()

    def _pump_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self._lines.put(raw)
        self._lines.put(None)

    def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        self._stderr.extend(self.proc.stderr)

    def stderr(self) -> str:
        return b"".join(self._stderr).decode()

    def _take(self, timeout: float) -> Event | None:
        raw = self._lines.get(timeout=timeout)
        if raw is None:
            self._lines.put(None)  # EOF stays EOF for later reads
            return None
        # A complete line: kill -9 may leave a partial last line, which a consumer ignores.
        if not raw.endswith(b"\n"):
            return None
        event: Event = json.loads(raw)
        self.printed.append(event)
        return event

    def until(self, done: Callable[[Event], bool], timeout: float = 60) -> list[Event]:
        """The events printed from now until one for which `done` is true (included)."""
        got: list[Event] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                event = self._take(max(left, 0.01)) if left > 0 else None
            except queue.Empty:
                event = None
            if event is None:
                raise AssertionError(
                    f"no matching event within {timeout} s (exit {self.proc.poll()});"
                    f" got {got}; stderr: {self.stderr()}"
                )
            got.append(event)
            if done(event):
                return got

    def rest(self) -> list[Event]:
        """Every complete line printed until the process ended (it must have ended)."""
        got = []
        while (event := self._take(30)) is not None:
            got.append(event)
        return got

    def wait(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout)
        self._stderr_thread.join(10)
        return code

    def signal(self, signum: int) -> int:
        self.proc.send_signal(signum)
        return self.wait()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


@pytest.fixture
def watches() -> Iterator[Callable[..., WatchProcess]]:
    started: list[WatchProcess] = []

    def start(address: str, *args: str, env: dict[str, str] | None = None) -> WatchProcess:
        started.append(WatchProcess(address, *args, env=env))
        return started[-1]

    yield start
    for w in started:
        w.kill()


def completed_series(
    channel: grpc.Channel, instances: int = 2, *, modality: str = "CT", ae: str = "MODALITY"
) -> str:
    """Store a series flushed as idle by its only receiver: the store completes it."""
    s = uid()
    update = make_update(s, [f"{s}.{n}" for n in range(1, instances + 1)], modality=modality)
    update.source.calling_ae_title = ae
    [ack] = send(channel, [update])
    assert ack.ok, ack
    return str(s)


def partial_series(channel: grpc.Channel) -> str:
    """Store a partial flush: the series stays RECEIVING (no COMPLETED event)."""
    s = uid()
    update = make_update(s, [f"{s}.1"], reason=pb.COMPLETION_REASON_UNSPECIFIED)
    [ack] = send(channel, [update])
    assert ack.ok, ack
    return str(s)


def completes(series_uid: str) -> Callable[[Event], bool]:
    return lambda e: e["kind"] == COMPLETED and e["series"]["seriesInstanceUid"] == series_uid


def cursors(events: list[Event]) -> list[int]:
    return [int(e["cursor"]) for e in events]


def identity(events: list[Event]) -> list[tuple[int, str, str]]:
    return [(int(e["cursor"]), e["kind"], e["series"]["seriesInstanceUid"]) for e in events]


def strictly_increasing(values: list[int]) -> bool:
    return all(a < b for a, b in itertools.pairwise(values))


def test_every_event_is_one_json_line_with_a_strictly_increasing_cursor(
    running_store: StoreThread, watches: Callable[..., WatchProcess]
) -> None:
    ch = running_store.channel()
    before = [completed_series(ch, 3), completed_series(ch, 1)]
    w = watches(running_store.address, "--after", "0")
    replayed = w.until(completes(before[1]))
    live = completed_series(ch, 2)  # committed while the watch streams
    streamed = w.until(completes(live))
    events = replayed + streamed
    assert all(re.fullmatch(r"[0-9]+", e["cursor"]) for e in events)
    assert strictly_increasing(cursors(events))
    for series_uid, count in ((before[0], 3), (before[1], 1), (live, 2)):
        mine = [e for e in events if e["series"]["seriesInstanceUid"] == series_uid]
        kinds = [e["kind"] for e in mine]
        assert "SERIES_EVENT_KIND_CREATED" in kinds and kinds[-1] == COMPLETED, kinds
        added = sum(
            int(e.get("instancesAdded", 0))
            for e in mine
            if e["kind"] == "SERIES_EVENT_KIND_INSTANCES_ADDED"
        )
        assert added == count, mine
        assert mine[-1]["series"]["status"] == "SERIES_STATUS_COMPLETE"
        assert mine[-1]["series"]["numInstances"] == str(count)
    assert w.signal(signal.SIGTERM) == 0
    assert "resume with --after" in w.stderr()


def test_sigint_ends_the_watch_with_130(
    running_store: StoreThread, watches: Callable[..., WatchProcess]
) -> None:
    s = completed_series(running_store.channel())
    w = watches(running_store.address, "--after", "0")
    w.until(completes(s))
    assert w.signal(signal.SIGINT) == 130
    assert "Traceback" not in w.stderr()


def test_sigterm_during_exec_waits_for_the_command_and_prints_its_event(
    running_store: StoreThread, watches: Callable[..., WatchProcess], tmp_path: Path
) -> None:
    s = completed_series(running_store.channel())
    started, release = tmp_path / "started", tmp_path / "release"
    command = f"cat > /dev/null; touch {started}; while [ ! -e {release} ]; do sleep 0.05; done"
    w = watches(running_store.address, "--after", "0", "--kind", "completed", "--exec", command)
    deadline = time.monotonic() + 30
    while not started.exists():
        assert time.monotonic() < deadline and w.proc.poll() is None, w.stderr()
        time.sleep(0.05)
    w.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)  # not a timing assertion: the watch must still be waiting for the command
    assert w.proc.poll() is None, "the watch left before its command finished"
    release.touch()
    assert w.wait() == 0
    [event] = w.rest()
    assert completes(s)(event)
    assert f"resume with --after {event['cursor']}" in w.stderr()


def test_kind_completed_prints_only_completed_events(
    running_store: StoreThread, watches: Callable[..., WatchProcess]
) -> None:
    ch = running_store.channel()
    partial_series(ch)
    first = completed_series(ch)
    w = watches(running_store.address, "--after", "0", "--kind", "completed")
    w.until(completes(first))
    second = completed_series(ch)
    w.until(completes(second))
    assert [e["kind"] for e in w.printed] == [COMPLETED, COMPLETED]
    assert [e["series"]["seriesInstanceUid"] for e in w.printed] == [first, second]
    assert w.signal(signal.SIGTERM) == 0


def test_modality_and_calling_ae_filters_reach_the_store(
    running_store: StoreThread, watches: Callable[..., WatchProcess]
) -> None:
    ch = running_store.channel()
    completed_series(ch, modality="CT", ae="CT_SCANNER")
    mr = completed_series(ch, modality="MR", ae="MR_SCANNER")
    mr_elsewhere = completed_series(ch, modality="MR", ae="OTHER")
    by_modality = watches(running_store.address, "--after", "0", "--modality", "MR")
    by_modality.until(completes(mr_elsewhere))
    assert {e["series"]["seriesInstanceUid"] for e in by_modality.printed} == {mr, mr_elsewhere}
    both = watches(
        running_store.address, "--after", "0", "--modality", "MR", "--calling-ae", "MR_SCANNER"
    )
    marker = completed_series(ch, modality="MR", ae="MR_SCANNER")
    both.until(completes(marker))
    assert {e["series"]["seriesInstanceUid"] for e in both.printed} == {mr, marker}


def test_exec_gets_the_series_json_on_stdin_and_the_line_comes_after_it_succeeded(
    running_store: StoreThread, watches: Callable[..., WatchProcess], tmp_path: Path
) -> None:
    ch = running_store.channel()
    first = completed_series(ch, 2)
    command = 'cat > "$OUT/$SERIESFLOW_EVENT_CURSOR.json"; echo "ran for $SERIESFLOW_EVENT_CURSOR"'
    w = watches(
        running_store.address, "--after", "0", "--exec", command, env={"OUT": str(tmp_path)}
    )
    seen = w.until(completes(first))
    # The line of a COMPLETED event is printed only once its command has finished.
    done = tmp_path / f"{seen[-1]['cursor']}.json"
    assert done.exists()
    second = completed_series(ch, 1)
    seen += w.until(completes(second))
    assert w.signal(signal.SIGTERM) == 0
    completed = [e for e in seen if e["kind"] == COMPLETED]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{e['cursor']}.json" for e in completed
    ), "the command runs for COMPLETED events only, once each"
    for event in completed:
        series = json.loads((tmp_path / f"{event['cursor']}.json").read_text())
        assert series["seriesInstanceUid"] == event["series"]["seriesInstanceUid"]
        assert series["status"] == "SERIES_STATUS_COMPLETE"
    # The command's stdout went to stderr: stdout carried only JSON lines (all parsed).
    assert f"ran for {completed[-1]['cursor']}" in w.stderr()


def test_a_failing_exec_stops_with_1_naming_the_cursor_and_runs_again_after_restart(
    running_store: StoreThread, watches: Callable[..., WatchProcess], tmp_path: Path
) -> None:
    ch = running_store.channel()
    good, bad = completed_series(ch), completed_series(ch)
    fail_on_bad = f'cat > /dev/null; test "$SERIESFLOW_SERIES_INSTANCE_UID" != "{bad}"'
    w = watches(running_store.address, "--after", "0", "--kind", "completed", "--exec", fail_on_bad)
    assert w.wait(60) == 1
    printed = w.rest()
    assert [e["series"]["seriesInstanceUid"] for e in printed] == [good]
    message = w.stderr()
    assert "exited with status 1" in message and bad in message
    resume = re.search(r"restart with --after (\d+)", message)
    assert resume is not None, message
    assert resume.group(1) == printed[-1]["cursor"]
    failed_at = re.search(r"event at cursor (\d+)", message)
    assert failed_at is not None, message

    again = watches(
        running_store.address,
        "--after",
        resume.group(1),
        "--kind",
        "completed",
        "--exec",
        'cat > "$OUT/retried.json"',
        env={"OUT": str(tmp_path)},
    )
    [retried] = again.until(completes(bad))
    assert retried["cursor"] == failed_at.group(1)
    assert json.loads((tmp_path / "retried.json").read_text())["seriesInstanceUid"] == bad
    assert again.signal(signal.SIGTERM) == 0


def test_kill_9_then_resuming_after_the_last_printed_cursor_yields_each_later_event_once(
    running_store: StoreThread, watches: Callable[..., WatchProcess]
) -> None:
    ch = running_store.channel()
    first = watches(running_store.address, "--after", "0")
    for _ in range(3):
        first.until(completes(completed_series(ch, 2)))
    completed_series(ch, 3)  # may or may not be printed before the kill
    first.proc.kill()
    first.wait()
    first.rest()
    before_kill = first.printed
    last = before_kill[-1]["cursor"]
    while_dead = [completed_series(ch) for _ in range(2)]
    second = watches(running_store.address, "--after", last)
    second.until(completes(while_dead[-1]))
    final = completed_series(ch, 2)
    second.until(completes(final))
    assert second.signal(signal.SIGTERM) == 0
    after_restart = second.printed

    replay = watches(running_store.address, "--after", "0")
    everything = replay.until(completes(final))
    assert identity(before_kill + after_restart) == identity(everything)
    assert strictly_increasing(cursors(before_kill + after_restart))


def test_a_store_restart_is_survived_without_a_miss_or_a_repeat(
    migrated_url: str, watches: Callable[..., WatchProcess]
) -> None:
    config = store_config(migrated_url, grpc_port=free_port())
    store = StoreThread(config, migrated_url)
    try:
        w = watches(store.address, "--after", "0")
        w.until(completes(completed_series(store.channel())))
        store.stop()
        store = StoreThread(config, migrated_url)
        later = completed_series(store.channel())
        w.until(completes(later))
        assert w.signal(signal.SIGTERM) == 0
        assert "reconnecting" in w.stderr()
        assert "not after" not in w.stderr(), "the store repeated an event"
        replay = watches(store.address, "--after", "0")
        assert identity(w.printed) == identity(replay.until(completes(later)))
    finally:
        store.stop()


def test_a_watch_from_now_that_loses_its_store_before_any_event_misses_nothing(
    migrated_url: str, watches: Callable[..., WatchProcess]
) -> None:
    config = store_config(migrated_url, grpc_port=free_port())
    store = StoreThread(config, migrated_url)
    other = StoreThread(store_config(migrated_url), migrated_url)
    try:
        w = watches(store.address)  # no --after: from now
        deadline = time.monotonic() + 30
        while "seriesflow_store_watchers 1.0" not in store.metrics_text():
            assert time.monotonic() < deadline, f"the watch never connected: {w.stderr()}"
            time.sleep(0.1)
        store.stop()
        # Committed through another replica while this watch has no store: it is after the
        # position the watch started at, so the watch must print it once it is back.
        during = completed_series(other.channel())
        store = StoreThread(config, migrated_url)
        w.until(completes(during))
        assert "reconnecting" in w.stderr()
    finally:
        store.stop()
        other.stop()


@pytest.mark.parametrize(
    ("cursor", "status"), [("999999999", "OUT_OF_RANGE"), ("abc", "INVALID_ARGUMENT")]
)
def test_a_bad_cursor_exits_2_with_the_stores_message(
    running_store: StoreThread, watches: Callable[..., WatchProcess], cursor: str, status: str
) -> None:
    completed_series(running_store.channel())
    w = watches(running_store.address, "--after", cursor)
    assert w.wait() == 2
    assert w.rest() == []
    message = w.stderr()
    assert f"refused the watch ({status}: " in message, message
    assert "Traceback" not in message


def test_the_store_requires_a_read_token_and_watch_sends_it(
    migrated_url: str, watches: Callable[..., WatchProcess], tmp_path: Path
) -> None:
    (tmp_path / "write-tokens").write_text(f"{WRITE_TOKEN}\n")
    (tmp_path / "read-tokens").write_text(f"{READ_TOKEN}\n")
    (tmp_path / "read-token").write_text(f"# watch\n{READ_TOKEN}\n")
    (tmp_path / "write-token").write_text(f"{WRITE_TOKEN}\n")
    config = store_config(
        migrated_url,
        grpc_auth="token",
        grpc_write_tokens_file=tmp_path / "write-tokens",
        grpc_read_tokens_file=tmp_path / "read-tokens",
    )
    store = StoreThread(config, migrated_url)
    try:
        s = uid()
        stub = pb_grpc.SeriesStoreStub(store.channel())  # type: ignore[no-untyped-call]
        update = make_update(s, [f"{s}.1"])
        metadata = [("authorization", f"Bearer {WRITE_TOKEN}")]
        [ack] = list(stub.StoreSeries(iter([update]), timeout=30, metadata=metadata))
        assert ack.ok
        anonymous = watches(store.address, "--after", "0")
        assert anonymous.wait() == 2
        assert "UNAUTHENTICATED" in anonymous.stderr()
        assert "--store-token-file" in anonymous.stderr()
        writer = watches(
            store.address, "--after", "0", "--store-token-file", str(tmp_path / "write-token")
        )
        assert writer.wait() == 2
        assert "PERMISSION_DENIED" in writer.stderr()
        reader = watches(
            store.address,
            "--after",
            "0",
            env={"SERIESFLOW_STORE_TOKEN_FILE": str(tmp_path / "read-token")},
        )
        reader.until(completes(s))
        assert reader.signal(signal.SIGTERM) == 0
    finally:
        store.stop()


def test_an_unreadable_token_file_is_a_configuration_error(
    watches: Callable[..., WatchProcess], tmp_path: Path
) -> None:
    w = watches(f"127.0.0.1:{free_port()}", "--store-token-file", str(tmp_path / "missing"))
    assert w.wait() == 2
    assert "configuration error: SERIESFLOW_STORE_TOKEN_FILE=" in w.stderr()


def test_grpcurl_watches_series_through_reflection(
    running_store: StoreThread, watches: Callable[..., WatchProcess]
) -> None:
    grpcurl = require_tool("grpcurl")
    ch = running_store.channel()
    series = [completed_series(ch), completed_series(ch, 3)]
    result = subprocess.run(
        [
            grpcurl,
            "-plaintext",
            "-max-time",
            "5",
            "-d",
            '{"after_cursor": "0", "kinds": ["SERIES_EVENT_KIND_COMPLETED"]}',
            running_store.address,
            "seriesflow.v1.SeriesStore/WatchSeries",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # -max-time ends the endless stream: grpcurl reports DeadlineExceeded after the events.
    assert "DeadlineExceeded" in result.stderr, result.stderr
    decoder, text, events = json.JSONDecoder(), result.stdout.strip(), []
    while text:
        event, end = decoder.raw_decode(text)
        events.append(event)
        text = text[end:].lstrip()
    assert [e["series"]["seriesInstanceUid"] for e in events] == series
    ours = watches(running_store.address, "--after", "0", "--kind", "completed")
    assert identity(ours.until(completes(series[-1]))) == identity(events)


def _readme_watch_loop() -> str:
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"```bash\n(#!/usr/bin/env bash\n# watch-loop\.sh.*?)```", readme, re.S)
    assert found is not None, "README lost its watch-loop.sh recipe"
    command = " ".join(shlex.quote(part) for part in (sys.executable, "-m", "seriesflow"))
    return found.group(1).replace(".venv/bin/seriesflow", command)


def test_the_readme_watch_loop_runs_the_pipeline_once_per_series_across_a_kill_9(
    running_store: StoreThread, tmp_path: Path
) -> None:
    ch = running_store.channel()
    (tmp_path / "watch-loop.sh").write_text(_readme_watch_loop())
    (tmp_path / "pipeline.sh").write_text(
        '#!/bin/sh\ncat > "series-$SERIESFLOW_EVENT_CURSOR.json"\n'
        'echo "$SERIESFLOW_EVENT_CURSOR $SERIESFLOW_SERIES_INSTANCE_UID" >> done.log\n'
    )
    (tmp_path / "pipeline.sh").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERIESFLOW_")}
    env["SERIESFLOW_STORE_ADDRESS"] = running_store.address

    def start_loop() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            ["bash", "watch-loop.sh"], cwd=tmp_path, env=env, start_new_session=True
        )

    def done() -> list[tuple[str, str]]:
        log = tmp_path / "done.log"
        lines = log.read_text().splitlines() if log.exists() else []
        return [(c, s) for c, s in (line.split() for line in lines)]

    def wait_for(count: int) -> list[tuple[str, str]]:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            got = done()
            state = tmp_path / "watch.cursor"
            if len(got) >= count and state.exists() and state.read_text().strip() == got[-1][0]:
                return got
            time.sleep(0.1)
        raise AssertionError(f"pipeline ran for {done()}, expected {count} series")

    expected = [completed_series(ch), completed_series(ch)]
    loop = start_loop()
    try:
        wait_for(2)
        os.killpg(loop.pid, signal.SIGKILL)  # the machine dies: loop, watch and all
        loop.wait(30)
        expected.append(completed_series(ch))
        loop = start_loop()
        ran = wait_for(3)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(loop.pid, signal.SIGTERM)
        loop.wait(30)
    assert [s for _, s in ran] == expected, "each completed series ran exactly once"
    for cursor, series_uid in ran:
        series = json.loads((tmp_path / f"series-{cursor}.json").read_text())
        assert series["seriesInstanceUid"] == series_uid


def test_every_grpc_status_has_a_decision() -> None:
    assert set(watch_cli._ON_STATUS) == {code.name for code in grpc.StatusCode}
    retried = {name for name, hint in watch_cli._ON_STATUS.items() if hint is None}
    assert "UNAVAILABLE" in retried
    assert not retried & {"OUT_OF_RANGE", "INVALID_ARGUMENT", "UNAUTHENTICATED"}
