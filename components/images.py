"""The container images the components run in: the one place their references are made.

Each tag is the installed package version, so a compiled pipeline always names the images built
from the same source, and a release bumps them all at once. The registry defaults to
`DEFAULT_REGISTRY`; `KFP_LIGHTNING_IMAGE_REGISTRY` (or the CLI's `--image-registry`, which sets
it) points every image at a user's own registry, for clusters that mirror images internally.
"""

from __future__ import annotations

import os
import re
from importlib import metadata

from kfp_lightning.components.common.errors import invalid

DISTRIBUTION = "kfp-lightning"
REGISTRY_ENV = "KFP_LIGHTNING_IMAGE_REGISTRY"
DEFAULT_REGISTRY = "ghcr.io/kfp-lightning"

# Image name -> what runs in it. images/<name>/ holds each one's dependency lock.
TRAINER = "trainer"  # torch (CUDA build, runs on CPU too), Lightning: download + training
TOOLS = "tools"  # no torch: TensorBoard launcher and report, quick to pull and start
IMAGE_NAMES = (TRAINER, TOOLS)
# The images' OCI description labels.
DESCRIPTIONS = {
    TRAINER: "Downloads MNIST and trains the PyTorch MNIST CNN with Lightning (CUDA or CPU).",
    TOOLS: "TensorBoard launcher, training report and TensorBoard server for kfp-lightning "
    "(no PyTorch).",
}
# host[:port] followed by lowercase path components, as the OCI distribution spec allows.
REGISTRY_PATTERN = re.compile(r"[a-zA-Z0-9.-]+(:[0-9]+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)*")


def use_registry(prefix: str) -> None:
    """Points every image at `prefix` for the rest of this process (what --image-registry does).

    Args:
        prefix: A registry and optional path, e.g. "registry.example.com/ml".
    """
    prefix = prefix.strip().rstrip("/")
    if not REGISTRY_PATTERN.fullmatch(prefix):
        raise invalid("image_registry", prefix, "a registry prefix such as registry.example.com/ml")
    os.environ[REGISTRY_ENV] = prefix


def package_version() -> str:
    """The installed version of this package, which is every image's tag."""
    return metadata.version(DISTRIBUTION)


def registry() -> str:
    """The registry prefix in effect (environment override, else the default)."""
    return os.environ.get(REGISTRY_ENV, "").strip().rstrip("/") or DEFAULT_REGISTRY


def image_ref(name: str) -> str:
    """The full reference `<registry>/kfp-lightning-<name>:<version>` of one image.

    Args:
        name: One of `IMAGE_NAMES`.

    Returns:
        The image reference.
    """
    if name not in IMAGE_NAMES:
        raise ValueError(f"unknown image {name!r}: expected one of {', '.join(IMAGE_NAMES)}")
    return f"{registry()}/kfp-lightning-{name}:{package_version()}"
