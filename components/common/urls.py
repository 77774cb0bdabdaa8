"""Parsing and validation of the URLs and URIs users type into run parameters."""

from __future__ import annotations

from urllib.parse import urlparse

from kfp_lightning.components.common.errors import UserInputError, invalid

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
        UserInputError: When a URL has another scheme, no host (http/https), or a host or no
            absolute path (file).
    """
    urls = mirror.replace(",", " ").split() or list(default)
    parsed = []
    accepted = "comma-separated base URLs of the form http(s)://host/path/ or file:///path/"
    for url in urls:
        parts = urlparse(url)
        if parts.scheme == "file" and parts.netloc not in ("", "localhost"):
            # file://tmp/data/ names the host "tmp" (RFC 8089), not the directory /tmp/data/.
            raise invalid(
                parameter, url, f"file:///{parts.netloc}{parts.path} (three slashes for a path)"
            )
        ok = parts.scheme in MIRROR_SCHEMES and (
            bool(parts.netloc) if parts.scheme != "file" else parts.path.startswith("/")
        )
        if not ok or parts.query or parts.fragment:
            raise invalid(parameter, url, accepted)
        parsed.append(url if url.endswith("/") else url + "/")
    return tuple(parsed)


def parse_http_endpoint(value: str, parameter: str) -> str:
    """Validates an http(s)://host[:port] endpoint (no path, query or credentials).

    Args:
        value: The user's value.
        parameter: Parameter name used in error messages.

    Returns:
        The endpoint without a trailing "/".
    """
    parts = urlparse(value.strip())
    try:
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        port_ok = False
    well_formed = parts.scheme in ("http", "https") and parts.path in ("", "/") and parts.hostname
    # Credentials, a query or a fragment have no place in an endpoint.
    extras = parts.username or parts.password or parts.query or parts.fragment
    if not (well_formed and port_ok) or extras:
        raise invalid(parameter, value, "an endpoint of the form http(s)://host[:port]")
    return f"{parts.scheme}://{parts.netloc}"


def parse_base_url(value: str) -> str:
    """Validates `kubeflow_base_url`: "/" for relative links, or http(s)://host[:port].

    Args:
        value: The user's value.

    Returns:
        The prefix to put before `/tensorboard/...`: "" or the URL without trailing "/".
    """
    if value.strip() == "/":
        return ""
    try:
        return parse_http_endpoint(value, "kubeflow_base_url")
    except UserInputError:
        raise invalid(
            "kubeflow_base_url",
            value,
            "/ (links relative to the Kubeflow UI) or the Kubeflow URL, http(s)://host[:port]",
        ) from None
