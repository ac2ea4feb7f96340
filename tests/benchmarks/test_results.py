"""benchmarks/RESULTS.md is what benchmarks/report.py renders from the committed result files."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # the benchmark scripts import their siblings by name

import report  # noqa: E402

RESULTS = BENCHMARKS / "results"
MAINTAINED = {b.name for b in report.BENCHMARKS}


def _runs(path: Path) -> list[dict]:
    data = json.loads(path.read_text())
    bench = next(b for b in report.BENCHMARKS if b.name == path.stem)
    return [run for _, run in bench.runs(data)]


def test_results_md_is_rendered_from_the_result_files() -> None:
    assert (BENCHMARKS / "RESULTS.md").read_text() == report.render(), (
        "benchmarks/RESULTS.md is out of date: run python benchmarks/report.py"
    )


def test_every_result_file_belongs_to_a_maintained_benchmark_without_a_version_suffix() -> None:
    for path in sorted(RESULTS.iterdir()):
        assert not re.search(r"_v\d+", path.stem), f"{path.name}: a superseded run is deleted, not suffixed"
        assert path.suffix in (".json", ".md") and path.stem in MAINTAINED, (
            f"{path.name} is no maintained benchmark's result (report.BENCHMARKS)"
        )


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.json")), ids=lambda p: p.name)
def test_every_run_records_its_command_and_date(path: Path) -> None:
    for run in _runs(path):
        bench = next(b for b in report.BENCHMARKS if b.name == path.stem)
        script = (bench.script or f"{path.stem}.py").split()[0]
        assert run["command"].startswith(f"python benchmarks/{script}")
        assert run["date"][:4].isdigit() and "T" in run["date"]


def test_a_changed_result_changes_the_page(tmp_path: Path) -> None:
    shutil.copytree(RESULTS, tmp_path / "results")
    path = tmp_path / "results" / "ped2_anomem.json"
    data = json.loads(path.read_text())
    next(r for r in data["results"] if r["variant"] == "anomem-default")["auroc_causal_micro"] = 0.5
    path.write_text(json.dumps(data))
    page = report.render(tmp_path / "results")
    assert page != report.render() and "**0.5000**" in page


def test_a_run_on_another_artifact_is_marked_stale_with_its_refresh_command(tmp_path: Path) -> None:
    shutil.copytree(RESULTS, tmp_path / "results")
    path = tmp_path / "results" / "ped2_daad.json"
    data = json.loads(path.read_text())
    data["artifacts"] = {p: "0" * 64 for p in data["artifacts"]}
    path.write_text(json.dumps(data))
    section = report.render(tmp_path / "results").split("## DAAD on UCSD Ped2")[1].split("\n## ")[0]
    assert "**stale**" in section
    assert "Refresh (measures the committed artifacts): `python benchmarks/ped2_daad.py" in section


def test_check_fails_when_the_page_is_out_of_date(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(report, "RESULTS_MD", tmp_path / "RESULTS.md")
    (tmp_path / "RESULTS.md").write_text("# Benchmark results\n")
    assert report.main(["--check"]) == 1
    assert report.main([]) == 0 and report.main(["--check"]) == 0
