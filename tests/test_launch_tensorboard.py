"""The TensorBoard launcher against a Kubernetes API server on 127.0.0.1 (tests/fake_kubernetes.py).

The real `kubernetes` client and the real launcher talk HTTP to the fake server, configured the
standard way (a kubeconfig in $KUBECONFIG); each test scripts the server (missing CRD, forbidden
verb, faults, readiness) and checks the requests it received and the notes written.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kfp import dsl

from kfp_lightning.components.common import images
from kfp_lightning.components.common.kubernetes import Patience
from kfp_lightning.components.launch_tensorboard import fallback
from kfp_lightning.components.launch_tensorboard.component import launch_tensorboard as component
from kfp_lightning.components.launch_tensorboard.launcher import Launch, launch_from_run_form
from kfp_lightning.components.launch_tensorboard.objects import poddefault_label, tensorboard_name
from tests.conftest import SHARED
from tests.fake_kubernetes import FakeKubernetes, Fault, fake_kubernetes, use_as_cluster

SCHEMAS = SHARED / "schemas"
NAMESPACE = "team-a"
RUN_ID = "3f0c9a52-7d1e-4b8a-9c55-0e6f2d4b1a77"
NAME = f"kfp-run-{RUN_ID}"
S3_ROOT = "s3://mlpipeline/private/{namespace}/tensorboard"
S3_LOGS = f"s3://mlpipeline/private/{NAMESPACE}/tensorboard/{RUN_ID}"
ENDPOINT = "http://minio-service.kubeflow:9000"
SECRET = "mlpipeline-minio-artifact"
TOOLS_IMAGE = "ghcr.io/kfp-lightning/kfp-lightning-tools:"
FAST = Patience(attempts=3, backoff_seconds=0.01, poll_seconds=0.01, request_timeout_seconds=5)
TOKEN = "t0k3n"


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKubernetes]:
    """The fake API server, reachable through $KUBECONFIG, as the pipeline's pod would see it."""
    with fake_kubernetes(SCHEMAS) as server:
        use_as_cluster(server, tmp_path, monkeypatch, NAMESPACE, TOKEN)
        monkeypatch.delenv(images.REGISTRY_ENV, raising=False)
        yield server


def launch(tmp_path: Path, **overrides: object) -> tuple[Launch, str, dict]:
    """Runs the launcher with the component's defaults (and `overrides`); returns its notes."""
    params: dict = {
        "run_id": RUN_ID,
        "tensorboard_logs_root": S3_ROOT,
        "s3_endpoint": ENDPOINT,
        "s3_credentials_secret": SECRET,
        "kubeflow_base_url": "/",
        "wait_ready_seconds": 5,
        **overrides,
    }
    markdown, ui = tmp_path / "tensorboard.md", tmp_path / "ui.json"
    result = launch_from_run_form(markdown, ui, params["run_id"], params, patience=FAST)
    return result, markdown.read_text(), json.loads(ui.read_text())


def manifest_in(markdown: str) -> list[dict]:
    """The objects of the `kubectl apply` heredoc in a fallback note."""
    match = re.search(r"kubectl apply -n \S+ -f - <<'EOF'\n(.*?)\nEOF\n", markdown, re.S)
    assert match, markdown
    return list(yaml.safe_load_all(match.group(1)))


def assert_fallback_note(markdown: str, logs: str) -> None:
    """A fallback note: the ClusterIP TensorBoard over `logs`, valid, and the port-forward."""
    objects = manifest_in(markdown)
    assert [o["kind"] for o in objects] == ["Deployment", "Service"]
    for obj in objects:
        kubernetes_validate.validate(obj, kubernetes_validate.utils.latest_version(), strict=True)
    container = objects[0]["spec"]["template"]["spec"]["containers"][0]
    assert f"--logdir={logs}" in container["args"] or logs.startswith("pvc://")
    assert objects[1]["spec"]["type"] == "ClusterIP"
    assert f"kubectl -n {NAMESPACE} port-forward service/kfp-lightning-tensorboard 6006:80" in (
        markdown
    )
    assert "http://127.0.0.1:6006/" in markdown
    assert "NodePort" not in markdown
    assert "LoadBalancer" not in markdown


# --- names --------------------------------------------------------------------------------


def test_name_is_the_run_id_when_it_already_is_a_valid_name() -> None:
    assert tensorboard_name(RUN_ID) == NAME
    assert tensorboard_name("0" * 55) == "kfp-run-" + "0" * 55  # 63 characters: still fits


@pytest.mark.parametrize(
    "run_id",
    [
        "Run_2026-01-01T00:00:00Z",
        "x" * 200,
        "UPPER-case",
        "a--b",
        "0" * 56,
        "-",
    ],
)
def test_other_run_ids_give_valid_unique_stable_names(run_id: str) -> None:
    name = tensorboard_name(run_id)
    # DNS-1035 label: the controller names a Service after it.
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), name
    assert len(name) <= 63
    assert tensorboard_name(run_id) == name
    assert name != tensorboard_name(run_id + "x")
    if run_id.swapcase() != run_id:
        assert name != tensorboard_name(run_id.swapcase())


# --- the Kubernetes API -------------------------------------------------------------------


def test_s3_creates_poddefault_then_tensorboard_and_waits_until_ready(
    cluster: FakeKubernetes, tmp_path: Path
) -> None:
    cluster.ready_after_gets = 3
    result, markdown, ui = launch(tmp_path)

    assert cluster.calls() == [
        ("POST", "poddefaults"),
        ("POST", "tensorboards"),
        ("GET", f"tensorboards/{NAME}"),
        ("GET", f"tensorboards/{NAME}"),
        ("GET", f"tensorboards/{NAME}"),
    ]
    assert all(r.authorization == f"Bearer {TOKEN}" for r in cluster.requests)
    assert all(f"/namespaces/{NAMESPACE}/" in r.path for r in cluster.requests)
    poddefault, tensorboard = cluster.requests[0].body, cluster.requests[1].body
    assert tensorboard["metadata"]["name"] == NAME
    assert tensorboard["spec"] == {"logspath": S3_LOGS}
    assert tensorboard["metadata"]["labels"]["kfp-lightning/run-id"] == RUN_ID
    # The PodDefault selects the Tensorboard's pod (the controller copies the CR's labels), by
    # the web apps' convention: its own key, with the value "true".
    selector = poddefault["spec"]["selector"]["matchLabels"]
    assert selector == {poddefault_label(poddefault["metadata"]["name"]): "true"}
    assert selector.items() <= tensorboard["metadata"]["labels"].items()
    env = {e["name"]: e for e in poddefault["spec"]["env"]}
    assert env["S3_ENDPOINT"]["value"] == ENDPOINT
    assert env["S3_USE_HTTPS"]["value"] == "0"
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
        "name": SECRET,
        "key": "accesskey",
    }
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": SECRET,
        "key": "secretkey",
    }

    assert (result.state, result.detail) == ("ready", "created")
    assert result.url == f"/tensorboard/{NAMESPACE}/{NAME}/"
    assert f"[Open TensorBoard for this run](/tensorboard/{NAMESPACE}/{NAME}/)" in markdown
    assert re.search(r"\*\*Ready\*\*, \d+ s after this task requested it", markdown)
    assert S3_LOGS in markdown
    assert_s3_viewer(ui)


def assert_s3_viewer(ui: dict) -> None:
    """A "Start Tensorboard" entry over the run's s3:// logs (tests/test_viewer_metadata.py
    checks every entry against what the KFP frontend accepts)."""
    [entry] = ui["outputs"]
    assert (entry["type"], entry["source"]) == ("tensorboard", S3_LOGS)
    assert entry["image"].startswith(TOOLS_IMAGE)
    env = {e["name"]: e for e in entry["pod_template_spec"]["spec"]["containers"][0]["env"]}
    assert env["S3_ENDPOINT"]["value"] == ENDPOINT
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == SECRET


def test_pvc_logs_need_no_poddefault(cluster: FakeKubernetes, tmp_path: Path) -> None:
    result, markdown, ui = launch(tmp_path, tensorboard_logs_root="pvc://tb-logs/runs")

    assert [c for c in cluster.calls() if c[0] != "GET"] == [("POST", "tensorboards")]
    tensorboard = cluster.get_object("tensorboards", NAMESPACE, NAME)
    assert tensorboard["spec"]["logspath"] == f"pvc://tb-logs/runs/{RUN_ID}"
    assert not any(
        k.startswith("kfp-lightning/kfp-lightning-s3-") for k in tensorboard["metadata"]["labels"]
    )
    assert result.state == "ready"
    # This server serves no claims: the note says the access mode is unknown, and goes on.
    assert cluster.calls()[0] == (
        "GET",
        f"/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims/tb-logs",
    )
    assert "The claim `tb-logs` could not be read (HTTP 404" in markdown
    assert "ReadWriteMany claim or an s3:// logs root" in markdown
    [entry] = ui["outputs"]
    assert entry["source"] == f"volume://tensorboard-logs/runs/{RUN_ID}"
    volumes = entry["pod_template_spec"]["spec"]["volumes"]
    assert {
        "name": "tensorboard-logs",
        "persistentVolumeClaim": {"claimName": "tb-logs", "readOnly": True},
    } in volumes


def test_absolute_link_with_a_kubeflow_url(cluster: FakeKubernetes, tmp_path: Path) -> None:
    result, markdown, _ = launch(tmp_path, kubeflow_base_url="https://kubeflow.example.com/")

    assert result.url == f"https://kubeflow.example.com/tensorboard/{NAMESPACE}/{NAME}/"
    assert f"]({result.url})" in markdown


def test_a_retried_task_changes_nothing(cluster: FakeKubernetes, tmp_path: Path) -> None:
    launch(tmp_path / "first")
    versions = {k: o["metadata"]["resourceVersion"] for k, o in cluster.objects.items()}
    cluster.requests.clear()

    result, markdown, _ = launch(tmp_path / "second")

    writes = [c for c in cluster.calls() if c[0] != "GET"]
    assert writes == [("POST", "poddefaults"), ("POST", "tensorboards")]  # both 409, no DELETE
    assert {k: o["metadata"]["resourceVersion"] for k, o in cluster.objects.items()} == versions
    assert (result.state, result.detail) == ("ready", "unchanged")
    assert "was already there" in markdown


def test_missing_crd_falls_back_to_a_clusterip_tensorboard(
    cluster: FakeKubernetes, tmp_path: Path
) -> None:
    cluster.installed.clear()  # standalone Kubeflow Pipelines: neither CRD

    result, markdown, ui = launch(tmp_path)

    assert cluster.calls() == [("POST", "poddefaults")]
    assert result.state == "fallback"
    assert "`poddefaults.kubeflow.org`" in markdown
    assert "CRD is not installed" in markdown
    assert "HTTP 404: the server could not find the requested resource" in markdown
    assert_fallback_note(markdown, S3_LOGS)
    env = manifest_in(markdown)[0]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "S3_ENDPOINT", "value": ENDPOINT} in env
    assert_s3_viewer(ui)  # the run page's viewer needs no Kubeflow CRD


def test_missing_tensorboard_crd_alone_also_falls_back(
    cluster: FakeKubernetes, tmp_path: Path
) -> None:
    cluster.installed.discard("tensorboards")

    result, markdown, _ = launch(tmp_path, tensorboard_logs_root="pvc://tb-logs/runs")

    assert cluster.calls()[1:] == [("POST", "tensorboards")]  # after reading the claim
    assert result.state == "fallback"
    assert "`tensorboards.tensorboard.kubeflow.org`" in markdown
    assert_fallback_note(markdown, f"pvc://tb-logs/runs/{RUN_ID}")
    pod = manifest_in(markdown)[0]["spec"]["template"]["spec"]
    assert pod["containers"][0]["args"][0] == f"--logdir=/tensorboard_logs/runs/{RUN_ID}"
    claim = next(v for v in pod["volumes"] if "persistentVolumeClaim" in v)
    assert claim["persistentVolumeClaim"] == {"claimName": "tb-logs", "readOnly": True}


def test_forbidden_falls_back_and_names_the_rbac_fix(
    cluster: FakeKubernetes, tmp_path: Path
) -> None:
    cluster.forbidden.add(("POST", "tensorboards"))

    result, markdown, _ = launch(tmp_path)

    assert cluster.calls() == [("POST", "poddefaults"), ("POST", "tensorboards")]
    assert result.state == "fallback"
    assert 'cannot create resource "tensorboards"' in markdown
    assert "manifests/tensorboard-launcher-rbac.yaml" in markdown
    assert_fallback_note(markdown, S3_LOGS)


def test_forbidden_update_of_a_differing_object_falls_back(
    cluster: FakeKubernetes, tmp_path: Path
) -> None:
    # A differing object is deleted and created again; a role without delete cannot.
    cluster.add_object(
        {
            "apiVersion": "tensorboard.kubeflow.org/v1alpha1",
            "kind": "Tensorboard",
            "metadata": {"name": NAME, "namespace": NAMESPACE},
            "spec": {"logspath": "s3://elsewhere/logs"},
        }
    )
    cluster.forbidden.add(("DELETE", "tensorboards"))

    result, markdown, _ = launch(tmp_path)

    assert result.state == "fallback"
    assert 'cannot delete resource "tensorboards"' in markdown
    assert "PATCH" not in [c[0] for c in cluster.calls()]


def test_a_server_error_is_retried(cluster: FakeKubernetes, tmp_path: Path) -> None:
    cluster.faults.append(Fault("POST", "tensorboards", status=500))

    result, _, _ = launch(tmp_path)

    assert cluster.calls()[:3] == [
        ("POST", "poddefaults"),
        ("POST", "tensorboards"),
        ("POST", "tensorboards"),
    ]
    assert cluster.requests[1].body == cluster.requests[2].body
    assert (result.state, result.detail) == ("ready", "created")


def test_a_dropped_connection_is_retried(cluster: FakeKubernetes, tmp_path: Path) -> None:
    cluster.faults.append(Fault("POST", "poddefaults", status=None))

    result, _, _ = launch(tmp_path)

    assert cluster.calls()[:3] == [
        ("POST", "poddefaults"),
        ("POST", "poddefaults"),
        ("POST", "tensorboards"),
    ]
    assert ("poddefaults", NAMESPACE, cluster.requests[1].body["metadata"]["name"]) in (
        cluster.objects
    )
    assert result.state == "ready"


def test_a_create_whose_answer_was_lost_is_not_repeated(
    cluster: FakeKubernetes, tmp_path: Path
) -> None:
    # The server created it, then the connection dropped: the retry meets 409 and reads it back.
    cluster.faults.append(Fault("POST", "tensorboards", status=None, after_effect=True))

    result, _, _ = launch(tmp_path)

    assert cluster.calls()[1:4] == [
        ("POST", "tensorboards"),
        ("POST", "tensorboards"),
        ("GET", f"tensorboards/{NAME}"),
    ]
    assert "DELETE" not in [c[0] for c in cluster.calls()]
    assert (result.state, result.detail) == ("ready", "unchanged")


def test_a_persistent_server_error_falls_back(cluster: FakeKubernetes, tmp_path: Path) -> None:
    cluster.faults += [Fault("POST", "tensorboards", status=503)] * FAST.attempts

    result, markdown, _ = launch(tmp_path)

    assert cluster.calls().count(("POST", "tensorboards")) == FAST.attempts
    assert result.state == "fallback"
    assert "HTTP 503" in markdown
    assert_fallback_note(markdown, S3_LOGS)


def test_not_ready_in_time_says_what_to_expect(cluster: FakeKubernetes, tmp_path: Path) -> None:
    cluster.ready_after_gets = None

    result, markdown, _ = launch(tmp_path, wait_ready_seconds=0)

    assert cluster.calls()[-1] == ("GET", f"tensorboards/{NAME}")
    assert cluster.calls().count(("GET", f"tensorboards/{NAME}")) == 1
    assert result.state == "starting"
    assert "**Starting**: not ready after 0 s" in markdown
    assert f"kubectl -n {NAMESPACE} get tensorboard {NAME}" in markdown
    assert f"]({result.url})" in markdown


def test_unreachable_api_falls_back(
    cluster: FakeKubernetes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A kubeconfig naming a port nothing listens on (this server's, once it is closed).
    with fake_kubernetes(SCHEMAS) as gone:
        kubeconfig = gone.write_kubeconfig(tmp_path / "closed", NAMESPACE)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))

    result, markdown, ui = launch(tmp_path)

    assert result.state == "fallback"
    assert "No Kubernetes API could be reached" in markdown
    assert_fallback_note(markdown, S3_LOGS)
    assert_s3_viewer(ui)
    assert cluster.requests == []


def test_no_cluster_configuration_falls_back(
    cluster: FakeKubernetes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))

    result, markdown, _ = launch(tmp_path)

    assert result.state == "fallback"
    assert "not running in a pod" in markdown
    assert_fallback_note(markdown, S3_LOGS)


def test_kubeconfig_namespace_when_no_pod_namespace(
    cluster: FakeKubernetes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kfp_lightning.components.common.logs_location import SERVICE_ACCOUNT_NAMESPACE

    if SERVICE_ACCOUNT_NAMESPACE.exists():
        pytest.skip("this machine is a pod: its service account's namespace wins")
    monkeypatch.delenv("POD_NAMESPACE")

    result, _, ui = launch(tmp_path)

    assert result.url == f"/tensorboard/from-kubeconfig/{NAME}/"
    assert all("/namespaces/from-kubeconfig/" in r.path for r in cluster.requests)
    assert ui["outputs"][0]["source"].startswith("s3://mlpipeline/private/from-kubeconfig/")


def test_a_local_directory_needs_no_cluster(cluster: FakeKubernetes, tmp_path: Path) -> None:
    logs = tmp_path / "my logs"  # a space: the command must still be one argument

    result, markdown, ui = launch(tmp_path, tensorboard_logs_root=str(logs))

    assert cluster.requests == []
    assert result.state == "local"
    command = re.search(r"`(tensorboard --logdir [^`]+)`", markdown).group(1)
    assert shlex.split(command) == [
        "tensorboard",
        "--logdir",
        str(logs / RUN_ID),
        "--host",
        "127.0.0.1",
    ]
    # No viewer pod can read this machine's directory; an entry would be an error on the page.
    assert ui == {"outputs": []}


# --- the component ------------------------------------------------------------------------


def run_component(tmp_path: Path, **params: object) -> tuple[Path, Path]:
    markdown, ui = tmp_path / "out" / "tensorboard", tmp_path / "out" / "ui_metadata"
    component.python_func(
        tensorboard=dsl.Markdown(uri=str(markdown)),
        mlpipeline_ui_metadata=dsl.Artifact(uri=str(ui)),
        run_id=RUN_ID,
        **params,
    )
    return markdown, ui


def test_component_end_to_end_with_its_defaults(cluster: FakeKubernetes, tmp_path: Path) -> None:
    cluster.ready_after_gets = 1
    defaults = {k: v.default for k, v in component.component_spec.inputs.items() if k != "run_id"}
    # In a pod, `auto` becomes the endpoint of KFP's object store that its DNS resolves; this
    # machine resolves none, so the endpoint a pod would find is given (see the next test).
    defaults["s3_endpoint"] = ENDPOINT

    markdown, ui = run_component(tmp_path, **defaults)

    assert cluster.calls()[:2] == [("POST", "poddefaults"), ("POST", "tensorboards")]
    assert f"](/tensorboard/{NAMESPACE}/{NAME}/)" in markdown.read_text()
    assert_s3_viewer(json.loads(ui.read_text()))


def test_an_object_store_auto_cannot_find_is_explained_not_failed(
    cluster: FakeKubernetes, tmp_path: Path
) -> None:
    defaults = {k: v.default for k, v in component.component_spec.inputs.items() if k != "run_id"}
    assert defaults["s3_endpoint"] == "auto"

    markdown, _ = run_component(tmp_path, **defaults)

    note = markdown.read_text()
    assert "not started on the cluster" in note
    assert "KFP's object store, which holds the logs, was not found from this pod" in note
    assert "invalid s3_endpoint='auto'" in note
    assert cluster.calls() == []  # nothing created for logs no pod could read


@pytest.mark.parametrize(
    ("parameter", "value"),
    [
        ("tensorboard_logs_root", "ftp://host/logs"),
        ("tensorboard_logs_root", "s3://Bad_Bucket/logs"),
        ("s3_endpoint", "minio-service.kubeflow:9000"),
        ("s3_endpoint", "http://minio/path"),
        ("s3_credentials_secret", "Not_A_Secret"),
        ("kubeflow_base_url", "kubeflow.example.com"),
        ("wait_ready_seconds", -1),
        ("wait_ready_seconds", 86400),
    ],
)
def test_bad_input_exits_with_one_line_and_writes_nothing(
    cluster: FakeKubernetes,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    parameter: str,
    value: object,
) -> None:
    defaults = {k: v.default for k, v in component.component_spec.inputs.items() if k != "run_id"}

    with pytest.raises(SystemExit) as exit_info:
        run_component(tmp_path, **{**defaults, parameter: value})

    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: invalid {parameter}={value!r}: expected ")
    assert err.count("\n") == 1
    assert not (tmp_path / "out").exists()
    assert cluster.requests == []


def test_bad_run_id_exits_with_one_line(
    cluster: FakeKubernetes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    markdown, ui = tmp_path / "md", tmp_path / "ui"
    with pytest.raises(SystemExit) as exit_info:
        component.python_func(
            tensorboard=dsl.Markdown(uri=str(markdown)),
            mlpipeline_ui_metadata=dsl.Artifact(uri=str(ui)),
            run_id="../escape",
        )
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: invalid run_id='../escape'")
    assert not markdown.exists()
    assert not ui.exists()


def test_component_defaults_are_usable_in_the_run_form() -> None:
    inputs = component.component_spec.inputs
    assert inputs["tensorboard_logs_root"].default == fallback.DEFAULT_LOGS_ROOT
    assert inputs["s3_endpoint"].default == "auto"
    assert inputs["s3_credentials_secret"].default == fallback.DEFAULT_S3_SECRET
    for name, spec in inputs.items():
        assert spec.description, name
        # The Kubeflow UI treats "", 0 and false defaults as missing values.
        assert name == "run_id" or spec.default not in ("", 0, False), name
