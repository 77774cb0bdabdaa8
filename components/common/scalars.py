"""Reading the scalars of TensorBoard event files: the one reader of the report and the progress.

Each folder holding event files is one run; several event files in one folder (e.g. a resumed
run) make one run.
"""

from __future__ import annotations

from pathlib import Path


def read_event_scalars(logs_dir: Path) -> dict[Path, dict[str, dict[int, float]]]:
    """Every scalar of every event file under `logs_dir`.

    Args:
        logs_dir: A TensorBoard log directory.

    Returns:
        Each run's folder, sorted -> each tag -> each step -> its value (last write wins).
    """
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    runs: dict[Path, dict[str, dict[int, float]]] = {}
    for run_dir in sorted({p.parent for p in logs_dir.rglob("*tfevents*") if p.is_file()}):
        # 0 keeps every point: the report's minimum and maximum must see all of them.
        accumulator = EventAccumulator(str(run_dir), size_guidance={SCALARS: 0})
        accumulator.Reload()
        runs[run_dir] = {
            tag: {event.step: event.value for event in accumulator.Scalars(tag)}
            for tag in accumulator.Tags()[SCALARS]
        }
    return runs
