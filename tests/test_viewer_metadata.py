"""The run page's "Start Tensorboard" viewer: our `mlpipeline_ui_metadata` against the KFP
frontend's acceptance rules, and the viewer's pod against a real kube-apiserver.

The rules below are read from kubeflow/pipelines at tags 2.5.0, 2.14.0, 2.16.0 and 2.17.0 (the
files named are the same in all of them, up to formatting) and master, and written down here in
our own terms; a test per rule shows that the checker refuses what the frontend would refuse.
What a `tensorboard` entry must be, and what happens to it:

1. `frontend/src/components/viewers/MetricsVisualizations.tsx`, `getV1VisualizationArtifacts`:
   the run page renders the output artifact whose name, with every non-word character and `_`
   turned into `-` and lowercased, is `mlpipeline-ui-metadata` (one per task).
2. `frontend/src/lib/OutputArtifactLoader.ts`, `load` and `parseOutputMetadataInJson`: the file
   is JSON with an `outputs` array; `buildTensorboardConfig`: `source` is required, and must
   parse in `frontend/src/lib/WorkflowParser.ts`, `parseStoragePath`, which knows the prefixes
   gs://, minio://, s3://, http://, https:// and volume:// only; `pod_template_spec` and
   `image` are handed on unchanged.
3. `frontend/src/components/viewers/Tensorboard.tsx`: `image`, when set, is the image the
   viewer starts with (else tensorflow/tensorflow:2.2.2); the pod template is sent as JSON.
4. `frontend/server/handlers/tensorboard.ts` (create) and `frontend/server/k8s-helper.ts`,
   `newTensorboardInstance`: the pod template becomes the `Viewer`'s `spec.podTemplateSpec`;
   `parseTensorboardLogDir` resolves volume://<volume>/<path> through
   `frontend/server/utils.ts`, `findFileOnPodVolume`: <volume> must be one of the pod's
   `spec.volumes` and mounted by its first container (a mount with a `subPath` only if the path
   starts with it); the path is joined to the mount path. Since 2.17 (master) the path must be
   relative and contain no `..` segment.
5. `backend/src/crd/controller/viewer/reconciler/reconciler.go`, `deploymentFrom` and
   `setPodSpecForTensorboard`: the Deployment's pod is the template, labelled `deployment`,
   `app: viewer` and `viewer`; its first container (added if there is none) is named
   `<viewer>-pod`, runs the chosen image with args (no command) `tensorboard --logdir=<logdir>
   --path_prefix=/tensorboard/<viewer>/` plus `--bind_all` unless the image reference splits on
   ":" into exactly two parts and the second starts with "1.", and exposes port 6006. The
   viewer is named `viewer-<SHA-1 of the logdir>` (k8s-helper.ts, `getNameOfViewerResource`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import posixpath
import re
import secrets
from pathlib import Path

import pytest
from kubernetes import client

from kfp_lightning.components.common import images
from kfp_lightning.components.common.kubernetes import differences
from kfp_lightning.components.common.logs_location import LogsLocation, parse_logs_root
from kfp_lightning.components.launch_tensorboard.component import launch_tensorboard as component
from kfp_lightning.components.launch_tensorboard.fallback import ui_metadata
from kfp_lightning.components.launch_tensorboard.objects import s3_environment
from tests.apiserver.server import ensure_namespace
from tests.conftest import REPO

RUN_ID = "3f0c9a52-7d1e-4b8a-9c55-0e6f2d4b1a77"
ENDPOINT = "http://seaweedfs.kubeflow:8333"
SECRET = "mlpipeline-minio-artifact"
S3 = parse_logs_root("s3://mlpipeline/private/team-a/tensorboard").child(RUN_ID)
PVC = parse_logs_root("pvc://tb-logs/runs").child(RUN_ID)
# Prefixes `parseStoragePath` accepts (rule 2).
ACCEPTED_SOURCES = ("gs://", "minio://", "s3://", "http://", "https://", "volume://")
VIEWER_PORT = 6006


class RefusedError(AssertionError):
    """The KFP frontend (or the viewer controller) would not give this entry a working viewer."""


def artifact_is_rendered(name: str) -> bool:
    """Rule 1: whether the run page renders the output artifact `name` as viewer metadata."""
    return re.sub(r"[\W_]", "-", name).lower() == "mlpipeline-ui-metadata"


def volume_logdir(source: str, template: dict) -> str:
    """Rule 4: the path inside the viewer's pod that a volume:// source resolves to."""
    volume, _, path = source.removeprefix("volume://").partition("/")
    spec = template.get("spec") or {}
    if not any(v.get("name") == volume for v in spec.get("volumes") or []):
        raise RefusedError(f'volume "{volume}" not configured in pod_template_spec.spec.volumes')
    containers = spec.get("containers") or []
    if not containers:
        raise RefusedError("pod_template_spec has no container to mount the volume in")
    if path.startswith("/") or ".." in path.split("/") or not path:
        raise RefusedError(f"volume path {path!r} must be relative, without '..' (KFP 2.17+)")
    for mount in containers[0].get("volumeMounts") or []:
        sub_path = mount.get("subPath")
        if mount.get("name") != volume or (sub_path and not path.startswith(sub_path)):
            continue
        if not str(mount.get("mountPath", "")).startswith("/"):
            raise RefusedError(f"mount path of volume {volume} must be absolute")
        return posixpath.join(mount["mountPath"], path[len(sub_path) :] if sub_path else path)
    raise RefusedError(f'volume "{volume}" not mounted by the first container')


def frontend_viewer(metadata_text: str, namespace: str) -> dict:
    """Rules 2 to 5: the Viewer the frontend would create for the only tensorboard entry.

    Args:
        metadata_text: The `mlpipeline_ui_metadata` file's content.
        namespace: The run's namespace.

    Returns:
        {"name", "logdir", "image", "pod_template_spec"} of the Viewer.

    Raises:
        RefusedError: Where the page would show an error or create no working viewer.
    """
    try:
        outputs = json.loads(metadata_text)["outputs"]
    except (ValueError, KeyError, TypeError) as err:
        raise RefusedError(f"not JSON with an outputs array: {err}") from None
    if not isinstance(outputs, list):
        raise RefusedError("outputs is not an array")
    [entry] = [o for o in outputs if o.get("type") == "tensorboard"]
    source = entry.get("source")
    if not source or not isinstance(source, str):
        raise RefusedError('Malformed metadata, property "source" is required.')
    if not source.startswith(ACCEPTED_SOURCES):
        raise RefusedError(f"Unsupported storage path: {source}")
    if "," in source:
        raise RefusedError("a comma makes the server read the source as several series")
    template = entry.get("pod_template_spec") or {"spec": {"containers": [{}]}}
    if not isinstance(template, dict):
        raise RefusedError("pod_template_spec must be a JSON object")
    template = json.loads(json.dumps(template))  # as sent in the query and parsed back
    logdir = volume_logdir(source, template) if source.startswith("volume://") else source
    return {
        "name": "viewer-" + hashlib.sha1(source.encode()).hexdigest(),
        "namespace": namespace,
        "logdir": logdir,
        "image": entry.get("image") or "tensorflow/tensorflow:2.2.2",
        "pod_template_spec": template,
    }


def controller_pod(viewer: dict) -> dict:
    """Rule 5: the pod the viewer controller's Deployment would run."""
    template = copy.deepcopy(viewer["pod_template_spec"])
    metadata = template.get("metadata") or {}
    name = viewer["name"]
    deployment = f"{name}-deployment"
    metadata["labels"] = {
        **(metadata.get("labels") or {}),
        "deployment": deployment,
        "app": "viewer",
        "viewer": name,
    }
    spec = template.setdefault("spec", {})
    containers = spec.setdefault("containers", [])
    if not containers:
        containers.append({})
    image = viewer["image"]
    parts = image.split(":")
    args = ["tensorboard", f"--logdir={viewer['logdir']}", f"--path_prefix=/tensorboard/{name}/"]
    if not (len(parts) == 2 and parts[1].startswith("1.")):
        args.append("--bind_all")
    containers[0].update(
        name=f"{name}-pod", image=image, args=args, ports=[{"containerPort": VIEWER_PORT}]
    )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**metadata, "name": f"{deployment}-x"},
        "spec": spec,
    }


def check_ours(location: LogsLocation, viewer: dict, pod: dict) -> None:
    """What our viewer needs beyond the frontend's rules: our image, able to bind and to read
    the logs (the object store's environment, or the claim read-only)."""
    if viewer["image"] != images.image_ref(images.TOOLS):
        raise RefusedError(
            f"image {viewer['image']} is not the tools image (reads s3:// via boto3)"
        )
    container = pod["spec"]["containers"][0]
    if "--bind_all" not in container["args"]:
        raise RefusedError("the controller would start TensorBoard without --bind_all (tag 1.x)")
    if "command" in container:
        raise RefusedError("a command would run before the controller's `tensorboard` args")
    if location.scheme == "s3":
        if viewer["logdir"] != location.uri:
            raise RefusedError(f"logdir {viewer['logdir']} is not {location.uri}")
        for wanted in s3_environment(ENDPOINT, SECRET):
            if wanted not in container.get("env", []):
                raise RefusedError(f"env {wanted['name']} missing from the viewer's container")
    else:
        claims = [v for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v]
        if [c["persistentVolumeClaim"] for c in claims] != [
            {"claimName": location.claim, "readOnly": True}
        ]:
            raise RefusedError(f"claim {location.claim} not mounted read-only: {claims}")
        mounted = [m for m in container["volumeMounts"] if m["name"] == claims[0]["name"]]
        if not mounted or not all(m.get("readOnly") for m in mounted):
            raise RefusedError("the claim's mount is not read-only")
        if viewer["logdir"] != posixpath.join(mounted[0]["mountPath"], location.path):
            raise RefusedError(f"logdir {viewer['logdir']} is not this run's folder in the claim")


def viewer_for(location: LogsLocation, namespace: str = "team-a") -> tuple[dict, dict]:
    text = json.dumps(ui_metadata(location, ENDPOINT, SECRET))
    viewer = frontend_viewer(text, namespace)
    pod = controller_pod(viewer)
    check_ours(location, viewer, pod)
    return viewer, pod


# --- our metadata --------------------------------------------------------------------------


def test_the_component_output_is_the_one_the_run_page_renders() -> None:
    outputs = component.component_spec.outputs
    assert [name for name in outputs if artifact_is_rendered(name)] == ["mlpipeline_ui_metadata"]
    assert outputs["mlpipeline_ui_metadata"].type == "system.Artifact@0.0.1"


@pytest.mark.parametrize("location", [S3, PVC], ids=["s3", "pvc"])
def test_our_metadata_gives_a_working_viewer(location: LogsLocation) -> None:
    viewer, pod = viewer_for(location)

    container = pod["spec"]["containers"][0]
    if location.scheme == "pvc":
        assert viewer["logdir"] == f"/tensorboard_logs/runs/{RUN_ID}"
    assert container["args"][1] == f"--logdir={viewer['logdir']}"
    assert pod["spec"]["automountServiceAccountToken"] is False


def test_a_local_directory_gets_no_entry_the_page_would_refuse() -> None:
    local = parse_logs_root("/tmp/logs").child(RUN_ID)
    assert ui_metadata(local, ENDPOINT, SECRET) == {"outputs": []}
    with pytest.raises(RefusedError, match="Unsupported storage path"):
        frontend_viewer(json.dumps({"outputs": [{"type": "tensorboard", "source": "/x"}]}), "ns")


def test_the_tools_image_has_no_entrypoint_before_the_controllers_args() -> None:
    # The controller sets args only: an ENTRYPOINT would receive `tensorboard ...` as arguments.
    for dockerfile in (REPO / "images").glob("**/Dockerfile"):
        assert not re.search(r"(?m)^\s*ENTRYPOINT\b", dockerfile.read_text()), dockerfile


# --- the checker refuses what the frontend refuses ------------------------------------------


def entry(**fields: object) -> str:
    return json.dumps({"outputs": [{"type": "tensorboard", **fields}]})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{}", "outputs"),
        (entry(), '"source" is required'),
        (entry(source=PVC.uri), "Unsupported storage path: pvc://"),  # today's pvc:// entries
        (entry(source="volume://logs/run"), 'volume "logs" not configured'),
        (
            entry(
                source="volume://logs/run",
                pod_template_spec={"spec": {"volumes": [{"name": "logs"}], "containers": [{}]}},
            ),
            'volume "logs" not mounted',
        ),
        (
            entry(
                source="volume://logs/../etc",
                pod_template_spec={
                    "spec": {
                        "volumes": [{"name": "logs"}],
                        "containers": [{"volumeMounts": [{"name": "logs", "mountPath": "/l"}]}],
                    }
                },
            ),
            "without '..'",
        ),
    ],
    ids=["no-outputs", "no-source", "pvc-source", "no-volume", "not-mounted", "parent-dir"],
)
def test_the_checker_refuses_what_the_frontend_refuses(text: str, message: str) -> None:
    with pytest.raises(RefusedError, match=re.escape(message)):
        frontend_viewer(text, "ns")


def test_the_checker_refuses_an_entry_without_our_image_or_environment() -> None:
    # What the launcher wrote before: the source alone, so the stock TensorFlow image and no
    # endpoint or credentials.
    viewer = frontend_viewer(entry(source=S3.uri), "ns")
    with pytest.raises(RefusedError, match="is not the tools image"):
        check_ours(S3, viewer, controller_pod(viewer))
    viewer["image"] = images.image_ref(images.TOOLS)
    with pytest.raises(RefusedError, match="env S3_ENDPOINT missing"):
        check_ours(S3, viewer, controller_pod(viewer))


def test_a_1x_tag_would_lose_bind_all() -> None:
    viewer = frontend_viewer(entry(source=S3.uri, image="registry/tools:1.2.0"), "ns")
    assert "--bind_all" not in controller_pod(viewer)["spec"]["containers"][0]["args"]
    # Our tag is the package version: this fails when it reaches 1.x (then pin by digest, or
    # give the image a command that adds --bind_all).
    ours = frontend_viewer(entry(source=S3.uri, image=images.image_ref(images.TOOLS)), "ns")
    assert "--bind_all" in controller_pod(ours)["spec"]["containers"][0]["args"]


# --- the viewer's pod on a real API server --------------------------------------------------


@pytest.mark.apiserver
@pytest.mark.parametrize("location", [S3, PVC], ids=["s3", "pvc"])
def test_the_viewer_pod_is_a_valid_pod_with_nothing_pruned(
    apiserver_admin: client.ApiClient, location: LogsLocation, tmp_path: Path
) -> None:
    namespace = f"viewer-{secrets.token_hex(4)}"
    ensure_namespace(apiserver_admin, namespace)
    core = client.CoreV1Api(apiserver_admin)
    # No controller manager runs: the account the pod runs as is created by hand.
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "default"}})
    _, pod = viewer_for(location, namespace)

    answer = core.create_namespaced_pod(namespace, pod, _preload_content=False)
    stored = json.loads(answer.data)

    assert differences(pod, stored) == []
    # Read back, too: what etcd holds, not only what the create answered.
    read = json.loads(
        core.read_namespaced_pod(pod["metadata"]["name"], namespace, _preload_content=False).data
    )
    assert differences(pod, read) == []
    assert read["spec"]["serviceAccountName"] == "default"
    assert not [v for v in read["spec"]["volumes"] if "projected" in v or "secret" in v]
