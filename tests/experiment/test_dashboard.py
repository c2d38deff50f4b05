"""serving/grafana/ab-test.json: generated from experiment.promql's panels, and every panel's expression
returns data from the real Prometheus after a real replay on the local stack."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from experiment.log import REPO
from experiment.prometheus_data import range_frame
from experiment.promql import GRAFANA_DEPLOYMENT, GRAFANA_WINDOW, REWARD, rate_window
from serving import prometheus

DASHBOARD = REPO / "serving" / "grafana" / "ab-test.json"


def dashboard_expressions(document: dict) -> list[tuple[str, str, str]]:
    """(panel title, refId, expression) for every target of every panel of a dashboard JSON."""
    found = []
    for panel in document.get("panels", []):
        for target in panel.get("targets", []):
            if "expr" in target:
                found.append((panel.get("title", ""), target.get("refId", ""), target["expr"]))
    return found


def local_expression(expr: str, window: str, deployment: str) -> str:
    """A dashboard expression with Grafana's variables replaced, to run it against a Prometheus."""
    return (
        expr.replace(GRAFANA_WINDOW, window)
        .replace(GRAFANA_DEPLOYMENT, deployment)
        .replace("${deployment}", deployment)
    )


def instant_frame(url: str, expr: str, at: float) -> pd.Series:
    """An instant query as a Series indexed by predictor."""
    result = prometheus.query(url, expr, at)
    return pd.Series(
        {r["metric"].get("predictor_name", ""): float(r["value"][1]) for r in result}, dtype="float64"
    ).sort_index()


def test_committed_dashboard_is_the_generated_one():
    """One source of truth: `python -m experiment dashboard > serving/grafana/ab-test.json` writes it."""
    generated = subprocess.run(
        [sys.executable, "-m", "experiment", "dashboard"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    ).stdout
    assert DASHBOARD.read_text() == generated


def test_dashboard_has_a_datasource_variable_and_every_panel_the_issue_asks_for():
    document = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in document["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    assert "deployment_name" in variables["deployment"]["definition"]
    expressions = dashboard_expressions(document)
    for panel in document["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
    for title, ref, expr in expressions:
        assert "[$__rate_interval]" in expr and "status" not in expr, (title, ref)
        assert 'deployment_name="$deployment"' in expr, (title, ref)
    text = " ".join(e for _, _, e in expressions)
    for needed in (
        'service="predictions"',
        'code=~"2.."',
        'code=~"4.."',
        'code=~"5.."',
        "histogram_quantile(0.5,",
        "histogram_quantile(0.9,",
        "histogram_quantile(0.99,",
        REWARD,
    ):
        assert needed in text, needed
    assert len({p["id"] for p in document["panels"]}) == len(document["panels"])


@pytest.mark.stack
def test_every_panel_expression_returns_data_after_a_replay(stack, replayed):
    window = rate_window()  # $__rate_interval for a 2 s scrape
    series = {}
    for title, ref, expr in dashboard_expressions(json.loads(DASHBOARD.read_text())):
        query = local_expression(expr, window, stack.deployment)
        assert "$" not in query, query
        frame = range_frame(stack.prometheus_url, query, replayed["start"], replayed["end"])
        assert not frame.empty, f"{title} ({ref}) returned no data: {query}"
        assert sorted(frame.columns) == replayed["arms"], (title, ref, list(frame.columns))
        assert frame.notna().any().all(), f"{title} ({ref}) has an arm with only NaN: {query}"
        series[(title, ref)] = frame

    # and the data say what happened: traffic on both arms during the replay ...
    assert (series[("Requests per second", "A")].max() > 0).all()
    p50, p90, p99 = (series[("Model latency p50 / p90 / p99", r)] for r in "ABC")
    assert p50.notna().any().all() and ((p50 <= p90) & (p90 <= p99) | p99.isna()).all().all()
    reward = series[("Mean reward", "A")]
    assert ((reward.dropna() > 0) & (reward.dropna() <= 1)).all().all()

    # ... and, in the last window (this test's traffic only), model-a's 400s and nothing else
    def last(title, ref):
        expr = dict(((t, r), e) for t, r, e in dashboard_expressions(json.loads(DASHBOARD.read_text())))[
            (title, ref)
        ]
        return instant_frame(
            stack.prometheus_url, local_expression(expr, window, stack.deployment), replayed["end"]
        )

    others = [arm for arm in replayed["arms"] if arm != "model-a"]
    errors_4xx, errors_5xx, success = (
        last("4xx / 5xx per second", "A"),
        last("4xx / 5xx per second", "B"),
        last("Success ratio", "A"),
    )
    assert errors_4xx["model-a"] > 0 and (errors_4xx[others] == 0).all(), errors_4xx
    assert (errors_5xx == 0).all(), errors_5xx
    assert success["model-a"] < 1 and (success[others] == 1).all(), success
