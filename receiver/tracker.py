"""Group spooled instances by series and decide when each series is flushed, and why.

Nothing in DICOM says a series is finished, so completion is a guess (contract 3):
- IDLE: no new instance of the series for `idle_timeout` seconds;
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
    ) -> None:
        self.idle_timeout = idle_timeout
        self.released_grace = min(released_grace, idle_timeout)
        self.max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._groups: dict[str, _Group] = {}
        self._carried: dict[int, set[str]] = {}  # open association -> series it carried
        self.changed = threading.Event()  # wakes the flusher when deadlines may move

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
    ) -> None:
        """Record one spooled instance; `association` None means recovered from the spool."""
        now = self._clock()
        wall = time.time() if received_wall is None else received_wall
        with self._lock:
            group = self._groups.get(series_uid)
            # Another instance only moves its group's deadline later: the flusher needs
            # waking (a thread switch per instance, measurable) only for a new group.
            new_group = group is None
            if group is None:
                group = _Group(series_uid, first_at=now, last_at=now, last_wall=wall)
                # Recovered entries have no sender attached any more: the short grace applies.
                group.released = association is None
                self._groups[series_uid] = group
            group.seqs.append(seq)
            group.last_at = now
            group.last_wall = max(group.last_wall, wall)
            group.has_representative |= representative
            if association is not None:
                group.associations.add(association)
                group.released = False
                self._carried.setdefault(association, set()).add(series_uid)
        if new_group:
            self.changed.set()

    def association_ended(self, association: int, released: bool) -> None:
        """A normal release starts the grace of its series; an abort leaves them on idle."""
        with self._lock:
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
        if idle >= self.idle_timeout:
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
                wait = min(group.first_at + self.max_age, group.last_at + self.idle_timeout)
                if group.released and not group.associations:
                    wait = min(wait, group.last_at + self.released_grace)
                waits.append(wait - now)
        return max(0.0, min(waits)) if waits else None
