"""Group spooled instances by series and decide when each series is flushed, and why.

Nothing in DICOM says a series is finished, so completion is a guess (contract 3):
- IDLE: no new instance of the series for its idle wait: `idle_timeout` seconds (fixed
  mode), or a wait learned from the series' own rhythm (adaptive mode, see `Adaptive`);
- RELEASED: every association that carried the series was released normally and
  `released_grace` seconds (shorter) passed since its last instance;
- MAX_AGE: the open group is older than `max_age`; all but its newest instance are flushed
  as a part and the series stays open (the newest instance later carries the completion).
An instance arriving after its series was flushed opens a new group: the store reopens
the series and updates its counts. Any number of associations may feed one series.

The store decides completion across receiver replicas (contract 3), so every open group is
also reported to it as a hold (`holds_due`): once when the group opens, then again every
`renew_after` seconds while it stays open, so the store never completes a series that is
still arriving here, and a hold this receiver stops renewing (it died) expires there.
"""

from __future__ import annotations

import dataclasses
import enum
import threading
import time
from collections.abc import Callable


class Reason(enum.Enum):
    IDLE = "idle"
    RELEASED = "released"
    MAX_AGE = "max_age"


@dataclasses.dataclass(frozen=True)
class Adaptive:
    """Adaptive idle wait: learn each series' rhythm from the gaps between its instances.

    The wait is `multiplier` x (smoothed gap + 4 x smoothed deviation), the estimator TCP
    uses for its retransmission timeout (RFC 6298, gains 1/8 and 1/4): a jittery sender
    gets a longer wait than a steady one with the same mean gap. It is never shorter than
    `_PAUSE_MARGIN` x the longest pause already seen, so a sender that paused once (a
    modality reconstructing the next slab) is waited for when it pauses again. Pauses
    are remembered per series, per association, per sender (calling AE title, across its
    associations; a tenth fades at each new series of it, so a one-off stall is
    forgotten), and a series that completed as idle and then got another instance (it
    completed too early) remembers the pause that fooled it. The wait is clamped to
    [`min_idle`, `max_idle`]; until a series has its first gap, `idle_timeout` (clamped
    too) applies, since nothing is known of its rhythm yet.
    """

    multiplier: float
    min_idle: float
    max_idle: float


# A pause the series already made is a pause its sender makes: wait that long and half again.
_PAUSE_MARGIN = 1.5
_GAIN = 1 / 8  # RFC 6298 alpha: weight of a new gap in the smoothed gap
_DEV_GAIN = 1 / 4  # RFC 6298 beta: weight of a new deviation in the smoothed deviation
_RHYTHM_CLIP = 2.0  # a gap counts in the rhythm up to this times the rhythm's bound
_SENDERS_REMEMBERED = 1024  # senders whose pauses are kept; the least recent is forgotten
_SENDER_FADE = 0.9  # what a sender's remembered pause keeps at each new series of it


@dataclasses.dataclass
class _Group:
    series_uid: str
    first_at: float
    last_at: float
    last_wall: float
    seqs: list[int] = dataclasses.field(default_factory=list)
    reported_at: float | None = None  # when its hold was last reported to the store
    associations: set[int] = dataclasses.field(default_factory=set)
    released: bool = False  # every carrying association ended with a normal release
    has_representative: bool = False
    wait: float = 0.0  # idle wait after its latest instance (fixed, or learned)
    gap: float | None = None  # adaptive: smoothed gap between instances, None before one
    gap_dev: float = 0.0  # adaptive: smoothed absolute deviation of the gaps
    longest_gap: float = 0.0  # adaptive: the longest pause known for this group
    sender: str | None = None  # the calling AE title of its first instance, if given


@dataclasses.dataclass(frozen=True)
class Hold:
    """An open group to report (or re-report) to the store as holding its series."""

    series_uid: str
    first_seq: int  # the group's first spool sequence: the position the hold starts at


@dataclasses.dataclass(frozen=True)
class Flush:
    """One series' instances to send now, and why now."""

    series_uid: str
    seqs: list[int]
    reason: Reason
    last_instance_wall: float  # time.time() of the group's latest instance, for latency


class Tracker:
    """Thread-safe: SCP handler threads add, the flusher thread takes what is due."""

    def __init__(
        self,
        idle_timeout: float,
        released_grace: float,
        max_age: float,
        clock: Callable[[], float] = time.monotonic,
        adaptive: Adaptive | None = None,
    ) -> None:
        self.idle_timeout = idle_timeout
        self.adaptive = adaptive
        if adaptive is None:
            self._min_wait = self._max_wait = idle_timeout
        else:
            # A series whose sender is still connected never completes sooner than one whose
            # sender said goodbye: the release grace stays the shortest wait, so RELEASED
            # keeps its meaning in both modes.
            self._max_wait = adaptive.max_idle
            self._min_wait = min(max(adaptive.min_idle, released_grace), adaptive.max_idle)
        self.released_grace = min(released_grace, self._max_wait)
        self._seed_wait = min(max(idle_timeout, self._min_wait), self._max_wait)
        self.max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._groups: dict[str, _Group] = {}
        self._carried: dict[int, set[str]] = {}  # open association -> series it carried
        self.changed = threading.Event()  # wakes the flusher when deadlines may move
        # When the flusher will look again at the latest (from its last `next_deadline`):
        # an instance whose group's deadline is earlier than this must wake it.
        self._flusher_looks_by = float("inf")
        # Adaptive memory of pauses: the longest gap seen per open association, and the
        # last instance time of series recently completed as idle (insertion order is
        # completion order, so the oldest are pruned from the front).
        self._pauses: dict[int, float] = {}
        self._sender_pauses: dict[str, float] = {}  # least recently used first
        self._idle_completed: dict[str, float] = {}

    def needs_representative(self, series_uid: str) -> bool:
        """Whether the next instance of this series should carry the full header."""
        with self._lock:
            group = self._groups.get(series_uid)
            return group is None or not group.has_representative

    def add(
        self,
        series_uid: str,
        seq: int,
        association: int | None,
        representative: bool,
        received_wall: float | None = None,
        sender: str | None = None,
    ) -> None:
        """Record one spooled instance; `association` None means recovered from the spool.

        `sender` (the calling AE title) lets the adaptive wait remember a modality's pauses
        across its associations."""
        now = self._clock()
        wall = time.time() if received_wall is None else received_wall
        with self._lock:
            group = self._groups.get(series_uid)
            wake = group is None
            if group is None:
                group = _Group(
                    series_uid, first_at=now, last_at=now, last_wall=wall, wait=self._seed_wait
                )
                # Recovered entries have no sender attached any more: the short grace applies.
                group.released = association is None
                self._groups[series_uid] = group
                if self.adaptive is not None and association is not None:
                    self._open_memory(group, series_uid, association, sender, now)
            elif self.adaptive is not None and association is not None:
                # Recovered entries arrive all at once at start: their gaps say nothing.
                self._learn(group, association, now - group.last_at)
                # Another instance almost always moves its group's deadline later, and the
                # flusher needs waking (a thread switch per instance, measurable) only when
                # it moved before the flusher's next look: a wait that shrank faster than
                # time passed (a new group always wakes it).
                if now + group.wait < self._flusher_looks_by:
                    self._flusher_looks_by = now + group.wait
                    wake = True
            group.seqs.append(seq)
            group.last_at = now
            group.last_wall = max(group.last_wall, wall)
            group.has_representative |= representative
            if association is not None:
                group.associations.add(association)
                group.released = False
                self._carried.setdefault(association, set()).add(series_uid)
        if wake:
            self.changed.set()

    def _open_memory(
        self, group: _Group, series_uid: str, association: int, sender: str | None, now: float
    ) -> None:
        """Give a new group the pauses already known of its sender and of its series."""
        group.sender = sender
        if sender is not None and sender in self._sender_pauses:
            remembered = self._sender_pauses.pop(sender) * _SENDER_FADE
            self._sender_pauses[sender] = remembered  # now the most recently used
            group.longest_gap = remembered
        completed_last = self._idle_completed.pop(series_uid, None)
        # The series completed as idle and another instance came: that pause fooled us.
        self._remember_pause(
            group, association, 0.0 if completed_last is None else now - completed_last
        )

    def _remember_pause(self, group: _Group, association: int, pause: float) -> None:
        group.longest_gap = max(group.longest_gap, pause, self._pauses.get(association, 0.0))
        self._pauses[association] = group.longest_gap
        sender = group.sender
        if sender is not None and group.longest_gap > self._sender_pauses.get(sender, 0.0):
            self._sender_pauses.pop(sender, None)
            self._sender_pauses[sender] = group.longest_gap
            if len(self._sender_pauses) > _SENDERS_REMEMBERED:
                del self._sender_pauses[next(iter(self._sender_pauses))]

    def _learn(self, group: _Group, association: int, gap: float) -> None:
        """Fold one inter-arrival gap into the group's rhythm and recompute its wait."""
        assert self.adaptive is not None
        if group.gap is None:
            group.gap, group.gap_dev = gap, gap / 2  # RFC 6298's first sample
        else:
            # A gap far beyond the rhythm is a pause: it counts as a pause (below), and
            # only clipped in the rhythm, else one 8 s pause would inflate the deviation
            # and hold the wait near its maximum for the next dozens of instances. A
            # sender that really slows down still moves the rhythm, by the clip each time.
            rhythm = min(gap, _RHYTHM_CLIP * (group.gap + 4 * group.gap_dev))
            group.gap_dev += _DEV_GAIN * (abs(rhythm - group.gap) - group.gap_dev)
            group.gap += _GAIN * (rhythm - group.gap)
        self._remember_pause(group, association, gap)
        wait = max(
            self.adaptive.multiplier * (group.gap + 4 * group.gap_dev),
            _PAUSE_MARGIN * group.longest_gap,
        )
        group.wait = min(max(wait, self._min_wait), self._max_wait)

    def idle_wait(self, series_uid: str) -> float | None:
        """The idle wait now in force for an open series (None if it is not open)."""
        with self._lock:
            group = self._groups.get(series_uid)
            return None if group is None else group.wait

    def association_ended(self, association: int, released: bool) -> None:
        """A normal release starts the grace of its series; an abort leaves them on idle."""
        with self._lock:
            self._pauses.pop(association, None)
            for series_uid in self._carried.pop(association, ()):
                group = self._groups.get(series_uid)
                if group is None or association not in group.associations:
                    continue
                group.associations.discard(association)
                if not group.associations:
                    group.released = released
        self.changed.set()

    def due(self) -> list[Flush]:
        """Remove and return every group whose completion condition holds now."""
        now = self._clock()
        flushes: list[Flush] = []
        with self._lock:
            for series_uid, group in list(self._groups.items()):
                reason = self._reason(group, now)
                if reason is Reason.MAX_AGE:
                    # Send all but the newest instance as a part and keep that one open:
                    # the series' final update (idle or released) then always has an
                    # instance to carry its completion, even if nothing else arrives.
                    group.first_at = now
                    if len(group.seqs) > 1:
                        part, group.seqs = group.seqs[:-1], group.seqs[-1:]
                        flushes.append(Flush(series_uid, part, reason, group.last_wall))
                elif reason is not None:
                    del self._groups[series_uid]
                    flushes.append(Flush(series_uid, group.seqs, reason, group.last_wall))
                    if reason is Reason.IDLE and self.adaptive is not None:
                        self._idle_completed[series_uid] = group.last_at
            # A pause longer than twice the longest wait would be clamped anyway: forget it.
            while self._idle_completed:
                oldest = next(iter(self._idle_completed))
                if now - self._idle_completed[oldest] <= 2 * self._max_wait:
                    break
                del self._idle_completed[oldest]
        return flushes

    def holds_due(self, renew_after: float) -> list[Hold]:
        """Open groups never reported, or last reported `renew_after` seconds ago or more;
        each is marked reported now."""
        now = self._clock()
        holds = []
        with self._lock:
            for group in self._groups.values():
                if group.reported_at is None or now - group.reported_at >= renew_after:
                    group.reported_at = now
                    holds.append(Hold(group.series_uid, group.seqs[0]))
        return holds

    def _reason(self, group: _Group, now: float) -> Reason | None:
        idle = now - group.last_at
        # Completion first: a series that is both idle and old is complete, not a part.
        if group.released and not group.associations and idle >= self.released_grace:
            return Reason.RELEASED
        if idle >= group.wait:
            return Reason.IDLE
        if now - group.first_at >= self.max_age:
            return Reason.MAX_AGE
        return None

    def next_deadline(self) -> float | None:
        """Seconds until the earliest group may become due, or None when nothing is open."""
        now = self._clock()
        with self._lock:
            waits = []
            for group in self._groups.values():
                wait = min(group.first_at + self.max_age, group.last_at + group.wait)
                if group.released and not group.associations:
                    wait = min(wait, group.last_at + self.released_grace)
                waits.append(wait - now)
            deadline = max(0.0, min(waits)) if waits else None
            self._flusher_looks_by = float("inf") if deadline is None else now + deadline
        return deadline
