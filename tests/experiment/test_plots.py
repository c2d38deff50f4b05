"""experiment.plots: figures that tell the truth - checked on frames made here, and from the real stack."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import experiment
from experiment.plots import MIN_TAIL, plot_latency, plot_requests
from experiment.prometheus_data import figure_frames

BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025)


def synthetic_frames(per_window: int = 600) -> dict[str, pd.DataFrame]:
    """A 13 s replay at 150/s split ~50/50, like figure_frames makes; ``per_window`` requests per arm."""
    times = pd.to_datetime(1_700_000_000 + np.arange(0, 14, 2.0), unit="s", utc=True)
    steps = pd.to_datetime(1_700_000_000 + np.arange(0, 22, 1.0), unit="s", utc=True)
    arms = ("model-a", "model-b")
    latency = {
        q: {arm: np.full(len(steps), q * 0.002 + i * 0.0001) for i, arm in enumerate(arms)}
        for q in (0.5, 0.9, 0.99)
    }
    shares = pd.DataFrame(
        {
            arm: np.clip(
                np.array([0, 0.01, 0.1, 0.3, 0.55, 0.8, 0.9, 0.96, 0.99, 0.997, 0.999, 1.0]) - i * 0.02, 0, 1
            )
            for i, arm in enumerate(arms)
        },
        index=pd.Index(BUCKETS, name="le"),
    )
    shares.attrs["n"] = {"model-a": 985, "model-b": 975}
    requests = pd.DataFrame(
        {"model-a": [30, 77, 74, 76, 73, 78, 20.0], "model-b": [31, 73, 76, 74, 77, 72, 21.0]}, index=times
    )
    requests.attrs["partial"] = [True, False, False, False, False, False, True]
    return {
        "requests": requests,
        **{f"latency_p{q * 100:g}": pd.DataFrame(v, index=steps) for q, v in latency.items()},
        "latency_n": pd.DataFrame({arm: np.full(len(steps), float(per_window)) for arm in arms}, index=steps),
        "latency_distribution": shares,
        "reward": pd.DataFrame(
            {"model-a": np.full(len(steps), 0.81), "model-b": np.full(len(steps), 0.78)}, index=steps
        ),
    }


def test_requests_start_at_zero_and_show_each_arm_and_the_total_pace(tmp_path):
    fig = plot_requests(synthetic_frames())
    ax = fig.axes[0]
    assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] > 150  # the total fits, and 0 is on the axis
    lines = {line.get_label(): line.get_ydata() for line in ax.get_lines() if line.get_label() != "_partial"}
    assert list(lines) == ["model-a (mean 76/s)", "model-b (mean 74/s)", "total"]
    assert list(lines["total"][1:-1]) == [150, 150, 150, 150, 150]  # the pace, whole intervals only
    assert np.isnan(lines["total"][[0, -1]]).all()  # the partial edges are drawn apart, hollow
    experiment.save(fig, "requests", tmp_path)


def test_latency_quantiles_need_enough_requests_in_the_window(tmp_path):
    few = plot_latency(synthetic_frames(per_window=600))  # p99 of 600 requests: 6 beyond it
    lines = {line.get_label(): line.get_ydata() for line in few.axes[0].get_lines()}
    assert 600 * 0.01 < MIN_TAIL <= 600 * 0.1
    for arm in ("model-a", "model-b"):
        assert np.isnan(lines[f"{arm} p99"]).all() and np.isfinite(lines[f"{arm} p90"]).all()
        assert lines[f"{arm} p50"][0] == pytest.approx(1.0 + (arm == "model-b") * 0.1)  # ms
    assert "p99 model-a" in few.axes[0].texts[0].get_text()
    many = plot_latency(synthetic_frames(per_window=2000))
    assert all(np.isfinite(line.get_ydata()).all() for line in many.axes[0].get_lines())
    assert not many.axes[0].texts
    # the whole replay's distribution: the measured points at the bucket bounds, per arm, with n
    dist = few.axes[1]
    curves = [line for line in dist.get_lines() if line.get_label().startswith("model-")]
    assert [c.get_label().split("\n")[0] for c in curves] == ["model-a (n=985)", "model-b (n=975)"]
    # each quantile as the bucket that holds it; p99 of under 1,000 requests is not given
    assert curves[0].get_label().split("\n")[1] == "p50 0.75-1 ms · p90 1.5-2 ms · p99: too few"
    assert list(curves[0].get_xdata()) == pytest.approx([b * 1000 for b in BUCKETS])
    assert dist.get_xscale() == "log"
    experiment.save(few, "latency", tmp_path)


def test_figures_refuse_empty_frames():
    with pytest.raises(ValueError, match="no data"):
        plot_requests({"requests": pd.DataFrame()})
    with pytest.raises(ValueError, match="figure_frames"):
        plot_latency({})


@pytest.mark.stack
def test_figures_from_prometheus_are_saved_as_png(stack, replayed, tmp_path):
    frames = figure_frames(
        stack.prometheus_url, replayed["start"], replayed["end"], deployment=stack.deployment
    )
    verdict = experiment.verdict(replayed["log"])
    figures = experiment.figures(frames, verdict)
    assert set(figures) == {"requests", "latency", "reward"}
    for name, figure in figures.items():
        lines = figure.axes[0].get_lines()
        assert lines and all(
            np.isfinite(line.get_ydata()).any() for line in lines if line.get_linestyle() == "-"
        ), name
        path = experiment.save(figure, name, tmp_path)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    # a line per arm (and the total) for requests, per arm and quantile for latency, per arm for reward
    arms = replayed["arms"]
    labels = [line.get_label() for line in figures["requests"].axes[0].get_lines()]
    assert [label.split(" ")[0] for label in labels if label != "_partial"] == [
        *arms,
        "total",
    ]
    assert len(figures["latency"].axes[0].get_lines()) == 3 * len(arms)
    assert len(figures["reward"].axes[0].get_lines()) >= len(arms)
    # the whole replay's latency distribution counts every prediction the gateway answered
    shares = frames["latency_distribution"]
    assert sorted(shares.columns) == arms and ((shares >= 0) & (shares <= 1)).all().all()
    assert all(shares[arm].is_monotonic_increasing for arm in arms)
    assert sum(shares.attrs["n"].values()) >= len(replayed["log"])
