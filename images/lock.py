"""Regenerates each image's lock file from pyproject.toml: exact versions, with hashes.

    python images/lock.py [--image trainer|tools]... [--upgrade]

For every image it writes `images/<name>/requirements.in` (the project's runtime dependencies
that the image needs, copied from pyproject.toml) and compiles it with pip-tools into
`images/<name>/requirements.txt`: every package pinned to one version with the sha256 of each of
its published files, so `pip install --require-hashes` inside the build installs exactly that.
The trainer takes every dependency; the tools image leaves out torch, torchvision and Lightning,
which none of its components import. Resolution runs for the images' interpreter (CPython 3.11
on Linux x86_64), so run it with Python 3.11. Without `--upgrade`, versions already locked are
kept when they still satisfy pyproject.toml; resolving takes minutes (every pinned file is hashed).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

IMAGES_DIR = Path(__file__).resolve().parent
REPO = IMAGES_DIR.parent
PYPROJECT = REPO / "pyproject.toml"
IMAGE_NAMES = ("trainer", "tools")
# Project dependencies each image leaves out; the tools image must start fast and stay small.
# psutil serves only the command line (pipelines/cli.py), which no image runs.
EXCLUDED: dict[str, frozenset[str]] = {
    "trainer": frozenset({"psutil"}),
    "tools": frozenset({"torch", "torchvision", "lightning", "psutil"}),
}
# Debian bookworm's python3, which every image runs: the lock holds wheels for it.
TARGET_PYTHON = (3, 11)
INPUT_HEADER = (
    "# Generated from pyproject.toml by `python images/lock.py`: do not edit.\n"
    "# The project's runtime dependencies that the {image} image installs.\n"
)


def canonical_name(name: str) -> str:
    """The normalised form of a distribution name (PEP 503), for comparing names."""
    return re.sub(r"[-_.]+", "-", name).lower()


def project_dependencies(pyproject: Path = PYPROJECT) -> list[str]:
    """The `[project].dependencies` requirement strings of pyproject.toml, in file order."""
    import tomllib

    with pyproject.open("rb") as handle:
        return list(tomllib.load(handle)["project"]["dependencies"])


def requirement_name(requirement: str) -> str:
    """The canonical distribution name of a requirement string such as `torch>=2.9,<2.15`."""
    from packaging.requirements import Requirement

    return canonical_name(Requirement(requirement).name)


def image_requirements(image: str, pyproject: Path = PYPROJECT) -> list[str]:
    """The project dependencies that `image` installs (pyproject order).

    Args:
        image: One of `IMAGE_NAMES`.
        pyproject: The project file to read.

    Returns:
        Requirement strings exactly as pyproject.toml writes them.
    """
    if image not in EXCLUDED:
        raise ValueError(f"invalid image={image!r}: expected one of {', '.join(IMAGE_NAMES)}")
    return [
        requirement
        for requirement in project_dependencies(pyproject)
        if requirement_name(requirement) not in EXCLUDED[image]
    ]


def render_input(image: str, pyproject: Path = PYPROJECT) -> str:
    """The content of `images/<image>/requirements.in` for the current pyproject.toml."""
    lines = "".join(f"{requirement}\n" for requirement in image_requirements(image, pyproject))
    return INPUT_HEADER.format(image=image) + lines


def compile_command(image: str, upgrade: bool) -> list[str]:
    """The pip-compile command that turns the image's requirements.in into its lock."""
    folder = IMAGES_DIR / image
    command = [
        sys.executable,
        "-m",
        "piptools",
        "compile",
        "--quiet",
        "--generate-hashes",
        # setuptools is a runtime dependency of tensorboard and torch: it must be locked too,
        # or pip's hash checking refuses the install.
        "--allow-unsafe",
        "--strip-extras",
        # The lock must not name this machine's package sources.
        "--no-emit-index-url",
        "--no-emit-find-links",
        "--no-emit-trusted-host",
        "--output-file",
        str((folder / "requirements.txt").relative_to(REPO)),
        str((folder / "requirements.in").relative_to(REPO)),
    ]
    if upgrade:
        command.insert(command.index("--generate-hashes"), "--upgrade")
    return command


def lock(image: str, upgrade: bool = False) -> Path:
    """Writes the image's requirements.in and compiles its requirements.txt.

    Args:
        image: One of `IMAGE_NAMES`.
        upgrade: Re-resolve every package to its newest allowed version.

    Returns:
        The lock file written.
    """
    folder = IMAGES_DIR / image
    (folder / "requirements.in").write_text(render_input(image))
    # pip-compile writes this command into the lock's header as the way to regenerate it.
    env = {**os.environ, "CUSTOM_COMPILE_COMMAND": "python images/lock.py"}
    subprocess.run(compile_command(image, upgrade), cwd=REPO, env=env, check=True)
    return folder / "requirements.txt"


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _usage_error(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python images/lock.py`."""
    parser = argparse.ArgumentParser(
        prog="python images/lock.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--image",
        action="append",
        metavar="NAME",
        help=f"image to lock, repeatable (default: all of {', '.join(IMAGE_NAMES)})",
    )
    parser.add_argument(
        "--upgrade", action="store_true", help="re-resolve to the newest allowed versions"
    )
    # One line, like every other error here, instead of argparse's usage block.
    parser.error = _usage_error  # type: ignore[method-assign]
    args = parser.parse_args(argv)
    chosen = args.image or list(IMAGE_NAMES)
    for image in chosen:
        if image not in IMAGE_NAMES:
            return _fail(f"invalid --image={image!r}: expected one of {', '.join(IMAGE_NAMES)}")
    if sys.version_info[:2] != TARGET_PYTHON or platform.system() != "Linux":
        wanted = ".".join(map(str, TARGET_PYTHON))
        return _fail(
            f"invalid interpreter={platform.python_version()} on {platform.system()}: "
            f"expected Python {wanted} on Linux, the images' interpreter"
        )
    for image in chosen:
        print(f"locking {image} ...", flush=True)
        try:
            written = lock(image, upgrade=args.upgrade)
        except subprocess.CalledProcessError as err:
            return _fail(
                f"pip-compile failed for {image} (exit status {err.returncode}), see above"
            )
        print(written.relative_to(REPO))
    return 0


if __name__ == "__main__":
    sys.exit(main())
