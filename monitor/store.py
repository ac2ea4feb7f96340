"""The model store: one artifact per camera, numbered versions, and an optional default.

Layout (read like Triton's model repository; the folder names say what is deployed):

    STORE/
      cameras/<camera-id>/<N>/   versions 1, 2, 3 ...; the highest one serves that camera
      default/<N>/               the model for cameras without their own (optional)
      .staging/                  adds and removals in progress; readers never look here

Each version folder holds the artifact as given (an `anomon export` folder or one checkpoint file,
stored as checkpoint.safetensors) and entry.json: the camera, the version, when and where from it
was added, the model's name, version and weights hash, and the SHA-256 of every file.

A version appears and disappears with one `os.rename`, so a reader sees a whole version or none.
Readers take no lock; writers hold a shared flock on .staging/ (exclusive only to sweep leftovers).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.checkpoint import CheckpointError, load_checkpoint
from model.export import CHECKPOINT_FILE, META_FILE, ArtifactError, load_artifact_meta, sha256_file
from monitor.wire import is_camera_id

CAMERAS_DIR = "cameras"
DEFAULT_DIR = "default"
STAGING_DIR = ".staging"
ENTRY_FILE = "entry.json"
_VERSION = re.compile(r"[1-9][0-9]*")
_RENAME_TRIES = 100

log = logging.getLogger(__name__)


class StoreError(ValueError):
    """A store, camera or stored artifact is missing, invalid or altered; the message says the fix."""


@dataclass(frozen=True)
class StoreEntry:
    """One stored version of a camera's (or the default) model."""

    camera: str | None  # None: the default
    version: int
    path: Path  # the version folder
    model_name: str
    model_version: str
    sha256: str  # the weights' sha256 as recorded in the artifact metadata
    added: str

    @property
    def artifact(self) -> Path:
        """What `model.runtime.open_runtime` takes: the folder for an export, else the checkpoint in it."""
        return self.path if (self.path / META_FILE).is_file() else self.path / CHECKPOINT_FILE

    @property
    def label(self) -> str:
        """`camera cam-1 version 3` or `the default version 2`, for messages."""
        who = "the default" if self.camera is None else f"camera {self.camera}"
        return f"{who} version {self.version}"


class ModelStore:
    """A store folder. Readers (`entries`, `serving`, `for_camera`, `fingerprint`) never lock or crash on
    a bad version folder: it is skipped and logged."""

    def __init__(self, root: str | Path, create: bool = False) -> None:
        self.root = Path(root)
        if create:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise StoreError(f"cannot create the model store {self.root} ({err})") from None
        if not self.root.is_dir():
            raise StoreError(f"model store not found: {self.root} (create it with `anomon store add`)")

    # --- writing ------------------------------------------------------------------------------------

    def add(self, artifact: str | Path, camera: str | None = None) -> StoreEntry:
        """Check an artifact and add it as the next version of `camera` (None: the default).

        The artifact is checked (a checkpoint's weights hash; an export's ONNX hash and its checkpoint),
        copied into .staging/, hashed, written with entry.json, synced, then renamed into place.

        Raises:
            StoreError: a bad camera id, or an artifact that is missing, altered or unfinished.
        """
        source = Path(artifact)
        parent = self._parent(camera)
        checked = _checked_artifact(source)
        try:
            with self._writing() as staging:
                work = staging / uuid.uuid4().hex
                try:
                    entry = _stage(checked, source, camera, work)
                    target = self._publish(work, parent, entry)
                finally:
                    shutil.rmtree(work, ignore_errors=True)  # already gone once published
        except OSError as err:
            raise StoreError(f"{self.root}: could not add {source} ({err})") from None
        log.info("added %s to %s as %s", source, self.root, target)
        return _entry_from(entry, target)

    def remove(self, camera: str | None, version: int | None = None) -> list[StoreEntry]:
        """Remove one version (or, with `version` None, every version) of `camera` (None: the default).

        Each version folder is renamed into .staging/ first, so it vanishes from view whole.

        Returns:
            the removed versions that had a readable entry.json.

        Raises:
            StoreError: a bad camera id, or nothing stored under that camera (and version).
        """
        parent = self._parent(camera)
        who = "default model" if camera is None else f"camera {camera}"
        names = _version_names(parent)
        if version is not None:
            names = [n for n in names if int(n) == version]
        if not names:
            which = f"version {version} of {who}" if version is not None else who
            raise StoreError(f"{self.root}: no {which} stored (see `anomon store list --store {self.root}`)")
        removed = [e for e in (self._read(camera, parent / n) for n in names) if e is not None]
        try:
            with self._writing() as staging:
                for name in names:
                    trash = staging / uuid.uuid4().hex
                    try:
                        os.rename(parent / name, trash)
                    except FileNotFoundError:
                        continue  # a concurrent remove took it
                    shutil.rmtree(trash)
                _fsync(parent)
                with contextlib.suppress(OSError):  # not empty: an add put a version there meanwhile
                    parent.rmdir()
        except OSError as err:
            raise StoreError(f"{self.root}: could not remove from {parent} ({err})") from None
        return removed

    # --- reading ------------------------------------------------------------------------------------

    def entries(self) -> list[StoreEntry]:
        """Every readable version, the default's first, then by camera id and version."""
        found = self._versions(None)
        for camera in self._cameras():
            found.extend(self._versions(camera))
        return found

    def serving(self) -> dict[str | None, StoreEntry]:
        """The highest readable version per camera, with the key None for the default (when stored)."""
        return {e.camera: e for e in self.entries()}  # sorted by version: the last one wins

    def for_camera(self, camera: str) -> StoreEntry | None:
        """What serves `camera`: its own latest version, else the default's latest, else None."""
        own = self._versions(camera)
        if own:
            return own[-1]
        default = self._versions(None)
        return default[-1] if default else None

    def verify(self, entry: StoreEntry) -> None:
        """Recompute every file's SHA-256 against the version's entry.json.

        Files the version gained since (e.g. a TensorRT engine cache) are not part of it and not checked.

        Raises:
            StoreError: entry.json unreadable, or a listed file missing or different.
        """
        try:
            recorded = json.loads((entry.path / ENTRY_FILE).read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise StoreError(f"{entry.path / ENTRY_FILE}: unreadable ({err}); {self._fix(entry)}") from None
        for name, digest in recorded.items():
            path = entry.path / name
            if not path.is_file():
                raise StoreError(f"{path} is missing; {self._fix(entry)}")
            if sha256_file(path) != digest:
                raise StoreError(
                    f"{path} does not match its sha256 in {ENTRY_FILE} (altered or damaged); "
                    + self._fix(entry)
                )

    def fingerprint(self) -> tuple[Any, ...]:
        """A value that changes whenever what serves may have changed; cheap enough to poll.

        Lists folders and stats each entry.json (its inode tells a re-added version N from the removed one
        it replaced); reads and hashes nothing.
        """
        marks: list[tuple[Any, ...]] = []
        for camera in [None, *self._cameras(quiet=True)]:
            parent = self._parent(camera)
            for name in _version_names(parent):
                try:
                    st = os.stat(parent / name / ENTRY_FILE)
                except OSError:
                    marks.append((camera, name, None))
                else:
                    marks.append((camera, name, st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(marks)

    # --- internals ----------------------------------------------------------------------------------

    def _parent(self, camera: str | None) -> Path:
        """The folder holding the versions of `camera` (None: the default)."""
        if camera is None:
            return self.root / DEFAULT_DIR
        if not isinstance(camera, str) or not is_camera_id(camera):
            raise StoreError(
                f"camera id {camera!r} is not valid: use 1 to 128 characters of A-Z a-z 0-9 . _ -"
            )
        return self.root / CAMERAS_DIR / camera

    def _cameras(self, quiet: bool = False) -> list[str]:
        """Camera folders with a valid id (others are logged, unless `quiet`: the poll would repeat it)."""
        if not self.root.is_dir():
            raise StoreError(f"model store not found: {self.root} (was it moved or unmounted?)")
        try:
            names = sorted(p.name for p in os.scandir(self.root / CAMERAS_DIR) if p.is_dir())
        except FileNotFoundError:
            return []
        if not quiet:
            for name in names:
                if not is_camera_id(name):
                    log.warning("skipping %s: not a valid camera id", self.root / CAMERAS_DIR / name)
        return [n for n in names if is_camera_id(n)]

    def _versions(self, camera: str | None) -> list[StoreEntry]:
        parent = self._parent(camera)
        found = (self._read(camera, parent / n) for n in _version_names(parent))
        return [e for e in found if e is not None]

    def _read(self, camera: str | None, folder: Path) -> StoreEntry | None:
        """The version in `folder`, or None (logged) when its entry.json is missing, unreadable or wrong."""
        path = folder / ENTRY_FILE
        try:
            entry = _entry_from(json.loads(path.read_text()), folder)
        except FileNotFoundError:
            log.warning("skipping %s: no %s (not added with `anomon store add`)", folder, ENTRY_FILE)
            return None
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("skipping %s: unreadable %s (%s)", folder, ENTRY_FILE, err)
            return None
        if entry.camera != camera or entry.version != int(folder.name):
            log.warning(
                "skipping %s: its %s is for %s (copied by hand? add the artifact again)",
                folder,
                ENTRY_FILE,
                entry.label,
            )
            return None
        return entry

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Path]:
        """Hold .staging/ for a write; sweep leftovers of interrupted writes when no other write runs."""
        staging = self.root / STAGING_DIR
        staging.mkdir(exist_ok=True)
        fd = os.open(staging, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass  # another add or remove is running; the next write sweeps
            else:
                for leftover in staging.iterdir():
                    log.info("removing %s, left by an interrupted add or remove", leftover)
                    if leftover.is_dir() and not leftover.is_symlink():
                        shutil.rmtree(leftover)
                    else:
                        leftover.unlink()
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield staging
        finally:
            os.close(fd)  # releases the lock

    def _publish(self, work: Path, parent: Path, entry: dict[str, Any]) -> Path:
        """Rename the staged version to parent/<highest + 1>/, one number further while that is taken."""
        version = max((int(n) for n in _version_names(parent)), default=0) + 1
        for _ in range(_RENAME_TRIES):
            entry["version"] = version
            (work / ENTRY_FILE).write_text(json.dumps(entry, indent=2) + "\n")
            _fsync(work / ENTRY_FILE)
            _fsync(work)
            parent.mkdir(parents=True, exist_ok=True)
            target = parent / str(version)
            try:
                os.rename(work, target)
            except FileNotFoundError:
                continue  # a remove took the camera's (then empty) folder away meanwhile
            except OSError as err:
                if err.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                    raise
                version += 1  # a concurrent add took this number
                continue
            _fsync(parent)
            _fsync(parent.parent)
            return target
        raise StoreError(f"{parent}: could not claim a version number after {_RENAME_TRIES} tries; try again")

    def _fix(self, entry: StoreEntry) -> str:
        where = "--default" if entry.camera is None else f"--camera {entry.camera}"
        command = f"anomon store remove --store {self.root} {where} --version {entry.version}"
        return f"remove it (`{command}`) and add the artifact again"


@dataclass(frozen=True)
class _Checked:
    """An artifact that passed its checks: what to copy and what it is."""

    files: dict[str, Path]  # name in the store -> source file
    expected: dict[str, str]  # name -> the sha256 its metadata records (checked again on the copy)
    name: str
    version: str
    weights_sha256: str


def _checked_artifact(source: Path) -> _Checked:
    """Check an export folder (ONNX hash, and that its checkpoint is the one exported) or a checkpoint."""
    if source.is_dir():
        try:
            meta = load_artifact_meta(source)  # checks model.onnx against its hash
            _, ckpt = load_checkpoint(source / meta.checkpoint_file)
        except (ArtifactError, CheckpointError) as err:
            raise StoreError(f"cannot add {source}: {err}") from None
        if ckpt.weights_sha256 != meta.weights_sha256:
            raise StoreError(
                f"cannot add {source}: {meta.checkpoint_file} is not the checkpoint {META_FILE} was exported "
                "from; export it again (anomon export)"
            )
        names = (META_FILE, meta.onnx_file, meta.checkpoint_file)
        return _Checked(
            files={name: source / name for name in names},
            expected={meta.onnx_file: meta.onnx_sha256},
            name=meta.name,
            version=meta.version,
            weights_sha256=meta.weights_sha256,
        )
    if not source.exists():
        raise StoreError(
            f"cannot add {source}: not found (give an `anomon export` folder or a checkpoint file)"
        )
    try:
        _, ckpt = load_checkpoint(source)
    except CheckpointError as err:
        raise StoreError(f"cannot add {source}: {err}") from None
    if not ckpt.complete or ckpt.calibration is None:
        raise StoreError(f"cannot add {source}: not a finished, calibrated checkpoint; finish training first")
    return _Checked({CHECKPOINT_FILE: source}, {}, ckpt.name, ckpt.version, ckpt.weights_sha256)


def _stage(checked: _Checked, source: Path, camera: str | None, work: Path) -> dict[str, Any]:
    """Copy the artifact into `work`, sync and hash the copies; the entry.json fields (version still 0)."""
    work.mkdir()
    hashes = {}
    for name, src in checked.files.items():
        shutil.copyfile(src, work / name)
        _fsync(work / name)
        hashes[name] = sha256_file(work / name)
    for name, digest in checked.expected.items():
        if hashes[name] != digest:
            raise StoreError(f"cannot add {source}: {name} changed while it was being added; add it again")
    return {
        "camera": camera,
        "version": 0,
        "added": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "source": str(source.resolve()),
        "model": {"name": checked.name, "version": checked.version, "sha256": checked.weights_sha256},
        "files": dict(sorted(hashes.items())),
    }


def _entry_from(data: dict[str, Any], folder: Path) -> StoreEntry:
    model = data["model"]
    camera = data["camera"]
    if camera is not None and not isinstance(camera, str):
        raise TypeError(f"camera must be a string or null, not {camera!r}")
    return StoreEntry(
        camera=camera,
        version=int(data["version"]),
        path=folder,
        model_name=str(model["name"]),
        model_version=str(model["version"]),
        sha256=str(model["sha256"]),
        added=str(data["added"]),
    )


def _version_names(parent: Path) -> list[str]:
    """Numbered version folders of one camera, in version order (entry.json not checked)."""
    try:
        names = [p.name for p in os.scandir(parent) if _VERSION.fullmatch(p.name) and p.is_dir()]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(names, key=int)


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's contents (a folder: its names) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
