"""The container images the components run in: the one place their references are made.

Each tag is the installed package version, so a compiled pipeline always names the images built
from the same source, and a release bumps them all at once. The registry defaults to
`DEFAULT_REGISTRY`; `KFP_LIGHTNING_IMAGE_REGISTRY` (or the CLI's `--image-registry`, which sets
it) points every image at a user's own registry, for clusters that mirror images internally.
"""

from __future__ import annotations

import json
import os
import re
from importlib import metadata
from pathlib import Path

from kfp_lightning.components.common.errors import invalid
from kfp_lightning.components.common.files import atomic_write_text

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
# What `images/build.py --push` pushed from this checkout: tag -> manifest digest. A tag can be
# pushed again with other content (every development build of one version has the same tag),
# and nodes keep the copy they pulled first (imagePullPolicy IfNotPresent, Kubernetes' default
# for a tag other than `latest`), so a compile names what was pushed by digest when it knows it.
PUSHED_FILE = Path(__file__).resolve().parents[2] / "build" / "images" / "pushed.json"
# host[:port] followed by lowercase path components, in the grammar of image references
# (distribution/reference, reference.go and regexp.go): a host's components are letters and
# digits with inner hyphens, or an IPv6 address in brackets; a path component's separators are
# ".", "_", "__" or hyphens; a repository name is at most 255 characters (NameTotalLengthMax).
_HOST = r"[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?"
REGISTRY_PATTERN = re.compile(
    rf"({_HOST}(\.{_HOST})*|\[[0-9a-fA-F:]+\])(:(?P<port>[0-9]+))?"
    r"(/[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*)*"
)
NAME_MAX = 255


def use_registry(prefix: str, parameter: str = "image_registry") -> None:
    """Points every image at `prefix` for the rest of this process (what --image-registry does).

    Args:
        prefix: A registry and optional path, e.g. "registry.example.com/ml".
        parameter: Where the value came from, for the error.

    Raises:
        UserInputError: `prefix` is not a registry prefix.
    """
    os.environ[REGISTRY_ENV] = _checked(prefix, parameter)


def _checked(prefix: str, parameter: str) -> str:
    """`prefix` without surrounding blanks and trailing slashes, if it is a registry prefix."""
    given = prefix.strip()
    prefix = given.rstrip("/")
    # The grammar takes any digits as a port; a TCP port is at most 65535.
    match = REGISTRY_PATTERN.fullmatch(prefix)
    longest = max(len(f"{prefix}/kfp-lightning-{name}") for name in IMAGE_NAMES)
    if not match or not 1 <= int(match["port"] or 1) <= 65535 or longest > NAME_MAX:
        raise invalid(parameter, given, "a registry prefix such as registry.example.com/ml")
    return prefix


def package_version() -> str:
    """The installed version of this package, which is every image's tag."""
    return metadata.version(DISTRIBUTION)


def registry() -> str:
    """The registry prefix in effect (environment override, else the default).

    Raises:
        UserInputError: The environment's value is not a registry prefix. The components name
            their images when imported: a pipeline of one's own fails then, not on the cluster.
    """
    value = os.environ.get(REGISTRY_ENV, "").strip()
    return _checked(value, REGISTRY_ENV) if value else DEFAULT_REGISTRY


def image_tag(name: str) -> str:
    """The tag `<registry>/kfp-lightning-<name>:<version>` of one image.

    Args:
        name: One of `IMAGE_NAMES`.

    Returns:
        The tagged reference.

    Raises:
        ValueError: `name` is not one of `IMAGE_NAMES`.
    """
    if name not in IMAGE_NAMES:
        raise ValueError(f"unknown image {name!r}: expected one of {', '.join(IMAGE_NAMES)}")
    return f"{registry()}/kfp-lightning-{name}:{package_version()}"


def pushed_digests() -> dict[str, str]:
    """Tag -> manifest digest of every image pushed from this checkout (none when not built)."""
    try:
        return dict(json.loads(PUSHED_FILE.read_text()))
    except (OSError, ValueError):
        return {}


def record_pushed(tag: str, digest: str) -> None:
    """Remembers that `tag` was pushed as `digest` (`images/build.py --push` calls it)."""
    atomic_write_text(PUSHED_FILE, json.dumps({**pushed_digests(), tag: digest}, indent=2) + "\n")


def image_ref(name: str) -> str:
    """The reference the pipeline names for one image: its tag, pinned by digest when known.

    `<registry>/kfp-lightning-<name>:<version>@sha256:...` when this checkout pushed that tag
    (the digest `images/build.py --push` printed), so nodes run exactly what was pushed even
    where they hold an older image under the same tag; else the tag alone.

    Args:
        name: One of `IMAGE_NAMES`.

    Returns:
        The image reference.
    """
    tag = image_tag(name)
    digest = pushed_digests().get(tag)
    return f"{tag}@{digest}" if digest else tag


def pull_policy(ref: str) -> str | None:
    """The imagePullPolicy a task running `ref` needs; None keeps Kubernetes' default.

    A digest names one content: the default (IfNotPresent) is right. So is it for the default
    registry, which holds released versions only, each pushed once. A tag in any other registry
    is a development build that may be pushed again under the same tag: nodes must pull it
    each time (Always), or they would run the copy they pulled first.
    """
    released = ref.rsplit("/", 1)[0] == DEFAULT_REGISTRY  # not a path below it
    return None if "@" in ref or released else "Always"
