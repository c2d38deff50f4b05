"""The command line: ``python -m serving.local [--state-dir DIR] {up,status,reload,down}``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from serving import deployment as sdep
from serving import prometheus
from serving.local import stack as local
from serving.local.supervisor import Supervisor


def print_status(state: dict) -> None:
    if not state.get("running"):
        orphans = state.get("orphans") or []
        if not orphans:
            print("no local stack is running")
            return
        print(f"the stack's supervisor is gone, but {len(orphans)} of its processes still run:")
        for o in orphans:
            listening = f"  listening on {', '.join(o['listening'])}" if o["listening"] else ""
            print(f"  {o['role']:<11} pid {o['pid']:<8} group {o['group']:<8}{listening}")
        print(f"stop them with `{local.DOWN}` (or `make down`)")
        return
    urls = state["urls"]
    print(f"{state['deployment']} from {state['manifest']}  ({'ready' if state['ready'] else 'starting'})")
    print(f"  copied from {state.get('source')}; tracking store {state.get('tracking_uri')}")
    for name, version in state.get("models", {}).items():
        print(f"  {name:<11} serves {version}")
    print(f"  ingress     {urls['ingress']}/predictions")
    for name, url in urls["predictors"].items():
        print(f"  {name:<11} {url}/api/v1.0/predictions   (the {state['deployment']}-{name} Service)")
    print(f"  prometheus  {urls['prometheus']}")
    for name, proc in state["processes"].items():
        flag = "ready" if proc["ready"] else "not ready"
        print(f"  process {name:<11} pid {proc['pid']:<8} {flag:<9} restarts {proc['restarts']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serving.local", description="Serve a SeldonDeployment locally, on 127.0.0.1 only."
    )
    parser.add_argument(
        "--state-dir",
        default=str(local.DEFAULT_STATE_DIR),
        help="where the manifest's working copy, pids, logs and Prometheus data live",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="check the manifest, start the stack, wait until ready")
    up.add_argument(
        "manifest", help="a SeldonDeployment YAML, e.g. serving/model-a-b.yaml (copied, never edited)"
    )
    up.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"ingress port (default {local.DEFAULT_PORT}, or the running stack's; 0: any free port)",
    )
    up.add_argument("--timeout", type=float, default=300)
    up.add_argument(
        "--replace", action="store_true", help="stop a running stack that differs, then start this one"
    )
    up.add_argument(
        "--scrape-interval",
        type=float,
        default=None,
        help="seconds between Prometheus's scrapes (default 2; 1 suits replays of a few seconds)",
    )
    sub.add_parser("status", help="what is running, where, serving which model versions")
    sub.add_parser("reload", help="apply the working copy's current traffic split now")
    sub.add_parser("down", help="stop everything the stack started (orphans included)")
    sub.add_parser("_supervise", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.command == "_supervise":
        Supervisor(Path(args.state_dir)).run()
        return 0
    stack = local.LocalStack(args.state_dir)
    try:
        if args.command == "up":
            stack = local.LocalStack.up(
                args.manifest,
                port=args.port,
                state_dir=args.state_dir,
                timeout=args.timeout,
                replace=args.replace,
                scrape_interval=args.scrape_interval,
            )
            print_status(stack.status())
        elif args.command == "status":
            print_status(stack.status())
        elif args.command == "reload":
            print(json.dumps(stack.reload()))
        elif args.command == "down":
            stopped = stack.down()
            print(f"stopped {len(stopped)} processes" if stopped else "no local stack was running")
    except (local.StackError, sdep.DeploymentError, prometheus.PrometheusError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
