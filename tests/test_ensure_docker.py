"""images/ensure-docker.sh brings Docker back after the daemon crashed mid-build.

Debian's dockerd 20.10 can crash during a build (moby/buildkit#2861); the container tests then
restart it with this script. Where nothing reaps orphans, the dead daemon stays a zombie: this
test makes one (a parent that never waits, then SIGKILL) and checks the script starts a daemon
that answers. It stops this machine's daemon, so it runs only in CI.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.container, pytest.mark.timeout(600)]


def _answers() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0


def _wait(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {seconds:.0f} s")
        time.sleep(0.5)


def _live_dockerd() -> list[str]:
    states = subprocess.run(["ps", "-C", "dockerd", "-o", "stat="], capture_output=True, text=True)
    return [state for state in states.stdout.split() if not state.startswith("Z")]


def _state(pid: int) -> str:
    # /proc/PID/stat: "PID (COMM) STATE ..."; COMM is "dockerd", without spaces.
    return Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_a_crashed_daemon_left_as_a_zombie_is_replaced(tmp_path):
    if os.environ.get("CI") != "true":
        pytest.skip("stops this machine's Docker daemon, so runs only in CI (CI=true)")
    if os.geteuid() != 0 or shutil.which("dockerd") is None or not _answers():
        pytest.skip("needs root and a running dockerd (images/ensure-docker.sh starts one)")
    subprocess.run(["pkill", "-x", "dockerd"], check=False)
    _wait(lambda: not _live_dockerd(), 60, "the running dockerd did not stop")
    # `exec sleep` leaves dockerd the child of a process that never waits for it.
    start = f"dockerd --bridge=none >{tmp_path}/dockerd.log 2>&1 & echo $!; exec sleep 600"
    parent = subprocess.Popen(
        ["bash", "-c", start],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        pid = int(parent.stdout.readline())
        _wait(_answers, 60, "the daemon under test did not answer")
        os.kill(pid, signal.SIGKILL)
        _wait(lambda: _state(pid) == "Z", 10, "the killed daemon did not become a zombie")
        result = subprocess.run(
            ["bash", str(REPO / "images" / "ensure-docker.sh")],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "starting dockerd" in result.stdout
        assert _answers()
    finally:
        parent.kill()
        parent.wait()
        if not _answers():
            subprocess.run(["bash", str(REPO / "images" / "ensure-docker.sh")], check=False)
