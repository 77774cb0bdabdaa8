"""report_training: the vendored plotly.js bundle is the npm release it names, following plotly.

The report inlines plotly.js's "basic" partial bundle, vendored as the npm tarball
(components/report_training/report.py says why). Its digest is checked against the
registry's `dist.integrity` recorded in the code (`npm view plotly.js-basic-dist-min@4.1.1 dist`
prints the same), its version against the plotly.js that plotly.py bundles (a plotly upgrade
fails here until the vendored file follows), its trace types against what the page draws, and
the package wheel, which the images install, must carry it and the page's template.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import json
import re
import tarfile
import zipfile
from pathlib import Path

from plotly.offline import get_plotlyjs, get_plotlyjs_version

from kfp_lightning.components.report_training import report
from kfp_lightning.components.report_training.report import (
    LICENSE,
    NPM_INTEGRITY,
    NPM_PACKAGE,
    SCRIPT_MEMBER,
    TARBALL,
    VERSION,
    plotly_js,
    vendored_file,
    write_training_report,
)
from tests.report_fixtures import page_figures, write_classic_run

REPO = Path(__file__).resolve().parents[1]
VENDOR = REPO / "components" / "report_training" / "vendor"


def _member(name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(vendored_file(TARBALL)), mode="r:gz") as tarball:
        member = tarball.extractfile(name)
        assert member is not None, name
        return member.read()


def test_the_vendored_tarball_is_the_npm_release():
    # npm's integrity string is Subresource Integrity: the algorithm, then the digest in base64.
    algorithm, digest = NPM_INTEGRITY.split("-", 1)
    assert algorithm == "sha512"
    actual = base64.b64encode(hashlib.sha512(vendored_file(TARBALL)).digest()).decode()
    assert actual == digest
    package = json.loads(_member("package/package.json"))
    assert (package["name"], package["version"], package["license"]) == (
        NPM_PACKAGE,
        VERSION,
        "MIT",
    )
    assert f"package/{package['main']}" == SCRIPT_MEMBER


def test_the_bundle_is_the_plotly_js_that_plotly_py_bundles():
    # plotly.py's figures are validated against its own plotly.js; the page draws them with
    # this one, so the two must be the same release.
    assert get_plotlyjs_version() == VERSION
    header = plotly_js()[:200]
    assert f"plotly.js (basic - minified) v{VERSION}\n" in header
    assert f"plotly.js v{get_plotlyjs_version()}\n" in get_plotlyjs()[:200]


def test_the_licence_beside_the_tarball_is_its_own():
    assert vendored_file(LICENSE) == _member("package/LICENSE")
    assert b"MIT License" in vendored_file(LICENSE)
    # Nothing else in vendor/: an old release left behind would ship in every image.
    assert sorted(p.name for p in VENDOR.iterdir()) == sorted([LICENSE, TARBALL])


def test_the_bundle_has_every_trace_type_the_page_draws(tmp_path):
    # The package's README lists its trace modules.
    readme = _member("package/README.md").decode()
    (listed,) = re.findall(r"Contains trace modules (.*)\.", readme)
    modules = set(re.findall(r"`(\w+)`", listed))
    assert modules == {"bar", "pie", "scatter"}
    logs, evaluation = write_classic_run(tmp_path, 2)
    write_training_report(logs, evaluation, tmp_path / "r.html", tmp_path / "r.md")
    page = (tmp_path / "r.html").read_text()
    charts = page_figures(page).values()
    assert len(charts) == 3
    drawn = {trace["type"] for chart in charts for trace in chart["data"]}
    assert drawn == {"scatter"}
    assert drawn <= modules
    # The page inlines this bundle, not plotly.py's full one.
    assert plotly_js() in page
    assert get_plotlyjs()[:2000] not in page


def test_the_package_wheel_ships_the_bundle_and_the_template(tmp_path):
    """The images install the package wheel: the bundle and the page's template must be
    package data in it."""
    spec = importlib.util.spec_from_file_location("images_build", REPO / "images" / "build.py")
    assert spec is not None
    assert spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    wheel = build.build_package_wheel(tmp_path / "package", isolated=False)
    folder = "kfp_lightning/components/report_training/vendor"
    template = REPO / "components" / "report_training" / "templates" / "report.html.j2"
    with zipfile.ZipFile(wheel) as archive:
        for name in (TARBALL, LICENSE):
            assert archive.read(f"{folder}/{name}") == (VENDOR / name).read_bytes()
        package = "kfp_lightning/components/report_training"
        assert archive.read(f"{package}/templates/report.html.j2") == template.read_bytes()
    assert report.__package__ == "kfp_lightning.components.report_training"
