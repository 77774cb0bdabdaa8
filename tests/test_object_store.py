"""`s3_endpoint=auto`: KFP's object store on the run's cluster, resolved through DNS in a pod."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from kfp_lightning.components.common.errors import UserInputError
from kfp_lightning.components.common.logs_location import (
    AUTO,
    KFP_OBJECT_STORES,
    LiveLogsConfig,
    ObjectStore,
    reachable,
    resolve_auto,
)
from kfp_lightning.pipelines.parameters import pipeline_defaults
from tests.apiserver.server import free_port
from tests.platforms import PLATFORMS

# A name no resolver answers for (RFC 6761 reserves .invalid).
MISSING = ObjectStore("seaweedfs", "kubeflow.invalid", 8333, "missing")


def test_auto_is_the_default() -> None:
    assert pipeline_defaults()["s3_endpoint"] == AUTO
    assert LiveLogsConfig().s3_endpoint == AUTO


def _store_at(host: str, port: int) -> ObjectStore:
    """A store whose Service name resolves as `host` does (a pod's DNS knows its Services)."""

    class At(ObjectStore):
        @property
        def host(self) -> str:
            return host

    return At("store", "namespace", port, "test")


@pytest.fixture
def listening() -> Iterator[int]:
    """A port on 127.0.0.1 that accepts connections, as a Service's declared port does."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


def test_auto_takes_the_first_store_that_answers(listening: int) -> None:
    closed = free_port()
    here, silent = _store_at("localhost", listening), _store_at("localhost", closed)
    assert reachable("localhost", listening)
    assert not reachable("localhost", closed)  # resolves, but that port serves nothing
    assert not reachable(MISSING.host, 8333)
    assert resolve_auto((MISSING, silent, here)) == f"http://localhost:{listening}"
    assert resolve_auto((here, MISSING)) == f"http://localhost:{listening}"


def test_seaweedfs_is_reached_on_its_own_s3_port() -> None:
    # Kubeflow 1.11's seaweedfs Service serves S3 on 8333 only (9000 from KFP 2.16 on).
    assert [(s.service, s.port) for s in KFP_OBJECT_STORES] == [
        ("seaweedfs", 8333),
        ("minio-service", 9000),
    ]


def test_auto_outside_a_cluster_is_one_line_naming_the_parameter() -> None:
    with pytest.raises(UserInputError) as caught:
        resolve_auto((MISSING,))
    message = str(caught.value)
    assert message.startswith("invalid s3_endpoint='auto': expected an http(s)://host[:port]")
    assert "seaweedfs.kubeflow.invalid" in message
    assert "\n" not in message


def test_a_local_run_on_s3_with_auto_is_refused_before_anything_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kfp_lightning.pipelines.parameters import check_local_run, validate_parameters

    # Keys for the store, which a local s3:// run also needs (tests/test_bad_inputs.py).
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")

    values = validate_parameters({"tensorboard_logs_root": "s3://bucket/tb"})
    if reachable(KFP_OBJECT_STORES[0].host, KFP_OBJECT_STORES[0].port):  # inside a cluster
        pytest.skip("this machine resolves KFP's object store")
    with pytest.raises(UserInputError, match="invalid s3_endpoint='auto'"):
        check_local_run(values)
    # An explicit endpoint needs no cluster.
    check_local_run({**values, "s3_endpoint": "http://127.0.0.1:9000"})


def test_the_endpoint_is_concrete_for_an_explicit_value_and_none_for_other_roots() -> None:
    config = LiveLogsConfig("s3://bucket/tb", "http://minio.example:9000/")
    assert config.endpoint() == "http://minio.example:9000"
    assert LiveLogsConfig("/tmp/tb", AUTO).endpoint() is None
    with pytest.raises(UserInputError, match="s3_endpoint"):
        LiveLogsConfig("s3://bucket/tb", "minio.example:9000")


def test_every_release_runs_one_of_the_stores_auto_tries() -> None:
    services = [store.service for store in KFP_OBJECT_STORES]
    for platform in PLATFORMS:
        assert platform.object_stores[0] in services, platform
        # The one auto takes is the release's first, in auto's order.
        first = next(s for s in services if s in platform.object_stores)
        assert first == platform.object_stores[0]


@pytest.mark.parametrize(
    "endpoint", ["ftp://x", "http://", "http://host:99999", "http://h/path", ""]
)
def test_a_bad_endpoint_is_refused_whatever_the_root(endpoint: str) -> None:
    # Typed in for a local root it is unused now, but a mistake all the same.
    with pytest.raises(UserInputError, match=r"^invalid s3_endpoint="):
        LiveLogsConfig("/tmp/tb", endpoint)
