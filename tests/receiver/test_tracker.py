"""Completion rules of the series tracker, on a clock the test moves by hand."""

from __future__ import annotations

from seriesflow.receiver.tracker import Reason, Tracker


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
