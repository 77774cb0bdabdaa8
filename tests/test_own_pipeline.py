"""The components used from outside: the README's own-pipeline example, and the console script."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import yaml
from kfp import compiler

from tests.conftest import REPO

EXAMPLE = REPO / "examples" / "own_pipeline.py"


def test_the_readme_shows_the_example_as_it_is():
    readme = (REPO / "README.md").read_text()
    assert f"```python\n{EXAMPLE.read_text()}```" in readme, (
        "README.md's example differs from examples/own_pipeline.py: copy the file into it"
    )


def test_the_example_compiles_with_both_tasks(tmp_path: Path):
    spec = importlib.util.spec_from_file_location("own_pipeline", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    compiler.Compiler().compile(module.my_mnist, str(tmp_path / "own.yaml"))
    pipeline, platform = yaml.safe_load_all((tmp_path / "own.yaml").read_text())
    tasks = pipeline["root"]["dag"]["tasks"]
    assert set(tasks) == {"download-mnist", "train-mnist"}
    train = tasks["train-mnist"]
    assert train["inputs"]["artifacts"]["dataset"]["taskOutputArtifact"]["producerTask"] == (
        "download-mnist"
    )
    parameters = train["inputs"]["parameters"]
    assert parameters["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    assert parameters["task_name"]["runtimeValue"]["constant"] == "{{$.pipeline_task_name}}"
    assert parameters["epochs"]["componentInputParameter"] == "epochs"
    # Training reaches the object store with the keys of KFP's secret.
    executor = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][
        "exec-train-mnist"
    ]
    [secret] = executor["secretAsEnv"]
    assert secret["secretName"] == "mlpipeline-minio-artifact"
    assert {e["envVar"] for e in secret["keyToEnv"]} == {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    }
    # It schedules on a tainted GPU pool, and several GPUs get a /dev/shm NCCL can use.
    assert executor["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    [shm] = executor["emptyDirMounts"]
    assert (shm["mountPath"], shm["medium"], shm["sizeLimit"]) == ("/dev/shm", "Memory", "4Gi")


def test_the_example_names_images_and_resources_as_the_pipeline_does(tmp_path, monkeypatch):
    # A registry of one's own: its tags may be pushed again, so nodes must pull them each time.
    monkeypatch.setenv("KFP_LIGHTNING_IMAGE_REGISTRY", "reg.example.com:5000/ml")
    spec = importlib.util.spec_from_file_location("own_pipeline", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    compiler.Compiler().compile(module.my_mnist, str(tmp_path / "own.yaml"))
    pipeline, platform = yaml.safe_load_all((tmp_path / "own.yaml").read_text())
    executors = pipeline["deploymentSpec"]["executors"]
    for executor in executors.values():
        assert executor["container"]["image"].startswith("reg.example.com:5000/ml/")
    kubernetes = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert {e["imagePullPolicy"] for e in kubernetes.values()} == {"Always"}
    assert len(kubernetes) == 2
    [train] = [e for name, e in executors.items() if "train" in name]
    resources = train["container"]["resources"]
    assert (
        resources["resourceCpuRequest"],
        resources["resourceMemoryRequest"],
        resources["resourceMemoryLimit"],
    ) == ("2", "4Gi", "16Gi")


def test_the_console_script_is_the_cli():
    script = Path(sys.executable).with_name("kfp-lightning")
    assert script.is_file(), "pip install -e . installs the kfp-lightning script"
    done = subprocess.run([script, "--help"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: kfp-lightning")
    for option in ("--compile", "--local", "--check-cluster", "--preset", "--epochs"):
        assert option in done.stdout
