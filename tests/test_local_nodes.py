"""`--local --nodes 2`: the multi-node step runs its nodes as torchrun processes on 127.0.0.1.

First the process handling on its own (a node that fails stops the others; the deadline stops
all), with a tiny entry module of the test's; then the whole pipeline through the CLI, which
trains through the same entry point a cluster's TrainJob runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from kfp_lightning.components.common.errors import RunError
from kfp_lightning.components.common.torchrun import run_torchrun
from tests.helpers import assert_only_logs, predict_in_fresh_process, scalars
from tests.test_local_pipeline import cli, small_run_args

# Node 1 fails at once; node 0 would wait forever (as a node waits for a lost peer).
ENTRY = """
import os, sys, time
from pathlib import Path
Path(sys.argv[1], f"started-{os.environ['GROUP_RANK']}-{os.getpid()}").touch()
if os.environ["GROUP_RANK"] == sys.argv[2]:
    if sys.argv[3:] == ["error"]:
        print("error: no space left on device writing /x", file=sys.stderr, flush=True)
        sys.exit(2)
    sys.exit(3)
time.sleep(3600)
"""


@pytest.fixture
def entry_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "node_entry.py").write_text(ENTRY)
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return "node_entry"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone too (its parent, the stopped torchrun, reaps it or is gone itself).
    status = Path(f"/proc/{pid}/stat")
    return status.exists() and status.read_text().split(") ")[1][0] != "Z"


def started_pids(directory: Path) -> list[int]:
    return [int(p.name.split("-")[2]) for p in directory.glob("started-*")]


def test_a_failing_node_stops_the_others(
    entry_module: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(RunError, match=r"^node 1 of 2 failed \(exit status 1\); see its log$"):
        run_torchrun(2, 1, entry_module, [str(tmp_path), "1"], time.monotonic() + 120, 120)
    workers = started_pids(tmp_path)
    assert len(workers) == 2
    assert not any(alive(pid) for pid in workers)
    assert "[node 0] " in capsys.readouterr().out


def test_a_failing_rank_reports_its_one_line_error(
    entry_module: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The rank ends as `errors.run_or_exit` ends a process: one line on stderr, exit status 2.
    with pytest.raises(RunError, match=r"^node 1 of 2 failed: no space left on device writing /x$"):
        run_torchrun(2, 1, entry_module, [str(tmp_path), "1", "error"], time.monotonic() + 120)
    assert not any(alive(pid) for pid in started_pids(tmp_path))


def test_the_deadline_stops_every_node(entry_module: str, tmp_path: Path) -> None:
    # Long enough for both torchrun nodes to start their workers on a busy 2-core machine.
    with pytest.raises(RunError, match=r"did not finish within the training timeout \(20 s\)"):
        run_torchrun(2, 1, entry_module, [str(tmp_path), "none"], time.monotonic() + 20, 20)
    workers = started_pids(tmp_path)
    assert len(workers) == 2
    assert not any(alive(pid) for pid in workers)


@pytest.fixture(scope="module")
def two_node_run(http_mirror, mnist_mirror, tmp_path_factory):
    _, md5 = mnist_mirror
    output_dir = tmp_path_factory.mktemp("nodes")
    done = subprocess.run(
        # --verbose: every node's own lines reach the terminal, not only rank 0's progress.
        cli(
            *small_run_args(http_mirror, md5, output_dir),
            *("--nodes", "2", "--epochs", "2", "--verbose"),
        ),
        capture_output=True,
        text=True,
        timeout=900,
    )
    return done, output_dir


def test_the_pipeline_trains_on_two_local_nodes(two_node_run) -> None:
    done, output_dir = two_node_run
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    summary = json.loads((output_dir / "summary.json").read_text())
    assert (summary["nodes"], summary["processes"]) == (2, 2)
    assert "2 node(s), 2 process(es)" in done.stdout
    assert summary["epochs"] == 2
    assert 0 <= summary["test_accuracy"] <= 1
    # Both nodes' output reaches the step's log, each line marked with its node.
    for rank in (0, 1):
        assert f"[node {rank}] " in done.stdout + done.stderr
    model, logs, report = (Path(summary[k]) for k in ("model", "tensorboard_logs", "report_html"))
    (dataset,) = output_dir.glob("artifacts/*/download-mnist/dataset")
    prediction = predict_in_fresh_process(model, dataset)
    assert prediction["accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-6)
    assert len(scalars(logs)["loss/val"]) == 2
    assert_only_logs(logs)
    # The live TensorBoard reads the logs root: each event file is there once, in the run's
    # folder, not a second time below the run location's outputs/.
    events = list((output_dir / "tensorboard").rglob("*tfevents*"))
    assert len(events) == len(list(logs.rglob("*tfevents*"))), events
    assert not [p for p in events if "outputs" in p.parts], events
    assert scalars(output_dir / "tensorboard") == scalars(logs)
    assert report.is_file()
    matrix = summary["confusion_matrix"]
    assert sum(map(sum, matrix)) == 300


def test_a_single_node_run_says_so(http_mirror, mnist_mirror, tmp_path) -> None:
    _, md5 = mnist_mirror
    done = subprocess.run(
        cli(*small_run_args(http_mirror, md5, tmp_path), "--epochs", "1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["nodes"], summary["processes"]) == (1, 1)
    assert "1 node(s), 1 process(es)" in done.stdout
