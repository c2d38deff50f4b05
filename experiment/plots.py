"""The notebook's figures, from ``prometheus_data.figure_frames``: pace and split, latency, reward.

Drawn to be read at a glance without misleading: request rates from 0, measured between
scrapes (a rate window would turn a short steady replay into a ramp); latency from the
gateway's sub-millisecond buckets, leaving out quantiles a window holds too few requests for;
the reward with each arm's overall mean and 95% interval from the per-request log.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from experiment.log import REPO
from experiment.promql import QUANTILES

if TYPE_CHECKING:
    from experiment.verdict import Verdict

IMAGES = REPO / "images"
# a quantile q of n requests rests on the n(1-q) slowest: ask for at least this many of them
# (p50 from 20 requests, p90 from 100, p99 from 1,000)
MIN_TAIL = 10
STYLES = dict(zip(QUANTILES, ("-", "--", ":"), strict=True))


def _figure(title: str, ylabel: str, columns: int = 1, width: float = 8):
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure  # not pyplot: no global state, nothing shown twice

    fig = Figure(figsize=(width, 3.6), layout="constrained")
    axes = fig.subplots(1, columns, squeeze=False)[0]
    ax = axes[0]
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.set_xlabel("time (UTC)")
    locator = AutoDateLocator(maxticks=7)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.grid(alpha=0.3)
    return fig, axes if columns > 1 else ax


def _quantile_buckets(shares: pd.Series, n: int) -> str:
    """Where each quantile lies, as the bucket that holds it ("p90 3-5 ms"): what a histogram can say."""
    parts = []
    bounds = [0.0, *shares.index]
    for q in QUANTILES:
        if n * (1 - q) < MIN_TAIL:
            parts.append(f"p{q * 100:g}: too few")
            continue
        reached = np.flatnonzero(shares.to_numpy() >= q)
        if not len(reached):
            parts.append(f"p{q * 100:g} > {bounds[-1] * 1000:g} ms")
            continue
        i = reached[0]
        parts.append(f"p{q * 100:g} {bounds[i] * 1000:g}-{bounds[i + 1] * 1000:g} ms")
    return " · ".join(parts)


def _check_frames(frames: dict[str, pd.DataFrame], *keys: str) -> None:
    missing = [k for k in keys if k not in frames]
    if missing:
        raise ValueError(f"no {missing} in the frames; build them with figure_frames()")
    if all(frames[k].empty for k in keys):
        raise ValueError(f"Prometheus returned no data for {list(keys)}: was there traffic in the window?")


def _colours(*frames: pd.DataFrame) -> dict[str, str]:
    arms = sorted(set().union(*(f.columns for f in frames)))
    return {arm: f"C{i}" for i, arm in enumerate(arms)}


def plot_requests(frames: dict[str, pd.DataFrame]):
    """Requests per second per arm and in total, between consecutive scrapes; the y-axis starts at 0."""
    _check_frames(frames, "requests")
    rates = frames["requests"]
    # intervals only partly inside the replay: hollow, unconnected (their rate is not the pace)
    partial = pd.Series(rates.attrs.get("partial", [False] * len(rates)), index=rates.index, dtype=bool)
    if partial.all():
        partial[:] = False  # a replay shorter than a scrape interval: all there is
    fig, ax = _figure("Requests per second, between scrapes", "requests/s")
    colours = _colours(rates)
    # arms scraped from different targets (a cluster's pods) have intervals of their own: no total then
    total = rates.sum(axis=1) if rates.notna().all().all() else pd.Series(np.nan, rates.index)
    lines = [(arm, values, colours[arm], "o-") for arm, values in rates.items()]
    for name, values, colour, style in [
        *lines,
        *([("total", total, "grey", "o--")] if total.notna().any() else []),
    ]:
        values = values.dropna()
        whole = values.where(~partial[values.index])
        label = name if name == "total" else f"{name} (mean {whole.mean():.0f}/s)"
        ax.plot(values.index, whole, style, color=colour, label=label)
        ax.plot(
            values.index,
            values.where(partial[values.index]),
            "o",
            color=colour,
            fillstyle="none",
            label="_partial",
        )
    top = total if total.notna().any() else rates
    ax.set_ylim(0, max(1.0, float(np.nanmax(top.to_numpy()))) * 1.15)
    ax.legend(fontsize="small", loc="lower center", ncol=len(rates.columns) + 1)
    if partial.any():
        ax.text(
            0.01,
            0.97,
            "hollow: first/last scrape interval, only partly inside the replay",
            transform=ax.transAxes,
            fontsize="x-small",
            color="dimgrey",
            va="top",
        )
    return fig


def plot_latency(frames: dict[str, pd.DataFrame]):
    """Latency per arm through the gateway, in ms: p50/p90/p99 over time, and the whole replay's distribution.

    Left, each quantile over the rate window, drawn only where the window held enough requests
    for it (``MIN_TAIL``); right, the share of requests answered within each bucket bound over the
    whole replay (the measured points, no interpolation), where p50/p90/p99 can be read off.
    """
    keys = [f"latency_p{q * 100:g}" for q in QUANTILES]
    _check_frames(frames, *keys)
    title = frames[keys[0]].attrs.get("title", "Latency")
    fig, (ax, dist) = _figure(f"{title}, per window", "ms", columns=2, width=11)
    colours = _colours(*(frames[k] for k in keys))
    counts = frames.get("latency_n", pd.DataFrame())
    hidden = []
    for q, key in zip(QUANTILES, keys, strict=True):
        for arm, values in frames[key].items():
            n = counts[arm].reindex(values.index) if arm in counts else pd.Series(np.nan, values.index)
            enough = n * (1 - q) >= MIN_TAIL
            if not enough.any():
                hidden.append(f"p{q * 100:g} {arm}")
            ax.plot(
                values.index,
                values.where(enough) * 1000,
                STYLES[q],
                color=colours[arm],
                label=f"{arm} p{q * 100:g}",
            )
    ax.set_ylim(bottom=0)
    ax.legend(ncol=len(QUANTILES), fontsize="x-small", loc="upper center", bbox_to_anchor=(0.5, -0.2))
    if hidden:
        ax.text(
            0.01,
            0.02,
            f"not shown, under {MIN_TAIL} requests beyond the quantile per window: {', '.join(hidden)}",
            transform=ax.transAxes,
            fontsize="x-small",
            color="dimgrey",
        )

    shares = frames.get("latency_distribution", pd.DataFrame())
    dist.set_title("Whole replay: share of requests answered within")
    dist.set_xlabel("latency (ms, log scale)")
    dist.grid(alpha=0.3)
    if not shares.empty:
        n = shares.attrs.get("n", {})
        for arm, values in shares.items():
            count = n.get(arm, 0)
            dist.plot(
                shares.index * 1000,
                values,
                "o-",
                color=colours.get(arm, "grey"),
                label=f"{arm} (n={count:,})\n{_quantile_buckets(values, count)}",
            )
        for q in QUANTILES:
            dist.axhline(q, color="grey", linestyle=STYLES[q], linewidth=0.8)
            dist.annotate(
                f"p{q * 100:g}",
                (0.01, q),
                xycoords=("axes fraction", "data"),
                fontsize="x-small",
                ha="left",
                va="bottom",
                color="dimgrey",
            )
        dist.set_xscale("log")
        dist.set_ylim(0, 1.02)
        dist.legend(fontsize="x-small", loc="lower right")
    return fig


def plot_reward(frames: dict[str, pd.DataFrame], summary: Verdict | None = None):
    """Mean reward per arm over the rate window; with a ``Verdict``, each arm's overall mean and 95% CI."""
    _check_frames(frames, "reward")
    fig, ax = _figure("Mean reward per arm (window mean)", "mean reward")
    colours = {}
    for arm, values in frames["reward"].items():
        (line,) = ax.plot(frames["reward"].index, values, label=arm)
        colours[arm] = line.get_color()
    if summary is not None:
        for arm, s in summary.stats.items():
            colour = colours.get(arm, "grey")
            ax.axhline(s.mean_reward, color=colour, linestyle="--", linewidth=1)
            ax.axhspan(*s.reward_ci, color=colour, alpha=0.15, label=f"{arm} mean, 95% CI")
    ax.legend(fontsize="small")
    return fig


def figures(frames: dict[str, pd.DataFrame], summary: Verdict | None = None) -> dict:
    """The notebook's three figures: name -> Figure."""
    return {
        "requests": plot_requests(frames),
        "latency": plot_latency(frames),
        "reward": plot_reward(frames, summary),
    }


def save(fig, name: str, folder: str | Path = IMAGES) -> Path:
    """Write a figure as ``<folder>/<name>.png`` and return the path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=120)
    return path
