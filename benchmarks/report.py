"""What the training benchmarks share: the machine's name and how results are written."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch


def cpu_name() -> str:
    """The CPU model and core count, e.g. 'AMD EPYC 7B13 x2'."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    return platform.machine()


def environment() -> dict[str, Any]:
    """The command line, machine, torch version and threads of this run."""
    return {
        "command": " ".join(["python", *sys.argv]),
        "machine": cpu_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def write_results(
    out: str | Path, env: dict[str, Any], rows: list[dict[str, Any]], markdown: str, **extra: Any
) -> None:
    """OUT.json ({environment, results, **extra}) and OUT.md; the table is printed too."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    report = {"environment": env, "results": rows, **extra}
    path.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    path.with_suffix(".md").write_text(markdown)
    print(markdown)


def write_report(
    out: str | Path, report: dict[str, Any], title: str, header: list[str], cells: list[list[str]]
) -> None:
    """OUT.json (`report`, which holds its `command`) and OUT.md: the title, the command, one table."""
    path = Path(out).with_suffix(".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# {title}",
        "",
        f"`{report['command']}`",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in cells),
    ]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
