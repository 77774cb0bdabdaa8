"""Which image a compiled pipeline's pods run: a pushed build by digest, else a tag pulled anew.

A development build re-pushed under the same tag must not run stale code on a node that
pulled the tag before (Kubernetes' default pull policy for a tag is IfNotPresent).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kfp_lightning.components.common import images
from tests.test_compile import load

DIGEST = "sha256:" + "ab" * 32


@pytest.fixture
def pushed_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where `images/build.py --push` records digests, in a folder of this test's own."""
    path = tmp_path / "pushed.json"
    monkeypatch.setattr(images, "PUSHED_FILE", path)
    return path


def compiled_pods(path: Path) -> dict[str, tuple[str, str]]:
    """Executor -> (image, imagePullPolicy) of a compiled pipeline."""
    spec, platform = load(path)
    executors = spec.deployment_spec["executors"]
    return {
        name: (
            executors[name]["container"]["image"],
            platform[name].image_pull_policy if name in platform else "",
        )
        for name in executors
    }


def compile_for(registry: str, output: Path) -> Path:
    from kfp_lightning.pipelines.cli import compile_pipeline

    images.use_registry(registry)
    return compile_pipeline(output)


# A path below the default registry is a registry of one's own too.
@pytest.mark.parametrize(
    "registry",
    [
        "registry.example.com/ml",
        f"{images.DEFAULT_REGISTRY}/dev",
        f"{images.DEFAULT_REGISTRY}/kfp-lightning-dev",
    ],
)
def test_a_tag_in_the_users_registry_is_pulled_every_time(
    pushed_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry: str
) -> None:
    monkeypatch.delenv(images.REGISTRY_ENV, raising=False)
    pods = compiled_pods(compile_for(registry, tmp_path / "p.yaml"))
    monkeypatch.delenv(images.REGISTRY_ENV, raising=False)

    assert pods
    for image, policy in pods.values():
        assert image.startswith(f"{registry}/kfp-lightning-")
        assert "@" not in image
        assert policy == "Always"


def test_a_pushed_build_is_named_by_digest(
    pushed_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(images.REGISTRY_ENV, "registry.example.com/ml")
    for name in images.IMAGE_NAMES:
        images.record_pushed(images.image_tag(name), DIGEST)
    pods = compiled_pods(compile_for("registry.example.com/ml", tmp_path / "p.yaml"))

    for image, policy in pods.values():
        assert image.endswith(f":{images.package_version()}@{DIGEST}")
        assert policy == ""  # a digest names one content: Kubernetes' default is right
    # Another registry's tag knows no digest.
    monkeypatch.setenv(images.REGISTRY_ENV, "other.example.com/ml")
    assert "@" not in images.image_ref(images.TOOLS)


def test_the_default_registry_holds_releases_only(
    pushed_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(images.REGISTRY_ENV, raising=False)
    from kfp_lightning.pipelines.cli import compile_pipeline

    pods = compiled_pods(compile_pipeline(tmp_path / "p.yaml"))

    for image, policy in pods.values():
        assert image.startswith(f"{images.DEFAULT_REGISTRY}/")
        assert policy == ""


def test_record_pushed_keeps_earlier_pushes(pushed_file: Path) -> None:
    images.record_pushed("r.example/ml/kfp-lightning-tools:1", DIGEST)
    images.record_pushed("r.example/ml/kfp-lightning-trainer:1", "sha256:" + "cd" * 32)
    assert set(images.pushed_digests()) == {
        "r.example/ml/kfp-lightning-tools:1",
        "r.example/ml/kfp-lightning-trainer:1",
    }


# What the image reference grammar allows (distribution/reference), at its edges.
@pytest.mark.parametrize(
    "registry",
    [
        "[::1]:5000/ml",  # an IPv6 host
        "Registry-1.Example.com:65535/my__team/ml-x",
        "localhost/" + "a" * (255 - len("localhost//kfp-lightning-trainer")),  # 255 in all
    ],
)
def test_a_registry_at_the_grammars_edges_is_taken(registry: str, monkeypatch) -> None:
    monkeypatch.delenv(images.REGISTRY_ENV, raising=False)
    images.use_registry(registry)

    assert images.image_tag(images.TRAINER).startswith(f"{registry}/kfp-lightning-trainer:")
    monkeypatch.delenv(images.REGISTRY_ENV, raising=False)


def test_a_registry_past_the_names_length_is_refused(monkeypatch) -> None:
    monkeypatch.delenv(images.REGISTRY_ENV, raising=False)
    too_long = "localhost/" + "a" * (256 - len("localhost//kfp-lightning-trainer"))

    with pytest.raises(ValueError, match="expected a registry prefix"):
        images.use_registry(too_long)
