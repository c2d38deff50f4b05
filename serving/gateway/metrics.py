"""The gateway's Prometheus metrics: the Seldon executor's histograms (same names, labels and
buckets) and the gateway's own (sub-millisecond latencies, skipped mirrors)."""

from prometheus_client import Counter, Histogram

# seldon-core executor/api/metric/constants.go
# the executor server histogram's labels; the gateway's fine histogram has the same ones
SERVER_LABELS = ["deployment_name", "predictor_name", "predictor_version", "service", "method", "code"]
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
SERVER_REQUESTS = Histogram(
    "seldon_api_executor_server_requests_seconds",
    "A histogram of latencies for executor server",
    SERVER_LABELS,
    buckets=BUCKETS,
)
CLIENT_REQUESTS = Histogram(
    "seldon_api_executor_client_requests_seconds",
    "A histogram of latencies for executor client",
    [
        "deployment_name",
        "predictor_name",
        "predictor_version",
        "service",
        "model_name",
        "model_image",
        "model_version",
        "method",
        "code",
    ],
    buckets=BUCKETS,
)
# The executor's first bucket is 5 ms, so every sub-millisecond answer interpolates to ~2.5 ms.
# This one, with the server histogram's labels, resolves the gateway's real latencies (the
# notebook's latency figure); Seldon's histograms above stay for the dashboard.
FINE_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
)  # fmt: skip
GATEWAY_REQUESTS = Histogram(
    "gateway_request_seconds",
    "Latency of the requests the gateway served (fine buckets)",
    SERVER_LABELS,
    buckets=FINE_BUCKETS,
)

# Mirrors the gateway did not send because too many were still in flight (Istio drops a mirror it
# cannot send without telling anyone; here it is counted)
SHADOW_SKIPPED = Counter(
    "gateway_shadow_requests_skipped",
    "Requests not mirrored to the shadow predictor because too many mirrors were in flight",
    ["deployment_name", "predictor_name"],
)
