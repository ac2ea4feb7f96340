"""Writes benchmarks/RESULTS.md from the result files: one section per maintained benchmark with its
headline numbers, the command and date of the run, and whether it measured the committed artifacts.

A run is stale when an artifact it measured (the digest of its weights and calibration, recorded in
its JSON) is no longer the model in benchmarks/artifacts/; its section then says so and gives the
command that measures the current one.

    python benchmarks/report.py           # writes benchmarks/RESULTS.md
    python benchmarks/report.py --check   # exits 1 when RESULTS.md is not what the results say
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from results_io import REPO, RESULTS, artifact_digest
from safetensors import SafetensorError

RESULTS_MD = REPO / "benchmarks" / "RESULTS.md"
PED2 = "--data ../shared/data/ucsd_ped2"
PED2_PROTOCOL = (
    "Accuracy on UCSD Ped2: trained on `train/` only (2 of 16 clips held out for calibration), scored "
    "on all 2010 test frames. **Causal micro AUROC** (the headline): each frame's score calibrated to "
    "[0, 1] and averaged with the 7 before it, as the live monitor does, pooled over the 12 clips. Paper "
    "micro: the same scores min-max normalized per clip, then pooled (the published protocol). Macro: "
    "the mean per-clip AUROC over the 7 clips with both classes. Pixel: anomaly maps against `masks/` "
    "at 120x180."
)

FLOPS_COMMAND = (
    "python benchmarks/flops.py --threads 1 --accuracy default=benchmarks/results/scenes.json "
    "'large-fleet candidate=runs/candidate_scenes.json'"
)


@dataclass(frozen=True)
class Benchmark:
    """A maintained benchmark: benchmarks/NAME.py writes benchmarks/results/NAME.json (and NAME.md)."""

    name: str
    title: str
    measures: str
    refresh: Callable[[str], str]  # run label -> the command that measures the committed artifacts
    headline: Callable[[dict[str, Any]], str]
    runs: Callable[[dict[str, Any]], list[tuple[str, dict[str, Any]]]] = lambda data: [("", data)]
    script: str | None = None  # the script that writes it, when not benchmarks/NAME.py


def _f(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}f}"


def _accuracy_line(r: dict[str, Any]) -> str:
    keys = ("auroc_causal_micro", "auroc_paper_micro", "auroc_macro", "pixel_auroc")
    causal, paper, macro, pixel = (_f(r[k]) for k in keys)
    return f"causal micro AUROC **{causal}** (paper micro {paper}, macro {macro}, pixel {pixel})"


# ------------------------------------------------------------------------------------ headlines
def _anomem_headline(data: dict[str, Any]) -> str:
    r = next(r for r in data["results"] if r["variant"] == "anomem-default")
    return f"{_accuracy_line(r)}; {r['fps_median_b32']:.1f} frames/s (PyTorch, batch 32)"


def _daad_headline(data: dict[str, Any]) -> str:
    block = int(max(data["pick"], key=lambda b: data["pick"][b]))  # the committed block size
    r = next(r for r in data["results"] if r["variant"] == f"block-{block}")
    return f"{_accuracy_line(r)}, block {block}; {r['fps_median_b32']:.1f} frames/s (PyTorch, batch 32)"


def _runtimes_headline(run: dict[str, Any]) -> str:
    def fps(backend: str, precision: str) -> float:
        return next(
            r["fps"]
            for r in run["rows"]
            if (r["backend"], r["precision"], r["batch"]) == (backend, precision, 8)
        )

    accuracy = " / ".join(
        _f(run["accuracy"][f"onnxruntime-{p}"]["auroc_causal_micro"]) for p in ("fp32", "fp16", "int8")
    )
    return (
        f"batch 8: ONNX Runtime FP32 {fps('onnxruntime', 'fp32'):.1f} frames/s (PyTorch "
        f"{fps('torch', 'fp32'):.1f}, INT8 {fps('onnxruntime', 'int8'):.1f}); causal micro AUROC "
        f"FP32 / FP16 / INT8 {accuracy}"
    )


def _stream_headline(data: dict[str, Any]) -> str:
    live = [r for r in data["rows"] if r["mode"] == "live"]
    cameras = "/".join(str(r["cameras"]) for r in live)
    p99 = "/".join(f"{r['e2e_p99_ms']:.0f}" for r in live)
    return (
        f"live end-to-end p99 {p99} ms at {cameras} cameras (10 frames/s each); saturation ratio "
        f"**{data['saturation_ratio']:.2f}** (target {data['targets']['saturation_ratio']}, median of "
        f"{len(data['saturation_rounds'])} rounds)"
    )


def _fleet_headline(data: dict[str, Any]) -> str:
    p99, last = data["live_p99_ms"], data["growth"][-1]
    target = data["targets"]["distinct_vs_shared_fps_ratio"]
    return (
        f"{data['cameras']} cameras, a model each / one shared: saturated frames/s ratio "
        f"**{data['distinct_vs_shared_fps_ratio']:.2f}** (target {target}); "
        f"live p99 {p99['distinct']:.0f} / {p99['shared']:.0f} ms; {data['rss_mb_per_extra_model']:.0f} MB "
        f"per extra model; {last['models']} models loaded: {last['rss_growth_mb']:.0f} MB"
    )


def _scenes_headline(data: dict[str, Any]) -> str:
    parts = []
    for row in data["results"]:
        if row["model"].startswith("frame-"):
            continue
        margin = next(m[f"{row['scene']} margin"] for m in data["summary"] if m["model"] == row["model"])
        parts.append(
            f"{row['model']} on {row['scene']} **{row['auroc_causal_micro']:.3f}** ({margin:+.3f} over the "
            f"better baseline; false alarms {100 * row['false_alarm_rate_raw']:.1f}% at "
            f"{100 * row['requested_false_alarm_rate']:g}% asked)"
        )
    return "; ".join(parts)


def _footage_headline(data: dict[str, Any]) -> str:
    parts = [
        f"{r['footage_seconds']:g} s **{r['auroc_causal_micro']:.3f}**"
        for r in data["results"]
        if "footage_frames" in r
    ]
    scene = next(r["scene"] for r in data["results"] if "footage_frames" in r)
    return f"AnoMem default on {scene}, causal micro by seconds of training footage: " + ", ".join(parts)


def _criterion_headline(data: dict[str, Any]) -> str:
    return "; ".join(
        f"{m['scene']}: Spearman **{m['spearman']:+.2f}** over {m['variants']} score settings "
        f"(criterion picks {m['picked']}: {m['picked_test_auroc']:.3f}, "
        f"default {m['default_test_auroc']:.3f})"
        for m in data["summary"]
    )


def _thumbnails_headline(data: dict[str, Any]) -> str:
    return (
        f"one thumbnail **{data['thumbnail_ms']:.2f} ms** (the model: {data['model_ms_per_frame']:.1f} ms a "
        f"frame); 50 cameras at one per {data['default_interval_seconds']:g} s: "
        f"{100 * data['share_of_a_core_at_50_cameras']:.1f}% of one core"
    )


def _service_ceiling_headline(data: dict[str, Any]) -> str:
    at16 = ", ".join(
        f"{variant} **{v['cameras']['16']['fps']:.0f}**"
        for variant, v in data["summary"].items()
        if "16" in v["cameras"]
    )
    goal = data["targets"]["fps_at_16_cameras"]
    return f"instant model, 16 cameras, saturated frames/s: {at16} (goal {goal}, median of rounds)"


def _gpu_check_headline(data: dict[str, Any]) -> str:
    from gpu_check import headline

    return headline(data)


def _reliability_headline(data: dict[str, Any]) -> str:
    phases = data["phases"]
    parts = []
    if "capacity" in phases:
        parts.append(f"capacity {phases['capacity']['processed_fps']:.1f} frames/s")
    if "overload" in phases:
        a = phases["overload"]["accounting"]
        parts.append(f"2x overload: {a['dropped']} of {a['sent']} dropped as stale, {a['lost']} lost")
    if "soak" in phases:
        soak, a = phases["soak"], phases["soak"]["accounting"]
        parts.append(
            f"soak {soak['seconds'] / 60:.0f} min at {soak['rate_fps']} frames/s: {a['sent']} sent, "
            f"**{a['lost']} lost**, RSS {soak['rss_mb']['growth_pct']:+.1f}%"
        )
    return "; ".join(parts)


def _paired(gap: int) -> str:
    return "itself" if gap == 0 else f"{gap} back"


def _motion_gaps_headline(data: dict[str, Any]) -> str:
    parts = []
    for checkpoint in dict.fromkeys(r["checkpoint"] for r in data["rows"]):
        rows = [r for r in data["rows"] if r["checkpoint"] == checkpoint and r["gap"] in (0, 1, 2)]
        shares = ", ".join(f"{_paired(r['gap'])} {100 * r['above_threshold']:.1f}%" for r in rows)
        parts.append(f"{checkpoint.removesuffix('.safetensors')}: {shares}")
    return "normal frames above the threshold, paired with " + "; ".join(parts)


def _lk_range_headline(data: dict[str, Any]) -> str:
    eight = next(r for r in data["known_shifts"] if r["shift_px"] == 8)
    reads = " / ".join(_f(eight[f"levels_{n}_median_px"], 2) for n in (1, 2, 3))
    ped2 = data["ped2_farneback_px_per_frame"]
    return (
        f"an 8 px shift reads {reads} px at `flow_levels` 1 / 2 / 3; Ped2's moving pixels p99 "
        f"{ped2['train moving pixels']['p99']:.2f} px (train), "
        f"{ped2['test moving pixels inside the anomaly masks']['p99']:.2f} px (anomalies)"
    )


def _cifar_headline(data: dict[str, Any]) -> str:
    n = len(data["classes"])
    scope = "10 classes" if data["complete"] else f"**partial**: {n} of 10 classes"
    encoder = {"scratch": "ResNet-18 from scratch", "pretrained": "frozen ImageNet EfficientNet-Lite0"}
    return (
        f"{encoder[data.get('variant', 'scratch')]}: mean AUROC one-class score "
        f"**{100 * data['mean_auroc_oneclass']:.1f}**, Deep-SVDD detector "
        f"{100 * data['mean_auroc_svdd']:.1f} ({scope}; published: Deep SVDD 64.8, GEOM 86.0, CSI 94.3)"
    )


def _flops_headline(data: dict[str, Any]) -> str:
    gflop = data["gflop_per_frame"]
    ort = {
        r["config"]: r
        for r in data["results"]
        if (r["runtime"], r["precision"], r["batch"]) == ("onnxruntime", "fp32", 32)
    }
    costs = ", ".join(
        f"{config} {gflop[config]:.3f} ({ort[config]['fps']:.0f} frames/s, "
        f"{100 * ort[config]['share_of_roof']:.0f}% of the roof)"
        for config in gflop
        if config in ort
    )
    line = f"GFLOP/frame, and ONNX Runtime FP32 batch 32 at {data['threads']} thread: {costs}"
    v = data["verdict"]
    if v is not None:
        word = {True: "met", False: "not met", None: "undetermined"}[v["met"]]
        losses = ", ".join(
            f"{scene} {'?' if loss is None else f'{loss:+.3f}'}" for scene, loss in v["losses"].items()
        )
        line += f"; large-fleet bar **{word}** ({v['flops_ratio']:.2f}x the FLOPs, AUROC loss {losses})"
    return line


BENCHMARKS = (
    Benchmark(
        "ped2_anomem",
        "AnoMem on UCSD Ped2",
        "Trains (or reuses) the committed AnoMem configuration and its ablations, scores each on Ped2's "
        "test set and copies the default to `benchmarks/artifacts/anomem_ped2.safetensors`.",
        lambda _: f"python benchmarks/ped2_anomem.py {PED2} --threads 2",
        _anomem_headline,
    ),
    Benchmark(
        "ped2_daad",
        "DAAD on UCSD Ped2",
        "The block-size sweep (8, 16, 32, 64 input pixels per memory block, two training seeds each), the "
        "label-free rule that picks the committed block size, and the adversarial and speed-term "
        "ablations; copies the pick to `benchmarks/artifacts/daad_ped2.safetensors`.",
        lambda _: f"python benchmarks/ped2_daad.py {PED2} --threads 2",
        _daad_headline,
    ),
    Benchmark(
        "runtimes",
        "Model runtimes on the CPU",
        "Frames/s and latency of one committed model per backend and precision (PyTorch eager FP32, ONNX "
        "Runtime FP32 / FP16 / INT8), timed in interleaved rounds, and Ped2 causal micro AUROC of each "
        "exported precision: the model alone, no service.",
        lambda name: (
            f"python benchmarks/runtimes.py --checkpoint benchmarks/artifacts/{name} {PED2} --threads 2"
        ),
        _runtimes_headline,
        lambda data: list(data["runs"].items()),
    ),
    Benchmark(
        "stream",
        "The streaming service end to end",
        "`anomon run` (ONNX Runtime FP32 export of the AnoMem artifact) behind an embedded broker: live "
        "latency from capture to published score at 1, 2 and 4 cameras, and the saturated service's "
        "frames/s over the model alone's (saturation ratio).",
        lambda _: f"python benchmarks/stream.py {PED2} --threads 2 --rounds 5",
        _stream_headline,
    ),
    Benchmark(
        "fleet",
        "A fleet: a model per camera",
        "`anomon run --store` with 8 cameras, each with its own model (the AnoMem artifact with its memory "
        "items perturbed per camera), against the same 8 cameras sharing one model, side by side in each "
        "round: saturated aggregate frames/s, live capture-to-publish p99 and resident memory; and load "
        "time and memory as one process opens 32 distinct models.",
        lambda _: f"python benchmarks/fleet.py {PED2} --cameras 8 --live-fps 4 --rounds 3 --grow 32",
        _fleet_headline,
    ),
    Benchmark(
        "scenes",
        "Two scenes: UCSD Ped2 and UCSD Ped1-dev",
        "The default config of each model trained and scored on each scene's protocol, beside the two "
        "trivial baselines (mean and largest-cell frame difference) on the same frames; the calibrated "
        "threshold's false-alarm rate on normal test frames and hit rate on anomalous ones.",
        lambda _: "python benchmarks/scenes.py --threads 2",
        _scenes_headline,
    ),
    Benchmark(
        "footage",
        "Accuracy by minutes of footage",
        "The default AnoMem trained on only the first N frames of Ped1-dev's normal footage (a new camera "
        "after N / 10 seconds), scored on the scenes.py protocol, beside the trivial baselines.",
        lambda _: (
            "python benchmarks/scenes.py --scenes ped1-dev --models anomem --footage-frames 100 200 382 "
            "--threads 1 --out benchmarks/results/footage"
        ),
        _footage_headline,
        script="scenes.py --footage-frames",
    ),
    Benchmark(
        "criterion",
        "Label-free criterion",
        "Score settings of the default AnoMem ranked on normal footage with synthetic events "
        '(docs/evaluation.md, "Label-free criterion"), against their causal micro AUROC on the labelled '
        "test frames: Spearman per scene.",
        lambda _: "python benchmarks/criterion.py --threads 2",
        _criterion_headline,
    ),
    Benchmark(
        "thumbnails",
        "Thumbnails for the console",
        "What a camera thumbnail (latest scored frame, heatmap and boxes, JPEG) costs the service: camera "
        "state on Ped2 frames with a thumbnail per frame against none, alternated batch by batch, beside "
        "the model's time per frame.",
        lambda _: f"python benchmarks/thumbnails.py {PED2} --rounds 5",
        _thumbnails_headline,
    ),
    Benchmark(
        "service_ceiling",
        "The service's own ceiling",
        "`anomon run` with an instant runtime (zeros of the model's shapes) behind an embedded broker, "
        "Ped2 JPEGs pre-loaded as 1, 4, 16 and 64 cameras: sustained frames/s, the service's and the "
        "broker's CPU per frame, live p99 and a py-spy profile by stage (poll, decode, pair, state, "
        "publish, commit); an earlier commit side by side, run by run.",
        lambda _: f"python benchmarks/service_ceiling.py {PED2} --rounds 3 --frames 4800 --live-fps 200",
        _service_ceiling_headline,
    ),
    Benchmark(
        "gpu_check",
        "The GPU check",
        "On one NVIDIA GPU: the AnoMem artifact's model-only frames/s per backend and precision (TensorRT "
        "FP16 and INT8 engines where TensorRT imports, PyTorch FP32 / FP16 on CUDA, ONNX Runtime), the "
        "Ped2 AUROC of each against ONNX Runtime's on the same frames (parity), and `anomon run` end to end "
        "at 1, 4, 16 and 64 cameras. Prepared here with `--prepare`, run on a GPU machine through the "
        "device tool (benchmarks/README.md, GPU check).",
        lambda _: "bash benchmarks/gpu_check.sh",
        _gpu_check_headline,
    ),
    Benchmark(
        "reliability",
        "Reliability under load",
        "`anomon run` fed Ped2 frames as 4 cameras: capacity (flat out), overload at 2x capacity (stale "
        "frames dropped and counted), a soak at 80%; every frame sent is accounted for (lost = sent - "
        "scored - dead-lettered - dropped). The faults and bad inputs tried are in the full table.",
        lambda _: "python benchmarks/reliability.py --phase capacity overload soak --soak-minutes 30",
        _reliability_headline,
    ),
    Benchmark(
        "motion_gaps",
        "Frames paired across a gap",
        "Both committed models score their held-out normal clips with each frame paired with the frame 0 "
        "(itself), 1, 2, 3 or 5 back: why the service pairs a frame only with the one just before it "
        "(`monitor/pairing.py`).",
        lambda _: f"python benchmarks/motion_gaps.py {PED2} --threads 2",
        _motion_gaps_headline,
    ),
    Benchmark(
        "lk_range",
        "The in-graph Lucas-Kanade speed range",
        "The speed the exported graph reads for a Ped2 frame shifted by a known amount at "
        "`model.flow_levels` 1, 2 and 3, and the speeds Ped2 needs (OpenCV Farneback flow): measures "
        "`model/motion.py`, no artifact.",
        lambda _: f"python benchmarks/lk_range.py {PED2}",
        _lk_range_headline,
    ),
    Benchmark(
        "flops",
        "FLOPs per frame",
        "GFLOP/frame of each model config (AnoMem default, DAAD default, the large-fleet AnoMem candidate; "
        "counted on the PyTorch forward), its frames/s per runtime, precision and batch, and the share of "
        "this CPU's float32 matmul roof that is, timed in interleaved rounds; beside the causal micro AUROC "
        "per scene from scenes.py results, and the candidate's verdict on the large-fleet bar.",
        lambda _: FLOPS_COMMAND,
        _flops_headline,
    ),
    Benchmark(
        "cifar10_oneclass",
        "AnoMem on CIFAR-10 one-class",
        "AnoMem trained on one class's 5000 training images, the 10000 test images scored, AUROC with "
        "label = other class; the mean over the ten classes. `--variant pretrained` (CPU): EfficientNet-"
        "Lite0 with its ImageNet weights frozen, images upsampled to 96x96, only the memories and heads "
        "train; `--variant scratch`: ResNet-18 from scratch, the paper's setting (needs a GPU).",
        lambda _: "python benchmarks/cifar10_oneclass.py --variant pretrained --epochs 3 --threads 1",
        _cifar_headline,
    ),
)


def _digest(path: Path) -> str | None:
    try:
        return artifact_digest(path)
    except (OSError, KeyError, ValueError, SafetensorError):  # gone, or not an anomon checkpoint
        return None


def stale_artifacts(run: dict[str, Any], repo: Path = REPO) -> list[str]:
    """The artifacts `run` measured that are no longer the committed models (retrained, refitted or gone)."""
    return [path for path, digest in run.get("artifacts", {}).items() if _digest(repo / path) != digest]


def _status(run: dict[str, Any], repo: Path) -> str:
    stale = stale_artifacts(run, repo)
    if stale:
        return "**stale**: measured an earlier " + ", ".join(f"`{Path(p).name}`" for p in stale)
    return "current" if run.get("artifacts") else "current (no artifact measured)"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _title(bench: Benchmark, label: str) -> str:
    return f"{bench.title} ({label.removesuffix('.safetensors')})" if label else bench.title


def _anchor(text: str) -> str:
    kept = "".join(c for c in text.lower() if c.isalnum() or c in " -_")  # as GitHub makes anchors
    return kept.replace(" ", "-")


def render(results: Path = RESULTS, repo: Path = REPO) -> str:
    """RESULTS.md as the result files in `results` say, artifacts compared with those under `repo`."""
    summary: list[list[str]] = []
    sections: list[str] = []
    for bench in BENCHMARKS:
        path = results / f"{bench.name}.json"
        heading = f"{bench.title} (`benchmarks/{bench.script or bench.name + '.py'}`)"
        sections += ["", f"## {heading}", "", bench.measures, ""]
        if not path.is_file():
            link = f"[{bench.title}](#{_anchor(heading)})"
            summary.append([link, "no result committed", "", "not run"])
            sections += [f"No result committed. Run: `{bench.refresh('')}`"]
            continue
        for label, run in bench.runs(json.loads(path.read_text())):
            title = _title(bench, label)
            status = _status(run, repo)
            refresh = f"; refresh: `{bench.refresh(label)}`" if stale_artifacts(run, repo) else ""
            link = f"[{title}](#{_anchor(heading)})"
            summary.append([link, bench.headline(run), run["date"][:10], status + refresh])
            if label:
                sections += [f"### {label}", ""]
            sections += [
                f"- Measured: {run['date']}, {status}",
                f"- Command: `{run['command']}`",
            ]
            if stale_artifacts(run, repo):
                sections.append(f"- Refresh (measures the committed artifacts): `{bench.refresh(label)}`")
            sections.append("")
        full = results / f"{bench.name}.md"
        if full.is_file():
            sections.append(f"Full table: [results/{full.name}](results/{full.name}).")
    lines = [
        "# Benchmark results",
        "",
        "Generated by `python benchmarks/report.py` from `benchmarks/results/*.json`; do not edit. Each "
        "benchmark's section below names the command and date of its run. A run is **stale** when an "
        "artifact it measured is no longer the committed model (the digest of its weights and "
        "calibration is recorded in the result); its refresh command measures the current one. What "
        "each benchmark measures and how to run it: [README.md](README.md).",
        "",
        PED2_PROTOCOL,
        "",
        *_table(["benchmark", "headline", "date", "status"], summary),
        *sections,
    ]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if RESULTS.md is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not RESULTS_MD.is_file() or RESULTS_MD.read_text() != text:
            print(f"{RESULTS_MD} is out of date: run python benchmarks/report.py", file=sys.stderr)
            return 1
        return 0
    RESULTS_MD.write_text(text)
    print(f"wrote {RESULTS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
