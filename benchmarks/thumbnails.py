"""What the console's thumbnails cost the service: camera state with a thumbnail per frame against none.

Ped2 test clip 01 goes through the service's own parts in this process: intake (parse, decode,
resize, pair), the ONNX Runtime fp32 export of the committed AnoMem (one thread, batch 8), then
`Cameras.score` (scores, alerts, snapshots) twice per batch, in alternating order: once with a
thumbnail due for every frame (`thumbnails.interval_seconds` tiny) and once with thumbnails off.
The difference per frame is what one thumbnail costs (render, resize, JPEG); the model's time per
frame is timed alongside for scale. In service, a camera gets at most one thumbnail per
`thumbnails.interval_seconds` (2 s by default).

    python benchmarks/thumbnails.py --data ../shared/data/ucsd_ped2 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from kafka.consumer.fetcher import ConsumerRecord
from results_io import ANOMEM_ARTIFACT, RESULTS, environment, repo_path, write_report
from tqdm import tqdm

from model.export import export_artifact
from model.runtime import open_runtime
from monitor.camera import PerCameraSettings
from monitor.cameras import Cameras
from monitor.config import IntakeSettings, ThumbnailSettings
from monitor.intake import Intake
from monitor.metrics import ServiceMetrics, ServiceStats
from monitor.replay import find_clips
from monitor.scoring import LoadedModel, infer_batch
from monitor.wire import frame_headers

BATCH = 8
CAMERAS_AT_DEFAULT = 50


def records(payloads: list[bytes], camera: str, fps: float = 10.0) -> list[ConsumerRecord]:
    """The clip's frames as the consumer returns them, captured `fps` apart ending now."""
    start = time.time() - len(payloads) / fps
    out = []
    for index, payload in enumerate(payloads):
        capture_ns = int((start + index / fps) * 1e9)
        headers = frame_headers("image/jpeg", index, capture_ns)
        fields = (-1, index, capture_ns // 10**6, 0, camera.encode(), payload, headers, None, -1, -1, -1)
        out.append(ConsumerRecord("anomon.frames", 0, *fields))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", default=repo_path(ANOMEM_ARTIFACT))
    parser.add_argument("--data", default="../shared/data/ucsd_ped2", help="Ped2 root (test/ clips)")
    parser.add_argument("--clip", default="01")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(RESULTS / "thumbnails.json"))
    args = parser.parse_args()

    env = environment(args.checkpoint)
    work = Path(tempfile.mkdtemp(prefix="anomon-thumbnails-"))
    export_artifact(args.checkpoint, work / "fp32", "fp32")
    model = LoadedModel.from_runtime(open_runtime(work / "fp32", "onnxruntime", threads=1))
    (clip,) = find_clips(args.data, [args.clip])
    payloads = [payload for payload, _ in clip.encoded_frames()]
    settings = PerCameraSettings()
    variants = {
        "thumbnail every frame": ThumbnailSettings(interval_seconds=1e-6),
        "thumbnails off": ThumbnailSettings(enabled=False),
    }
    per_frame: dict[str, list[float]] = {name: [] for name in variants}
    model_ms: list[float] = []
    thumbnails = 0
    for round_no in tqdm(range(args.rounds), desc="rounds", unit="round"):
        intake = Intake(IntakeSettings(mode="replay"), lambda _: model, ServiceMetrics())
        frames = intake.take(records(payloads, f"cam-{round_no}")).frames
        inferences = [infer_batch(model, frames[i : i + BATCH]) for i in range(0, len(frames), BATCH)]
        model_ms.append(1e3 * sum(i.seconds for i in inferences) / len(frames))
        cameras = {
            name: Cameras(settings, ServiceMetrics(), ServiceStats(), cfg) for name, cfg in variants.items()
        }
        seconds = dict.fromkeys(variants, 0.0)
        for number, inference in enumerate(inferences):
            order = list(variants) if (number + round_no) % 2 == 0 else list(reversed(variants))
            for name in order:
                started = time.perf_counter()
                scored = cameras[name].score(inference)
                seconds[name] += time.perf_counter() - started
                if name == "thumbnail every frame":
                    thumbnails += len(scored.thumbnails)
        for name in variants:
            per_frame[name].append(1e3 * seconds[name] / len(frames))
    with_thumbnails, without = per_frame["thumbnail every frame"], per_frame["thumbnails off"]
    costs = [a - b for a, b in zip(with_thumbnails, without, strict=True)]
    cost = statistics.median(costs)
    frame_ms = statistics.median(model_ms)
    default = ThumbnailSettings()
    report = {
        **env,
        "clip": args.clip,
        "frames": len(payloads),
        "model_input": [model.spec.height, model.spec.width],
        "rounds": args.rounds,
        "thumbnails_rendered": thumbnails,
        "camera_state_ms_per_frame": {k: statistics.median(v) for k, v in per_frame.items()},
        "thumbnail_ms": cost,
        "thumbnail_ms_per_round": costs,
        "model_ms_per_frame": frame_ms,
        "default_interval_seconds": default.interval_seconds,
        "share_of_a_core_at_50_cameras": CAMERAS_AT_DEFAULT / default.interval_seconds * cost / 1e3,
        "max_side": default.max_side,
    }
    state = report["camera_state_ms_per_frame"]
    rounds = ", ".join(f"{c:.2f}" for c in costs)
    at_default = f"at the default interval ({default.interval_seconds:g} s), {CAMERAS_AT_DEFAULT} cameras"
    write_report(
        args.out,
        report,
        "Thumbnails: what they cost the service (Ped2, ONNX Runtime fp32, one thread)",
        ["measure", "value"],
        [
            ["camera state per frame, thumbnails off (median)", f"{state['thumbnails off']:.2f} ms"],
            ["camera state per frame, a thumbnail every frame", f"{state['thumbnail every frame']:.2f} ms"],
            [f"**one thumbnail** (the difference; per round: {rounds})", f"**{cost:.2f} ms**"],
            ["the model, per frame (batch 8, one thread)", f"{frame_ms:.1f} ms"],
            [at_default, f"{100 * report['share_of_a_core_at_50_cameras']:.1f}% of one core"],
        ],
    )


if __name__ == "__main__":
    main()
