"""The console's Kafka feed against the real broker: records into the store, bad records skipped and
counted, history kept across a restart, feedback published."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

from prometheus_client.parser import text_string_to_metric_families

from monitor import wire
from monitor.kafka_client import KafkaSettings
from tests.monitor.conftest import RecordReader
from tests.monitor.console.conftest import (
    MODEL,
    ConsoleFactory,
    Http,
    alert,
    jpeg,
    learning_thumbnail,
    publish,
    score,
    thumbnail,
    wait_for,
)


def _skipped(http: Http) -> dict[tuple[str, str], float]:
    _, _, body = http.request("/metrics")
    return {
        (s.labels["topic"], s.labels["reason"]): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
        if s.name == "anomon_console_records_skipped_total"
    }


def test_bad_records_are_skipped_and_counted_and_the_console_goes_on(
    start_console: ConsoleFactory, console_topics: wire.Topics, kafka_settings: KafkaSettings
) -> None:
    console = start_console(max_record_bytes=8192)
    http = Http(console.url)
    good = uuid.uuid4()
    script_camera = json.loads(wire.encode(alert("cam-1", uuid.uuid4())))
    script_camera["camera_id"] = "<script>alert(1)</script>"
    publish(
        kafka_settings,
        console_topics.alerts,
        [
            b"not json",
            b'{"schema": "anomon.alert/1"}',
            json.dumps(script_camera).encode(),  # a camera id the wire format does not allow
            None,  # a tombstone
            wire.encode(alert("cam-1", uuid.uuid4(), snapshot=bytes(range(256)) * 64)),  # 22 kB of base64
            wire.encode(score("cam-1", 0, 0.2)),  # a score on the alerts topic
            wire.encode(alert("cam-1", good)),
        ],
    )
    publish(kafka_settings, console_topics.scores, [b"\xff\xfe", wire.encode(score("cam-1", 1, 0.3))])

    listed = wait_for(lambda: json.loads(http.request("/api/alerts")[2])["alerts"], what="the good alert")
    assert [a["alert_id"] for a in listed] == [str(good)]
    skipped = wait_for(lambda: (s := _skipped(http))[(console_topics.scores, "malformed")] and s)
    assert skipped[(console_topics.alerts, "malformed")] == 4
    assert skipped[(console_topics.alerts, "oversized")] == 1
    assert skipped[(console_topics.alerts, "wrong-schema")] == 1
    assert skipped[(console_topics.scores, "malformed")] == 1
    cameras = json.loads(http.request("/api/cameras")[2])["cameras"]
    assert [c["camera_id"] for c in cameras] == ["cam-1"] and cameras[0]["last_score"] == 0.3
    assert http.request("/healthz")[0] == 200 and http.request("/readyz")[0] == 200


def test_history_and_feedback_survive_a_restart_and_feedback_is_published(
    start_console: ConsoleFactory,
    console_topics: wire.Topics,
    kafka_settings: KafkaSettings,
    read_records: RecordReader,
) -> None:
    console = start_console()
    http = Http(console.url)
    a = uuid.uuid4()
    now = datetime.now(UTC)
    publish(
        kafka_settings,
        console_topics.scores,
        [wire.encode(score("cam-7", i, 0.9 if i > 3 else 0.1, at=now)) for i in range(10)],
        key=b"cam-7",
    )
    publish(
        kafka_settings, console_topics.thumbnails, [wire.encode(thumbnail("cam-7", 9, at=now))], key=b"cam-7"
    )
    publish(
        kafka_settings,
        console_topics.alerts,
        [wire.encode(alert("cam-7", a, start=now + timedelta(milliseconds=400), snapshot=jpeg()))],
        key=b"cam-7",
    )
    wait_for(lambda: http.request(f"/api/alerts/{a}")[0] == 200, what="the alert")
    assert http.request("/api/cameras/cam-7/thumbnail")[1]["content-type"] == "image/jpeg"

    http.request("/")  # the page sets the CSRF cookie
    csrf = http.cookie("anomon_console_csrf")
    assert csrf
    status, _, body = http.request(
        f"/api/alerts/{a}/feedback",
        "POST",
        json.dumps({"verdict": "false_alarm", "note": "a cyclist, allowed here"}).encode(),
        {"Content-Type": "application/json", "Origin": console.url, "X-CSRF-Token": csrf},
    )
    assert status == 200, body
    assert json.loads(body)["verdict"] == "false_alarm" and json.loads(body)["feedback"][0]["published"]

    records = read_records(console_topics.feedback, 1)
    assert len(records) == 1 and records[0].key == b"cam-7"
    message = wire.decode(records[0].value)
    assert isinstance(message, wire.FeedbackMessage)
    assert (message.alert_id, message.verdict, message.note) == (a, "false_alarm", "a cyclist, allowed here")
    assert (
        wire.format_ts(message.alert_start_ts) == json.loads(body)["start_ts"] and message.model is not None
    )

    db, group = console.settings.db, console.settings.group_id
    console.stop()
    restarted = Http(start_console(db=db, group_id=group).url)
    detail = json.loads(restarted.request(f"/api/alerts/{a}")[2])
    assert detail["verdict"] == "false_alarm" and len(detail["feedback"]) == 1
    assert len(detail["scores"]) == 10 and detail["snapshot_url"]
    assert len(read_records(console_topics.feedback, 2, timeout_s=2)) == 1, "published once, not again"


def test_a_camera_without_a_model_is_listed_as_learning_until_its_first_score(
    start_console: ConsoleFactory, console_topics: wire.Topics, kafka_settings: KafkaSettings
) -> None:
    console = start_console(stale_after_seconds=30)
    http = Http(console.url)
    now = datetime.now(UTC)
    picture = jpeg(level=140)
    publish(
        kafka_settings,
        console_topics.thumbnails,
        [
            wire.encode(learning_thumbnail("cam-new", 3, at=now, image=picture)),
            # A camera heard of only long ago: stalled, whatever its last thumbnail was.
            wire.encode(learning_thumbnail("cam-old", 3, at=now - timedelta(minutes=5))),
        ],
        key=b"cam-new",
    )

    def cameras() -> dict[str, dict[str, object]]:
        return {c["camera_id"]: c for c in json.loads(http.request("/api/cameras")[2])["cameras"]}

    listed = wait_for(lambda: (c := cameras()).keys() == {"cam-new", "cam-old"} and c, what="both cameras")
    new = listed["cam-new"]
    assert (new["state"], new["model"], new["last_score"], new["recent"]) == ("learning", None, None, [])
    assert listed["cam-old"]["state"] == "stalled"
    status, headers, body = http.request(str(new["thumbnail"]["url"]))  # type: ignore[index]
    assert status == 200 and headers["content-type"] == "image/jpeg" and body == picture

    publish(
        kafka_settings,
        console_topics.scores,
        [wire.encode(score("cam-new", 4, 0.2, at=now))],
        key=b"cam-new",
    )
    scored = wait_for(lambda: (c := cameras()["cam-new"])["state"] == "ok" and c, what="the first score")
    assert scored["model"] == json.loads(MODEL.model_dump_json()) and scored["last_score"] == 0.2
