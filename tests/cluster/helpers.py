"""Helpers for the cluster tests: things that cannot run here, and a loopback S3 emulator.

No Kubernetes API server can run on these machines, so ``FakeKubernetesApiServer`` stands in for
one behind the kubernetes client's ``CustomObjectsApi`` and ``CoreV1Api`` interfaces (the same
method names and arguments, raising the client's own ``ApiException`` with the API server's Status
bodies). ``tests/cluster/standin.py`` serves it over HTTP and acts as the operator would.
Everything else in these tests is real.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

from kubernetes.client.exceptions import ApiException

from serving.local import free_port


def api_exception(status: int, message: str = "", details: dict | None = None, body: str | None = None):
    e = ApiException(
        status=status,
        reason={404: "Not Found", 409: "Conflict", 403: "Forbidden", 422: "Unprocessable Entity"}.get(
            status, "Error"
        ),
    )
    status_body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": status}
    status_body["message"] = message or f"status {status}"
    if details:
        status_body["details"] = details
    e.body = body if body is not None else json.dumps(status_body)
    return e


def missing_namespace(namespace: str) -> ApiException:
    """What the API server answers for anything created in a namespace that does not exist."""
    return api_exception(
        404, f'namespaces "{namespace}" not found', {"name": namespace, "kind": "namespaces"}
    )


def missing_resource_type() -> ApiException:
    """What the API server answers for a resource type it does not serve (no CRD): not a Status."""
    return api_exception(404, body="404 page not found")


class FakeKubernetesApiServer:
    """A stand-in for the Kubernetes API server (none can run here), seen through CustomObjectsApi.

    ``statuses``: the ``status`` the operator would write, one per ``get`` after a write (the
    last one repeats). ``fail``: method name -> list of statuses to raise on successive calls.
    ``namespaces``: the namespaces that exist (None: every one does); writing into another is a
    404 naming it, as the API server answers. ``crd=False``: no SeldonDeployment CRD installed.
    ``on_write(key, body)`` / ``on_delete(key, body)``: called after a SeldonDeployment is written
    or deleted (the stand-in cluster's operator hooks in there).
    """

    def __init__(self, statuses=None, fail=None, existing=None, namespaces=None, crd=True):
        self.namespaces = None if namespaces is None else set(namespaces)
        self.crd = crd
        self.secrets = {}  # (namespace, name) -> Secret
        self.services = {}  # (namespace, name) -> Service
        self.on_write = None
        self.on_delete = None
        self.objects = {}
        self.calls = []
        self.statuses = list(statuses or [])
        self.fail = {k: list(v) for k, v in (fail or {}).items()}
        self._version = 100
        self._written = False  # the operator writes statuses only after our create/replace
        for obj in existing or []:
            self._store(copy.deepcopy(obj), generation=1)

    def _maybe_fail(self, method):
        if self.fail.get(method):
            status = self.fail[method].pop(0)
            raise api_exception(status, f"{method} refused with {status} by the fake API server")

    def _check_namespace(self, namespace):
        if self.namespaces is not None and namespace not in self.namespaces:
            raise missing_namespace(namespace)

    def _check_crd(self):
        if not self.crd:
            raise missing_resource_type()

    def _store(self, body, generation):
        self._version += 1
        meta = body.setdefault("metadata", {})
        meta["resourceVersion"] = str(self._version)
        meta["generation"] = generation
        key = (meta.get("namespace", "default"), meta["name"])
        self.objects[key] = body
        return copy.deepcopy(body)

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self.calls.append(("create", group, version, namespace, plural, body["metadata"]["name"]))
        self._maybe_fail("create")
        self._check_crd()
        self._check_namespace(namespace)
        if (namespace, body["metadata"]["name"]) in self.objects:
            raise api_exception(409, "already exists")
        self._written = True
        stored = self._store(copy.deepcopy(body), generation=1)
        if self.on_write:
            self.on_write((namespace, body["metadata"]["name"]), stored)
        return stored

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.calls.append(("get", group, version, namespace, plural, name))
        self._maybe_fail("get")
        self._check_crd()
        if (namespace, name) not in self.objects:
            raise api_exception(404, f'seldondeployments.machinelearning.seldon.io "{name}" not found')
        obj = self.objects[(namespace, name)]
        if self.statuses and self._written:
            obj["status"] = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return copy.deepcopy(obj)

    def replace_namespaced_custom_object(self, group, version, namespace, plural, name, body):
        self.calls.append(("replace", group, version, namespace, plural, name))
        self._maybe_fail("replace")
        current = self.objects[(namespace, name)]
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise api_exception(409, "the object has been modified")
        generation = current["metadata"]["generation"] + (current.get("spec") != body.get("spec"))
        body = copy.deepcopy(body)
        body["status"] = current.get("status", {})
        self._written = True
        stored = self._store(body, generation=generation)
        if self.on_write:
            self.on_write((namespace, name), stored)
        return stored

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.calls.append(("delete", group, version, namespace, plural, name))
        self._check_crd()
        deleted = self.objects.pop((namespace, name), None)
        if deleted is None:
            raise api_exception(404, "not found")
        if self.on_delete:
            self.on_delete((namespace, name), deleted)
        return {}

    # ------------------------------------------------------------------ CoreV1Api: the parts we use
    def read_namespace(self, name):
        self.calls.append(("read_namespace", name))
        if self.namespaces is not None and name not in self.namespaces:
            raise api_exception(404, f'namespaces "{name}" not found', {"name": name, "kind": "namespaces"})
        return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}

    def create_namespace(self, body):
        name = body["metadata"]["name"]
        self.calls.append(("create_namespace", name))
        self._maybe_fail("create_namespace")
        if self.namespaces is None or name in self.namespaces:
            raise api_exception(409, f'namespaces "{name}" already exists')
        self.namespaces.add(name)
        return copy.deepcopy(body)

    def create_namespaced_secret(self, namespace, body):
        self.calls.append(("create_secret", namespace, body["metadata"]["name"]))
        self._check_namespace(namespace)
        if (namespace, body["metadata"]["name"]) in self.secrets:
            raise api_exception(409, "already exists")
        self.secrets[(namespace, body["metadata"]["name"])] = copy.deepcopy(body)
        return copy.deepcopy(body)

    def replace_namespaced_secret(self, name, namespace, body):
        self.calls.append(("replace_secret", namespace, name))
        if (namespace, name) not in self.secrets:
            raise api_exception(404, f'secrets "{name}" not found')
        self.secrets[(namespace, name)] = copy.deepcopy(body)
        return copy.deepcopy(body)

    def read_namespaced_service(self, name, namespace):
        self.calls.append(("read_service", namespace, name))
        if (namespace, name) not in self.services:
            raise api_exception(404, f'services "{name}" not found')
        return copy.deepcopy(self.services[(namespace, name)])


def k8s_unknown_fields(obj: dict) -> list[str]:
    """Fields the kubernetes client's model for ``obj``'s kind does not know (typos, wrong nesting).

    Deserialises into the client's ``V1<Kind>`` model and serialises back: whatever the model
    dropped is not part of that Kubernetes type. Required fields are enforced by the models too.
    """
    from kubernetes import client

    class _Response:
        data = json.dumps(obj)

    api = client.ApiClient()
    model = api.deserialize(_Response(), f"V1{obj['kind']}")
    back = api.sanitize_for_serialization(model)
    missing = []

    def walk(a, b, path):
        if isinstance(a, dict):
            for key, value in a.items():
                if not isinstance(b, dict) or key not in b:
                    missing.append(f"{path}.{key}".lstrip("."))
                else:
                    walk(value, b[key], f"{path}.{key}")
        elif isinstance(a, list) and isinstance(b, list):
            for i, (x, y) in enumerate(zip(a, b, strict=False)):
                walk(x, y, f"{path}[{i}]")

    walk(obj, back, "")
    return missing


def wait_for_port(port: int, process: subprocess.Popen, timeout: float, log_path=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = open(log_path).read()[-3000:] if log_path else ""
            raise RuntimeError(f"the server exited with {process.returncode} before listening:\n{log}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout} s")


def stop(process: subprocess.Popen, timeout: float = 10) -> None:
    """Stop a process group we started, by its pid: SIGTERM, then SIGKILL for whatever is left
    (gunicorn's workers outlive a leader that died first)."""
    try:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=timeout)


@contextmanager
def s3_emulator(tmp_path, timeout: float = 60):
    """moto's S3 server mode, an S3 emulator, on 127.0.0.1 only; yields its endpoint URL."""
    port = free_port()
    log = tmp_path / "s3-emulator.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_port(port, process, timeout, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)
