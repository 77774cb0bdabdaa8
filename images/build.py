"""Builds the container images the components run in, with Docker, from the lock files.

    python images/build.py [--image trainer|tools]... [--image-registry PREFIX]
                           [--base-image IMAGE | --local-base] [--no-cache] [--push]

Each image is tagged exactly as `components/common/images.py` names it (`<registry>/kfp-lightning-
<name>:<package version>`), so the compiled pipeline and `kfp.local.DockerRunner` find it. Before
building, this host downloads the locked wheels once into `build/images/wheels/` (with its own
pip settings: index, mirror, certificates) and builds this package's wheel; each image's build
context is then exactly its lock, its wheels and that package wheel. pip inside the build
installs from those files only, with every hash checked, so the build reaches no Python index.
Docker's layer cache makes a rebuild with unchanged locks take seconds; a changed package
reinstalls only the package layer. `--push` pushes the images once every one is built (a failed
build pushes nothing) and prints each one's manifest digest, the reference that pins it:
`pushed <tag> in <s>s: <registry>/<repository>@sha256:<hex>`.

`--local-base` builds a Debian bookworm base with debootstrap (images/base-image.sh) for hosts
that reach the Debian archive but no container registry. Builds use host networking (apt inside
the build reaches the Debian archive without a Docker bridge).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

IMAGES_DIR = Path(__file__).resolve().parent
REPO = IMAGES_DIR.parent
WORK = REPO / "build" / "images"
WHEEL_CACHE = WORK / "wheels"
LOCAL_BASE_IMAGE = "localhost/debian:bookworm-slim-debootstrap"
# The images' interpreter and platform (Debian bookworm: CPython 3.11, glibc 2.36, x86_64): the
# wheels are chosen for it, whatever Python runs this script.
TARGET_PYTHON = "3.11"
TARGET_GLIBC_MINOR = 36
TARGET_PLATFORMS = [
    *(f"manylinux_2_{minor}_x86_64" for minor in range(TARGET_GLIBC_MINOR, 4, -1)),
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
]
_LOCK_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.MULTILINE)


class BuildError(RuntimeError):
    """A build step failed; the message says which and where its log is."""


def canonical_name(name: str) -> str:
    """The normalised form of a distribution name (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_pins(lock_file: Path) -> dict[str, str]:
    """Canonical name -> version of every package a lock file pins."""
    return {
        canonical_name(name): version for name, version in _LOCK_PIN.findall(lock_file.read_text())
    }


def wheel_key(filename: str) -> tuple[str, str]:
    """(canonical name, version) of a wheel file name, e.g. torch-2.14.1-cp311-...whl."""
    name, version = filename.split("-")[:2]
    return canonical_name(name), version


def run_logged(
    step: str, command: Sequence[str], log: Path, env: dict[str, str] | None = None
) -> None:
    """Runs `command` with its output in `log`; raises BuildError naming `step` on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as handle:
        result = subprocess.run(
            list(command), stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=REPO, check=False
        )
    if result.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-25:])
        if step.startswith("docker") and not docker_answers(command[0]):
            # The client's "unexpected EOF" alone hides that the daemon itself went away (Debian's
            # dockerd 20.10 can crash reading BuildKit's cache records: moby/buildkit#2861).
            tail += f"\n{DAEMON_GONE}: see its own log, start it and build again"
        raise BuildError(f"{step} failed (log: {log}):\n{tail}")


# The words that tell a caller the daemon, not the build, failed.
DAEMON_GONE = "the Docker daemon does not answer (it may have crashed during this step)"


def docker_answers(docker: str) -> bool:
    """Whether a Docker daemon answers `docker info` within 20 s."""
    try:
        info = subprocess.run([docker, "info"], capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return info.returncode == 0


def docker_cli() -> str:
    """A docker command able to build with BuildKit (needed for RUN --mount).

    Docker 23+ builds through the buildx plugin; older clients (Debian's docker.io 20.10) carry
    BuildKit themselves. `$DOCKER` picks the command explicitly.
    """
    candidates = (
        [os.environ["DOCKER"]] if os.environ.get("DOCKER") else ["docker", "/usr/bin/docker"]
    )
    for candidate in dict.fromkeys(candidates):
        path = shutil.which(candidate)
        if path is None:
            continue
        buildx = subprocess.run([path, "buildx", "version"], capture_output=True, check=False)
        if buildx.returncode == 0:
            return path
        version = subprocess.run(
            [path, "version", "--format", "{{.Client.Version}}"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        major = re.match(r"(\d+)\.", version)
        if major and int(major.group(1)) < 23:
            return path
    raise BuildError(
        "no docker command that builds with BuildKit: install the buildx plugin "
        "(docker-buildx) or Debian's docker.io, or set DOCKER"
    )


def cached_files() -> set[tuple[str, str]]:
    """(canonical name, version) of every wheel and source archive in WHEEL_CACHE."""
    if not WHEEL_CACHE.is_dir():
        return set()
    found = set()
    for path in WHEEL_CACHE.iterdir():
        if path.name.endswith(".whl"):
            found.add(wheel_key(path.name))
        elif path.name.endswith((".tar.gz", ".zip")):
            found.add(sdist_key(path.name))
    return found


def download_wheels(lock_files: Sequence[Path]) -> None:
    """Fetches every file the locks pin into WHEEL_CACHE (files already there are kept).

    A wheel for the images' platform where one is published, else the source archive.
    """
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    # The lock alone decides versions: a host-wide pip constraint (one that caps torch for this
    # host's own environments, say) must not veto them, so it is replaced by an empty one.
    env = {**os.environ, "PIP_CONSTRAINT": os.devnull}
    platforms = [arg for platform in TARGET_PLATFORMS for arg in ("--platform", platform)]
    for lock_file in lock_files:
        # Nothing to fetch when every pinned file is here: pip inside the build checks each
        # file against the lock's hashes anyway, so a rebuild skips re-reading gigabytes here.
        if set(locked_pins(lock_file).items()) <= cached_files():
            continue
        command = [
            sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
            "--no-deps", "--require-hashes", "--prefer-binary",
            "--python-version", TARGET_PYTHON, "--implementation", "cp",
            "--abi", f"cp{TARGET_PYTHON.replace('.', '')}", *platforms,
            "--dest", str(WHEEL_CACHE), "--requirement", str(lock_file),
        ]  # fmt: skip
        run_logged(
            f"pip download for {lock_file.parent.name}",
            command,
            WORK / f"download-{lock_file.parent.name}.log",
            env,
        )


def build_package_wheel(out: Path, isolated: bool = True) -> Path:
    """Builds this package's wheel from the working tree into `out`; returns its path.

    The build runs on a fresh copy of the package's sources: setuptools reuses an in-tree
    `build/` folder, which can carry modules deleted since into the wheel.

    Args:
        out: Folder for the wheel (emptied first).
        isolated: Build in pip's isolated environment (fetches the build backend); False uses
            the running environment's setuptools, offline.
    """
    import tomllib

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    package_dirs = pyproject["tool"]["setuptools"]["package-dir"].values()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "source"
        source.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE", "setup.cfg", "MANIFEST.in"):
            if (REPO / name).is_file():
                shutil.copy2(REPO / name, source / name)
        for folder in dict.fromkeys(package_dirs):
            shutil.copytree(
                REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__")
            )
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(out)]
        if not isolated:
            command.append("--no-build-isolation")
        run_logged(
            "building the package wheel", [*command, str(source)], out.parent / f"{out.name}.log"
        )
    (wheel,) = out.glob("kfp_lightning-*.whl")
    return wheel


def sdist_key(filename: str) -> tuple[str, str]:
    """(canonical name, version) of a source archive name, e.g. kfp_server_api-2.17.3.tar.gz."""
    stem = filename.removesuffix(".tar.gz").removesuffix(".zip")
    name, version = stem.rsplit("-", 1)
    return canonical_name(name), version


def build_sdist_wheels() -> None:
    """Builds, once, a wheel from every source archive in WHEEL_CACHE into its `built/` folder.

    Some locked packages publish only a source archive (kfp-server-api does). pip checked the
    archive against the lock's hash when downloading it; building its wheel here keeps every
    step inside the image an install of wheels, with no build backend run there.
    """
    built = WHEEL_CACHE / "built"
    built.mkdir(parents=True, exist_ok=True)
    have = {wheel_key(wheel.name) for wheel in built.glob("*.whl")}
    for archive in sorted(WHEEL_CACHE.iterdir()):
        if not archive.name.endswith((".tar.gz", ".zip")) or sdist_key(archive.name) in have:
            continue
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(built)]
        run_logged(
            f"building a wheel of {archive.name}",
            [*command, str(archive)],
            WORK / f"wheel-{sdist_key(archive.name)[0]}.log",
        )


def with_hash(lock_text: str, name: str, digest: str) -> str:
    """The lock text with the hashes of package `name` replaced by the one sha256 `digest`."""
    spelled = "[-_.]+".join(re.escape(part) for part in name.split("-"))
    entry = re.compile(
        rf"^({spelled}==\S+) \\\n(?:[ \t]+--hash=sha256:[0-9a-f]{{64}} \\\n)*"
        rf"[ \t]+--hash=sha256:[0-9a-f]{{64}}\n",
        re.MULTILINE | re.IGNORECASE,
    )
    replaced, count = entry.subn(rf"\1 \\\n    --hash=sha256:{digest}\n", lock_text)
    if count != 1:
        raise BuildError(f"{name} is not pinned with hashes in the lock")
    return replaced


def stage_context(image: str, package_wheel: Path) -> Path:
    """Lays out the build context of `image`: its lock, exactly its wheels, the package wheel.

    A wheel built here from a source archive replaces that archive's hash in the staged lock
    by its own, so pip's hash check inside the build covers it too.
    """
    lock_file = IMAGES_DIR / image / "requirements.txt"
    pins = locked_pins(lock_file)
    context = WORK / image
    shutil.rmtree(context, ignore_errors=True)
    (context / "wheels").mkdir(parents=True)
    (context / "package").mkdir()
    lock_text = lock_file.read_text()
    found = set()
    downloaded = sorted(WHEEL_CACHE.glob("*.whl"))
    built = sorted((WHEEL_CACHE / "built").glob("*.whl"))
    for wheel in downloaded + built:
        name, version = wheel_key(wheel.name)
        if pins.get(name) != version or name in found:
            continue
        # Hard links: the CUDA wheels are gigabytes; a copy per image would be waste.
        os.link(wheel, context / "wheels" / wheel.name)
        found.add(name)
        if wheel in built:
            digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
            lock_text = with_hash(lock_text, name, digest)
    missing = sorted(set(pins) - found)
    if missing:
        raise BuildError(
            f"no downloaded wheel for {', '.join(missing)} (see {WORK}/download-*.log)"
        )
    (context / "requirements.txt").write_text(lock_text)
    os.link(package_wheel, context / "package" / package_wheel.name)
    return context


def git_revision() -> str:
    """The commit being built (with `-dirty` when the working tree has changes), or `unknown`."""
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
    )
    if head.returncode != 0:
        return "unknown"
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return head.stdout.strip() + ("-dirty" if dirty else "")


def source_url() -> str:
    """Where the source lives: pyproject's Source/Repository URL, else git's origin remote."""
    import tomllib

    urls = tomllib.loads((REPO / "pyproject.toml").read_text())["project"].get("urls", {})
    for key in ("Source", "Repository", "Homepage"):
        if urls.get(key):
            return urls[key]
    origin = subprocess.run(
        ["git", "remote", "get-url", "origin"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    # Never publish credentials that a clone URL may carry.
    return re.sub(r"//[^/@]+@", "//", origin)


def build_image(
    docker: str,
    image: str,
    context: Path,
    tag: str,
    base_image: str | None,
    labels: dict[str, str],
    no_cache: bool = False,
) -> float:
    """Runs `docker build` for one image; returns the seconds it took."""
    from kfp_lightning.components.common import images

    command = [
        docker, "build", "--network", "host", "--progress", "plain",
        "--file", str(IMAGES_DIR / "Dockerfile"), "--tag", tag,
        "--build-arg", f"TITLE={images.DISTRIBUTION}-{image}",
        "--build-arg", f"DESCRIPTION={images.DESCRIPTIONS[image]}",
    ]  # fmt: skip
    if base_image:
        command += ["--build-arg", f"BASE_IMAGE={base_image}"]
    if no_cache:
        command.append("--no-cache")
    for key, value in labels.items():
        command += ["--build-arg", f"{key}={value}"]
    started = time.monotonic()
    run_logged(
        f"docker build of {image}",
        [*command, str(context)],
        WORK / f"build-{image}.log",
        {**os.environ, "DOCKER_BUILDKIT": "1"},
    )
    return time.monotonic() - started


def image_size(docker: str, tag: str) -> int:
    """The uncompressed size of a local image, in bytes."""
    out = subprocess.run(
        [docker, "image", "inspect", "--format", "{{.Size}}", tag],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip())


# Both of Docker's image stores end a push with "<tag>: digest: <manifest digest> size: <bytes>":
# moby/moby distribution/push_v2.go (graph drivers) and daemon/containerd/image_push.go.
_PUSHED_DIGEST = re.compile(r"^\S+: digest: (sha256:[0-9a-f]{64}) size: \d+$", re.MULTILINE)


def push_image(docker: str, tag: str, log: Path) -> str:
    """Pushes one image with `docker push`; returns the digest of the manifest the registry holds.

    Args:
        docker: The docker command.
        tag: The local tag to push, `<registry>/<repository>:<tag>`.
        log: File for the push's output.

    Returns:
        The manifest digest, `sha256:<64 hex>`: what a reference pins with `@`.

    Raises:
        BuildError: The push failed, or Docker reported no digest for it.
    """
    run_logged(f"docker push of {tag}", [docker, "push", tag], log)
    digests = _PUSHED_DIGEST.findall(log.read_text())
    if not digests:
        raise BuildError(f"docker push of {tag} reported no manifest digest (log: {log})")
    return digests[-1]


def pinned_ref(tag: str, digest: str) -> str:
    """`<registry>/<repository>@<digest>` for a tag `<registry>/<repository>:<tag>`."""
    return f"{tag.rsplit(':', 1)[0]}@{digest}"


def build(
    names: Sequence[str],
    registry: str | None = None,
    base_image: str | None = None,
    local_base: bool = False,
    push: bool = False,
    no_cache: bool = False,
) -> dict[str, str]:
    """Builds the named images and, with `push`, pushes them once every build has succeeded.

    A failed build pushes nothing, so a registry never holds part of a set built from one
    source. A push that fails after others succeeded is reported with what was pushed.

    Args:
        names: Image names, each one of `components.common.images.IMAGE_NAMES`.
        registry: Registry prefix for the tags (default: components/common/images.py's).
        base_image: Base image of every image (default: the Dockerfile's pinned one).
        local_base: Build and use the debootstrap base instead (excludes `base_image`).
        push: Push the images after building them all.
        no_cache: Rebuild every layer (picks up Debian's updates, which a cached layer hides).

    Returns:
        Image name -> its reference: the tag, or with `push` the pushed manifest pinned by
        digest (`<registry>/<repository>@sha256:...`).

    Raises:
        BuildError: A step failed; the message names it and its log.
    """
    from kfp_lightning.components.common import images

    if registry is not None:
        images.use_registry(registry)
    docker = docker_cli()
    if local_base:
        base_image = LOCAL_BASE_IMAGE
        run_logged(
            "building the base image",
            ["bash", str(IMAGES_DIR / "base-image.sh"), LOCAL_BASE_IMAGE],
            WORK / "base-image.log",
            {**os.environ, "DOCKER": docker},
        )
    started = time.monotonic()
    download_wheels([IMAGES_DIR / name / "requirements.txt" for name in names])
    build_sdist_wheels()
    package_wheel = build_package_wheel(WORK / "package")
    print(f"wheels ready in {time.monotonic() - started:.0f}s", flush=True)
    labels = {
        "VERSION": images.package_version(),
        "REVISION": git_revision(),
        "SOURCE": source_url(),
    }
    refs = {}
    for name in names:
        tag = images.image_tag(name)
        seconds = build_image(
            docker, name, stage_context(name, package_wheel), tag, base_image, labels, no_cache
        )
        size = image_size(docker, tag) / 1e9
        print(f"built {tag} in {seconds:.0f}s ({size:.2f} GB)", flush=True)
        refs[name] = tag
    if not push:
        return refs
    pushed: list[str] = []
    for name, tag in refs.items():
        started = time.monotonic()
        try:
            digest = push_image(docker, tag, WORK / f"push-{name}.log")
        except BuildError as err:
            if pushed:
                raise BuildError(f"{err}\nalready pushed: {', '.join(pushed)}") from err
            raise
        refs[name] = pinned_ref(tag, digest)
        images.record_pushed(tag, digest)  # what --compile names from now on
        pushed.append(tag)
        print(f"pushed {tag} in {time.monotonic() - started:.0f}s: {refs[name]}", flush=True)
    return refs


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parses and validates the command line; exits with a one-line error on bad input."""
    from kfp_lightning.components.common import images

    parser = argparse.ArgumentParser(
        prog="python images/build.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--image",
        action="append",
        metavar="NAME",
        help=f"image to build, repeatable (default: all of {', '.join(images.IMAGE_NAMES)})",
    )
    parser.add_argument(
        "--image-registry",
        metavar="PREFIX",
        help=f"registry prefix of the tags (default: ${images.REGISTRY_ENV}, "
        f"else {images.DEFAULT_REGISTRY})",
    )
    base = parser.add_mutually_exclusive_group()
    base.add_argument("--base-image", metavar="IMAGE", help="base image (a Debian bookworm)")
    base.add_argument(
        "--local-base",
        action="store_true",
        help=f"build the base with debootstrap as {LOCAL_BASE_IMAGE} and use it",
    )
    parser.add_argument(
        "--push",
        action="store_true",
        help="push the images once all are built, printing each one's digest",
    )
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="rebuild every layer, e.g. for a release (picks up Debian's security updates)",
    )
    # One line, like every other error here, instead of argparse's usage block.
    parser.error = _exit  # type: ignore[method-assign]
    args = parser.parse_args(argv)
    args.image = list(dict.fromkeys(args.image or images.IMAGE_NAMES))
    for name in args.image:
        if name not in images.IMAGE_NAMES:
            _exit(f"invalid --image={name!r}: expected one of {', '.join(images.IMAGE_NAMES)}")
        if not (IMAGES_DIR / name / "requirements.txt").is_file():
            _exit(f"invalid --image={name!r}: images/{name}/requirements.txt does not exist")
    if args.base_image is not None and not args.base_image.strip():
        _exit("invalid --base-image='': expected an image reference such as debian:bookworm-slim")
    try:
        if args.image_registry is not None:
            images.use_registry(args.image_registry)
        images.registry()  # $KFP_LIGHTNING_IMAGE_REGISTRY otherwise: judged before any build
    except ValueError as err:
        _exit(str(err))
    return args


def _exit(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python images/build.py`."""
    args = parse_args(argv)
    started = time.monotonic()
    try:
        build(
            args.image,
            args.image_registry,
            args.base_image,
            args.local_base,
            args.push,
            args.no_cache,
        )
    except BuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"done in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
