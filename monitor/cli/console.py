"""`anomon console`: the operator's web console (cameras, alerts, feedback) over the output topics.

Imports the web stack inside the command, so that `anomon --help` loads none of it.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Annotated

import typer

from monitor.cli.stream import Bootstrap, KafkaConfig

app = typer.Typer()
STATUS_SECONDS = 60.0


@app.command(rich_help_panel="Streaming")
def console(
    bootstrap: Bootstrap = None,
    kafka_config: KafkaConfig = None,
    config: Annotated[
        Path | None,
        typer.Option(
            metavar="YAML", help="service YAML: its kafka: and topics: sections (as anomon run reads)"
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(help="bind address; any but loopback needs ANOMON_CONSOLE_TOKEN or --token-file")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port (0: any free port)")] = 8080,
    db: Annotated[Path, typer.Option(help="SQLite file with the alert history and feedback")] = Path(
        "anomon-console.db"
    ),
    token_file: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="file holding the access token (else env ANOMON_CONSOLE_TOKEN)"),
    ] = None,
    group_id: Annotated[
        str, typer.Option(help="the console's consumer group (give each console its own)")
    ] = "anomon-console",
    stale_after: Annotated[
        float,
        typer.Option(metavar="SECONDS", help="a camera with no score or thumbnail this long shows stalled"),
    ] = 30.0,
    retention_days: Annotated[float, typer.Option(help="alerts older than this are forgotten")] = 30.0,
    max_record_bytes: Annotated[int, typer.Option(help="larger records are skipped and counted")] = 1024
    * 1024,
) -> int:
    """Web console: live camera grid, alert review and feedback, from the Kafka topics."""
    from monitor.config import load_service_config
    from monitor.console.access import load_token
    from monitor.console.server import ConsoleServer, ConsoleSettings
    from monitor.kafka_client import load_kafka_settings

    service = load_service_config(config) if config is not None else None
    if kafka_config is not None or service is None:
        kafka = load_kafka_settings(kafka_config, bootstrap_servers=bootstrap)
    else:
        kafka = service.kafka.model_copy(
            update={"bootstrap_servers": bootstrap or service.kafka.bootstrap_servers}
        )
    settings = ConsoleSettings(
        kafka=kafka,
        topics=service.topics if service is not None else ConsoleSettings().topics,
        host=host,
        port=port,
        db=db,
        group_id=group_id,
        token=load_token(token_file),
        stale_after_seconds=stale_after,
        retention_days=retention_days,
        max_record_bytes=max_record_bytes,
    )
    server = ConsoleServer(settings)
    topics = settings.topics
    print(
        f"anomon console on {server.url} (history: {db}; reading {topics.scores}, {topics.alerts}, "
        f"{topics.thumbnails} from {kafka.bootstrap_servers} as group {group_id}; "
        f"access: {'token' if settings.token else 'no token, loopback only'}); Ctrl-C stops",
        flush=True,
    )
    stop = threading.Event()
    threading.Thread(target=_report, args=(server, stop), name="console-status", daemon=True).start()
    try:
        server.serve()
    finally:
        stop.set()
    print("anomon console stopped", file=sys.stderr)
    return 0


def _report(server: object, stop: threading.Event) -> None:
    """One status line a minute: what the console holds and what it skipped."""
    from monitor.console.server import ConsoleServer

    assert isinstance(server, ConsoleServer)
    while not stop.wait(STATUS_SECONDS):
        cameras = server.store.cameras()
        skipped = sum(
            s.value for m in server.metrics.skipped.collect() for s in m.samples if s.name.endswith("_total")
        )
        print(
            f"console: {len(cameras)} cameras ({sum(c.state == 'alert' for c in cameras)} in alert, "
            f"{sum(c.state == 'learning' for c in cameras)} learning), "
            f"Kafka {'connected' if server.feed.ready else 'connecting'}, {int(skipped)} records skipped",
            file=sys.stderr,
            flush=True,
        )
