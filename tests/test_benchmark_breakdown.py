"""`benchmarks/whole_run.py`'s breakdown of a run's time, read from kfp.local's log lines.

Those lines carry times of day without a date: a run that passes midnight must still add up.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "whole_run.py"


@pytest.fixture(scope="module")
def whole_run():
    spec = importlib.util.spec_from_file_location("whole_run", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def task_lines(start: str, looking: str, wrote: str, end: str) -> list[tuple[float, str]]:
    """One task's lines, as `--local --verbose` prints them, the first 0.5 s into the run."""
    return [
        (0.5, f"{start} - INFO - Executing task 'train-mnist'"),
        (0.6, f"[KFP Executor 2026-12-06 {looking} INFO]: Looking for component `train_mnist`"),
        (0.7, f"[KFP Executor 2026-12-07 {wrote} INFO]: Wrote executor output file to /tmp/x"),
        (0.8, f"{end} - INFO - Task 'train-mnist' finished with status SUCCESS"),
    ]


@pytest.mark.parametrize(
    "clock",
    [
        ("12:00:00.000", "12:00:01,000", "12:00:51,000", "12:00:52.500"),
        ("23:59:30.000", "23:59:31,000", "00:00:21,000", "00:00:22.500"),  # past midnight
    ],
    ids=["afternoon", "midnight"],
)
def test_a_task_is_timed_whatever_the_time_of_day(whole_run, clock: tuple[str, ...]) -> None:
    parts = whole_run.breakdown(task_lines(*clock), total=55.0)

    assert parts["task train-mnist"] == pytest.approx(52.5)
    assert parts["  train-mnist: start-up (process, Python, kfp)"] == pytest.approx(1.0)
    assert parts["  train-mnist: component function"] == pytest.approx(50.0)
    assert parts["  train-mnist: exit (process end, outputs read)"] == pytest.approx(1.5)
    assert parts["after the last task (summary, TensorBoard stopped)"] == pytest.approx(2.0)
