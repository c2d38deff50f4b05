"""experiment.promql: the dashboard's expressions use the executor's labels and honest windows."""

from __future__ import annotations

import pytest

from experiment.promql import GATEWAY_REQUESTS, latency_quantile, panels, rate_window, requests_in_window


def queries(window: str) -> dict[str, str]:
    """Series key -> expression, for every series of every dashboard panel."""
    return {key: expr for panel in panels(window) for key, _, expr in panel.queries}


def test_queries_use_the_executor_labels_and_windows_of_four_scrapes():
    assert rate_window(2) == "8s" and rate_window(15) == "60s"
    for key, expr in queries(rate_window(2)).items():
        assert "status" not in expr and "/Predict" not in expr, key
        assert "[8s]" in expr and "[5s]" not in expr and "[20s]" not in expr, key
        assert expr.count("sum by (predictor_name") == expr.count("rate("), key  # every rate summed per arm
    assert 'code=~"4.."' in queries("8s")["errors_4xx"]
    assert 'service="/predict"' in queries("8s")["latency_p50"]


def test_the_figures_latency_reads_the_gateways_fine_histogram():
    expr = latency_quantile(0.99, "8s", "sdep", metric=GATEWAY_REQUESTS, service="predictions")
    assert expr == (
        "histogram_quantile(0.99, sum by (predictor_name, le) "
        '(rate(gateway_request_seconds_bucket{deployment_name="sdep",service="predictions"}[8s])))'
    )
    assert requests_in_window("8s", "sdep") == (
        "sum by (predictor_name) "
        '(increase(gateway_request_seconds_count{deployment_name="sdep",service="predictions"}[8s]))'
    )
    with pytest.raises(ValueError, match="between 0 and 1"):
        latency_quantile(1.0, "8s")
