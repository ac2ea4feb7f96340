"""`anomon learn`: a camera's model learned from its own stream, added to the model store (docs/learn.md).

The command imports what it runs inside its body, so that `anomon --help` loads no torch or Kafka.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from monitor.cli.model import Backend, parse_overrides
from monitor.cli.stream import Bootstrap, KafkaConfig
from monitor.wire import FEEDBACK_TOPIC, FRAMES_TOPIC

app = typer.Typer()
PANEL = "Fleet"
FOOTAGE, MODEL = "Footage", "Model"


@app.command(rich_help_panel=PANEL)
def learn(
    camera: Annotated[str, typer.Option(metavar="ID", help="the camera id (its frames' record key)")],
    store: Annotated[
        Path, typer.Option(metavar="DIR", help="model store to add the model to (created if missing)")
    ],
    bootstrap: Bootstrap = None,
    kafka_config: KafkaConfig = None,
    topic: Annotated[str, typer.Option(help="frames topic", rich_help_panel="Kafka")] = FRAMES_TOPIC,
    feedback_topic: Annotated[
        str,
        typer.Option(
            help="operators' verdicts on alerts: frames of alerts marked real are left out",
            rich_help_panel="Kafka",
        ),
    ] = FEEDBACK_TOPIC,
    frames: Annotated[
        int | None,
        typer.Option(
            metavar="N", help="footage to learn from, in frames at input.fps", rich_help_panel=FOOTAGE
        ),
    ] = None,
    minutes: Annotated[
        float | None,
        typer.Option(
            metavar="M", help="footage to learn from, in minutes (default 5)", rich_help_panel=FOOTAGE
        ),
    ] = None,
    since: Annotated[
        str,
        typer.Option(
            metavar="TIME",
            help="read from: earliest, a duration back (90s, 30m, 2h, 7d) or an ISO 8601 time (UTC unless "
            "it says otherwise)",
            rich_help_panel=FOOTAGE,
        ),
    ] = "earliest",
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            help="wait for live frames until there is enough footage, instead of refusing",
            rich_help_panel=FOOTAGE,
        ),
    ] = False,
    config: Annotated[
        Path | None,
        typer.Option(
            help="YAML config with input/model/train sections, as for anomon train (input.fps: the rate "
            "kept)",
            rich_help_panel=MODEL,
        ),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="override, e.g. train.epochs=2 or input.fps=15",
            rich_help_panel=MODEL,
        ),
    ] = None,
    backend: Annotated[
        Backend,
        typer.Option(
            help="what will serve the model: tensorrt gets an fp16 export, onnxruntime fp32, torch the "
            "checkpoint; auto: TensorRT with a GPU, else ONNX Runtime, else PyTorch",
            rich_help_panel=MODEL,
        ),
    ] = "auto",
    precision: Annotated[
        Literal["fp32", "fp16", "int8"] | None,
        typer.Option(
            help="export precision instead of the backend's (int8 calibrates on the learned frames)",
            rich_help_panel=MODEL,
        ),
    ] = None,
    version: Annotated[
        str | None,
        typer.Option(help="model version (default: the camera id and the UTC time)", rich_help_panel=MODEL),
    ] = None,
    device: Annotated[
        str, typer.Option(help="torch device to train on, e.g. cuda", rich_help_panel=MODEL)
    ] = "cpu",
) -> int:
    """Learn a camera's model from its own frames on Kafka and add it to the model store."""
    from model.config import load_config
    from monitor.kafka_client import load_kafka_settings
    from monitor.learn import learn as learn_camera
    from monitor.wire import Topics

    cfg = load_config(config, parse_overrides(overrides or []))
    settings = load_kafka_settings(kafka_config, bootstrap_servers=bootstrap)
    report = learn_camera(
        settings,
        camera,
        store,
        cfg,
        topics=Topics(frames=topic, feedback=feedback_topic),
        frames=frames,
        minutes=minutes,
        since=since,
        follow=follow,
        backend=backend,
        precision=precision,
        version=version,
        device=device,
    )
    for line in report.summary():
        print(line)
    return 0
