"""Parsing and validation of the URLs and URIs users type into run parameters."""

from __future__ import annotations

from urllib.parse import urlparse

from kfp_lightning.components.common.errors import invalid

MIRROR_SCHEMES = ("http", "https", "file")


def parse_mirrors(
    mirror: str, default: tuple[str, ...], parameter: str = "mirror"
) -> tuple[str, ...]:
    """Splits a comma- or space-separated list of mirror base URLs and validates each one.

    Args:
        mirror: User value; empty means `default`.
        default: Mirrors used when `mirror` is empty.
        parameter: Parameter name used in error messages.

    Returns:
        Base URLs, each ending with "/".

    Raises:
        UserInputError: When a URL has another scheme, no host (http/https) or no path (file).
    """
    urls = [u for u in mirror.replace(",", " ").split() if u] or list(default)
    parsed = []
    for url in urls:
        parts = urlparse(url)
        ok = parts.scheme in MIRROR_SCHEMES and (
            bool(parts.netloc) if parts.scheme != "file" else bool(parts.path)
        )
        if not ok or parts.query or parts.fragment:
            raise invalid(
                parameter,
                url,
                "empty (the public MNIST mirrors) or base URLs of the form http(s)://host/path/ "
                "or file:///path/, separated by commas",
            )
        parsed.append(url if url.endswith("/") else url + "/")
    return tuple(parsed)
