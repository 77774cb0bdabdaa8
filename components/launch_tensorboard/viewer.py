"""The `mlpipeline_ui_metadata` behind the run page's "Start Tensorboard" button.

The KFP v2 run page still renders an output artifact named `mlpipeline_ui_metadata`
(kubeflow/pipelines `frontend/src/components/viewers/MetricsVisualizations.tsx`,
`getV1VisualizationArtifacts`). A `tensorboard` entry there becomes a viewer whose pod gets
only what the entry carries; the same code runs in every release we support (KFP 2.5.0 to
2.17.0 and master, checked tag by tag):

- `frontend/src/lib/OutputArtifactLoader.ts`, `buildTensorboardConfig`: `source` is required
  and must be a scheme `WorkflowParser.parseStoragePath` knows (gs, minio, s3, http, https,
  volume); anything else, `pvc://` included, makes the page show an error. `image` and
  `pod_template_spec` are passed on as they are.
- `frontend/src/components/viewers/Tensorboard.tsx`: `image` is the image preselected in the
  viewer's image list (else `tensorflow/tensorflow:2.2.2`, which cannot read `s3://` from a
  custom endpoint without our environment); `Start` sends it with the pod template.
- `frontend/server/k8s-helper.ts`, `newTensorboardInstance`: creates a `Viewer` whose
  `spec.podTemplateSpec` is ours, replacing the UI server's configured one rather than merging
  with it; `parseTensorboardLogDir` turns `volume://<volume>/<path>` into the mount path of
  `<volume>` in the first container plus `<path>` (`frontend/server/utils.ts`,
  `findFileOnPodVolume`; since 2.17 the path must be relative, without `..`).
- `backend/src/crd/controller/viewer/reconciler/reconciler.go`, `setPodSpecForTensorboard`:
  the first container keeps its env, volume mounts, resources and security context; the
  controller sets its name, image (the one chosen in the UI), ports and args
  (`tensorboard --logdir=... --path_prefix=... [--bind_all]`, no command, so the image must
  have no entrypoint; `--bind_all` is left out when the image tag starts with "1.").

So for `s3://` the pod template carries the object store's endpoint and the secret's keys in the
container's environment, and `image` names our tools image (TensorBoard reads `s3://` there
through boto3); for `pvc://` it mounts the claim read-only and `source` is
`volume://<volume>/<path in the claim>`. No service account is named: the pod reads no API
and takes the keys through `secretKeyRef`, so it runs as the namespace's `default` account,
without a token, on standalone KFP and in Kubeflow profiles alike.
"""

from __future__ import annotations

import copy
from typing import Any

from kfp_lightning.components.common import images
from kfp_lightning.components.common.logs_location import LogsLocation
from kfp_lightning.components.launch_tensorboard import fallback
from kfp_lightning.components.launch_tensorboard.objects import s3_environment

LOGS_VOLUME = "tensorboard-logs"


def viewer_pod_template(location: LogsLocation, s3_endpoint: str, s3_secret: str) -> dict[str, Any]:
    """The `pod_template_spec` of the viewer entry: what the viewer's pod needs to read the logs.

    Args:
        location: The run's logs, s3:// or pvc://.
        s3_endpoint: http(s)://host[:port] of the object store (s3:// only).
        s3_secret: Secret with the keys `accesskey` and `secretkey` (s3:// only).

    Returns:
        A Kubernetes PodTemplateSpec (as a dict) with one container, whose name, image, args
        and ports the viewer controller fills in.
    """
    volumes, mounts = fallback.logs_volumes(location, LOGS_VOLUME)
    container = {
        "resources": copy.deepcopy(fallback.RESOURCES),
        "securityContext": copy.deepcopy(fallback.CONTAINER_SECURITY),
        **({"env": s3_environment(s3_endpoint, s3_secret)} if location.scheme == "s3" else {}),
        "volumeMounts": mounts,
    }
    return {
        "spec": {
            # TensorBoard reads no Kubernetes API: no token in its pod.
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [container],
            "volumes": volumes,
        }
    }


def ui_metadata(location: LogsLocation, s3_endpoint: str, s3_secret: str) -> dict[str, object]:
    """The `mlpipeline_ui_metadata` of a run: a "Start Tensorboard" viewer over its live logs.

    Its `source` is the logs as the viewer's pod reaches them: the s3:// URI, or
    `volume://<LOGS_VOLUME>/<path in the claim>` for pvc://.

    Args:
        location: The run's logs.
        s3_endpoint: http(s)://host[:port] of the object store (s3:// only).
        s3_secret: Secret with the keys `accesskey` and `secretkey` (s3:// only).

    Returns:
        `{"outputs": [<tensorboard entry>]}`; no entry for a local directory, which no viewer
        pod can read (the page would show an error).
    """
    if location.scheme not in ("s3", "pvc"):
        return {"outputs": []}
    source = location.uri
    if location.scheme == "pvc":
        source = f"volume://{LOGS_VOLUME}/{location.path}".rstrip("/")
    entry = {
        "type": "tensorboard",
        "source": source,
        "image": images.image_ref(images.TOOLS),
        "pod_template_spec": viewer_pod_template(location, s3_endpoint, s3_secret),
    }
    return {"outputs": [entry]}
