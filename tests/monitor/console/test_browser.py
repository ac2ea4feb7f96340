"""The console in headless Chromium, fed by the real broker and a real service scoring a Ped2 clip.

Screenshots go to the test's tmp dir; with ANOMON_UPDATE_SCREENSHOTS=1 also to docs/img/ (the
README's pictures of each page).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from model.export import export_artifact
from monitor import wire
from monitor.console.server import ConsoleServer, ConsoleSettings
from monitor.ingest import FramePublisher
from monitor.kafka_client import KafkaSettings, make_producer
from monitor.replay import find_clips, replay
from monitor.store import ModelStore
from tests.conftest import PED2, PED2_CHECKPOINT
from tests.monitor.conftest import RecordReader, ServiceThread, ServiceTopics, TopicFactory, service_config
from tests.monitor.console.conftest import MODEL, ConsoleFactory, alert, jpeg, publish, score, thumbnail

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).is_file(), reason="no chromium (Debian package chromium; .ci/run installs it)"
)
# Browsers cannot be downloaded here: Debian's chromium, with nothing that reaches out of the machine.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DOCS_IMG = Path(__file__).resolve().parents[3] / "docs" / "img"
VIEWPORT = {"width": 1440, "height": 900}
# Test instrumentation, not product code: when each alert row first appears on the page.
RECORD_ROWS = """() => {
  window.__shown = {};
  const seen = () => document.querySelectorAll('.alert-row').forEach((r) => {
    if (r.dataset.alert && !(r.dataset.alert in window.__shown)) window.__shown[r.dataset.alert] = Date.now();
  });
  new MutationObserver(seen).observe(document.getElementById('alert-list'), {childList: true, subtree: true});
  seen();
}"""
IMAGE_LOADED = "(img) => img.complete && img.naturalWidth > 0"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def ped2_anomem(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (PED2 / "labels.json").is_file():
        pytest.skip(f"UCSD Ped2 is not at {PED2}")
    out = tmp_path_factory.mktemp("console_ped2") / "anomem"
    export_artifact(PED2_CHECKPOINT, out, "fp32")
    return out


def _screenshot(page: Any, name: str, tmp_path: Path, full_page: bool = False) -> None:
    page.screenshot(path=str(tmp_path / f"console-{name}.png"), full_page=full_page)
    if os.environ.get("ANOMON_UPDATE_SCREENSHOTS") == "1":
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS_IMG / f"console-{name}.png"), full_page=full_page)


def _until(page: Any, script: str, arg: Any = None, timeout_s: float = 10.0) -> Any:
    """Poll `script` in the page until it is truthy (wait_for_function evaluates strings, which the
    console's Content-Security-Policy forbids; evaluate() does not)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = page.evaluate(script, arg)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{script} stayed false for {timeout_s} s")


def _live(page: Any) -> None:
    page.wait_for_selector('#live[data-state="connected"]', timeout=10_000)


def _replay_clip(settings: KafkaSettings, topic: str) -> None:
    producer = make_producer(settings)
    try:
        # 25 fps: the anomaly (frames 60..179) lasts about 5 s, long enough to watch it live.
        replay(
            find_clips(PED2, ["01"]),
            FramePublisher(producer, topic),
            fps=25,
            camera_prefix="ped2",
            progress=False,
        )
    finally:
        producer.close()


def test_a_ped2_alert_shows_live_and_its_false_alarm_survives_a_restart(
    browser: Any,
    ped2_anomem: Path,
    kafka_bootstrap: str,
    kafka_settings: KafkaSettings,
    service_topics: Any,
    new_topic: TopicFactory,
    read_records: RecordReader,
    tmp_path: Path,
) -> None:
    topics: ServiceTopics = service_topics(1)
    console_topics = wire.Topics(
        scores=topics.scores,
        alerts=topics.alerts,
        thumbnails=topics.thumbnails,
        feedback=new_topic(1, ".feedback"),
    )
    settings = ConsoleSettings(
        kafka=kafka_settings,
        topics=console_topics,
        port=0,
        db=tmp_path / "console.db",
        group_id=f"console-{uuid.uuid4().hex[:8]}",
    )
    console = ConsoleServer(settings).start()
    context = browser.new_context(viewport=VIEWPORT)
    try:
        assert console.feed.wait_ready(30)
        alerts_page, grid = context.new_page(), context.new_page()
        alerts_page.goto(console.url + "/alerts")
        grid.goto(console.url + "/")
        alerts_page.evaluate(RECORD_ROWS)
        _live(alerts_page)
        _live(grid)

        cfg = service_config(kafka_bootstrap, topics, ped2_anomem, **{"batching.max_batch": 8})
        with ServiceThread(cfg) as running:
            running.start()
            sender = threading.Thread(target=_replay_clip, args=(kafka_settings, topics.frames), daemon=True)
            sender.start()
            # The grid, while the alert is open: the tile turns red and shows the latest thumbnail.
            tile = grid.wait_for_selector('.tile.state-alert[data-camera="ped2-1"]', timeout=90_000)
            _until(grid, IMAGE_LOADED, tile.query_selector("img"))
            grid.wait_for_timeout(4000)  # into the anomaly (frames 60..179): its thumbnail, the sparkline
            _screenshot(grid, "cameras", tmp_path)
            row = alerts_page.wait_for_selector(".alert-row", timeout=30_000)
            sender.join(60)
            running.stop()  # drains: the open alert ends
        alert_id = row.get_attribute("data-alert")
        assert alert_id

        # Shown within 5 s of the alert's first record on the topic.
        records = read_records(topics.alerts, 1)
        first = next(r for r in records if str(wire.decode(r.value).alert_id) == alert_id)  # type: ignore[union-attr]
        shown_ms = alerts_page.evaluate("(id) => window.__shown[id]", alert_id)
        assert 0 <= shown_ms - first.timestamp <= 5000, (
            f"shown {shown_ms - first.timestamp} ms after the record"
        )
        assert row.query_selector('[data-field="camera_id"]').inner_text() == "ped2-1"
        _until(alerts_page, IMAGE_LOADED, row.query_selector("img"))
        _until(
            alerts_page, "(row) => row.querySelector('[data-field=status]').textContent !== 'open'", row, 20
        )
        _screenshot(alerts_page, "alerts", tmp_path)

        # The detail page: snapshot, curve, lifecycle; "false alarm" is stored and published.
        row.click()
        alerts_page.wait_for_selector("#curve polyline")
        detail = alerts_page
        assert detail.url.endswith(f"/alerts/{alert_id}")
        _until(detail, IMAGE_LOADED, detail.query_selector("#snapshot"))
        assert detail.locator("#events tbody tr").count() >= 2  # start ... end
        detail.click('button[data-verdict="false_alarm"]')
        _until(detail, "() => document.getElementById('feedback-status').textContent.includes('published')")
        assert detail.inner_text("#verdict") == "false alarm"
        _screenshot(detail, "alert", tmp_path, full_page=True)

        feedback = [wire.decode(r.value) for r in read_records(console_topics.feedback, 1)]
        assert len(feedback) == 1 and isinstance(feedback[0], wire.FeedbackMessage)
        assert (str(feedback[0].alert_id), feedback[0].verdict, feedback[0].camera_id) == (
            alert_id,
            "false_alarm",
            "ped2-1",
        )
    finally:
        context.close()
        console.stop()

    # A restarted console (same database) still shows the verdict, on the detail page and in the list.
    console = ConsoleServer(settings).start()
    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        page.goto(f"{console.url}/alerts/{alert_id}")
        assert page.inner_text("#verdict") == "false alarm"
        assert page.locator("#feedback tbody tr").count() == 1
        page.goto(f"{console.url}/alerts?camera=ped2-1")
        assert page.inner_text(f'.alert-row[data-alert="{alert_id}"] [data-field="verdict"]') == "false alarm"
    finally:
        context.close()
        console.stop()


def test_text_from_kafka_renders_as_text_in_live_updates(
    browser: Any, start_console: ConsoleFactory, console_topics: wire.Topics, kafka_settings: KafkaSettings
) -> None:
    console = start_console()
    hostile = MODEL.model_copy(update={"version": '<img src=x onerror="window.__xss=1">'})
    context = browser.new_context(viewport=VIEWPORT)
    dialogs: list[str] = []
    try:
        grid, alerts_page = context.new_page(), context.new_page()
        for page in (grid, alerts_page):
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        grid.goto(console.url + "/")
        alerts_page.goto(console.url + "/alerts")
        _live(grid)
        _live(alerts_page)

        a = uuid.uuid4()
        now = datetime.now(UTC)
        publish(
            kafka_settings,
            console_topics.scores,
            [wire.encode(score("cam-x", 0, 0.9, at=now, model=hostile))],
            b"cam-x",
        )
        publish(
            kafka_settings,
            console_topics.thumbnails,
            [wire.encode(thumbnail("cam-x", 0, at=now, model=hostile))],
            b"cam-x",
        )
        publish(
            kafka_settings,
            console_topics.alerts,
            [
                wire.encode(
                    alert("cam-x", a, start=now - timedelta(seconds=1), model=hostile, snapshot=jpeg())
                )
            ],
            b"cam-x",
        )
        tile = grid.wait_for_selector('.tile[data-camera="cam-x"]', timeout=20_000)
        row = alerts_page.wait_for_selector(f'.alert-row[data-alert="{a}"]', timeout=20_000)
        # A new tile and a new row, built by the script from the live events.
        assert tile.query_selector('[data-field="model"]').inner_text() == f"anomem · {hostile.version}"
        assert row.query_selector('[data-field="model"]').inner_text() == f"anomem · {hostile.version}"
        assert grid.query_selector("img[src=x]") is None and alerts_page.query_selector("img[src=x]") is None

        row.click()
        alerts_page.wait_for_selector("#curve")
        alerts_page.fill("#note", '<img src=x onerror="window.__xss=2">')
        alerts_page.click('button[data-verdict="acknowledged"]')
        alerts_page.wait_for_selector("#feedback tbody tr")
        assert (
            alerts_page.inner_text("#feedback tbody td:nth-child(3)")
            == '<img src=x onerror="window.__xss=2">'
        )
        assert hostile.version in alerts_page.inner_text("#model")
        for page in (grid, alerts_page):
            assert page.evaluate("window.__xss") is None and page.query_selector("img[src=x]") is None
        assert dialogs == []
    finally:
        context.close()


def _send_cameras(settings: KafkaSettings, topic: str, folders: dict[str, Path], count: int) -> None:
    """`count` frames of each camera's folder, interleaved, at 25 fps."""
    producer = make_producer(settings)
    try:
        publisher = FramePublisher(producer, topic)
        frames = {camera: sorted(folder.glob("*.jpg"))[:count] for camera, folder in folders.items()}
        for i in range(count):
            for camera, paths in frames.items():
                publisher.send(camera, paths[i].read_bytes(), "image/jpeg", i, time.time_ns())
            producer.flush()
            time.sleep(0.04)
    finally:
        producer.close()


BADGE_COLOURS = """() => Object.fromEntries([...document.querySelectorAll('.tile')].map((t) =>
  [t.dataset.camera, getComputedStyle(t.querySelector('.state-badge')).color]))"""
LEGEND_COLOURS = """() => [...document.querySelectorAll('.legend .dot')].map((d) =>
  [d.className, getComputedStyle(d).backgroundColor])"""


def test_a_camera_without_a_model_shows_learning_on_the_grid(
    browser: Any,
    ped2_anomem: Path,
    kafka_bootstrap: str,
    kafka_settings: KafkaSettings,
    service_topics: Any,
    new_topic: TopicFactory,
    tmp_path: Path,
) -> None:
    # A real service over a model store with a model for ped2-1 and none for lobby.
    store = ModelStore(tmp_path / "store", create=True)
    store.add(ped2_anomem, "ped2-1")
    topics: ServiceTopics = service_topics(1)
    settings = ConsoleSettings(
        kafka=kafka_settings,
        topics=wire.Topics(
            scores=topics.scores,
            alerts=topics.alerts,
            thumbnails=topics.thumbnails,
            feedback=new_topic(1, ".feedback"),
        ),
        port=0,
        db=tmp_path / "console.db",
        group_id=f"console-{uuid.uuid4().hex[:8]}",
    )
    console = ConsoleServer(settings).start()
    context = browser.new_context(viewport={"width": 720, "height": 490})  # two tiles, for the docs
    try:
        assert console.feed.wait_ready(30)
        grid = context.new_page()
        grid.goto(console.url + "/")
        _live(grid)
        cfg = service_config(kafka_bootstrap, topics, None, **{"model.store": str(store.root)})
        with ServiceThread(cfg) as running:
            running.start().wait_assigned()
            folders = {"ped2-1": PED2 / "train" / "01", "lobby": PED2 / "train" / "02"}
            sender = threading.Thread(
                target=_send_cameras, args=(kafka_settings, topics.frames, folders, 75), daemon=True
            )
            sender.start()
            # Both tiles come live (built by the script): lobby learning, ped2-1 scored.
            learning = grid.wait_for_selector('.tile.state-learning[data-camera="lobby"]', timeout=30_000)
            scored = grid.wait_for_selector(
                '.tile[data-camera="ped2-1"]:not(.state-learning)', timeout=60_000
            )
            _until(grid, IMAGE_LOADED, scored.query_selector("img"))
            assert scored.query_selector('[data-field="model"]').inner_text().startswith("anomem · ")
            for page in (grid, _reloaded(context, console.url)):  # live, then as the server renders it
                tile = page.query_selector('.tile[data-camera="lobby"]')
                assert "state-learning" in (tile.get_attribute("class") or "")
                assert tile.query_selector('[data-field="state"]').inner_text().lower() == "learning"
                assert tile.query_selector('[data-field="model"]').inner_text() == "no model yet"
                assert tile.query_selector('[data-field="score"]').inner_text() == "–"
                assert tile.query_selector('[data-field="last_ts"]').inner_text()
                _until(page, IMAGE_LOADED, tile.query_selector("img"))
                badges = page.evaluate(BADGE_COLOURS)
                assert badges["lobby"] != badges["ped2-1"], badges
                legend = dict(page.evaluate(LEGEND_COLOURS))
                assert len(set(legend.values())) == 4 and "dot learning" in legend, legend
            assert learning.query_selector("img").evaluate("(img) => img.naturalWidth") == 320  # max_side
            _screenshot(grid, "learning", tmp_path)
            sender.join(30)
    finally:
        context.close()
        console.stop()


def _reloaded(context: Any, url: str) -> Any:
    page = context.new_page()
    page.goto(url + "/")
    return page
