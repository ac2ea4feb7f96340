"""The console's history in SQLite: cameras, alerts and their lifecycle events, snapshots, the score
curve over each alert's frames, and operator feedback. It survives a restart (same file).

Writes come from the Kafka feed in one transaction per poll and are idempotent, because Kafka delivers
at least once: a replayed alert event changes nothing, an `update` after the `end` does not reopen the
alert, and a peak only ever rises. Times are kept as Unix epoch milliseconds.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from monitor import wire
from monitor.console.views import (
    AlertDetail,
    AlertEvent,
    AlertList,
    AlertView,
    CameraState,
    CameraView,
    FeedbackView,
    ScorePoint,
    ThumbnailView,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
SPARKLINE_POINTS = 120
CURVE_MARGIN_MS = 2000  # the curve shows the rise before the start and the fall after the end
CURVE_MAX_POINTS = 1000
SCORE_RETENTION_MS = 15 * 60 * 1000  # scores outside every alert are kept this long (the sparklines)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cameras (
    camera_id TEXT PRIMARY KEY,
    last_ts INTEGER, last_frame_index INTEGER, last_score REAL, model TEXT,
    thumb_ts INTEGER, thumb_frame_index INTEGER, thumb_boxes INTEGER, thumb_type TEXT, thumb BLOB,
    thumb_learning INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS scores (
    camera_id TEXT NOT NULL, ts INTEGER NOT NULL, frame_index INTEGER NOT NULL, score REAL NOT NULL,
    PRIMARY KEY (camera_id, ts, frame_index)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alerts (
    alert_id TEXT PRIMARY KEY, camera_id TEXT NOT NULL, start_ts INTEGER NOT NULL,
    end_ts INTEGER, end_reason TEXT, frames INTEGER NOT NULL,
    peak_score REAL NOT NULL, peak_frame_index INTEGER NOT NULL, peak_ts INTEGER NOT NULL,
    peak_regions TEXT NOT NULL, model TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_by_start ON alerts (start_ts DESC);
CREATE INDEX IF NOT EXISTS alerts_by_camera ON alerts (camera_id, start_ts DESC);
CREATE TABLE IF NOT EXISTS alert_events (
    alert_id TEXT NOT NULL, type TEXT NOT NULL, ts INTEGER NOT NULL, frames INTEGER NOT NULL,
    peak_score REAL NOT NULL, end_reason TEXT,
    UNIQUE (alert_id, type, ts, frames)
);
CREATE TABLE IF NOT EXISTS snapshots (
    alert_id TEXT PRIMARY KEY, peak_score REAL NOT NULL, content_type TEXT NOT NULL, data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY, alert_id TEXT NOT NULL, verdict TEXT NOT NULL, note TEXT NOT NULL,
    ts INTEGER NOT NULL, camera_id TEXT NOT NULL, message BLOB NOT NULL, published INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_by_alert ON feedback (alert_id, id);
"""


class StoreError(ValueError):
    """The database file cannot be opened or is not a console database; the message names it."""


def to_ms(value: datetime) -> int:
    """An aware datetime as Unix epoch milliseconds."""
    return (value - _EPOCH) // _MS


def from_ms(ms: int) -> datetime:
    """Unix epoch milliseconds as an aware UTC datetime."""
    return _EPOCH + timedelta(milliseconds=ms)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Changes:
    """What one `apply` touched: the live pages refresh these."""

    cameras: set[str] = field(default_factory=set)
    thumbnails: set[str] = field(default_factory=set)
    alerts: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class PendingFeedback:
    """A feedback record not yet acknowledged by Kafka."""

    id: int
    camera_id: str
    message: bytes


class ConsoleStore:
    """The SQLite database behind the console, safe to share between the feed thread and the web
    server's threads (one connection, one lock)."""

    def __init__(self, path: str | Path, stale_after_seconds: float = 30.0) -> None:
        self.path = Path(path)
        self.stale_after_ms = int(stale_after_seconds * 1000)
        self._lock = threading.Lock()
        try:
            if str(path) != ":memory:":
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(cameras)")}
            if "thumb_learning" not in columns:  # a database made before learning thumbnails
                self._db.execute("ALTER TABLE cameras ADD COLUMN thumb_learning INTEGER NOT NULL DEFAULT 0")
        except (sqlite3.Error, OSError) as err:
            raise StoreError(
                f"cannot open the console database {path}: {err}; give --db a writable file path"
            ) from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def secret(self, name: str) -> str:
        """A random secret kept in the database (the same after a restart), made on first use."""
        with self._transaction() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (name,)).fetchone()
            if row is not None:
                return str(row[0])
            value = secrets.token_urlsafe(32)
            db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (name, value))
            return value

    # --- writes (the feed) ---------------------------------------------------------------------------

    def apply(
        self, messages: Sequence[wire.ScoreMessage | wire.AlertMessage | wire.ThumbnailMessage]
    ) -> Changes:
        """Record a poll's messages in one transaction."""
        changes = Changes()
        with self._transaction() as db:
            for message in messages:
                if isinstance(message, wire.ScoreMessage):
                    _apply_score(db, message)
                    changes.cameras.add(message.camera_id)
                elif isinstance(message, wire.AlertMessage):
                    _apply_alert(db, message)
                    changes.alerts.add(str(message.alert_id))
                    changes.cameras.add(message.camera_id)
                else:
                    _apply_thumbnail(db, message)
                    changes.thumbnails.add(message.camera_id)
                    changes.cameras.add(message.camera_id)
        return changes

    def add_feedback(self, message: wire.FeedbackMessage) -> int:
        """Keep an operator's verdict (not yet published); returns its id."""
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO feedback (alert_id, verdict, note, ts, camera_id, message, published) "
                "VALUES (?, ?, ?, ?, ?, ?, 0)",
                (
                    str(message.alert_id),
                    message.verdict,
                    message.note,
                    to_ms(message.ts),
                    message.camera_id,
                    wire.encode(message),
                ),
            )
            assert cursor.lastrowid is not None
            return cursor.lastrowid

    def mark_published(self, feedback_id: int) -> None:
        with self._transaction() as db:
            db.execute("UPDATE feedback SET published = 1 WHERE id = ?", (feedback_id,))

    def unpublished(self) -> list[PendingFeedback]:
        """Feedback that Kafka has not acknowledged yet, oldest first."""
        rows = self._query("SELECT id, camera_id, message FROM feedback WHERE published = 0 ORDER BY id")
        return [PendingFeedback(int(i), str(c), bytes(m)) for i, c, m in rows]

    def prune(self, retention_days: float, now: int | None = None) -> None:
        """Forget alerts that started more than `retention_days` ago, and scores that are older than
        SCORE_RETENTION_MS and outside every remaining alert's curve."""
        now = now_ms() if now is None else now
        oldest = now - int(retention_days * 86_400_000)
        with self._transaction() as db:
            old = "SELECT alert_id FROM alerts WHERE start_ts < ?"
            for table in ("alert_events", "snapshots", "feedback"):
                db.execute(f"DELETE FROM {table} WHERE alert_id IN ({old})", (oldest,))
            db.execute("DELETE FROM alerts WHERE start_ts < ?", (oldest,))
            db.execute(
                "DELETE FROM scores WHERE ts < ? AND NOT EXISTS (SELECT 1 FROM alerts a WHERE "
                "a.camera_id = scores.camera_id AND scores.ts >= a.start_ts - ? AND "
                "scores.ts <= COALESCE(a.end_ts, ?) + ?)",
                (now - SCORE_RETENTION_MS, CURVE_MARGIN_MS, now, CURVE_MARGIN_MS),
            )

    # --- reads (the pages and the API) ---------------------------------------------------------------

    def camera_ids(self) -> list[str]:
        return [str(r[0]) for r in self._query("SELECT camera_id FROM cameras ORDER BY camera_id")]

    def cameras(self, now: int | None = None) -> list[CameraView]:
        """Every camera seen, by id."""
        now = now_ms() if now is None else now
        views = [self.camera(camera_id, now) for camera_id in self.camera_ids()]
        return [v for v in views if v is not None]

    def camera(self, camera_id: str, now: int | None = None) -> CameraView | None:
        now = now_ms() if now is None else now
        rows = self._query(
            "SELECT last_ts, last_frame_index, last_score, model, thumb_ts, thumb_frame_index, "
            "thumb_boxes, thumb_learning FROM cameras WHERE camera_id = ?",
            (camera_id,),
        )
        if not rows:
            return None
        last_ts, last_index, last_score, model, thumb_ts, thumb_index, thumb_boxes, thumb_learning = rows[0]
        recent = self._query(
            "SELECT frame_index, ts, score FROM scores WHERE camera_id = ? ORDER BY ts DESC LIMIT ?",
            (camera_id, SPARKLINE_POINTS),
        )
        latest = self._query(
            "SELECT alert_id, end_ts, end_reason FROM alerts WHERE camera_id = ? "
            "ORDER BY start_ts DESC LIMIT 1",
            (camera_id,),
        )
        (alerts_24h,) = self._query(
            "SELECT COUNT(*) FROM alerts WHERE camera_id = ? AND start_ts >= ?",
            (camera_id, now - 86_400_000),
        )[0]
        open_alert = latest[0][0] if latest and latest[0][1] is None else None
        # The latest frame heard of: a score, or a thumbnail (a learning camera has only those).
        heard = max((t for t in (last_ts, thumb_ts) if t is not None), default=None)
        learning = bool(thumb_learning) and (last_ts is None or last_ts < thumb_ts)  # no score since
        stalled_alert = bool(latest) and latest[0][2] == "stalled" and (heard or 0) <= latest[0][1]
        state: CameraState
        if heard is None or now - heard > self.stale_after_ms or stalled_alert:
            state = "stalled"
        elif open_alert is not None:
            state = "alert"
        elif learning:
            state = "learning"
        else:
            state = "ok"
        thumbnail = None
        if thumb_ts is not None:
            thumbnail = ThumbnailView(
                url=f"/api/cameras/{camera_id}/thumbnail?frame={thumb_index}",
                frame_index=thumb_index,
                ts=from_ms(thumb_ts),
                boxes=thumb_boxes,
            )
        return CameraView(
            camera_id=camera_id,
            state=state,
            last_score=last_score,
            last_frame_index=last_index,
            last_ts=None if last_ts is None else from_ms(last_ts),
            model=None if model is None else wire.ModelInfo.model_validate_json(model),
            thumbnail=thumbnail,
            recent=[ScorePoint(frame_index=i, ts=from_ms(t), score=s) for i, t, s in reversed(recent)],
            open_alert_id=None if open_alert is None else UUID(open_alert),
            alerts_24h=alerts_24h,
        )

    def alerts(
        self,
        camera: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        before: datetime | None = None,
        limit: int = 100,
    ) -> AlertList:
        """Alerts that started in [since, until) and before `before`, newest first, `limit` a page."""
        where: list[str] = ["1 = 1"]
        args: list[str | int] = []
        if camera:
            where.append("a.camera_id = ?")
            args.append(camera)
        for op, bound in ((">=", since), ("<", until), ("<", before)):
            if bound is not None:
                where.append(f"a.start_ts {op} ?")
                args.append(to_ms(bound))
        rows = self._query(
            f"{_ALERT_SELECT} WHERE {' AND '.join(where)} ORDER BY a.start_ts DESC, a.alert_id LIMIT ?",
            (*args, limit + 1),
        )
        views = [_alert_view(row) for row in rows[:limit]]
        next_before = views[-1].start_ts if len(rows) > limit else None
        return AlertList(alerts=views, next_before=next_before)

    def alert(self, alert_id: UUID) -> AlertView | None:
        rows = self._query(f"{_ALERT_SELECT} WHERE a.alert_id = ?", (str(alert_id),))
        return _alert_view(rows[0]) if rows else None

    def alert_detail(self, alert_id: UUID) -> AlertDetail | None:
        """The alert with its events, its score curve and its feedback, oldest first."""
        view = self.alert(alert_id)
        if view is None:
            return None
        key = str(alert_id)
        events = self._query(
            "SELECT type, ts, frames, peak_score, end_reason FROM alert_events WHERE alert_id = ? "
            "ORDER BY ts, rowid",
            (key,),
        )
        start = to_ms(view.start_ts)
        end = to_ms(view.end_ts) if view.end_ts is not None else now_ms()
        scores = self._query(
            "SELECT frame_index, ts, score FROM scores WHERE camera_id = ? AND ts BETWEEN ? AND ? "
            "ORDER BY ts",
            (view.camera_id, start - CURVE_MARGIN_MS, end + CURVE_MARGIN_MS),
        )
        step = max(1, -(-len(scores) // CURVE_MAX_POINTS))
        feedback = self._query(
            "SELECT verdict, note, ts, published FROM feedback WHERE alert_id = ? ORDER BY id", (key,)
        )
        return AlertDetail(
            **view.model_dump(),
            events=[
                AlertEvent(type=t, ts=from_ms(ts), frames=f, peak_score=p, end_reason=r)
                for t, ts, f, p, r in events
            ],
            scores=[ScorePoint(frame_index=i, ts=from_ms(t), score=s) for i, t, s in scores[::step]],
            feedback=[
                FeedbackView(verdict=v, note=n, ts=from_ms(t), published=bool(p)) for v, n, t, p in feedback
            ],
        )

    def snapshot(self, alert_id: UUID) -> tuple[str, bytes] | None:
        """The peak snapshot of an alert: (content type, image bytes)."""
        rows = self._query("SELECT content_type, data FROM snapshots WHERE alert_id = ?", (str(alert_id),))
        return (str(rows[0][0]), bytes(rows[0][1])) if rows else None

    def thumbnail(self, camera_id: str) -> tuple[str, bytes] | None:
        """A camera's latest thumbnail: (content type, image bytes)."""
        rows = self._query(
            "SELECT thumb_type, thumb FROM cameras WHERE camera_id = ? AND thumb IS NOT NULL", (camera_id,)
        )
        return (str(rows[0][0]), bytes(rows[0][1])) if rows else None


# --- rows ---------------------------------------------------------------------------------------------

_ALERT_SELECT = (
    "SELECT a.alert_id, a.camera_id, a.start_ts, a.end_ts, a.end_reason, a.frames, a.peak_score, "
    "a.peak_frame_index, a.peak_ts, a.peak_regions, a.model, c.last_ts, "
    "EXISTS (SELECT 1 FROM snapshots s WHERE s.alert_id = a.alert_id), "
    "(SELECT f.verdict FROM feedback f WHERE f.alert_id = a.alert_id ORDER BY f.id DESC LIMIT 1) "
    "FROM alerts a LEFT JOIN cameras c ON c.camera_id = a.camera_id"
)


def _alert_view(row: tuple[Any, ...]) -> AlertView:
    (alert_id, camera_id, start, end, reason, frames, peak_score, peak_index, peak_ts, regions, model) = row[
        :11
    ]
    camera_last, has_snapshot, verdict = row[11:]
    last = end if end is not None else max(peak_ts, camera_last or start)
    return AlertView(
        alert_id=UUID(alert_id),
        camera_id=camera_id,
        start_ts=from_ms(start),
        end_ts=None if end is None else from_ms(end),
        end_reason=reason,
        open=end is None,
        duration_seconds=max(0, last - start) / 1000,
        frames=frames,
        peak=wire.AlertPeak(
            score=peak_score, frame_index=peak_index, ts=from_ms(peak_ts), regions=json.loads(regions)
        ),
        model=wire.ModelInfo.model_validate_json(model),
        snapshot_url=f"/api/alerts/{alert_id}/snapshot" if has_snapshot else None,
        verdict=verdict,
    )


def _regions_json(regions: Sequence[wire.Region]) -> str:
    return json.dumps([r.model_dump() for r in regions])


def _apply_score(db: sqlite3.Connection, m: wire.ScoreMessage) -> None:
    ts = to_ms(m.capture_ts)
    db.execute(
        "INSERT OR REPLACE INTO scores (camera_id, ts, frame_index, score) VALUES (?, ?, ?, ?)",
        (m.camera_id, ts, m.frame_index, m.score),
    )
    db.execute(
        "INSERT INTO cameras (camera_id, last_ts, last_frame_index, last_score, model) "
        "VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (camera_id) DO UPDATE SET last_ts = excluded.last_ts, "
        "last_frame_index = excluded.last_frame_index, last_score = excluded.last_score, "
        "model = excluded.model WHERE cameras.last_ts IS NULL OR excluded.last_ts >= cameras.last_ts",
        (m.camera_id, ts, m.frame_index, m.score, m.model.model_dump_json()),
    )


def _apply_thumbnail(db: sqlite3.Connection, m: wire.ThumbnailMessage) -> None:
    ts = to_ms(m.capture_ts)
    db.execute(
        "INSERT INTO cameras (camera_id, model, thumb_ts, thumb_frame_index, thumb_boxes, thumb_type, thumb, "
        "thumb_learning) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (camera_id) DO UPDATE SET "
        "thumb_ts = excluded.thumb_ts, thumb_frame_index = excluded.thumb_frame_index, "
        "thumb_boxes = excluded.thumb_boxes, thumb_type = excluded.thumb_type, thumb = excluded.thumb, "
        "thumb_learning = excluded.thumb_learning, model = COALESCE(cameras.model, excluded.model) "
        "WHERE cameras.thumb_ts IS NULL OR excluded.thumb_ts >= cameras.thumb_ts",
        (
            m.camera_id,
            None if m.model is None else m.model.model_dump_json(),
            ts,
            m.frame_index,
            len(m.regions),
            m.image.content_type,
            m.image.image_bytes(),
            int(m.learning),
        ),
    )


def _event_ts(m: wire.AlertMessage) -> datetime:
    if m.type == "end":
        assert m.end_ts is not None  # the wire's validator
        return m.end_ts
    return m.start_ts if m.type == "start" else m.peak.ts


def _apply_alert(db: sqlite3.Connection, m: wire.AlertMessage) -> None:
    alert_id = str(m.alert_id)
    peak = m.peak
    higher = "excluded.peak_score > alerts.peak_score"
    db.execute(
        "INSERT INTO alerts (alert_id, camera_id, start_ts, end_ts, end_reason, frames, peak_score, "
        "peak_frame_index, peak_ts, peak_regions, model) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (alert_id) DO UPDATE SET "
        "end_ts = COALESCE(alerts.end_ts, excluded.end_ts), "
        "end_reason = COALESCE(alerts.end_reason, excluded.end_reason), "
        "frames = MAX(alerts.frames, excluded.frames), "
        f"peak_frame_index = CASE WHEN {higher} THEN excluded.peak_frame_index "
        "ELSE alerts.peak_frame_index END, "
        f"peak_ts = CASE WHEN {higher} THEN excluded.peak_ts ELSE alerts.peak_ts END, "
        f"peak_regions = CASE WHEN {higher} THEN excluded.peak_regions ELSE alerts.peak_regions END, "
        "peak_score = MAX(alerts.peak_score, excluded.peak_score)",
        (
            alert_id,
            m.camera_id,
            to_ms(m.start_ts),
            None if m.end_ts is None else to_ms(m.end_ts),
            m.end_reason,
            m.frames,
            peak.score,
            peak.frame_index,
            to_ms(peak.ts),
            _regions_json(peak.regions),
            m.model.model_dump_json(),
        ),
    )
    db.execute(
        "INSERT OR IGNORE INTO alert_events (alert_id, type, ts, frames, peak_score, end_reason) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (alert_id, m.type, to_ms(_event_ts(m)), m.frames, peak.score, m.end_reason),
    )
    if m.snapshot is not None:
        db.execute(
            "INSERT INTO snapshots (alert_id, peak_score, content_type, data) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (alert_id) DO UPDATE SET peak_score = excluded.peak_score, "
            "content_type = excluded.content_type, data = excluded.data "
            "WHERE excluded.peak_score >= snapshots.peak_score",
            (alert_id, peak.score, m.snapshot.content_type, m.snapshot.image_bytes()),
        )
