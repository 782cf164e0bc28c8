"""Series completion decided in PostgreSQL from every receiver's reports (contract 3).

Each receiver reports, per series, whether it holds it open: a hold report
(SeriesUpdate.holding) when instances of the series start arriving there and again while
they keep arriving; an update with reason IDLE or RELEASED when the series went idle there
(closing that receiver's hold); partial updates (MAX_AGE, UNSPECIFIED) keep it open. One
row per (series, receiver) in `series_holds` records this, ordered by the receiver's
position (SeriesUpdate.receiver_sequence): a hold report at or below a position the same
receiver already reported idle is stale (it was delayed, e.g. re-sent after a reconnect)
and changes nothing.

The rule, applied in the transaction that records a report:
- a series is held while any receiver's hold is open and not expired;
- a COMPLETE series that gains instances or a hold reopens (REOPENED, status RECEIVING);
- a RECEIVING series completes (COMPLETED, completion_version + 1) when an update closing a
  receiver's hold (IDLE, RELEASED) leaves no hold open;
- a hold not renewed for `hold_seconds` expires: the sweep (`expire_holds`, run by every
  store replica) closes it and completes the series if nothing else holds it, with reason
  HOLD_EXPIRED and the receiver named in completion_detail.

Every decision about a series is made under a transaction-scoped advisory lock on its UID
(`lock_series`), taken before any row lock: reports of one series from any number of
receivers, through any number of store replicas, are decided one after the other, each
seeing the previous one committed. Events are collected and written last (store.events),
after every row lock, so the event log's one counter row is held only while committing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from seriesflow.store import events
from seriesflow.store.database import Connection, Database
from seriesflow.store.errors import StoreError
from seriesflow.store.events import Event
from seriesflow.store.metrics import StoreMetrics
from seriesflow.store.validation import ValidHold, ValidUpdate

_log = logging.getLogger(__name__)

CLOSING_REASONS = frozenset({"IDLE", "RELEASED"})
# Holders named in completion_detail; the rest are counted.
_NAMED_HOLDERS = 3
# Series whose expired holds one sweep transaction closes.
SWEEP_BATCH = 100
# A closed hold is kept this long to recognise stale reports of its receiver (re-sent
# after a reconnect: seconds to minutes late), then deleted so the table stays small.
CLOSED_HOLD_KEEP_SECONDS = 86_400
_FORGET_EVERY_SECONDS = 600.0


@dataclass(frozen=True)
class Policy:
    hold_seconds: int


@dataclass
class Completion:
    """A series that became COMPLETE in this transaction, for the metrics."""

    reason: str
    version: int
    delay_seconds: float | None  # last instance received -> now


@dataclass
class Decided:
    """What a round's decisions produced."""

    events: list[Event] = field(default_factory=list)
    completions: list[Completion] = field(default_factory=list)
    status: dict[str, str] = field(default_factory=dict)  # series UID -> status after
    holds_expired: int = 0


@dataclass(frozen=True)
class SeriesBefore:
    """A series row as the round found it (before its own changes), plus what it added."""

    series_id: int
    status: str
    version: int
    inserted: bool
    added: int
    num_instances: int
    last_received_at: dt.datetime | None


async def lock_series(conn: Connection, series_uids: Iterable[str]) -> None:
    """Take the decision lock of each series, in one fixed order (no deadlock between
    transactions locking overlapping sets). Held until the transaction ends."""
    uids = sorted(set(series_uids))
    if not uids:
        return
    await conn.execute(
        """SELECT pg_advisory_xact_lock(k)
           FROM (SELECT hashtextextended(uid, 0) AS k FROM unnest(%b::text[]) AS t(uid)
                 ORDER BY k OFFSET 0) AS keys""",
        [uids],
    )


async def decide_round(
    conn: Connection,
    updates: Sequence[ValidUpdate],
    holds: Sequence[ValidHold],
    before: dict[str, SeriesBefore],
    policy: Policy,
) -> Decided:
    """Record the round's reports in series_holds and apply the rule to each series.

    `before` has, per series UID of `updates`, its row as upserted by this round; series
    of `holds` are looked up here (a hold may precede the series' first row)."""
    await _record_reports(conn, updates, holds, before, policy)
    held_uids = [h.series_uid for h in holds if h.series_uid not in before]
    before = {**before, **await _series_rows(conn, held_uids)}
    uids = [u.series_uid for u in updates] + [h.series_uid for h in holds]
    holders, expired = await _holders(conn, uids)
    out = Decided(holds_expired=sum(len(v) for v in expired.values()))
    changes: list[_Change] = []
    for update in updates:
        changes.append(
            _decide_update(
                update, before[update.series_uid], holders.get(update.series_uid, []), out
            )
        )
    for hold in holds:
        if (row := before.get(hold.series_uid)) is None:
            continue  # no instance stored yet: the hold alone has nothing to change
        status = row.status
        if status == "COMPLETE" and holders.get(hold.series_uid):
            status = "RECEIVING"
            detail = _held_detail(holders[hold.series_uid])
            out.events.append(_event(row, "REOPENED", status, detail, "UNSPECIFIED"))
            changes.append(_Change(row.series_id, status, row.version, None, detail, False))
        out.status[hold.series_uid] = status
    await _write(conn, changes)
    return out


@dataclass(frozen=True)
class _Change:
    series_id: int
    status: str
    version: int
    reason: str | None  # None: leave completion_reason as it is
    detail: str
    completed: bool  # completed_at = now()


def _decide_update(
    update: ValidUpdate, row: SeriesBefore, holders: list[str], out: Decided
) -> _Change:
    status, version = row.status, row.version
    if row.inserted:
        out.events.append(_event(row, "CREATED", status, "", update.reason, added=row.added))
    if status == "COMPLETE" and (row.added > 0 or holders):
        status = "RECEIVING"
        detail = _held_detail(holders) if holders else "a late instance arrived"
        out.events.append(_event(row, "REOPENED", status, detail, update.reason))
    if row.added > 0:
        out.events.append(
            _event(row, "INSTANCES_ADDED", status, "", update.reason, added=row.added)
        )
    closing = update.reason in CLOSING_REASONS
    if status == "COMPLETE":
        # A re-sent update of a complete series: nothing changes.
        out.status[update.series_uid] = status
        return _Change(row.series_id, status, version, None, "", False)
    if closing and not holders:
        version += 1
        detail = f"{update.reason.lower()} on receiver {update.receiver_id or '(unnamed)'}"
        detail += "; no receiver holds it open"
        out.events.append(
            _event(row, "COMPLETED", "COMPLETE", detail, update.reason, version=version)
        )
        out.completions.append(Completion(update.reason, version, _delay(row)))
        out.status[update.series_uid] = "COMPLETE"
        return _Change(row.series_id, "COMPLETE", version, update.reason, detail, True)
    detail = _held_detail(holders) if holders else f"partial update ({update.reason.lower()})"
    out.status[update.series_uid] = "RECEIVING"
    return _Change(row.series_id, "RECEIVING", version, update.reason, detail, False)


def _event(
    row: SeriesBefore,
    kind: str,
    status: str,
    detail: str,
    reason: str,
    *,
    added: int = 0,
    version: int | None = None,
) -> Event:
    return Event(
        series_id=row.series_id,
        kind=kind,
        version=row.version if version is None else version,
        reason=reason,
        detail=detail,
        added=added,
        num_instances=row.num_instances,
        status=status,
    )


def _held_detail(holders: list[str]) -> str:
    named = ", ".join(h or "(unnamed)" for h in holders[:_NAMED_HOLDERS])
    more = len(holders) - _NAMED_HOLDERS
    suffix = f" and {more} more" if more > 0 else ""
    noun = "receiver" if len(holders) == 1 else "receivers"
    return f"held open by {noun} {named}{suffix}"


def _delay(row: SeriesBefore) -> float | None:
    if row.last_received_at is None:
        return None
    return max(0.0, (dt.datetime.now(dt.UTC) - row.last_received_at).total_seconds())


async def _record_reports(
    conn: Connection,
    updates: Sequence[ValidUpdate],
    holds: Sequence[ValidHold],
    before: dict[str, SeriesBefore],
    policy: Policy,
) -> None:
    """Upsert the series_holds row of each report. `open` reports open (or renew) the
    hold unless stale; closing ones close it unless a newer hold of the same receiver is
    open (its position is past the update's)."""
    reports = [(h.series_uid, h.receiver_id, True, h.sequence) for h in holds]
    for u in updates:
        opens = u.reason not in CLOSING_REASONS
        # A partial update is evidence the series is still arriving only if it is new:
        # it added instances, or its position orders it (a stale one is then ignored in
        # SQL). A position-less re-send of old instances changes nothing (contract 2).
        if opens and u.sequence == 0 and before[u.series_uid].added == 0:
            continue
        reports.append((u.series_uid, u.receiver_id, opens, u.sequence))
    if not reports:
        return
    reports.sort(key=lambda r: (r[0], r[1]))
    await conn.execute(
        """
        INSERT INTO series_holds AS h (series_instance_uid, receiver_id, open, open_seq,
                                       idle_seq, expires_at)
        SELECT uid, rid, opens, CASE WHEN opens THEN seq ELSE 0 END,
               CASE WHEN opens THEN 0 ELSE seq END,
               CASE WHEN opens THEN now() + make_interval(secs => %s) ELSE now() END
        FROM unnest(%b::text[], %b::text[], %b::bool[], %b::bigint[]) AS t(uid, rid, opens, seq)
        ON CONFLICT (series_instance_uid, catalog_key(receiver_id)) DO UPDATE SET
            open = CASE
                WHEN EXCLUDED.open THEN h.open OR EXCLUDED.open_seq = 0
                                        OR EXCLUDED.open_seq > h.idle_seq
                ELSE h.open AND EXCLUDED.idle_seq > 0 AND h.open_seq > EXCLUDED.idle_seq END,
            open_seq = GREATEST(h.open_seq, EXCLUDED.open_seq),
            idle_seq = GREATEST(h.idle_seq, EXCLUDED.idle_seq),
            expires_at = CASE
                WHEN EXCLUDED.open AND (EXCLUDED.open_seq = 0 OR EXCLUDED.open_seq > h.idle_seq)
                THEN EXCLUDED.expires_at ELSE h.expires_at END,
            updated_at = now()
        """,
        [
            policy.hold_seconds,
            [r[0] for r in reports],
            [r[1] for r in reports],
            [r[2] for r in reports],
            [r[3] for r in reports],
        ],
    )


async def _holders(
    conn: Connection, series_uids: list[str]
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Per series: receivers holding it open now, and receivers whose open hold has
    expired (closed here, so the sweep does not count them again)."""
    if not series_uids:
        return {}, {}
    cur = await conn.execute(
        """
        WITH lapsed AS (
            UPDATE series_holds SET open = false, updated_at = now()
            WHERE series_instance_uid = ANY(%b::text[]) AND open AND expires_at <= now()
            RETURNING series_instance_uid, receiver_id
        )
        SELECT series_instance_uid, receiver_id, true FROM series_holds
        WHERE series_instance_uid = ANY(%b::text[]) AND open AND expires_at > now()
        UNION ALL
        SELECT series_instance_uid, receiver_id, false FROM lapsed
        ORDER BY 1, 2
        """,
        [series_uids, series_uids],
    )
    holders: dict[str, list[str]] = {}
    expired: dict[str, list[str]] = {}
    for uid, receiver, holding in await cur.fetchall():
        (holders if holding else expired).setdefault(str(uid), []).append(str(receiver))
    return holders, expired


async def _series_rows(conn: Connection, series_uids: list[str]) -> dict[str, SeriesBefore]:
    if not series_uids:
        return {}
    cur = await conn.execute(
        """SELECT series_instance_uid, id, status, completion_version, num_instances,
                  last_received_at
           FROM series WHERE series_instance_uid = ANY(%b::text[])
           FOR UPDATE""",
        [series_uids],
    )
    rows: list[tuple[Any, ...]] = await cur.fetchall()
    return {
        str(r[0]): SeriesBefore(int(r[1]), str(r[2]), int(r[3]), False, 0, int(r[4]), r[5])
        for r in rows
    }


async def _write(conn: Connection, changes: list[_Change]) -> None:
    if not changes:
        return
    await conn.execute(
        """
        UPDATE series s SET
            status = c.status,
            completion_version = c.version,
            completion_reason = COALESCE(c.reason, s.completion_reason),
            completion_detail = CASE WHEN c.detail = '' THEN s.completion_detail
                                     ELSE c.detail END,
            completed_at = CASE WHEN c.completed THEN now()
                                WHEN c.status = 'RECEIVING' THEN NULL
                                ELSE s.completed_at END
        FROM unnest(%b::bigint[], %b::text[], %b::int[], %b::text[], %b::text[], %b::bool[])
            AS c(id, status, version, reason, detail, completed)
        WHERE s.id = c.id
        """,
        [
            [c.series_id for c in changes],
            [c.status for c in changes],
            [c.version for c in changes],
            [c.reason for c in changes],
            [c.detail for c in changes],
            [c.completed for c in changes],
        ],
    )


# -- the expiry sweep ----------------------------------------------------------------------


@dataclass
class Swept:
    decided: Decided
    expired: list[tuple[str, str]]  # (series UID, receiver id) of each expired hold


async def expire_holds(db: Database, policy: Policy) -> Swept:
    """Close holds that were not renewed in time; complete the series they alone held.

    Any number of store replicas may sweep at once: each series is decided under its
    lock, and a hold another sweep (or a report) already closed is simply not found."""
    cur_uids = await db.run(lambda conn: _expired_series(conn))
    if not cur_uids:
        return Swept(Decided(), [])
    return await db.run(lambda conn: _expire(conn, cur_uids, policy))


async def _expired_series(conn: Connection) -> list[str]:
    cur = await conn.execute(
        """SELECT DISTINCT series_instance_uid FROM (
               SELECT series_instance_uid FROM series_holds
               WHERE open AND expires_at <= now() ORDER BY expires_at LIMIT %s) AS due""",
        [SWEEP_BATCH],
    )
    return [str(r[0]) for r in await cur.fetchall()]


async def _expire(conn: Connection, series_uids: list[str], policy: Policy) -> Swept:
    await lock_series(conn, series_uids)
    holders, expired = await _holders(conn, series_uids)
    rows = await _series_rows(conn, list(expired))
    out = Decided(holds_expired=sum(len(v) for v in expired.values()))
    changes: list[_Change] = []
    for uid, receivers in sorted(expired.items()):
        row = rows.get(uid)
        if row is None or row.status == "COMPLETE" or holders.get(uid):
            continue
        version = row.version + 1
        named = ", ".join(r or "(unnamed)" for r in receivers)
        detail = (
            f"hold of receiver {named} expired ({policy.hold_seconds} s without renewal);"
            " no receiver holds it open"
        )
        out.events.append(
            _event(row, "COMPLETED", "COMPLETE", detail, "HOLD_EXPIRED", version=version)
        )
        out.completions.append(Completion("HOLD_EXPIRED", version, _delay(row)))
        out.status[uid] = "COMPLETE"
        changes.append(_Change(row.series_id, "COMPLETE", version, "HOLD_EXPIRED", detail, True))
    await _write(conn, changes)
    await events.write(conn, out.events)
    return Swept(out, [(uid, r) for uid, rs in expired.items() for r in rs])


async def forget_closed_holds(conn: Connection) -> int:
    """Delete holds closed longer than CLOSED_HOLD_KEEP_SECONDS; returns how many."""
    cur = await conn.execute(
        "DELETE FROM series_holds WHERE NOT open"
        " AND updated_at < now() - make_interval(secs => %s)",
        [CLOSED_HOLD_KEEP_SECONDS],
    )
    return cur.rowcount


async def sweep_forever(db: Database, policy: Policy, metrics: StoreMetrics) -> None:
    """Expire unrenewed holds until cancelled, checking every tenth of the hold time (at
    most every 5 s), so a hold ends at most ~10% after its deadline."""
    interval = max(0.2, min(5.0, policy.hold_seconds / 10))
    next_forget = 0.0
    while True:
        if (now := asyncio.get_running_loop().time()) >= next_forget:
            next_forget = now + _FORGET_EVERY_SECONDS
            try:
                await db.run(forget_closed_holds)
            except StoreError as exc:
                _log.debug("closed holds not pruned", extra={"fields": {"error": str(exc)}})
        try:
            swept = await expire_holds(db, policy)
        except StoreError as exc:
            _log.debug("hold sweep skipped", extra={"fields": {"error": str(exc)}})
            swept = None
        if swept is not None:
            for series_uid, receiver in swept.expired:
                _log.warning(
                    "a receiver's hold on a series expired unrenewed (receiver stopped, "
                    "killed or cut off from the store); the series no longer waits for it",
                    extra={
                        "fields": {
                            "series": series_uid,
                            "receiver_id": receiver,
                            "hold_seconds": policy.hold_seconds,
                        }
                    },
                )
            kinds: dict[str, int] = {}
            for event in swept.decided.events:
                kinds[event.kind] = kinds.get(event.kind, 0) + 1
            metrics.record_decisions(swept.decided.completions, kinds, swept.decided.holds_expired)
            if len(swept.expired) >= SWEEP_BATCH:
                continue  # more are due: no pause
        await asyncio.sleep(interval)
