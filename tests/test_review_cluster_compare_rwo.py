"""review-cluster: --compare-runs on a ReadWriteOnce claim (the per-run launcher refuses it)."""

from __future__ import annotations

import io

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kfp_lightning.components.launch_tensorboard.objects import TENSORBOARD_API
from kfp_lightning.pipelines.compare import ALL_RUNS_NAME, open_runs_tensorboard
from tests.apiserver.server import KubeAPIServer, ensure_namespace
from tests.test_compare_runs import FAST, NAMESPACE, values

pytestmark = pytest.mark.apiserver


def test_compare_runs_refuses_a_single_node_claim(
    kube_apiserver: KubeAPIServer, apiserver_admin, kubeflow_crds, tmp_path, monkeypatch
):
    """A Tensorboard that never ends, on a ReadWriteOnce claim, pins the claim to its node:
    every later training pod scheduled elsewhere waits on a Multi-Attach error. The per-run
    launcher starts none on such a claim (launcher.py, `shares_across_nodes`); --compare-runs
    should not either."""
    ensure_namespace(apiserver_admin, NAMESPACE)
    claim = client.V1PersistentVolumeClaim(
        metadata=client.V1ObjectMeta(name="logs"),
        spec=client.V1PersistentVolumeClaimSpec(
            access_modes=["ReadWriteOnce"],
            resources=client.V1ResourceRequirements(requests={"storage": "1Gi"}),
        ),
    )
    try:
        client.CoreV1Api(apiserver_admin).create_namespaced_persistent_volume_claim(NAMESPACE, claim)
    except ApiException as err:
        assert err.status == 409
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    monkeypatch.setenv(
        "KUBECONFIG",
        str(kube_apiserver.write_kubeconfig(tmp_path / "kubeconfig", namespace=NAMESPACE)),
    )
    try:
        open_runs_tensorboard(
            values(tensorboard_logs_root="pvc://logs/tensorboard"), None, 0, io.StringIO(), FAST
        )
    except Exception:
        pass  # a refusal is what we want
    group, version, plural, _ = TENSORBOARD_API
    try:
        created = client.CustomObjectsApi(apiserver_admin).get_namespaced_custom_object(
            group, version, NAMESPACE, plural, ALL_RUNS_NAME
        )
    except ApiException as err:
        assert err.status == 404
        return
    pytest.fail(f"a Tensorboard was created on the ReadWriteOnce claim: {created['spec']}")
