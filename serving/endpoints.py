"""Where a client sends predictions and feedback: the ONE endpoints type, local stack or cluster.

Predictions go through the ingress, so the traffic split picks the arm:
``<scheme>://<gateway>/seldon/<namespace>/<deployment>/api/v1.0/predictions`` (``SeldonClient``'s
``gateway="istio"`` path). Feedback goes to the arm that answered, through that predictor's own
endpoint (the ``<sdep>-<predictor>`` Service on a cluster, its own port on the local stack), which
speaks the executor's API: ``/api/v1.0/feedback`` (``gateway="seldon"``). Feedback posted to the
ingress instead is split at random like predictions (``ingress_feedback_url``).

``Endpoints.local(state_dir)`` reads the running local stack; ``serving.cluster.endpoints`` builds
one for a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

API = "/api/v1.0"


@dataclass
class Endpoints:
    """``gateway``: ``host:port`` of the ingress. ``predictors``: predictor name -> ``host:port`` of
    its own endpoint (an address may carry its own ``http(s)://``, e.g. an http port-forward beside an
    https ingress). ``nodes``: graph node name (what ``meta.requestPath`` names) -> predictor name.
    ``scheme``: the ingress's, and the predictors' when their address has none."""

    gateway: str
    namespace: str
    deployment: str
    predictors: dict[str, str]
    nodes: dict[str, str]
    scheme: str = "http"

    @property
    def ingress_url(self) -> str:
        """``scheme://host:port`` of the ingress."""
        return f"{self.scheme}://{self.gateway}"

    @property
    def ingress_prefix(self) -> str:
        return f"{self.ingress_url}/seldon/{self.namespace}/{self.deployment}{API}"

    @property
    def predictions_url(self) -> str:
        """Predictions through the ingress: the traffic split picks the arm."""
        return f"{self.ingress_prefix}/predictions"

    @property
    def ingress_feedback_url(self) -> str:
        """Feedback through the ingress: split at random like predictions - the flaw feedback.py measures."""
        return f"{self.ingress_prefix}/feedback"

    def predictor_url(self, predictor: str) -> str:
        """Base URL (``scheme://host:port``) of one predictor's own endpoint."""
        try:
            address = self.predictors[predictor]
        except KeyError:
            raise KeyError(f"no predictor {predictor!r}; have {sorted(self.predictors)}") from None
        return address if "://" in address else f"{self.scheme}://{address}"

    def predictor_predictions_url(self, predictor: str) -> str:
        """Predictions from one predictor only, past the traffic split."""
        return f"{self.predictor_url(predictor)}{API}/predictions"

    def feedback_url(self, predictor: str) -> str:
        """Feedback to one predictor's own endpoint: counted by that arm only."""
        return f"{self.predictor_url(predictor)}{API}/feedback"

    @classmethod
    def local(cls, state_dir: str | Path | None = None) -> Endpoints:
        """The endpoints of the running local stack; ``serving.local.StackNotRunning`` when none is."""
        # imported here: serving.local may use this module, and a cluster client needs neither
        from serving import deployment as sdep
        from serving.local import DEFAULT_STATE_DIR, LocalStack, StackNotRunning

        stack = LocalStack(state_dir or DEFAULT_STATE_DIR)
        stack.require_running()
        if not stack.state.get("ready"):
            raise StackNotRunning(
                f"the local stack in {stack.state_dir} is starting, not ready yet: "
                "`python -m serving.local status` shows which process it waits for"
            )
        manifest = sdep.load(stack.manifest_path)
        return cls(
            gateway=stack.gateway_endpoint,
            namespace=stack.namespace,
            deployment=stack.deployment,
            predictors={name: url.split("://", 1)[1] for name, url in stack.predictor_urls.items()},
            nodes={s.node: p.name for p in manifest.predictors for s in (p, *p.children)},
        )
