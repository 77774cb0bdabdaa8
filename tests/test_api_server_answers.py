"""`--check-cluster` and `--compare-runs` against servers that are not a working Kubernetes API.

A kubeconfig can name anything: a web server, a proxy that refuses the credentials, a server in
trouble, a closed port. Each command asks the server's `/version` first and says, in the same
one line and exit status 1, what answered there; answers that no Kubernetes API server gives
later on (a version, then objects missing required fields) end the same way. The servers are
local HTTP servers answering every request alike; the commands run through the CLI's `main` in
this process.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
import urllib3
import yaml

from kfp_lightning.pipelines import cli
from tests.apiserver.server import free_port
from tests.fake_kubernetes import write_kubeconfig

HTML = "<!DOCTYPE html><html><body><h1>Welcome</h1></body></html>"
VERSION = {"major": "1", "minor": "31", "gitVersion": "v1.31.0", "platform": "linux/amd64"}
COMMANDS = {
    "check-cluster": ["--check-cluster"],
    "check-cluster-nodes": ["--check-cluster", "--nodes", "2"],
    "compare-runs": ["--compare-runs"],
}


def serve(
    status: int,
    body: str | bytes,
    content_type: str,
    version: bool = False,
    paths: Mapping[str, object] | None = None,
) -> http.server.HTTPServer:
    """A server answering `status` and `body` to every request (its /version too, unless
    `version`: then a Kubernetes version object; and `paths`' own, each an object answered with
    HTTP 200); status 0 closes the connection unanswered."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            path = self.path.split("?")[0].rstrip("/")
            if version and path == "/version":
                self.reply(200, json.dumps(VERSION), "application/json")
            elif path in (paths or {}):
                self.reply(200, json.dumps(paths[path]), "application/json")
            elif status == 0:
                self.close_connection = True  # the client reads no status line at all
            elif status >= 400:
                self.send_error(status)  # the reason, and http.server's own HTML page
            elif status >= 300:  # a redirect to `body`
                self.send_response(status)
                self.send_header("Location", body)
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self.reply(status, body, content_type)

        def reply(self, code: int, text: str | bytes, kind: str) -> None:
            payload = text if isinstance(text, bytes) else text.encode()
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = answer  # noqa: N815

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@contextlib.contextmanager
def pointed_at(
    kubeconfig_at: Callable[[str], None],
    status: int,
    body: str | bytes,
    content_type: str = "application/json",
    version: bool = False,
    paths: Mapping[str, object] | None = None,
) -> Iterator[str]:
    """Serves `status` and `body` (see `serve`) where $KUBECONFIG points; yields its address."""
    server = serve(status, body, content_type, version, paths)
    host = f"http://127.0.0.1:{server.server_address[1]}"
    kubeconfig_at(host)
    try:
        yield host
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def kubeconfig_at(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Points $KUBECONFIG at a server address; the retries' waits are skipped (not tested)."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    monkeypatch.setattr(urllib3.util.retry.Retry, "sleep", lambda self, response=None: None)

    def point(host: str) -> None:
        monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", host)))

    return point


def one_line_error(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    """Runs the CLI; asserts it failed (status 1) with one line on stderr; returns the line."""
    with pytest.raises(SystemExit) as exited:
        cli.main(args)
    out, err = capsys.readouterr()
    assert exited.value.code == 1, err
    assert "Traceback" not in err
    assert out == ""
    (line,) = err.splitlines()
    return line


NOT_KUBERNETES = "the server at HOST is not a working Kubernetes API server: "
CREDENTIALS = (
    "the server at HOST refused these credentials (HTTP 401: Unauthorized): renew the kubeconfig's "
    "credentials (log in again, or get a new token)"
)
# What each server answers to every request, and the line that says so.
ANSWERS = {
    "html": (200, HTML, "text/html", f"{NOT_KUBERNETES}its /version answered HTTP 200: {HTML}"),
    "empty-json": (
        200,
        "{}",
        "application/json",
        NOT_KUBERNETES + "its /version answered HTTP 200: {}",
    ),
    "401": (401, "", "", CREDENTIALS),
    # A version object whose version is no text, or text that would break the line.
    "null-version": (
        200,
        '{"gitVersion": null}',
        "application/json",
        NOT_KUBERNETES + 'its /version answered HTTP 200: {"gitVersion": null}',
    ),
    "two-line-version": (
        200,
        '{"gitVersion": "v1.31.2\\nERROR"}',
        "application/json",
        NOT_KUBERNETES + 'its /version answered HTTP 200: {"gitVersion": "v1.31.2\\nERROR"}',
    ),
    # An API server never redirects (a login proxy does): not followed, where it may not answer.
    "302": (
        302,
        "http://127.0.0.1:1/",
        "",
        f"{NOT_KUBERNETES}its /version answered HTTP 302: Found",
    ),
    "500": (500, "", "", f"{NOT_KUBERNETES}its /version answered HTTP 500: Internal Server Error"),
}


@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
@pytest.mark.parametrize("answer", ANSWERS.values(), ids=ANSWERS.keys())
def test_a_server_that_is_no_kubernetes_api_is_one_line(
    kubeconfig_at, capsys: pytest.CaptureFixture[str], command: list[str], answer: tuple
) -> None:
    status, body, content_type, says = answer
    with pointed_at(kubeconfig_at, status, body, content_type) as host:
        line = one_line_error(capsys, command)

    assert line == f"error: {says.replace('HOST', host)}"


@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
def test_a_closed_port_is_one_line(
    kubeconfig_at, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    host = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    kubeconfig_at(host)

    line = one_line_error(capsys, command)

    assert (
        line == f"error: no Kubernetes API server answers at {host}: [Errno 111] Connection "
        "refused (5 attempts)"
    )


@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
def test_a_server_that_sends_garbage_is_one_short_line(
    kubeconfig_at, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    # Each connection gets about 4 KiB that are no HTTP, which the client quotes in its error.
    with socket.create_server(("127.0.0.1", 0)) as garbage:
        host = f"http://127.0.0.1:{garbage.getsockname()[1]}"

        def answer() -> None:
            with contextlib.suppress(OSError):
                while True:
                    connection, _ = garbage.accept()
                    with connection:
                        connection.recv(65536)
                        connection.sendall(bytes(range(14, 256)) * 16)  # no line end

        threading.Thread(target=answer, daemon=True).start()
        kubeconfig_at(host)
        line = one_line_error(capsys, command)

    assert line.startswith(f"error: no Kubernetes API server answers at {host}: ")
    assert len(line) < len(host) + 300, line


@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
def test_a_server_that_hangs_up_after_the_version_is_one_plain_line(
    kubeconfig_at, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    host, _, line = fail_after_the_version(kubeconfig_at, capsys, command, "", status=0)

    # What happened and its cause in words, not the repr of urllib3's (message, cause) tuple.
    assert line.endswith(
        "Connection aborted: Remote end closed connection without response (5 attempts)"
    ), line
    assert "(" not in line.split(host)[-1].removesuffix(" (5 attempts)"), line


# --check-cluster's timeout, shortened here; --compare-runs has the same mechanism with the
# client's default patience (5 attempts of 15 s: 75 s, too long for this suite).
@pytest.mark.parametrize("command", list(COMMANDS.values())[:2], ids=list(COMMANDS)[:2])
def test_a_server_that_never_answers_is_one_line(
    kubeconfig_at, monkeypatch, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    # It takes the connection and says nothing: each attempt ends at the request's timeout.
    monkeypatch.setattr("kfp_lightning.pipelines.preflight.REQUEST_TIMEOUT_SECONDS", 0.5)
    with socket.create_server(("127.0.0.1", 0)) as silent:
        host = f"http://127.0.0.1:{silent.getsockname()[1]}"
        kubeconfig_at(host)
        line = one_line_error(capsys, command)

    assert line.startswith(f"error: no Kubernetes API server answers at {host}: ")
    assert "Read timed out" in line
    # The wait was every attempt's timeout: the line says how many there were.
    assert line.endswith(" (5 attempts)"), line
    # In words, without urllib3's name for its connection pool ("HTTPConnectionPool(host=...)"
    # or "None").
    assert line.split(f"{host}: ", 1)[1].startswith("Read timed out."), line


def fail_after_the_version(
    kubeconfig_at,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
    body: str | bytes,
    status: int = 200,
) -> tuple[str, str, str]:
    """Runs the CLI against a server answering its version, then `status` and `body` to every
    request.

    Asserts it failed (status 1) with one line on stderr; returns the host, stdout and line.
    """
    with (
        pointed_at(kubeconfig_at, status, body, version=True) as host,
        pytest.raises(SystemExit) as exited,
    ):
        cli.main(command)
    out, err = capsys.readouterr()
    assert exited.value.code == 1, err
    assert "Traceback" not in err
    (line,) = err.splitlines()
    return host, out, line


# JSON that is no object (the client made None or an empty model of it), and bytes it cannot
# decode: each answers every request after the version.
NO_OBJECTS = {
    "null": ("null", "HTTP 200: null"),
    "list": ("[]", "HTTP 200: []"),
    "string": ('"text"', 'HTTP 200: "text"'),
    "not-utf8": (b"\xff\xfe\x00binary", "bytes that are not UTF-8 text"),
}


@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
@pytest.mark.parametrize("answer", NO_OBJECTS.values(), ids=NO_OBJECTS.keys())
def test_answers_that_hold_no_object_are_one_line(
    kubeconfig_at, capsys: pytest.CaptureFixture[str], command: list[str], answer: tuple
) -> None:
    body, says = answer
    host, _, line = fail_after_the_version(kubeconfig_at, capsys, command, body)

    assert line.startswith(f"error: the server at {host} is not a working Kubernetes API server: ")
    assert line.endswith(f" answered {says}")


@pytest.mark.parametrize("command", list(COMMANDS.values())[:2], ids=list(COMMANDS)[:2])
def test_objects_without_their_required_fields_are_one_line(
    kubeconfig_at, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    # `{}` for every object: discovery's APIResourceList lacks its fields.
    host, out, line = fail_after_the_version(kubeconfig_at, capsys, command, "{}")

    assert out.startswith(f"Kubernetes v1.31.0 at {host}, namespace default")
    assert line == (
        f"error: the server at {host} is not a working Kubernetes API server: a request for an "
        "APIResourceList answered HTTP 200: {}"
    )


ANSWERED, WITH_500 = (
    "the Kubernetes API server at HOST answered",
    "with HTTP 500: Internal Server Error",
)
SERVICES = "the read of KFP's object-store Services (for s3_endpoint=auto)"
# The first request with an explicit endpoint: the secret the Tensorboard's pod would read.
SECRET = "the read of secret default/mlpipeline-minio-artifact"


@pytest.mark.parametrize(
    ("status", "args", "says"),
    [
        (
            500,
            [],
            f"{ANSWERED} {SERVICES} {WITH_500}",
        ),
        (
            500,
            ["--s3-endpoint", "http://minio:9000"],
            f"{ANSWERED} {SECRET} {WITH_500}",
        ),
        (401, ["--s3-endpoint", "http://minio:9000"], CREDENTIALS),
    ],
    ids=["auto-500", "endpoint-500", "endpoint-401"],
)
def test_compare_runs_names_the_api_servers_answer(
    kubeconfig_at, capsys: pytest.CaptureFixture[str], status: int, args: list[str], says: str
) -> None:
    # A Kubernetes version, then errors: not taken for a bad s3_endpoint or missing rights.
    with pointed_at(kubeconfig_at, status, "", version=True) as host:
        line = one_line_error(capsys, ["--compare-runs", *args])

    assert line == f"error: {says.replace('HOST', host)}"


@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
def test_credentials_refused_after_the_version_are_one_line(
    kubeconfig_at, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    # `/version` is public; every other request is refused as unauthenticated: nothing passes.
    host, _, line = fail_after_the_version(kubeconfig_at, capsys, command, "", status=401)

    assert line == f"error: {CREDENTIALS.replace('HOST', host)}"


@pytest.mark.parametrize(
    ("status", "says"),
    [
        (403, "not readable with these credentials (HTTP 403: Forbidden)"),
        (503, "not readable: the API server answered HTTP 503: Service Unavailable"),
    ],
)
def test_what_could_not_be_checked_passes_nothing(
    kubeconfig_at, capsys: pytest.CaptureFixture[str], status: int, says: str
) -> None:
    with pointed_at(kubeconfig_at, status, "", version=True):
        code = cli.main(["--check-cluster", "--nodes", "2"])

    lines = capsys.readouterr().out.splitlines()
    results = dict(line[2:].split(": ", 1) for line in lines[1:-1])
    # Nothing was learnt of the cluster: a gate on the exit status must not pass.
    assert code == 1
    # Whether Kubeflow's Tensorboard is served is unknown: so is all that depends on it.
    assert lines[1].startswith("? Tensorboard CRD: ")
    for name in ("PodDefault CRD", "launcher RBAC"):
        assert results[name] == (
            "not checked: whether Kubeflow's Tensorboard is served is unknown. To check: see the "
            "Tensorboard CRD's line first"
        )
        assert f"? {name}: " in "\n".join(lines)
    assert any(says in result for result in results.values()), lines
    # Nor is a TrainJob CRD whose discovery failed "not served", or the authorizer's fault ours.
    assert results["TrainJob"] == (
        "not submitted: the TrainJob CRD could not be checked. To check: see its line first"
    )
    may_not = "these credentials may not ask" if status == 403 else "could not ask"
    assert results["TrainJob RBAC"].startswith(f"{may_not} the authorizer (HTTP {status}")
    assert lines[-1] == (
        "None of the 9 checks that ask the cluster could be made (?): whether a run in default "
        "works is unknown."
    )
    # Each unknown of its own says how to check it by other means, and blames the credentials
    # only for a refusal.
    unknown = [line for line in lines if line.startswith("? ")]
    assert len(unknown) == 12, lines
    assert all(". To check: " in line for line in unknown), unknown
    refused = [line for line in unknown if "as someone who may" in line]
    assert len(refused) == (6 if status == 403 else 0), unknown


# Checks that ask the cluster nothing are no evidence of a working one: a directory root needs
# no Tensorboard, object store or claim; an endpoint outside the cluster is not looked up.
@pytest.mark.parametrize(
    ("args", "asked", "says"),
    [
        (
            ["--tensorboard-logs-root", "/tmp/tensorboard"],
            3,
            "✓ launcher RBAC: not needed for logs at /tmp/tensorboard",
        ),
        (
            ["--s3-endpoint", "http://minio.example.com:9000"],
            5,
            "? object store: http://minio.example.com:9000 is not a Service of this cluster",
        ),
    ],
    ids=["directory", "outside-endpoint"],
)
def test_checks_that_ask_nothing_pass_nothing(
    kubeconfig_at, capsys: pytest.CaptureFixture[str], args: list[str], asked: int, says: str
) -> None:
    with pointed_at(kubeconfig_at, 403, "", version=True):
        code = cli.main(["--check-cluster", *args])

    lines = capsys.readouterr().out.splitlines()
    assert code == 1
    assert any(line.startswith(says) for line in lines), lines
    assert lines[-1] == (
        f"None of the {asked} checks that ask the cluster could be made (?): whether a run in "
        "default works is unknown."
    )


@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
@pytest.mark.parametrize(
    ("plugin", "says"),
    [
        # A plugin that fails, saying why over several lines (as cloud login plugins do).
        (["sh", "-c", "echo 'not logged in' >&2; echo 'run: login' >&2; exit 1"], "not logged in"),
        (["no-such-credential-plugin"], "No such file or directory"),
    ],
    ids=["fails", "missing"],
)
def test_a_failing_credential_plugin_is_one_line(
    kubeconfig_at, tmp_path, capsys, command: list[str], plugin: list[str], says: str
) -> None:
    # Before any request: the client would log the failure and go on without credentials.
    kubeconfig_at(f"http://127.0.0.1:{free_port()}")
    config = yaml.safe_load(Path(os.environ["KUBECONFIG"]).read_text())
    exec_config = {"apiVersion": "client.authentication.k8s.io/v1", "command": plugin[0]}
    exec_config |= {"args": plugin[1:], "interactiveMode": "Never"}
    config["users"][0]["user"] = {"exec": exec_config}
    Path(os.environ["KUBECONFIG"]).write_text(yaml.safe_dump(config))

    line = one_line_error(capsys, command)

    assert "credential plugin" in line
    assert says in line
    assert line.endswith(": log in again, or fix its users[].user.exec")


@pytest.mark.parametrize("gpus", ["one", "Infinity"])
def test_a_quantity_no_api_server_stores_is_one_line(
    kubeconfig_at, capsys: pytest.CaptureFixture[str], gpus: str
) -> None:
    # A node whose allocatable GPUs are no quantity, which the API server would never store.
    node = {"metadata": {"name": "gpu-1"}, "status": {"allocatable": {"nvidia.com/gpu": gpus}}}
    nodes = {"/api/v1/nodes": {"items": [node]}}
    with (
        pointed_at(kubeconfig_at, 404, "", version=True, paths=nodes) as host,
        pytest.raises(SystemExit) as exited,
    ):
        cli.main(["--check-cluster"])

    err = capsys.readouterr().err
    assert exited.value.code == 1, err
    assert err.splitlines() == [
        f"error: the server at {host} is not a working Kubernetes API server: a node list (node "
        f"gpu-1's allocatable nvidia.com/gpu) answered '{gpus}'"
    ]
