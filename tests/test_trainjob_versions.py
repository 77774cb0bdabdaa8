"""The run's TrainJob in each Kubeflow Trainer release's form, against a real kube-apiserver.

Each version's CRDs (../shared/schemas/kubeflow-trainer-v2.{0,1,2,3}.0/, stripped only of what
the v1.20 server refuses, see tests/trainer_crds.py) are installed in turn; the form is read
from the schema the server publishes, the job is created by the real code as the pipeline's
service account (bound only by the shipped manifests/trainjob-rbac.yaml) and read back: every
pod setting must be stored as sent. Trainer v2.0.0, whose TrainJob cannot carry them, must fail
in one line naming the TrainJob before anything is created; a job in the wrong form (what
today's clusters would prune) must be noticed, deleted and reported by field.
"""

from __future__ import annotations

import secrets

import pytest
import yaml
from kubernetes import client

from kfp_lightning.components.common.errors import RunError
from kfp_lightning.components.common.kubernetes import Patience, differences
from kfp_lightning.components.train_on_nodes.nodes import ENTRY_MODULE
from kfp_lightning.components.train_on_nodes.trainjob import (
    RBAC_MANIFEST,
    RUNTIME_PATCHES,
    TEMPLATE_OVERRIDES,
    NodeSpec,
    TrainJobs,
    check_trainjob,
    dry_run_trainjob,
    trainjob_form,
    trainjob_object,
)
from tests.apiserver.server import KubeAPIServer, apply_documents, ensure_namespace
from tests.conftest import REPO
from tests.test_trainjob_apiserver import read_job
from tests.test_trainjob_objects import pod_patch
from tests.trainer_crds import install_trainer

pytestmark = pytest.mark.apiserver

SERVICE_ACCOUNT = "default-editor"
FORM_OF = {
    "kubeflow-trainer-v2.1.0": TEMPLATE_OVERRIDES,
    "kubeflow-trainer-v2.2.0": RUNTIME_PATCHES,
    "kubeflow-trainer-v2.3.0": RUNTIME_PATCHES,
}
V2_0 = "kubeflow-trainer-v2.0.0"
PATIENCE = Patience(attempts=1, poll_seconds=0.2)
SPEC = NodeSpec(
    image="registry.example.com/ml/kfp-lightning-trainer:0.1.0",
    nodes=2,
    processes_per_node=1,
    gpus_per_node=1,
    arguments=["--location", "s3://mlpipeline/private/team/tensorboard/run"],
    module=ENTRY_MODULE,
    s3_secret="mlpipeline-minio-artifact",
    node_selector={"cloud.google.com/gke-accelerator": "nvidia-l4"},
    tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    service_account=SERVICE_ACCOUNT,
    image_pull_secrets=("regcred",),
)


def new_namespace(admin: client.ApiClient) -> str:
    name = f"versions-{secrets.token_hex(4)}"
    ensure_namespace(admin, name)
    documents = list(yaml.safe_load_all((REPO / RBAC_MANIFEST).read_text()))
    apply_documents(admin, documents, name)
    return name


def as_account(server: KubeAPIServer, namespace: str) -> client.ApiClient:
    """A client as the pipeline's service account, as the step runs."""
    configuration = server.configuration(
        server.token(f"system:serviceaccount:{namespace}:{SERVICE_ACCOUNT}")
    )
    return client.ApiClient(configuration)


@pytest.mark.parametrize("version", FORM_OF)
def test_each_trainer_stores_every_pod_setting_in_its_form(
    version: str, kube_apiserver: KubeAPIServer, apiserver_admin: client.ApiClient
) -> None:
    install_trainer(apiserver_admin, version)
    namespace = new_namespace(apiserver_admin)
    with as_account(kube_apiserver, namespace) as api_client:
        form = trainjob_form(api_client, PATIENCE)
        assert form == FORM_OF[version]
        wanted = trainjob_object(namespace, f"run-{secrets.token_hex(4)}", SPEC, form)
        name = wanted["metadata"]["name"]
        # The preflight's dry run: stored as sent, and nothing kept.
        assert dry_run_trainjob(api_client, namespace, wanted, PATIENCE) == []
        assert check_trainjob(api_client, namespace, SPEC, PATIENCE) == []
        assert read_job(apiserver_admin, namespace, name) is None

        created = TrainJobs(api_client, namespace, PATIENCE).create(wanted)

    stored = read_job(apiserver_admin, namespace, name)
    assert created is not None
    assert differences(wanted, stored) == []
    pod = pod_patch(stored)
    assert pod["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
    assert pod["spec"]["serviceAccountName"] == SERVICE_ACCOUNT
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["spec"]["nodeSelector"] == dict(SPEC.node_selector)
    assert pod["spec"]["tolerations"] == list(SPEC.tolerations)
    assert {v["name"] for v in pod["spec"]["volumes"]} == {"dshm"}
    assert stored["spec"]["trainer"]["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "1"


def test_trainer_v2_0_fails_in_one_line_naming_the_trainjob(
    kube_apiserver: KubeAPIServer, apiserver_admin: client.ApiClient
) -> None:
    install_trainer(apiserver_admin, V2_0)
    namespace = new_namespace(apiserver_admin)
    try:
        with as_account(kube_apiserver, namespace) as api_client:
            with pytest.raises(RunError) as failed:
                trainjob_form(api_client, PATIENCE)
            problems = check_trainjob(api_client, namespace, SPEC, PATIENCE)
    finally:
        install_trainer(apiserver_admin)
    message = str(failed.value)
    assert "\n" not in message
    assert message.startswith(
        "the cluster's TrainJob (trainer.kubeflow.org/v1alpha1) has no "
        "spec.podTemplateOverrides or spec.runtimePatches (Kubeflow Trainer v2.0? its "
        "spec.podSpecOverrides cannot carry the pod annotation sidecar.istio.io/inject nor "
        "imagePullSecrets)"
    )
    assert message.endswith("upgrade to Kubeflow Trainer v2.1 or newer")
    assert problems == [message]


def test_a_job_the_server_prunes_is_deleted_and_reported_by_field(
    kube_apiserver: KubeAPIServer, apiserver_admin: client.ApiClient
) -> None:
    # Today's bug: v2.1's form sent to a Trainer v2.2 cluster, which prunes it silently.
    install_trainer(apiserver_admin, "kubeflow-trainer-v2.2.0")
    namespace = new_namespace(apiserver_admin)
    wanted = trainjob_object(namespace, f"run-{secrets.token_hex(4)}", SPEC, TEMPLATE_OVERRIDES)
    name = wanted["metadata"]["name"]
    with as_account(kube_apiserver, namespace) as api_client:
        assert dry_run_trainjob(api_client, namespace, wanted, PATIENCE) == [
            f"TrainJob {namespace}/{name}: the cluster would not store "
            "spec.podTemplateOverrides as sent"
        ]
        with pytest.raises(RunError) as failed:
            TrainJobs(api_client, namespace, PATIENCE).create(wanted)

    assert str(failed.value).startswith(
        f"TrainJob {namespace}/{name}: the cluster stored it without spec.podTemplateOverrides "
        "as sent (its TrainJob schema does not know them): deleted it"
    )
    assert "\n" not in str(failed.value)
    assert read_job(apiserver_admin, namespace, name) is None


@pytest.mark.parametrize("state", ["does not exist", "is being deleted"])
def test_a_namespace_that_cannot_take_the_job_is_named_not_taken_for_rbac_or_a_crd(
    state: str, apiserver_admin: client.ApiClient
) -> None:
    # The NamespaceLifecycle plugin answers 404 (none) or 403 (Terminating, which it stays
    # here: no namespace controller runs), though the CRD is served, even to an admin.
    install_trainer(apiserver_admin)
    namespace = new_namespace(apiserver_admin)
    if state == "does not exist":
        namespace += "-gone"
    else:
        client.CoreV1Api(apiserver_admin).delete_namespace(namespace)
    form = trainjob_form(apiserver_admin, PATIENCE)
    wanted = trainjob_object(namespace, "run-1", SPEC, form)
    with pytest.raises(RunError) as refused:
        TrainJobs(apiserver_admin, namespace, PATIENCE).create(wanted)
    assert str(refused.value).startswith(f"namespace {namespace} {state} (HTTP 40")
