"""The console's SQLite store on its own: idempotent alert lifecycles, the curve, states, feedback, paging."""

from __future__ import annotations

import sqlite3
import uuid
from datetime import datetime, timedelta
from pathlib import Path

from monitor import wire
from monitor.console.store import SCORE_RETENTION_MS, ConsoleStore, to_ms
from tests.monitor.console.conftest import MODEL, T0, alert, jpeg, learning_thumbnail, score, thumbnail


def test_an_alert_lifecycle_is_kept_idempotently_and_survives_a_reopen(tmp_path: Path) -> None:
    db = tmp_path / "console.db"
    store = ConsoleStore(db)
    a = uuid.uuid4()
    end = T0 + timedelta(seconds=5)
    low, high = jpeg(level=40), jpeg(level=200)
    start = alert("cam-1", a, "start", peak=0.7, frames=3, snapshot=low)
    update = alert("cam-1", a, "update", peak=0.95, frames=9, snapshot=high)
    ended = alert("cam-1", a, "end", peak=0.95, frames=12, end=end, reason="cleared", snapshot=high)
    late = alert("cam-1", a, "update", peak=0.9, frames=10, snapshot=low)  # a redelivery after the end
    store.apply([start, update, start])
    store.apply([ended, late, update])
    store.close()

    store = ConsoleStore(db)  # what a restarted console reads
    detail = store.alert_detail(a)
    assert detail is not None
    assert not detail.open and detail.end_reason == "cleared" and detail.end_ts == end
    assert detail.peak.score == 0.95 and detail.frames == 12 and detail.duration_seconds == 5.0
    assert [e.type for e in detail.events] == ["start", "update", "update", "end"]
    assert store.snapshot(a) == ("image/jpeg", high), "the snapshot is the highest peak's"
    assert detail.snapshot_url == f"/api/alerts/{a}/snapshot"


def test_the_curve_covers_the_alert_and_pruning_keeps_it(tmp_path: Path) -> None:
    store = ConsoleStore(tmp_path / "console.db")
    a = uuid.uuid4()
    start = T0 + timedelta(seconds=60)
    store.apply([score("cam-1", i, 0.1 + (0.8 if 600 <= i < 650 else 0.0)) for i in range(1200)])  # 2 min
    store.apply([alert("cam-1", a, "end", start=start, end=start + timedelta(seconds=5), reason="cleared")])
    curve = store.alert_detail(a).scores  # type: ignore[union-attr]
    # Two seconds either side of 60.0 .. 65.0 s, at 10 frames a second.
    assert curve[0].frame_index == 580 and curve[-1].frame_index == 670 and len(curve) == 91

    later = to_ms(T0) + SCORE_RETENTION_MS + 200_000
    store.prune(retention_days=30, now=later)
    assert [p.frame_index for p in store.alert_detail(a).scores] == [p.frame_index for p in curve]  # type: ignore[union-attr]
    assert store.camera("cam-1", now=later).recent[0].frame_index == 580  # type: ignore[union-attr]
    store.prune(retention_days=30, now=to_ms(T0) + 31 * 86_400_000)
    assert store.alert(a) is None and store.camera("cam-1").recent == []  # type: ignore[union-attr]


def test_a_camera_is_ok_in_alert_or_stalled(tmp_path: Path) -> None:
    store = ConsoleStore(tmp_path / "console.db", stale_after_seconds=30)
    now = to_ms(T0) + 1000
    store.apply([score("cam-1", 0, 0.2), thumbnail("cam-1", 0)])
    view = store.camera("cam-1", now=now)
    assert view is not None and view.state == "ok" and view.thumbnail is not None
    assert view.model == MODEL and view.last_score == 0.2
    assert store.thumbnail("cam-1") is not None and store.thumbnail("cam-2") is None

    a = uuid.uuid4()
    store.apply([alert("cam-1", a, "start")])
    assert store.camera("cam-1", now=now).state == "alert"  # type: ignore[union-attr]
    assert store.camera("cam-1", now=now).open_alert_id == a  # type: ignore[union-attr]
    assert store.camera("cam-1", now=now + 31_000).state == "stalled", "no score for --stale-after"  # type: ignore[union-attr]

    stalled_at = T0 + timedelta(seconds=3)
    store.apply([alert("cam-1", a, "end", end=stalled_at, reason="stalled")])
    assert store.camera("cam-1", now=now).state == "stalled"  # type: ignore[union-attr]
    store.apply([score("cam-1", 40, 0.1)])  # frames again, after the stall
    assert store.camera("cam-1", now=now + 3000).state == "ok"  # type: ignore[union-attr]


def test_a_camera_without_a_model_is_learning_until_a_score_comes(tmp_path: Path) -> None:
    store = ConsoleStore(tmp_path / "console.db", stale_after_seconds=30)
    now = to_ms(T0) + 1000

    def state(at: int = now) -> str:
        view = store.camera("cam-new", now=at)
        assert view is not None
        return view.state

    picture = jpeg(level=140)
    store.apply([learning_thumbnail("cam-new", 4, image=picture)])
    view = store.camera("cam-new", now=now)
    assert view is not None and view.state == "learning"
    assert (view.model, view.last_score, view.last_ts, view.recent) == (None, None, None, [])
    assert view.thumbnail is not None and view.thumbnail.frame_index == 4 and view.thumbnail.boxes == 0
    assert view.last_frame_ts == T0
    assert store.thumbnail("cam-new") == ("image/jpeg", picture)
    assert state(now + 31_000) == "stalled", "nothing for --stale-after: stalled wins"

    def at(seconds: float) -> datetime:
        return T0 + timedelta(seconds=seconds)

    store.apply([score("cam-new", 40, 0.2)])  # a model came: frame 40 is scored (T0 + 4 s)
    assert state() == "ok"
    store.apply([learning_thumbnail("cam-new", 60, at=at(6))])  # its model left the store
    assert state() == "learning"
    store.apply([thumbnail("cam-new", 70, at=at(7)), learning_thumbnail("cam-new", 60, at=at(6))])
    assert state() == "ok", "a scored thumbnail is newer; the redelivered learning one changes nothing"

    a = uuid.uuid4()
    store.apply([alert("cam-new", a, "start", start=at(7)), learning_thumbnail("cam-new", 80, at=at(8))])
    assert state() == "alert", "an open alert shows over learning"
    store.apply([alert("cam-new", a, "end", start=at(7), end=at(8.5), reason="stalled")])
    assert state() == "stalled"
    store.apply([learning_thumbnail("cam-new", 90, at=at(9))])  # frames again after the stall
    assert state() == "learning"


def test_a_database_from_before_learning_thumbnails_opens_with_its_cameras(tmp_path: Path) -> None:
    path = tmp_path / "console.db"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE cameras (camera_id TEXT PRIMARY KEY, last_ts INTEGER, last_frame_index INTEGER, "
        "last_score REAL, model TEXT, thumb_ts INTEGER, thumb_frame_index INTEGER, thumb_boxes INTEGER, "
        "thumb_type TEXT, thumb BLOB)"
    )
    old.execute(
        "INSERT INTO cameras (camera_id, last_ts, last_frame_index, last_score, model) "
        "VALUES (?, ?, ?, ?, ?)",
        ("cam-1", to_ms(T0), 0, 0.2, MODEL.model_dump_json()),
    )
    old.commit()
    old.close()
    store = ConsoleStore(path)
    assert [(v.camera_id, v.state) for v in store.cameras(now=to_ms(T0))] == [("cam-1", "ok")]
    store.apply([learning_thumbnail("cam-2", 0)])
    assert store.camera("cam-2", now=to_ms(T0)).state == "learning"  # type: ignore[union-attr]


def test_feedback_is_pending_until_published_and_the_latest_verdict_shows(tmp_path: Path) -> None:
    store = ConsoleStore(tmp_path / "console.db")
    a = uuid.uuid4()
    store.apply([alert("cam-1", a, "start")])
    for verdict in ("acknowledged", "false_alarm"):
        store.add_feedback(
            wire.FeedbackMessage(
                alert_id=a,
                camera_id="cam-1",
                verdict=verdict,  # type: ignore[arg-type]
                ts=T0,
                alert_start_ts=T0,
                alert_end_ts=None,
                model=MODEL,
                note="",
            )
        )
    pending = store.unpublished()
    assert [wire.decode(p.message).verdict for p in pending] == ["acknowledged", "false_alarm"]  # type: ignore[union-attr]
    store.mark_published(pending[0].id)
    assert [p.id for p in store.unpublished()] == [pending[1].id]
    detail = store.alert_detail(a)
    assert detail is not None and detail.verdict == "false_alarm"
    assert [f.published for f in detail.feedback] == [True, False]


def test_alerts_filter_by_camera_and_time_and_page_newest_first(tmp_path: Path) -> None:
    store = ConsoleStore(tmp_path / "console.db")
    ids = [uuid.uuid4() for _ in range(5)]
    store.apply([alert(f"cam-{i % 2}", a, start=T0 + timedelta(minutes=i)) for i, a in enumerate(ids)])
    assert [v.alert_id for v in store.alerts().alerts] == ids[::-1]
    assert [v.alert_id for v in store.alerts(camera="cam-1").alerts] == [ids[3], ids[1]]
    window = store.alerts(since=T0 + timedelta(minutes=1), until=T0 + timedelta(minutes=3))
    assert [v.alert_id for v in window.alerts] == [ids[2], ids[1]]
    first = store.alerts(limit=2)
    assert [v.alert_id for v in first.alerts] == [ids[4], ids[3]] and first.next_before is not None
    second = store.alerts(limit=2, before=first.next_before)
    assert [v.alert_id for v in second.alerts] == [ids[2], ids[1]]
    assert store.alerts(limit=2, before=second.next_before).next_before is None
