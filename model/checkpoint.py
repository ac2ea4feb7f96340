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
from model.config import ExperimentConfig

FORMAT = "anomon.checkpoint/2"
# What rebuilds a checkpoint of an older format: the model config changed, so only training does.
RETRAIN = "anomon train --config CONFIG --data TRAINING_DATA --out {out}"


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
        CheckpointError: missing file, not a safetensors file, a format other than this anomon's
            (an older one names the command that rebuilds it), or weights that do not match their
            recorded hash.
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
    except ValueError as err:
        raise CheckpointError(f"{path}: metadata is not JSON ({err})") from None
    refused = format_error(fields, FORMAT, f"{path}: checkpoint", RETRAIN.format(out=path))
    if refused:
        raise CheckpointError(refused)
    try:
        meta = CheckpointMeta.model_validate(fields)
    except ValueError as err:
        raise CheckpointError(f"{path}: metadata does not validate ({str(err).splitlines()[0]})") from None
    if weights_digest(tensors) != meta.weights_sha256:
        raise CheckpointError(
            f"{path}: weights do not match the hash in its metadata (altered or damaged file)"
        )
    return tensors, meta


def format_error(fields: Any, current: str, what: str, rebuild: str) -> str | None:
    """Why metadata `fields` of another format than `current` (e.g. "anomon.checkpoint/2") is refused,
    in one line naming the format and model version it has and, for an older one, the `rebuild`
    command; None when it is `current`."""
    if not isinstance(fields, dict):
        return f"{what} metadata is not a mapping"
    found = fields.get("format")
    if found == current:
        return None
    model = f"{fields.get('name', '?')} {fields.get('version', '?')}"
    family, _, number = current.rpartition("/")
    if isinstance(found, str) and found.startswith(f"{family}/"):
        older = found.removeprefix(f"{family}/")
        if older.isdigit() and int(older) < int(number):
            return (
                f"{what} format {found} (model {model}) is older than this anomon reads ({current}): "
                f"rebuild it with {rebuild}"
            )
    return f"{what} format {found!r} (model {model}) is not supported (expected {current})"
