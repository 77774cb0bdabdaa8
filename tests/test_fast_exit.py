"""A finished training process ends without the interpreter's teardown, and loses nothing.

Each case runs a small program in its own interpreter, as kfp.local runs a task, and checks
what a task's caller sees: the exit status, what reached stdout, stderr and a log file, and
whether a child process was waited for.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

PROLOGUE = """\
import logging, multiprocessing, sys, time
from kfp_lightning.components.common.errors import run_or_exit
from kfp_lightning.components.common.errors import exit_without_teardown
"""


def run_program(body: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    program = tmp_path / "task.py"
    program.write_text(PROLOGUE + textwrap.dedent(body))
    return subprocess.run(
        [sys.executable, str(program), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_finished_task_ends_with_status_0_and_everything_written(tmp_path: Path) -> None:
    done = run_program(
        """
        log = logging.getLogger("task")
        log.addHandler(logging.FileHandler(sys.argv[1] + "/task.log"))
        log.warning("the last log line")
        sys.stdout.write("no newline at the end")
        sys.stderr.write("a warning without a newline")
        exit_without_teardown()
        print(" and a line after arming", end="")
        """,
        tmp_path,
    )
    assert done.returncode == 0
    assert done.stdout == "no newline at the end and a line after arming"
    assert done.stderr == "a warning without a newline"
    assert (tmp_path / "task.log").read_text() == "the last log line\n"


def test_a_failure_after_arming_keeps_its_traceback_and_status(tmp_path: Path) -> None:
    # What follows the training function: the KFP executor writing the outputs, failing.
    done = run_program(
        """
        exit_without_teardown()
        raise OSError("cannot write executor_output.json")
        """,
        tmp_path,
    )
    assert done.returncode == 1
    assert "Traceback" in done.stderr
    assert "cannot write executor_output.json" in done.stderr


def test_a_user_error_keeps_its_status(tmp_path: Path) -> None:
    done = run_program(
        """
        def train():
            exit_without_teardown()
            from kfp_lightning.components.common.errors import invalid
            raise invalid("epochs", 0, "an integer >= 1")
        run_or_exit(train)
        """,
        tmp_path,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "error: invalid epochs=0: expected an integer >= 1"


def test_a_child_process_is_still_waited_for(tmp_path: Path) -> None:
    # A child started with multiprocessing is joined by the normal teardown: the fast exit
    # steps aside rather than orphan it.
    done = run_program(
        """
        def child(folder):
            time.sleep(1)
            open(folder + "/child-finished", "w").close()

        if __name__ == "__main__":
            multiprocessing.Process(target=child, args=(sys.argv[1],)).start()
            exit_without_teardown()
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "child-finished").exists()


def test_unarmed_the_process_ends_as_usual(tmp_path: Path) -> None:
    done = run_program(
        """
        import atexit
        atexit.register(lambda: print("teardown ran"))
        sys.exit(3)
        """,
        tmp_path,
    )
    assert done.returncode == 3
    assert done.stdout == "teardown ran\n"


def test_armed_the_teardown_is_skipped(tmp_path: Path) -> None:
    # The teardown is what costs a second after torch: a module global's finaliser stands for it.
    program = """
        class Held:
            def __del__(self):
                print("torn down")

        held = Held()
        if sys.argv[1:] and {arm}:
            exit_without_teardown()
        """
    armed = run_program(program.format(arm=True), tmp_path)
    unarmed = run_program(program.format(arm=False), tmp_path)
    assert (armed.returncode, armed.stdout) == (0, "")
    assert (unarmed.returncode, unarmed.stdout) == (0, "torn down\n")
