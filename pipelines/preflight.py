"""`python pipelines/mnist.py --check-cluster`: whether a run would work on a cluster, and the fix.

Reads the cluster through the current kubeconfig context (or, in a pod, its service account)
and checks what a run depends on but only meets minutes in, one result per check: the
Tensorboard and PodDefault CRDs the live TensorBoard step creates objects of; the object-store
secret training and TensorBoard read (s3:// logs only); that the pipeline's service account may
create, read and patch those objects (SubjectAccessReviews, decided by the cluster's own
authorizer); a node with the requested `nvidia.com/gpu` count, CPU, memory and architecture
that the run's tolerations and node selector reach; room in the namespace's quotas and limit
ranges; the Kubeflow Pipelines backend version; and, for training on several
nodes, Kubeflow Trainer's TrainJob CRD, its torch-distributed runtime and the right to create,
read and delete TrainJobs. Each check is a function
returning a `Check`; `check_cluster` runs them all, prints one line each and gives the exit
status: 0 when nothing failed, 1 when a check failed or no API server answers.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple
from urllib.parse import urlparse

import urllib3
from kubernetes import client
from kubernetes.client import ApiClient, ApiException
from kubernetes.utils import parse_quantity

from kfp_lightning.components.common import kubernetes as kube
from kfp_lightning.components.common import kubernetes_syntax, logs_location, training_pod
from kfp_lightning.components.common.errors import RunError, UserInputError, invalid
from kfp_lightning.components.common.logs_location import AUTO, KFP_OBJECT_STORES, ObjectStore
from kfp_lightning.components.common.run_form import from_run_form
from kfp_lightning.components.common.training_pod import GPU_RESOURCE, SchedulingConfig, Tolerations
from kfp_lightning.components.launch_tensorboard import launcher
from kfp_lightning.components.launch_tensorboard.objects import PODDEFAULT_API, TENSORBOARD_API
from kfp_lightning.components.train_on_nodes import trainjob

# (group, plural, verbs) of each resource an account must be allowed to use.
Permissions = Sequence[tuple[str, str, Sequence[str]]]

DEFAULT_SERVICE_ACCOUNT = "default-editor"
DEFAULT_KFP_NAMESPACE = "kubeflow"
# The KFP API server's Deployment and container (kubeflow/pipelines,
# manifests/kustomize/base/pipeline/ml-pipeline-apiserver-deployment.yaml).
KFP_DEPLOYMENT = "ml-pipeline"
KFP_CONTAINER = "ml-pipeline-api-server"
SUPPORTED_BACKENDS = "2.5.0 and newer (Kubeflow 1.10.1+, standalone 2.5-2.17)"
REQUEST_TIMEOUT_SECONDS = 10.0
NAMESPACE_FIX = "pass --namespace with a Kubeflow profile's namespace (where runs run)"
# For the checks that call the components' own readers (the claim's, the TrainJob's dry run).
PATIENCE = kube.Patience(request_timeout_seconds=REQUEST_TIMEOUT_SECONDS)
# Taints the node lifecycle controller puts on a node for its condition (kubernetes/kubernetes,
# staging/src/k8s.io/api/core/v1/well_known_taints.go): a node that is not ready, unreachable,
# cordoned or without network, or under memory, disk or PID pressure. Tolerating them would put
# training on a broken node, so the preflight never advises it: such a node is reported as not
# ready or not schedulable.
CONDITION_TAINTS = frozenset(
    {
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
        "node.kubernetes.io/unschedulable",
        "node.kubernetes.io/network-unavailable",
        "node.kubernetes.io/memory-pressure",
        "node.kubernetes.io/disk-pressure",
        "node.kubernetes.io/pid-pressure",
        # The cloud controller's, on a node it has not initialized yet or that is shut down
        # (staging/src/k8s.io/cloud-provider/api/well_known_taints.go).
        "node.cloudprovider.kubernetes.io/uninitialized",
        "node.cloudprovider.kubernetes.io/shutdown",
    }
)
# A ResourceQuota's keys for compute resources, each of which a pod must set to be admitted
# under a quota that names it (kubernetes/kubernetes, pkg/quota/v1/evaluator/core/pods.go).
COMPUTE_QUOTA_KEYS = frozenset(
    {"cpu", "memory", "requests.cpu", "requests.memory", "limits.cpu", "limits.memory"}
)
# The well-known label of a node's CPU architecture, set by the kubelet (kubernetes/kubernetes,
# staging/src/k8s.io/api/core/v1/well_known_labels.go, `LabelArchStable`).
ARCH_LABEL = "kubernetes.io/arch"
# How `why_unreachable` names an untolerated taint: a condition taint, or another.
TAINT_PHRASES = {True: "not ready or not schedulable ({})", False: "taint {} not tolerated"}
# The fix for each kind of obstacle `why_unreachable` names, by how its phrase starts. Never
# "tolerate it" for a node in a bad condition: the condition taints mark nodes a pod must not
# run on.
NODE_FIXES = {
    "not ready": "wait until those nodes are ready and schedulable again, or repair or uncordon "
    "them (kubectl describe node NAME shows why); a training pod must not tolerate "
    "these condition taints",
    "taint": "add tolerations for those taints to the list, which --tolerations replaces whole "
    "(now {}): "
    '--tolerations \'[..., {{"key": KEY, "operator": "Exists", "effect": EFFECT}}]\'',
    "label": "pass a --node-selector that those nodes' labels match",
    "allocatable": f"use nodes with at least {training_pod.CPU_REQUEST} CPUs and "
    f"{training_pod.MEMORY_REQUEST} of memory allocatable (the training pod's requests)",
    "arch": f"use {training_pod.NODE_ARCH} nodes: the images are built for linux/"
    f"{training_pod.NODE_ARCH} only",
}
# Kubeflow Trainer's kustomize overlays, `{}` the overlay: its manager, or its runtimes.
TRAINER_OVERLAY = "https://github.com/kubeflow/trainer.git/manifests/overlays/{}?ref=v2.1.0"
RUNTIME_INSTALL = f'kubectl apply --server-side -k "{TRAINER_OVERLAY.format("runtimes")}"'
# The fix when a CRD the run creates objects of is not served.
CRD_INSTALLS = {
    PODDEFAULT_API: "install Kubeflow's admission webhook and its PodDefault CRD (part of a full "
    "Kubeflow install), or log to a pvc:// root (--tensorboard-logs-root, --logs-pvc)",
    trainjob.TRAINJOB_API: "install Kubeflow Trainer v2 (part of Kubeflow 1.11 and 26.03; "
    f'elsewhere: kubectl apply --server-side -k "{TRAINER_OVERLAY.format("manager")}")',
}
# The step creates the run's TrainJob, reads it while it runs and deletes it when the run is
# cancelled or times out, or to replace a failed one (components/train_on_nodes/trainjob.py).
TRAINJOB_VERBS = ("create", "get", "delete")
TRAINJOB_PERMISSIONS = [(trainjob.TRAINJOB_API[0], trainjob.TRAINJOB_API[2], TRAINJOB_VERBS)]
# Each RBAC check: the Role its manifest creates (bound to default-editor; another service
# account needs its own RoleBinding), the manifest, and what fails without the permissions.
RBAC_GRANTS = {
    "launcher RBAC": (
        "kfp-lightning-tensorboard-launcher",
        launcher.RBAC_MANIFEST,
        "the live TensorBoard step falls back to kubectl instructions",
    ),
    "TrainJob RBAC": (
        "kfp-lightning-trainjob-launcher",
        trainjob.RBAC_MANIFEST,
        "the training step cannot run the nodes",
    ),
}


class Status(enum.Enum):
    """A check's outcome, and the mark printed for it."""

    PASSED = "✓"
    FAILED = "✗"
    UNKNOWN = "?"  # could not be checked (no permission to read, unreadable value)


class Check(NamedTuple):
    """The result of one check.

    Attributes:
        status: Passed, failed or unknown.
        detail: What was found.
        fix: What to do about a failure (or how to check by other means when unknown).
        asked: Whether the cluster was asked: not for a check the run does not need, nor for
            one that follows from another's result.
    """

    status: Status
    detail: str
    fix: str = ""
    asked: bool = True


# A result of each status: `_failed(detail, fix)`.
_passed = functools.partial(Check, Status.PASSED)
_failed = functools.partial(Check, Status.FAILED)
_unknown = functools.partial(Check, Status.UNKNOWN)


def _unreadable(what: str, err: ApiException) -> str:
    """What is said of a read refused (HTTP 403) or failed (the server's own fault)."""
    if err.status == 403:
        return f"{what} not readable with these credentials ({kube.api_answer(err)})"
    return f"{what} not readable: the API server answered {kube.api_answer(err)}"


def _by_hand(command: str, err: ApiException) -> str:
    """How to check by other means what `err` kept from being read: `command`, run by whom."""
    who = " as someone who may read it" if err.status == 403 else " once the server answers"
    return command + who


class Target(NamedTuple):
    """What a run needs from the cluster, from the pipeline's parameters and the options.

    Attributes:
        namespace: Where the run's pods run (a Kubeflow profile's namespace).
        service_account: The account the run's pods run as.
        kfp_namespace: Where the Kubeflow Pipelines backend runs.
        logs: The live logs root, `{namespace}` filled in.
        values: Every pipeline parameter, validated.
        nodes: Nodes training runs on; more than one needs Kubeflow Trainer.
        claim: The claim the training pod mounts (`--logs-pvc`, or a pvc:// root's); "" for
            none.
    """

    namespace: str
    service_account: str
    kfp_namespace: str
    logs: logs_location.LogsLocation
    values: Mapping[str, Any]
    nodes: int = 1
    claim: str = ""


def _call(request: Callable[..., Any], *args: object) -> Any:
    """One API call with the preflight's timeout; a lost connection ends the whole check.

    Raises:
        ClusterUnreachableError: The connection failed (`check_cluster` words it).
    """
    try:
        return request(*args, _request_timeout=REQUEST_TIMEOUT_SECONDS)
    except urllib3.exceptions.HTTPError as err:
        raise kube.ClusterUnreachableError(kube.connection_failure(err)) from err
    except ApiException as err:
        if err.status != 401:
            raise
        # About the credentials, whatever was asked (`kube.check_server`): no check can pass.
        host = request.__self__.api_client.configuration.host
        raise kube.UnusableServerError(kube.answered(host, "", err)) from None


# --- the checks ---------------------------------------------------------------------------


def check_crd(api_client: ApiClient, resource: kube.Resource) -> Check:
    """Whether the cluster serves a custom resource the run creates.

    Asks API discovery (`/apis/<group>/<version>`), which any authenticated user may read, for
    the exact group, version and resource the launcher (or the training step) writes.
    Kubeflow's Tensorboard is optional: standalone Kubeflow Pipelines has none, and a run there
    still trains and is watched through the kubectl port-forward commands of the Live
    TensorBoard step's note (the run page's "Start Tensorboard" needs multi-user KFP, see
    `launch_tensorboard/fallback.py`). A PodDefault
    is needed only to give that Tensorboard's pod the object store's credentials; Kubeflow
    Trainer's TrainJob only for training on several nodes (`run_checks` asks for those a run
    needs).

    Args:
        api_client: A configured client.
        resource: (group, version, plural, kind), e.g. `TENSORBOARD_API`.

    Returns:
        The result.
    """
    group, version, plural, _ = resource
    api = f"{plural}.{group}/{version}"
    try:
        found = _call(client.CustomObjectsApi(api_client).get_api_resources, group, version)
    except ApiException as err:
        if err.status != 404:
            fix = _by_hand(f"kubectl api-resources --api-group={group}", err)
            return _unknown(_unreadable(f"discovery of {group}/{version}", err), fix)
        found = None
    if found is not None and any(r.name == plural for r in found.resources):
        return _passed(f"{api} is served")
    if resource != TENSORBOARD_API:
        return _failed(f"the cluster serves no {api}", CRD_INSTALLS[resource])
    return _passed(
        f"{api} is not served (standalone Kubeflow Pipelines): no Kubeflow Tensorboard is "
        "started; the Live TensorBoard step's kubectl port-forward commands show the logs (the "
        "run page's Start Tensorboard needs multi-user KFP)",
    )


def check_s3_secret(api_client: ApiClient, target: Target) -> Check:
    """Whether the object store's credentials secret exists in the run's namespace, with keys.

    Training reads `accesskey` and `secretkey` from it into its environment, and so does the
    TensorBoard pod through the PodDefault (s3:// logs only).

    Args:
        api_client: A configured client.
        target: The run (its namespace, logs root and `s3_credentials_secret`).

    Returns:
        The result.
    """
    namespace, secret = target.namespace, target.values["s3_credentials_secret"]
    access, secret_key = logs_location.ACCESS_KEY_KEY, logs_location.SECRET_KEY_KEY
    create = (
        f"kubectl -n {namespace} create secret generic {secret} "
        f"--from-literal={access}=ACCESS_KEY --from-literal={secret_key}=SECRET_KEY"
    )
    try:
        found = _call(client.CoreV1Api(api_client).read_namespaced_secret, secret, namespace)
    except ApiException as err:
        if err.status != 404:
            fix = _by_hand(f"kubectl -n {namespace} get secret {secret}", err)
            return _unknown(_unreadable(f"secret {namespace}/{secret}", err), fix)
        return _failed(
            f"no secret {secret} in namespace {namespace} (logs at {target.logs.uri})",
            f"{create} (Kubeflow creates mlpipeline-minio-artifact in every profile "
            "namespace), or pass --s3-credentials-secret NAME",
        )
    if missing := keys_lacking(found):
        return _failed(
            f"secret {namespace}/{secret} has no value for {' and '.join(missing)}",
            f"recreate it with both keys: kubectl -n {namespace} delete secret {secret}; {create}",
        )
    return _passed(f"{namespace}/{secret} has {access} and {secret_key}")


def keys_lacking(secret: client.V1Secret) -> list[str]:
    """The object store's keys (`accesskey`, `secretkey`) that `secret` lacks or holds empty."""
    # A read answers `data` only: the API server merges `stringData` into it on writes.
    keys = (logs_location.ACCESS_KEY_KEY, logs_location.SECRET_KEY_KEY)
    return [key for key in keys if not (secret.data or {}).get(key)]


def find_object_store(
    api_client: ApiClient, candidates: Sequence[ObjectStore] = KFP_OBJECT_STORES
) -> ObjectStore | None:
    """The first of `candidates` whose Service exists with its port: what `auto` resolves to.

    A pod resolves `auto` through the cluster's DNS, which answers for exactly the Services
    that exist (components/common/logs_location.py); from outside the cluster the API server
    says the same.

    Raises:
        ApiException: A Service could not be read (no permission).
    """
    core = client.CoreV1Api(api_client)
    for store in candidates:
        try:
            service = _call(core.read_namespaced_service, store.service, store.namespace)
        except ApiException as err:
            if err.status == 404:
                continue
            raise
        if any(p.port == store.port for p in (service.spec and service.spec.ports) or []):
            return store
    return None


def endpoint_in_cluster(api_client: ApiClient, value: str) -> str | None:
    """The endpoint pods of the cluster would use for `s3_endpoint=value`, told by its API.

    For callers outside the cluster (`--compare-runs`), whose DNS cannot resolve `auto`.

    Returns:
        The endpoint; None for `auto` when these credentials may not read the Services (HTTP
        403, as for a profile's users in namespace `kubeflow`).

    Raises:
        RunError: `auto`, and no object-store Service exists.
        ApiException: The server refused to read a Service, other than with a 403.
    """
    if value.strip() != AUTO:
        return logs_location.parse_http_endpoint(value, "s3_endpoint")
    try:
        if found := find_object_store(api_client):
            return found.endpoint
    except ApiException as err:
        if err.status == 403:
            return None
        raise
    tried = ", ".join(f"{store.host}:{store.port}" for store in KFP_OBJECT_STORES)
    raise RunError(
        f"s3_endpoint=auto looks for {tried}, and none of these Services exists with its port: "
        "pass --s3-endpoint http(s)://host[:port] of the S3 API the run logs to"
    )


def check_object_store(api_client: ApiClient, target: Target) -> Check:
    """Whether the S3 endpoint the run would use is a Service of this cluster.

    With `s3_endpoint=auto`, the run uses the first of KFP's object-store Services that exists
    (seaweedfs, else minio-service, in `kubeflow`); an explicit endpoint naming an in-cluster
    Service must name one that exists with that port. An endpoint outside the cluster cannot
    be checked from here. Only s3:// logs need an object store.

    Args:
        api_client: A configured client.
        target: The run (its `s3_endpoint`).

    Returns:
        The result; unknown when these credentials may not read the Services.
    """
    endpoint = target.values["s3_endpoint"]
    candidates, auto = KFP_OBJECT_STORES, endpoint.strip() == AUTO
    if not auto:
        # An in-cluster Service is named `<svc>.<ns>[.svc[.cluster.local]]`.
        parts = urlparse(logs_location.parse_http_endpoint(endpoint, "s3_endpoint"))
        labels = (parts.hostname or "").split(".")
        if len(labels) != 2 and labels[2:] not in (["svc"], ["svc", "cluster", "local"]):
            return _unknown(
                f"{endpoint} is not a Service of this cluster: not checked from here",
                f"make sure the training and TensorBoard pods reach {endpoint}",
                asked=False,
            )
        port = parts.port or (443 if parts.scheme == "https" else 80)
        candidates = (ObjectStore(labels[0], labels[1], port, "the s3_endpoint"),)
    services = " or ".join(f"Service {s.namespace}/{s.service} (port {s.port})" for s in candidates)
    try:
        found = find_object_store(api_client, candidates)
    except ApiException as err:
        fix = _by_hand(f"kubectl -n {candidates[0].namespace} get service", err)
        return _unknown(_unreadable(services, err), fix)
    if found is None and not auto and len(labels) == 2 and not _exists(api_client, *labels[:2]):
        # `<svc>.<ns>`, or a host outside the cluster (`minio.lan`): pods try the Service
        # first (their DNS search path), then the name as given.
        return _unknown(
            f"s3_endpoint={endpoint}: no {services} in this cluster; as a host outside it, not "
            "checked from here",
            f"make sure the training and TensorBoard pods reach {endpoint}",
        )
    if found is None:
        what = "KFP's object store" if auto else f"s3_endpoint={endpoint}"
        return _failed(
            f"{what}: no {services} in this cluster",
            "install Kubeflow Pipelines with its object store, or pass --s3-endpoint "
            "http(s)://host[:port] of an S3 API the pods can reach",
        )
    shown = f"s3_endpoint={endpoint}" + (f" resolves to {found.endpoint}" if auto else "")
    return _passed(f"{shown}: Service {found.namespace}/{found.service} ({found.product})")


def _exists(api_client: ApiClient, service: str, namespace: str) -> bool:
    """Whether Service `namespace/service` exists (False too when it cannot be read)."""
    try:
        _call(client.CoreV1Api(api_client).read_namespaced_service, service, namespace)
    except ApiException:
        return False
    return True


def check_logs_claim(api_client: ApiClient, target: Target) -> Check:
    """Whether the claim the training pod mounts exists and, for a pvc:// logs root, can be
    mounted on two nodes at once.

    A pod whose claim is missing is never scheduled. Training and the TensorBoard pod mount a
    pvc:// root's claim at the same time, each wherever it is scheduled; a ReadWriteOnce claim
    attaches to one node only, so the second pod would wait on a Multi-Attach error (training,
    until its deadline). See `launch_tensorboard/launcher.py`. `--logs-pvc` with another root
    mounts the claim for a run that switches its root to it.

    Args:
        api_client: A configured client.
        target: The run (its namespace, logs root and claim).

    Returns:
        The result; unknown when these credentials may not read the claim.
    """
    claim, namespace = target.claim, target.namespace
    where = f"{namespace}/{claim}"
    try:
        # The launcher's own reading: the bound volume's modes, else those the claim asks for.
        modes = launcher.claim_access_modes(api_client, namespace, claim, PATIENCE)
    except ApiException as err:
        if err.status == 404:
            fix = "create a ReadWriteMany claim of that name, or log to s3:// (the default) "
            fix += "without --logs-pvc"
            return _failed(f"no PersistentVolumeClaim {where}", fix)
        command = f"kubectl -n {namespace} get pvc {claim} -o jsonpath='{{.spec.accessModes}}'"
        fix = _by_hand(command, err)
        return _unknown(_unreadable(f"claim {where}", err), fix)
    # Training writes while TensorBoard reads, each on its own node: of the modes that let
    # several nodes mount a volume (launch_tensorboard/launcher.py, `SHARED_ACCESS_MODES`),
    # only ReadWriteMany lets them write.
    if target.logs.scheme == "pvc" and "ReadWriteMany" not in modes:
        return _failed(
            f"claim {where} is {'/'.join(modes) or 'without access modes'}: training and the "
            "TensorBoard pod may land on different nodes, and only one node can mount it",
            "use a ReadWriteMany claim (e.g. NFS, CephFS, Filestore), or log to s3:// (the "
            "default)",
        )
    return _passed(f"claim {where} is {'/'.join(modes)}")


def check_rbac(api_client: ApiClient, target: Target, name: str, permissions: Permissions) -> Check:
    """Whether the run's service account may do everything of `permissions`.

    One SubjectAccessReview per verb and resource, answered by the cluster's own authorizer
    for the service account's user and groups; namespace admins may ask locally, cluster
    admins anywhere. The groups are those the API server gives every service-account token
    (kubernetes/kubernetes, staging/src/k8s.io/apiserver/pkg/authentication/serviceaccount/
    util.go, `MakeGroupNames`, plus `system:authenticated`), so that bindings to
    `system:serviceaccounts[:<namespace>]` count as they will for the run's pods.

    Args:
        api_client: A configured client.
        target: The run (its namespace and service account).
        name: The check's name, which picks its Role, manifest and consequence in
            `RBAC_GRANTS`.
        permissions: (group, plural, verbs) of each resource.

    Returns:
        The result; unknown when these credentials may not ask.
    """
    namespace, service_account = target.namespace, target.service_account
    user = f"system:serviceaccount:{namespace}:{service_account}"
    groups = ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"]  # MakeGroupNames
    api = client.AuthorizationV1Api(api_client)

    def is_allowed(verb: str, group: str, plural: str) -> bool:
        """Whether the account may `verb` `plural`.`group` (raises ApiException: may not ask)."""
        # The review's JSON (authorization.k8s.io/v1 SubjectAccessReviewSpec).
        attributes = {"namespace": namespace, "verb": verb, "group": group, "resource": plural}
        spec = {"user": user, "groups": [*groups, "system:authenticated"]}
        spec["resourceAttributes"] = attributes
        try:
            local = {"metadata": {"namespace": namespace}, "spec": spec}
            review = _call(api.create_namespaced_local_subject_access_review, namespace, local)
        except ApiException as err:
            if err.status != 403:
                raise
            review = _call(api.create_subject_access_review, {"spec": spec})
        return bool(review.status and review.status.allowed)

    denied = []
    try:
        for group, plural, verbs in permissions:
            if refused := [v for v in verbs if not is_allowed(v, group, plural)]:
                denied.append(f"{'/'.join(refused)} {plural}.{group}")
    except ApiException as err:
        may_not = "these credentials may not ask" if err.status == 403 else "could not ask"
        return _unknown(
            f"{may_not} the authorizer ({kube.api_answer(err)})",
            f"ask a cluster admin to run: kubectl auth can-i --list -n {namespace} --as {user}",
        )
    account, (role, manifest, consequence) = f"{namespace}/{service_account}", RBAC_GRANTS[name]
    if not denied:
        allowed = ", ".join(f"{'/'.join(verbs)} {plural}" for _, plural, verbs in permissions)
        return _passed(f"{account} may {allowed}")
    fix = f"kubectl apply -n {namespace} -f {manifest}"
    if service_account != DEFAULT_SERVICE_ACCOUNT:
        fix += (
            f", then kubectl -n {namespace} create rolebinding {role}-{service_account} "
            f"--role={role} --serviceaccount={namespace}:{service_account}"
        )
    return _failed(f"{account} may not {', '.join(denied)} ({consequence})", fix)


def _missing_account(api_client: ApiClient, target: Target) -> Check | None:
    """The failure of every check of the service account's rights when it does not exist;
    None when it does, or cannot be read here (the reviews still tell what it may do)."""
    namespace, account = target.namespace, target.service_account
    try:
        _call(client.CoreV1Api(api_client).read_namespaced_service_account, account, namespace)
    except ApiException as err:
        if err.status == 404:
            return _failed(
                f"no service account {namespace}/{account}: the run's pods cannot be created",
                "run in a Kubeflow profile namespace (its profile creates default-editor), "
                "or pass the account the pipelines run as with --service-account "
                "(pipeline-runner in standalone Kubeflow Pipelines)",
            )
    return None


def check_launcher_rbac(api_client: ApiClient, target: Target) -> Check:
    """Whether the run's service account may make every call the launcher makes.

    One SubjectAccessReview per verb and resource of `LAUNCHER_PERMISSIONS` the logs root
    needs (Tensorboards; PodDefaults for s3://; reading the claim for pvc://), answered by the
    cluster's own authorizer for the service account's user and groups.

    Args:
        api_client: A configured client.
        target: The run (its namespace, service account and logs root), which gets a
            Tensorboard: the cluster serves them and the logs root is s3:// or pvc://.

    Returns:
        The result; unknown when these credentials may not ask.
    """
    # Tensorboards are served to a run only with an s3:// or pvc:// logs root (`run_checks`).
    tensorboard, poddefault, claim = launcher.LAUNCHER_PERMISSIONS
    permissions = [tensorboard, poddefault if target.logs.scheme == "s3" else claim]
    return check_rbac(api_client, target, "launcher RBAC", permissions)


def tolerates(toleration: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    """Whether a toleration tolerates a taint, as Kubernetes decides it.

    Mirrors `Toleration.ToleratesTaint` (kubernetes/kubernetes,
    staging/src/k8s.io/api/core/v1/toleration.go): an empty effect or key matches any; the
    operator Exists matches any value, Equal (the default) only the same value.

    Args:
        toleration: A Toleration object (key, operator, value, effect).
        taint: A Taint object (key, value, effect).

    Returns:
        Whether the taint is tolerated.
    """
    if any(toleration.get(k) and toleration[k] != taint.get(k) for k in ("effect", "key")):
        return False
    operator, value = toleration.get("operator") or "Equal", toleration.get("value") or ""
    return operator == "Exists" or (operator == "Equal" and value == (taint.get("value") or ""))


def _gpu_count(node: client.V1Node, host: str) -> int:
    value = ((node.status and node.status.allocatable) or {}).get(GPU_RESOURCE, "0")
    try:
        return int(parse_quantity(value))
    except (ValueError, ArithmeticError):  # the API server stores only quantities it parsed
        what = f"a node list (node {node.metadata.name}'s allocatable {GPU_RESOURCE})"
        raise kube.UnusableServerError(kube.not_kubernetes(host, what, repr(value))) from None


def _pod_requests(gpus: int) -> dict[str, str]:
    """What one training pod takes of a node's allocatable resources."""
    return {**training_pod.resources(0)["requests"], **({GPU_RESOURCE: str(gpus)} if gpus else {})}


def _room(node: client.V1Node, gpus: int) -> int:
    """How many training pods the node's allocatable resources hold (those it reports)."""
    allocatable = (node.status and node.status.allocatable) or {}
    wanted = _pod_requests(gpus).items()
    fits = [
        int(parse_quantity(allocatable[k]) // parse_quantity(v))
        for k, v in wanted
        if k in allocatable
    ]
    return min(fits, default=0)


def why_unreachable(
    node: client.V1Node, node_selector: Mapping[str, str], tolerations: Tolerations
) -> list[str]:
    """What keeps the training pod off `node`: untolerated taints, unmatched labels, too
    little allocatable CPU or memory for its requests, another architecture than the images'.

    Args:
        node: The node.
        node_selector: The pod's node selector.
        tolerations: The pod's tolerations.

    Returns:
        One phrase per obstacle, those of the condition taints first; empty when the pod may
        be scheduled there.
    """
    spec = node.spec or client.V1NodeSpec()
    taints = [t.to_dict() for t in spec.taints or []]
    if spec.unschedulable:
        # The scheduler treats a cordoned node as carrying this taint (kubernetes/kubernetes,
        # pkg/scheduler/framework/plugins/nodeunschedulable/node_unschedulable.go).
        taints.append({"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"})
    reasons = []
    for taint in sorted(taints, key=lambda taint: taint["key"] not in CONDITION_TAINTS):
        # Only these effects keep a new pod off a node; PreferNoSchedule is a preference
        # (pkg/scheduler/framework/plugins/tainttoleration/taint_toleration.go).
        tolerated = any(tolerates(t, taint) for t in tolerations)
        if taint["effect"] in ("NoSchedule", "NoExecute") and not tolerated:
            value = f"={taint['value']}" if taint.get("value") else ""
            phrase = TAINT_PHRASES[taint["key"] in CONDITION_TAINTS]
            reasons.append(phrase.format(f"{taint['key']}{value}:{taint['effect']}"))
    labels = node.metadata.labels or {}
    reasons += [
        f"label {key}={value} missing" + (f" (has {labels[key]})" if key in labels else "")
        for key, value in node_selector.items()
        if labels.get(key) != value
    ]
    allocatable = (node.status and node.status.allocatable) or {}
    reasons += [
        f"allocatable {name} {allocatable[name]} < {wanted} requested"
        for name, wanted in _pod_requests(0).items()
        if name in allocatable and parse_quantity(allocatable[name]) < parse_quantity(wanted)
    ]
    if labels.get(ARCH_LABEL, training_pod.NODE_ARCH) != training_pod.NODE_ARCH:
        reasons.append(f"arch {labels[ARCH_LABEL]}")
    return reasons


def check_gpu_nodes(
    api_client: ApiClient,
    gpus: int,
    node_selector: Mapping[str, str],
    tolerations: Tolerations,
    pods: int = 1,
) -> Check:
    """Whether nodes have the GPUs training requests, and the pods' settings reach them.

    A node fits when its allocatable `nvidia.com/gpu` is at least `gpus` (any node for 0), it
    carries every label of `node_selector`, and `tolerations` tolerate each of its NoSchedule
    and NoExecute taints (a cordoned node counts as tainted), as the scheduler decides. The
    nodes that fit must together hold `gpus` GPUs for each of `pods` pods (a node with twice
    the GPUs takes two); a TrainJob's pods start together, so one without room keeps the
    others waiting. Fewer, or none, is unknown rather than failed: a cluster autoscaler may
    add nodes.

    Args:
        api_client: A configured client.
        gpus: GPUs requested by each pod (0: a CPU node will do).
        node_selector: The `node_selector` parameter.
        tolerations: The `tolerations` parameter.
        pods: Training pods (`--nodes`).

    Returns:
        The result; unknown when these credentials may not list nodes, or when the nodes there
        now have room for fewer than `pods` (none with `gpus` GPUs included).
    """
    try:
        nodes = _call(client.CoreV1Api(api_client).list_node).items
    except ApiException as err:
        fix = "ask a cluster admin whether a node offers the GPUs and taints/labels you set"
        return _unknown(_unreadable("nodes", err), fix)
    counts = {node.metadata.name: _gpu_count(node, api_client.configuration.host) for node in nodes}
    if not (candidates := [n for n in nodes if counts[n.metadata.name] >= gpus]):
        # Unknown, as too little room below: a pool scaled to zero has no node until a pod
        # waits for one.
        if not nodes:
            return _unknown("no node at all now", "make sure a cluster autoscaler adds nodes")
        most = max(counts.values(), default=0)
        found = f"most on one node: {most}, of {len(nodes)} nodes"
        return _unknown(
            f"no node has {gpus} allocatable {GPU_RESOURCE} now ({found})",
            f"make sure a cluster autoscaler adds nodes with {gpus} GPU(s) (a pool scaled to "
            "zero shows none), or add a GPU node pool with NVIDIA's device plugin (or GPU "
            "operator), request fewer with --gpus, or train on a CPU node with --gpus 0",
        )
    blockers = {n.metadata.name: why_unreachable(n, node_selector, tolerations) for n in candidates}
    wanted = f"with at least {gpus} allocatable {GPU_RESOURCE} " if gpus else ""
    if reached := sorted(node for node, reasons in blockers.items() if not reasons):
        shown = ", ".join(reached[:5]) + (", ..." if len(reached) > 5 else "")
        no_gpu = "" if gpus else ", no GPU needed (gpus=0)"
        found = f"{len(reached)} node(s) {wanted}reachable{no_gpu}: {shown}"
        # Nodes the pod may land on though the images cannot run there: it names no arch.
        stray = sorted(n for n, r in blockers.items() if r and all(x[:4] == "arch" for x in r))
        if stray and ARCH_LABEL not in node_selector:
            return _failed(
                f"{found}; but also {', '.join(stray[:5])}, of another architecture, where the "
                "images cannot run",
                f'add "{ARCH_LABEL}": "{training_pod.NODE_ARCH}" to --node-selector',
            )
        by_name = {node.metadata.name: node for node in candidates}
        room = sum(_room(by_name[name], gpus) for name in reached)
        if room < pods:
            # Unknown, not failed: a cluster autoscaler adds nodes once pods wait for them.
            each = ", ".join(f"{v} {k}" for k, v in _pod_requests(gpus).items())
            return _unknown(
                f"{found}; room for {room} of the {pods} training pods ({each} each) on the "
                "nodes there now",
                "make sure a cluster autoscaler adds nodes to this pool, add them, or train on "
                f"at most {room} with --nodes",
            )
        return _passed(found)
    blocked = sorted(f"{node}: {', '.join(reasons)}" for node, reasons in blockers.items())
    every = [reason for reasons in blockers.values() for reason in reasons]
    shown = json.dumps(list(tolerations))
    fixes = [
        fix.format(shown)
        for start, fix in NODE_FIXES.items()
        if any(r.startswith(start) for r in every)
    ]
    return _failed(
        f"nodes {wanted}exist, but none can take the training pod ({'; '.join(blocked[:5])})",
        "; ".join(fixes),
    )


def check_quota(api_client: ApiClient, target: Target, gpus: int) -> Check:
    """Whether the namespace's ResourceQuotas leave room for the training pods, and its
    LimitRanges allow each one.

    The API server first gives the pod's container the LimitRanges' defaults for what it leaves
    unset (the training pod sets no CPU limit), then refuses it when a LimitRange's minimum,
    maximum or limit-to-request ratio is not met, or a quota has no room for it or names a
    compute resource it does not set (the LimitRanger and ResourceQuota admission plugins,
    kubernetes/kubernetes plugin/pkg/admission/); a Kubeflow profile's `resourceQuotaSpec`
    becomes such a quota. The pod has requests and a deadline, so a quota scoped to best-effort
    or deadline-less pods does not count it; whether one scoped by priority class or pod
    affinity does is not judged.

    Args:
        api_client: A configured client.
        target: The run (its namespace and `nodes`, one training pod each).
        gpus: GPUs each pod requests.

    Returns:
        The result; unknown when these credentials may not list them.
    """
    namespace, core = target.namespace, client.CoreV1Api(api_client)
    try:
        quotas = _call(core.list_namespaced_resource_quota, namespace).items
        ranges = _call(core.list_namespaced_limit_range, namespace).items
    except ApiException as err:
        fix = _by_hand(f"kubectl -n {namespace} describe quota,limits", err)
        return _unknown(_unreadable(f"the quotas of namespace {namespace}", err), fix)
    q = parse_quantity
    requests, limits = _pod_requests(gpus), dict(training_pod.resources(gpus)["limits"])
    items = [i for r in ranges for i in r.spec.limits or [] if i.type in ("Container", "Pod")]
    for item in (i for i in items if i.type == "Container"):
        # The LimitRanger's defaults for what the container leaves unset (the server copies
        # `max` into an unset `default`).
        limits = {**(item.default or {}), **limits}
        requests = {**(item.default_request or {}), **requests}
    problems = [
        f"a LimitRange's default {name} limit {limits[name]} is under its request {value}"
        for name, value in requests.items()
        if name in limits and q(value) > q(limits[name])
    ]
    for item in items:
        kind = item.type.lower()
        for name, most in (item.max or {}).items():
            if q(limits.get(name, "0")) > q(most) or name not in limits:
                problems.append(
                    f"a LimitRange caps a {kind}'s {name} limit at {most}, not "
                    f"{limits.get(name, 'none')}"
                )
        for name, least in (item.min or {}).items():
            if q(requests.get(name, "0")) < q(least):
                problems.append(
                    f"a LimitRange needs a {kind}'s {name} request of {least}, not "
                    f"{requests.get(name, 'none')}"
                )
        for name, ratio in (item.max_limit_request_ratio or {}).items():
            if name not in limits or q(limits[name]) > q(ratio) * q(requests.get(name, "0")):
                problems.append(
                    f"a LimitRange caps a {kind}'s {name} limit at {ratio} x its request"
                )
    # A quota's names for what one pod takes (`cpu` and `memory` are the requests).
    each = {"pods": "1", "count/pods": "1", **{n: requests[n] for n in ("cpu", "memory")}}
    each |= {f"requests.{name}": value for name, value in requests.items()}
    each |= {f"limits.{name}": value for name, value in limits.items()}
    for quota in quotas:
        selector = quota.spec.scope_selector
        scopes = {e.scope_name for e in (selector and selector.match_expressions) or []}
        scopes |= set(quota.spec.scopes or [])
        # The pod has requests and a deadline: it is NotBestEffort and Terminating. Whether a
        # priority class or pod affinity scope counts it is not judged.
        if scopes - {"NotBestEffort", "Terminating"}:
            continue
        hard = (quota.spec and quota.spec.hard) or {}
        used = (quota.status and quota.status.used) or {}
        for key in sorted(set(hard) & set(each)):
            if q(hard[key]) - q(used.get(key, "0")) < q(each[key]) * target.nodes:
                problems.append(
                    f"quota {quota.metadata.name}: {key} {used.get(key, '0')} of {hard[key]} "
                    f"used, {target.nodes} x {each[key]} more needed"
                )
        # A quota on a compute resource refuses a pod that does not set it.
        for key in sorted(set(hard) & (COMPUTE_QUOTA_KEYS - set(each))):
            problems.append(f"quota {quota.metadata.name} needs {key}, which the pod does not set")
    if problems:
        return _failed(
            "the training pod would be refused: " + "; ".join(problems),
            "ask the namespace's admin to raise the quota or change the LimitRange (a Kubeflow "
            "profile's resourceQuotaSpec makes its quota); the pod's CPU and memory are fixed, "
            "its GPUs and nodes are --gpus and --nodes",
        )
    if not quotas and not items:
        return _passed(f"no ResourceQuota or LimitRange in {namespace}")
    return _passed(f"room for {target.nodes} training pod(s) in {namespace}'s quotas and limits")


# --- several nodes: Kubeflow Trainer ------------------------------------------------------------


def check_training_runtime(api_client: ApiClient) -> Check:
    """Whether the `torch-distributed` ClusterTrainingRuntime exists, with what the job needs.

    The TrainJob's nodes run in the runtime's `node` Job and container and get torchrun's
    variables from its torch policy (kubeflow/trainer v2.1.0,
    manifests/base/runtimes/torch_distributed.yaml; pkg/runtime/framework/plugins/torch).

    Args:
        api_client: A configured client.

    Returns:
        The result; unknown when these credentials may not read cluster-scoped runtimes
        (RoleBindings, as in a Kubeflow profile, cannot grant that).
    """
    group, version, plural, kind = trainjob.RUNTIME_API
    wanted, node = f"{kind} {trainjob.RUNTIME}", trainjob.NODE
    custom = client.CustomObjectsApi(api_client)
    try:
        runtime = _call(custom.get_cluster_custom_object, group, version, plural, trainjob.RUNTIME)
    except ApiException as err:
        if err.status == 404:
            return _failed(f"no {wanted}", f"install it: {RUNTIME_INSTALL}")
        fix = f"ask a cluster admin to run: kubectl get {plural} {trainjob.RUNTIME}"
        return _unknown(_unreadable(wanted, err), fix)
    spec = runtime.get("spec") or {}
    jobs = ((spec.get("template") or {}).get("spec") or {}).get("replicatedJobs") or []
    pods = [j["template"]["spec"]["template"]["spec"] for j in jobs if j.get("name") == node]
    problems = []
    if not any(c.get("name") == node for pod in pods for c in pod.get("containers") or []):
        problems.append(f"no {node!r} job with a {node!r} container")
    if "torch" not in (spec.get("mlPolicy") or {}):
        problems.append("no torch policy (mlPolicy.torch), which sets torchrun's variables")
    if problems:
        fix = f"restore Kubeflow Trainer's own runtime: {RUNTIME_INSTALL}"
        return _failed(f"{wanted} has {' and '.join(problems)}", fix)
    return _passed(f"{wanted} exists, with a torch policy and a node job")


def check_trainjob_dry_run(api_client: ApiClient, target: Target) -> Check:
    """Whether the cluster would store the run's real TrainJob exactly as the step builds it.

    The form of its pod settings is read from the cluster's own TrainJob schema (Trainer
    v2.1's podTemplateOverrides, v2.2's runtimePatches; v2.0's podSpecOverrides cannot carry
    them), then the job, with the run's parameters, is submitted as a server-side dry run with
    strict field validation and what would be stored is compared with what was sent: a field
    the schema does not know would be pruned silently, and the job would start without it.

    Args:
        api_client: A configured client (its user needs `create` on trainjobs).
        target: The run.

    Returns:
        The result; unknown when these credentials may not submit the dry run.
    """
    from kfp_lightning.components.common import images, run_layout, training
    from kfp_lightning.components.train_on_nodes.nodes import ENTRY_MODULE

    values = target.values
    config = from_run_form(training.TrainConfig, values)
    scheduling = from_run_form(SchedulingConfig, values)
    endpoint = secret = None
    if target.logs.scheme == "s3":
        endpoint, secret = values["s3_endpoint"], values["s3_credentials_secret"]
        # The endpoint the step would give the nodes (`auto` stays where none is found).
        with contextlib.suppress(UserInputError, RunError, ApiException):
            endpoint = endpoint_in_cluster(api_client, endpoint) or endpoint
    location = target.logs.child("preflight").uri
    arguments = run_layout.entry_arguments(
        location, target.nodes, config, endpoint, "preflight", values.get("live_update_seconds", 10)
    )
    spec = trainjob.NodeSpec(
        image=images.image_ref(images.TRAINER),
        nodes=target.nodes,
        processes_per_node=max(config.gpus, 1),
        gpus_per_node=config.gpus,
        arguments=arguments,
        module=ENTRY_MODULE,
        s3_secret=secret,
        logs_pvc=target.claim or None,
        node_selector=scheduling.node_selector,
        tolerations=scheduling.tolerations,
        service_account=target.service_account,
    )
    if not (problems := trainjob.check_trainjob(api_client, target.namespace, spec, PATIENCE)):
        return _passed(
            f"the run's TrainJob, submitted as a dry run, would be stored as sent "
            f"({target.nodes} nodes, {spec.processes_per_node} process(es) each)",
        )
    # Refusals worded for the step's own account (`trainjob.explain_refusal`): here it is
    # these credentials that were refused.
    if all("service account may not" in p for p in problems):
        return _unknown(
            f"these credentials may not create trainjobs in {target.namespace}, so it was not "
            "submitted as a dry run",
            "run --check-cluster as someone who may create trainjobs in the namespace",
        )
    fix = (
        "install Kubeflow Trainer v2.1 or newer (its TrainJob carries the pods' settings in "
        "spec.podTemplateOverrides or spec.runtimePatches)"
    )
    # The namespace refused it (`kube.unusable_namespace`), found here where these credentials
    # may not read namespaces.
    if problems[0].startswith(f"namespace {target.namespace} "):
        fix = NAMESPACE_FIX
    return _failed("; ".join(problems), fix)


def image_version(image: str) -> tuple[int, int, int] | None:
    """The (major, minor, patch) of an image's tag, e.g. `...kfp-api-server:2.5.0` -> (2, 5, 0).

    Returns:
        None for an image without a tag, or whose tag is not a version.
    """
    # The tag: after the last ":" that follows the last "/" (a registry's port comes before
    # it), up to an "@digest".
    match = re.search(r":v?(\d+)\.(\d+)\.(\d+)[^:/@]*(?:@|$)", image)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def check_kfp_backend(api_client: ApiClient, kfp_namespace: str) -> Check:
    """The Kubeflow Pipelines backend's version, from its API server's image tag.

    Args:
        api_client: A configured client.
        kfp_namespace: Where the `ml-pipeline` Deployment runs (`kubeflow` in a full install
            and in standalone installs alike).

    Returns:
        Passed for a supported version, failed for an older one, unknown when unreadable.
    """
    unknown = "version unknown (not a failure)"
    supported = f"supported: {SUPPORTED_BACKENDS}"
    where = f"deployment {kfp_namespace}/{KFP_DEPLOYMENT}"
    apps = client.AppsV1Api(api_client)
    try:
        deployment = _call(apps.read_namespaced_deployment, KFP_DEPLOYMENT, kfp_namespace)
    except ApiException as err:
        if err.status == 404:
            fix = "pass the namespace Kubeflow Pipelines runs in with --kfp-namespace"
            return _unknown(f"no {where}: {unknown}", fix)
        command = f"kubectl -n {kfp_namespace} get deployment {KFP_DEPLOYMENT} -o wide"
        return _unknown(
            f"{_unreadable(where, err)}: {unknown}", f"{_by_hand(command, err)}; {supported}"
        )
    pod = deployment.spec and deployment.spec.template.spec
    containers = (pod and pod.containers) or [client.V1Container(name="", image="")]
    image = next((c for c in containers if c.name == KFP_CONTAINER), containers[0]).image
    if (version := image_version(image or "")) is None:
        fix = f"find the release the image was pushed as (its tags in the registry); {supported}"
        return _unknown(f"image {image} has no version tag: {unknown}", fix)
    shown = f"{'.'.join(map(str, version))} ({image})"
    if version < (2, 5, 0):
        return _failed(
            f"{shown} is older than this pipeline supports: {SUPPORTED_BACKENDS}",
            "upgrade Kubeflow Pipelines to 2.5.0 or newer (Kubeflow 1.10.1 or newer)",
        )
    return _passed(f"{shown}; supported: 2.5.0 and newer")


def run_checks(api_client: ApiClient, target: Target) -> dict[str, Check]:
    """Every check by its name, in the order they are printed; Kubeflow Trainer's for several
    nodes.

    Raises:
        ClusterUnreachableError: The API stopped answering midway, or answered what no
            Kubernetes API server does; `check_cluster` words it as a RunError.
    """
    scheduling = from_run_form(SchedulingConfig, target.values)
    # The run form may hold the count as text ("1"): validated already, either form works.
    gpus = int(str(target.values["gpus"]))
    # What the logs root needs: an s3:// root the object store, its secret and a PodDefault
    # for the Tensorboard's pod; a pvc:// root its claim; either Kubeflow's Tensorboard; a
    # local directory none of these (no cluster TensorBoard is started then).
    s3, pvc = target.logs.scheme == "s3", target.logs.scheme == "pvc"
    # Every check in the run's namespace fails for one cause when there is none, or it is
    # being deleted; a profile's users may not read namespaces, and get their own checks'
    # answers.
    gone = None
    if why := kube.namespace_state(api_client, target.namespace, REQUEST_TIMEOUT_SECONDS):
        gone = _failed(why, NAMESPACE_FIX)
    # So does every check of the service account's rights when it does not exist.
    account = gone or _missing_account(api_client, target)
    not_needed = _passed(f"not needed for logs at {target.logs.uri}", asked=False)
    tensorboard = check_crd(api_client, TENSORBOARD_API) if s3 or pvc else not_needed
    why = "not checked: whether Kubeflow's Tensorboard is served is unknown"
    if tensorboard.status is Status.UNKNOWN:  # so is what depends on it
        nothing = unused = _unknown(why, "see the Tensorboard CRD's line first", asked=False)
    elif tensorboard is not_needed:
        nothing = unused = not_needed
    else:
        nothing = _passed("nothing to create: Kubeflow's Tensorboard is not served", asked=False)
        unused = _passed("not needed without Kubeflow's Tensorboard", asked=False)
    if served := tensorboard.detail.endswith("is served"):
        poddefault = check_crd(api_client, PODDEFAULT_API) if s3 else not_needed
    else:
        poddefault = unused if s3 else not_needed
    checks = {
        "Tensorboard CRD": tensorboard,
        "PodDefault CRD": poddefault,
        "object-store secret": gone or check_s3_secret(api_client, target) if s3 else not_needed,
        "object store": check_object_store(api_client, target) if s3 else not_needed,
        "logs claim": gone or check_logs_claim(api_client, target) if target.claim else not_needed,
        # The run's pods need the account whether or not a Tensorboard is made.
        "launcher RBAC": account
        or (check_launcher_rbac(api_client, target) if served else nothing),
        "training node": check_gpu_nodes(
            api_client, gpus, scheduling.node_selector, scheduling.tolerations, target.nodes
        ),
        "quota": gone or check_quota(api_client, target, gpus),
        "KFP backend": check_kfp_backend(api_client, target.kfp_namespace),
    }
    if target.nodes == 1:
        return checks
    crd = check_crd(api_client, trainjob.TRAINJOB_API)
    state = "is not served" if crd.status is Status.FAILED else "could not be checked"
    return checks | {
        "TrainJob CRD": crd,
        "training runtime": check_training_runtime(api_client),
        "TrainJob RBAC": account
        or check_rbac(api_client, target, "TrainJob RBAC", TRAINJOB_PERMISSIONS),
        "TrainJob": account or check_trainjob_dry_run(api_client, target)
        if crd.status is Status.PASSED
        else _unknown(
            f"not submitted: the TrainJob CRD {state}", "see its line first", asked=False
        ),
    }


def check_cluster(
    values: Mapping[str, Any],
    namespace: str | None = None,
    service_account: str = DEFAULT_SERVICE_ACCOUNT,
    kfp_namespace: str = DEFAULT_KFP_NAMESPACE,
    nodes: int = 1,
    claim: str | None = None,
) -> int:
    """Checks the current cluster for a run with `values`, printing one line per check.

    Each line holds the mark, what was checked and found, and the fix for a failure (how to
    check by other means for an unknown).

    Args:
        values: Every pipeline parameter, validated (`parameters.validate_parameters`).
        namespace: The run's namespace; default: the pod's, else the kubeconfig context's.
        service_account: The account the run's pods run as.
        kfp_namespace: Where the Kubeflow Pipelines backend runs.
        nodes: Nodes training runs on; more than one adds the Kubeflow Trainer checks.
        claim: The claim the training pod mounts (`--logs-pvc`); default: a pvc:// root's.

    Returns:
        0 when no check failed, 1 when one did.

    Raises:
        UserInputError: An option is not a valid name.
        RunError: No Kubernetes API is configured or answers.
    """
    if namespace is not None:
        kubernetes_syntax.check_namespace_name(namespace)
    if not kubernetes_syntax.is_dns1123_subdomain(service_account):
        raise invalid("service_account", service_account, "a Kubernetes service account name")
    kubernetes_syntax.check_namespace_name(kfp_namespace, "kfp_namespace")
    try:
        api_client, config_namespace = kube.connect()
    except kube.ClusterUnreachableError as err:
        raise RunError(f"no Kubernetes API configured: {' '.join(str(err).split())}") from None
    with api_client:
        namespace = namespace or logs_location.current_namespace() or config_namespace or "default"
        kubernetes_syntax.check_namespace_name(namespace)
        logs = logs_location.parse_logs_root(values["tensorboard_logs_root"], namespace=namespace)
        claim = claim or logs.claim
        target = Target(namespace, service_account, kfp_namespace, logs, dict(values), nodes, claim)
        host = api_client.configuration.host
        try:
            version = kube.check_server(api_client, REQUEST_TIMEOUT_SECONDS)
            print(
                f"Kubernetes {version} at {host}, namespace {namespace}, "
                f"service account {service_account}:"
            )
            checks = run_checks(api_client, target)
        except kube.ClusterUnreachableError as err:
            raise RunError(kube.lost(host, err)) from None
    for name, check in checks.items():
        # Only failures and unknowns carry a fix.
        label = "Fix" if check.status is Status.FAILED else "To check"
        fix = f". {label}: {check.fix}" if check.fix else ""
        print(f"{check.status.value} {name}: {check.detail}{fix}")
    statuses = [check.status for check in checks.values()]
    failed, unknown = statuses.count(Status.FAILED), statuses.count(Status.UNKNOWN)
    unchecked = f"; {unknown} could not be checked (?)" if unknown else ""
    if failed:
        print(f"{failed} of {len(checks)} checks failed{unchecked}.")
        return 1
    # Nothing was learnt of the cluster, and no gate may pass on that.
    asked = [check for check in checks.values() if check.asked]
    if all(check.status is Status.UNKNOWN for check in asked):
        made = f"None of the {len(asked)} checks that ask the cluster could be made (?)"
        print(f"{made}: whether a run in {namespace} works is unknown.")
        return 1
    if unknown:
        print(f"No check failed{unchecked}: a run in {namespace} works only if those hold.")
    else:
        print(f"No check failed: a run in {namespace} should work.")
    return 0
