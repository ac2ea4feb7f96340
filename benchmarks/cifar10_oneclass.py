"""CIFAR-10 one-class benchmark of AnoMem (MODELS.md, "CIFAR-10 one-class").

For each normal class c: train AnoMem on the 5000 training images of c, fit the deviation
statistics on them, train the Deep-SVDD detector, then score the 10000 test images with the
one-class score and with the detector. AUROC with label = (class != c).

Two variants (`--variant`, see VARIANTS):
- scratch: ResNet-18 with the CIFAR stem trained from scratch on 32x32 images, the paper's setting
  (stage 1 with the instance contrast; wants a GPU).
- pretrained: EfficientNet-Lite0 with its ImageNet weights, frozen, on the images upsampled to
  96x96 (ImageNet stem, stride-32 map 3x3): only the memories and heads train, so it runs on a CPU.
  The frozen encoder's maps of the test images are computed once and shared by all classes.

Settings are chosen a priori (never from test labels). With `--epochs auto` the number of stage-1
epochs is derived from the measured training speed and a per-class time budget, so the run fits a
fixed GPU budget; the number used is recorded in the results.

Examples:
    python benchmarks/cifar10_oneclass.py --pack .cifar/cifar10.npz      # compact copy of the data
    python benchmarks/cifar10_oneclass.py --data .cifar/cifar10.npz --epochs 30
    python benchmarks/cifar10_oneclass.py --data .cifar/cifar10.npz --variant pretrained --epochs 2
    python benchmarks/cifar10_oneclass.py --limit-train 200 --limit-test 500 --epochs 1 --classes 0
    python benchmarks/cifar10_oneclass.py --merge a.json b.json          # combine partial runs
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from results_io import RESULTS, run_record
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from model.anomem.model import AnoMem  # noqa: E402
from model.anomem.train import (  # noqa: E402
    TrainState,
    deviation_maps,
    fit_deviation_stats,
    fit_term_stats,
    stacked_maps,
    train_detector,
    train_stage1,
)
from model.config import ExperimentConfig, parse_config  # noqa: E402
from model.metrics import auroc  # noqa: E402
from model.pipeline import build_model, score_inputs  # noqa: E402

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10" / "cifar10_jpg.zip"
SPLITS = ("train", "test")

# Published one-class CIFAR-10 mean AUROCs (MODELS.md / brief), for the markdown table.
REFERENCES = {"Deep SVDD": 64.8, "GEOM": 86.0, "CSI": 94.3}


@dataclass(frozen=True)
class Variant:
    """An encoder setting of the benchmark and the stage-1 defaults that go with it."""

    description: str
    encoder: str
    pretrained: bool
    freeze_encoder: bool
    size: int  # input side in pixels: CIFAR's 32, or upsampled for an ImageNet encoder
    batch_size: int
    lr: float
    crop_scale: tuple[float, float]


VARIANTS = {
    # The paper's setting; stage-1 settings of a SimCLR-style run on CIFAR.
    "scratch": Variant(
        "ResNet-18 (CIFAR stem, from scratch)", "resnet18", False, False, 32, 256, 1e-3, (0.2, 1.0)
    ),
    # ImageNet weights want objects of ~100 px and the ImageNet stem (inputs above 64 px); at 96 px the
    # stride-32 map is 3x3, not 1x1. Batch, lr and crops are anomon's defaults for a pretrained Lite0.
    "pretrained": Variant(
        "EfficientNet-Lite0 (ImageNet weights, frozen; images upsampled to 96x96)",
        "efficientnet_lite0",
        True,
        True,
        96,
        32,
        2e-3,
        (0.6, 1.0),
    ),
}


# --------------------------------------------------------------------------------------------- data
def _members(zf: zipfile.ZipFile) -> list[tuple[str, int, int, str]]:
    """(split, class index, image index, member name) of every JPEG in the zip, sorted."""
    out = []
    for name in zf.namelist():
        parts = name.split("/")
        if len(parts) != 3 or not parts[2].endswith(".jpg") or parts[0] not in SPLITS:
            continue
        out.append((parts[0], CLASSES.index(parts[1]), int(parts[2][:-4]), name))
    return sorted(out, key=lambda m: (SPLITS.index(m[0]), m[1], m[2]))


def pack(zip_path: Path, out: Path) -> None:
    """Write the JPEG bytes of the zip, concatenated and zlib-compressed, with their index (~18 MB).

    The JPEG headers repeat in every file, so compressing the concatenation shrinks it about 3x;
    decoding happens where the benchmark runs (the copy stays bit-identical to the zip's JPEGs).
    """
    with zipfile.ZipFile(zip_path) as zf:
        members = _members(zf)
        blobs = [zf.read(m[3]) for m in tqdm(members, desc="reading JPEGs", unit="img")]
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        jpeg=np.frombuffer(b"".join(blobs), dtype=np.uint8),
        offsets=offsets,
        split=np.array([SPLITS.index(m[0]) for m in members], dtype=np.uint8),
        label=np.array([m[1] for m in members], dtype=np.uint8),
    )
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {len(members)} images)")


def _decode(jpeg: bytes) -> np.ndarray:
    import cv2  # only needed here

    img = cv2.imdecode(np.frombuffer(jpeg, dtype=np.uint8), cv2.IMREAD_COLOR)
    if img is None or img.shape != (32, 32, 3):
        raise ValueError("not a 32x32 colour JPEG")
    return img[:, :, ::-1].transpose(2, 0, 1)  # BGR HWC -> RGB CHW


def load_cifar(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'train'|'test': (uint8 images [N, 3, 32, 32] RGB, class labels [N])} from the zip or a packed .npz."""
    if path.suffix == ".npz":
        with np.load(path) as z:
            blob, offsets, split, label = z["jpeg"].tobytes(), z["offsets"], z["split"], z["label"]
        jpegs = [blob[offsets[i] : offsets[i + 1]] for i in range(len(label))]
    else:
        with zipfile.ZipFile(path) as zf:
            members = _members(zf)
            jpegs = [zf.read(m[3]) for m in members]
        split = np.array([SPLITS.index(m[0]) for m in members], dtype=np.uint8)
        label = np.array([m[1] for m in members], dtype=np.uint8)
    images = np.stack([_decode(j) for j in tqdm(jpegs, desc="decoding", unit="img", mininterval=2)])
    return {s: (images[split == i], label[split == i].astype(np.int64)) for i, s in enumerate(SPLITS)}


def upsample(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N, 3, 32, 32] -> [N, 3, size, size], bilinear (as torchvision's Resize)."""
    if images.shape[-1] == size:
        return images
    out = np.empty((len(images), 3, size, size), dtype=np.uint8)
    for i, img in enumerate(
        tqdm(images, desc=f"upsampling to {size}", unit="img", mininterval=2, leave=False)
    ):
        out[i] = cv2.resize(img.transpose(1, 2, 0), (size, size), interpolation=cv2.INTER_LINEAR).transpose(
            2, 0, 1
        )
    return out


def subsample(images: np.ndarray, labels: np.ndarray, limit: int | None, seed: int) -> tuple:
    """A fixed random subset (for quick checks); the whole set when limit is None."""
    if limit is None or limit >= len(images):
        return images, labels
    pick = np.sort(np.random.default_rng(seed).permutation(len(images))[:limit])
    return images[pick], labels[pick]


# -------------------------------------------------------------------------------------------- model
def make_config(args: argparse.Namespace, epochs: int) -> ExperimentConfig:
    v = VARIANTS[args.variant]
    return parse_config(
        {
            "input": {"height": args.size, "width": args.size, "color": True, "motion": False},
            "model": {
                "encoder": v.encoder,
                "pretrained": v.pretrained,
                "freeze_encoder": v.freeze_encoder,
                "per_position_stats": False,
                "scales": [0, 1, 2],
                "score": "oneclass",
            },
            "train": {
                "seed": args.seed,
                "epochs": epochs,
                "batch_size": args.batch_size,
                "frames_per_epoch": None,
                "lr": args.lr,
                "encoder_lr": None,  # from scratch: the encoder learns at the same rate as the rest
                "weight_decay": args.weight_decay,
                "temperature": args.temperature,
                "crop_scale": list(args.crop_scale),
                "detector_epochs": args.detector_epochs,
                "detector_lr": args.detector_lr,
            },
        },
        source="cifar10_oneclass",
    )


def with_score(cfg: ExperimentConfig, score: str) -> ExperimentConfig:
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"score": score})})


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def probe_seconds_per_step(cfg: ExperimentConfig, inputs: np.ndarray, device: torch.device) -> float:
    """Seconds per stage-1 step (steady state) on a throwaway model: 8 warm-up steps, 16 timed."""
    timings = []
    for steps in (8, 16):
        probe_cfg = cfg.train.model_copy(
            update={"epochs": 1, "frames_per_epoch": steps * cfg.train.batch_size}
        )
        torch.manual_seed(cfg.train.seed)
        model = build_model(cfg, load_pretrained=False).to(device)
        _sync(device)
        started = time.perf_counter()
        train_stage1(model, inputs, probe_cfg, TrainState())
        _sync(device)
        timings.append((time.perf_counter() - started) / steps)
        del model
    return timings[-1]


@torch.no_grad()
def encoder_maps(model: AnoMem, inputs: np.ndarray, batch_size: int) -> list[torch.Tensor]:
    """The encoder's maps (every scale, on the CPU) of uint8 inputs; reusable while it is frozen."""
    model.eval()
    device = next(model.parameters()).device
    chunks = []
    for start in tqdm(range(0, len(inputs), batch_size), desc="test encoder maps", unit="batch", leave=False):
        current, _ = model.split_input(torch.from_numpy(inputs[start : start + batch_size]).to(device))
        chunks.append([f.cpu() for f in model.encoder(current.contiguous(memory_format=torch.channels_last))])
    return [torch.cat([c[i] for c in chunks]) for i in range(len(chunks[0]))]


@torch.no_grad()
def scores_from_maps(
    model: AnoMem, maps: list[torch.Tensor], batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(one-class score, Deep-SVDD detector score) per input from its encoder maps: what the model's
    forward returns with `score` oneclass and svdd, without running the encoder again."""
    model.eval()
    device = next(model.parameters()).device
    oneclass, svdd = [], []
    for start in tqdm(range(0, len(maps[0]), batch_size), desc="scoring", unit="batch", leave=False):
        desc = model.descriptors([m[start : start + batch_size].to(device) for m in maps], None)
        standardized = model.standardized(model.raw_deviations(desc))
        oneclass.append(model.oneclass_score(model.score_terms(standardized, None)).cpu().numpy())
        svdd.append(model.detector(model.stack_maps(standardized)).cpu().numpy())
    return np.concatenate(oneclass), np.concatenate(svdd)


def run_class(
    c: int,
    cfg: ExperimentConfig,
    train_x: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    device: torch.device,
    score_batch: int,
    test_maps: list[torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Train on class c's training images and score the test set; returns the class's results.

    With `test_maps` (the frozen encoder's maps of `test_x`) scoring reuses them instead of running
    the encoder once per score.
    """
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg).to(device)
    state = TrainState()
    _sync(device)
    t0 = time.perf_counter()
    train_stage1(model, train_x, cfg.train, state)
    _sync(device)
    t1 = time.perf_counter()
    deviations = deviation_maps(model, train_x, batch_size=score_batch, desc="train deviations")
    fit_deviation_stats(model, deviations)
    fit_term_stats(model, train_x, deviations)
    train_detector(model, stacked_maps(model, deviations), cfg.train, state)
    _sync(device)
    t2 = time.perf_counter()
    labels = (test_y != c).astype(np.int64)
    if test_maps is not None:
        assert isinstance(model, AnoMem) and model.cfg.freeze_encoder
        oneclass, svdd = scores_from_maps(model, test_maps, score_batch)
    else:
        oneclass, _ = score_inputs(model, test_x, batch_size=score_batch, desc="scoring oneclass")
        svdd_model = build_model(with_score(cfg, "svdd"), load_pretrained=False)
        svdd_model.load_state_dict(model.state_dict(), strict=True)
        svdd_model.to(device)
        svdd, _ = score_inputs(svdd_model, test_x, batch_size=score_batch, desc="scoring svdd")
    _sync(device)
    t3 = time.perf_counter()
    for name, s in (("oneclass", oneclass), ("svdd", svdd)):
        if not np.all(np.isfinite(s)):
            raise ValueError(f"class {c}: non-finite {name} scores")
    return {
        "class": c,
        "name": CLASSES[c],
        "auroc_oneclass": auroc(labels, oneclass),
        "auroc_svdd": auroc(labels, svdd),
        "train_images": len(train_x),
        "test_images": len(test_x),
        "test_anomalies": int(labels.sum()),
        "stage1_seconds": t1 - t0,
        "stage2_seconds": t2 - t1,
        "train_seconds": t2 - t0,
        "score_seconds": t3 - t2,
        "stage1_losses": [round(v, 5) for v in state.stage1_losses],
        "detector_final_loss": state.detector_losses[-1] if state.detector_losses else None,
    }


# ------------------------------------------------------------------------------------------ reports
def summarize(results: dict[str, Any]) -> dict[str, Any]:
    per_class = sorted(results["classes"], key=lambda r: r["class"])
    results["classes"] = per_class
    for key in ("oneclass", "svdd"):
        vals = [r[f"auroc_{key}"] for r in per_class]
        results[f"mean_auroc_{key}"] = float(np.mean(vals)) if vals else None
    results["complete"] = sorted(r["class"] for r in per_class) == list(range(10))
    return results


def markdown(results: dict[str, Any]) -> str:
    t = results["config"]["train"]
    variant = VARIANTS[results.get("variant", "scratch")].description
    status = "" if results["complete"] else f" **Partial: {len(results['classes'])} of 10 classes.**"
    lines = [
        "# AnoMem, CIFAR-10 one-class (AUROC %)",
        "",
        f"`{results['command']}` ({results['date']}; wall {results.get('wall_seconds', 0) / 60:.0f} min, "
        f"{results.get('threads')} thread(s)).{status}",
        "",
    ]
    for run in results.get("runs", []):  # a merged result: the runs it joins
        lines.append(f"- `{run['command']}` ({run['date']}; wall {run['wall_seconds'] / 60:.0f} min)")
    if results.get("runs"):
        lines.append("")
    lines += [
        f"{variant}, {results.get('epochs')} stage-1 epoch(s) over the "
        f"{results['classes'][0]['train_images'] if results['classes'] else '?'} training images of the "
        f"normal class, {results['classes'][0]['test_images'] if results['classes'] else '?'} test images "
        f"scored, batch {t['batch_size']}, lr {t['lr']}, crop {t['crop_scale']}; "
        f"{results.get('device_name')}; torch {results.get('torch')}.",
        "",
        "| class | one-class score | Deep-SVDD detector | train s |",
        "|---|---|---|---|",
    ]
    for r in results["classes"]:
        lines.append(
            f"| {r['class']} {r['name']} | {100 * r['auroc_oneclass']:.1f} | {100 * r['auroc_svdd']:.1f} "
            f"| {r['train_seconds']:.0f} |"
        )
    if results["classes"]:
        n = len(results["classes"])
        label = "**mean**" if results["complete"] else f"**mean of {n} classes**"
        total = sum(r["train_seconds"] for r in results["classes"])
        lines.append(
            f"| {label} | **{100 * results['mean_auroc_oneclass']:.1f}** | "
            f"**{100 * results['mean_auroc_svdd']:.1f}** | {total:.0f} |"
        )
    lines += [
        "",
        "Published means for reference (all trained from scratch): "
        + ", ".join(f"{k} {v}" for k, v in REFERENCES.items())
        + ".",
    ]
    if VARIANTS[results.get("variant", "scratch")].pretrained:
        lines.append(
            "This run starts from ImageNet weights, which those methods do not use, so the comparison "
            "is not like for like."
        )
    lines += [
        "",
        "Settings were fixed before the run (the variant's defaults in `VARIANTS`; the number of epochs "
        "sized to the time budget); nothing was tuned on test labels.",
        "",
    ]
    return "\n".join(lines)


def write_outputs(results: dict[str, Any], json_path: Path, md_path: Path) -> None:
    summarize(results)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    md_path.write_text(markdown(results))


def merge(paths: list[Path], json_path: Path, md_path: Path) -> None:
    parts = [json.loads(p.read_text()) for p in paths]
    base = parts[0]
    for other in parts[1:]:
        if other["config"] != base["config"]:
            raise SystemExit("cannot merge runs with different configs")
    by_class = {r["class"]: r for p in parts for r in p["classes"]}
    merged = dict(base)
    merged["classes"] = list(by_class.values())
    merged.update(run_record())
    merged["runs"] = [
        {k: p.get(k) for k in ("command", "date", "wall_seconds", "device_name")} for p in parts
    ]
    merged["wall_seconds"] = sum(p.get("wall_seconds", 0.0) for p in parts)
    write_outputs(merged, json_path, md_path)
    print(markdown(merged))


# ---------------------------------------------------------------------------------------------- cli
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="AnoMem CIFAR-10 one-class benchmark (train on one class, score all 10000 test images).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="cifar10_jpg.zip or a --pack'ed .npz")
    p.add_argument("--pack", type=Path, default=None, help="write a compact copy of --data here and exit")
    p.add_argument("--merge", type=Path, nargs="+", default=None, help="merge result JSONs and exit")
    p.add_argument("--classes", type=int, nargs="+", default=list(range(10)), help="normal classes to run")
    p.add_argument(
        "--variant",
        choices=sorted(VARIANTS),
        default="scratch",
        help="scratch: ResNet-18 from scratch (the paper's, for a GPU); pretrained: frozen ImageNet "
        "EfficientNet-Lite0 on upsampled images (CPU)",
    )
    p.add_argument("--size", type=int, default=None, help="input side in pixels (default: the variant's)")
    p.add_argument(
        "--epochs", default="auto", help="stage-1 epochs, or 'auto': from measured speed and --class-seconds"
    )
    p.add_argument(
        "--class-seconds", type=float, default=80.0, help="stage-1 seconds per class for --epochs auto"
    )
    p.add_argument("--max-epochs", type=int, default=200, help="upper bound for --epochs auto")
    p.add_argument(
        "--batch-size", type=int, default=None, help="stage-1 batch, two views each (default: the variant's)"
    )
    p.add_argument(
        "--lr", type=float, default=None, help="stage-1 AdamW learning rate, cosine (default: the variant's)"
    )
    p.add_argument("--weight-decay", type=float, default=1e-4, help="stage-1 AdamW weight decay")
    p.add_argument("--temperature", type=float, default=0.3, help="NT-Xent temperature")
    p.add_argument(
        "--crop-scale",
        type=float,
        nargs=2,
        default=None,
        help="random resized crop area range (default: the variant's)",
    )
    p.add_argument("--detector-epochs", type=int, default=10, help="Deep-SVDD detector epochs")
    p.add_argument("--detector-lr", type=float, default=1e-3, help="Deep-SVDD detector learning rate")
    p.add_argument("--seed", type=int, default=0, help="seed of model init, augmentation and subsets")
    p.add_argument("--device", default="auto", help="'auto' (cuda when available), 'cpu', 'cuda', ...")
    p.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True, help="TF32 matmuls/convs")
    p.add_argument("--score-batch", type=int, default=1000, help="batch size for deviations and scoring")
    p.add_argument("--limit-train", type=int, default=None, help="use only N training images (quick checks)")
    p.add_argument("--limit-test", type=int, default=None, help="score only N test images (quick checks)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", type=Path, default=RESULTS / "cifar10_oneclass.json", help="results JSON")
    p.add_argument("--md", type=Path, default=RESULTS / "cifar10_oneclass.md", help="markdown table")
    args = p.parse_args(argv)
    v = VARIANTS[args.variant]
    for name in ("size", "batch_size", "lr", "crop_scale"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(v, name))
    if v.encoder == "efficientnet_lite0" and args.size <= 64:
        p.error("--size: EfficientNet-Lite0 has only the ImageNet stem, used above 64 px; give 65 or more")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.pack is not None:
        pack(args.data, args.pack)
        return
    if args.merge is not None:
        merge(args.merge, args.json, args.md)
        return
    if any(c not in range(10) for c in args.classes):
        raise SystemExit("--classes must be among 0..9")
    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
        torch.backends.cudnn.benchmark = True
    device_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    )
    print(f"device {device} ({device_name}), torch {torch.__version__}, classes {args.classes}", flush=True)

    data = load_cifar(args.data)
    train_all, train_lab = data["train"]
    test_x, test_y = subsample(*data["test"], args.limit_test, args.seed)
    test_x = upsample(test_x, args.size)
    checksum = hashlib.sha256(train_all.tobytes() + data["test"][0].tobytes()).hexdigest()
    print(
        f"decoded {len(train_all)} train / {len(data['test'][0])} test images "
        f"(sha256 {checksum[:16]}) in {time.perf_counter() - started:.1f}s",
        flush=True,
    )

    def class_train(c: int) -> np.ndarray:
        x, _ = subsample(train_all[train_lab == c], train_lab[train_lab == c], args.limit_train, args.seed)
        return np.ascontiguousarray(upsample(x, args.size))

    probe = None
    if args.epochs == "auto":
        cfg1 = make_config(args, 1)
        x0 = class_train(args.classes[0])
        sec_per_step = probe_seconds_per_step(cfg1, x0, device)
        steps = max(1, len(x0) // args.batch_size)
        epochs = int(max(1, min(args.max_epochs, math.floor(args.class_seconds / (sec_per_step * steps)))))
        probe = {
            "seconds_per_step": sec_per_step,
            "steps_per_epoch": steps,
            "class_seconds": args.class_seconds,
        }
        print(
            f"probe: {sec_per_step * 1000:.1f} ms/step x {steps} steps/epoch -> {epochs} epochs "
            f"for {args.class_seconds:.0f}s of stage 1 per class",
            flush=True,
        )
    else:
        epochs = int(args.epochs)
    cfg = make_config(args, epochs)
    test_maps = None
    if cfg.model.freeze_encoder:  # type: ignore[union-attr]
        encoder_model = build_model(cfg).to(device)
        assert isinstance(encoder_model, AnoMem)
        test_maps = encoder_maps(encoder_model, test_x, args.score_batch)
        print(f"test encoder maps in {time.perf_counter() - started:.0f}s (since start)", flush=True)

    results: dict[str, Any] = {
        "benchmark": "CIFAR-10 one-class (train on one class's 5000 training images; "
        "score the 10000 test images; label = class != normal class)",
        **run_record(),
        "device": str(device),
        "device_name": device_name,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "tf32": args.tf32 if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "variant": args.variant,
        "epochs": epochs,
        "epochs_probe": probe,
        "data": args.data.name,
        "data_sha256": checksum,
        "limit_train": args.limit_train,
        "limit_test": args.limit_test,
        "config": cfg.model_dump(mode="json"),
        "classes": [],
    }
    for c in args.classes:
        print(f"== class {c} ({CLASSES[c]}) ==", flush=True)
        r = run_class(c, cfg, class_train(c), test_x, test_y, device, args.score_batch, test_maps)
        results["classes"].append(r)
        results["wall_seconds"] = time.perf_counter() - started
        write_outputs(results, args.json, args.md)
        print(
            f"class {c} ({CLASSES[c]}): AUROC oneclass {100 * r['auroc_oneclass']:.2f}  "
            f"svdd {100 * r['auroc_svdd']:.2f}  (stage 1 {r['stage1_seconds']:.0f}s, "
            f"stage 2 {r['stage2_seconds']:.1f}s, scoring {r['score_seconds']:.1f}s, "
            f"final loss {r['stage1_losses'][-1]:.3f})",
            flush=True,
        )
    results["wall_seconds"] = time.perf_counter() - started
    write_outputs(results, args.json, args.md)
    print(markdown(results))
    print(f"wrote {args.json} and {args.md}; wall {results['wall_seconds']:.0f}s")


if __name__ == "__main__":
    main()
