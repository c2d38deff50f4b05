"""A real Prometheus server for the local stack, and a small client for its HTTP API.

The stack writes a scrape config for the gateway (the executor's metrics) and every model
server's metrics port, and runs the ``prometheus`` binary from the system's package manager on
127.0.0.1 with its data in ``.stack/prometheus`` (git-ignored).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import requests
import yaml

SCRAPE_INTERVAL_SECONDS = 2


class PrometheusError(RuntimeError):
    pass


def binary() -> str:
    found = shutil.which("prometheus")
    if not found:
        raise PrometheusError(
            "the prometheus binary is not installed: run `make setup` (it installs it with the "
            "system's package manager) or `apt-get install prometheus` / `brew install prometheus`"
        )
    return found


def scrape_config(
    gateway: str, model_metrics: dict[str, str], interval: float = SCRAPE_INTERVAL_SECONDS
) -> dict:
    """Prometheus config: the gateway's /metrics and each predictor's model server /metrics."""
    return {
        "global": {"scrape_interval": f"{interval:g}s", "evaluation_interval": f"{interval:g}s"},
        "scrape_configs": [
            {
                "job_name": "seldon-executor",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [gateway]}],
            },
            {
                "job_name": "seldon-model",
                "metrics_path": "/metrics",  # the Python wrapper's metrics port
                "static_configs": [{"targets": [target]} for target in model_metrics.values()],
            },
        ],
    }


def write_config(
    path: Path, gateway: str, model_metrics: dict[str, str], interval: float = SCRAPE_INTERVAL_SECONDS
) -> Path:
    path.write_text(yaml.safe_dump(scrape_config(gateway, model_metrics, interval), sort_keys=False))
    return path


def command(config: Path, data_dir: Path, host: str, port: int) -> list[str]:
    return [
        binary(),
        f"--config.file={config}",
        f"--storage.tsdb.path={data_dir}",
        f"--web.listen-address={host}:{port}",
        "--storage.tsdb.retention.time=2d",
        "--log.level=warn",
    ]


def query(base_url: str, expr: str, at: float | None = None, timeout: float = 10) -> list[dict]:
    """Instant query; returns the ``result`` list (vector samples) or raises ``PrometheusError``."""
    params = {"query": expr}
    if at is not None:
        params["time"] = f"{at:.3f}"
    return _get(base_url, "/api/v1/query", params, timeout)["result"]


def query_range(
    base_url: str, expr: str, start: float, end: float, step: float, timeout: float = 30
) -> list[dict]:
    params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
    return _get(base_url, "/api/v1/query_range", params, timeout)["result"]


def _get(base_url: str, path: str, params: dict, timeout: float) -> dict:
    try:
        response = requests.get(base_url.rstrip("/") + path, params=params, timeout=timeout)
    except requests.RequestException as e:
        raise PrometheusError(f"Prometheus at {base_url} is not reachable: {e}") from e
    try:
        body = response.json()
    except ValueError:
        raise PrometheusError(f"Prometheus answered {response.status_code}: {response.text[:200]}") from None
    if body.get("status") != "success":
        raise PrometheusError(f"query {params.get('query')!r} failed: {body.get('error', body)}")
    return body["data"]
