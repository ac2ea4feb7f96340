"""What an operator receives from normal footage when the service skips frames: this tree against an
earlier one (`--before`, e.g. a worktree of a commit before `monitor/pairing.py`).

Each tree's `anomon run` (a subprocess, live mode, ONNX Runtime, the committed AnoMem exported to
FP32) takes the two held-out normal Ped2 training clips as two cameras through an embedded broker,
frames stamped 100 ms apart (Ped2's 10 fps), in two scenarios:

- `all frames`: every frame fresh;
- `every other frame stale`: every odd frame stamped a minute back, so live mode drops it, as an
  overloaded service drops frames it cannot keep up with.

Reported per tree and scenario: frames scored, the share of them the service marks anomalous, and the
alerts started (`anomon.alerts` start events). No test labels: the clips are normal footage.

    git worktree add /tmp/before 6bfb38c
    python benchmarks/overload_pairing.py --before /tmp/before --data ../shared/data/ucsd_ped2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from report import write_report
from stream import REPO, Service, cli_export
from tqdm import tqdm

from monitor.broker import EmbeddedBroker
from monitor.kafka_client import KafkaSettings, create_topics, make_producer
from monitor.wire import frame_headers

RESULTS = Path(__file__).parent / "results"
CHECKPOINT = REPO / "benchmarks" / "artifacts" / "anomem_ped2.safetensors"
SCENARIOS = {"all frames": False, "every other frame stale": True}


def read_all(bootstrap: str, topic: str, count: int, timeout_s: float) -> list[dict[str, Any]]:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    try:
        consumer.assign([TopicPartition(topic, 0)])
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=300).values():
                out.extend(json.loads(r.value) for r in batch)
        return out
    finally:
        consumer.close()


def run(
    tree: Path, artifact: Path, clips: list[Path], stale_odd: bool, bootstrap: str, work: Path
) -> dict[str, Any]:
    settings = KafkaSettings(bootstrap_servers=bootstrap)
    name = uuid.uuid4().hex[:8]
    topics = {k: f"overload.{name}.{k}" for k in ("frames", "scores", "alerts", "dead_letters")}
    create_topics(settings, {topics["frames"]: 1, topics["scores"]: 1, topics["alerts"]: 1})
    config = {
        "kafka": {"bootstrap_servers": bootstrap},
        "consumer": {"group_id": f"overload-{name}"},
        "topics": topics,
        "model": {"artifact": str(artifact), "backend": "onnxruntime"},
        "intake": {"mode": "live", "max_frame_age_seconds": 30.0},
    }
    service = Service(config, work, repo=tree)
    try:
        service.wait_ready()
    except RuntimeError:
        service.log.flush()
        print(Path(service.log.name).read_text()[-2000:], file=sys.stderr)
        raise
    producer = make_producer(settings)
    t0 = time.time_ns()
    expected = 0
    for c, clip in enumerate(clips):
        for i, path in enumerate(sorted(clip.glob("*.jpg")) or sorted(clip.glob("*.tif"))):
            stale = stale_odd and i % 2 == 1
            ts = t0 - 60 * 10**9 if stale else t0 + i * 100_000_000
            headers = frame_headers("image/jpeg", i, ts)
            producer.send(
                topics["frames"], key=f"held-out-{c + 1}".encode(), value=path.read_bytes(), headers=headers
            )
            expected += not stale
    producer.flush()
    producer.close()
    scores = read_all(bootstrap, topics["scores"], expected, 120)
    service.stop()  # drains: open alerts get their end events
    alerts = read_all(bootstrap, topics["alerts"], 10**6, 3)
    return {
        "tree": str(tree),
        "scored": len(scores),
        "expected": expected,
        "anomalous_share": round(sum(s["anomalous"] for s in scores) / max(1, len(scores)), 4),
        "alerts_started": sum(1 for a in alerts if a.get("type") == "start"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", type=Path, required=True, help="source tree of the earlier service")
    parser.add_argument("--data", default="../shared/data/ucsd_ped2", help="Ped2 root")
    parser.add_argument("--out", default=str(RESULTS / "overload_pairing.json"))
    args = parser.parse_args()
    clips = sorted(p for p in (Path(args.data) / "train").iterdir() if p.is_dir())[-2:]
    rows = []
    with tempfile.TemporaryDirectory(prefix="anomon-overload-") as tmp:
        work = Path(tmp)
        artifacts = {
            tree: cli_export(CHECKPOINT, work / f"anomem-fp32-{i}", tree.resolve())
            for i, tree in enumerate((args.before, REPO))
        }
        with EmbeddedBroker(log_path=work / "tansu.log") as broker:
            plan = [
                (label, tree, scenario)
                for label, tree in (("before", args.before), ("this tree", REPO))
                for scenario in SCENARIOS
            ]
            for label, tree, scenario in tqdm(plan, desc="service runs", unit="run"):
                result = run(
                    tree.resolve(), artifacts[tree], clips, SCENARIOS[scenario], broker.bootstrap, work
                )
                rows.append({"service": label, "scenario": scenario} | result)
                tqdm.write(json.dumps(rows[-1]))
    report = {
        "command": " ".join(["python", "benchmarks/overload_pairing.py", *sys.argv[1:]]),
        "clips": [c.name for c in clips],
        "protocol": "held-out normal Ped2 training clips as two cameras, live mode, frames 100 ms apart; "
        "'every other frame stale': odd frames stamped 60 s back (dropped as stale)",
        "rows": rows,
    }
    write_report(
        args.out,
        report,
        "Normal footage through the service when every other frame is dropped (before and after pairing)",
        ["service", "scenario", "frames scored", "marked anomalous", "alerts started"],
        [
            [
                r["service"],
                r["scenario"],
                f"{r['scored']} / {r['expected']}",
                f"{100 * r['anomalous_share']:.1f} %",
                str(r["alerts_started"]),
            ]
            for r in rows
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
