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
    "UCSD Ped2, trained on `train/` only (2 of 16 clips held out for calibration), scored on all 2010 "
    "test frames. **Causal micro AUROC** (the headline): each frame's score calibrated to [0, 1] and "
    "averaged with the 7 before it, as the live monitor does, pooled over the 12 clips. Paper micro: the "
    "same scores min-max normalized per clip, then pooled (the published protocol). Macro: the mean "
    "per-clip AUROC over the 7 clips with both classes. Pixel: anomaly maps against `masks/` at 120x180."
)

Table = tuple[list[str], list[list[str]]]


@dataclass(frozen=True)
class Benchmark:
    """A maintained benchmark: benchmarks/NAME.py writes benchmarks/results/NAME.json (and NAME.md)."""

    name: str
    title: str
    measures: str
    refresh: Callable[[str], str]  # run label -> the command that measures the committed artifacts
    headline: Callable[[dict[str, Any]], str]
    table: Callable[[dict[str, Any]], Table]
    runs: Callable[[dict[str, Any]], list[tuple[str, dict[str, Any]]]] = lambda data: [("", data)]


def _f(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}f}"


def _aurocs(r: dict[str, Any]) -> list[str]:
    keys = ("auroc_causal_micro", "auroc_paper_micro", "auroc_macro", "pixel_auroc")
    return [_f(r[k]) for k in keys]


AUROC_HEADER = ["causal micro", "paper micro", "macro", "pixel"]


def _accuracy_line(r: dict[str, Any]) -> str:
    causal, paper, macro, pixel = _aurocs(r)
    return f"causal micro AUROC **{causal}** (paper micro {paper}, macro {macro}, pixel {pixel})"


# --------------------------------------------------------------------------------------------- Ped2
def _anomem_row(data: dict[str, Any]) -> dict[str, Any]:
    return next(r for r in data["results"] if r["variant"] == "anomem-default")


def _anomem_table(data: dict[str, Any]) -> Table:
    r = _anomem_row(data)
    header = ["variant", *AUROC_HEADER, "scoring fps (PyTorch, batch 32)", "train s"]
    return header, [
        [r["variant"], *_aurocs(r), _f(r["fps_median_b32"], 1), _f(r["train_seconds_recorded"], 0)]
    ]


def _daad_committed(data: dict[str, Any]) -> int:
    return int(max(data["pick"], key=lambda b: data["pick"][b]))


def _daad_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    block = _daad_committed(data)
    names = [f"block-{block}", *(f"block-{block}-seed-{s}" for s in range(1, 10))]
    return [r for name in names for r in data["results"] if r["variant"] == name]


def _daad_headline(data: dict[str, Any]) -> str:
    return f"{_accuracy_line(_daad_rows(data)[0])}, block {_daad_committed(data)}"


def _daad_table(data: dict[str, Any]) -> Table:
    header = ["variant", *AUROC_HEADER, "label-free pseudo-anomaly AUROC", "scoring fps (PyTorch, batch 32)"]
    rows = [
        [
            r["variant"] + (" (committed)" if i == 0 else ""),
            *_aurocs(r),
            _f(r["pseudo_auroc"]),
            _f(r["fps_median_b32"], 1),
        ]
        for i, r in enumerate(_daad_rows(data))
    ]
    return header, rows


# ---------------------------------------------------------------------------------------- runtimes
def _fps(run: dict[str, Any], backend: str, precision: str, batch: int) -> dict[str, Any]:
    return next(
        r for r in run["rows"] if (r["backend"], r["precision"], r["batch"]) == (backend, precision, batch)
    )


def _runtimes_headline(run: dict[str, Any]) -> str:
    ort, torch_, int8 = (
        _fps(run, backend, precision, 8)["fps"]
        for backend, precision in (("onnxruntime", "fp32"), ("torch", "fp32"), ("onnxruntime", "int8"))
    )
    accuracy = " / ".join(
        _f(run["accuracy"][f"onnxruntime-{p}"]["auroc_causal_micro"]) for p in ("fp32", "fp16", "int8")
    )
    return (
        f"batch 8: ONNX Runtime FP32 {ort:.1f} frames/s (PyTorch {torch_:.1f}, INT8 {int8:.1f}); "
        f"causal micro AUROC FP32 / FP16 / INT8 {accuracy}"
    )


def _runtimes_table(run: dict[str, Any]) -> Table:
    batches = sorted({r["batch"] for r in run["rows"]})
    configs = list(dict.fromkeys((r["backend"], r["precision"]) for r in run["rows"]))
    header = [
        "backend",
        "precision",
        *(f"frames/s, batch {b}" for b in batches),
        f"p99 ms, batch {batches[0]}",
        "causal micro AUROC",
    ]
    rows = []
    for backend, precision in configs:
        accuracy = run["accuracy"].get(f"{backend}-{precision}")
        rows.append(
            [
                backend,
                precision,
                *(_f(_fps(run, backend, precision, b)["fps"], 1) for b in batches),
                _f(_fps(run, backend, precision, batches[0])["p99_ms"], 1),
                _f(accuracy["auroc_causal_micro"]) if accuracy else "",
            ]
        )
    return header, rows


# ---------------------------------------------------------------------------------- the service
def _live_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in data["rows"] if r["mode"] == "live"]


def _stream_headline(data: dict[str, Any]) -> str:
    live = _live_rows(data)
    cameras = "/".join(str(r["cameras"]) for r in live)
    p99 = "/".join(f"{r['e2e_p99_ms']:.0f}" for r in live)
    return (
        f"live end-to-end p99 {p99} ms at {cameras} cameras (10 frames/s each); saturation ratio "
        f"**{data['saturation_ratio']:.2f}** (target {data['targets']['saturation_ratio']}, median of "
        f"{len(data['saturation_rounds'])} rounds)"
    )


def _stream_table(data: dict[str, Any]) -> Table:
    header = ["run", "cameras", "frames sent", "scored", "dropped", "e2e p50 ms", "e2e p99 ms"]
    rows = [
        [
            r["scenario"],
            str(r["cameras"]),
            str(r["frames_sent"]),
            str(r["frames_scored"]),
            str(r["frames_dropped"]),
            _f(r["e2e_p50_ms"], 0),
            _f(r["e2e_p99_ms"], 0),
        ]
        for r in _live_rows(data)
    ]
    return header, rows


def _reliability_headline(data: dict[str, Any]) -> str:
    phases = data["phases"]
    parts = []
    if "capacity" in phases:
        parts.append(f"capacity {phases['capacity']['processed_fps']:.1f} frames/s")
    if "soak" in phases:
        soak, a = phases["soak"], phases["soak"]["accounting"]
        parts.append(
            f"soak {soak['seconds'] / 60:.0f} min at {soak['rate_fps']} frames/s: {a['sent']} sent, "
            f"**{a['lost']} lost**, RSS {soak['rss_mb']['growth_pct']:+.1f}%"
        )
    return "; ".join(parts)


def _reliability_table(data: dict[str, Any]) -> Table:
    header = ["phase", "mode", "rate fps", "seconds", "sent", "scored", "dropped", "lost", "RSS growth %"]
    rows = []
    for name in ("capacity", "overload", "soak"):
        if name not in data["phases"]:
            continue
        p, a = data["phases"][name], data["phases"][name]["accounting"]
        rate = str(p["rate_fps"]) if p["rate_fps"] else "flat out"
        counts = (a["sent"], a["scored_unique"], a["dropped"], a["lost"])
        rows.append(
            [name, p["mode"], rate, str(p["seconds"]), *map(str, counts), str(p["rss_mb"]["growth_pct"])]
        )
    return header, rows


# ------------------------------------------------------------------------------------- the motion
def _gap_label(gap: int) -> str:
    return "itself" if gap == 0 else f"{gap} back"


def _motion_gaps_headline(data: dict[str, Any]) -> str:
    parts = []
    for checkpoint in dict.fromkeys(r["checkpoint"] for r in data["rows"]):
        rows = [r for r in data["rows"] if r["checkpoint"] == checkpoint and r["gap"] in (0, 1, 2)]
        shares = ", ".join(f"{_gap_label(r['gap'])} {100 * r['above_threshold']:.1f}%" for r in rows)
        parts.append(f"{checkpoint.removesuffix('.safetensors')}: {shares}")
    return "normal frames above the threshold, paired with " + "; ".join(parts)


def _motion_gaps_table(data: dict[str, Any]) -> Table:
    header = ["checkpoint", "paired with", "frames", "above threshold", "mean normalized score"]
    rows = [
        [
            r["checkpoint"],
            _gap_label(r["gap"]),
            str(r["frames"]),
            f"{100 * r['above_threshold']:.1f}%",
            _f(r["mean_normalized_score"], 2),
        ]
        for r in data["rows"]
    ]
    return header, rows


def _lk_range_headline(data: dict[str, Any]) -> str:
    eight = next(r for r in data["known_shifts"] if r["shift_px"] == 8)
    reads = " / ".join(_f(eight[f"levels_{n}_median_px"], 2) for n in (1, 2, 3))
    ped2 = data["ped2_farneback_px_per_frame"]
    return (
        f"an 8 px shift reads {reads} px at `flow_levels` 1 / 2 / 3; Ped2's moving pixels p99 "
        f"{ped2['train moving pixels']['p99']:.2f} px (train), "
        f"{ped2['test moving pixels inside the anomaly masks']['p99']:.2f} px (anomalies)"
    )


def _lk_range_table(data: dict[str, Any]) -> Table:
    header = ["input", "speed read, px per frame (flow_levels 1 / 2 / 3)"]
    rows = [
        [f"{r['shift_px']:g} px shift", " / ".join(_f(r[f"levels_{n}_median_px"], 2) for n in (1, 2, 3))]
        for r in data["known_shifts"]
    ]
    rows += [
        [name, f"p50 {p['p50']:.2f} / p90 {p['p90']:.2f} / p99 {p['p99']:.2f} (Farneback)"]
        for name, p in data["ped2_farneback_px_per_frame"].items()
    ]
    return header, rows


# ------------------------------------------------------------------------------------------ CIFAR-10
def _cifar_headline(data: dict[str, Any]) -> str:
    n = len(data["classes"])
    scope = "10 classes" if data["complete"] else f"{n} of 10 classes"
    return (
        f"mean AUROC one-class score {100 * data['mean_auroc_oneclass']:.1f}, Deep-SVDD detector "
        f"{100 * data['mean_auroc_svdd']:.1f} ({scope})"
    )


def _cifar_table(data: dict[str, Any]) -> Table:
    header = ["class", "one-class score AUROC %", "Deep-SVDD detector AUROC %"]
    rows = [
        [f"{r['class']} {r['name']}", _f(100 * r["auroc_oneclass"], 1), _f(100 * r["auroc_svdd"], 1)]
        for r in data["classes"]
    ]
    return header, rows


BENCHMARKS = (
    Benchmark(
        "ped2_anomem",
        "AnoMem on UCSD Ped2",
        "Trains (or reuses) the committed AnoMem configuration and its ablations, scores each on Ped2's "
        f"test set and copies the default to `benchmarks/artifacts/anomem_ped2.safetensors`. {PED2_PROTOCOL}",
        lambda _: f"python benchmarks/ped2_anomem.py {PED2} --threads 2",
        lambda data: _accuracy_line(_anomem_row(data)),
        _anomem_table,
    ),
    Benchmark(
        "ped2_daad",
        "DAAD on UCSD Ped2",
        "The block-size sweep (8, 16, 32, 64 input pixels per memory block, two training seeds each), the "
        "label-free rule that picks the committed block size, and the adversarial and speed-term "
        f"ablations; copies the pick to `benchmarks/artifacts/daad_ped2.safetensors`. {PED2_PROTOCOL}",
        lambda _: f"python benchmarks/ped2_daad.py {PED2} --threads 2",
        _daad_headline,
        _daad_table,
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
        _runtimes_table,
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
        _stream_table,
    ),
    Benchmark(
        "reliability",
        "Reliability under load",
        "`anomon run` fed Ped2 frames as 4 cameras: capacity (flat out), overload at 2x capacity (stale "
        "frames dropped and counted), a soak at 80%; every frame sent is accounted for (lost = sent - "
        "scored - dead-lettered - dropped). The faults and bad inputs tried are in the full table.",
        lambda _: "python benchmarks/reliability.py --phase capacity overload soak --soak-minutes 30",
        _reliability_headline,
        _reliability_table,
    ),
    Benchmark(
        "motion_gaps",
        "Frames paired across a gap",
        "Both committed models score their held-out normal clips with each frame paired with the frame 0 "
        "(itself), 1, 2, 3 or 5 back: why the service pairs a frame only with the one just before it "
        "(`monitor/pairing.py`).",
        lambda _: f"python benchmarks/motion_gaps.py {PED2} --threads 2",
        _motion_gaps_headline,
        _motion_gaps_table,
    ),
    Benchmark(
        "lk_range",
        "The in-graph Lucas-Kanade speed range",
        "The speed the exported graph reads for a Ped2 frame shifted by a known amount at "
        "`model.flow_levels` 1, 2 and 3, and the speeds Ped2 needs (OpenCV Farneback flow): measures "
        "`model/motion.py`, no artifact.",
        lambda _: f"python benchmarks/lk_range.py {PED2}",
        _lk_range_headline,
        _lk_range_table,
    ),
    Benchmark(
        "cifar10_oneclass",
        "AnoMem on CIFAR-10 one-class",
        "AnoMem (ResNet-18 from scratch) trained on one class's 5000 training images, the 10000 test "
        "images scored, AUROC with label = other class; the mean over the ten classes. Needs a GPU.",
        lambda _: "python benchmarks/cifar10_oneclass.py --epochs auto",
        _cifar_headline,
        _cifar_table,
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
        heading = f"{bench.title} (`benchmarks/{bench.name}.py`)"
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
            sections += ["", *_table(*bench.table(run)), ""]
        full = results / f"{bench.name}.md"
        if full.is_file():
            sections.append(f"Full table: [results/{full.name}](results/{full.name}).")
    lines = [
        "# Benchmark results",
        "",
        "Generated by `python benchmarks/report.py` from `benchmarks/results/*.json`; do not edit. Each "
        "row names the command and date of its run. A run is **stale** when an artifact it measured is no "
        "longer the committed model (the digest of its weights and calibration is recorded in the "
        "result); its refresh command measures the current one. What each benchmark measures and how to "
        "run it: `benchmarks/README.md`.",
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
