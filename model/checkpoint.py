"""The model artifact: one safetensors file with the weights and the metadata to serve them.

safetensors holds tensors and strings only, so loading a checkpoint can never run pickled code.
The weights' SHA-256 is recorded in the metadata and checked before the weights are used.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from model.calibration import Calibration
from model.config import AnoMemConfig, ExperimentConfig, score_terms

FORMAT = "anomon.checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, damaged, altered or of an unknown format."""


class CheckpointMeta(BaseModel):
    """Everything but the weights: what the model is, how it was trained, how to read its scores."""

    model_config = ConfigDict(extra="forbid")

    format: str = FORMAT
    name: str
    version: str
    config: ExperimentConfig
    calibration: Calibration | None = None
    # Raw anomaly-map values to [0, 1]: the threshold is the per-frame map maximum exceeded by the
    # same false-alarm rate of held-out normal frames (so normal frames rarely show a region).
    map_calibration: Calibration | None = None
    data_fingerprint: str = ""
    training: dict[str, Any] = Field(default_factory=dict)
    complete: bool = True
    weights_sha256: str = ""


def weights_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def save_checkpoint(path: str | Path, state_dict: dict[str, torch.Tensor], meta: CheckpointMeta) -> None:
    """Write atomically (temp file + rename) so an interrupted save never leaves a half file."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    meta = meta.model_copy(update={"weights_sha256": weights_digest(tensors)})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"anomon": meta.model_dump_json()})
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    """Read and verify a checkpoint.

    Raises:
        CheckpointError: missing file, not a safetensors file, unknown format, or weights that do
            not match their recorded hash.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get("anomon")
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable anomon checkpoint ({err})") from None
    if raw is None:
        raise CheckpointError(f"{path} has no anomon metadata: not a checkpoint written by anomon train")
    try:
        fields = json.loads(raw)
        meta = CheckpointMeta.model_validate(with_legacy_fields(fields))
    except ValueError as err:
        raise CheckpointError(f"{path}: metadata does not validate ({str(err).splitlines()[0]})") from None
    if meta.format != FORMAT:
        raise CheckpointError(f"{path}: format {meta.format!r} is not supported (expected {FORMAT})")
    if weights_digest(tensors) != meta.weights_sha256:
        raise CheckpointError(
            f"{path}: weights do not match the hash in its metadata (altered or damaged file)"
        )
    if _anomem_without(fields, "score_weights"):
        meta = _upgrade_score_terms(meta, tensors)
    if _anomem_without(fields, "topk_pooling"):
        meta = _with_model_fields(meta, topk_pooling="cells")  # v7 changed the default to "area"
    if _model_without(fields, "daad", "latent_stats"):
        meta = _with_model_fields(meta, latent_stats="frame")  # raw latent cells, as it was trained
    if _model_without(fields, "daad", "speed_weight"):
        meta = _with_model_fields(meta, speed_weight=0.0)  # its score had no speed term
    for name in ("anomem", "daad"):
        if _model_without(fields, name, "edge_motion"):
            meta = _with_model_fields(meta, edge_motion="keep")  # trained on motion up to the edges
    return tensors, meta


def with_legacy_fields(fields: Any) -> Any:
    """Checkpoint or artifact metadata with the settings added since it was written filled in as it was
    trained, before validation (where a newer default would contradict its other settings)."""
    if _anomem_without(fields, "motion_pooling"):
        model = dict(fields["config"]["model"], motion_pooling="cells")  # v9's default: object
        fields = {**fields, "config": {**fields["config"], "model": model}}
    return fields


def _model_without(fields: Any, name: str, key: str) -> bool:
    """Whether metadata is a `name` checkpoint's from before its model config had `key`."""
    try:
        model = fields["config"]["model"]
    except (KeyError, TypeError):
        return False
    return isinstance(model, dict) and model.get("name", "anomem") == name and key not in model


def _anomem_without(fields: Any, key: str) -> bool:
    return _model_without(fields, "anomem", key)


def _with_model_fields(meta: CheckpointMeta, **update: Any) -> CheckpointMeta:
    cfg = meta.config
    model_cfg = cfg.model.model_copy(update=update)
    return meta.model_copy(update={"config": cfg.model_copy(update={"model": model_cfg})})


def _upgrade_score_terms(meta: CheckpointMeta, tensors: dict[str, torch.Tensor]) -> CheckpointMeta:
    """Let an AnoMem checkpoint from before the speed term score exactly as it did.

    Its one-class score was sum_l scale_weight_l * top-k(D_l): the same terms, not standardized
    (identity statistics), the scale weights, and weight 0 on the motion term.
    """
    cfg = meta.config
    assert isinstance(cfg.model, AnoMemConfig)
    terms = score_terms(cfg.model, cfg.input)
    scales = len(cfg.model.scales)
    weights = cfg.model.scale_weights or tuple(1.0 / scales for _ in range(scales))
    weights = (*weights, *(0.0 for _ in range(terms - scales)))
    tensors.setdefault("term_stats", torch.stack([torch.zeros(terms), torch.ones(terms)]))
    return _with_model_fields(meta, score_weights=weights, standardize_terms=False)
