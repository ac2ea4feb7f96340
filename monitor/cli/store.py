"""`anomon store`: add, list and remove the models in a model store (see docs/store.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from monitor.store import StoreEntry

app = typer.Typer(
    help="Manage a model store: one model per camera, numbered versions, and a default.",
    no_args_is_help=True,
)

StoreDir = Annotated[Path, typer.Option("--store", help="the model store folder", metavar="DIR")]
Camera = Annotated[str | None, typer.Option("--camera", help="the camera id", metavar="ID")]
Default = Annotated[bool, typer.Option("--default", help="the default model, for cameras without their own")]
DEFAULT_LABEL = "(default)"  # parentheses never occur in a camera id


def _camera(camera: str | None, default: bool) -> str | None:
    """The camera the command is for (None: the default); exactly one of --camera and --default."""
    if default == (camera is not None):
        from monitor.store import StoreError  # the store loads torch: only when a command runs

        raise StoreError("give either --camera ID or --default")
    return camera


@app.command()
def add(
    artifact: Annotated[
        Path, typer.Argument(help="an `anomon export` folder or a checkpoint file", show_default=False)
    ],
    store: StoreDir,
    camera: Camera = None,
    default: Default = False,
) -> None:
    """Check ARTIFACT and add it as the next version of a camera's model (or of the default)."""
    from monitor.store import ModelStore

    entry = ModelStore(store, create=True).add(artifact, _camera(camera, default))
    typer.echo(
        f"added {entry.label}: {entry.model_name} {entry.model_version} "
        f"(weights {entry.sha256[:12]}) at {entry.path}"
    )


@app.command("list")
def list_(
    store: StoreDir,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON list, full hashes and paths")] = False,
) -> None:
    """Every stored version; the highest of each camera serves it."""
    from monitor.store import ModelStore

    models = ModelStore(store)
    entries = models.entries()
    serving = set(models.serving().values())
    if as_json:
        typer.echo(json.dumps([_as_dict(e, e in serving) for e in entries], indent=2))
        return
    if not entries:
        typer.echo(f"{store}: no models stored (add one with `anomon store add`)")
        return
    rows = [("camera", "model", "model version", "store version", "sha256", "serving", "added")]
    rows += [
        (
            DEFAULT_LABEL if e.camera is None else e.camera,
            e.model_name,
            e.model_version,
            str(e.version),
            e.sha256[:12],
            "yes" if e in serving else "",
            e.added,
        )
        for e in entries
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@app.command()
def remove(
    store: StoreDir,
    camera: Camera = None,
    default: Default = False,
    version: Annotated[
        int | None, typer.Option("--version", help="one version (default: all of them)", metavar="N")
    ] = None,
) -> None:
    """Remove a camera's model (every version, or one); the camera then falls back to the default."""
    from monitor.store import ModelStore

    removed = ModelStore(store).remove(_camera(camera, default), version)
    for entry in removed:
        typer.echo(f"removed {entry.label}: {entry.model_name} {entry.model_version}")
    if not removed:
        typer.echo("removed only unreadable version folders")


def _as_dict(entry: StoreEntry, serving: bool) -> dict[str, object]:
    return {
        "camera": entry.camera,
        "version": entry.version,
        "model_name": entry.model_name,
        "model_version": entry.model_version,
        "sha256": entry.sha256,
        "path": str(entry.path),
        "added": entry.added,
        "serving": serving,
    }
