"""`anomon ingest`, `replay`, `run`, `demo`, `broker`: frames into Kafka, and the service that scores them.

Each command imports what it runs inside its body, so that `anomon --help` loads no OpenCV or Kafka.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from monitor.cli.model import Backend
from monitor.wire import FRAMES_TOPIC

app = typer.Typer()
PANEL = "Streaming"

Bootstrap = Annotated[
    str | None,
    typer.Option(
        metavar="HOST:PORT",
        help="Kafka bootstrap servers, comma-separated "
        "(default: --kafka-config's, else env ANOMON_BOOTSTRAP, else 127.0.0.1:9092)",
        rich_help_panel="Kafka",
    ),
]
KafkaConfig = Annotated[
    Path | None,
    typer.Option(
        metavar="YAML",
        help="Kafka connection settings (TLS, SASL; the file's kafka: section or its top level)",
        rich_help_panel="Kafka",
    ),
]
Topic = Annotated[str, typer.Option(help="frames topic", rich_help_panel="Kafka")]
StartIndex = Annotated[int, typer.Option(help="frame index of the first frame")]


@contextlib.contextmanager
def stopped_by_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT (Ctrl-C) and SIGTERM set `stop` while inside, for commands that run until told to stop."""
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def frame_publisher(kafka_config: Path | None, bootstrap: str | None, topic: str) -> Any:
    from monitor.ingest import FramePublisher
    from monitor.kafka_client import load_kafka_settings, make_producer

    settings = load_kafka_settings(kafka_config, bootstrap_servers=bootstrap)
    return FramePublisher(make_producer(settings), topic)


CAMERAS_FILE = "Many cameras"


@app.command(rich_help_panel=PANEL)
def ingest(
    source: Annotated[
        str | None,
        typer.Option(
            help="video file, image folder, rtsp:// or http:// URL, or device index", show_default=False
        ),
    ] = None,
    camera: Annotated[
        str | None,
        typer.Option(help="camera id, the record key: 1-128 chars of [A-Za-z0-9._-]", show_default=False),
    ] = None,
    cameras: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="a cameras file: publish every camera in it from one process, each source reopened with "
            "backoff when it fails or ends, the file read again when it changes (instead of --source and "
            "--camera)",
            rich_help_panel=CAMERAS_FILE,
        ),
    ] = None,
    http_host: Annotated[
        str, typer.Option(help="with --cameras: metrics and health address", rich_help_panel=CAMERAS_FILE)
    ] = "127.0.0.1",
    http_port: Annotated[
        int,
        typer.Option(
            min=0,
            max=65535,
            help="with --cameras: metrics and health port (0 = any free port)",
            rich_help_panel=CAMERAS_FILE,
        ),
    ] = 9109,
    bootstrap: Bootstrap = None,
    kafka_config: KafkaConfig = None,
    topic: Topic = FRAMES_TOPIC,
    start_index: StartIndex = 0,
    fps: Annotated[
        float | None,
        typer.Option(
            help="frames per second (default: the source's rate; 10 for an image folder); "
            "live sources drop frames above it"
        ),
    ] = None,
    resize: Annotated[
        str | None, typer.Option(metavar="WxH", help="resize frames before encoding, e.g. 640x360")
    ] = None,
    jpeg_quality: Annotated[int, typer.Option(help="JPEG quality, 1 to 100")] = 90,
    loop: Annotated[
        bool, typer.Option("--loop", help="start again at the end (a stream: reconnect)")
    ] = False,
    max_frames: Annotated[int | None, typer.Option(help="stop after this many frames")] = None,
) -> int:
    """Publish a camera's frames (file, folder, stream, device) to Kafka, or every camera of a file."""
    if cameras is not None:
        one_camera = {
            "--source": source is not None,
            "--camera": camera is not None,
            "--fps": fps is not None,
            "--resize": resize is not None,
            "--jpeg-quality": jpeg_quality != 90,
            "--loop": loop,
            "--max-frames": max_frames is not None,
            "--start-index": start_index != 0,
        }
        given = [flag for flag, used in one_camera.items() if used]
        if given:
            raise typer.BadParameter(
                f"{given[0]} is for one camera; with --cameras set each camera's fields in the file"
            )
        return _ingest_cameras(cameras, kafka_config, bootstrap, topic, http_host, http_port)
    if source is None or camera is None:
        raise typer.BadParameter("give --source and --camera (one camera), or --cameras FILE (many)")
    from monitor.ingest import ingest as ingest_frames
    from monitor.ingest import open_source, parse_size

    size = parse_size(resize) if resize else None
    frames = open_source(source)
    publisher = frame_publisher(kafka_config, bootstrap, topic)
    try:
        report = ingest_frames(
            frames,
            publisher,
            camera,
            fps=fps,
            resize=size,
            jpeg_quality=jpeg_quality,
            loop=loop,
            max_frames=max_frames,
            start_index=start_index,
        )
    finally:
        publisher.producer.close(timeout=10)
    dropped = f"; {report.dropped} live frames dropped to keep the rate" if report.dropped else ""
    print(
        f"sent {report.frames} frames of camera {report.camera_id} to {report.topic} "
        f"in {report.seconds:.1f} s ({report.frames / max(report.seconds, 1e-9):.1f} fps){dropped}"
        + (" (interrupted)" if report.interrupted else "")
    )
    return 130 if report.interrupted else 0


def _ingest_cameras(
    path: Path, kafka_config: Path | None, bootstrap: str | None, topic: str, http_host: str, http_port: int
) -> int:
    """`anomon ingest --cameras FILE`: every camera of the file, supervised, until SIGINT or SIGTERM."""
    import logging

    from tqdm import tqdm

    from monitor.cameras_file import load_cameras_file
    from monitor.kafka_client import load_kafka_settings, make_producer, wait_for_kafka
    from monitor.metrics import HealthServer, IngestMetrics
    from monitor.supervisor import IngestSupervisor

    def say(message: str) -> None:
        tqdm.write(f"anomon ingest: {message}", file=sys.stderr)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.ERROR)  # a lost broker fails the feeds, which say so
    cameras = load_cameras_file(path)  # a bad file fails now, before anything connects
    settings = load_kafka_settings(kafka_config, bootstrap_servers=bootstrap)
    metrics = IngestMetrics()
    stop = threading.Event()
    producer: Any = None
    http = HealthServer(metrics, lambda: producer is not None and not stop.is_set(), http_host, http_port)
    http.start()
    host, port = http.address
    say(f"{len(cameras.sources)} cameras from {path} to {topic}; metrics on http://{host}:{port}/metrics")
    try:
        with stopped_by_signals(stop):
            if not wait_for_kafka(settings, stop, say):
                return 0
            producer = make_producer(settings)
            try:
                supervisor = IngestSupervisor(path, producer, topic, metrics, say)
                summary = supervisor.run(stop)
            finally:
                producer.close(timeout=10)
    finally:
        http.stop()
    print(
        f"anomon ingest: stopped; sent {summary.frames} frames of {summary.cameras} cameras to {topic}, "
        f"{summary.restarts} source restarts"
        + (f", {summary.dropped} live frames dropped to keep the rate" if summary.dropped else "")
    )
    return 0


@app.command(rich_help_panel=PANEL)
def replay(
    data: Annotated[
        Path, typer.Option(help="Ped2 root (its test/ clips), a folder of frame folders or videos")
    ],
    bootstrap: Bootstrap = None,
    kafka_config: KafkaConfig = None,
    topic: Topic = FRAMES_TOPIC,
    start_index: StartIndex = 0,
    fps: Annotated[float, typer.Option(help="frames per second per camera")] = 10.0,
    cameras: Annotated[int, typer.Option(help="cameras replaying the same clips concurrently")] = 1,
    camera_prefix: Annotated[str, typer.Option(help="camera ids are PREFIX-1 ... PREFIX-N")] = "replay",
    # Several values after one flag (--clips 01 02) or the flag repeated.
    clips: Annotated[
        list[str] | None, typer.Option(metavar="CLIP ...", help="replay only these clips, in this order")
    ] = None,
    clip_gap: Annotated[
        float,
        typer.Option(
            metavar="SECONDS",
            help="pause before each clip after the first, so that a motion model does not read the cut "
            "between clips as motion (above the service's intake.motion_max_gap_seconds, 0.5); 0: none",
        ),
    ] = 1.0,
    manifest: Annotated[
        Path | None,
        typer.Option(
            metavar="JSON", help="write what was sent: [{camera_id, frame_index, clip, clip_frame}, ...]"
        ),
    ] = None,
) -> int:
    """Replay a dataset into Kafka at a live rate, as one or more cameras."""
    from monitor.replay import find_clips
    from monitor.replay import replay as replay_clips

    found = find_clips(data, clips)
    publisher = frame_publisher(kafka_config, bootstrap, topic)
    try:
        report = replay_clips(
            found,
            publisher,
            fps=fps,
            cameras=cameras,
            camera_prefix=camera_prefix,
            start_index=start_index,
            clip_gap_seconds=clip_gap,
        )
    finally:
        publisher.producer.close(timeout=10)
    if manifest:
        report.write_manifest(manifest)
    print(
        f"sent {len(report.sent)} frames of {len(found)} clips as {len(report.cameras)} camera(s) "
        f"({report.cameras[0]}..{report.cameras[-1]}) to {report.topic} in {report.seconds:.1f} s"
        + (" (interrupted)" if report.interrupted else "")
        + (f"; manifest: {manifest}" if manifest else "")
    )
    return 130 if report.interrupted else 0


# `anomon run`'s flags override the service YAML's fields; unset ones leave them to it.
MODEL, KAFKA, BATCHING, HTTP = "Model", "Kafka", "Intake and batching", "HTTP"


@app.command(rich_help_panel=PANEL)
def run(
    config: Annotated[
        Path | None,
        typer.Option(help="service YAML (kafka, consumer, topics, model, batching, intake, cameras, http)"),
    ] = None,
    cameras: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="a cameras file (as for anomon ingest --cameras): its per-camera settings over --config's "
            "cameras section",
        ),
    ] = None,
    artifact: Annotated[
        Path | None,
        typer.Option(
            help="exported model folder or checkpoint for every camera (model.artifact; with --store: "
            "for cameras without their own model and without a store default)",
            rich_help_panel=MODEL,
        ),
    ] = None,
    store: Annotated[
        Path | None,
        typer.Option(
            help="model store: each camera scored by its own model, swapped live (model.store)",
            rich_help_panel=MODEL,
        ),
    ] = None,
    backend: Annotated[
        Backend | None,
        typer.Option(help="model.backend", rich_help_panel=MODEL),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="model.device: cpu or cuda[:N]", rich_help_panel=MODEL)
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="model.threads (per worker)", rich_help_panel=MODEL)
    ] = None,
    workers: Annotated[
        str | None,
        typer.Option(help="model.workers: auto (2 on a CPU, 1 on a GPU) or a number", rich_help_panel=MODEL),
    ] = None,
    bootstrap: Annotated[
        str | None, typer.Option(metavar="HOST:PORT", help="kafka.bootstrap_servers", rich_help_panel=KAFKA)
    ] = None,
    group_id: Annotated[
        str | None,
        typer.Option(
            help="consumer.group_id (instances with one id share the cameras)", rich_help_panel=KAFKA
        ),
    ] = None,
    mode: Annotated[
        Literal["live", "replay"] | None,
        typer.Option(help="intake.mode: live drops stale frames", rich_help_panel=BATCHING),
    ] = None,
    max_batch: Annotated[
        int | None, typer.Option(help="batching.max_batch", rich_help_panel=BATCHING)
    ] = None,
    max_wait_ms: Annotated[
        float | None, typer.Option(help="batching.max_wait_ms", rich_help_panel=BATCHING)
    ] = None,
    http_host: Annotated[
        str | None, typer.Option(help="http.host (default 127.0.0.1)", rich_help_panel=HTTP)
    ] = None,
    http_port: Annotated[
        int | None, typer.Option(help="http.port (default 9108; 0 = any free port)", rich_help_panel=HTTP)
    ] = None,
    exit_when_idle: Annotated[
        float | None, typer.Option(metavar="SECONDS", help="stop after this long without frames")
    ] = None,
) -> int:
    """The service: score frames from Kafka, publish scores and alerts."""
    from monitor.config import load_service_config

    flags = {
        "model.artifact": artifact,
        "model.store": store,
        "model.backend": backend,
        "model.device": device,
        "model.threads": threads,
        "model.workers": workers,
        "kafka.bootstrap_servers": bootstrap,
        "consumer.group_id": group_id,
        "intake.mode": mode,
        "batching.max_batch": max_batch,
        "batching.max_wait_ms": max_wait_ms,
        "http.host": http_host,
        "http.port": http_port,
    }
    cfg = load_service_config(config, {k: v for k, v in flags.items() if v is not None}, cameras_file=cameras)
    from monitor.service import serve

    stats = serve(cfg, max_idle_seconds=exit_when_idle)
    print(
        f"anomon run: stopped after {stats.processed} frames scored, {stats.dead_letters} dead letters, "
        f"{stats.dropped} dropped, {stats.learning} from cameras without a model, {stats.alerts} alerts"
    )
    return 0


@app.command(rich_help_panel=PANEL)
def demo(
    frames: Annotated[int, typer.Option(help="frames in the replayed test clip")] = 120,
    fps: Annotated[float, typer.Option(help="replay rate")] = 15.0,
    http_port: Annotated[int, typer.Option(help="metrics port (0 = any free port)")] = 9108,
    workdir: Annotated[
        Path | None, typer.Option(help="where the scene, model and export go (default: a temp folder)")
    ] = None,
    console_port: Annotated[int, typer.Option(help="the console's port (0 = any free port)")] = 8080,
    console: Annotated[bool, typer.Option(help="start the operator console and print its URL")] = True,
    stay: Annotated[
        float | None,
        typer.Option(
            metavar="SECONDS", help="keep the console up this long after the replay (default: Ctrl-C)"
        ),
    ] = None,
) -> int:
    """One-command first run: embedded broker, a model trained on a generated scene, live scores, console."""
    from monitor.demo import run_demo

    result = run_demo(
        frames=frames,
        fps=fps,
        http_port=http_port,
        workdir=workdir,
        console_port=console_port if console else None,
        stay_seconds=stay,
    )
    return 0 if result.scores == result.frames_sent else 1


@app.command(rich_help_panel=PANEL)
def broker(
    port: Annotated[int, typer.Option(min=1, max=65535, help="port on 127.0.0.1 to listen on")] = 9092,
    log: Annotated[
        Path | None, typer.Option(metavar="FILE", help="the broker's log (default: a temporary file)")
    ] = None,
) -> int:
    """A local Kafka-protocol broker (Tansu, records in memory only) for trying anomon; Ctrl-C stops it."""
    from monitor.broker import BrokerError, EmbeddedBroker

    stop = threading.Event()
    with stopped_by_signals(stop):
        embedded = EmbeddedBroker(port=port, log_path=log).start()
        try:
            print(
                f"anomon broker: Kafka on {embedded.bootstrap} (Tansu; records in memory only, lost when it "
                f"stops; log {embedded.log_path}); Ctrl-C stops it",
                file=sys.stderr,
            )
            while not stop.wait(0.5):
                if not embedded.running:
                    raise BrokerError(f"the broker on {embedded.bootstrap} exited; see {embedded.log_path}")
        finally:
            embedded.stop()
    print("anomon broker: stopped", file=sys.stderr)
    return 0
