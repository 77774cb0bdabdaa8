"""kube-apiserver and etcd on 127.0.0.1 for a test session: what only a real server proves.

The hand-written server in `tests/fake_kubernetes.py` produces faults at will; this one is
Kubernetes itself (v1.20.2, built from Debian's `kubernetes` source package by `build.sh`), so
CRD schema validation and pruning, 409 and JSON merge patch semantics, discovery, token
authentication and RBAC decisions are the real code's. etcd (Debian's `etcd-server`) keeps its
data in the session's temporary directory and listens on 127.0.0.1 only, for clients and peers.
The API server serves HTTPS on a free 127.0.0.1 port with a certificate from a throwaway CA,
authenticates static tokens (an admin in `system:masters`, and test users without any group) and
service-account tokens issued through the TokenRequest API, and authorizes with RBAC. No
controller runs: objects are stored and served, nothing acts on them (no pod is ever started).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

BUILD_SCRIPT = Path(__file__).with_name("build.sh")
ADMIN = "admin"
# Static-token users with no group but system:authenticated: RBAC grants them nothing.
TEST_USERS = ("alice", "bob")
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
ISSUER = "https://kubernetes.default.svc"
START_TIMEOUT_SECONDS = 180
ESTABLISH_TIMEOUT_SECONDS = 60


def binary_path() -> Path:
    """Where `build.sh` puts kube-apiserver (the cache path, keyed by the Debian version)."""
    out = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--print-path"], capture_output=True, text=True, check=True
    )
    return Path(out.stdout.strip())


def missing_reason() -> str | None:
    """Why the server cannot start here (the binary or etcd is missing), or None."""
    binary = binary_path()
    how = f"build it with `bash {BUILD_SCRIPT.relative_to(BUILD_SCRIPT.parents[2])}` as root"
    if not binary.is_file():
        return f"kube-apiserver is not built ({binary}): {how} (about 6 minutes the first time)"
    if shutil.which("etcd") is None:
        return f"etcd is not installed: {how}, which also installs Debian's etcd-server"
    return None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS's choice)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(directory: Path) -> None:
    """A CA, a serving certificate for 127.0.0.1 signed by it, and a service-account key."""
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        "/CN=kfp-lightning-test-ca", "-keyout", "ca.key", "-out", "ca.crt", cwd=directory,
    )  # fmt: skip
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=kube-apiserver",
        "-keyout", "server.key", "-out", "server.csr", cwd=directory,
    )  # fmt: skip
    # Strict X.509 verification (newer Pythons) wants the leaf's key usages and identifiers.
    (directory / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "authorityKeyIdentifier=keyid,issuer\n"
        "subjectKeyIdentifier=hash\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "server.ext", "-out", "server.crt",
        cwd=directory,
    )  # fmt: skip
    _openssl("genrsa", "-out", "service-account.key", "2048", cwd=directory)


@dataclasses.dataclass
class KubeAPIServer:
    """A started API server.

    Attributes:
        url: https://127.0.0.1:<port>.
        ca_file: The CA that signed its serving certificate.
        directory: Where its certificates, token file, logs and etcd's data are.
        tokens: Static bearer tokens by user name (`ADMIN` and `TEST_USERS`).
    """

    url: str
    ca_file: Path
    directory: Path
    tokens: dict[str, str]

    def configuration(self, token: str) -> client.Configuration:
        """A client configuration for this server with `token` (no retries, as the launcher)."""
        configuration = client.Configuration()
        configuration.host = self.url
        configuration.ssl_ca_cert = str(self.ca_file)
        configuration.api_key = {"authorization": f"Bearer {token}"}
        configuration.retries = 0
        return configuration

    def api_client(self, user: str = ADMIN) -> client.ApiClient:
        """An API client authenticated as `user` (see `token`)."""
        return client.ApiClient(self.configuration(self.token(user)))

    def token(self, user: str) -> str:
        """A bearer token for `user`.

        Args:
            user: `ADMIN`, one of `TEST_USERS`, or `system:serviceaccount:<namespace>:<name>`,
                for which the namespace and the ServiceAccount are created when missing and a
                token is issued through the TokenRequest API, as the kubelet gets one for a pod.

        Returns:
            The token.
        """
        if user in self.tokens:
            return self.tokens[user]
        if not user.startswith(SERVICE_ACCOUNT_PREFIX):
            raise ValueError(f"unknown user {user!r}")
        namespace, _, name = user.removeprefix(SERVICE_ACCOUNT_PREFIX).partition(":")
        with self.api_client() as admin:
            core = client.CoreV1Api(admin)
            ensure_namespace(admin, namespace)
            with contextlib.suppress(_AlreadyExistsError):
                _created(
                    core.create_namespaced_service_account,
                    namespace,
                    {"metadata": {"name": name}},
                )
            request = {"spec": {"audiences": [ISSUER], "expirationSeconds": 4 * 3600}}
            answer = core.create_namespaced_service_account_token(
                name, namespace, request, _preload_content=False
            )
            return json.loads(answer.data)["status"]["token"]

    def write_kubeconfig(self, path: Path, user: str = ADMIN, namespace: str | None = None) -> Path:
        """Writes a kubeconfig whose current context is `user` on this server.

        Args:
            path: The file to write.
            user: As for `token`.
            namespace: The context's namespace; None names none (clients use "default").

        Returns:
            `path`.
        """
        context: dict[str, str] = {"cluster": "test", "user": user}
        if namespace:
            context["namespace"] = namespace
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {"server": self.url, "certificate-authority": str(self.ca_file)},
                }
            ],
            "users": [{"name": user, "user": {"token": self.token(user)}}],
            "contexts": [{"name": "test", "context": context}],
            "current-context": "test",
        }
        path.write_text(yaml.safe_dump(config))
        return path


class _AlreadyExistsError(Exception):
    pass


def _created(create: object, *args: object) -> None:
    """Calls a client `create_*` method; raises `_AlreadyExistsError` on HTTP 409."""
    try:
        create(*args, _preload_content=False)  # type: ignore[operator]
    except ApiException as err:
        if err.status == 409:
            raise _AlreadyExistsError from None
        raise


def ensure_namespace(api_client: client.ApiClient, name: str) -> None:
    """Creates namespace `name` unless it exists."""
    with contextlib.suppress(_AlreadyExistsError):
        _created(client.CoreV1Api(api_client).create_namespace, {"metadata": {"name": name}})


def apply_documents(
    api_client: client.ApiClient, documents: list[Mapping[str, object]], namespace: str
) -> None:
    """Creates each object in `namespace` (objects that exist are replaced), as `kubectl apply`.

    Args:
        api_client: An admin client.
        documents: Kubernetes objects of kinds the `kubernetes` client's typed APIs know.
        namespace: For namespaced objects that name none.
    """
    from kubernetes import utils

    for document in documents:
        try:
            utils.create_from_dict(api_client, dict(document), namespace=namespace)
        except utils.FailToCreateError as err:
            if not all(e.status == 409 for e in err.api_exceptions):
                raise
            _replace(api_client, dict(document), namespace)


def _replace(api_client: client.ApiClient, document: dict, namespace: str) -> None:
    # RBAC objects are the only ones the tests re-apply; replace them in place.
    rbac = client.RbacAuthorizationV1Api(api_client)
    name = document["metadata"]["name"]
    replace = {
        "Role": rbac.replace_namespaced_role,
        "RoleBinding": rbac.replace_namespaced_role_binding,
    }[document["kind"]]
    replace(name, namespace, document, _preload_content=False)


def install_crd(api_client: client.ApiClient, crd: Mapping[str, object]) -> None:
    """Creates a CustomResourceDefinition unless it exists, and waits until it is served.

    Served means Established and listed by discovery (`/apis/<group>/<version>`), which the
    API server updates asynchronously after the CRD is created.

    Args:
        api_client: An admin client.
        crd: The CRD object (apiextensions.k8s.io/v1).
    """
    extensions = client.ApiextensionsV1Api(api_client)
    with contextlib.suppress(_AlreadyExistsError):
        _created(extensions.create_custom_resource_definition, dict(crd))
    spec = crd["spec"]
    group, plural = spec["group"], spec["names"]["plural"]  # type: ignore[index]
    versions = [v["name"] for v in spec["versions"] if v.get("served")]  # type: ignore[index]
    name = f"{plural}.{group}"
    deadline = time.monotonic() + ESTABLISH_TIMEOUT_SECONDS
    while True:
        answer = extensions.read_custom_resource_definition(name, _preload_content=False)
        conditions = json.loads(answer.data).get("status", {}).get("conditions") or []
        established = any(c["type"] == "Established" and c["status"] == "True" for c in conditions)
        if established and all(_discovered(api_client, group, v, plural) for v in versions):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"CRD {name} not served after {ESTABLISH_TIMEOUT_SECONDS} s")
        time.sleep(0.2)


def delete_crd(api_client: client.ApiClient, name: str) -> None:
    """Deletes a CustomResourceDefinition and waits until it and its discovery entry are gone."""
    extensions = client.ApiextensionsV1Api(api_client)
    try:
        answer = extensions.read_custom_resource_definition(name, _preload_content=False)
    except ApiException as err:
        if err.status == 404:
            return
        raise
    crd = json.loads(answer.data)
    extensions.delete_custom_resource_definition(name, _preload_content=False)
    group, plural = crd["spec"]["group"], crd["spec"]["names"]["plural"]
    deadline = time.monotonic() + ESTABLISH_TIMEOUT_SECONDS
    while True:
        try:
            extensions.read_custom_resource_definition(name, _preload_content=False)
            gone = False
        except ApiException as err:
            if err.status != 404:
                raise
            gone = True
        if gone and not any(
            _discovered(api_client, group, v["name"], plural) for v in crd["spec"]["versions"]
        ):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"CRD {name} still there after {ESTABLISH_TIMEOUT_SECONDS} s")
        time.sleep(0.2)


def _discovered(api_client: client.ApiClient, group: str, version: str, plural: str) -> bool:
    try:
        resources = client.CustomObjectsApi(api_client).get_api_resources(group, version)
    except ApiException as err:
        if err.status == 404:
            return False
        raise
    return any(r.name == plural for r in resources.resources)


def _wait_etcd(url: str, process: subprocess.Popen, log: Path) -> None:
    """Waits until etcd reports itself healthy.

    A kube-apiserver started before etcd accepts connections can exit at once, failing the
    session's server tests (seen on a loaded 2-core machine).
    """
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"etcd exited ({process.returncode}):\n{_tail(log)}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
                if json.load(answer).get("health") == "true":
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"etcd not healthy in {START_TIMEOUT_SECONDS} s:\n{_tail(log)}")
        time.sleep(0.1)


def _wait_ready(server: KubeAPIServer, process: subprocess.Popen, log: Path) -> None:
    context = ssl.create_default_context(cafile=str(server.ca_file))
    request = urllib.request.Request(
        f"{server.url}/readyz", headers={"Authorization": f"Bearer {server.tokens[ADMIN]}"}
    )
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"kube-apiserver exited ({process.returncode}):\n{_tail(log)}")
        try:
            with urllib.request.urlopen(request, context=context, timeout=5) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"kube-apiserver not ready in {START_TIMEOUT_SECONDS} s:\n{_tail(log)}"
            )
        time.sleep(0.25)


def _tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def running_apiserver(binary: Path, directory: Path) -> Iterator[KubeAPIServer]:
    """Starts etcd and kube-apiserver, yields the server once ready, and stops both.

    Args:
        binary: The kube-apiserver built by `build.sh`.
        directory: An empty directory for certificates, tokens, logs and etcd's data.

    Yields:
        The ready server.

    Raises:
        RuntimeError: A process exited or the server was not ready in time (with its log).
    """
    make_certificates(directory)
    tokens = {user: secrets.token_hex(16) for user in (ADMIN, *TEST_USERS)}
    # Static token file: token,user,uid,"groups".
    lines = [f'{tokens[ADMIN]},{ADMIN},{ADMIN},"system:masters"']
    lines += [f"{tokens[u]},{u},{u}" for u in TEST_USERS]
    (directory / "tokens.csv").write_text("\n".join(lines) + "\n")
    etcd_port, peer_port, port = free_port(), free_port(), free_port()
    etcd_url, peer_url = f"http://127.0.0.1:{etcd_port}", f"http://127.0.0.1:{peer_port}"
    etcd_log, apiserver_log = directory / "etcd.log", directory / "kube-apiserver.log"
    with etcd_log.open("wb") as etcd_out, apiserver_log.open("wb") as apiserver_out:
        etcd = subprocess.Popen(
            [
                "etcd",
                "--name=test",
                f"--data-dir={directory / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=test={peer_url}",
                "--initial-cluster-state=new",
            ],
            stdout=etcd_out,
            stderr=subprocess.STDOUT,
            cwd=directory,
        )
        apiserver = None
        try:
            _wait_etcd(etcd_url, etcd, etcd_log)
            apiserver = subprocess.Popen(
                [
                    str(binary),
                    f"--etcd-servers={etcd_url}",
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    f"--secure-port={port}",
                    "--insecure-port=0",  # v1.20 still serves plain HTTP on 8080 unless told not to
                    f"--tls-cert-file={directory / 'server.crt'}",
                    f"--tls-private-key-file={directory / 'server.key'}",
                    f"--token-auth-file={directory / 'tokens.csv'}",
                    "--authorization-mode=RBAC",
                    f"--service-account-issuer={ISSUER}",
                    f"--service-account-key-file={directory / 'service-account.key'}",
                    f"--service-account-signing-key-file={directory / 'service-account.key'}",
                    # Addresses for Service objects; nothing is ever sent to them.
                    "--service-cluster-ip-range=10.96.0.0/24",
                    "--endpoint-reconciler-type=none",
                    "--profiling=false",
                ],
                stdout=apiserver_out,
                stderr=subprocess.STDOUT,
                cwd=directory,
            )
            server = KubeAPIServer(
                url=f"https://127.0.0.1:{port}",
                ca_file=directory / "ca.crt",
                directory=directory,
                tokens=tokens,
            )
            if etcd.poll() is not None:
                raise RuntimeError(f"etcd exited ({etcd.returncode}):\n{_tail(etcd_log)}")
            _wait_ready(server, apiserver, apiserver_log)
            yield server
        finally:
            if apiserver is not None:
                _stop(apiserver)
            _stop(etcd)


@pytest.fixture(scope="session")
def kube_apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeAPIServer]:
    """A real kube-apiserver with etcd on 127.0.0.1 for the whole session (see the module).

    Skips, saying how to build it, when the binary or etcd is missing; fails instead in CI
    ($CI is "true"), whose `.ci/run` builds it first.
    """
    reason = missing_reason()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    binary = binary_path()
    with running_apiserver(binary, tmp_path_factory.mktemp("kube-apiserver")) as server:
        yield server


# Kubeflow's CRDs as shipped in ../shared/schemas (Kubeflow v1.10.0), served unchanged by v1.20.
SCHEMAS = Path(__file__).resolve().parents[2].parent / "shared" / "schemas"
KUBEFLOW_CRDS = ("tensorboard.kubeflow.org_tensorboards.yaml", "poddefaults.kubeflow.org.yaml")


def kubeflow_crd(file_name: str) -> dict:
    """A CRD manifest from the shared schemas, as shipped."""
    return yaml.safe_load((SCHEMAS / file_name).read_text())


@pytest.fixture
def apiserver_admin(kube_apiserver: KubeAPIServer) -> Iterator[client.ApiClient]:
    """An API client of the session's server, authenticated as the admin (system:masters)."""
    with kube_apiserver.api_client() as api_client:
        yield api_client


@pytest.fixture
def kubeflow_crds(apiserver_admin: client.ApiClient) -> None:
    """The Tensorboard and PodDefault CRDs, installed (again, if a test deleted one) and served."""
    for file_name in KUBEFLOW_CRDS:
        install_crd(apiserver_admin, kubeflow_crd(file_name))
