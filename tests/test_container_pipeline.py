"""The whole pipeline inside the project's images: built here, run by kfp.local.DockerRunner.

Builds every image with `images/build.py` (Docker's layer cache makes an unchanged rebuild take
seconds), runs the pipeline on the small MNIST-format set served over HTTP on 127.0.0.1, and
checks what a local run is checked for, plus that each container ran as the image's non-root
user. Containers use the host's network (no Docker bridge here), so they reach the mirror on
loopback. The base image is built with debootstrap (`--local-base`), since no registry need be
reachable; `KFP_LIGHTNING_BASE_IMAGE` names another. Skips, saying why, only when no Docker
daemon answers: `images/ensure-docker.sh` installs and starts one where it can.
"""

from __future__ import annotations

import os
import subprocess
import time
from importlib import metadata
from pathlib import Path

import pytest

from kfp_lightning.components.common import images
from tests.helpers import (
    FOUR_SCALARS,
    assert_self_contained_html,
    predict_in_fresh_process,
    run_build_py,
    scalars,
)

REPO = Path(__file__).resolve().parents[1]
# The build of a cold trainer image (gigabytes of CUDA wheels) dominates.
pytestmark = [pytest.mark.container, pytest.mark.timeout(3600)]
IMAGE_USER = "10001"


def _docker_client():
    """A client of a running Docker daemon, or a skip that says why there is none."""
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as err:
        address = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        pytest.skip(
            f"Docker cannot run here: no daemon answers at {address} ({err}); as root, "
            "images/ensure-docker.sh installs and starts one"
        )
    return client


@pytest.fixture(scope="module")
def docker_client():
    client = _docker_client()
    yield client
    client.close()


@pytest.fixture(scope="module")
def built_images(docker_client):
    """Builds (or, unchanged, reuses) every image; returns name -> docker Image."""
    base = os.environ.get("KFP_LIGHTNING_BASE_IMAGE")
    started = time.monotonic()
    result = run_build_py(["--base-image", base] if base else ["--local-base"])
    assert result.returncode == 0, result.stdout + result.stderr
    print(f"{result.stdout}images ready in {time.monotonic() - started:.0f}s")
    return {name: docker_client.images.get(images.image_tag(name)) for name in images.IMAGE_NAMES}


def _in_image(client, image, *command: str, user: str = "") -> str:
    """Runs `command` in a throwaway container of `image` (no network) and returns its output."""
    output = client.containers.run(
        image.id, list(command), remove=True, network_mode="none", stderr=True, user=user
    )
    return output.decode().strip()


@pytest.fixture(scope="module")
def container_run(built_images, http_mirror, mnist_mirror, tmp_path_factory):
    """Runs the pipeline with DockerRunner; returns (outputs, pipeline root, seconds)."""
    from kfp import local

    from kfp_lightning.pipelines.mnist import build_pipeline

    _, md5 = mnist_mirror
    root = tmp_path_factory.mktemp("docker-run") / "pipeline-root"
    root.mkdir()
    # DockerRunner mounts the root at the same path; the images' non-root user writes there.
    root.chmod(0o777)
    local.init(
        runner=local.DockerRunner(network_mode="host"),
        pipeline_root=str(root),
        raise_on_error=True,
        enable_caching=False,
    )
    pipeline = build_pipeline(retries=False)
    parameters = {
        "mirror": http_mirror,
        "expected_md5": md5,
        "epochs": 1,
        "gpus": "0",
        "validation": "200",
    }
    inputs = pipeline.component_spec.inputs
    if "tensorboard_logs_root" in inputs:
        parameters["tensorboard_logs_root"] = str(root / "tensorboard")
    if "live_update_seconds" in inputs:
        parameters["live_update_seconds"] = 2
    started = time.monotonic()
    outputs = pipeline(**parameters).outputs
    seconds = time.monotonic() - started
    print(f"pipeline ran in containers in {seconds:.0f}s")
    return outputs, root, seconds


def test_images_run_as_a_non_root_user_with_the_compilers_kfp(docker_client, built_images):
    for name, image in built_images.items():
        assert image.attrs["Config"]["User"] == IMAGE_USER, name
        assert _in_image(docker_client, image, "id", "-u") == IMAGE_USER
        version = _in_image(
            docker_client, image, "python3", "-c", "import kfp; print(kfp.__version__)"
        )
        assert version == metadata.version("kfp"), name
        labels = image.labels
        assert labels["org.opencontainers.image.version"] == metadata.version("kfp-lightning")
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        assert labels["org.opencontainers.image.revision"].startswith(head or "unknown")
        assert "org.opencontainers.image.source" in labels


def test_images_hold_no_compiler_installer_or_cache(docker_client, built_images):
    probe = (
        "for tool in gcc cc c++ g++ clang pip pip3; do"
        " command -v $tool >/dev/null && echo found $tool; done;"
        " find /var/lib/apt/lists /var/cache/apt /root/.cache /home/kfp/.cache /tmp -type f"
        " ! -name lock 2>/dev/null;"
        " python3 -c 'import pip' 2>/dev/null && echo found the pip module; true"
    )
    for name, image in built_images.items():
        # As root: root's own cache is among the places looked at.
        assert _in_image(docker_client, image, "sh", "-c", probe, user="0") == "", name


def test_tools_image_has_tensorboard_and_no_torch(docker_client, built_images):
    tools = built_images[images.TOOLS]
    assert _in_image(docker_client, tools, "tensorboard", "--version")
    missing = _in_image(
        docker_client,
        tools,
        "python3",
        "-c",
        "import importlib.util as u; print([m for m in ('torch', 'lightning', 'torchvision')"
        " if u.find_spec(m)])",
    )
    assert missing == "[]"


def test_pipeline_artifacts(container_run):
    outputs, root, _ = container_run
    metrics = dict(outputs["metrics"].metadata)
    assert 0 <= metrics["test_accuracy"] <= 1
    assert metrics["test_loss"] >= 0

    (dataset,) = root.glob("*/download-mnist/dataset")
    # torch.export program, loaded in a fresh process that cannot import this package.
    prediction = predict_in_fresh_process(Path(outputs["model"].path), dataset)
    assert prediction["shape"][1:] == [10]
    assert prediction["shape"][0] > 0
    assert prediction["accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-6)

    values = scalars(Path(outputs["tensorboard_logs"].path))
    assert set(values) >= FOUR_SCALARS
    assert_self_contained_html(Path(outputs["report"].path).read_text())


def test_every_task_ran_as_the_non_root_user(container_run):
    _, root, _ = container_run
    (run,) = [path for path in root.iterdir() if path.is_dir() and path.name != "tensorboard"]
    tasks = {path.name: path for path in run.iterdir() if path.is_dir()}
    assert {"download-mnist", "train-mnist", "report-training"} <= set(tasks)
    for task, folder in tasks.items():
        owners = {path.stat().st_uid for path in folder.rglob("*")}
        # Everything a task wrote is owned by the user its container ran as.
        assert owners == {int(IMAGE_USER)}, task
