"""Which model scores each camera: the camera's own in the model store, else the store's default (or
the one `--artifact`), else none (the camera is learning).

The router polls the store (`ModelStore.fingerprint`, a directory listing) every `poll_seconds` and
loads new or changed artifacts on a loader thread, so the Kafka loop never waits for a model to load.
A loaded artifact is hash-checked first; one that fails is refused, counted, and not retried until
the store changes again, and its cameras keep the model they had. Cameras sharing an artifact (the
default) share one loaded model, so their frames batch together. A model no camera routes to any
more is closed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from monitor.metrics import ServiceMetrics
from monitor.scoring import LoadedModel
from monitor.store import ModelStore, StoreEntry, StoreError

log = logging.getLogger(__name__)

DEFAULT = None  # the store's key of the model for cameras without their own


def _rss_bytes() -> int:
    """This process's resident memory (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class ModelRouter:
    """Routes cameras to loaded models.

    Args:
        open_model: opens an artifact path (a store version's `artifact`) as a LoadedModel.
        metrics: where loads, failures, swaps and memory are counted.
        store: the model store to serve from, or None (only `fixed`).
        fixed: a model for every camera without one in the store (`anomon run --artifact`).
        poll_seconds: how often the store is checked for changes.
    """

    def __init__(
        self,
        open_model: Callable[[Path], LoadedModel],
        metrics: ServiceMetrics,
        store: ModelStore | None = None,
        fixed: LoadedModel | None = None,
        poll_seconds: float = 5.0,
    ) -> None:
        self.open_model = open_model
        self.metrics = metrics
        self.store = store
        self.fixed = fixed
        self.poll_seconds = poll_seconds
        self._loaded: dict[Path, LoadedModel] = {}  # by store version folder
        self._memory: dict[Path, int] = {}
        self._refused: set[Path] = set()  # version folders that failed; retried once the store changes
        self._serving: dict[str | None, StoreEntry] = {}
        self._fingerprint: object = None
        self._polled = 0.0
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="anomon-model-loader")
        self._loading: Future[None] | None = None
        self._lock = threading.Lock()
        self._update_gauges()

    @classmethod
    def single(cls, model: LoadedModel, metrics: ServiceMetrics) -> ModelRouter:
        """Every camera scored by one model."""
        return cls(lambda path: model, metrics, fixed=model)

    def start(self) -> None:
        """Load what the store serves now, before the first frame (waits for it)."""
        if self.store is not None:
            self._load_changes()

    def model_for(self, camera_id: str) -> LoadedModel | None:
        """The model for a camera's next frames; None: no model (learning)."""
        with self._lock:
            entry = self._serving.get(camera_id) or self._serving.get(DEFAULT)
            if entry is not None and entry.path in self._loaded:
                return self._loaded[entry.path]
        return self.fixed

    def entry_for(self, camera_id: str) -> StoreEntry | None:
        with self._lock:
            return self._serving.get(camera_id) or self._serving.get(DEFAULT)

    def poll(self) -> None:
        """Called from the service's loop: every poll_seconds, start loading what changed (returns at
        once; the new models serve from the first frames taken in after they are loaded)."""
        if self.store is None or time.monotonic() - self._polled < self.poll_seconds:
            return
        self._polled = time.monotonic()
        if self._loading is not None and not self._loading.done():
            return
        try:
            fingerprint = self.store.fingerprint()
        except (OSError, StoreError) as err:
            log.warning("model store unreadable (%s); cameras keep their models", err)
            return
        if fingerprint != self._fingerprint:
            self._loading = self._loader.submit(self._load_changes)

    def _load_changes(self) -> None:
        assert self.store is not None
        try:
            fingerprint = self.store.fingerprint()
            wanted = self.store.serving()
        except (OSError, StoreError) as err:  # the store went away: keep serving what is loaded
            log.warning("model store unreadable (%s); cameras keep their models", err)
            return
        with self._lock:
            previous = dict(self._serving)
        serving: dict[str | None, StoreEntry] = {}
        for camera, entry in wanted.items():
            if entry.path in self._loaded or self._load(camera, entry):
                serving[camera] = entry
            elif camera in previous:  # refused: keep what it had
                serving[camera] = previous[camera]
        with self._lock:
            self._serving = serving
            # A model no camera routes to is dropped, not closed: frames still in flight hold it, and
            # it is freed with the last of them.
            unused = [p for p in self._loaded if p not in {e.path for e in serving.values()}]
            for path in unused:
                del self._loaded[path]
                self._memory.pop(path, None)
        for camera, entry in serving.items():
            if camera is not None and camera in previous and previous[camera].path != entry.path:
                log.info(
                    "camera %s: model %s (store version %d) serves from now",
                    camera,
                    entry.sha256[:12],
                    entry.version,
                )
        self._fingerprint = fingerprint
        self._update_gauges()

    def _load(self, camera: str | None, entry: StoreEntry) -> bool:
        if entry.path in self._refused:
            return False
        label = camera if camera is not None else "default"
        assert self.store is not None
        before = _rss_bytes()
        try:
            self.store.verify(entry)
            model = self.open_model(entry.artifact)
            if model.info.sha256 != entry.sha256:
                raise StoreError(
                    f"{entry.path}: the artifact's weights are {model.info.sha256[:12]}, its entry says "
                    f"{entry.sha256[:12]}; add it again with `anomon store add`"
                )
        except Exception as err:  # a bad artifact must never stop the service
            self._refused.add(entry.path)
            self.metrics.model_load_failures.labels(label).inc()
            log.error("model store: %s version %d refused: %s", label, entry.version, err)
            return False
        with self._lock:
            self._loaded[entry.path] = model
            self._memory[entry.path] = max(0, _rss_bytes() - before)
        log.info("model store: loaded %s version %d (%s)", label, entry.version, model.runtime.describe())
        return True

    def _update_gauges(self) -> None:
        with self._lock:
            self.metrics.models_loaded.set(len(self._loaded) + (1 if self.fixed is not None else 0))
            self.metrics.model_memory.set(sum(self._memory.values()))

    def close(self) -> None:
        self._loader.shutdown(wait=True)
        for model in self._loaded.values():
            model.runtime.close()
        self._loaded.clear()
