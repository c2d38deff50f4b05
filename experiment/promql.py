"""PromQL for the A/B test: the Grafana "Prediction Analytics" dashboard's expressions, corrected.

The executor's status label is ``code`` (the original filtered on ``status``, so success read
100% and 4xx/5xx stayed empty); every range window is at least 4x the scrape interval
(``[5s]``/``[20s]`` under a 15 s scrape hold fewer than two samples and ``rate()`` returns
nothing); latency quantiles read ``service="/predict"`` (the original p50 panel's ``"/Predict"``
matches nothing); and every expression sums ``by (predictor_name)``, because the model server's
counters come as one series per gunicorn worker (``worker_id``). The same builders write the
Grafana dashboard for clusters (``experiment.dashboard``) and the notebook's figures, so their
numbers cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from serving.prometheus import SCRAPE_INTERVAL_SECONDS

DEFAULT_DEPLOYMENT = "wines-classifier"

# metric names: the executor's (Go) and the model server's (seldon-core Python wrapper)
SERVER_REQUESTS = "seldon_api_executor_server_requests_seconds"
CLIENT_REQUESTS = "seldon_api_executor_client_requests_seconds"
FEEDBACK = "seldon_api_model_feedback_total"
REWARD = "seldon_api_model_feedback_reward_total"
# the local gateway's own histogram, labelled like SERVER_REQUESTS but with sub-millisecond
# buckets: Seldon's first bucket is 5 ms, so its quantiles of ~1 ms requests are interpolations
GATEWAY_REQUESTS = "gateway_request_seconds"
# latency histograms the figures can read: metric -> (its prediction `service` label, what it measures)
LATENCY_SOURCES = {
    GATEWAY_REQUESTS: ("predictions", "Latency through the gateway"),
    CLIENT_REQUESTS: ("/predict", "Executor-to-model latency (Seldon's buckets, 5 ms and up)"),
}
# Grafana's own variables for the cluster dashboard
GRAFANA_WINDOW = "$__rate_interval"
GRAFANA_DEPLOYMENT = "$deployment"
QUANTILES = (0.5, 0.9, 0.99)


def rate_window(scrape_interval: float = SCRAPE_INTERVAL_SECONDS, factor: int = 4) -> str:
    """A range window of ``factor`` x the scrape interval, e.g. ``"8s"`` locally (2 s scrapes).

    ``rate()`` needs two samples inside its window; a window of 4 scrapes still has two when a
    scrape is late or fails, which is also the rule behind Grafana's ``$__rate_interval``. Pass
    the cluster's interval (kube-prometheus-stack: 15-30 s) to get ``"60s"``-``"120s"``.
    """
    if not scrape_interval > 0 or factor < 4:
        raise ValueError(
            "need a positive scrape interval and a factor of at least 4, "
            f"got {scrape_interval!r} x {factor!r}"
        )
    return f"{scrape_interval * factor:g}s"


def selector(deployment: str, **matchers: str) -> str:
    """``{deployment_name="…",k="v"}``; a value starting with ``~`` becomes a regex matcher."""
    parts = [f'deployment_name="{deployment}"']
    for key, value in matchers.items():
        op, value = ("=~", value[1:]) if value.startswith("~") else ("=", value)
        parts.append(f'{key}{op}"{value}"')
    return "{" + ",".join(parts) + "}"


def _per_arm(function: str, metric: str, window: str, deployment: str, **matchers: str) -> str:
    # sum by predictor: one line per arm, whatever the number of workers, replicas or codes
    return f"sum by (predictor_name) ({function}({metric}{selector(deployment, **matchers)}[{window}]))"


def requests_per_second(window: str, deployment: str = DEFAULT_DEPLOYMENT) -> str:
    """Prediction requests per second per arm, as the executor counted them."""
    return _per_arm("rate", f"{SERVER_REQUESTS}_count", window, deployment, service="predictions")


def feedback_per_second(window: str, deployment: str = DEFAULT_DEPLOYMENT) -> str:
    """Rewards per second per arm, as the model servers counted them (all workers summed)."""
    return _per_arm("rate", FEEDBACK, window, deployment)


def success_ratio(window: str, deployment: str = DEFAULT_DEPLOYMENT) -> str:
    """Share of requests (predictions and feedback) answered with a 2xx ``code``.

    An arm whose requests all failed has no 2xx series; ``or … * 0`` makes its ratio 0 instead
    of leaving the arm out of the panel.
    """
    total = _per_arm("rate", f"{SERVER_REQUESTS}_count", window, deployment)
    ok = _per_arm("rate", f"{SERVER_REQUESTS}_count", window, deployment, code="~2..")
    return f"({ok} or {total} * 0) / {total}"


def error_rate(code_class: str, window: str, deployment: str = DEFAULT_DEPLOYMENT) -> str:
    """4xx or 5xx responses per second per arm (``code_class`` "4" or "5").

    Falls back to 0 for arms with traffic but no such errors, so the panel shows a measured zero
    rather than "No data" (which is what the original dashboard's ``status`` filter always gave).
    A limit of every rate() panel: a labelled series is born at its first increment, so the very
    first errors with a new ``code`` on a process are a jump from "no series" that rate() cannot
    see; the next ones show. (The cure is in the exporter: create the series at 0 at start.)
    """
    if code_class not in ("4", "5"):
        raise ValueError(f"code_class must be '4' or '5', got {code_class!r}")
    errors = _per_arm("rate", f"{SERVER_REQUESTS}_count", window, deployment, code=f"~{code_class}..")
    total = _per_arm("rate", f"{SERVER_REQUESTS}_count", window, deployment)
    return f"{errors} or {total} * 0"


def latency_quantile(
    quantile: float,
    window: str,
    deployment: str = DEFAULT_DEPLOYMENT,
    metric: str = CLIENT_REQUESTS,
    service: str = "/predict",
) -> str:
    """A prediction latency quantile per arm, in seconds, interpolated inside the histogram's buckets.

    By default Seldon's executor -> model call (the dashboard's); ``metric=GATEWAY_REQUESTS,
    service="predictions"`` reads the local gateway's fine histogram (request in, answer out).
    """
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be between 0 and 1, got {quantile!r}")
    buckets = f"{metric}_bucket{selector(deployment, service=service)}"
    return f"histogram_quantile({quantile:g}, sum by (predictor_name, le) (rate({buckets}[{window}])))"


def requests_in_window(
    window: str,
    deployment: str = DEFAULT_DEPLOYMENT,
    metric: str = GATEWAY_REQUESTS,
    service: str = "predictions",
) -> str:
    """How many requests per arm a latency quantile over ``window`` rests on (extrapolated like rate())."""
    return _per_arm("increase", f"{metric}_count", window, deployment, service=service)


def mean_reward(window: str, deployment: str = DEFAULT_DEPLOYMENT) -> str:
    """Mean reward per arm over the window: rewards summed / feedback counted, all workers summed.

    It groups by the model server that *counted* the feedback: right only when feedback goes to
    the serving arm's own endpoint (see ``experiment.attribution``).
    """
    return (
        f"{_per_arm('rate', REWARD, window, deployment)} / {_per_arm('rate', FEEDBACK, window, deployment)}"
    )


@dataclass(frozen=True)
class Panel:
    key: str
    title: str
    unit: str  # Grafana unit id
    description: str
    queries: tuple[tuple[str, str, str], ...]  # (series key, legend suffix, expression)


def panels(window: str, deployment: str = DEFAULT_DEPLOYMENT) -> list[Panel]:
    """The dashboard, as data: every panel with its expressions (the one source of truth)."""
    return [
        Panel(
            "requests",
            "Requests per second",
            "reqps",
            "Prediction requests per second per predictor (executor server histogram count).",
            (("requests", "", requests_per_second(window, deployment)),),
        ),
        Panel(
            "success",
            "Success ratio",
            "percentunit",
            "Share of prediction and feedback requests answered 2xx, by the executor's `code` label "
            "(the original dashboard filtered on `status`, which does not exist).",
            (("success", "", success_ratio(window, deployment)),),
        ),
        Panel(
            "errors",
            "4xx / 5xx per second",
            "reqps",
            "Client and server errors per second per predictor; 0 when there were none. The first errors "
            "with a new code on a pod create their series and are not visible to rate().",
            (
                ("errors_4xx", " 4xx", error_rate("4", window, deployment)),
                ("errors_5xx", " 5xx", error_rate("5", window, deployment)),
            ),
        ),
        Panel(
            "latency",
            "Model latency p50 / p90 / p99",
            "s",
            'Executor-to-model latency of predictions (service="/predict"), from the histogram buckets.',
            tuple(
                (f"latency_p{q * 100:g}", f" p{q * 100:g}", latency_quantile(q, window, deployment))
                for q in QUANTILES
            ),
        ),
        Panel(
            "reward",
            "Mean reward",
            "none",
            "Rewards summed / feedback counted per predictor, all gunicorn workers summed. Only "
            "attributable when feedback goes to each predictor's own Service (feedback.py's default).",
            (("reward", "", mean_reward(window, deployment)),),
        ),
        Panel(
            "feedback",
            "Feedback per second",
            "reqps",
            "Rewards per second counted by each predictor's model server.",
            (("feedback", "", feedback_per_second(window, deployment)),),
        ),
    ]
