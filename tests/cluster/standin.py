"""A STAND-IN cluster for CI - not Kubernetes: the notebook's cluster branch runs against it.

No Kubernetes can run on the machines that test this project. ``StandInCluster`` lets the
cluster branch of the notebook (and ``python -m serving.cluster smoke``) run top to bottom anyway,
talking to it exactly as to a cluster - the kubernetes Python client through a kubeconfig, and a
``kubectl`` on PATH - while on the other side it acts as Seldon Core's operator would, for what
the notebook observes:

- an HTTP server speaking the parts of the Kubernetes REST API the project calls (SeldonDeployments,
  namespaces, Secrets, Services), backed by ``FakeKubernetesApiServer``: a namespace that does not
  exist is a 404 naming it, as the API server answers;
- on a SeldonDeployment create/replace it sets ``status.state`` to ``Creating``, then does what the
  storage initializer would - copies each ``modelUri`` from the S3 emulator into a local folder
  (``/mnt/models``), with the credentials of the ``envSecretRefName`` Secret read the way rclone
  reads ``RCLONE_CONFIG_<REMOTE>_*`` (no Secret, or a Secret for another remote: the init container
  fails and the state becomes ``Failed``) - serves the result with the local stack (the real model
  servers and the gateway) on loopback, and sets ``Available``; a replace that changes only
  ``traffic`` is a reload (Istio's weights move without dropping requests);
- per predictor a Service object ``<sdep>-<predictor>`` whose port 8000 is the local stack's
  per-predictor endpoint; the fake ``kubectl port-forward -n <ns> svc/<name> L:8000`` forwards
  127.0.0.1:L there (a TCP proxy), so the notebook's real port-forward code runs;
- a Prometheus of its own (kube-prometheus-stack's), scraping at the PodMonitor's interval (15 s),
  so a rate window sized for the local stack's 2 s scrapes finds no data, as on a cluster;
- delete tears the serving down.

What a run against it proves: the order of the branch's steps, their parameters and the glue
(publish to a bucket, namespace and Secret before the deployment, render, apply, wait, port-forward,
windows that fit the scrape interval, re-apply after promotion before measuring it, delete).
What it cannot prove: anything Kubernetes, Seldon's operator, rclone, Istio or the image do -
docs/cluster.md's checklist lists those.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from kubernetes.client.exceptions import ApiException

from serving import prometheus
from serving.cluster import analytics
from serving.cluster.buckets import rclone_remote, split_bucket_uri
from serving.cluster.endpoints import EXECUTOR_PORT, predictor_service
from serving.local import LocalStack, free_ports
from tests.cluster.helpers import FakeKubernetesApiServer, missing_resource_type

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = "standin.mlflow-seldon/loopback"  # Service annotation: where its port 8000 really is
EXISTING_NAMESPACES = {"default", "kube-system", "istio-system", "seldon-system", "monitoring"}
SDEP = re.compile(r"^/apis/machinelearning\.seldon\.io/v1/namespaces/([^/]+)/seldondeployments(?:/([^/]+))?$")
NAMESPACE = re.compile(r"^/api/v1/namespaces(?:/([^/]+))?$")
SECRET = re.compile(r"^/api/v1/namespaces/([^/]+)/secrets(?:/([^/]+))?$")
SERVICE = re.compile(r"^/api/v1/namespaces/([^/]+)/services/([^/]+)$")
GROUP = ("machinelearning.seldon.io", "v1")


class InitContainerFailed(RuntimeError):
    """What the model initializer's log would say."""


class StandInCluster:
    """A stand-in for a Kubernetes cluster with Seldon Core, Istio and kube-prometheus-stack (see module).

    ``with StandInCluster(folder) as cluster:``; ``cluster.env`` is what a process needs to talk to
    it (KUBECONFIG, and PATH with the stand-in kubectl first); ``cluster.ingress`` the ingress
    address, ``cluster.prometheus_url`` Prometheus - what a reader port-forwards on a real cluster.
    """

    def __init__(self, root: Path, scrape_interval: float | None = None):
        self.root = Path(root)
        self.api = FakeKubernetesApiServer(namespaces=EXISTING_NAMESPACES)
        self.api.on_write = self._on_write
        self.api.on_delete = self._on_delete
        self.lock = threading.RLock()  # the fake API server is not thread-safe; HTTP is threaded
        self.scrape_interval = scrape_interval or analytics.scrape_interval()
        self.ingress_port, self.prometheus_port = free_ports(2)
        self.stack = LocalStack(self.root / "operator" / "stack")
        self.events: list[str] = []  # what the operator did, in order
        self._work: queue.Queue = queue.Queue()
        self._served_spec: dict | None = None
        self._prometheus: subprocess.Popen | None = None
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ what a client sees
    @property
    def server(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    @property
    def ingress(self) -> str:
        return f"127.0.0.1:{self.ingress_port}"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def env(self) -> dict[str, str]:
        return {"KUBECONFIG": str(self.kubeconfig), "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}"}

    def start(self) -> StandInCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "stand-in", "cluster": {"server": self.server}}],
            "users": [{"name": "stand-in", "user": {}}],
            "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "stand-in"}}],
            "current-context": "stand-in",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))
        self.bin.mkdir(exist_ok=True)
        kubectl = self.bin / "kubectl"
        kubectl.write_text(
            f"#!{sys.executable}\n"
            "# the stand-in cluster's kubectl: `port-forward` only (tests/cluster/standin.py)\n"
            f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
            "from tests.cluster.standin import kubectl_main\n"
            "sys.exit(kubectl_main(sys.argv[1:]))\n"
        )
        kubectl.chmod(0o755)
        for target in (self._http.serve_forever, self._operator):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._work.put(None)
        self._http.shutdown()
        self._http.server_close()
        self.stack.down()
        if self._prometheus is not None:
            os.killpg(self._prometheus.pid, signal.SIGTERM)
            self._prometheus.wait(timeout=30)
            self._prometheus = None

    def __enter__(self) -> StandInCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ the operator
    def _set_status(self, key, status: dict) -> None:
        with self.lock:
            if key in self.api.objects:
                self.api.objects[key]["status"] = status

    def _on_write(self, key, body) -> None:
        # called under self.lock by the HTTP handler: the operator notices, then works in its thread
        self.api.objects[key]["status"] = {
            "state": "Creating",
            "description": "stand-in operator: reconciling",
        }
        self._work.put(("apply", key))

    def _on_delete(self, key, body) -> None:
        self._work.put(("delete", key))

    def _operator(self) -> None:
        while (item := self._work.get()) is not None:
            action, key = item
            try:
                if action == "delete":
                    stopped = self.stack.down()
                    self._served_spec = None
                    with self.lock:
                        for service in [k for k in self.api.services if k[0] == key[0]]:
                            del self.api.services[service]
                    self.events.append(f"deleted {key[0]}/{key[1]}: stopped {len(stopped)} processes")
                    continue
                with self.lock:
                    body = copy.deepcopy(self.api.objects.get(key))
                if body is not None:
                    self._reconcile(key, body)
            except InitContainerFailed as e:
                self.events.append(f"failed {key[0]}/{key[1]}: {e}")
                self._set_status(key, {"state": "Failed", "description": str(e)})
            except Exception as e:  # the status is how an operator reports anything
                self.events.append(f"failed {key[0]}/{key[1]}: {type(e).__name__}: {e}")
                self._set_status(
                    key, {"state": "Failed", "description": f"stand-in: {type(e).__name__}: {e}"}
                )

    def _reconcile(self, key, body: dict) -> None:
        namespace, name = key
        spec = copy.deepcopy(body["spec"])
        for predictor in spec["predictors"]:
            folder = self._storage_initializer(namespace, name, predictor)
            predictor["graph"]["modelUri"] = str(folder)
            predictor["graph"].pop("envSecretRefName", None)
        served = {
            "apiVersion": body["apiVersion"],
            "kind": body["kind"],
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
        if (
            self.stack.running()
            and self._served_spec is not None
            and _without_traffic(spec) == _without_traffic(self._served_spec)
        ):
            self.stack.manifest_path.write_text(yaml.safe_dump(served, sort_keys=False))
            self.stack.reload()  # Istio's weights move; no pod restarts
            self.events.append(f"traffic of {namespace}/{name}: {_traffic(spec)}")
        else:
            path = self.root / "operator" / "served.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(served, sort_keys=False))
            self.stack = LocalStack.up(
                path, port=self.ingress_port, state_dir=self.stack.state_dir, timeout=300, replace=True
            )
            self.events.append(f"serving {namespace}/{name}: {_traffic(spec)}")
        self._served_spec = spec
        with self.lock:
            for predictor in spec["predictors"]:
                service = predictor_service(name, predictor["name"], predictor.get("annotations"))
                address = self.stack.predictor_urls[predictor["name"]].split("://", 1)[1]
                self.api.services[(namespace, service)] = {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": service, "namespace": namespace, "annotations": {LOOPBACK: address}},
                    "spec": {"ports": [{"name": "http", "port": EXECUTOR_PORT}]},
                }
        self._scrape()
        self._set_status(
            key,
            {
                "state": "Available",
                "description": "stand-in operator: served by the local stack on loopback",
                "deploymentStatus": {
                    f"{name}-{p['name']}-0-{p['graph']['name']}": {"replicas": 1, "availableReplicas": 1}
                    for p in spec["predictors"]
                },
            },
        )

    def _storage_initializer(self, namespace: str, name: str, predictor: dict) -> Path:
        """Copy ``modelUri`` into a local folder as the rclone init container would, or fail as it would."""
        import s3fs

        graph = predictor["graph"]
        uri, secret_name = graph["modelUri"], graph.get("envSecretRefName")
        where = f"init container {graph['name']}-model-initializer"
        env: dict[str, str] = {}
        if secret_name:
            with self.lock:
                secret = copy.deepcopy(self.api.secrets.get((namespace, secret_name)))
            if secret is None:
                raise InitContainerFailed(
                    f"{where}: CreateContainerConfigError: secret {secret_name!r} not found"
                )
            env.update({k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()})
            env.update(secret.get("stringData") or {})
        remote = rclone_remote(uri)
        config = {
            k[len(f"RCLONE_CONFIG_{remote}_") :]: v
            for k, v in env.items()
            if k.startswith(f"RCLONE_CONFIG_{remote}_")
        }
        if remote == "GS" and "TYPE" not in config:
            config = {"TYPE": "google cloud storage", "ANONYMOUS": "true"}  # the image's own gs remote
        if "TYPE" not in config:
            raise InitContainerFailed(
                f"{where}: rclone: didn't find section in config file ({remote.lower()!r})"
            )
        if config["TYPE"] != "s3":
            raise InitContainerFailed(f"{where}: the stand-in reads s3 buckets only (the S3 emulator)")
        if config.get("ENV_AUTH") == "true":
            options = {}  # the pod's own identity: here, this process's environment
        else:
            options = {"key": config.get("ACCESS_KEY_ID"), "secret": config.get("SECRET_ACCESS_KEY")}
        if config.get("ENDPOINT"):
            options["endpoint_url"] = config["ENDPOINT"]
        fs = s3fs.S3FileSystem(**options)
        _, bucket, path = split_bucket_uri(uri)
        root = f"{bucket}/{path}".rstrip("/")
        try:
            found = [p for p in fs.find(root) if p != root]
        except (OSError, PermissionError) as e:
            raise InitContainerFailed(f"{where}: rclone copy {uri}: {e}") from e
        if not found:
            raise InitContainerFailed(f"{where}: rclone copy {uri}: directory not found")
        mnt = self.root / "mnt" / f"{namespace}-{name}-{predictor['name']}"
        for object_path in found:
            target = mnt / object_path[len(root) + 1 :]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(fs.cat_file(object_path))
        return mnt

    def _scrape(self) -> None:
        """The stand-in's Prometheus scrapes the served pods at the PodMonitor's interval."""
        urls = self.stack.urls
        config = prometheus.scrape_config(
            urls["gateway"],
            {n: u.split("://", 1)[1].rsplit("/", 1)[0] for n, u in urls["model_metrics"].items()},
            interval=round(self.scrape_interval),  # whole seconds: Prometheus rejects "15.0s"
        )
        config["global"]["evaluation_interval"] = config["global"]["scrape_interval"]
        path = self.root / "prometheus.yml"
        text = yaml.safe_dump(config, sort_keys=False)
        changed = not path.exists() or path.read_text() != text
        path.write_text(text)
        if self._prometheus is None:
            log = open(self.root / "prometheus.log", "ab")  # the process keeps it open
            self._prometheus = subprocess.Popen(
                prometheus.command(path, self.root / "prometheus-data", "127.0.0.1", self.prometheus_port),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            _wait_http(f"{self.prometheus_url}/-/ready", 60)
        elif changed:
            os.kill(self._prometheus.pid, signal.SIGHUP)  # Prometheus re-reads its config on SIGHUP


def _without_traffic(spec: dict) -> dict:
    spec = copy.deepcopy(spec)
    for predictor in spec["predictors"]:
        predictor.pop("traffic", None)
    return spec


def _traffic(spec: dict) -> dict:
    return {p["name"]: p.get("traffic", 0) for p in spec["predictors"]}


def _wait_http(url: str, timeout: float) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(url, timeout=2).ok:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout} s")
        time.sleep(0.2)


# ---------------------------------------------------------------------- the REST API over HTTP
def _handler(cluster: StandInCluster):
    api = cluster.api

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet: the test's output is the notebook's
            pass

        def _body(self) -> dict:
            length = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(length) or b"{}") if length else {}

        def _send(self, status: int, payload) -> None:
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            kind = "text/plain" if isinstance(payload, bytes) else "application/json"
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _dispatch(self, method: str) -> None:
            path = urlsplit(self.path).path
            try:
                with cluster.lock:
                    self._send(200 if method != "POST" else 201, self._route(method, path))
            except ApiException as e:
                try:
                    payload = json.loads(e.body)  # a Status, as the API server sends
                except (TypeError, ValueError):
                    payload = str(e.body).encode()  # "404 page not found": no such resource type
                self._send(e.status, payload)

        def _route(self, method: str, path: str):
            if m := SDEP.match(path):
                namespace, name = m.groups()
                if method == "POST" and not name:
                    return api.create_namespaced_custom_object(
                        *GROUP, namespace, "seldondeployments", self._body()
                    )
                if method == "GET" and name:
                    return api.get_namespaced_custom_object(*GROUP, namespace, "seldondeployments", name)
                if method == "PUT" and name:
                    return api.replace_namespaced_custom_object(
                        *GROUP, namespace, "seldondeployments", name, self._body()
                    )
                if method == "DELETE" and name:
                    api.delete_namespaced_custom_object(*GROUP, namespace, "seldondeployments", name)
                    return {"kind": "Status", "status": "Success"}
            elif m := NAMESPACE.match(path):
                (name,) = m.groups()
                if method == "GET" and name:
                    return api.read_namespace(name)
                if method == "POST" and not name:
                    return api.create_namespace(self._body())
            elif m := SECRET.match(path):
                namespace, name = m.groups()
                if method == "POST" and not name:
                    return api.create_namespaced_secret(namespace, self._body())
                if method == "PUT" and name:
                    return api.replace_namespaced_secret(name, namespace, self._body())
            elif (m := SERVICE.match(path)) and method == "GET":
                namespace, name = m.groups()
                return api.read_namespaced_service(name, namespace)
            raise missing_resource_type()

        def do_GET(self):
            self._dispatch("GET")

        def do_POST(self):
            self._dispatch("POST")

        def do_PUT(self):
            self._dispatch("PUT")

        def do_DELETE(self):
            self._dispatch("DELETE")

    return Handler


# ---------------------------------------------------------------------- the stand-in kubectl
def kubectl_main(argv: list[str]) -> int:
    """``kubectl port-forward -n <ns> svc/<name> <local>:<remote>`` against the stand-in; nothing else."""
    import requests

    if not argv or argv[0] != "port-forward":
        print(f"stand-in kubectl: only `port-forward` is implemented, not {argv[:1]}", file=sys.stderr)
        return 1
    args, namespace = list(argv[1:]), "default"
    if "-n" in args:
        i = args.index("-n")
        namespace = args[i + 1]
        del args[i : i + 2]
    target, ports = args[0], args[1]
    if not target.startswith("svc/"):
        print(f"stand-in kubectl: forwards Services (svc/<name>), not {target}", file=sys.stderr)
        return 1
    local, _, remote = ports.partition(":")
    if int(remote) != EXECUTOR_PORT:
        print(f"error: Service {target} does not have a service port {remote}", file=sys.stderr)
        return 1
    server = yaml.safe_load(Path(os.environ["KUBECONFIG"]).read_text())["clusters"][0]["cluster"]["server"]
    response = requests.get(f"{server}/api/v1/namespaces/{namespace}/services/{target[4:]}", timeout=10)
    if response.status_code != 200:
        print(f'Error from server (NotFound): services "{target[4:]}" not found', file=sys.stderr)
        return 1
    host, _, port = response.json()["metadata"]["annotations"][LOOPBACK].rpartition(":")

    async def pipe(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def handle(client_reader, client_writer):
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(pipe(client_reader, upstream_writer), pipe(upstream_reader, client_writer))

    async def serve():
        server = await asyncio.start_server(handle, "127.0.0.1", int(local))
        print(f"Forwarding from 127.0.0.1:{local} -> {remote}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with server:
            await stop.wait()

    asyncio.run(serve())
    return 0
