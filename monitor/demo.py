"""`anomon demo`: the one-command first run on a fresh machine.

It starts the embedded broker, trains a small model on the spot on a generated street scene (normal:
people walking; anomalous: a fast vehicle-sized block), replays a test clip through Kafka, runs the
service on it, prints scores and alerts as they arrive, serves the metrics endpoint and the operator
console, whose URL it prints; the demo's alert shows there. The console stays up after the replay until
Ctrl-C (`stay_seconds`), so there is time to look.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

SCENE_HW = (120, 180)
DEMO_MODEL = {
    "input": {"height": 80, "width": 120, "motion": True},
    "model": {
        "encoder": "efficientnet_lite0",
        "pretrained": True,
        "freeze_encoder": True,
        "memories": [{"slots": 64, "dim": 32}, {"slots": 64, "dim": 32}, {"slots": 64, "dim": 32}],
        "proj_dim": 32,
        "topk": 4,
    },
    "train": {
        "epochs": 1,
        "batch_size": 16,
        "frames_per_epoch": 160,
        "detector_epochs": 1,
        "holdout_fraction": 0.25,
        "smoothing_frames": 4,
    },
}


def street_scene(
    frames: int, anomalous_from: int | None, seed: int, size: tuple[int, int] = SCENE_HW
) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """A grey street with two walkers; from `anomalous_from` on, a big fast bright block crosses it.

    Returns:
        grey uint8 frames, their ground-truth masks (255 = anomalous pixel) and 0/1 frame labels.
    """
    h, w = size
    rng = np.random.default_rng(seed)
    images, masks, labels = [], [], []
    walker_h, walker_w = max(4, h // 5), max(2, w // 18)
    for t in range(frames):
        img = np.full((h, w), 90, np.uint8) + rng.integers(0, 8, (h, w), dtype=np.uint8)
        mask = np.zeros((h, w), np.uint8)
        for lane, speed in ((0.42, 1), (0.62, -1)):
            x = int((w * 0.1 + speed * t * w / 90) % (w - walker_w))
            y = int(h * lane)
            img[y : y + walker_h, x : x + walker_w] = 170
        anomalous = anomalous_from is not None and t >= anomalous_from
        if anomalous:
            bw, bh = w // 4, h // 3
            bx = int((t - anomalous_from) * w / 15) % (w - bw)  # type: ignore[operator]
            by = h // 6
            img[by : by + bh, bx : bx + bw] = 250
            mask[by : by + bh, bx : bx + bw] = 255
        images.append(img)
        masks.append(mask)
        labels.append(int(anomalous))
    return images, masks, labels


def write_clip(folder: Path, images: list[np.ndarray]) -> Path:
    """Write frames as NNN.jpg into `folder` (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    for t, img in enumerate(images):
        cv2.imwrite(str(folder / f"{t:03d}.jpg"), img)
    return folder


@dataclass
class DemoResult:
    """What a demo run saw on the output topics."""

    frames_sent: int
    scores: int
    alerts: list[dict[str, Any]]
    anomalous_frames: int
    flagged_anomalous: int  # frames labelled anomalous whose score message says anomalous
    flagged_normal: int  # frames labelled normal whose score message says anomalous
    metrics_url: str | None
    console_url: str | None = None


def run_demo(
    frames: int = 120,
    fps: float = 15.0,
    http_port: int = 9108,
    workdir: str | Path | None = None,
    printer: Callable[[str], None] = print,
    console_port: int | None = 8080,
    stay_seconds: float | None = None,
    on_console: Callable[[str], None] | None = None,
) -> DemoResult:
    """Run the whole demo; returns what was published. See the module docstring.

    console_port: the console's port (0: any free one; None: no console). stay_seconds: how long the
    console (and the broker) stay up after the replay; None: until Ctrl-C. on_console: called with the
    console's URL once it serves (tests open it while the demo runs).
    """
    from kafka import KafkaConsumer

    from model.config import parse_config
    from model.export import export_artifact
    from model.pipeline import train
    from monitor.broker import EmbeddedBroker
    from monitor.config import load_service_config
    from monitor.ingest import FramePublisher
    from monitor.kafka_client import KafkaSettings, create_topics, make_producer
    from monitor.replay import find_clips, replay
    from monitor.service import MonitorService, serve

    root = Path(workdir or tempfile.mkdtemp(prefix="anomon-demo-"))
    printer(f"[1/4] generating a street scene in {root}")
    for i in range(4):
        write_clip(root / "train" / f"{i + 1:02d}", street_scene(60, None, seed=i)[0])
    anomalous_from = frames // 2
    test_images, _, labels = street_scene(frames, anomalous_from, seed=99)
    write_clip(root / "test" / "01", test_images)

    printer("[2/4] training a small AnoMem on the normal clips (pretrained EfficientNet-Lite0, frozen)")
    checkpoint = root / "demo.safetensors"
    train(root / "train", checkpoint, parse_config(json.loads(json.dumps(DEMO_MODEL))), version="demo")
    calibration = export_artifact(checkpoint, root / "model", "fp32").calibration
    assert calibration is not None  # train calibrates on held-out normal clips

    with EmbeddedBroker() as broker:
        printer(f"[3/4] embedded Kafka broker on {broker.bootstrap}")
        settings = KafkaSettings(bootstrap_servers=broker.bootstrap)
        cfg = load_service_config(
            overrides={
                "kafka.bootstrap_servers": broker.bootstrap,
                "model.artifact": str(root / "model"),
                "model.backend": "auto",
                "intake.mode": "replay",
                "http.port": http_port,
                "cameras.defaults.cutoff_seconds": 1.0,
                "cameras.defaults.cooldown_seconds": 1.0,
            },
            environ={},
        )
        create_topics(settings, {cfg.topics.frames: 2, cfg.topics.scores: 1, cfg.topics.alerts: 1})
        console = None
        if console_port is not None:
            from monitor.console.server import ConsoleServer, ConsoleSettings

            def open_console(port: int) -> ConsoleServer:
                return ConsoleServer(
                    ConsoleSettings(kafka=settings, topics=cfg.topics, port=port, db=root / "console.db")
                )

            try:
                console = open_console(console_port)
            except OSError as err:  # the port is taken: any free one will do for a demo
                printer(f"      port {console_port} is not free ({err.strerror}); the console takes another")
                console = open_console(0)
            console.start()
            printer(f"      console on {console.url} (cameras, alerts, feedback)")
            if on_console is not None:
                on_console(console.url)
        started = threading.Event()
        holder: dict[str, MonitorService] = {}

        def on_ready(service: MonitorService) -> None:
            holder["service"] = service
            started.set()

        service_thread = threading.Thread(
            target=serve, kwargs={"cfg": cfg, "max_idle_seconds": None, "on_ready": on_ready}, daemon=True
        )
        service_thread.start()
        if not started.wait(120):
            raise RuntimeError("the service did not start within 120 s")
        metrics_url = f"http://{cfg.http.host}:{cfg.http.port}/metrics" if cfg.http.enabled else None
        printer(f"[4/4] replaying {frames} frames at {fps:g} frames/s; metrics on {metrics_url}")
        camera = cfg.cameras.defaults
        printer(
            f"  a score is in [0, 1]: 0.25 is a typical normal frame, 0.50 the model's threshold (raw "
            f"{calibration.threshold:.2f}: {calibration.false_alarm_rate:.0%} of held-out normal frames "
            f"score above it); an alert starts when the mean of the last {camera.smoothing_frames} "
            f"scores stays at or above {camera.on_threshold:.2f} for {camera.min_frames} frames"
        )
        outputs = KafkaConsumer(
            cfg.topics.scores,
            cfg.topics.alerts,
            **settings.client_kwargs(),
            auto_offset_reset="earliest",
            consumer_timeout_ms=500,
        )
        publisher = FramePublisher(make_producer(settings), cfg.topics.frames)
        sender = threading.Thread(
            target=replay,
            args=(find_clips(root / "test"), publisher),
            kwargs={"fps": fps, "camera_prefix": "demo-cam", "progress": False},
            daemon=True,
        )
        sender.start()
        scores: dict[int, dict[str, Any]] = {}
        alerts: list[dict[str, Any]] = []
        deadline = time.monotonic() + frames / fps + 90
        while time.monotonic() < deadline and (len(scores) < frames or sender.is_alive()):
            for message in outputs:
                doc = json.loads(message.value)
                if doc["schema"].startswith("anomon.score"):
                    scores[doc["frame_index"]] = doc
                    if doc["frame_index"] % 10 == 0 or doc["anomalous"]:
                        flag = "ANOMALOUS" if doc["anomalous"] else "normal"
                        boxes = " ".join(str(r["bbox"]) for r in doc["regions"][:2])
                        line = (
                            f"  score  {doc['camera_id']} #{doc['frame_index']:4d}  {doc['score']:.2f} "
                            f"(raw {doc['raw_score']:6.2f}, threshold {calibration.threshold:.2f})"
                        )
                        printer(f"{line}  {flag} {boxes}")
                else:
                    alerts.append(doc)
                    printer(
                        f"  ALERT  {doc['type']:6s} {doc['camera_id']} {doc['alert_id'][:8]} "
                        f"peak #{doc['peak']['frame_index']} score {doc['peak']['score']:.2f}"
                    )
        holder["service"].stop_requested.set()
        service_thread.join(30)
        sender.join(5)
        for message in outputs:  # the end events published while draining
            doc = json.loads(message.value)
            if doc["schema"].startswith("anomon.alert"):
                alerts.append(doc)
                printer(f"  ALERT  {doc['type']:6s} {doc['camera_id']} {doc['alert_id'][:8]}")
        outputs.close()
        publisher.producer.close(timeout=5)
        flagged = [(labels[i], s["anomalous"]) for i, s in scores.items() if i < len(labels)]
        result = DemoResult(
            frames_sent=frames,
            scores=len(scores),
            alerts=alerts,
            anomalous_frames=sum(labels),
            flagged_anomalous=sum(1 for label, a in flagged if label and a),
            flagged_normal=sum(1 for label, a in flagged if not label and a),
            metrics_url=metrics_url,
            console_url=console.url if console is not None else None,
        )
        printer(
            f"done: {result.scores}/{frames} frames scored; "
            f"{sum(a['type'] == 'start' for a in alerts)} alert(s); "
            f"{result.flagged_anomalous}/{result.anomalous_frames} anomalous frames flagged, "
            f"{result.flagged_normal}/{frames - result.anomalous_frames} normal frames flagged"
        )
        if console is not None:
            try:
                _stay(console.url, stay_seconds, printer)
            finally:
                console.stop()
    return result


def _stay(url: str, seconds: float | None, printer: Callable[[str], None]) -> None:
    """Keep the console up after the replay: `seconds`, or until Ctrl-C when None."""
    if seconds is not None and seconds <= 0:
        return
    until = "Ctrl-C" if seconds is None else f"{seconds:g} s pass (or Ctrl-C)"
    printer(f"the console stays up on {url} until {until}: its Alerts page shows the demo's alert")
    try:
        time.sleep(seconds if seconds is not None else 10**9)
    except KeyboardInterrupt:
        printer("stopping")
