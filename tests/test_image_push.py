"""`images/build.py --push` against a real registry on 127.0.0.1, then a pull by digest.

The registry is Debian's `docker-registry` (the CNCF distribution server, the code behind most
private registries), started here with its storage in a temporary folder; Docker allows plain
HTTP to registries on 127.0.0.0/8. The test pushes the `tools` image only: both images go
through the same push code, and the trainer's 6 GB would add about five minutes of gzip on two
cores (the release workflow pushes both). It checks that the digest build.py prints is the one
the registry serves, that the registry holds every layer of the built image intact (read back
over its HTTP API and checked against the image's own layer digests: Docker's pull below finds
the layers still in its build cache and does not fetch them), and that the image, untagged
locally and pulled by that digest, runs as its non-root user. A push that fails prints no
digest. Skips, saying why, only when no Docker daemon answers.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zlib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from kfp_lightning.components.common import images
from tests.helpers import run_build_py
from tests.test_container_pipeline import IMAGE_USER, _docker_client

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.container, pytest.mark.timeout(1800)]
PUSHED = images.TOOLS
# What build.py prints for each pushed image: the tag, then the reference pinned by digest.
PUSHED_LINE = re.compile(r"^pushed (\S+) in \d+s: (\S+)@(sha256:[0-9a-f]{64})$", re.MULTILINE)
MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json, "
    "application/vnd.oci.image.manifest.v1+json"
)


@pytest.fixture(scope="module")
def docker_client():
    client = _docker_client()
    yield client
    client.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(url: str, accept: str = "") -> urllib.request.addinfourl:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    return urllib.request.urlopen(request, timeout=60)


@pytest.fixture(scope="module")
def registry(docker_client, tmp_path_factory) -> Iterator[str]:
    """`127.0.0.1:PORT` of a distribution registry serving from a temporary folder."""
    binary = shutil.which("docker-registry") or shutil.which("registry")
    if binary is None:
        pytest.fail(
            "no registry server: install Debian's docker-registry (images/ensure-docker.sh "
            "does, as root)"
        )
    folder = tmp_path_factory.mktemp("registry")
    address = f"127.0.0.1:{_free_port()}"
    config = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(folder / "storage")}},
        "http": {"addr": address, "secret": secrets.token_hex(16)},
    }
    (folder / "config.yml").write_text(yaml.safe_dump(config))
    log = folder / "registry.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [binary, "serve", str(folder / "config.yml")], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, f"the registry exited: {log.read_text()}"
            try:
                with _get(f"http://{address}/v2/") as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"the registry did not answer: {log.read_text()}"
            time.sleep(0.2)
        yield address
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _build_py(*args: str) -> subprocess.CompletedProcess[str]:
    base = os.environ.get("KFP_LIGHTNING_BASE_IMAGE")
    args = ("--image", PUSHED, *args, *(["--base-image", base] if base else ["--local-base"]))
    environment = {k: v for k, v in os.environ.items() if k != images.REGISTRY_ENV}
    return run_build_py(list(args), environment)


@pytest.fixture(scope="module")
def pushed(registry) -> dict[str, str]:
    """Builds (cached) and pushes the tools image to `registry`; returns what build.py printed."""
    started = time.monotonic()
    result = _build_py("--image-registry", f"{registry}/ml", "--push")
    assert result.returncode == 0, result.stdout + result.stderr
    print(f"{result.stdout}build and push: {time.monotonic() - started:.0f}s")
    ((tag, repository, digest),) = PUSHED_LINE.findall(result.stdout)
    return {"tag": tag, "repository": repository, "digest": digest}


def test_push_prints_the_digest_the_registry_serves(registry, pushed):
    version = metadata.version("kfp-lightning")
    assert pushed["tag"] == f"{registry}/ml/kfp-lightning-{PUSHED}:{version}"
    assert pushed["repository"] == f"{registry}/ml/kfp-lightning-{PUSHED}"
    # Only the image asked for was pushed.
    with _get(f"http://{registry}/v2/_catalog") as response:
        assert json.load(response)["repositories"] == [f"ml/kfp-lightning-{PUSHED}"]
    url = f"http://{registry}/v2/ml/kfp-lightning-{PUSHED}/manifests/{version}"
    with _get(url, MANIFEST_TYPES) as response:
        body = response.read()
        assert response.headers["Docker-Content-Digest"] == pushed["digest"]
    assert f"sha256:{hashlib.sha256(body).hexdigest()}" == pushed["digest"]


def test_registry_holds_every_layer_of_the_built_image(docker_client, registry, pushed):
    base = f"http://{registry}/v2/ml/kfp-lightning-{PUSHED}"
    with _get(f"{base}/manifests/{pushed['digest']}", MANIFEST_TYPES) as response:
        manifest = json.load(response)
    built = docker_client.images.get(pushed["tag"])
    # An image's ID is the digest of its configuration: the pushed one is the one built here.
    assert manifest["config"]["digest"] == built.id
    with _get(f"{base}/blobs/{manifest['config']['digest']}") as response:
        config = response.read()
    assert f"sha256:{hashlib.sha256(config).hexdigest()}" == built.id
    diff_ids = json.loads(config)["rootfs"]["diff_ids"]
    assert len(manifest["layers"]) == len(diff_ids)
    for layer, diff_id in zip(manifest["layers"], diff_ids, strict=True):
        packed, unpacked = hashlib.sha256(), hashlib.sha256()
        gunzip = zlib.decompressobj(16 + zlib.MAX_WBITS)
        size = 0
        with _get(f"{base}/blobs/{layer['digest']}") as response:
            while chunk := response.read(1 << 20):
                size += len(chunk)
                packed.update(chunk)
                unpacked.update(gunzip.decompress(chunk))
        unpacked.update(gunzip.flush())
        assert f"sha256:{packed.hexdigest()}" == layer["digest"]
        assert size == layer["size"]
        # The uncompressed layer is the one the image's configuration names.
        assert f"sha256:{unpacked.hexdigest()}" == diff_id


def test_image_pulled_by_digest_runs_as_the_non_root_user(docker_client, pushed):
    import docker

    built = docker_client.images.get(pushed["tag"])
    tags = list(built.tags)
    pinned = f"{pushed['repository']}@{pushed['digest']}"
    try:
        for tag in tags:
            docker_client.images.remove(tag)
        with pytest.raises(docker.errors.ImageNotFound):
            docker_client.images.get(built.id)
        started = time.monotonic()
        pulled = docker_client.images.pull(pinned)
        print(f"pull by digest: {time.monotonic() - started:.0f}s")
        assert pulled.id == built.id
        assert pinned in pulled.attrs["RepoDigests"]
        output = docker_client.containers.run(
            pinned,
            [
                "python3",
                "-c",
                "import os; from kfp_lightning.components.common import images;"
                " print(os.getuid(), images.package_version())",
            ],
            user=IMAGE_USER,
            network_mode="none",
            remove=True,
            stderr=True,
        )
        assert output.decode().split() == [IMAGE_USER, metadata.version("kfp-lightning")]
    finally:
        # Put back the tags the other container tests use; drop the ones this test made.
        image = docker_client.images.pull(pinned)
        for tag in tags:
            if tag != pushed["tag"]:
                repository, _, name = tag.rpartition(":")
                image.tag(repository, name)
        if len(tags) > 1:
            docker_client.images.remove(pinned)


def test_a_failed_push_prints_no_digest(docker_client):
    dead = f"127.0.0.1:{_free_port()}"
    tag = f"{dead}/ml/kfp-lightning-{PUSHED}:{metadata.version('kfp-lightning')}"
    result = _build_py("--image-registry", f"{dead}/ml", "--push")
    if tag in {t for image in docker_client.images.list() for t in image.tags}:
        docker_client.images.remove(tag)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: docker push of {tag} failed (log: ")
    assert "connection refused" in result.stderr
    assert not PUSHED_LINE.search(result.stdout)
    assert "done in" not in result.stdout


def test_a_daemon_that_stops_answering_is_named(docker_client, tmp_path):
    # A socket nothing listens on stands for a daemon that crashed mid-build: the client's own
    # words ("unexpected EOF", "Cannot connect") do not say that the daemon, not the build, failed.
    environment = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path / 'gone.sock'}"}
    command = [sys.executable, str(REPO / "images" / "build.py"), "--image", PUSHED]
    command += ["--base-image", "debian:bookworm-slim"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=environment)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: docker build of {PUSHED} failed (log: ")
    assert "the Docker daemon does not answer" in result.stderr.splitlines()[-1]
    assert "done in" not in result.stdout
