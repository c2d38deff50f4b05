"""The cluster path from a shell (docs/cluster.md walks through it).

    python -m serving.cluster publish s3://my-bucket/mlflow-seldon
    python -m serving.cluster render --namespace seldon --image ghcr.io/me/mlflow-seldon-server:0.1.0 \
        --secret seldon-rclone-secret
    python -m serving.cluster rclone-secret s3 --namespace seldon --model-uri s3://my-bucket/... \
        | kubectl apply -f -
    python -m serving.cluster grafana-secret | kubectl apply -f -
    python -m serving.cluster deploy build/cluster/wines-classifier.yaml
    python -m serving.cluster endpoints build/cluster/wines-classifier.yaml --ingress 127.0.0.1:8080
    python -m serving.cluster smoke build/cluster/wines-classifier.yaml --ingress 127.0.0.1:8080 \
        --prometheus http://127.0.0.1:9090
    python -m serving.cluster check-image

Secrets are printed, never written to disk. Everything else goes to ``build/cluster/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from serving.cluster import REPO, ClusterError, analytics, helm, rclone, render
from serving.cluster.render import dump

DEFAULT_OUT = REPO / "build" / "cluster"
PUBLISHED = "published.json"
SDEP_FILE = "wines-classifier.yaml"


def _write(out: Path, name: str, text: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    path.write_text(text)
    return path


def cmd_publish(args) -> int:
    from serving.cluster.publish import publish
    from training.tracking import use_local_store

    use_local_store()
    options = {"endpoint_url": args.endpoint_url} if args.endpoint_url else {}
    results = publish(args.bucket, storage_options=options, tool=args.tool, overwrite=args.overwrite)
    mapping = {source: p.uri for source, p in results.items()}
    path = _write(Path(args.out), PUBLISHED, json.dumps(mapping, indent=2) + "\n")
    for source, p in results.items():
        print(
            f"{source} -> {p.name} version {p.version} -> {p.uri} ({len(p.files)} files, "
            f"{'copied and verified' if p.copied else 'already there, identical'})"
        )
    print(f"wrote {path}")
    return 0


def cmd_render(args) -> int:
    out = Path(args.out)
    if args.model_uri:
        model_uris = dict(item.split("=", 1) for item in args.model_uri)
    else:
        published = Path(args.published or out / PUBLISHED)
        if not published.is_file():
            raise ClusterError(
                f"{published} not found: run `python -m serving.cluster publish <bucket>` first, "
                f"or pass --model-uri"
            )
        model_uris = json.loads(published.read_text())
    document = render.render_deployment(model_uris, args.namespace, env_secret=args.secret)
    written = [
        _write(out, SDEP_FILE, dump(document)),
        _write(out, "seldon-core-values.yaml", dump(helm.seldon_core_values(args.image))),
        _write(out, "istio-gateway.yaml", dump(helm.istio_gateway())),
        _write(out, "podmonitor.yaml", dump(analytics.podmonitor())),
        _write(
            out,
            "grafana-dashboard.yaml",
            dump(analytics.dashboard_configmap(namespace=args.monitoring_namespace)),
        ),
    ]
    for path in written:
        print(f"wrote {path}")
    local = render.load_plain()
    print(
        "differs from serving/model-a-b.yaml in: "
        + ", ".join(render.differences(local, render.plain(document)))
    )
    return 0


def cmd_rclone_secret(args) -> int:
    values = dict(os.environ)
    if (
        args.variant == "gcs"
        and not values.get("GCS_SERVICE_ACCOUNT_JSON")
        and values.get("GOOGLE_APPLICATION_CREDENTIALS")
    ):
        values["GCS_SERVICE_ACCOUNT_JSON"] = Path(values["GOOGLE_APPLICATION_CREDENTIALS"]).read_text()
    secret = rclone.rclone_secret(
        args.variant, values, name=args.name, namespace=args.namespace, model_uri=args.model_uri
    )
    sys.stdout.write(dump(secret))
    return 0


def cmd_grafana_secret(args) -> int:
    sys.stdout.write(dump(analytics.grafana_admin_secret(namespace=args.namespace)))
    return 0


def cmd_deploy(args) -> int:
    from serving.cluster.deploy import custom_objects_api, deploy

    status = deploy(args.manifest, api=custom_objects_api(args.context), timeout=args.timeout)
    print(f"Available: {json.dumps(status.get('deploymentStatus', {}))}")
    return 0


def cmd_delete(args) -> int:
    from serving.cluster.deploy import custom_objects_api, delete

    found = delete(args.name, args.namespace, api=custom_objects_api(args.context))
    print(
        f"deleted {args.namespace}/{args.name}"
        if found
        else f"no SeldonDeployment {args.namespace}/{args.name}"
    )
    return 0


def cmd_endpoints(args) -> int:
    from serving.cluster.endpoints import cluster_endpoints, feedback_args, port_forwards

    endpoints = cluster_endpoints(args.manifest, args.ingress, via=args.via, first_local_port=args.first_port)
    print(f"predictions: {endpoints.predictions_url}")
    for predictor in endpoints.predictors:
        print(f"feedback {predictor}: {endpoints.feedback_url(predictor)}")
    if args.via == "port-forward":
        for forward in port_forwards(args.manifest, first_local_port=args.first_port).values():
            print(f"  {forward.command} &")
    print("python feedback.py " + " ".join(feedback_args(endpoints)))
    return 0


def cmd_smoke(args) -> int:
    from serving.cluster.smoke import smoke

    predictors = dict(item.split("=", 1) for item in args.predictor) if args.predictor else None
    result = smoke(
        args.manifest, args.ingress, args.prometheus, predictors, kubectl=args.kubectl, timeout=args.timeout
    )
    print(f"OK: {result.summary()}")
    return 0


def cmd_check_image(args) -> int:
    from serving.cluster import server_image

    problems = server_image.check_dockerfile() + server_image.pin_drift(args.model_requirements)
    for problem in problems:
        print(f"problem: {problem}")
    verdict = "OK" if not problems else f"{len(problems)} problem(s)"
    print(f"{server_image.DOCKERFILE.relative_to(REPO)}: {verdict}")
    return 1 if problems else 0


def cmd_lock_image(args) -> int:
    from serving.cluster import server_image

    print(f"wrote {server_image.lock()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serving.cluster", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("publish", help="copy each arm's registered model folder to a bucket")
    p.add_argument("bucket", help="s3://bucket/prefix, gs://bucket/prefix or file:///folder")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint (MinIO), e.g. http://127.0.0.1:9000")
    p.add_argument("--tool", choices=["fsspec", "gsutil"], default="fsspec")
    p.add_argument("--overwrite", action="store_true", help="replace a published version whose files differ")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.set_defaults(run=cmd_publish)

    p = sub.add_parser("render", help="write the cluster manifests into build/cluster")
    p.add_argument("--namespace", required=True, help="namespace of the SeldonDeployment")
    p.add_argument("--image", required=True, help="the model server image, registry/name:tag")
    p.add_argument(
        "--secret", help="the rclone storage Secret (envSecretRefName); every s3:// bucket needs one"
    )
    p.add_argument("--published", help=f"mapping from `publish` (default <out>/{PUBLISHED})")
    p.add_argument(
        "--model-uri", action="append", metavar="PREDICTOR=URI", help="bucket URI per predictor instead"
    )
    p.add_argument("--monitoring-namespace", default=analytics.MONITORING_NAMESPACE)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.set_defaults(run=cmd_render)

    p = sub.add_parser("rclone-secret", help="print the storage Secret, filled from the environment")
    p.add_argument("variant", choices=sorted(rclone.TEMPLATES))
    p.add_argument("--namespace", required=True)
    p.add_argument("--name", default=rclone.DEFAULT_SECRET_NAME)
    p.add_argument("--model-uri", help="check the Secret opens this bucket URI (the rclone remote name)")
    p.set_defaults(run=cmd_rclone_secret)

    p = sub.add_parser("grafana-secret", help="print Grafana's admin Secret with a generated password")
    p.add_argument("--namespace", default=analytics.MONITORING_NAMESPACE)
    p.set_defaults(run=cmd_grafana_secret)

    p = sub.add_parser("deploy", help="create or replace the SeldonDeployment and wait until Available")
    p.add_argument("manifest")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--context", help="kubeconfig context (default: the current one)")
    p.set_defaults(run=cmd_deploy)

    p = sub.add_parser("delete", help="delete the SeldonDeployment")
    p.add_argument("name")
    p.add_argument("--namespace", required=True)
    p.add_argument("--context")
    p.set_defaults(run=cmd_delete)

    p = sub.add_parser("endpoints", help="print the URLs and the feedback.py command for a cluster")
    p.add_argument("manifest")
    p.add_argument("--ingress", required=True, help="Istio ingress host[:port]")
    p.add_argument("--via", choices=["port-forward", "cluster-dns"], default="port-forward")
    p.add_argument("--first-port", type=int, default=9001)
    p.set_defaults(run=cmd_endpoints)

    p = sub.add_parser("smoke", help="check an install: predict, feedback to one arm, its Prometheus counter")
    p.add_argument("manifest", help="the rendered SeldonDeployment (build/cluster/wines-classifier.yaml)")
    p.add_argument("--ingress", required=True, help="Istio ingress host[:port]")
    p.add_argument("--prometheus", required=True, help="Prometheus URL, e.g. http://127.0.0.1:9090")
    p.add_argument(
        "--predictor",
        action="append",
        metavar="PREDICTOR=HOST:PORT",
        help="an arm's own address instead of a kubectl port-forward of its Service",
    )
    p.add_argument("--kubectl", default="kubectl", help="the kubectl binary for the port-forwards")
    p.add_argument("--timeout", type=float, default=90, help="seconds to wait for Prometheus to count it")
    p.set_defaults(run=cmd_smoke)

    p = sub.add_parser("check-image", help="static checks of the model server image (no Docker needed)")
    p.add_argument("--model-requirements", help="a trained model's requirements.txt to compare with")
    p.set_defaults(run=cmd_check_image)

    p = sub.add_parser("lock-image", help="regenerate serving/cluster/image/constraints.txt")
    p.set_defaults(run=cmd_lock_image)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
