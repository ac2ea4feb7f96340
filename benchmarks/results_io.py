"""How benchmark results are written: every result JSON holds the run's `command`, its `date` and the
digest of each committed artifact it measured (`artifacts`), so `report.py` can tell a current result
from one measured on an earlier artifact."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
ANOMEM_ARTIFACT = REPO / "benchmarks" / "artifacts" / "anomem_ped2.safetensors"
DAAD_ARTIFACT = REPO / "benchmarks" / "artifacts" / "daad_ped2.safetensors"


def cpu_name() -> str:
    """The CPU model and core count, e.g. 'AMD EPYC 7B13 x2'."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    return platform.machine()


def artifact_digest(path: str | Path) -> str:
    """What identifies a trained model: the SHA-256 of its weights (as its metadata records it) and its
    calibrations, hashed together. A checkpoint saved again with the same weights and thresholds (e.g.
    in a newer metadata format) keeps its digest; a retraining or a refit changes it.

    Raises:
        KeyError: `path` is a safetensors file without anomon metadata.
    """
    with safe_open(str(path), "np") as f:
        meta = json.loads((f.metadata() or {})["anomon"])
    identity = {k: meta.get(k) for k in ("weights_sha256", "calibration", "map_calibration")}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def repo_path(path: str | Path) -> str:
    """`path` relative to the repository root when it lies inside it (how results name artifacts)."""
    resolved = Path(path).resolve()
    return resolved.relative_to(REPO).as_posix() if resolved.is_relative_to(REPO) else str(resolved)


def run_record(*artifacts: str | Path) -> dict[str, Any]:
    """What every result JSON holds: the exact command, the date (UTC, ISO 8601) and the
    `artifact_digest` of each artifact the run measured, keyed by its path from the repository root."""
    script = f"benchmarks/{Path(sys.argv[0]).name}"  # as run from the repository root
    return {
        "command": shlex.join(["python", script, *sys.argv[1:]]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "artifacts": {repo_path(a): artifact_digest(a) for a in artifacts},
    }


def environment(*artifacts: str | Path) -> dict[str, Any]:
    """`run_record` plus the machine, torch version and threads of this run."""
    return {
        **run_record(*artifacts),
        "machine": cpu_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def write_results(
    out: str | Path, env: dict[str, Any], rows: list[dict[str, Any]], markdown: str, **extra: Any
) -> None:
    """OUT.json ({**environment, results, **extra}) and OUT.md; the table is printed too."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    report = {**env, "results": rows, **extra}
    path.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    path.with_suffix(".md").write_text(markdown)
    print(markdown)


def write_report(
    out: str | Path, report: dict[str, Any], title: str, header: list[str], cells: list[list[str]]
) -> None:
    """OUT.json (`report`, which holds its `command` and `date`) and OUT.md: the title, the command,
    one table."""
    path = Path(out).with_suffix(".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# {title}",
        "",
        f"`{report['command']}` ({report['date']})",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in cells),
    ]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
