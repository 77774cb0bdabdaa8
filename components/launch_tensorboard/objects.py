"""The Kubernetes objects that give one run a live TensorBoard: a Kubeflow `Tensorboard` and,
for `s3://` logs, the `PodDefault` that hands its pod the object store's credentials.

Kubeflow's tensorboard-controller turns a `Tensorboard` into a Deployment (running
`tensorboard --logdir=<spec.logspath>`), a ClusterIP Service and an Istio VirtualService at
`/tensorboard/<namespace>/<name>/`, and copies every label of the `Tensorboard` onto the pod.
It mounts `pvc://` claims itself but passes nothing for `s3://`: Kubeflow's admission webhook
adds a `PodDefault`'s environment to each new pod whose labels match its selector, so the
`Tensorboard` carries the label the `PodDefault` selects. That label follows the convention of
Kubeflow's Notebook and Tensorboards web apps (kubeflow/notebooks, branch notebooks-v1,
`components/crud-web-apps/{jupyter,tensorboards}/backend`: `routes/get.py` offers each PodDefault
under the first key of its `spec.selector.matchLabels`, and `form.py` / `utils.py` label the
chosen pod or Tensorboard `<that key>: "true"`), so users can pick our PodDefault in those forms
too. Everything here is a plain dict, deterministic in its inputs, so a retried task produces
the very same objects.
"""

from __future__ import annotations

from urllib.parse import urlparse

from kfp_lightning.components.common.kubernetes import MANAGED_BY, RUN_ID_ANNOTATION, RUN_ID_LABEL
from kfp_lightning.components.common.kubernetes_syntax import digest, is_label_value, name_for_run
from kfp_lightning.components.common.logs_location import LogsLocation
from kfp_lightning.components.common.storage import DEFAULT_REGION
from kfp_lightning.components.common.training_pod import S3_SECRET_KEYS

TENSORBOARD_API = ("tensorboard.kubeflow.org", "v1alpha1", "tensorboards", "Tensorboard")
PODDEFAULT_API = ("kubeflow.org", "v1alpha1", "poddefaults", "PodDefault")

# A PodDefault's selector key is this prefix + its name, so that each PodDefault has a key of
# its own (the web apps select by key alone, with the value "true").
PODDEFAULT_LABEL_PREFIX = "kfp-lightning/"
SELECTED = "true"


def tensorboard_name(run_id: str) -> str:
    """The name of a run's `Tensorboard`: a DNS-1123 label of at most 63 characters.

    A run id that is already lowercase alphanumerics and single hyphens (KFP's UUIDs) is used as
    is, so the name shows which run it serves; anything else is shortened and given a digest of
    the full id, so distinct runs never share a name and a retry always finds its own.

    Args:
        run_id: The pipeline run's id.

    Returns:
        `kfp-run-<run id>`, or `kfp-run-<shortened id>-<digest>`.
    """
    # The controller names the Service after the Tensorboard, and Service names must start with
    # a letter (DNS-1035): run ids are UUIDs, which may start with a digit. 63: a DNS-1123
    # label's limit.
    return name_for_run("kfp-run-", run_id, 63)


def poddefault_name(endpoint: str, secret: str) -> str:
    """The name of the `PodDefault` for one endpoint and credentials secret.

    One per (endpoint, secret) and namespace, shared by every run that uses them: the webhook
    applies it only while a pod is being created, so it must exist before any TensorBoard pod
    and for as long as one may be recreated (see the README for why it is not one per run).

    Args:
        endpoint: The S3 endpoint, http(s)://host[:port].
        secret: Name of the secret holding the access and secret keys.

    Returns:
        `kfp-lightning-s3-<digest>`.
    """
    return "kfp-lightning-s3-" + digest(f"{endpoint}\n{secret}")


def poddefault_label(poddefault: str) -> str:
    """The label key that selects a pod for the `PodDefault` named `poddefault`.

    A pod (or a `Tensorboard`, whose labels the controller copies to its pod) opts in with
    `<key>: "true"`, as Kubeflow's web apps label what a user picks in their forms.

    Args:
        poddefault: The PodDefault's name (`poddefault_name`).

    Returns:
        `kfp-lightning/<name>`.
    """
    return PODDEFAULT_LABEL_PREFIX + poddefault


def s3_environment(endpoint: str, secret: str) -> list[dict[str, object]]:
    """Environment that lets TensorBoard read `s3://` from an S3-compatible endpoint.

    Serves both readers TensorBoard may use: TensorFlow's S3 filesystem (the controller's default
    image) reads S3_ENDPOINT, S3_USE_HTTPS and AWS_REGION; TensorBoard without TensorFlow reads
    through boto3, which takes S3_ENDPOINT as its endpoint URL (scheme included) and
    AWS_DEFAULT_REGION. Both take the standard AWS key variables.

    Args:
        endpoint: http(s)://host[:port].
        secret: Secret with the keys `accesskey` and `secretkey`.

    Returns:
        Container `env` entries.
    """
    return [
        {"name": "S3_ENDPOINT", "value": endpoint},
        {"name": "S3_USE_HTTPS", "value": "1" if urlparse(endpoint).scheme == "https" else "0"},
        {"name": "AWS_REGION", "value": DEFAULT_REGION},
        {"name": "AWS_DEFAULT_REGION", "value": DEFAULT_REGION},
    ] + [  # AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY
        {"name": variable, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
        for key, variable in S3_SECRET_KEYS.items()
    ]


def _custom_object(api: tuple[str, str, str, str], metadata: dict, spec: dict) -> dict[str, object]:
    """An object of `api`, (group, version, plural, kind)."""
    group, version, _, kind = api
    return {"apiVersion": f"{group}/{version}", "kind": kind, "metadata": metadata, "spec": spec}


def poddefault_object(namespace: str, endpoint: str, secret: str) -> dict[str, object]:
    """The `PodDefault` giving pods labelled for it the S3 endpoint and credentials.

    Args:
        namespace: The run's namespace (a Kubeflow profile).
        endpoint: http(s)://host[:port].
        secret: Secret with the keys `accesskey` and `secretkey`.

    Returns:
        The object, ready to create.
    """
    name = poddefault_name(endpoint, secret)
    metadata = {"name": name, "namespace": namespace, "labels": dict(MANAGED_BY)}
    spec = {
        "desc": f"S3 access to {endpoint} with secret {secret} (kfp-lightning TensorBoards)",
        "selector": {"matchLabels": {poddefault_label(name): SELECTED}},
        "env": s3_environment(endpoint, secret),
    }
    return _custom_object(PODDEFAULT_API, metadata, spec)


def tensorboard_object(
    namespace: str,
    run_id: str,
    location: LogsLocation,
    poddefault: str | None = None,
    name: str | None = None,
) -> dict[str, object]:
    """The Kubeflow `Tensorboard` of one run (or, with `name`, of every run under a root).

    Args:
        namespace: The run's namespace.
        run_id: The pipeline run's id.
        location: The run's live logs (s3:// or pvc://), which becomes `spec.logspath`.
        poddefault: Name of the `PodDefault` the pod must match (s3:// only): the
            `Tensorboard` is labelled `poddefault_label(poddefault): "true"`.
        name: The object's name, when it is not the run's (`tensorboard_name(run_id)`).

    Returns:
        The object, ready to create.
    """
    # Label values are limited to 63 characters; the annotation keeps the full id regardless.
    labels = {**MANAGED_BY, RUN_ID_LABEL: run_id if is_label_value(run_id) else digest(run_id)}
    if poddefault:
        labels[poddefault_label(poddefault)] = SELECTED
    metadata = {
        "name": name or tensorboard_name(run_id),
        "namespace": namespace,
        "labels": labels,
        "annotations": {RUN_ID_ANNOTATION: run_id},
    }
    # For pvc:// the controller mounts the claim read-only with the path as subPath
    # (kubeflow/kubeflow, components/tensorboard-controller/controllers/tensorboard_controller.go).
    # A subPath that does not exist yet is made by the kubelet, as root with the claim root's
    # mode (kubernetes/kubernetes, pkg/kubelet/kubelet_pods.go, makeMounts), before training
    # writes it: hence the README's rule that the claim be writable by group 0 or by all.
    return _custom_object(TENSORBOARD_API, metadata, {"logspath": location.uri})
