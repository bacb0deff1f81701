"""Facts, badges, challenges, progress, completions, badge awards and the points ledger on SQLite.

Definitions (`badges`, `challenges`, `gamification_settings`) are written by the API. The
other tables are derived from the log (`DERIVED_TABLES`) and rebuilt by `headwater replay`.
Every award is a row under a UNIQUE key, written with INSERT OR IGNORE: the row count says
whether this write made it, so two writers can never both award it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

import msgspec

from headwater.clock import from_us, to_us
from headwater.events import Mode
from headwater.storage.base import Fact
from headwater.storage.gamification import (
    AWARD_SOURCE,
    AWARD_TYPES,
    BadgeAward,
    BadgeRecord,
    BoardKind,
    BoardRow,
    ChallengeRecord,
    Completion,
    FactQuery,
    GamificationSettings,
    ParticipantRecord,
    PointsEntry,
    PointsPeriod,
    ProgressRange,
    ProgressRow,
    ProgressValue,
)
from headwater.storage.sqlite_core import SqliteCore, Transaction
from headwater.storage.sqlite_definitions import DefinitionTable, ScopeSetting, bump_version

GAMIFICATION_SCHEMA = """
CREATE TABLE IF NOT EXISTS badges (
    tenant TEXT NOT NULL,
    mode TEXT NOT NULL,
    key TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT,
    image_url TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, mode, key)
);

CREATE TABLE IF NOT EXISTS challenges (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    mode TEXT NOT NULL,
    definition TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS challenges_scope ON challenges (tenant, mode, created_at);

CREATE TABLE IF NOT EXISTS gamification_settings (
    tenant TEXT NOT NULL,
    mode TEXT NOT NULL,
    settings TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, mode)
);

-- Bumped on every change to a badge, challenge or setting, so every process can tell its cache is stale.
CREATE TABLE IF NOT EXISTS gamification_changes (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);

-- A small number per challenge: the progress tables' key. A challenge id is 36 characters,
-- and the key is in every progress row; the rows are half the size with a number, and the
-- consumer's writes (a random page per new row) half the cost. Never deleted, so never reused.
CREATE TABLE IF NOT EXISTS challenge_keys (
    num INTEGER PRIMARY KEY,
    challenge_id TEXT NOT NULL UNIQUE
);
CREATE TRIGGER IF NOT EXISTS challenge_key AFTER INSERT ON challenges BEGIN
    INSERT OR IGNORE INTO challenge_keys (challenge_id) VALUES (new.id);
END;
INSERT OR IGNORE INTO challenge_keys (challenge_id) SELECT id FROM challenges;

-- Derived from the log (see DERIVED_TABLES). Progress and distinct values are keyed by
-- challenge first, with no secondary index: a participant's row is one primary-key look-up,
-- and a challenge's leaderboard is one range of the primary key. (Every index here costs a
-- random page per new row on the facts consumer's path.)
--
-- There is no table of facts: a fact is a pure function of its event, read from the log
-- (see FACT_FROM_EVENT_SQL). That a fact counts once is the consumer's checkpoint (applied
-- by compare-and-set in the same transaction), and, should a checkpoint ever go back, each
-- progress row's `seq`: the log offset of the last fact counted in it.

CREATE TABLE IF NOT EXISTS fact_effects (
    fact_id TEXT PRIMARY KEY,
    effects TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS challenge_progress (
    challenge INTEGER NOT NULL,  -- challenge_keys.num
    participant_id TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    value REAL NOT NULL,
    reached_at INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (challenge, participant_id, bucket)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS challenge_values (
    challenge INTEGER NOT NULL,  -- challenge_keys.num
    participant_id TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    value TEXT NOT NULL,
    reached_at INTEGER NOT NULL,
    PRIMARY KEY (challenge, participant_id, bucket, value)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS challenge_completions (
    challenge_id TEXT NOT NULL,
    participant_id TEXT NOT NULL,
    occurrence TEXT NOT NULL,
    tenant TEXT NOT NULL,
    mode TEXT NOT NULL,
    period INTEGER NOT NULL,
    completed_at INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (challenge_id, participant_id, occurrence)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS challenge_completions_period ON challenge_completions (challenge_id, participant_id, period);

CREATE TABLE IF NOT EXISTS badge_awards (
    tenant TEXT NOT NULL,
    mode TEXT NOT NULL,
    participant_id TEXT NOT NULL,
    badge TEXT NOT NULL,
    awarded_at INTEGER NOT NULL,
    reason TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (tenant, mode, participant_id, badge)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS points_ledger (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    mode TEXT NOT NULL,
    participant_id TEXT NOT NULL,
    points INTEGER NOT NULL,
    reason TEXT NOT NULL,
    event_id TEXT NOT NULL,
    at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS points_ledger_participant ON points_ledger (tenant, mode, participant_id, at);

CREATE TABLE IF NOT EXISTS points_totals (
    tenant TEXT NOT NULL,
    mode TEXT NOT NULL,
    period TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    participant_id TEXT NOT NULL,
    points INTEGER NOT NULL,
    reached_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, mode, period, bucket, participant_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS points_totals_board ON points_totals
    (tenant, mode, period, bucket, points DESC, reached_at, participant_id);
"""

# Tables derived from the log by the facts consumer; `headwater replay` rebuilds them.
DERIVED_TABLES = (
    "fact_effects",
    "challenge_progress",
    "challenge_values",
    "challenge_completions",
    "badge_awards",
    "points_ledger",
    "points_totals",
)

CHALLENGES = DefinitionTable("challenges", "gamification_changes", ChallengeRecord)
SETTINGS = ScopeSetting("gamification_settings", "settings", "gamification_changes")
BADGE_COLUMNS = "key, name, description, image_url, created_at, updated_at"
COMPLETION_COLUMNS = "tenant, mode, challenge_id, participant_id, occurrence, period, completed_at, event_id"
_encode = msgspec.json.encode
_settings = msgspec.json.Decoder(GamificationSettings)


# A fact is a pure function of its event (see `processing.facts.make_fact`), so facts are
# read straight from the log: every event the facts consumer has passed is a fact, whether or
# not its tenant had challenges that made the consumer write anything for it.
FACT_TYPE_SQL = (
    f"CASE WHEN e.source = '{AWARD_SOURCE}' AND e.type IN ({', '.join(repr(t) for t in AWARD_TYPES)})"
    " THEN e.type ELSE 'custom.' || e.type END"
)
FACT_FROM_EVENT_SQL = (
    f"'fact_' || substr(e.id, 5), {FACT_TYPE_SQL}, e.subject, e.id, e.tenant, e.mode, e.data, e.time, e.received_at"
)
PROCESSED_SQL = "e.seq <= coalesce((SELECT seq FROM checkpoints WHERE consumer = 'facts'), 0)"


def _row_to_fact(row: tuple[Any, ...]) -> Fact:
    fact_id, fact_type, participant, event_id, tenant, mode, data, occurred, processed = row
    return Fact(
        fact_id,
        fact_type,
        participant,
        event_id,
        tenant,
        mode,
        msgspec.Raw(data.encode()),
        from_us(occurred),
        from_us(processed),
    )


def _row_to_badge(row: tuple[Any, ...]) -> BadgeRecord:
    key, name, description, image_url, created, updated = row
    return BadgeRecord(key, name, description, image_url, from_us(created), from_us(updated))


def _row_to_completion(row: tuple[Any, ...]) -> Completion:
    tenant, mode, challenge_id, participant, occurrence, period, completed, event_id = row
    return Completion(tenant, mode, challenge_id, participant, occurrence, period, from_us(completed), event_id)


T = TypeVar("T")


def _chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# The number of the challenge id bound at this place (see challenge_keys).
NUM = "(SELECT num FROM challenge_keys WHERE challenge_id = ?)"
ADD_POINTS_TOTAL = (
    "INSERT INTO points_totals VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET"
    " points = points + excluded.points, reached_at = max(reached_at, excluded.reached_at)"
)


class GamificationStateMixin:
    """The `GamificationState` methods on the writer's connection (all but `append_events`,
    which needs the event log's own append path and lives with it in `sqlite.py`)."""

    conn: sqlite3.Connection

    def put_fact_effects(self, effects: Sequence[tuple[str, bytes]]) -> None:
        self.conn.executemany(
            "INSERT OR REPLACE INTO fact_effects VALUES (?, ?)", [(fact_id, raw.decode()) for fact_id, raw in effects]
        )

    def _challenge_nums(self, challenge_ids: set[str]) -> dict[str, int]:
        """The progress tables' number for each challenge id (made here for one that has none)."""
        wanted = list(challenge_ids)
        marks = ",".join("?" * len(wanted))
        sql = f"SELECT challenge_id, num FROM challenge_keys WHERE challenge_id IN ({marks})"
        nums: dict[str, int] = dict(self.conn.execute(sql, wanted).fetchall())
        if len(nums) < len(wanted):
            missing = [(c,) for c in wanted if c not in nums]
            self.conn.executemany("INSERT OR IGNORE INTO challenge_keys (challenge_id) VALUES (?)", missing)
            nums.update(self.conn.execute(sql, wanted).fetchall())
        return nums

    def load_progress(self, ranges: Sequence[ProgressRange]) -> list[ProgressValue]:
        return self._load(
            "SELECT w.challenge_id, p.participant_id, p.bucket, p.value, p.reached_at, p.seq FROM wanted w"
            " JOIN challenge_progress p ON p.challenge = w.num AND p.participant_id = w.participant_id"
            " AND p.bucket BETWEEN w.low AND w.high",
            ranges,
        )

    def save_progress(self, rows: Sequence[ProgressValue]) -> None:
        nums = self._challenge_nums({r[0] for r in rows})
        self.conn.executemany(
            "INSERT INTO challenge_progress VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET"
            " value = excluded.value, reached_at = excluded.reached_at, seq = excluded.seq",
            [(nums[c], p, b, v, r, seq) for c, p, b, v, r, seq in rows],
        )

    def load_values(self, ranges: Sequence[ProgressRange]) -> list[tuple[str, str, int, str]]:
        return self._load(
            "SELECT w.challenge_id, v.participant_id, v.bucket, v.value FROM wanted w"
            " JOIN challenge_values v ON v.challenge = w.num AND v.participant_id = w.participant_id"
            " AND v.bucket BETWEEN w.low AND w.high",
            ranges,
        )

    def save_values(self, rows: Sequence[tuple[str, str, int, str, int]]) -> None:
        nums = self._challenge_nums({r[0] for r in rows})
        self.conn.executemany(
            "INSERT OR IGNORE INTO challenge_values VALUES (?, ?, ?, ?, ?)",
            [(nums[c], p, b, v, r) for c, p, b, v, r in rows],
        )

    def _load(self, select: str, ranges: Sequence[ProgressRange]) -> list[Any]:
        """Run `select` against a VALUES list `wanted(challenge_id, num, participant_id, low, high)`."""
        nums = self._challenge_nums({r[0] for r in ranges})
        found: list[Any] = []
        for chunk in _chunks(ranges, 2000):
            values = ",".join(["(?,?,?,?,?)"] * len(chunk))
            args = [x for c, p, low, high in chunk for x in (c, nums[c], p, low, high)]
            sql = f"WITH wanted(challenge_id, num, participant_id, low, high) AS (VALUES {values}) {select}"
            found.extend(self.conn.execute(sql, args))
        return found

    def record_completion(self, completion: Completion) -> bool:
        c = completion
        cur = self.conn.execute(
            f"INSERT OR IGNORE INTO challenge_completions ({COMPLETION_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)",
            (
                c.tenant,
                c.mode,
                c.challenge_id,
                c.participant_id,
                c.occurrence,
                c.period,
                to_us(c.completed_at),
                c.event_id,
            ),
        )
        return cur.rowcount == 1

    def completion_between(self, challenge_id: str, participant: str, low: int, high: int) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM challenge_completions WHERE challenge_id = ? AND participant_id = ?"
            " AND period BETWEEN ? AND ? LIMIT 1",
            (challenge_id, participant, low, high),
        ).fetchone()
        return row is not None

    def badge_defined(self, tenant: str, mode: Mode, key: str) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM badges WHERE tenant = ? AND mode = ? AND key = ?", (tenant, mode, key)
        ).fetchone()
        return row is not None

    def gamification_settings(self, tenant: str, mode: Mode) -> GamificationSettings | None:
        row = self.conn.execute(
            "SELECT settings FROM gamification_settings WHERE tenant = ? AND mode = ?", (tenant, mode)
        ).fetchone()
        return None if row is None else _settings.decode(row[0])

    def award_badge(self, award: BadgeAward) -> bool:
        a = award
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO badge_awards VALUES (?, ?, ?, ?, ?, ?, ?)",
            (a.tenant, a.mode, a.participant_id, a.badge, to_us(a.awarded_at), a.reason, a.event_id),
        )
        return cur.rowcount == 1

    def add_points(self, entry: PointsEntry, buckets: Sequence[tuple[str, int]]) -> bool:
        e = entry
        at = to_us(e.at)
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO points_ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (e.id, e.tenant, e.mode, e.participant_id, e.points, e.reason, e.event_id, at),
        )
        if cur.rowcount != 1:
            return False
        self.conn.executemany(
            ADD_POINTS_TOTAL,
            [(e.tenant, e.mode, period, bucket, e.participant_id, e.points, at) for period, bucket in buckets],
        )
        return True


def _board(rows: Any) -> list[BoardRow]:
    return [BoardRow(p, float(v), from_us(r)) for p, v, r in rows]


STREAK_BOARD = """
WITH marked AS (
    SELECT participant_id, bucket, reached_at,
           bucket - row_number() OVER (PARTITION BY participant_id ORDER BY bucket) AS run
    FROM challenge_progress WHERE challenge = (SELECT num FROM challenge_keys WHERE challenge_id = ?) AND bucket <= ?
), runs AS (
    SELECT participant_id, count(*) AS length, max(bucket) AS last, max(reached_at) AS reached
    FROM marked GROUP BY participant_id, run
)
SELECT participant_id, length, reached FROM runs WHERE last >= ?
ORDER BY length DESC, reached, participant_id LIMIT ?
"""


def upgrade_derived(conn: sqlite3.Connection) -> None:
    """Before the schema: progress tables of an older layout (keyed by challenge id, with a
    table of facts) are dropped with the rest of the derived state, and the facts consumer
    starts over from the log, which rebuilds them all; award events it makes again are
    deduplicated by their idempotency keys."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(challenge_progress)")}
    if not columns or "seq" in columns:
        return
    conn.execute("BEGIN IMMEDIATE")
    for table in (*DERIVED_TABLES, "facts"):
        conn.execute(f"DROP TABLE IF EXISTS {table}")
    conn.execute("DELETE FROM checkpoints WHERE consumer = 'facts'")
    conn.execute("COMMIT")


class GamificationTables(SqliteCore):
    SCHEMA = GAMIFICATION_SCHEMA
    UPGRADE = staticmethod(upgrade_derived)

    async def gamification_version(self) -> int:
        row = await self.read(lambda conn: conn.execute("SELECT version FROM gamification_changes").fetchone())
        return 0 if row is None else int(row[0])

    # Badges

    async def create_badge(self, tenant: str, mode: Mode, badge: BadgeRecord) -> bool:
        def run(tx: Transaction) -> bool:
            cur = tx.conn.execute(
                f"INSERT OR IGNORE INTO badges (tenant, mode, {BADGE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)",
                (
                    tenant,
                    mode,
                    badge.key,
                    badge.name,
                    badge.description,
                    badge.image_url,
                    to_us(badge.created_at),
                    to_us(badge.updated_at),
                ),
            )
            if cur.rowcount == 1:
                bump_version(tx.conn, "gamification_changes")
            return cur.rowcount == 1

        return await self.write(run)

    async def update_badge(self, tenant: str, mode: Mode, badge: BadgeRecord) -> bool:
        def run(tx: Transaction) -> bool:
            cur = tx.conn.execute(
                "UPDATE badges SET name = ?, description = ?, image_url = ?, updated_at = ?"
                " WHERE tenant = ? AND mode = ? AND key = ?",
                (badge.name, badge.description, badge.image_url, to_us(badge.updated_at), tenant, mode, badge.key),
            )
            if cur.rowcount == 1:
                bump_version(tx.conn, "gamification_changes")
            return cur.rowcount == 1

        return await self.write(run)

    async def get_badge(self, tenant: str, mode: Mode, key: str) -> BadgeRecord | None:
        sql = f"SELECT {BADGE_COLUMNS} FROM badges WHERE tenant = ? AND mode = ? AND key = ?"

        def run(conn: sqlite3.Connection) -> BadgeRecord | None:
            row = conn.execute(sql, (tenant, mode, key)).fetchone()
            return None if row is None else _row_to_badge(row)

        return await self.read(run)

    async def list_badges(self, tenant: str, mode: Mode) -> list[BadgeRecord]:
        sql = f"SELECT {BADGE_COLUMNS} FROM badges WHERE tenant = ? AND mode = ? ORDER BY key"
        return await self.read(lambda conn: [_row_to_badge(r) for r in conn.execute(sql, (tenant, mode))])

    async def delete_badge(self, tenant: str, mode: Mode, key: str) -> bool:
        def run(tx: Transaction) -> bool:
            cur = tx.conn.execute("DELETE FROM badges WHERE tenant = ? AND mode = ? AND key = ?", (tenant, mode, key))
            if cur.rowcount:
                bump_version(tx.conn, "gamification_changes")
            return cur.rowcount == 1

        return await self.write(run)

    # Challenges

    async def put_challenge(self, record: ChallengeRecord) -> None:
        await self.write(lambda tx: CHALLENGES.put(tx.conn, record))

    async def get_challenge(self, tenant: str, mode: Mode, challenge_id: str) -> ChallengeRecord | None:
        return await self.read(lambda conn: CHALLENGES.get(conn, tenant, mode, challenge_id))

    async def list_challenges(self, tenant: str, mode: Mode) -> list[ChallengeRecord]:
        return await self.read(lambda conn: CHALLENGES.list(conn, tenant, mode))

    async def delete_challenge(self, tenant: str, mode: Mode, challenge_id: str) -> bool:
        return await self.write(lambda tx: CHALLENGES.delete(tx.conn, tenant, mode, challenge_id))

    # Settings

    async def get_settings(self, tenant: str, mode: Mode) -> GamificationSettings | None:
        row = await self.read(
            lambda conn: conn.execute(
                "SELECT settings FROM gamification_settings WHERE tenant = ? AND mode = ?", (tenant, mode)
            ).fetchone()
        )
        return None if row is None else _settings.decode(row[0])

    async def put_settings(self, tenant: str, mode: Mode, settings: GamificationSettings, at: datetime) -> None:
        value = _encode(settings).decode()
        await self.write(lambda tx: SETTINGS.put(tx.conn, tenant, mode, value, at))

    # Facts

    async def list_facts(self, query: FactQuery) -> list[tuple[Fact, int]]:
        where = ["e.tenant = ?", "e.mode = ?"]
        args: list[Any] = [query.tenant, query.mode]
        if query.participant is not None:
            where.append("e.subject = ?")
            args.append(query.participant)
        if query.fact_type is not None:
            # The event type narrows through the log's index; the fact type is exact.
            event_type = query.fact_type.removeprefix("custom.")
            where.append(f"e.type = ? AND {FACT_TYPE_SQL} = ?")
            args.extend((event_type, query.fact_type))
        if query.time_from is not None:
            where.append("e.time >= ?")
            args.append(to_us(query.time_from))
        if query.time_to is not None:
            where.append("e.time < ?")
            args.append(to_us(query.time_to))
        if query.before is not None:
            where.append("(e.time, e.seq) < (?, ?)")
            args.extend(query.before)
        args.append(query.limit)
        where.append(PROCESSED_SQL)
        sql = (
            f"SELECT {FACT_FROM_EVENT_SQL}, e.seq FROM events e"
            f" WHERE {' AND '.join(where)} ORDER BY e.time DESC, e.seq DESC LIMIT ?"
        )
        return await self.read(lambda conn: [(_row_to_fact(r[:-1]), int(r[-1])) for r in conn.execute(sql, args)])

    async def fact_for_event(self, tenant: str, mode: Mode, event_id: str) -> tuple[Fact, bytes | None] | None:
        sql = (
            f"SELECT {FACT_FROM_EVENT_SQL}, x.effects FROM events e"
            " LEFT JOIN fact_effects x ON x.fact_id = 'fact_' || substr(e.id, 5)"
            f" WHERE e.id = ? AND e.tenant = ? AND e.mode = ? AND {PROCESSED_SQL}"
        )

        def run(conn: sqlite3.Connection) -> tuple[Fact, bytes | None] | None:
            row = conn.execute(sql, (event_id, tenant, mode)).fetchone()
            if row is None:
                return None
            return _row_to_fact(row[:-1]), None if row[-1] is None else row[-1].encode()

        return await self.read(run)

    # Participants, progress and leaderboards

    async def get_participant(self, tenant: str, mode: Mode, participant: str) -> ParticipantRecord | None:
        scope = (tenant, mode, participant)

        def run(conn: sqlite3.Connection) -> ParticipantRecord | None:
            points = conn.execute(
                "SELECT points FROM points_totals WHERE tenant = ? AND mode = ? AND period = 'all_time'"
                " AND bucket = 0 AND participant_id = ?",
                scope,
            ).fetchone()
            badges = [
                BadgeAward(tenant, mode, participant, badge, from_us(at), reason, event_id)
                for badge, at, reason, event_id in conn.execute(
                    "SELECT badge, awarded_at, reason, event_id FROM badge_awards"
                    " WHERE tenant = ? AND mode = ? AND participant_id = ? ORDER BY awarded_at, badge",
                    scope,
                )
            ]
            challenges = [
                r[0]
                for r in conn.execute(
                    "SELECT c.id FROM challenges c WHERE c.tenant = ? AND c.mode = ? AND EXISTS"
                    " (SELECT 1 FROM challenge_keys k JOIN challenge_progress p ON p.challenge = k.num"
                    " WHERE k.challenge_id = c.id AND p.participant_id = ?)"
                    " ORDER BY c.created_at, c.id",
                    scope,
                )
            ]
            if points is None and not badges and not challenges:
                seen = conn.execute(
                    f"SELECT 1 FROM events e WHERE e.tenant = ? AND e.mode = ? AND e.subject = ? AND {PROCESSED_SQL}"
                    " LIMIT 1",
                    scope,
                ).fetchone()
                if seen is None:
                    return None
            return ParticipantRecord(participant, 0 if points is None else int(points[0]), badges, challenges)

        return await self.read(run)

    async def progress_rows(self, challenge_id: str, participant: str, low: int, high: int) -> list[ProgressRow]:
        sql = (
            f"SELECT bucket, value, reached_at FROM challenge_progress WHERE challenge = {NUM} AND participant_id = ?"
            " AND bucket BETWEEN ? AND ? ORDER BY bucket"
        )
        return await self.read(
            lambda conn: [
                ProgressRow(b, float(v), from_us(r))
                for b, v, r in conn.execute(sql, (challenge_id, participant, low, high))
            ]
        )

    async def distinct_total(self, challenge_id: str, participant: str, low: int, high: int) -> int:
        def run(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                f"SELECT count(DISTINCT value) FROM challenge_values WHERE challenge = {NUM} AND participant_id = ?"
                " AND bucket BETWEEN ? AND ?",
                (challenge_id, participant, low, high),
            ).fetchone()
            return int(row[0])

        return await self.read(run)

    async def list_completions(self, challenge_id: str, participant: str) -> list[Completion]:
        sql = (
            f"SELECT {COMPLETION_COLUMNS} FROM challenge_completions WHERE challenge_id = ? AND participant_id = ?"
            " ORDER BY period, completed_at, occurrence"
        )
        return await self.read(
            lambda conn: [_row_to_completion(r) for r in conn.execute(sql, (challenge_id, participant))]
        )

    async def points_board(
        self, tenant: str, mode: Mode, period: PointsPeriod, bucket: int, limit: int
    ) -> list[BoardRow]:
        sql = (
            "SELECT participant_id, points, reached_at FROM points_totals WHERE tenant = ? AND mode = ? AND period = ?"
            " AND bucket = ? ORDER BY points DESC, reached_at, participant_id LIMIT ?"
        )
        return await self.read(lambda conn: _board(conn.execute(sql, (tenant, mode, period, bucket, limit))))

    async def challenge_board(
        self, challenge_id: str, kind: BoardKind, low: int, high: int, limit: int
    ) -> list[BoardRow]:
        if kind == "streak":
            sql, args = STREAK_BOARD, (challenge_id, high, low, limit)
        elif kind == "distinct":
            sql = (
                "SELECT participant_id, count(DISTINCT value), max(reached_at) FROM challenge_values"
                f" WHERE challenge = {NUM} AND bucket BETWEEN ? AND ? GROUP BY participant_id"
                " ORDER BY 2 DESC, 3, 1 LIMIT ?"
            )
            args = (challenge_id, low, high, limit)
        else:
            sql = (
                "SELECT participant_id, sum(value), max(reached_at) FROM challenge_progress"
                f" WHERE challenge = {NUM} AND bucket BETWEEN ? AND ? GROUP BY participant_id"
                " ORDER BY 2 DESC, 3, 1 LIMIT ?"
            )
            args = (challenge_id, low, high, limit)
        return await self.read(lambda conn: _board(conn.execute(sql, args)))
