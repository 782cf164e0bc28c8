"""Completion rules of the series tracker, on a clock the test moves by hand."""

from __future__ import annotations

import pytest

from seriesflow import settings
from seriesflow.receiver.config import ReceiverConfig
from seriesflow.receiver.tracker import Adaptive, Reason, Tracker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tracker(clock: Clock, idle: float = 10, grace: float = 2, max_age: float = 600) -> Tracker:
    return Tracker(idle, grace, max_age, clock=clock)


def test_series_idle_for_the_timeout_is_flushed_as_idle() -> None:
    clock = Clock()
    t = tracker(clock)
    t.add("S", 1, association=7, representative=True)
    clock.now += 9.9
    assert t.due() == []
    clock.now += 0.1
    [flush] = t.due()
    assert (flush.series_uid, flush.seqs, flush.reason) == ("S", [1], Reason.IDLE)


def test_released_grace_waits_for_every_association_that_carried_the_series() -> None:
    clock = Clock()
    t = tracker(clock)
    t.add("S", 1, association=1, representative=True)
    t.add("S", 2, association=2, representative=False)
    t.association_ended(1, released=True)
    clock.now += 3
    assert t.due() == []  # association 2 is still open
    t.association_ended(2, released=True)
    [flush] = t.due()
    assert flush.reason is Reason.RELEASED and flush.seqs == [1, 2]


def test_an_aborted_association_leaves_its_series_on_the_idle_timeout() -> None:
    clock = Clock()
    t = tracker(clock)
    t.add("S", 1, association=1, representative=True)
    t.association_ended(1, released=False)
    clock.now += 3
    assert t.due() == []
    clock.now += 7
    assert [f.reason for f in t.due()] == [Reason.IDLE]


def test_a_long_series_is_flushed_in_parts_at_max_age() -> None:
    clock = Clock()
    t = tracker(clock, idle=10, max_age=30)
    parts = []
    for seq in range(1, 71):  # one instance a second for 70 s: never idle
        t.add("S", seq, association=1, representative=seq == 1)
        clock.now += 1
        parts += t.due()
    assert [p.reason for p in parts] == [Reason.MAX_AGE, Reason.MAX_AGE]
    # Each part leaves the newest instance open, to carry the series' completion later.
    assert [len(p.seqs) for p in parts] == [29, 30]
    t.association_ended(1, released=True)
    clock.now += 2
    [last] = t.due()
    assert last.reason is Reason.RELEASED and len(last.seqs) == 11
    assert sorted(parts[0].seqs + parts[1].seqs + last.seqs) == list(range(1, 71))


def test_a_max_age_part_never_leaves_the_series_without_a_completion() -> None:
    clock = Clock()
    t = tracker(clock, idle=10, max_age=5)
    t.add("S", 1, association=1, representative=True)
    t.add("S", 2, association=1, representative=False)
    clock.now += 5
    [part] = t.due()
    assert part.seqs == [1]
    clock.now += 4  # max age again, with a single instance left: nothing to split off
    t.add("S", 3, association=1, representative=False)
    t.association_ended(1, released=False)
    clock.now += 5
    [part] = t.due()  # old again with two instances: [2] goes, [3] stays open
    assert (part.seqs, part.reason) == ([2], Reason.MAX_AGE)
    clock.now += 5
    [final] = t.due()  # idle beats max age: the series completes with its last instance
    assert (final.seqs, final.reason) == ([3], Reason.IDLE)


def test_a_late_instance_reopens_the_series_as_a_new_group() -> None:
    clock = Clock()
    t = tracker(clock)
    t.add("S", 1, association=1, representative=True)
    clock.now += 10
    assert [f.seqs for f in t.due()] == [[1]]
    assert t.needs_representative("S")  # the new group carries a header again
    t.add("S", 2, association=3, representative=True)
    clock.now += 10
    assert [f.seqs for f in t.due()] == [[2]]


def test_interleaved_series_complete_independently() -> None:
    clock = Clock()
    t = tracker(clock)
    t.add("A", 1, association=1, representative=True)
    clock.now += 5
    t.add("B", 2, association=1, representative=True)
    clock.now += 5
    assert [f.series_uid for f in t.due()] == ["A"]
    assert t.next_deadline() == 5
    clock.now += 5
    assert [f.series_uid for f in t.due()] == ["B"]
    assert t.next_deadline() is None


def test_recovered_entries_complete_after_the_short_grace() -> None:
    clock = Clock()
    t = tracker(clock)
    t.add("S", 1, association=None, representative=True)
    clock.now += 2
    assert [f.reason for f in t.due()] == [Reason.RELEASED]


# -- adaptive idle wait ------------------------------------------------------------------


def adaptive(
    clock: Clock,
    multiplier: float = 4,
    min_idle: float = 1,
    max_idle: float = 30,
    idle: float = 10,
    grace: float = 0.5,
    max_age: float = 600,
) -> Tracker:
    return Tracker(
        idle, grace, max_age, clock=clock, adaptive=Adaptive(multiplier, min_idle, max_idle)
    )


def send(
    t: Tracker,
    clock: Clock,
    series: str,
    gaps: list[float],
    association: int = 1,
    sender: str | None = None,
) -> None:
    """One instance now, then one after each gap (the clock ends at the last instance)."""
    t.add(series, 0, association, representative=True, sender=sender)
    for seq, gap in enumerate(gaps, start=1):
        clock.now += gap
        t.add(series, seq, association, representative=False, sender=sender)


def test_adaptive_wait_shrinks_to_the_minimum_for_a_sender_as_fast_as_it_can() -> None:
    clock = Clock()
    t = adaptive(clock)
    send(t, clock, "S", [0.01] * 50)
    assert t.idle_wait("S") == 1.0
    assert t.next_deadline() == 1.0
    clock.now += 0.99
    assert t.due() == []
    clock.now += 0.01
    assert [f.reason for f in t.due()] == [Reason.IDLE]


def test_adaptive_wait_stretches_for_a_slow_sender_and_stays_under_the_maximum() -> None:
    clock = Clock()
    t = adaptive(clock, max_idle=30)
    send(t, clock, "MR", [1.0] * 60)  # one slice a second, steady
    wait = t.idle_wait("MR")
    assert wait is not None and 4.0 <= wait < 5.0  # 4 x the gap, deviation nearly gone
    send(t, clock, "US", [20.0] * 5)  # far slower: the wait would be ~80 s
    assert t.idle_wait("US") == 30.0
    clock.now += 29.9
    assert [f.series_uid for f in t.due()] == ["MR"]
    clock.now += 0.1
    assert [f.series_uid for f in t.due()] == ["US"]


def test_a_jittery_sender_gets_a_longer_wait_than_a_steady_one_with_the_same_mean_gap() -> None:
    clock = Clock()
    t = adaptive(clock, min_idle=0.5)
    send(t, clock, "steady", [0.5] * 40)
    send(t, clock, "jittery", [0.1, 0.9] * 20, association=2)
    steady, jittery = t.idle_wait("steady"), t.idle_wait("jittery")
    assert steady is not None and jittery is not None and jittery > 1.5 * steady


def test_a_series_without_a_gap_yet_waits_the_idle_timeout_within_the_bounds() -> None:
    clock = Clock()
    t = adaptive(clock, idle=10, max_idle=30)
    t.add("S", 1, association=1, representative=True)
    assert t.idle_wait("S") == 10.0
    narrow = adaptive(clock, idle=10, max_idle=5)
    narrow.add("S", 1, association=1, representative=True)
    assert narrow.idle_wait("S") == 5.0


def test_a_pause_shorter_than_the_max_does_not_complete_when_the_rhythm_predicts_it() -> None:
    clock = Clock()
    t = adaptive(clock, min_idle=1, max_idle=30)
    # The modality sends one slice, reconstructs for 6 s (within the first, fixed wait),
    # then sends fast: it is known to pause, so its wait stays above 1.5 x 6 s.
    send(t, clock, "CT", [6.0] + [0.05] * 40)
    wait = t.idle_wait("CT")
    assert wait is not None and wait >= 9.0
    clock.now += 7  # the next reconstruction pause
    assert t.due() == []
    send(t, clock, "CT", [0.05] * 10)
    # Without that history the same fast rhythm completes after the minimum wait.
    send(t, clock, "other", [0.05] * 40, association=2)
    clock.now += 1
    assert [f.series_uid for f in t.due()] == ["other"]
    clock.now += 8.1
    [ct] = t.due()
    assert (ct.series_uid, len(ct.seqs), ct.reason) == ("CT", 53, Reason.IDLE)


def test_a_long_pause_counts_as_a_pause_not_as_the_rhythm() -> None:
    clock = Clock()
    t = adaptive(clock, min_idle=1, max_idle=30)
    send(t, clock, "CT", [6.0] + [0.05] * 40 + [8.0] + [0.05] * 3)
    # 1.5 x the 8 s pause, not the ~30 s an unclipped deviation would give right after it.
    assert t.idle_wait("CT") == 12.0


def test_a_series_that_completed_too_early_waits_for_that_pause_when_reopened() -> None:
    clock = Clock()
    t = adaptive(clock, min_idle=1)
    send(t, clock, "CT", [0.05] * 30)
    clock.now += 1
    assert [f.reason for f in t.due()] == [Reason.IDLE]  # premature: the CT only paused
    clock.now += 3  # 4 s after its last instance, the next slice comes
    send(t, clock, "CT", [0.05] * 30)
    wait = t.idle_wait("CT")
    assert wait is not None and wait >= 6.0
    clock.now += 4  # the same pause again: the series stays open this time
    assert t.due() == []


def test_a_senders_pause_is_remembered_across_its_associations_then_fades() -> None:
    clock = Clock()
    t = adaptive(clock, min_idle=1, max_idle=30)
    send(t, clock, "A", [5.0] + [0.05] * 20, association=1, sender="CT1")
    t.association_ended(1, released=True)
    clock.now += 1
    assert [f.series_uid for f in t.due()] == ["A"]
    send(t, clock, "B", [0.05] * 20, association=2, sender="CT1")
    send(t, clock, "C", [0.05] * 20, association=3, sender="PACS")
    wait_b = t.idle_wait("B")
    assert wait_b is not None and 6.0 <= wait_b <= 7.5  # 1.5 x 5 s, a tenth faded
    assert t.idle_wait("C") == 1.0  # another sender: its own rhythm only
    # Series after series without a pause, the one-off stall is forgotten.
    for n in range(30):
        clock.now += 60
        t.due()
        send(t, clock, f"later{n}", [0.05] * 5, association=10 + n, sender="CT1")
    assert t.idle_wait("later29") == 1.0


def test_adaptive_wait_is_never_shorter_than_the_release_grace() -> None:
    clock = Clock()
    t = adaptive(clock, min_idle=0.1, grace=2)
    send(t, clock, "open", [0.01] * 30, association=1)
    send(t, clock, "released", [0.01] * 30, association=2)
    t.association_ended(2, released=True)
    assert t.idle_wait("open") == 2.0
    clock.now += 2
    assert sorted((f.series_uid, f.reason) for f in t.due()) == [
        ("open", Reason.IDLE),
        ("released", Reason.RELEASED),
    ]


def test_released_grace_and_max_age_work_as_in_fixed_mode() -> None:
    clock = Clock()
    t = adaptive(clock, min_idle=3, max_idle=30, grace=2, max_age=30)
    parts = []
    for seq in range(1, 71):  # one instance a second for 70 s: never idle
        t.add("S", seq, association=1, representative=seq == 1)
        clock.now += 1
        parts += t.due()
    assert [(p.reason, len(p.seqs)) for p in parts] == [(Reason.MAX_AGE, 29), (Reason.MAX_AGE, 30)]
    t.association_ended(1, released=True)
    assert t.next_deadline() == 1.0  # the grace, 2 s after the last instance
    clock.now += 1
    [last] = t.due()
    assert last.reason is Reason.RELEASED and len(last.seqs) == 11


def test_recovered_entries_teach_no_rhythm() -> None:
    clock = Clock()
    t = adaptive(clock, grace=2)
    for seq in range(20):  # all at once at start
        t.add("S", seq, association=None, representative=seq == 0)
    assert t.idle_wait("S") == 10.0
    clock.now += 2
    assert [f.reason for f in t.due()] == [Reason.RELEASED]


def test_fixed_mode_waits_the_idle_timeout_whatever_the_rhythm() -> None:
    clock = Clock()
    t = tracker(clock, idle=10)
    send(t, clock, "S", [0.01] * 50 + [6.0])
    assert t.idle_wait("S") == 10.0
    clock.now += 9.9
    assert t.due() == []
    clock.now += 0.1
    assert [f.reason for f in t.due()] == [Reason.IDLE]


def test_the_flusher_is_woken_for_a_new_group_or_a_deadline_earlier_than_its_next_look() -> None:
    clock = Clock()
    for t in (tracker(clock), adaptive(clock)):
        t.add("S", 1, association=1, representative=True)
        assert t.changed.is_set()  # a new group
        t.next_deadline()
        t.changed.clear()
        clock.now += 0.01
        t.add("S", 2, association=1, representative=False)
        # Fixed: the deadline only moved later. Adaptive: the wait fell from 10 s to 1 s,
        # earlier than the flusher's next look.
        assert t.changed.is_set() is (t.adaptive is not None)
        t.next_deadline()
        t.changed.clear()
        for seq in range(3, 200):  # a steady fast sender: deadlines only move later
            clock.now += 0.01
            t.add("S", seq, association=1, representative=False)
        assert not t.changed.is_set()


# -- configuration -----------------------------------------------------------------------


def test_adaptive_is_the_default_between_3_s_and_the_idle_timeout() -> None:
    config = settings.load(ReceiverConfig, {})
    assert config.series_completion_mode == "adaptive"
    assert config.adaptive_idle() == Adaptive(4, 3, 10)
    # A shortest wait above an unset maximum gives way to the idle timeout.
    short = settings.load(ReceiverConfig, {"SERIESFLOW_SERIES_IDLE_TIMEOUT": "0.5"})
    assert short.adaptive_idle() == Adaptive(4, 0.5, 0.5)
    fixed = settings.load(ReceiverConfig, {"SERIESFLOW_SERIES_COMPLETION_MODE": "Fixed"})
    assert fixed.adaptive_idle() is None
    wide = settings.load(
        ReceiverConfig,
        {
            "SERIESFLOW_SERIES_IDLE_MULTIPLIER": "6",
            "SERIESFLOW_SERIES_IDLE_MIN": "2",
            "SERIESFLOW_SERIES_IDLE_MAX": "30",
        },
    )
    assert wide.adaptive_idle() == Adaptive(6, 2, 30)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("SERIESFLOW_SERIES_COMPLETION_MODE", "sometimes", "expected one of fixed, adaptive"),
        ("SERIESFLOW_SERIES_IDLE_MULTIPLIER", "0.5", "1 or more"),
        ("SERIESFLOW_SERIES_IDLE_MULTIPLIER", "fast", "1 or more"),
        ("SERIESFLOW_SERIES_IDLE_MULTIPLIER", "inf", "1 or more"),
        ("SERIESFLOW_SERIES_IDLE_MIN", "0", "greater than 0"),
        ("SERIESFLOW_SERIES_IDLE_MIN", "-1", "greater than 0"),
        ("SERIESFLOW_SERIES_IDLE_MAX", "0", "greater than 0"),
        ("SERIESFLOW_SERIES_IDLE_MAX", "nan", "greater than 0"),
    ],
)
def test_a_bad_adaptive_setting_is_refused_naming_it(
    variable: str, value: str, message: str
) -> None:
    with pytest.raises(settings.ConfigError, match=f"{variable}='{value}' is invalid: .*{message}"):
        settings.load(ReceiverConfig, {variable: value})


def test_a_shortest_idle_wait_above_the_longest_is_refused() -> None:
    environ = {"SERIESFLOW_SERIES_IDLE_MIN": "20", "SERIESFLOW_SERIES_IDLE_MAX": "10"}
    with pytest.raises(settings.ConfigError) as caught:
        settings.load(ReceiverConfig, environ)
    assert str(caught.value) == (
        "SERIESFLOW_SERIES_IDLE_MIN=20 is above SERIESFLOW_SERIES_IDLE_MAX=10: the shortest "
        "idle wait must not exceed the longest"
    )
