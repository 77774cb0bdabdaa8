"""Kubernetes' own syntax rules for names, labels and tolerations, checked before a run starts.

A node selector or toleration typed into the run form only reaches Kubernetes when the
training pod is created, minutes into the run; an invalid one then fails with an API error far
from its cause. These checks give the one-line error up front instead.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

from kfp_lightning.components.common.errors import invalid

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_QUALIFIED_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
TOLERATION_FIELDS = {"key", "operator", "value", "effect", "tolerationSeconds"}
TOLERATION_OPERATORS = ("Exists", "Equal")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
TOLERATION_EXAMPLE = '{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}'


DIGEST_LENGTH = 10


def digest(text: str) -> str:
    """A short, stable digest of `text`, valid in object names and label values."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:DIGEST_LENGTH]


def name_for_run(prefix: str, run_id: str, max_length: int) -> str:
    """An RFC 1035 label naming one run's object: `prefix` + the run id, at most `max_length`.

    Run ids are UUIDs, which may start with a digit, hence the prefix (starting with a
    letter). A run id that is already lowercase alphanumerics and single hyphens is used as
    is, so the name shows which run it serves; anything else is shortened and given a digest
    of the full id, so distinct runs never share a name and a retry always finds its own.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", run_id.lower()).strip("-")
    name = prefix + slug
    if slug == run_id and len(name) <= max_length:
        return name
    head = name[: max_length - DIGEST_LENGTH - 1].rstrip("-")
    return f"{head}-{digest(run_id)}"


def is_dns1123_label(value: str) -> bool:
    """A Kubernetes object name of the strictest kind (Services, namespaces): <= 63 chars."""
    return len(value) <= 63 and bool(_DNS1123_LABEL.fullmatch(value))


def is_dns1123_subdomain(value: str) -> bool:
    """A Kubernetes object name (Secrets, custom resources): dot-separated labels, <= 253."""
    return 0 < len(value) <= 253 and all(is_dns1123_label(p) for p in value.split("."))


def is_label_key(value: str) -> bool:
    """A label key: [prefix/]name, prefix a DNS subdomain, name <= 63 chars."""
    prefix, _, name = value.rpartition("/")
    if prefix and not is_dns1123_subdomain(prefix):
        return False
    return 0 < len(name) <= 63 and bool(_QUALIFIED_NAME.fullmatch(name))


def is_label_value(value: str) -> bool:
    """A label value: empty, or <= 63 chars of alphanumerics and -_. inside."""
    return value == "" or (len(value) <= 63 and bool(_QUALIFIED_NAME.fullmatch(value)))


def check_namespace_name(value: object, parameter: str = "namespace") -> str:
    """Returns `value` if it is a namespace name (an RFC 1123 label, no dots); else raises."""
    if not isinstance(value, str) or not is_dns1123_label(value):
        accepted = "a Kubernetes namespace name (lowercase letters, digits and -)"
        raise invalid(parameter, value, accepted)
    return value


def check_secret_name(value: object, parameter: str) -> str:
    """Validates the name of a Secret."""
    if not isinstance(value, str) or not is_dns1123_subdomain(value):
        raise invalid(parameter, value, "a Kubernetes object name (lowercase, digits, - and .)")
    return value


def check_node_selector(value: object, parameter: str = "node_selector") -> dict[str, str]:
    """Validates a nodeSelector: a JSON object of label keys to label values."""
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) and is_label_key(k) and is_label_value(v)
        for k, v in value.items()
    ):
        raise invalid(parameter, value, 'a JSON object of node labels, e.g. {"gpu-type": "l4"}')
    return dict(value)


def check_tolerations(value: object, parameter: str = "tolerations") -> list[dict[str, object]]:
    """Validates a list of tolerations as the Kubernetes API would.

    Each field is checked as Kubernetes reads it (`ValidateTolerations` in kubernetes/kubernetes,
    pkg/apis/core/validation/validation.go), a left-out field taking Kubernetes' default, and a
    refusal names the entry and field, e.g. `tolerations[0].operator`.

    Raises:
        UserInputError: Not a list of Toleration objects, or a field Kubernetes would refuse.
    """
    if not isinstance(value, list):
        raise invalid(parameter, value, "a JSON list of Kubernetes Toleration objects")
    for index, toleration in enumerate(value):
        entry = f"{parameter}[{index}]"
        if not isinstance(toleration, Mapping):
            raise invalid(entry, toleration, f"a Toleration object, e.g. {TOLERATION_EXAMPLE}")
        if unknown := sorted(set(toleration) - TOLERATION_FIELDS):
            fields = ", ".join(sorted(TOLERATION_FIELDS))
            raise invalid(
                f"{entry}.{unknown[0]}", toleration[unknown[0]], f"only the fields {fields}"
            )
        key = toleration.get("key", "")
        operator = toleration.get("operator", "Equal")
        tolerated = toleration.get("value", "")
        effect = toleration.get("effect", "")
        seconds = toleration.get("tolerationSeconds")
        if operator not in TOLERATION_OPERATORS:
            raise invalid(f"{entry}.operator", operator, " or ".join(TOLERATION_OPERATORS))
        # An empty key matches every taint, which only operator Exists may ask for.
        any_key = key == "" and operator == "Exists"
        if not (isinstance(key, str) and (is_label_key(key) or any_key)):
            accepted = 'a label key, e.g. nvidia.com/gpu (or "" with operator Exists)'
            raise invalid(f"{entry}.key", key, accepted)
        if not (isinstance(tolerated, str) and is_label_value(tolerated)):
            raise invalid(f"{entry}.value", tolerated, "a label value")
        if operator == "Exists" and tolerated:
            raise invalid(f"{entry}.value", tolerated, "none with operator Exists")
        if effect != "" and effect not in TAINT_EFFECTS:
            raise invalid(f"{entry}.effect", effect, f'{", ".join(TAINT_EFFECTS)} or "" (any)')
        if seconds is not None and (
            not isinstance(seconds, int) or isinstance(seconds, bool) or effect != "NoExecute"
        ):
            accepted = "whole seconds, given only with effect NoExecute"
            raise invalid(f"{entry}.tolerationSeconds", seconds, accepted)
    return [dict(t) for t in value]
