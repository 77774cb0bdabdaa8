"""Reading the TrainJob's form from OpenAPI v3, which the v1.20 test server does not serve.

Kubernetes 1.24 and later publish each group-version's schemas at
`/openapi/v3/apis/<group>/<version>` (`components.schemas`, each with its
`x-kubernetes-group-version-kind`); the step reads that first and falls back to `/openapi/v2`
(tested against the real server in test_trainjob_versions.py). Here a small HTTP server on
127.0.0.1 answers those two paths, at the network boundary only, with each Trainer version's
own schema, or with a refusal.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator

import pytest
from kubernetes import client

from kfp_lightning.components.common.errors import RunError
from kfp_lightning.components.common.kubernetes import Patience
from kfp_lightning.components.train_on_nodes.trainjob import (
    RUNTIME_PATCHES,
    TEMPLATE_OVERRIDES,
    trainjob_form,
)
from tests.trainer_crds import TRAINJOB_CRD, shipped

V3_PATH = "/openapi/v3/apis/trainer.kubeflow.org/v1alpha1"
PATIENCE = Patience(attempts=1)


def v3_document(version: str) -> dict:
    """What a 1.24+ server answers for the group-version of `version`'s TrainJob CRD."""
    (served,) = shipped(TRAINJOB_CRD, version)["spec"]["versions"]
    schema = {
        **served["schema"]["openAPIV3Schema"],
        "x-kubernetes-group-version-kind": [
            {"group": "trainer.kubeflow.org", "version": "v1alpha1", "kind": "TrainJob"}
        ],
    }
    return {"openapi": "3.0.0", "components": {"schemas": {"TrainJob": schema}}}


class Answers(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, dict]] = {}
    seen: list[str] = []

    def do_GET(self) -> None:
        self.seen.append(self.path)
        code, body = self.routes.get(self.path, (404, {"kind": "Status", "message": "not found"}))
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[client.ApiClient, type[Answers]]]:
    handler = type("Handler", (Answers,), {"routes": {}, "seen": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{httpd.server_address[1]}"
    configuration.retries = 0
    try:
        with client.ApiClient(configuration) as api_client:
            yield api_client, handler
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize(
    ("version", "form"),
    [
        ("kubeflow-trainer-v2.1.0", TEMPLATE_OVERRIDES),
        ("kubeflow-trainer-v2.2.0", RUNTIME_PATCHES),
        ("kubeflow-trainer-v2.3.0", RUNTIME_PATCHES),
    ],
)
def test_the_form_comes_from_openapi_v3_when_served(server, version: str, form: str) -> None:
    api_client, handler = server
    handler.routes[V3_PATH] = (200, v3_document(version))

    assert trainjob_form(api_client, PATIENCE) == form
    assert handler.seen == [V3_PATH]  # never the whole v2 document


def test_v2_0_in_openapi_v3_fails_naming_the_trainjob(server) -> None:
    api_client, handler = server
    handler.routes[V3_PATH] = (200, v3_document("kubeflow-trainer-v2.0.0"))

    with pytest.raises(RunError, match=r"^the cluster's TrainJob \(trainer\.kubeflow\.org/"):
        trainjob_form(api_client, PATIENCE)


def test_no_trainjob_schema_and_a_refusal_each_fail_in_one_line(server) -> None:
    api_client, handler = server
    handler.routes["/openapi/v2"] = (200, {"swagger": "2.0", "definitions": {}})
    with pytest.raises(RunError) as missing:
        trainjob_form(api_client, PATIENCE)
    assert str(missing.value).startswith(
        "the cluster publishes no schema of TrainJob (trainjobs.trainer.kubeflow.org/v1alpha1)"
    )
    assert handler.seen == [V3_PATH, "/openapi/v2"]

    handler.routes[V3_PATH] = (403, {"kind": "Status", "message": "forbidden: User cannot get"})
    with pytest.raises(RunError) as refused:
        trainjob_form(api_client, PATIENCE)
    assert str(refused.value).startswith(
        f"could not read the cluster's API schema {V3_PATH} (HTTP 403: forbidden: User cannot "
        "get), which every authenticated user may read through the system:discovery ClusterRole"
    )
    assert "\n" not in str(refused.value)
