"""Bad input, table-driven, through both entry points: the CLI (compile and --local start) and
each component as a Kubeflow pod runs it (the run form bypasses the CLI). Every case must end
with one line naming the parameter and the value, exit status 2, and nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kfp_lightning.components.download_mnist.component import download_mnist
from kfp_lightning.components.launch_tensorboard.component import launch_tensorboard
from kfp_lightning.components.train_mnist.component import train_mnist
from tests.component_runner import run_component

REPO = Path(__file__).resolve().parents[1]

# (case, CLI options, component, component parameters, start of the message)
CASES = [
    ("epochs 0", ["--epochs", "0"], train_mnist, {"epochs": 0}, "invalid epochs=0: expected an integer >= 1"),
    ("epochs 2.5", ["--epochs", "2.5"], train_mnist, {"epochs": 2.5}, "invalid epochs="),
    ("batch size -8", ["--batch-size", "-8"], train_mnist, {"batch_size": -8}, "invalid batch_size=-8"),
    ("batch size 0", ["--batch-size", "0"], train_mnist, {"batch_size": 0}, "invalid batch_size=0"),
    ("lr nan", ["--learning-rate", "nan"], train_mnist, {"learning_rate": float("inf")}, "invalid learning_rate="),
    ("lr 0", ["--learning-rate", "0"], train_mnist, {"learning_rate": 0.0}, "invalid learning_rate=0"),
    ("lr negative", ["--learning-rate", "-0.1"], train_mnist, {"learning_rate": -0.1}, "invalid learning_rate=-0.1"),
    ("gamma 0", ["--gamma", "0"], train_mnist, {"gamma": 0.0}, "invalid gamma=0"),
    ("gamma 1.5", ["--gamma", "1.5"], train_mnist, {"gamma": 1.5}, "invalid gamma=1.5: expected a number in (0, 1]"),
    ("precision", ["--precision", "fp8"], train_mnist, {"precision": "fp8"}, "invalid precision='fp8': expected one of 32-true, bf16-mixed, 16-mixed"),
    ("optimizer", ["--optimizer", "adam"], train_mnist, {"optimizer": "adam"}, "invalid optimizer='adam'"),
    ("switch", ["--torch-compile", "maybe"], train_mnist, {"torch_compile": "maybe"}, "invalid torch_compile='maybe': expected one of on, off"),
    ("validation", ["--validation", "half"], train_mnist, {"validation": "half"}, "invalid validation='half'"),
    ("augmentation", ["--augmentation", "shift:9"], train_mnist, {"augmentation": "shift:9"}, "invalid augmentation='shift:9': expected none or shift:N with N from 1 to 4"),
    ("gpus -1", ["--gpus", "-1"], train_mnist, {"gpus": -1}, "invalid gpus=-1: expected an integer >= 0"),
    ("gpus 0.5", ["--gpus", "0.5"], train_mnist, {"gpus": 0.5}, "invalid gpus="),
    ("flush 0", ["--flush-secs", "0"], train_mnist, {"flush_secs": 0}, "invalid flush_secs=0"),
    ("mirror scheme", ["--mirror", "ftp://example.com/mnist/"], download_mnist, {"mirror": "ftp://example.com/mnist/"}, "invalid mirror='ftp://example.com/mnist/'"),
    ("mirror no host", ["--mirror", "https:///mnist/"], download_mnist, {"mirror": "https:///mnist/"}, "invalid mirror='https:///mnist/'"),
    ("md5", ["--expected-md5", '{"a": "b"}'], download_mnist, {"expected_md5": {"a": "b"}}, "invalid expected_md5="),
    ("logs scheme", ["--tensorboard-logs-root", "gs://bucket/tb"], train_mnist, {"tensorboard_logs_root": "gs://bucket/tb"}, "invalid tensorboard_logs_root='gs://bucket/tb'"),
    ("logs relative", ["--tensorboard-logs-root", "runs/tb"], launch_tensorboard, {"tensorboard_logs_root": "runs/tb"}, "invalid tensorboard_logs_root='runs/tb'"),
    ("logs bucket", ["--tensorboard-logs-root", "s3://Bad_Bucket/x"], train_mnist, {"tensorboard_logs_root": "s3://Bad_Bucket/x"}, "invalid tensorboard_logs_root="),
    ("endpoint", ["--s3-endpoint", "minio:9000"], launch_tensorboard, {"s3_endpoint": "minio:9000"}, "invalid s3_endpoint='minio:9000': expected an endpoint of the form http(s)://host[:port]"),
    ("secret", ["--s3-credentials-secret", "Not A Name"], launch_tensorboard, {"s3_credentials_secret": "Not A Name"}, "invalid s3_credentials_secret='Not A Name'"),
    ("base url", ["--kubeflow-base-url", "kubeflow.example.com"], launch_tensorboard, {"kubeflow_base_url": "kubeflow.example.com"}, "invalid kubeflow_base_url='kubeflow.example.com'"),
    ("node selector key", ["--node-selector", '{"bad key!": "x"}'], None, None, "invalid node_selector="),
    ("node selector type", ["--node-selector", "[]"], None, None, "invalid node_selector='[]': expected a JSON object"),
    ("toleration operator", ["--tolerations", '[{"key": "gpu", "operator": "Sometimes"}]'], None, None, "invalid tolerations="),
    ("toleration exists with value", ["--tolerations", '[{"key": "gpu", "operator": "Exists", "value": "x"}]'], None, None, "invalid tolerations="),
    ("preset", ["--preset", "turbo"], None, None, "invalid preset='turbo': expected one of classic, fast"),
]  # fmt: skip


def _single_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize(
    ("case", "options", "component", "parameters", "message"), CASES, ids=[c[0] for c in CASES]
)
def test_cli(case, options, component, parameters, message, tmp_path):
    process = subprocess.run(
        [
            sys.executable,
            str(REPO / "pipelines" / "mnist.py"),
            "--compile",
            "--output",
            "p.yaml",
            *options,
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert process.returncode == 2
    assert _single_line(process.stderr).startswith(f"error: {message}")
    assert list(tmp_path.iterdir()) == []


COMPONENT_CASES = [c for c in CASES if c[2] is not None]


@pytest.mark.parametrize(
    ("case", "options", "component", "parameters", "message"),
    COMPONENT_CASES,
    ids=[c[0] for c in COMPONENT_CASES],
)
def test_component(case, options, component, parameters, message, tmp_path):
    inputs = {}
    if component is train_mnist:
        # Never read: the parameters are checked before the dataset is opened.
        inputs = {"dataset": tmp_path / "no-dataset"}
    if component in (train_mnist, launch_tensorboard):
        parameters = {"run_id": "run-1", **parameters}
    process, outputs = run_component(component, tmp_path / "pod", parameters, inputs)
    assert process.returncode == 2, process.stderr[-2000:]
    assert _single_line(process.stderr).startswith(f"error: {message}")
    assert not any(path.exists() for path in outputs.values())
