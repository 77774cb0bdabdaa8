"""Mirror the run's TensorBoard directory to its live location while training runs.

Event files are written to a local directory (fast, and always complete for the final
artifact) and a background thread copies what changed to the live location every `interval`
seconds, where the TensorBoard server reads them. A storage outage only delays the curves:
failures are reported once and retried on the next tick, and training never waits for them.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from kfp_lightning.components.common.storage import Storage


def _state(path: Path) -> tuple[int, int]:
    """What tells a file's versions apart here: (size, mtime_ns)."""
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


class LiveSync:
    """Copies new and grown files from `source` to `storage` periodically, in a daemon thread.

    Args:
        source: Local directory the loggers write to.
        storage: The live location.
        interval: Seconds between copies.
        label: How to name the destination in messages (its URI).
        already_there: Files of `source` that the live location already holds as they are
            now (restored from it), so they are not sent back.
    """

    def __init__(
        self,
        source: Path,
        storage: Storage,
        interval: float,
        label: str,
        already_there: Iterable[str] = (),
    ) -> None:
        self.source, self.storage, self.interval, self.label = source, storage, interval, label
        # relative path -> `_state` when last copied
        self._copied = {relative: _state(source / relative) for relative in already_there}
        self._stop = threading.Event()
        # Copies also run from the training thread (before a checkpoint): one at a time.
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="live-log-sync", daemon=True)
        self._failing = False

    def sync_once(self) -> None:
        """Copies every file that is new or changed since the last copy."""
        with self._lock:
            for path in sorted(p for p in self.source.rglob("*") if p.is_file()):
                relative = path.relative_to(self.source).as_posix()
                state = _state(path)
                previous = self._copied.get(relative)
                if previous == state:
                    continue
                grew = previous is not None and "tfevents" in path.name and state[0] > previous[0]
                self.storage.upload(path, relative, append_from=previous[0] if grew else None)
                self._copied[relative] = state

    def _tick(self) -> None:
        try:
            self.sync_once()
        except Exception as err:  # any storage failure: retried on the next tick
            if not self._failing:
                print(
                    f"warning: copying TensorBoard logs to {self.label} failed ({err}); "
                    f"retrying every {self.interval:g} s",
                    file=sys.stderr,
                    flush=True,
                )
            self._failing = True
        else:
            if self._failing:
                print(f"copying TensorBoard logs to {self.label} works again", flush=True)
            self._failing = False

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._tick()

    def start(self) -> None:
        """Starts the background copies (the first one after `interval` seconds).

        First it prints where they go and how often.
        """
        print(f"TensorBoard logs: {self.label} (updated every {self.interval:g} s)", flush=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops the thread (which `start` started) and makes a last copy."""
        self._stop.set()
        self._thread.join()
        self._tick()


class EarlyPoints(Callback):
    """Logs every step at first and makes the first point readable at once.

    A user opens TensorBoard to see training start: with Lightning's `log_every_n_steps` the
    first point waits that many steps, then up to a flush period. Here every step is logged
    until the first interval ends (Lightning reads `Trainer.log_every_n_steps` at each step),
    and once the first step is logged `make_readable` flushes the writer and copies the logs to
    the live location.

    Args:
        every_n_steps: The trainer's logging interval (its `log_every_n_steps`).
        make_readable: Flushes and copies what was logged so far.
    """

    def __init__(self, every_n_steps: int, make_readable: Callable[[], object]) -> None:
        self.every_n_steps, self.make_readable = every_n_steps, make_readable
        self._published = False

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        early = trainer.global_step < self.every_n_steps
        trainer.log_every_n_steps = 1 if early else self.every_n_steps
        # Lightning hands a step's metrics to the logger after `on_train_batch_end`: by the
        # next batch's start the first point has been written.
        if not self._published and trainer.global_step >= 1:
            self._published = True
            self.make_readable()
