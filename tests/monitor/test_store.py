"""The model store against real artifacts: the tiny checkpoint and its ONNX export."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from model.export import sha256_file
from model.runtime import open_runtime
from monitor.store import ModelStore, StoreEntry, StoreError


def _store_app() -> typer.Typer:
    from monitor.cli.store import app

    return app


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "store", create=True)


def _entry_json(entry: StoreEntry) -> dict:
    return json.loads((entry.path / "entry.json").read_text())


def test_add_export_and_checkpoint(store: ModelStore, tiny_artifact: Path, tiny_checkpoint: Path) -> None:
    onnx_entry = store.add(tiny_artifact, "cam-1")
    ckpt_entry = store.add(tiny_checkpoint, "cam.2_B")
    assert onnx_entry.path == store.root / "cameras" / "cam-1" / "1"
    assert ckpt_entry.path == store.root / "cameras" / "cam.2_B" / "1"
    assert sorted(os.listdir(onnx_entry.path)) == [
        "checkpoint.safetensors",
        "entry.json",
        "model.json",
        "model.onnx",
    ]
    assert sorted(os.listdir(ckpt_entry.path)) == ["checkpoint.safetensors", "entry.json"]
    assert onnx_entry.artifact == onnx_entry.path
    assert ckpt_entry.artifact == ckpt_entry.path / "checkpoint.safetensors"

    meta = json.loads((tiny_artifact / "model.json").read_text())
    recorded = _entry_json(onnx_entry)
    assert recorded["camera"] == "cam-1" and recorded["version"] == 1
    assert recorded["source"] == str(tiny_artifact.resolve())
    assert recorded["model"] == {
        "name": meta["name"],
        "version": meta["version"],
        "sha256": meta["weights_sha256"],
    }
    assert recorded["files"] == {
        name: sha256_file(tiny_artifact / name)
        for name in ("checkpoint.safetensors", "model.json", "model.onnx")
    }
    assert recorded["added"].endswith("+00:00")
    assert _entry_json(ckpt_entry)["files"] == {"checkpoint.safetensors": sha256_file(tiny_checkpoint)}
    # Both kinds record the same weights: the export carries its checkpoint's hash.
    assert onnx_entry.sha256 == ckpt_entry.sha256 == meta["weights_sha256"]
    assert (onnx_entry.model_name, onnx_entry.model_version) == (meta["name"], meta["version"])

    assert store.entries() == [onnx_entry, ckpt_entry]
    for entry in store.entries():
        store.verify(entry)


def test_stored_artifacts_open_and_score(
    store: ModelStore, tiny_artifact: Path, tiny_checkpoint: Path
) -> None:
    store.add(tiny_artifact, "cam-1")
    store.add(tiny_checkpoint, "cam-2")
    scores = []
    for camera, backend in (("cam-1", "onnxruntime"), ("cam-2", "torch")):
        entry = store.for_camera(camera)
        assert entry is not None
        runtime = open_runtime(entry.artifact, backend, device="cpu", threads=1)
        assert runtime.model.name == entry.model_name
        frames = np.random.default_rng(0).integers(0, 256, (2, *runtime.model.input_shape), dtype=np.uint8)
        score, _ = runtime.infer(frames)
        scores.append(score)
        runtime.close()
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-3, atol=1e-3)  # one network, two forms


def test_versions_increase_and_the_highest_serves(
    store: ModelStore, tiny_artifact: Path, tiny_checkpoint: Path
) -> None:
    first = store.add(tiny_artifact, "cam-1")
    second = store.add(tiny_checkpoint, "cam-1")
    third = store.add(tiny_artifact, "cam-1")
    assert [e.version for e in (first, second, third)] == [1, 2, 3]
    assert [e.version for e in store.entries()] == [1, 2, 3]
    assert store.serving() == {"cam-1": third}
    assert store.for_camera("cam-1") == third
    store.remove("cam-1", 3)
    assert store.serving() == {"cam-1": second}
    assert store.add(tiny_artifact, "cam-1").version == 3  # highest + 1


def test_default_serves_cameras_without_their_own(
    store: ModelStore, tiny_artifact: Path, tiny_checkpoint: Path
) -> None:
    assert store.for_camera("cam-1") is None
    assert store.serving() == {}
    own = store.add(tiny_artifact, "cam-1")
    assert store.for_camera("cam-2") is None  # no default yet
    store.add(tiny_checkpoint)
    default = store.add(tiny_artifact)
    assert default.camera is None and default.version == 2
    assert default.path == store.root / "default" / "2"
    assert store.for_camera("cam-1") == own
    assert store.for_camera("cam-2") == default
    assert store.serving() == {None: default, "cam-1": own}
    assert store.entries()[0].camera is None  # the default lists first

    assert store.remove("cam-1") == [own]
    assert not (store.root / "cameras" / "cam-1").exists()
    assert store.for_camera("cam-1") == default
    store.remove(None)
    assert store.for_camera("cam-1") is None
    assert not (store.root / "default").exists()


def test_remove_one_version_or_all(store: ModelStore, tiny_checkpoint: Path) -> None:
    v1, v2, v3 = (store.add(tiny_checkpoint, "cam-1") for _ in range(3))
    assert store.remove("cam-1", 2) == [v2]
    assert store.entries() == [v1, v3]
    assert store.remove("cam-1") == [v1, v3]
    assert store.entries() == []
    assert os.listdir(store.root / ".staging") == []  # removed whole, nothing left behind


def test_remove_what_is_not_there_is_refused(store: ModelStore, tiny_checkpoint: Path) -> None:
    store.add(tiny_checkpoint, "cam-1")
    with pytest.raises(StoreError, match=r"no version 7 of camera cam-1 stored .*anomon store list"):
        store.remove("cam-1", 7)
    with pytest.raises(StoreError, match="no camera cam-9 stored"):
        store.remove("cam-9")
    with pytest.raises(StoreError, match="no version 1 of default model stored"):
        store.remove(None, 1)
    with pytest.raises(StoreError, match="no default model stored"):
        store.remove(None)
    assert len(store.entries()) == 1


def test_tampered_file_fails_verify(store: ModelStore, tiny_artifact: Path) -> None:
    entry = store.add(tiny_artifact, "cam-1")
    store.verify(entry)
    onnx_path = entry.path / "model.onnx"
    data = bytearray(onnx_path.read_bytes())
    data[len(data) // 2] ^= 0x01
    onnx_path.write_bytes(bytes(data))
    with pytest.raises(StoreError) as err:
        store.verify(entry)
    message = str(err.value)
    assert str(onnx_path) in message and "does not match its sha256 in entry.json" in message
    assert f"anomon store remove --store {store.root} --camera cam-1 --version 1" in message
    assert "\n" not in message


def test_missing_file_fails_verify(store: ModelStore, tiny_artifact: Path) -> None:
    entry = store.add(tiny_artifact)
    (entry.path / "checkpoint.safetensors").unlink()
    with pytest.raises(
        StoreError, match=r"checkpoint.safetensors is missing; remove it .*--default --version 1"
    ):
        store.verify(entry)


def test_half_written_versions_are_invisible(store: ModelStore, tiny_artifact: Path, caplog) -> None:
    done = store.add(tiny_artifact, "cam-1")
    before = store.fingerprint()
    # An add in progress: files copied into .staging/, entry.json not yet written, not renamed.
    staged = store.root / ".staging" / "0123abcd"
    staged.mkdir()
    shutil.copyfile(tiny_artifact / "model.onnx", staged / "model.onnx")
    assert store.entries() == [done]
    assert store.fingerprint() == before
    # A version folder copied in by hand, without entry.json, and one with a broken entry.json.
    for name, text in (("2", None), ("3", '{"camera": "cam-1", "vers')):
        folder = done.path.parent / name
        folder.mkdir()
        shutil.copyfile(tiny_artifact / "model.onnx", folder / "model.onnx")
        if text is not None:
            (folder / "entry.json").write_text(text)
    with caplog.at_level(logging.WARNING, logger="monitor.store"):
        assert store.entries() == [done]
        assert store.serving() == {"cam-1": done}
        assert store.for_camera("cam-1") == done
    assert "skipping" in caplog.text and str(done.path.parent / "2") in caplog.text
    assert str(done.path.parent / "3") in caplog.text


def test_entry_json_of_another_place_is_skipped(store: ModelStore, tiny_checkpoint: Path, caplog) -> None:
    entry = store.add(tiny_checkpoint, "cam-1")
    shutil.copytree(entry.path, store.root / "cameras" / "cam-2" / "1")  # copied by hand: says cam-1
    with caplog.at_level(logging.WARNING, logger="monitor.store"):
        assert store.entries() == [entry]
    assert "is for camera cam-1 version 1" in caplog.text


def test_interrupted_add_is_swept_by_the_next_add(store: ModelStore, tiny_checkpoint: Path) -> None:
    leftover = store.root / ".staging" / "deadbeef"
    leftover.mkdir(parents=True)
    (leftover / "checkpoint.safetensors").write_bytes(b"half a checkpoint")
    (store.root / ".staging" / "stray-file").write_text("x")
    assert store.entries() == []
    entry = store.add(tiny_checkpoint, "cam-1")
    assert entry.version == 1
    assert os.listdir(store.root / ".staging") == []


def test_refused_artifact_leaves_nothing(store: ModelStore, tiny_artifact: Path, tmp_path: Path) -> None:
    bad = tmp_path / "tampered"
    shutil.copytree(tiny_artifact, bad)
    data = bytearray((bad / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (bad / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(StoreError, match=rf"cannot add {bad}: .*model.onnx does not match the hash"):
        store.add(bad, "cam-1")
    with pytest.raises(StoreError, match="not found"):
        store.add(tmp_path / "nothing-here", "cam-1")
    not_a_checkpoint = tmp_path / "notes.safetensors"
    not_a_checkpoint.write_bytes(b"not safetensors at all")
    with pytest.raises(StoreError, match="not a readable anomon checkpoint"):
        store.add(not_a_checkpoint, "cam-1")
    assert store.entries() == []
    assert not (store.root / "cameras").exists()


def test_export_with_another_checkpoint_is_refused(
    store: ModelStore, tiny_artifact: Path, tiny_daad_checkpoint: Path, tmp_path: Path
) -> None:
    mixed = tmp_path / "mixed"
    shutil.copytree(tiny_artifact, mixed)
    shutil.copyfile(tiny_daad_checkpoint, mixed / "checkpoint.safetensors")
    with pytest.raises(StoreError, match=r"is not the checkpoint model\.json was exported from"):
        store.add(mixed, "cam-1")


@pytest.mark.parametrize("camera", ["", "a/b", "../escape", "cam 1", "x" * 129, "kamera-ü", "a\n"])
def test_bad_camera_id_is_refused(store: ModelStore, tiny_checkpoint: Path, camera: str) -> None:
    with pytest.raises(
        StoreError, match=r"camera id .* is not valid: use 1 to 128 characters of A-Z a-z 0-9"
    ) as err:
        store.add(tiny_checkpoint, camera)
    assert "\n" not in str(err.value)
    with pytest.raises(StoreError, match="is not valid"):
        store.for_camera(camera)
    with pytest.raises(StoreError, match="is not valid"):
        store.remove(camera)
    assert os.listdir(store.root) == []


def test_longest_camera_id_is_accepted(store: ModelStore, tiny_checkpoint: Path) -> None:
    camera = "A-z_0.9" + "x" * 121
    assert store.add(tiny_checkpoint, camera).camera == camera


def test_fingerprint_changes_on_add_and_remove_only(
    store: ModelStore, tiny_artifact: Path, tiny_checkpoint: Path
) -> None:
    empty = store.fingerprint()
    assert empty == store.fingerprint()
    first = store.add(tiny_artifact, "cam-1")
    one = store.fingerprint()
    assert one != empty
    # Reading, verifying, opening and a staging folder change nothing.
    store.entries()
    store.serving()
    store.for_camera("cam-1")
    store.verify(first)
    (store.root / ".staging" / "in-progress").mkdir()
    assert store.fingerprint() == one
    store.add(tiny_checkpoint)
    with_default = store.fingerprint()
    assert with_default != one
    store.remove(None)
    assert store.fingerprint() == one
    # Version 2 removed and added again is a different version 2: the fingerprint tells them apart.
    store.add(tiny_checkpoint, "cam-1")
    two = store.fingerprint()
    store.remove("cam-1", 2)
    store.add(tiny_checkpoint, "cam-1")
    assert store.fingerprint() not in (one, two)


def test_concurrent_adds_get_distinct_versions(store: ModelStore, tiny_checkpoint: Path) -> None:
    barrier = threading.Barrier(4)
    versions: list[int] = []
    errors: list[BaseException] = []

    def add() -> None:
        try:
            other = ModelStore(store.root)  # its own lock handle, as another process would have
            barrier.wait()
            versions.append(other.add(tiny_checkpoint, "cam-1").version)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=add) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(versions) == [1, 2, 3, 4]
    assert [e.version for e in store.entries()] == [1, 2, 3, 4]
    for entry in store.entries():
        store.verify(entry)


def test_missing_store_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=rf"model store not found: {tmp_path / 'nope'}"):
        ModelStore(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="cannot create the model store"):
        ModelStore(tmp_path / "file", create=True)
    assert ModelStore(tmp_path / "new" / "store", create=True).entries() == []


# --- the command line ---------------------------------------------------------------------------------


def _run(*args: str | Path):
    result = CliRunner().invoke(_store_app(), [str(a) for a in args])
    return result


def test_cli_add_list_remove(tmp_path: Path, tiny_artifact: Path, tiny_checkpoint: Path) -> None:
    root = tmp_path / "store"
    added = _run("add", "--store", root, "--camera", "cam-1", tiny_artifact)
    assert added.exit_code == 0, added.output
    assert "added camera cam-1 version 1: " in added.output and str(root / "cameras/cam-1/1") in added.output
    assert _run("add", "--store", root, "--default", tiny_checkpoint).exit_code == 0
    assert _run("add", "--store", root, "--camera", "cam-1", tiny_checkpoint).exit_code == 0

    entries = ModelStore(root).entries()
    table = _run("list", "--store", root)
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert lines[0].split() == [
        "camera",
        "model",
        "model",
        "version",
        "store",
        "version",
        "sha256",
        "serving",
        "added",
    ]
    assert [line.split()[0] for line in lines[1:]] == ["(default)", "cam-1", "cam-1"]
    short = entries[0].sha256[:12]
    assert short in lines[1] and entries[0].sha256 not in table.output
    assert "yes" in lines[1] and "yes" not in lines[2] and "yes" in lines[3]

    listed = _run("list", "--store", root, "--json")
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    assert [(r["camera"], r["version"], r["serving"]) for r in rows] == [
        (None, 1, True),
        ("cam-1", 1, False),
        ("cam-1", 2, True),
    ]
    assert rows[1] == {
        "camera": "cam-1",
        "version": 1,
        "model_name": entries[1].model_name,
        "model_version": entries[1].model_version,
        "sha256": entries[1].sha256,
        "path": str(root / "cameras" / "cam-1" / "1"),
        "added": entries[1].added,
        "serving": False,
    }

    removed = _run("remove", "--store", root, "--camera", "cam-1", "--version", "2")
    assert removed.exit_code == 0 and "removed camera cam-1 version 2" in removed.output
    assert [e.version for e in ModelStore(root).entries() if e.camera == "cam-1"] == [1]
    assert _run("remove", "--store", root, "--default").exit_code == 0
    assert [(e.camera, e.version) for e in ModelStore(root).entries()] == [("cam-1", 1)]


def test_cli_errors_are_store_errors(tmp_path: Path, tiny_checkpoint: Path) -> None:
    root = tmp_path / "store"
    cases = [
        (("add", "--store", root, tiny_checkpoint), "give either --camera ID or --default"),
        (("add", "--store", root, "--camera", "c", "--default", tiny_checkpoint), "give either"),
        (("add", "--store", root, "--camera", "bad/id", tiny_checkpoint), "camera id 'bad/id' is not valid"),
        (("list", "--store", tmp_path / "nope"), "model store not found"),
        (("remove", "--store", root, "--camera", "cam-1"), "no camera cam-1 stored"),
    ]
    for args, message in cases:
        result = _run(*args)
        assert result.exit_code != 0
        assert isinstance(result.exception, StoreError), (args, result.output)
        assert message in str(result.exception)


def test_cli_list_of_an_empty_store(tmp_path: Path) -> None:
    ModelStore(tmp_path / "store", create=True)
    result = _run("list", "--store", tmp_path / "store")
    assert result.exit_code == 0 and "no models stored" in result.output
    assert json.loads(_run("list", "--store", tmp_path / "store", "--json").output) == []
