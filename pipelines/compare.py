"""One TensorBoard over every run's logs, to compare runs side by side.

Every run writes its logs under the same root, one folder per run (named by the run id, and
inside it a folder named after the run's display name, which is TensorBoard's name for it).
`--compare-runs` creates (or updates) one Kubeflow `Tensorboard` in the namespace whose
`logspath` is that root, so every run of the namespace shows in one TensorBoard: their curves
overlaid, and their parameters and final metrics side by side in the HParams dashboard. It
uses the caller's kubeconfig (a profile user may create Tensorboards in their namespace), and
the same objects as the per-run launcher, so the gateway serves it at
`/tensorboard/<namespace>/kfp-lightning-runs/`. Local runs need none of this: every `--local`
run into the same `--output-dir` appears in the TensorBoard it starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TextIO

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kfp_lightning.components.common import kubernetes as cluster
from kfp_lightning.components.common import logs_location
from kfp_lightning.components.common.errors import RunError, invalid
from kfp_lightning.components.common.kubernetes_syntax import check_namespace_name
from kfp_lightning.components.common.run_form import from_run_form
from kfp_lightning.components.launch_tensorboard import fallback, launcher, objects
from kfp_lightning.pipelines.preflight import NAMESPACE_FIX, endpoint_in_cluster, keys_lacking

ALL_RUNS_NAME = "kfp-lightning-runs"


# The run parameters --compare-runs reads: where the runs' logs are, and the link's prefix.
RUN_PARAMETERS = (
    "tensorboard_logs_root",
    "s3_endpoint",
    "s3_credentials_secret",
    "kubeflow_base_url",
)


def missing(api_client: client.ApiClient, namespace: str, timeout: float, what: str) -> RunError:
    """What a 404 in `namespace` means: that it does not exist, where these credentials may
    read namespaces and it does not; else `what`."""
    why = cluster.namespace_state(api_client, namespace, timeout)
    return RunError(f"{why}: {NAMESPACE_FIX}" if why else what)


def check_secret(api_client: client.ApiClient, namespace: str, secret: str, timeout: float) -> bool:
    """Refuses a secret the namespace does not hold, or a namespace that does not exist.

    The Tensorboard's pod reads the object store's keys from the secret, and without it would
    never start, with nothing said here. A profile's users may read secrets in its namespace
    (kubeflow-edit) but not namespaces: a refusal (403) leaves what it would tell unchecked.

    Returns:
        Whether the secret could be read (False: these credentials may not).

    Raises:
        RunError: The secret or the namespace does not exist, the secret lacks a key, or the
            server failed.
    """
    read = client.CoreV1Api(api_client).read_namespaced_secret
    what = f"the read of secret {namespace}/{secret}"
    try:
        found = cluster.call(lambda: read(secret, namespace, _request_timeout=timeout), what)
    except ApiException as err:
        if err.status == 403:
            return False
        if err.status != 404:
            raise RunError(cluster.answered(api_client.configuration.host, what, err)) from None
        no_secret = (
            f"no secret {secret} in namespace {namespace}, which the TensorBoard pod reads the "
            "object store's keys from: pass --s3-credentials-secret with a secret that has "
            "accesskey and secretkey"
        )
        raise missing(api_client, namespace, timeout, no_secret) from None
    if lacking := keys_lacking(found):
        raise RunError(
            f"secret {namespace}/{secret} has no value for {' and '.join(lacking)}, which the "
            "TensorBoard pod reads the object store's keys from: give it accesskey and "
            "secretkey, or pass --s3-credentials-secret with a secret that has both"
        )
    return True


def open_runs_tensorboard(
    values: Mapping[str, Any],
    namespace: str | None = None,
    wait_seconds: int = 60,
    out: TextIO | None = None,
    patience: cluster.Patience = cluster.Patience(),
) -> str:
    """Creates or updates the namespace's all-runs `Tensorboard` and prints its link.

    Args:
        values: Every pipeline parameter, validated (the logs root, endpoint, secret and
            `kubeflow_base_url` are used).
        namespace: The runs' namespace; default: the pod's, else the kubeconfig context's.
        wait_seconds: How long to wait for it to be ready (it keeps starting after that).
        out: Where to print (default: stdout).
        patience: Retries and polling.

    Returns:
        The link to it.

    Raises:
        UserInputError: A local logs root (no cluster TensorBoard can read it), or a bad name.
        RunError: No Kubernetes API answers, it refused the objects (the line says why), or
            a pvc:// root's claim is one that only one node at a time can mount.
    """
    logs = from_run_form(logs_location.LiveLogsConfig, values)
    config = from_run_form(launcher.LauncherConfig, values)
    if namespace is not None:
        check_namespace_name(namespace)
    if logs_location.parse_logs_root(logs.tensorboard_logs_root, "namespace").scheme == "file":
        raise invalid(
            "tensorboard_logs_root",
            logs.tensorboard_logs_root,
            "s3:// or pvc:// (a --local run's TensorBoard already shows every run under "
            "its --output-dir)",
        )
    try:
        api_client, config_namespace = cluster.connect(patience)
    except cluster.ClusterUnreachableError as err:
        raise RunError(f"no Kubernetes API configured: {' '.join(str(err).split())}") from None
    namespace = namespace or logs_location.current_namespace() or config_namespace or "default"
    root = logs_location.parse_logs_root(logs.tensorboard_logs_root, namespace)
    resource = objects.PODDEFAULT_API  # the one being written: refusals name it
    host, timeout = api_client.configuration.host, patience.request_timeout_seconds
    with api_client:
        api = client.CustomObjectsApi(api_client)
        try:
            cluster.check_server(api_client, timeout)
            poddefault = None
            if root.scheme == "pvc":
                # This Tensorboard never ends: on a claim one node at a time can mount, its pod
                # would hold the claim on its node, and training pods scheduled elsewhere would
                # wait on a Multi-Attach error. The per-run launcher starts none there either
                # (launch_tensorboard/launcher.py, `shares_across_nodes`).
                where = f"claim {namespace}/{root.claim} of tensorboard_logs_root"
                try:
                    modes = launcher.claim_access_modes(api_client, namespace, root.claim, patience)
                except ApiException as err:
                    if err.status == 404:
                        fix = "pass the --namespace it is in, or a claim of this namespace"
                        raise missing(
                            api_client, namespace, timeout, f"{where} does not exist: {fix}"
                        ) from None
                    raise RunError(
                        f"{where} could not be read ({cluster.api_answer(err)})"
                    ) from None
                if not launcher.shares_across_nodes(modes):
                    raise RunError(
                        f"{where} is {'/'.join(modes) or 'without access modes'}: a TensorBoard "
                        "that never ends would hold it on one node and keep training pods on "
                        "other nodes waiting on a Multi-Attach error; use a claim several nodes "
                        "can mount (ReadWriteMany) or an s3:// root"
                    )
            if root.scheme == "s3":
                # Outside the cluster, `auto` is resolved by asking its API server.
                try:
                    endpoint = endpoint_in_cluster(api_client, logs.s3_endpoint)
                except ApiException as err:
                    what = "the read of KFP's object-store Services (for s3_endpoint=auto)"
                    raise RunError(cluster.answered(host, what, err)) from None
                if endpoint is None:
                    # A profile's users may not read Services in `kubeflow`: assume the newest
                    # KFP's object store, as the launcher does where `auto` resolves nowhere.
                    endpoint = fallback.DEFAULT_S3_ENDPOINT
                    print(
                        f"warning: s3_endpoint=auto: KFP's object-store Services are not readable "
                        f"with these credentials; assuming {endpoint} (--s3-endpoint sets it)",
                        file=out,
                        flush=True,
                    )
                secret = logs.s3_credentials_secret
                if not check_secret(api_client, namespace, secret, timeout):
                    print(
                        f"warning: secret {namespace}/{secret}, which the TensorBoard pod reads "
                        "the object store's keys from, is not readable with these credentials: "
                        "not checked",
                        file=out,
                        flush=True,
                    )
                wanted = objects.poddefault_object(namespace, endpoint, secret)
                cluster.ensure_object(api, resource, wanted, patience)
                poddefault = wanted["metadata"]["name"]
            resource = objects.TENSORBOARD_API
            # Its run-id label is "all-runs": it belongs to no single run.
            wanted = objects.tensorboard_object(
                namespace, "all-runs", root, poddefault, name=ALL_RUNS_NAME
            )
            outcome = cluster.ensure_object(api, resource, wanted, patience)
            if wait_seconds > 0:  # said now: nothing else shows while it waits
                print(
                    f"Tensorboard {namespace}/{ALL_RUNS_NAME} {outcome}; waiting up to "
                    f"{wait_seconds} s for it to be ready",
                    file=out,
                    flush=True,
                )
            ready = cluster.wait_until_ready(
                api, resource, namespace, ALL_RUNS_NAME, wait_seconds, patience
            )
        except ApiException as err:
            group, _, plural, _ = resource
            if why := cluster.unusable_namespace(err, namespace):
                raise RunError(f"{why}: {NAMESPACE_FIX}") from None  # as --check-cluster says
            if err.status == 403:
                raise RunError(
                    f"your kubeconfig's user may not create or update {plural}.{group} in "
                    f"namespace {namespace} (HTTP {err.status}); a profile's owners and "
                    "contributors may (Kubeflow's kubeflow-edit role)"
                ) from None
            if err.status == 404:  # no such resource: which CRD to install
                refusal = launcher.describe_refusal(err, resource, namespace)
                raise RunError(" ".join(refusal.replace("`", "").split())) from None
            what = f"the write of {plural}.{group} in namespace {namespace}"
            raise RunError(cluster.answered(host, what, err)) from None
        except cluster.ObjectNotEnsuredError as err:
            raise RunError(" ".join(str(err).split())) from None
        except cluster.ClusterUnreachableError as err:
            raise RunError(cluster.lost(host, err)) from None
    link = f"{config.link_prefix}/tensorboard/{namespace}/{ALL_RUNS_NAME}/"
    if not config.link_prefix:
        link += " (under your Kubeflow URL; --kubeflow-base-url makes it absolute)"
    state = "ready" if ready else f"starting: not ready after {wait_seconds} s"
    print(
        f"TensorBoard over every run in {root.uri} ({outcome}, {state}): {link}",
        file=out,
        flush=True,
    )
    return link
