"""serving/grafana/ab-test.json: generated from analysis.py's PromQL, and every panel's expression
returns data from the real Prometheus after a real replay on the local stack."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

import analysis
import feedback
from serving import deployment as sdep
from tests.traffic import send_many

DASHBOARD = analysis.REPO / "serving" / "grafana" / "ab-test.json"


def test_committed_dashboard_is_the_generated_one():
    """One source of truth: regenerate with `python -m analysis dashboard > serving/grafana/ab-test.json`."""
    generated = subprocess.run(
        [sys.executable, "-m", "analysis", "dashboard"],
        capture_output=True,
        text=True,
        cwd=analysis.REPO,
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
    expressions = analysis.dashboard_expressions(document)
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
        analysis.REWARD,
    ):
        assert needed in text, needed
    assert len({p["id"] for p in document["panels"]}) == len(document["panels"])


@pytest.fixture(scope="module")
def replayed(stack, tmp_path_factory):
    """A replay through the shared stack, then malformed requests to model-a's own endpoint."""
    url = stack.prometheus_url
    start = time.time()
    result = feedback.replay(
        feedback.Endpoints.local(stack.state_dir),
        limit=300,
        progress=False,
        log_path=tmp_path_factory.mktemp("dashboard") / "replay.csv",
    )
    # Two bursts of malformed requests to model-a, a scrape apart: a counter series is born at its
    # first increment, and rate() cannot see the jump from "no series" to its first value.
    bad_url = stack.predictor_urls["model-a"] + "/api/v1.0/predictions"
    bad = send_many(bad_url, 1, body="{not json")
    analysis.wait_for_scrape(url, time.time())
    bad += send_many(bad_url, 5, body="{not json", concurrency=2)
    assert {r.status for r in bad} == {400}, [(r.status, r.info) for r in bad]
    # fresh good traffic on every arm, so the last rate window holds both kinds
    assert {r.status for r in send_many(f"{stack.ingress_url}/predictions", 40, concurrency=4)} == {200}
    end = analysis.wait_for_scrape(url, time.time())  # the last counts are in Prometheus
    return {
        "start": start,
        "end": end,
        "log": result.log,
        "arms": sorted(sdep.load(stack.state["manifest"]).traffic),
    }


@pytest.mark.stack
def test_every_panel_expression_returns_data_after_a_replay(stack, replayed):
    window = analysis.rate_window()  # $__rate_interval for a 2 s scrape
    series = {}
    for title, ref, expr in analysis.dashboard_expressions(json.loads(DASHBOARD.read_text())):
        query = analysis.local_expression(expr, window, stack.deployment)
        assert "$" not in query, query
        frame = analysis.range_frame(stack.prometheus_url, query, replayed["start"], replayed["end"])
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
        expr = dict(
            ((t, r), e) for t, r, e in analysis.dashboard_expressions(json.loads(DASHBOARD.read_text()))
        )[(title, ref)]
        return analysis.instant_frame(
            stack.prometheus_url, analysis.local_expression(expr, window, stack.deployment), replayed["end"]
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


@pytest.mark.stack
def test_figures_from_prometheus_are_saved_as_png(stack, replayed, tmp_path):
    frames = analysis.dashboard_frames(
        stack.prometheus_url, replayed["start"], replayed["end"], deployment=stack.deployment
    )
    verdict = analysis.verdict(replayed["log"])
    figures = analysis.figures(frames, verdict)
    assert set(figures) == {"requests", "latency", "reward"}
    for name, figure in figures.items():
        lines = figure.axes[0].get_lines()
        assert lines and all(
            np.isfinite(line.get_ydata()).any() for line in lines if line.get_linestyle() == "-"
        ), name
        path = analysis.save(figure, name, tmp_path)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    # one line per arm for requests and reward; one per arm and quantile for latency
    assert len(figures["requests"].axes[0].get_lines()) == len(replayed["arms"])
    assert len(figures["latency"].axes[0].get_lines()) == 3 * len(replayed["arms"])


def test_figures_refuse_empty_frames():
    with pytest.raises(ValueError, match="no data"):
        analysis.plot_requests({"requests": pd.DataFrame()})
