"""The local TensorBoard of `--local`: on 127.0.0.1, stopped at the end unless kept."""

from __future__ import annotations

import os
import re
import signal
import time
import urllib.error
import urllib.request

import pytest

from kfp_lightning.pipelines.local import local_tensorboard


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=5).close()
    except urllib.error.URLError:
        return False
    return True


def _answers_soon(url: str, seconds: float = 60) -> bool:
    """The URL is printed at once; the server loads while the pipeline starts."""
    deadline = time.monotonic() + seconds
    while not _answers(url):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.mark.parametrize("keep", [False, True])
def test_serves_on_loopback_and_stops_unless_kept(tmp_path, capsys, keep):
    with local_tensorboard(tmp_path / "logs", keep, tmp_path / "tensorboard.log") as url:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url)
        assert _answers_soon(url)
    out = capsys.readouterr().out
    assert f"TensorBoard: {url} (live while the pipeline runs)" in out
    if not keep:
        assert not _answers(url)
        return
    (pid,) = re.findall(
        rf"TensorBoard keeps running at {re.escape(url)} \(stop it with: kill (\d+)\)", out
    )
    try:
        assert _answers(url)
    finally:
        os.kill(int(pid), signal.SIGTERM)
