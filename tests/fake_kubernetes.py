"""A Kubernetes API server for tests: real HTTP on 127.0.0.1, custom objects only.

Speaks the REST protocol the `kubernetes` client uses for namespaced custom objects
(`/apis/<group>/<version>/namespaces/<ns>/<plural>[/<name>]`): POST creates (201, or 409
AlreadyExists), GET reads (404 NotFound), PATCH applies a JSON merge patch, PUT replaces with an
optimistic `resourceVersion` check (409 Conflict). Objects get a uid, a resourceVersion and a
creationTimestamp; writes are validated against the CRD schemas (422 Invalid), as a structural
schema would make the real server do. Errors are `Status` objects with reason and code. A test
scripts the rest: which resources are installed (else 404, as for a missing CRD), which verbs
are forbidden (403), one-off faults (an HTTP error or a dropped connection, before or after the
request took effect), and after how many reads a `Tensorboard` reports a ready replica. Every
request is recorded for assertions.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import http.server
import itertools
import json
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import jsonschema
import pytest
import yaml

PATH = re.compile(
    r"/apis/(?P<group>[^/]+)/(?P<version>[^/]+)/namespaces/(?P<namespace>[^/]+)"
    r"/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?"
)
VERBS = {"POST": "create", "GET": "get", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}
MERGE_PATCH = "application/merge-patch+json"
SERVICE_ACCOUNT = "system:serviceaccount:{namespace}:default-editor"


@dataclasses.dataclass(frozen=True)
class Recorded:
    """One request as the server received it."""

    method: str
    path: str
    content_type: str
    authorization: str
    body: object


@dataclasses.dataclass(frozen=True)
class Fault:
    """A one-off failure of the next matching request.

    Attributes:
        method: HTTP method to match.
        plural: Resource to match.
        status: HTTP status to answer with; None drops the connection without an answer.
        after_effect: With status None: carry the request out first, then drop (the client
            never learns that it succeeded).
    """

    method: str
    plural: str
    status: int | None = 500
    after_effect: bool = False


@dataclasses.dataclass(frozen=True)
class CustomResource:
    """A CRD the server can serve, read from its manifest."""

    group: str
    version: str
    plural: str
    kind: str
    schema: dict

    @classmethod
    @functools.cache
    def from_crd(cls, path: Path) -> CustomResource:
        crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        version = next(v for v in crd["spec"]["versions"] if v.get("served"))
        return cls(
            crd["spec"]["group"],
            version["name"],
            crd["spec"]["names"]["plural"],
            crd["spec"]["names"]["kind"],
            version["schema"]["openAPIV3Schema"],
        )


def status_body(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    """A `Status` object, the body of every error the API server returns."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details or {},
        "code": code,
    }


def merge_patch(target: object, patch: object) -> object:
    """RFC 7386 JSON merge patch (written independently of the code under test)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


class _StatusError(Exception):
    def __init__(self, code: int, body: dict) -> None:
        super().__init__(code)
        self.code, self.body = code, body


class FakeKubernetes:
    """The server. Use as a context manager; `url` is its address once started.

    Args:
        resources: CRDs it knows; `installed` says which of them are served.
        ready_after_gets: A `Tensorboard` reports `readyReplicas: 1` from this many reads on
            (counted per object); None: never.
    """

    def __init__(self, resources: list[CustomResource], ready_after_gets: int | None = 2) -> None:
        self.resources = {r.plural: r for r in resources}
        self.installed = set(self.resources)
        self.forbidden: set[tuple[str, str]] = set()
        self.faults: list[Fault] = []
        self.ready_after_gets = ready_after_gets
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.requests: list[Recorded] = []
        self._gets: dict[tuple[str, str, str], int] = {}
        self._versions = itertools.count(1000)
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None

    # --- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> FakeKubernetes:
        handler = self._handler_class()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        # A short poll interval: shutdown() waits up to one interval.
        serve = functools.partial(self._server.serve_forever, poll_interval=0.02)
        threading.Thread(target=serve, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def write_kubeconfig(
        self, path: Path, namespace: str | None = None, token: str = "t0k3n"
    ) -> Path:
        """Writes a kubeconfig whose current context points at this server."""
        return write_kubeconfig(path, self.url, namespace, token)

    # --- scripting and inspection -------------------------------------------------------------

    def add_object(self, obj: dict) -> dict:
        """Stores `obj` as if created earlier (by another attempt or another client)."""
        with self._lock:
            resource = next(r for r in self.resources.values() if r.kind == obj["kind"])
            return self._store_new(resource.plural, copy.deepcopy(obj))

    def get_object(self, plural: str, namespace: str, name: str) -> dict:
        with self._lock:
            return copy.deepcopy(self.objects[(plural, namespace, name)])

    def calls(self) -> list[tuple[str, str]]:
        """(method, plural[/name]) of every request, in order."""
        result = []
        for request in self.requests:
            match = PATH.fullmatch(request.path.split("?")[0])
            if match is None:
                result.append((request.method, request.path))
            else:
                name = f"/{match['name']}" if match["name"] else ""
                result.append((request.method, match["plural"] + name))
        return result

    # --- the protocol -------------------------------------------------------------------

    def _store_new(self, plural: str, obj: dict) -> dict:
        metadata = obj.setdefault("metadata", {})
        metadata.update(
            uid=str(uuid.uuid4()),
            resourceVersion=str(next(self._versions)),
            creationTimestamp="2026-01-01T00:00:00Z",
            generation=1,
        )
        self.objects[(plural, metadata["namespace"], metadata["name"])] = obj
        return copy.deepcopy(obj)

    def _validate(self, resource: CustomResource, obj: dict) -> None:
        errors = sorted(jsonschema.Draft7Validator(resource.schema).iter_errors(obj), key=str)
        if errors:
            message = f"{resource.kind}.{resource.group} is invalid: {errors[0].message}"
            raise _StatusError(422, status_body(422, "Invalid", message))

    def _not_found(self, resource: CustomResource, name: str) -> _StatusError:
        message = f'{resource.plural}.{resource.group} "{name}" not found'
        details = {"name": name, "group": resource.group, "kind": resource.plural}
        return _StatusError(404, status_body(404, "NotFound", message, details))

    def _serve(self, method: str, path: str, content_type: str, body: object) -> tuple[int, dict]:
        match = PATH.fullmatch(path.split("?")[0])
        resource = self.resources.get(match["plural"]) if match else None
        if (
            not match
            or resource is None
            or match["plural"] not in self.installed
            or (match["group"], match["version"]) != (resource.group, resource.version)
        ):
            message = "the server could not find the requested resource"
            raise _StatusError(404, status_body(404, "NotFound", message))
        namespace, name = match["namespace"], match["name"]
        if (method, resource.plural) in self.forbidden:
            target = (
                f'{resource.plural}.{resource.group} "{name}"'
                if name
                else (f"{resource.plural}.{resource.group}")
            )
            message = (
                f"{target} is forbidden: User "
                f'"{SERVICE_ACCOUNT.format(namespace=namespace)}" cannot {VERBS[method]} '
                f'resource "{resource.plural}" in API group "{resource.group}" in the '
                f'namespace "{namespace}"'
            )
            raise _StatusError(
                403, status_body(403, "Forbidden", message, {"kind": resource.plural})
            )
        if method == "POST" and not name:
            return self._create(resource, namespace, body)
        if name is None:
            raise _StatusError(405, status_body(405, "MethodNotAllowed", f"{method} needs a name"))
        key = (resource.plural, namespace, name)
        if key not in self.objects:
            raise self._not_found(resource, name)
        if method == "GET":
            return 200, self._read(key)
        if method == "PATCH":
            if content_type != MERGE_PATCH:
                message = f"the body of the request was in an unknown format: {content_type}"
                raise _StatusError(415, status_body(415, "UnsupportedMediaType", message))
            return 200, self._replace(resource, key, merge_patch(self.objects[key], body))
        if method == "PUT":
            current = self.objects[key]["metadata"]["resourceVersion"]
            if body.get("metadata", {}).get("resourceVersion") != current:
                message = (
                    f'Operation cannot be fulfilled on {resource.plural}.{resource.group} "{name}":'
                    " the object has been modified; please apply your changes to the latest "
                    "version and try again"
                )
                raise _StatusError(409, status_body(409, "Conflict", message))
            return 200, self._replace(resource, key, copy.deepcopy(body))
        raise _StatusError(405, status_body(405, "MethodNotAllowed", f"{method} is not supported"))

    def _create(self, resource: CustomResource, namespace: str, body: object) -> tuple[int, dict]:
        if not isinstance(body, dict):
            raise _StatusError(400, status_body(400, "BadRequest", "the body is not a JSON object"))
        wanted = (f"{resource.group}/{resource.version}", resource.kind)
        if (body.get("apiVersion"), body.get("kind")) != wanted:
            message = f"the API version or kind in the body does not match {wanted}"
            raise _StatusError(400, status_body(400, "BadRequest", message))
        metadata = body.get("metadata") or {}
        name = metadata.get("name")
        if not name or metadata.get("namespace", namespace) != namespace:
            message = "metadata.name is required and metadata.namespace must match the path"
            raise _StatusError(400, status_body(400, "BadRequest", message))
        self._validate(resource, body)
        if (resource.plural, namespace, name) in self.objects:
            message = f'{resource.plural}.{resource.group} "{name}" already exists'
            details = {"name": name, "group": resource.group, "kind": resource.plural}
            raise _StatusError(409, status_body(409, "AlreadyExists", message, details))
        stored = copy.deepcopy(body)
        stored["metadata"]["namespace"] = namespace
        stored.pop("status", None)  # status is a subresource: not settable on create
        return 201, self._store_new(resource.plural, stored)

    def _read(self, key: tuple[str, str, str]) -> dict:
        obj = self.objects[key]
        if key[0] == "tensorboards":
            # What the tensorboard-controller reports as its Deployment comes up.
            self._gets[key] = self._gets.get(key, 0) + 1
            ready = self.ready_after_gets is not None and self._gets[key] >= self.ready_after_gets
            state = "Available" if ready else "Progressing"
            obj["status"] = {
                "readyReplicas": 1 if ready else 0,
                "conditions": [{"deploymentState": state}],
            }
        return copy.deepcopy(obj)

    def _replace(self, resource: CustomResource, key: tuple[str, str, str], new: dict) -> dict:
        old = self.objects[key]
        new["status"] = copy.deepcopy(old.get("status"))  # only the status subresource sets it
        if new["status"] is None:
            del new["status"]
        for field in ("uid", "creationTimestamp", "name", "namespace"):
            new["metadata"][field] = old["metadata"][field]
        self._validate(resource, new)
        new["metadata"]["resourceVersion"] = str(next(self._versions))
        generation = old["metadata"]["generation"]
        new["metadata"]["generation"] = generation + (new.get("spec") != old.get("spec"))
        self.objects[key] = new
        return copy.deepcopy(new)

    # --- HTTP -----------------------------------------------------------------------------

    def _handle(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        content_type = (handler.headers.get("Content-Type") or "").split(";")[0].strip()
        method, path = handler.command, handler.path
        with self._lock:
            self.requests.append(
                Recorded(method, path, content_type, handler.headers.get("Authorization", ""), body)
            )
            match = PATH.fullmatch(path.split("?")[0])
            plural = match["plural"] if match else ""
            fault = next((f for f in self.faults if (f.method, f.plural) == (method, plural)), None)
            if fault:
                self.faults.remove(fault)
            if fault and fault.status is not None:
                code, answer = fault.status, status_body(fault.status, "InternalError", "fault")
            elif fault and not fault.after_effect:
                code, answer = 0, {}
            else:
                try:
                    code, answer = self._serve(method, path, content_type, body)
                except _StatusError as err:
                    code, answer = err.code, err.body
        if fault and fault.status is None:
            # Close without a byte of response: the client sees the connection drop.
            handler.close_connection = True
            return
        data = json.dumps(answer).encode()
        handler.send_response(code)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_request(self) -> None:
                fake._handle(self)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = do_request  # noqa: N815

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


@contextmanager
def fake_kubernetes(schemas: Path, ready_after_gets: int | None = 2) -> Iterator[FakeKubernetes]:
    """A started server serving the Tensorboard and PodDefault CRDs found in `schemas`."""
    resources = [CustomResource.from_crd(p) for p in sorted(schemas.glob("*.yaml"))]
    with FakeKubernetes(resources, ready_after_gets) as server:
        yield server


def use_as_cluster(
    server: FakeKubernetes,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    pod_namespace: str,
    token: str,
) -> None:
    """Points the standard client configuration at `server`, as a pipeline pod would see it.

    Args:
        server: The started server.
        tmp_path: Where to write the kubeconfig (its context's namespace is "from-kubeconfig").
        monkeypatch: pytest's MonkeyPatch, to set the environment for one test.
        pod_namespace: $POD_NAMESPACE, as the pipeline sets it from the downward API.
        token: The bearer token the kubeconfig holds.
    """
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig", "from-kubeconfig", token)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    # Never the real cluster of a CI runner that happens to run in a pod.
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("POD_NAMESPACE", pod_namespace)


def write_kubeconfig(
    path: Path, server: str, namespace: str | None = None, token: str = "t0k3n"
) -> Path:
    """Writes a kubeconfig whose current context points at `server`, with a bearer token."""
    context: dict[str, str] = {"cluster": "fake", "user": "fake"}
    if namespace:
        context["namespace"] = namespace
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "fake", "user": {"token": token}}],
        "contexts": [{"name": "fake", "context": context}],
        "current-context": "fake",
    }
    path.write_text(yaml.safe_dump(config))
    return path
