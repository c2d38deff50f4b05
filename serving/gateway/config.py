"""The gateway's config: the JSON file serving.local writes and ``python -m serving.gateway`` reads."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class GatewayConfig:
    manifest: str
    upstreams: dict[str, str]  # predictor name -> model server base URL
    predictor_ports: dict[str, int]  # predictor name -> its "Service" port
    ingress_port: int = 8003
    host: str = "127.0.0.1"
    model_image: str = "mlflow-seldon/mlflowserver:local"
    max_body_bytes: int = 1 << 20
    upstream_timeout: float = 5.0  # seconds; Seldon's default rest-timeout is 5000 ms
    reload_interval: float = 0.5
    seed: int | None = None
    shadow_max_in_flight: int = 256  # mirrors waiting for the shadow beyond this are skipped and counted

    @classmethod
    def read(cls, path: str | os.PathLike) -> GatewayConfig:
        return cls(**json.loads(Path(path).read_text()))

    def write(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))
