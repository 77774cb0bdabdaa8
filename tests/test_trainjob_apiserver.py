"""The multi-node training step against a real kube-apiserver (tests/apiserver/) and a local S3.

The Trainer's CRDs are installed as the v1.20 test server can serve them (tests/trainer_crds.py);
no Trainer controller runs, so the test plays it: it patches the TrainJob's status as the
controller would (`Complete`, `Failed` with a reason, or never), plays global rank 0 by
publishing outputs to the run's location as the entry point does, and plays the garbage
collector when a foreground deletion waits for it. The step runs as KFP runs it (the compiled
component, in a subprocess) as the service account `default-editor`, bound only by the shipped
`manifests/trainjob-rbac.yaml`, in a pod the test stores (nothing runs it) and names through
POD_NAME and POD_SERVICE_ACCOUNT as the downward API would; its files go to an S3 server on
127.0.0.1 (moto), as to KFP's object store. Cancellation is the signal Argo sends a cancelled
run's pod: SIGTERM to the step's whole process group.
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from moto.server import ThreadedMotoServer

from kfp_lightning.components.common import run_layout
from kfp_lightning.components.common.dataset import read_dataset_metadata
from kfp_lightning.components.common.logs_location import LogsLocation, parse_logs_root
from kfp_lightning.components.common.run_form import from_run_form
from kfp_lightning.components.common.storage import open_storage
from kfp_lightning.components.common.training import TrainConfig, training_task_key
from kfp_lightning.components.train_on_nodes.component import train_on_nodes
from kfp_lightning.components.train_on_nodes.nodes import ENTRY_MODULE
from kfp_lightning.components.train_on_nodes.trainjob import (
    RBAC_MANIFEST,
    RUNTIME,
    TEMPLATE_OVERRIDES,
    TRAINJOB_API,
    trainjob_name,
)
from tests.apiserver.server import KubeAPIServer, apply_documents, ensure_namespace
from tests.component_runner import component_command
from tests.conftest import REPO
from tests.trainer_crds import DEFAULT_VERSION, install_trainer

pytestmark = pytest.mark.apiserver

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "trainjob-test", "AWS_SECRET_ACCESS_KEY": "trainjob-secret"}
ROOT = "s3://mlpipeline/private/{namespace}/tensorboard"
SECRET = "mlpipeline-minio-artifact"
SERVICE_ACCOUNT = "default-editor"
IMAGE = "registry.example.com/ml/kfp-lightning-trainer:0.1.0"
WAIT_SECONDS = 60
STEP_POD = "mnist-run-train-on-nodes-driver-1234"
PULL_SECRET = "regcred"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """An S3 API on 127.0.0.1 with the `mlpipeline` bucket."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    ).create_bucket(Bucket="mlpipeline")
    yield endpoint
    server.stop()


@pytest.fixture
def trainer_version() -> str:
    """The Kubeflow Trainer release installed (a folder of ../shared/schemas); tests
    parametrize it to run on another."""
    return DEFAULT_VERSION


@pytest.fixture
def namespace(apiserver_admin: client.ApiClient, trainer_version: str) -> str:
    """A namespace of its own, with the shipped TrainJob RBAC applied, Kubeflow Trainer's CRDs
    and runtime installed, and the step's pod: run as `default-editor`, with a pull secret."""
    install_trainer(apiserver_admin, trainer_version)
    name = f"nodes-{secrets.token_hex(4)}"
    ensure_namespace(apiserver_admin, name)
    documents = list(yaml.safe_load_all((REPO / RBAC_MANIFEST).read_text()))
    apply_documents(apiserver_admin, documents, name)
    core = client.CoreV1Api(apiserver_admin)
    core.create_namespaced_service_account(name, {"metadata": {"name": SERVICE_ACCOUNT}})
    pod = {
        "metadata": {"name": STEP_POD},
        "spec": {
            "serviceAccountName": SERVICE_ACCOUNT,
            # No token secret exists (no controller runs): the pod must not ask to mount one.
            "automountServiceAccountToken": False,
            "imagePullSecrets": [{"name": PULL_SECRET}],
            "containers": [{"name": "main", "image": IMAGE}],
        },
    }
    core.create_namespaced_pod(name, pod)
    return name


@pytest.fixture
def pod_environment(
    kube_apiserver: KubeAPIServer,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, str]:
    """What the step's pod has: its service account's API access, namespace and S3 keys."""
    user = f"system:serviceaccount:{namespace}:{SERVICE_ACCOUNT}"
    kubeconfig = kube_apiserver.write_kubeconfig(tmp_path / "kubeconfig", user, namespace)
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)  # for this process, which plays rank 0
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return {
        "KUBECONFIG": str(kubeconfig),
        "POD_NAMESPACE": namespace,
        # What pipelines/mnist.py gives the step through the downward API.
        "POD_NAME": STEP_POD,
        "POD_SERVICE_ACCOUNT": SERVICE_ACCOUNT,
        **CREDENTIALS,
    }


RUN_IDS = iter(f"{secrets.token_hex(4)}-7d1e-4b8a-9c55-0e6f2d4b1a{i:02d}" for i in range(100))


class Step:
    """One attempt of the step, running in a subprocess as KFP runs it."""

    def __init__(
        self,
        workdir: Path,
        dataset: Path,
        env: dict[str, str],
        run_id: str,
        endpoint: str,
        **parameters: Any,
    ) -> None:
        values = {
            "run_id": run_id,
            "run_name": "nodes test",
            "nodes": 2,
            "node_launcher": "trainjob",
            "trainer_image": IMAGE,
            "timeout_seconds": 600,
            "tensorboard_logs_root": ROOT,
            "s3_endpoint": endpoint,
            "s3_credentials_secret": SECRET,
            "gpus": "1",
            **parameters,
        }
        argv, process_env, self.outputs = component_command(
            train_on_nodes, workdir, values, {"dataset": dataset}, env
        )
        process_env.pop("KUBERNETES_SERVICE_HOST", None)
        self.workdir = workdir
        self.process = subprocess.Popen(
            argv,
            env=process_env,
            cwd=workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # A process group of its own, as the pod's: Argo signals the whole group.
            start_new_session=True,
        )

    def finish(self, timeout: float = WAIT_SECONDS) -> tuple[int, str, str]:
        out, err = self.process.communicate(timeout=timeout)
        return self.process.returncode, out, err

    def signal(self, signum: int) -> None:
        os.killpg(self.process.pid, signum)

    def metrics(self) -> dict[str, float]:
        document = json.loads((self.workdir / "executor_output.json").read_text())
        return dict(document["artifacts"]["metrics"]["artifacts"][0]["metadata"])


def jobs_api(admin: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(admin)


def read_job(admin: client.ApiClient, namespace: str, name: str) -> dict | None:
    group, version, plural, _ = TRAINJOB_API
    try:
        return jobs_api(admin).get_namespaced_custom_object(group, version, namespace, plural, name)
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def wait_for(predicate: Callable[[], Any], what: str, step: Step | None = None) -> Any:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if step is not None and step.process.poll() is not None:
            raise AssertionError(f"the step ended while waiting for {what}: {step.finish()}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def set_condition(
    admin: client.ApiClient, namespace: str, name: str, kind: str, reason: str, message: str
) -> None:
    """Plays the Trainer controller: the TrainJob's status as it copies it from the JobSet."""
    group, version, plural, _ = TRAINJOB_API
    condition = {
        "type": kind,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    done = {"name": "node", "active": 0, "ready": 0, "failed": 0, "suspended": 0}
    done["succeeded" if kind == "Complete" else "failed"] = 2
    done.setdefault("succeeded", 0)
    jobs_api(admin).patch_namespaced_custom_object_status(
        group,
        version,
        namespace,
        plural,
        name,
        {"status": {"conditions": [condition], "jobsStatus": [done]}},
    )


def set_step_image_id(admin: client.ApiClient, namespace: str, image_id: str) -> None:
    """Writes the step container's `imageID` into its pod's status, as the kubelet would."""
    status = {
        "containerStatuses": [
            {"name": "main", "image": IMAGE, "imageID": image_id, "ready": True, "restartCount": 0}
        ]
    }
    client.CoreV1Api(admin).patch_namespaced_pod_status(STEP_POD, namespace, {"status": status})


def task_key_of(dataset: Path) -> str:
    """The key the step gives its task here: no task name, `Step`'s training parameters."""
    sha256 = read_dataset_metadata(dataset)["sha256"]
    return training_task_key("", sha256, from_run_form(TrainConfig, {"gpus": "1"}))


def task_location(namespace: str, run_id: str, dataset: Path) -> LogsLocation:
    """Where the step and its nodes meet: `<root>/<run id>/<task key>`."""
    return parse_logs_root(ROOT, namespace).child(run_id).child(task_key_of(dataset))


def publish_as_rank_zero(
    namespace: str, run_id: str, endpoint: str, tmp_path: Path, dataset: Path
) -> dict:
    """Plays global rank 0: writes its outputs and the marker to the task's location."""
    location = task_location(namespace, run_id, dataset)
    storage = open_storage(location, endpoint)
    dirs = {name: tmp_path / "rank0" / name for name in run_layout.OUTPUT_DIRS}
    (dirs["model"]).mkdir(parents=True)
    (dirs["model"] / "weights.pt").write_bytes(os.urandom(4096))
    (dirs["model"] / "metadata.json").write_text('{"test_accuracy": 0.97}')
    (dirs["tensorboard_logs"] / "nodes-test").mkdir(parents=True)
    (dirs["tensorboard_logs"] / "nodes-test" / "events.out.tfevents.1.host").write_bytes(b"x" * 99)
    dirs["evaluation"].mkdir(parents=True)
    (dirs["evaluation"] / "evaluation.json").write_text("{}")
    result = {
        "metrics": {"test_accuracy": 0.97, "test_loss": 0.1, "nodes": 2, "processes": 2},
        "model_metadata": {"test_accuracy": 0.97},
        "labels": [str(d) for d in range(10)],
        "confusion_matrix": [[1 if r == c else 0 for c in range(10)] for r in range(10)],
    }
    run_layout.publish_outputs(storage, dirs, result)
    return {"dirs": dirs, "result": result, "storage": storage}


def files_of(directory: Path) -> dict[str, bytes]:
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in directory.rglob("*")
        if p.is_file()
    }


# --- the CRDs on the test server ------------------------------------------------------------


def test_the_stripped_crd_stores_a_valid_job_rejects_a_bad_one_and_takes_status(
    apiserver_admin: client.ApiClient, namespace: str
) -> None:
    from kfp_lightning.components.train_on_nodes.trainjob import NodeSpec, trainjob_object

    group, version, plural, _ = TRAINJOB_API
    spec = NodeSpec(IMAGE, 2, 1, 1, ["--location", "s3://b/p"], ENTRY_MODULE, "secret")
    sent = trainjob_object(
        namespace, "3f0c9a52-7d1e-4b8a-9c55-0e6f2d4b1a77", spec, TEMPLATE_OVERRIDES
    )
    api = jobs_api(apiserver_admin)

    stored = api.create_namespaced_custom_object(group, version, namespace, plural, sent)

    # Everything kept as sent (nothing pruned as unknown); the server adds only the CRD's
    # defaults.
    assert {k: v for k, v in stored["spec"].items() if k in sent["spec"]} == sent["spec"]
    assert set(stored["spec"]) - set(sent["spec"]) <= {"managedBy", "suspend"}
    bad = copy.deepcopy(sent)
    bad["metadata"]["name"] = "kfp-bad"
    bad["spec"]["trainer"]["numNodes"] = "two"
    with pytest.raises(ApiException) as refused:
        api.create_namespaced_custom_object(group, version, namespace, plural, bad)
    assert refused.value.status == 422
    assert "spec.trainer.numNodes" in json.loads(refused.value.body)["message"]
    name = sent["metadata"]["name"]
    set_condition(apiserver_admin, namespace, name, "Failed", "FailedJobs", "jobset failed")
    status = read_job(apiserver_admin, namespace, name)["status"]
    assert status["conditions"][0]["reason"] == "FailedJobs"
    assert status["jobsStatus"][0]["failed"] == 2


# --- the step ---------------------------------------------------------------------------------


def test_complete_job_becomes_the_steps_outputs(
    apiserver_admin: client.ApiClient,
    namespace: str,
    pod_environment: dict[str, str],
    s3_endpoint: str,
    dataset: Path,
    tmp_path: Path,
) -> None:
    run_id = next(RUN_IDS)
    name = trainjob_name(f"{run_id}-{task_key_of(dataset)}")
    step = Step(tmp_path / "step", dataset, pod_environment, run_id, s3_endpoint)

    job = wait_for(lambda: read_job(apiserver_admin, namespace, name), "the TrainJob", step)

    trainer = job["spec"]["trainer"]
    assert job["spec"]["runtimeRef"]["name"] == RUNTIME
    assert (trainer["numNodes"], trainer["numProcPerNode"], trainer["image"]) == (2, 1, IMAGE)
    assert trainer["command"] == ["torchrun", "--module", ENTRY_MODULE]
    location = task_location(namespace, run_id, dataset)
    arguments = trainer["args"]
    assert arguments[arguments.index("--location") + 1] == location.uri
    assert arguments[arguments.index("--s3-endpoint") + 1] == s3_endpoint
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "1"
    env = {e["name"]: e.get("valueFrom", {}) for e in trainer["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["secretKeyRef"]["name"] == SECRET
    # The nodes find the dataset in the run's location, as the step put it there.
    storage = open_storage(location, s3_endpoint)
    uploaded = run_layout.files_under(storage, run_layout.DATASET)
    assert uploaded == {
        f"{run_layout.DATASET}/{p.relative_to(dataset).as_posix()}": p.stat().st_size
        for p in dataset.rglob("*")
        if p.is_file()
    }

    rank0 = publish_as_rank_zero(namespace, run_id, s3_endpoint, tmp_path, dataset)
    set_condition(apiserver_admin, namespace, name, "Complete", "AllJobsCompleted", "done")
    code, out, err = step.finish()

    assert code == 0, out + err
    assert f"TrainJob {namespace}/{name}: created (2 nodes x 1 process(es)" in out
    assert f"TrainJob {namespace}/{name}: complete (AllJobsCompleted: done)" in out
    for artifact in run_layout.OUTPUT_DIRS:
        assert files_of(step.outputs[artifact]) == files_of(rank0["dirs"][artifact]), artifact
    metrics = step.metrics()
    assert metrics["nodes"] == 2
    assert metrics["processes"] == 2
    assert metrics["test_accuracy"] == pytest.approx(0.97)
    # The job stays, complete: the cluster's record of the run (deleted with the namespace).
    assert read_job(apiserver_admin, namespace, name) is not None


def test_failed_job_fails_the_step_with_its_reason(
    apiserver_admin: client.ApiClient,
    namespace: str,
    pod_environment: dict[str, str],
    s3_endpoint: str,
    dataset: Path,
    tmp_path: Path,
) -> None:
    run_id = next(RUN_IDS)
    name = trainjob_name(f"{run_id}-{task_key_of(dataset)}")
    step = Step(tmp_path / "step", dataset, pod_environment, run_id, s3_endpoint)
    wait_for(lambda: read_job(apiserver_admin, namespace, name), "the TrainJob", step)

    message = "jobset failed due to reaching max number of restarts"
    set_condition(apiserver_admin, namespace, name, "Failed", "FailedJobs", message)
    code, out, err = step.finish()

    assert code == 1, out + err
    assert err == f"error: TrainJob {namespace}/{name} failed: FailedJobs: {message}\n"
    assert not any(path.exists() for path in step.outputs.values())


def test_a_job_that_never_finishes_is_deleted_at_the_timeout(
    apiserver_admin: client.ApiClient,
    namespace: str,
    pod_environment: dict[str, str],
    s3_endpoint: str,
    dataset: Path,
    tmp_path: Path,
) -> None:
    run_id = next(RUN_IDS)
    name = trainjob_name(f"{run_id}-{task_key_of(dataset)}")
    step = Step(tmp_path / "step", dataset, pod_environment, run_id, s3_endpoint, timeout_seconds=8)
    wait_for(lambda: read_job(apiserver_admin, namespace, name), "the TrainJob", step)

    code, out, err = step.finish()

    assert code == 1, out + err
    assert err == (
        f"error: TrainJob {namespace}/{name} did not finish within the training timeout "
        "(8 s): deleted it\n"
    )
    assert read_job(apiserver_admin, namespace, name) is None


def test_cancelling_the_run_deletes_the_job(
    apiserver_admin: client.ApiClient,
    namespace: str,
    pod_environment: dict[str, str],
    s3_endpoint: str,
    dataset: Path,
    tmp_path: Path,
) -> None:
    run_id = next(RUN_IDS)
    name = trainjob_name(f"{run_id}-{task_key_of(dataset)}")
    step = Step(tmp_path / "step", dataset, pod_environment, run_id, s3_endpoint)
    wait_for(lambda: read_job(apiserver_admin, namespace, name), "the TrainJob", step)

    step.signal(signal.SIGTERM)  # what Argo sends the pod of a cancelled run
    code, out, err = step.finish()

    assert code != 0
    assert f"cancelled (SIGTERM): deleted TrainJob {namespace}/{name}" in err, out + err
    assert read_job(apiserver_admin, namespace, name) is None


def test_a_retry_follows_a_running_job_and_replaces_a_failed_one(
    apiserver_admin: client.ApiClient,
    namespace: str,
    pod_environment: dict[str, str],
    s3_endpoint: str,
    dataset: Path,
    tmp_path: Path,
) -> None:
    run_id = next(RUN_IDS)
    name = trainjob_name(f"{run_id}-{task_key_of(dataset)}")
    group, version, plural, _ = TRAINJOB_API
    # The first attempt's pod is lost (SIGKILL: no cleanup); its job keeps running.
    first = Step(tmp_path / "first", dataset, pod_environment, run_id, s3_endpoint)
    job = wait_for(lambda: read_job(apiserver_admin, namespace, name), "the TrainJob", first)
    first.signal(signal.SIGKILL)
    first.finish()

    second = Step(tmp_path / "second", dataset, pod_environment, run_id, s3_endpoint)
    # Whether it reads the job before or after it completes, it must follow it, not start one.
    publish_as_rank_zero(namespace, run_id, s3_endpoint, tmp_path / "a", dataset)
    set_condition(apiserver_admin, namespace, name, "Complete", "AllJobsCompleted", "done")
    code, out, err = second.finish()

    assert code == 0, out + err
    assert f"TrainJob {namespace}/{name}: following the job of an earlier attempt" in out
    listed = jobs_api(apiserver_admin).list_namespaced_custom_object(
        group, version, namespace, plural
    )["items"]
    assert [j["metadata"]["uid"] for j in listed] == [job["metadata"]["uid"]]

    # A job that failed is replaced: deleted in the foreground (its pods first), then created.
    set_condition(apiserver_admin, namespace, name, "Failed", "FailedJobs", "node lost")
    third = Step(tmp_path / "third", dataset, pod_environment, run_id, s3_endpoint)

    def deleting() -> bool:
        current = read_job(apiserver_admin, namespace, name)
        return bool(current and current["metadata"].get("deletionTimestamp"))

    wait_for(deleting, "the foreground deletion", third)
    current = read_job(apiserver_admin, namespace, name)
    assert current["metadata"]["finalizers"] == ["foregroundDeletion"]
    # No garbage collector runs here: play it, now that the job's dependents would be gone.
    jobs_api(apiserver_admin).patch_namespaced_custom_object(
        group, version, namespace, plural, name, {"metadata": {"finalizers": None}}
    )

    def replaced() -> dict | None:
        current = read_job(apiserver_admin, namespace, name)
        return current if current and current["metadata"]["uid"] != job["metadata"]["uid"] else None

    wait_for(replaced, "the replacement job", third)
    # The failed job's outputs were cleared before the new one started.
    storage = open_storage(task_location(namespace, run_id, dataset), s3_endpoint)
    assert run_layout.read_marker(storage) is None
    publish_as_rank_zero(namespace, run_id, s3_endpoint, tmp_path / "b", dataset)
    set_condition(apiserver_admin, namespace, name, "Complete", "AllJobsCompleted", "done")
    code, out, err = third.finish()

    assert code == 0, out + err
    assert "an earlier attempt's job failed" in out
    assert f"TrainJob {namespace}/{name}: created" in out


# --- who the nodes run as, and which Trainer can run them ---------------------------------------


@pytest.mark.parametrize("trainer_version", ["kubeflow-trainer-v2.1.0", "kubeflow-trainer-v2.2.0"])
def test_the_nodes_run_as_the_steps_account_with_its_pull_secrets(
    apiserver_admin: client.ApiClient,
    namespace: str,
    pod_environment: dict[str, str],
    s3_endpoint: str,
    dataset: Path,
    tmp_path: Path,
) -> None:
    from kfp_lightning.components.train_on_nodes.trainjob import step_pod_identity
    from tests.test_trainjob_objects import pod_patch

    # What the kubelet reports of the step's container, as cri-dockerd words it.
    repo, digest = IMAGE.rpartition(":")[0], "sha256:" + "ab12" * 16
    set_step_image_id(apiserver_admin, namespace, f"docker-pullable://{repo}@{digest}")
    run_id = next(RUN_IDS)
    name = trainjob_name(f"{run_id}-{task_key_of(dataset)}")
    step = Step(tmp_path / "step", dataset, pod_environment, run_id, s3_endpoint)

    job = wait_for(lambda: read_job(apiserver_admin, namespace, name), "the TrainJob", step)
    set_condition(apiserver_admin, namespace, name, "Failed", "FailedJobs", "stop")
    code, out, err = step.finish()

    pod = pod_patch(job)
    assert pod["spec"]["serviceAccountName"] == SERVICE_ACCOUNT
    assert pod["spec"]["imagePullSecrets"] == [{"name": PULL_SECRET}]
    assert pod["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
    # The nodes run exactly what the step runs: a TrainJob cannot ask them to pull the tag.
    assert job["spec"]["trainer"]["image"] == f"{IMAGE}@{digest}"
    assert (
        f"node pods: service account {SERVICE_ACCOUNT}, image pull secrets {PULL_SECRET}, as "
        f"this step's pod {namespace}/{STEP_POD}; image {IMAGE}@{digest}, the digest this "
        "step's container runs\n"
    ) in out, out + err
    assert code == 1

    environ = {"POD_NAME": STEP_POD}
    # containerd's form, without the prefix.
    set_step_image_id(apiserver_admin, namespace, f"{repo}@{digest}")
    assert step_pod_identity(apiserver_admin, namespace, IMAGE, environ).image == (
        f"{IMAGE}@{digest}"
    )
    # An image already named by digest, or another image than the step's: left as it is.
    pinned = f"{repo}@sha256:{'cd34' * 16}"
    assert step_pod_identity(apiserver_admin, namespace, pinned, environ).image == pinned
    other = step_pod_identity(apiserver_admin, namespace, f"{repo}:0.2.0", environ)
    assert other.image == f"{repo}:0.2.0"
    assert other.note.endswith(
        f"; image {repo}:0.2.0 by tag, with the runtime's pull policy (not this step's image)"
    )
    # A bare image ID (an image with no repo digest) names nothing a node could pull.
    set_step_image_id(apiserver_admin, namespace, digest)
    bare = step_pod_identity(apiserver_admin, namespace, IMAGE, environ)
    assert bare.image == IMAGE
    assert bare.note.endswith(
        f"; image {IMAGE} by tag, with the runtime's pull policy (this step's digest not read)"
    )


def test_without_reading_its_pod_the_nodes_rely_on_the_account(
    apiserver_admin: client.ApiClient,
    namespace: str,
    pod_environment: dict[str, str],
    s3_endpoint: str,
    dataset: Path,
    tmp_path: Path,
) -> None:
    from kfp_lightning.components.train_on_nodes.trainjob import step_pod_identity
    from tests.test_trainjob_objects import pod_patch

    # A role granting the TrainJob verbs only: reading the step's pod is refused.
    rbac = client.RbacAuthorizationV1Api(apiserver_admin)
    role = rbac.read_namespaced_role("kfp-lightning-trainjob-launcher", namespace)
    role.rules = role.rules[:1]
    rbac.replace_namespaced_role(role.metadata.name, namespace, role)
    run_id = next(RUN_IDS)
    name = trainjob_name(f"{run_id}-{task_key_of(dataset)}")
    step = Step(tmp_path / "step", dataset, pod_environment, run_id, s3_endpoint)

    job = wait_for(lambda: read_job(apiserver_admin, namespace, name), "the TrainJob", step)
    set_condition(apiserver_admin, namespace, name, "Failed", "FailedJobs", "stop")
    code, out, _ = step.finish()

    pod = pod_patch(job)["spec"]
    assert pod["serviceAccountName"] == SERVICE_ACCOUNT
    assert "imagePullSecrets" not in pod
    (line,) = [x for x in out.splitlines() if x.startswith("node pods:")]
    assert line.startswith(
        f"node pods: service account {SERVICE_ACCOUNT}; image pull secrets not copied (reading "
        f"pod {namespace}/{STEP_POD} was refused: HTTP 403: "
    ), line
    assert line.endswith(
        "they get those of the service account, which Kubernetes adds to every pod it runs as; "
        f"image {IMAGE} by tag, with the runtime's pull policy (this step's digest not read)"
    )
    assert job["spec"]["trainer"]["image"] == IMAGE
    # Without POD_NAME (no downward API), the same, saying why.
    identity = step_pod_identity(
        apiserver_admin, namespace, IMAGE, {"POD_SERVICE_ACCOUNT": SERVICE_ACCOUNT}
    )
    assert (identity.service_account, identity.image_pull_secrets) == (SERVICE_ACCOUNT, ())
    assert "image pull secrets not copied (POD_NAME is unset)" in identity.note
    assert code == 1


@pytest.mark.parametrize("trainer_version", ["kubeflow-trainer-v2.0.0"])
def test_on_trainer_v2_0_the_step_fails_before_anything_is_created(
    apiserver_admin: client.ApiClient,
    namespace: str,
    pod_environment: dict[str, str],
    s3_endpoint: str,
    dataset: Path,
    tmp_path: Path,
) -> None:
    group, version, plural, _ = TRAINJOB_API
    run_id = next(RUN_IDS)
    step = Step(tmp_path / "step", dataset, pod_environment, run_id, s3_endpoint)

    code, out, err = step.finish()

    assert code == 1, out + err
    assert err.startswith(
        "error: the cluster's TrainJob (trainer.kubeflow.org/v1alpha1) has no "
        "spec.podTemplateOverrides or spec.runtimePatches (Kubeflow Trainer v2.0? "
    ), err
    assert err.count("\n") == 1
    listed = jobs_api(apiserver_admin).list_namespaced_custom_object(
        group, version, namespace, plural
    )
    assert listed["items"] == []
    storage = open_storage(task_location(namespace, run_id, dataset), s3_endpoint)
    assert storage.list_files() == {}
