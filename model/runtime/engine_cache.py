"""TensorRT engine cache: plans bound to the ONNX graph, the GPU and the TensorRT version.

An engine plan is executable code for one GPU and one TensorRT build, so a cached plan is only
deserialized when its header names exactly the key we expect and its bytes match the SHA-256 in the
header; anything else is refused (and rebuilt by the caller). This module needs no TensorRT.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MAGIC = b"ANOMON-TRT-ENGINE/1\n"
MAX_HEADER = 64 * 1024


class EngineCacheError(ValueError):
    """A cached engine is damaged, altered or built for something else; it must not be run."""


@dataclass(frozen=True)
class ShapeProfile:
    """Dynamic-batch optimization profile: min/opt/max batch at a fixed [C, H, W]."""

    input_name: str
    chw: tuple[int, int, int]
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(
                f"batch profile must satisfy 1 <= min <= opt <= max, got "
                f"{self.min_batch}/{self.opt_batch}/{self.max_batch}"
            )

    def shapes(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) full input shapes, as TensorRT's set_shape takes them."""
        return tuple((b, *self.chw) for b in (self.min_batch, self.opt_batch, self.max_batch))  # type: ignore[return-value]

    def admits(self, batch: int) -> bool:
        """Whether a batch of this size can run on an engine built with this profile."""
        return self.min_batch <= batch <= self.max_batch


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine plan depends on; its digest names the cache entry."""

    onnx_sha256: str
    gpu_name: str
    compute_capability: str
    tensorrt_version: str
    precision: str
    profile: ShapeProfile
    version_compatible: bool = False

    def digest(self) -> str:
        """SHA-256 over the key's canonical JSON."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    def file_name(self) -> str:
        """Cache file name: readable prefix plus the key digest."""
        gpu = "".join(ch if ch.isalnum() else "-" for ch in self.gpu_name).strip("-").lower()
        tag = f"{self.precision}-{gpu}-sm{self.compute_capability}-trt{self.tensorrt_version}"
        return f"{tag}-{self.digest()[:16]}.engine"


def write_engine(path: str | Path, key: EngineKey, plan: bytes) -> None:
    """Write MAGIC + one JSON header line (key, plan hash) + the plan, atomically."""
    header = {"key": asdict(key), "key_sha256": key.digest(), "plan_sha256": hashlib.sha256(plan).hexdigest()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + plan)
    os.replace(tmp, path)


def read_engine(path: str | Path, expected: EngineKey) -> bytes:
    """Return the plan of a cached engine after checking its header and hash against `expected`.

    Raises:
        EngineCacheError: not an anomon engine file, built for another key, or altered bytes.
    """
    blob = Path(path).read_bytes()
    if not blob.startswith(MAGIC):
        raise EngineCacheError(f"{path}: not an anomon engine file")
    end = blob.find(b"\n", len(MAGIC), len(MAGIC) + MAX_HEADER)
    if end < 0:
        raise EngineCacheError(f"{path}: engine header is missing or too long")
    try:
        header = json.loads(blob[len(MAGIC) : end])
    except ValueError:
        raise EngineCacheError(f"{path}: engine header is not valid JSON") from None
    if not isinstance(header, dict) or header.get("key_sha256") != expected.digest():
        raise EngineCacheError(
            f"{path}: engine was built for another graph, GPU, TensorRT version, precision or profile"
        )
    plan = blob[end + 1 :]
    if hashlib.sha256(plan).hexdigest() != header.get("plan_sha256"):
        raise EngineCacheError(f"{path}: engine bytes do not match their recorded hash (altered or damaged)")
    return plan


def cached_or_built(cache: str | Path, key: EngineKey, build: Callable[[], bytes]) -> bytes:
    """The plan cached for `key` in the folder `cache`, else a new one from `build()`, stored there.

    A cached engine that fails its checks is removed and rebuilt, never run. A folder that cannot be
    written (a read-only model mount) does not stop the start: the engine is then built again at
    every start, which is logged with the fix.
    """
    path = Path(cache) / key.file_name()
    if path.is_file():
        try:
            return read_engine(path, key)
        except EngineCacheError as err:
            log.warning("refusing cached engine, rebuilding: %s", err)
            with contextlib.suppress(OSError):
                path.unlink()
    plan = build()
    try:
        write_engine(path, key, plan)
    except OSError as err:
        log.warning(
            "cannot store the TensorRT engine in %s (%s); it is built again at every start: set "
            "model.engine_cache to a folder the service can write",
            cache,
            err.strerror or err,
        )
    return plan
