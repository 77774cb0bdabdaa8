"""The Plotly library the report inlines: plotly.js's official "basic" partial bundle, vendored.

The page draws scatter traces only (figures.py: `go.Scatter`, nothing else), with the layout
features every plotly.js bundle has (axes, hover, zoom and pan, shapes, annotations, the mode
bar). plotly.js publishes partial bundles of some trace types each (basic, cartesian, geo,
gl3d, gl2d, map, finance, strict: "Partial bundles" in plotly/plotly.js dist/README.md);
`plotly.js-basic-dist-min` (trace modules scatter, bar and pie: its README.md) is the smallest
that has scatter: 1.19 MB of JavaScript, against the 4.8 MB full bundle that plotly.py ships.

Why it is vendored: plotly.py ships only the full bundle (plotly/package_data/plotly.min.js),
and nothing may be fetched when the report is written: the tools image is built offline from
locked wheels (images/build.py) and an air-gapped cluster has no network at all. The file in
vendor/ is the npm tarball exactly as `npm pack plotly.js-basic-dist-min@4.1.1` fetched it, so
its sha512 is the registry's `dist.integrity` (`npm view plotly.js-basic-dist-min@4.1.1 dist`)
and anyone can check it; its MIT licence is beside it. tests/test_report_bundle.py checks that
digest, and that the bundle's plotly.js version is the one plotly.py bundles, so upgrading
plotly fails a test until this file follows.

To update: `npm pack plotly.js-basic-dist-min@<plotly.js version>` (the version is
`plotly.offline.get_plotlyjs_version()`) into vendor/, replace the licence file with the
tarball's LICENSE, the old files removed, and set VERSION and NPM_INTEGRITY below from
`npm view plotly.js-basic-dist-min@<version> dist.integrity`.
"""

from __future__ import annotations

import functools
import io
import tarfile
from importlib import resources

NPM_PACKAGE = "plotly.js-basic-dist-min"
VERSION = "4.1.1"
# `dist.integrity` of the tarball in the npm registry (Subresource Integrity format).
NPM_INTEGRITY = (
    "sha512-1oNF8PeQx2hv/y7tqEVWKD3JGwn/MGEMQ8mL9HUwsaqG9FGy/"
    "OU5FHUHvzqbqxN4mnwZGI9abTiE775C4kkjMQ=="
)
TARBALL = f"{NPM_PACKAGE}-{VERSION}.tgz"  # the name `npm pack` gives it
LICENSE = f"{NPM_PACKAGE}-{VERSION}.LICENSE"
SCRIPT_MEMBER = "package/plotly-basic.min.js"  # the package's `main` (its package.json)


def vendored_file(name: str) -> bytes:
    """The bytes of a file in vendor/ (package data of the installed package)."""
    return resources.files(__package__).joinpath("vendor", name).read_bytes()


@functools.cache
def plotly_js() -> str:
    """The bundle's JavaScript, read from the vendored npm tarball (about 10 ms, once)."""
    with tarfile.open(fileobj=io.BytesIO(vendored_file(TARBALL)), mode="r:gz") as tarball:
        member = tarball.extractfile(SCRIPT_MEMBER)
        if member is None:  # only a regular file has content
            raise RuntimeError(f"{TARBALL}: {SCRIPT_MEMBER} is not a file")
        return member.read().decode("utf-8")
