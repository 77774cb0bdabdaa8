"""The container images' sources, without Docker: names and tags, locks, the Dockerfile, scripts.

The images are built from `images/<name>/` and referenced by `components/common/images.py`;
these tests hold the two together, hold each lock to pyproject.toml (the lock may only pin what
pyproject leads to, at versions it allows, with hashes; kfp exactly as the compiler's), and
check the parts of the build that need no Docker: argument errors, the staged context, the
package wheel.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from kfp_lightning.components.common import images

REPO = Path(__file__).resolve().parents[1]
IMAGES_DIR = REPO / "images"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"images_{name}", IMAGES_DIR / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lock = _load_script("lock")
build = _load_script("build")


def _lock_entries(image: str) -> dict[str, dict]:
    """name -> {"version", "hashes", "via"} parsed from the image's pip-compile output."""
    entries: dict[str, dict] = {}
    current = None
    in_via = False
    for line in (IMAGES_DIR / image / "requirements.txt").read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line):
            current = lock.canonical_name(match[1])
            entries[current] = {"version": match[2], "hashes": [], "via": set()}
            in_via = False
        elif current and (digest := re.search(r"--hash=sha256:([0-9a-f]{64})", line)):
            entries[current]["hashes"].append(digest[1])
        elif current and (via := re.match(r"^\s+# via (\S.*)$", line)):
            entries[current]["via"].add(via[1].strip())
        elif current and re.match(r"^\s+# via$", line):
            in_via = True
        elif current and in_via and (parent := re.match(r"^\s+#\s+(\S.*)$", line)):
            entries[current]["via"].add(parent[1].strip())
        else:
            in_via = False
    return entries


# --- names and references ------------------------------------------------------------------


def test_every_image_name_has_a_lock_and_nothing_else_does():
    folders = {path.parent.name for path in IMAGES_DIR.glob("*/requirements.txt")}
    assert folders == set(images.IMAGE_NAMES)
    assert set(images.DESCRIPTIONS) == set(images.IMAGE_NAMES)
    assert set(lock.IMAGE_NAMES) == set(images.IMAGE_NAMES)


def test_references_carry_the_package_version(monkeypatch):
    monkeypatch.delenv(images.REGISTRY_ENV, raising=False)
    version = PYPROJECT["project"]["version"]
    # The installed package is what the tag is read from: a stale install would mistag.
    assert metadata.version("kfp-lightning") == version
    for name in images.IMAGE_NAMES:
        assert images.image_ref(name) == f"{images.DEFAULT_REGISTRY}/kfp-lightning-{name}:{version}"


def test_build_tags_follow_the_registry_override(monkeypatch):
    monkeypatch.setenv(images.REGISTRY_ENV, "registry.example.com:5000/ml/")
    assert images.image_ref(images.TOOLS).startswith("registry.example.com:5000/ml/kfp-lightning-")


# --- locks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("image", images.IMAGE_NAMES)
def test_lock_input_matches_pyproject(image):
    written = (IMAGES_DIR / image / "requirements.in").read_text()
    assert written == lock.render_input(image), "pyproject changed: run `python images/lock.py`"


@pytest.mark.parametrize("image", images.IMAGE_NAMES)
def test_lock_satisfies_every_requirement_of_the_image(image):
    entries = _lock_entries(image)
    for text in lock.image_requirements(image):
        requirement = Requirement(text)
        name = lock.canonical_name(requirement.name)
        assert name in entries, f"{name} is not locked: run `python images/lock.py`"
        version = entries[name]["version"]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{name}=={version} does not satisfy {text}: run `python images/lock.py`"
        )


@pytest.mark.parametrize("image", images.IMAGE_NAMES)
def test_lock_names_nothing_pyproject_does_not_lead_to(image):
    entries = _lock_entries(image)
    root = f"-r images/{image}/requirements.in"
    reached = {name for name, entry in entries.items() if root in entry["via"]}
    assert reached == {lock.requirement_name(r) for r in lock.image_requirements(image)}
    # Walk pip-compile's "via" annotations down from pyproject's requirements.
    changed = True
    while changed:
        changed = False
        for name, entry in entries.items():
            parents = {lock.canonical_name(v) for v in entry["via"]}
            if name not in reached and parents & reached:
                reached.add(name)
                changed = True
    assert set(entries) - reached == set()
    for name in lock.EXCLUDED[image]:
        assert name not in entries


@pytest.mark.parametrize("image", images.IMAGE_NAMES)
def test_lock_pins_every_package_with_hashes_and_names_no_source(image):
    text = (IMAGES_DIR / image / "requirements.txt").read_text()
    entries = _lock_entries(image)
    assert entries
    for name, entry in entries.items():
        Version(entry["version"])  # exact, parseable versions only
        assert entry["hashes"], f"{name} has no hash"
    # A lock made on one machine must work on any: no index, mirror or local path in it.
    assert not re.search(r"--(extra-)?index-url|--find-links|--trusted-host|file://", text)
    assert "pip-compile" in text
    assert "python images/lock.py" in text


def test_tools_lock_has_no_torch_and_trainer_has_the_cuda_build():
    tools, trainer = _lock_entries("tools"), _lock_entries("trainer")
    assert not {"torch", "torchvision", "lightning", "triton"} & set(tools)
    assert not [name for name in tools if name.startswith("nvidia-")]
    # The PyPI torch wheel for Linux bundles CUDA through these.
    assert {"torch", "torchvision", "lightning", "nvidia-cudnn-cu13"} <= set(trainer)


@pytest.mark.parametrize("image", images.IMAGE_NAMES)
def test_kfp_in_every_image_is_the_compiler(image):
    pinned = {
        lock.requirement_name(text): str(Requirement(text).specifier)
        for text in PYPROJECT["project"]["dependencies"]
    }
    entries = _lock_entries(image)
    for name in ("kfp", "kfp-kubernetes"):
        assert pinned[name] == f"=={entries[name]['version']}"
        # The YAML is compiled by the kfp installed here; the executor in the image must match.
        assert metadata.version(name) == entries[name]["version"]


# --- Dockerfiles ----------------------------------------------------------------------------


DOCKERFILE = IMAGES_DIR / "Dockerfile"  # one file builds every image


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert list(IMAGES_DIR.rglob("Dockerfile")) == [DOCKERFILE]


def test_dockerfile_base_user_and_labels():
    text = DOCKERFILE.read_text()
    (default,) = re.findall(r"^ARG BASE_IMAGE=(\S+)$", text, re.MULTILINE)
    # A pinned default (a dated tag or a digest): one base to mirror.
    assert re.search(r"-\d{8}(-slim)?$|@sha256:[0-9a-f]{64}$", default), default
    assert re.search(r"^FROM \$\{BASE_IMAGE\}", text, re.MULTILINE)
    final_stage = text.rsplit("\nFROM ", 1)[1]
    users = re.findall(r"^USER (\S+)$", final_stage, re.MULTILINE)
    # Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert len(users) == 1
    assert users[0].isdigit()
    assert int(users[0]) != 0
    # Each image's title and description come from components/common/images.py through build.py.
    for key in ("title", "description", "version", "revision", "source"):
        assert re.search(rf"org\.opencontainers\.image\.{key}=\"\$\{{\w+\}}\"", final_stage)
    # Installs are offline from the staged wheels, each one checked against the lock's hashes.
    assert "--require-hashes" in text
    assert "--no-index" in text
    assert "--no-cache-dir" in text


# --- scripts --------------------------------------------------------------------------------


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["images/build.py", "--image", "gpu"],
            "error: invalid --image='gpu': expected one of trainer, tools",
        ),
        (
            ["images/build.py", "--image-registry", "Bad Registry"],
            "error: invalid image_registry='Bad Registry'",
        ),
        (
            ["images/lock.py", "--image", "gpu"],
            "error: invalid --image='gpu': expected one of trainer, tools",
        ),
    ],
)
def test_scripts_reject_bad_input_in_one_line(args, message):
    result = _run(*args)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(message)
    assert len(result.stderr.strip().splitlines()) == 1


def test_build_refuses_a_bad_registry_in_the_environment_before_building():
    # As --image-registry is: before any wheel is fetched or layer built (minutes otherwise).
    result = subprocess.run(
        [sys.executable, "images/build.py", "--image", "tools"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "KFP_LIGHTNING_IMAGE_REGISTRY": "bad reg"},
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "error: invalid KFP_LIGHTNING_IMAGE_REGISTRY='bad reg': expected a registry prefix such "
        "as registry.example.com/ml\n"
    )


def test_make_images_passes_the_registry_as_one_value():
    # The README's `make images IMAGE_REGISTRY=...`: a value with a space is judged whole, not
    # split by the recipe's shell into an unknown argument. `-o` keeps make from setting up.
    venv = Path(sys.executable).parents[1]
    result = subprocess.run(
        [
            "make",
            "-s",
            f"VENV={venv}",
            "-o",
            f"{venv}/.installed",
            "images",
            "IMAGE_REGISTRY=Bad Reg",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 2
    assert "error: invalid image_registry='Bad Reg': expected a registry prefix" in result.stderr


def test_staged_context_holds_exactly_the_locked_wheels(tmp_path, monkeypatch):
    work = tmp_path / "work"
    cache = work / "wheels"
    (cache / "built").mkdir(parents=True)
    lock_file = IMAGES_DIR / "tools" / "requirements.txt"
    pins = build.locked_pins(lock_file)
    for name, version in pins.items():
        # kfp-server-api is published as a source archive only: its wheel is built here.
        folder = cache / "built" if name == "kfp-server-api" else cache
        (folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl").write_bytes(b"w")
    # Older downloads and the other image's wheels stay in the cache, out of this context.
    (cache / "kfp-1.8.22-py3-none-any.whl").write_bytes(b"old")
    (cache / "torch-2.14.1-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"t")
    package = tmp_path / "kfp_lightning-0.1.0-py3-none-any.whl"
    package.write_bytes(b"p")
    monkeypatch.setattr(build, "WORK", work)
    monkeypatch.setattr(build, "WHEEL_CACHE", cache)

    context = build.stage_context("tools", package)

    staged = {build.wheel_key(path.name) for path in (context / "wheels").iterdir()}
    assert staged == set(pins.items())
    assert [p.name for p in (context / "package").iterdir()] == [package.name]
    # The staged lock is the lock, but for the built wheel's hash in place of the archive's.
    built_hash = hashlib.sha256(b"w").hexdigest()
    original, staged_lock = lock_file.read_text(), (context / "requirements.txt").read_text()
    entry = re.compile(r"^kfp-server-api==\S+ \\\n((?:\s+--hash=\S+(?: \\)?\n)+)", re.M)
    assert re.findall(r"sha256:(\w+)", entry.search(staged_lock)[1]) == [built_hash]
    assert entry.sub("", original) == entry.sub("", staged_lock)

    next(cache.glob("kfp-2*.whl")).unlink()
    with pytest.raises(build.BuildError, match=r"no downloaded wheel for kfp\b"):
        build.stage_context("tools", package)


def test_download_is_skipped_when_every_locked_file_is_cached(tmp_path, monkeypatch):
    cache = tmp_path / "wheels"
    cache.mkdir()
    lock_file = IMAGES_DIR / "tools" / "requirements.txt"
    for name, version in build.locked_pins(lock_file).items():
        (cache / f"{name.replace('-', '_')}-{version}-py3-none-any.whl").write_bytes(b"w")
    monkeypatch.setattr(build, "WORK", tmp_path)
    monkeypatch.setattr(build, "WHEEL_CACHE", cache)
    # pip would reject these stand-in files (their hashes are not the lock's); it is not run.
    build.download_wheels([lock_file])
    assert not list(tmp_path.glob("download-*.log"))
    # One missing: pip runs (here with no package source, so it fails, offline).
    next(cache.glob("kfp-2*.whl")).unlink()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "nowhere"))
    with pytest.raises(build.BuildError, match="pip download for tools failed"):
        build.download_wheels([lock_file])


def test_package_wheel_carries_every_module(tmp_path):
    """What the images install is the wheel: every module of the source tree must be in it."""
    wheel = build.build_package_wheel(tmp_path / "package", isolated=False)
    shipped = {name for name in zipfile.ZipFile(wheel).namelist() if name.endswith(".py")}
    expected = {
        f"kfp_lightning/{path.relative_to(REPO).as_posix()}"
        for folder in ("components", "pipelines")
        for path in (REPO / folder).rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert sorted(expected - shipped) == []


def test_pinned_reference_keeps_the_registry_port():
    digest = "sha256:" + "0" * 64
    tag = "127.0.0.1:5000/ml/kfp-lightning-tools:0.1.0"
    assert build.pinned_ref(tag, digest) == f"127.0.0.1:5000/ml/kfp-lightning-tools@{digest}"
