"""Replay realistic arrival traces through the real series Tracker: premature completions
and completion delay, fixed idle timeout against the adaptive idle wait.

Time is simulated: the real `Tracker` runs on a fake clock, driven like the flusher drives
it (it sleeps until `next_deadline()` + 5 ms, at most 1 s, or until `changed` is set, then
takes `due()`), so an hour of traffic replays in well under a second. Traces come from
seeded random distributions (same seed, same figures); each scenario is a number of
sessions (one association or a few, carrying one study or several):

  ct_pauses     CT over one association kept open for the study: 2-4 series of 100-400
                slices, gaps log-normal (median 40 ms, sigma 0.6); 60 % of series pause
                1-3 times mid-series for 2-8 s (reconstruction of the next slab); 3-15 s
                between series; release after the last.
  interleaved   one series of 200-600 instances sent by two associations at once (shares
                30-70 %, start offset 0-2 s, gaps exponential, mean 60 ms each); half the
                time both release at the end, half the time they stay open (pooled).
  pacs_burst    a PACS forwarding 3 studies of 3-8 series of 20-300 instances as fast as it
                can over one association: gaps exponential mean 8 ms, 1 % hiccups of
                0.2-1 s (disk, GC); 0-1 s between studies; release after the last.
  slow_mr       MR, one slice a second (normal, sd 0.15 s): 3-6 series of 20-60 slices,
                20-90 s between series (the next sequence), one association for the exam.
  sporadic_us   ultrasound captures: 3-15 instances, gaps exponential mean 6 s, one
                association open for the exam: no wait shorter than the gaps is safe.
  per_instance  a sender opening one association per instance (released at once): 50-200
                instances, 0.1-0.6 s apart, 2 % pauses of 1-3 s: the release grace decides.

Each scenario's sessions come from 1-4 senders (calling AE titles, see SENDERS), the way
a few modalities of one kind feed one receiver.

A premature completion is an IDLE or RELEASED flush of a series after which another
instance of it arrived (the store would reopen it). The delay is from a series' last
instance to its final completion. Adaptive modes are named by multiplier and [min, max]
seconds; "no AE" does not pass the calling AE title to the tracker, so pauses are
remembered per series and association only. "wakes/1k" counts the flusher wake-ups that
instances of an already open series caused, per 1,000 instances (kept rare on purpose).

    .venv/bin/python bench/completion_replay.py            # full run (~40 s)
    .venv/bin/python bench/completion_replay.py --quick    # CI smoke run (a few seconds)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from seriesflow.receiver.tracker import Adaptive, Reason, Tracker  # noqa: E402

RELEASED_GRACE = 2.0  # the receiver's default SERIESFLOW_SERIES_RELEASED_GRACE
MAX_AGE = 600.0  # the receiver's default SERIESFLOW_SERIES_MAX_AGE
SESSION_SPACING = 200.0  # seconds of silence between sessions: they never interact


@dataclasses.dataclass(frozen=True)
class Event:
    at: float
    kind: str  # "add", "release" or "abort"
    association: int
    series: str = ""
    sender: str = ""


@dataclasses.dataclass(frozen=True)
class Mode:
    name: str
    idle_timeout: float
    adaptive: Adaptive | None = None
    senders: bool = True  # pass the calling AE title to the tracker (its pause memory)


class Trace:
    """Builds one scenario's events; sessions are laid end to end, SESSION_SPACING apart."""

    def __init__(self, name: str, rng: random.Random, senders: int) -> None:
        self.name = name
        self.rng = rng
        self.senders = senders
        self.sender = ""
        self.events: list[Event] = []
        self.start = 0.0
        self._assoc = 0
        self._series = 0

    def association(self) -> int:
        self._assoc += 1
        return self._assoc

    def series(self) -> str:
        self._series += 1
        return f"{self.name}.{self._series}"

    def add(self, at: float, association: int, series: str) -> None:
        self.events.append(Event(self.start + at, "add", association, series, self.sender))

    def release(self, at: float, association: int) -> None:
        self.events.append(Event(self.start + at, "release", association))

    def end_session(self) -> None:
        self.start = max(e.at for e in self.events) + SESSION_SPACING


def ct_pauses(t: Trace) -> None:
    r, assoc, now = t.rng, t.association(), 0.0
    for _ in range(r.randint(2, 4)):
        series, n = t.series(), r.randint(100, 400)
        pauses = set(r.sample(range(1, n), r.randint(1, 3))) if r.random() < 0.6 else set()
        for i in range(n):
            t.add(now, assoc, series)
            now += r.uniform(2, 8) if i + 1 in pauses else r.lognormvariate(-3.2, 0.6)
        now += r.uniform(3, 15)
    t.release(now, assoc)


def interleaved(t: Trace) -> None:
    r, series, n = t.rng, t.series(), t.rng.randint(200, 600)
    share = int(n * r.uniform(0.3, 0.7))
    pooled = r.random() < 0.5
    for count, offset in ((share, 0.0), (n - share, r.uniform(0, 2))):
        assoc, now = t.association(), offset
        for _ in range(count):
            t.add(now, assoc, series)
            now += r.expovariate(1 / 0.06)
        t.release(now + (60 if pooled else 0.01), assoc)


def pacs_burst(t: Trace) -> None:
    r, assoc, now = t.rng, t.association(), 0.0
    for _ in range(3):
        for _ in range(r.randint(3, 8)):
            series = t.series()
            for _ in range(r.randint(20, 300)):
                t.add(now, assoc, series)
                now += r.uniform(0.2, 1.0) if r.random() < 0.01 else r.expovariate(1 / 0.008)
        now += r.uniform(0, 1)
    t.release(now, assoc)


def slow_mr(t: Trace) -> None:
    r, assoc, now = t.rng, t.association(), 0.0
    for _ in range(r.randint(3, 6)):
        series = t.series()
        for _ in range(r.randint(20, 60)):
            t.add(now, assoc, series)
            now += max(0.3, r.normalvariate(1.0, 0.15))
        now += r.uniform(20, 90)
    t.release(now, assoc)


def sporadic_us(t: Trace) -> None:
    r, assoc, now, series = t.rng, t.association(), 0.0, t.series()
    for _ in range(r.randint(3, 15)):
        t.add(now, assoc, series)
        now += r.expovariate(1 / 6)
    t.release(now, assoc)


def per_instance(t: Trace) -> None:
    r, now, series = t.rng, 0.0, t.series()
    for _ in range(r.randint(50, 200)):
        assoc = t.association()
        t.add(now, assoc, series)
        t.release(now + 0.01, assoc)
        now += r.uniform(1, 3) if r.random() < 0.02 else r.uniform(0.1, 0.6)


# How many distinct senders (calling AE titles) each scenario's sessions come from.
SENDERS = {
    "ct_pauses": 3,
    "interleaved": 1,
    "pacs_burst": 1,
    "slow_mr": 2,
    "sporadic_us": 4,
    "per_instance": 2,
}

SCENARIOS: dict[str, Callable[[Trace], None]] = {
    "ct_pauses": ct_pauses,
    "interleaved": interleaved,
    "pacs_burst": pacs_burst,
    "slow_mr": slow_mr,
    "sporadic_us": sporadic_us,
    "per_instance": per_instance,
}

MODES = [
    Mode("fixed 10 s (old default)", 10.0),
    Mode("fixed 5 s", 5.0),
    Mode("fixed 30 s", 30.0),
    Mode("adaptive x4 [2, 10]", 10.0, Adaptive(4, 2, 10)),
    Mode("adaptive x4 [3, 10] default", 10.0, Adaptive(4, 3, 10)),
    Mode("adaptive x4 [3, 10] no AE", 10.0, Adaptive(4, 3, 10), senders=False),
    Mode("adaptive x8 [3, 10]", 10.0, Adaptive(8, 3, 10)),
    Mode("adaptive x4 [3, 30]", 10.0, Adaptive(4, 3, 30)),
    Mode("adaptive x4 [5, 30]", 10.0, Adaptive(4, 5, 30)),
]


def build(name: str, sessions: int, seed: int) -> list[Event]:
    trace = Trace(name, random.Random(f"{seed}:{name}"), SENDERS[name])
    for _ in range(sessions):
        trace.sender = f"{name.upper()}{trace.rng.randrange(trace.senders)}"
        SCENARIOS[name](trace)
        trace.end_session()
    # A stable sort: an instance and its association's release at one instant stay in order.
    return sorted(trace.events, key=lambda e: e.at)


@dataclasses.dataclass
class Result:
    series: int
    instances: int
    premature: int  # IDLE/RELEASED flushes followed by another instance of the series
    reopened_series: int
    delays: list[float]
    wakes: int  # flusher wake-ups caused by an instance of an already open series


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def replay(events: list[Event], mode: Mode) -> Result:
    clock = FakeClock()
    tracker = Tracker(
        mode.idle_timeout, RELEASED_GRACE, MAX_AGE, clock=clock, adaptive=mode.adaptive
    )
    last_arrival: dict[str, float] = {}
    for e in events:
        if e.kind == "add":
            last_arrival[e.series] = e.at
    completions: dict[str, list[float]] = {}
    wakes = 0
    instances = 0
    look_at: float | None = None  # when the simulated flusher looks next

    def run_flusher() -> None:
        nonlocal look_at
        tracker.changed.clear()
        for flush in tracker.due():
            if flush.reason is not Reason.MAX_AGE:
                completions.setdefault(flush.series_uid, []).append(clock.now)
        deadline = tracker.next_deadline()
        look_at = None if deadline is None else clock.now + min(deadline + 0.005, 1.0)

    i = 0
    while i < len(events) or look_at is not None:
        if i < len(events) and (look_at is None or events[i].at < look_at):
            e = events[i]
            i += 1
            clock.now = e.at
            if e.kind == "add":
                instances += 1
                was_open = tracker.idle_wait(e.series) is not None
                sender = e.sender if mode.senders else None
                tracker.add(e.series, instances, e.association, not was_open, sender=sender)
                if tracker.changed.is_set():
                    wakes += was_open
                    run_flusher()
            else:
                tracker.association_ended(e.association, released=e.kind == "release")
                run_flusher()
        else:
            assert look_at is not None
            clock.now = look_at
            run_flusher()
    premature, reopened, delays = 0, 0, []
    for series, last in last_arrival.items():
        times = completions[series]
        early = [c for c in times if c < last]
        premature += len(early)
        reopened += bool(early)
        delays.append(min(c for c in times if c >= last) - last)
    return Result(len(last_arrival), instances, premature, reopened, delays, wakes)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def row(scenario: str, label: str, result: Result) -> dict[str, float | int | str]:
    d = result.delays
    return {
        "scenario": scenario,
        "mode": label,
        "series": result.series,
        "premature": result.premature,
        "reopened_pct": round(100 * result.reopened_series / result.series, 1),
        "delay_p50": round(statistics.median(d), 2),
        "delay_p95": round(percentile(d, 0.95), 2),
        "delay_max": round(max(d), 2),
        "wakes_per_1k_instances": round(1000 * result.wakes / result.instances, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few sessions (CI smoke run)")
    parser.add_argument("--sessions", type=int, default=None, help="sessions per scenario")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    sessions = args.sessions or (12 if args.quick else 100)
    started = time.monotonic()
    traces = {name: build(name, sessions, args.seed) for name in SCENARIOS}
    rows: list[dict[str, float | int | str]] = []
    header = (
        f"{'scenario':<13} {'mode':<27} {'series':>6} {'premature':>9} {'reopened':>8} "
        f"{'p50 s':>7} {'p95 s':>7} {'max s':>7} {'wakes/1k':>8}"
    )
    print(f"{sessions} sessions per scenario, seed {args.seed}\n{header}", flush=True)
    for mode in MODES:
        total = Result(0, 0, 0, 0, [], 0)
        for name, events in traces.items():
            result = replay(events, mode)
            total.series += result.series
            total.instances += result.instances
            total.premature += result.premature
            total.reopened_series += result.reopened_series
            total.delays += result.delays
            total.wakes += result.wakes
            rows.append(row(name, mode.name, result))
        rows.append(row("all", mode.name, total))
        for r in rows[-len(traces) - 1 :]:
            print(
                f"{r['scenario']:<13} {r['mode']:<27} {r['series']:>6} {r['premature']:>9} "
                f"{r['reopened_pct']:>7}% {r['delay_p50']:>7} {r['delay_p95']:>7} "
                f"{r['delay_max']:>7} {r['wakes_per_1k_instances']:>8}",
                flush=True,
            )
        print()
    print(f"replayed in {time.monotonic() - started:.1f} s")
    print(json.dumps({"completion_replay": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
