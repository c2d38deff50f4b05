"""Analyse the A/B test: Prometheus queries, figures, and a verdict you can trust.

    python -m analysis report runs/feedback-arm-....csv      # per-arm table, verdict, attribution
    python -m analysis dashboard > serving/grafana/ab-test.json

Three sources, one story:

1. **Prometheus** (what a dashboard shows): the PromQL below is the Grafana "Prediction Analytics"
   dashboard's, corrected. The executor's status label is ``code`` (the original filtered on
   ``status``, so success read 100% and 4xx/5xx stayed empty); every range window is at least 4x
   the scrape interval (``[5s]``/``[20s]`` under a 15 s scrape hold fewer than two samples and
   ``rate()`` returns nothing); latency quantiles read ``service="/predict"`` (the original p50
   panel's ``"/Predict"`` matches nothing); and every expression sums ``by (predictor_name)``,
   because the model server's counters come as one series per gunicorn worker (``worker_id``).
   The same builders write the Grafana dashboard for clusters (``dashboard()``), so the notebook's
   numbers and the dashboard's cannot drift apart.
2. **The per-request log** written by ``feedback.py`` (what actually happened): per-arm mean
   reward and RMSE with 95% confidence intervals, Welch's t-test on the rewards, the verdict in
   one sentence and how many requests a test of that power would need.
3. **Both at once**: ``cross_check`` insists that the log's accepted feedback per arm equals the
   model servers' ``seldon_api_model_feedback_total`` per predictor *exactly*, and
   ``attribution`` measures how many rewards landed on the arm that earned them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from serving import prometheus
from serving.prometheus import SCRAPE_INTERVAL_SECONDS, PrometheusError

REPO = Path(__file__).resolve().parent
IMAGES = REPO / "images"
DEFAULT_DEPLOYMENT = "wines-classifier"

# metric names: the executor's (Go) and the model server's (seldon-core Python wrapper)
SERVER_REQUESTS = "seldon_api_executor_server_requests_seconds"
CLIENT_REQUESTS = "seldon_api_executor_client_requests_seconds"
FEEDBACK = "seldon_api_model_feedback_total"
REWARD = "seldon_api_model_feedback_reward_total"
# Grafana's own variables for the cluster dashboard
GRAFANA_WINDOW = "$__rate_interval"
GRAFANA_DEPLOYMENT = "$deployment"
QUANTILES = (0.5, 0.9, 0.99)


class LogError(ValueError):
    """The per-request log cannot be analysed; the message says what is wrong with it."""


class CrossCheckError(RuntimeError):
    """The log and Prometheus disagree on how much feedback each arm received."""


# =========================================================================== PromQL builders
def rate_window(scrape_interval: float = SCRAPE_INTERVAL_SECONDS, factor: int = 4) -> str:
    """A range window of ``factor`` x the scrape interval, e.g. ``"8s"`` locally (2 s scrapes).

    ``rate()`` needs two samples inside its window; a window of 4 scrapes still has two when a
    scrape is late or fails, which is also the rule behind Grafana's ``$__rate_interval``. Pass
    the cluster's interval (kube-prometheus-stack: 15-30 s) to get ``"60s"``-``"120s"``.
    """
    if not scrape_interval > 0 or factor < 4:
        raise ValueError(
            f"need a positive scrape interval and a factor of at least 4, got {scrape_interval!r} x {factor!r}"
        )
    return f"{scrape_interval * factor:g}s"


def _selector(deployment: str, **matchers: str) -> str:
    """``{deployment_name="…",k="v"}``; a value starting with ``~`` becomes a regex matcher."""
    parts = [f'deployment_name="{deployment}"']
    for key, value in matchers.items():
        op, value = ("=~", value[1:]) if value.startswith("~") else ("=", value)
        parts.append(f'{key}{op}"{value}"')
    return "{" + ",".join(parts) + "}"


def _per_arm_rate(metric: str, window: str, deployment: str, **matchers: str) -> str:
    # sum by predictor: one line per arm, whatever the number of workers, replicas or codes
    return f"sum by (predictor_name) (rate({metric}{_selector(deployment, **matchers)}[{window}]))"


def requests_per_second(window: str, deployment: str = DEFAULT_DEPLOYMENT) -> str:
    """Prediction requests per second per arm, as the executor counted them."""
    return _per_arm_rate(f"{SERVER_REQUESTS}_count", window, deployment, service="predictions")


def feedback_per_second(window: str, deployment: str = DEFAULT_DEPLOYMENT) -> str:
    """Rewards per second per arm, as the model servers counted them (all workers summed)."""
    return _per_arm_rate(FEEDBACK, window, deployment)


def success_ratio(window: str, deployment: str = DEFAULT_DEPLOYMENT) -> str:
    """Share of requests (predictions and feedback) answered with a 2xx ``code``.

    An arm whose requests all failed has no 2xx series; ``or … * 0`` makes its ratio 0 instead
    of leaving the arm out of the panel.
    """
    total = _per_arm_rate(f"{SERVER_REQUESTS}_count", window, deployment)
    ok = _per_arm_rate(f"{SERVER_REQUESTS}_count", window, deployment, code="~2..")
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
    errors = _per_arm_rate(f"{SERVER_REQUESTS}_count", window, deployment, code=f"~{code_class}..")
    total = _per_arm_rate(f"{SERVER_REQUESTS}_count", window, deployment)
    return f"{errors} or {total} * 0"


def latency_quantile(quantile: float, window: str, deployment: str = DEFAULT_DEPLOYMENT) -> str:
    """The model's prediction latency quantile per arm, in seconds (executor -> model call)."""
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be between 0 and 1, got {quantile!r}")
    buckets = f"{CLIENT_REQUESTS}_bucket{_selector(deployment, service='/predict')}"
    return f"histogram_quantile({quantile:g}, sum by (predictor_name, le) (rate({buckets}[{window}])))"


def mean_reward(window: str, deployment: str = DEFAULT_DEPLOYMENT) -> str:
    """Mean reward per arm over the window: rewards summed / feedback counted, all workers summed.

    It groups by the model server that *counted* the feedback: right only when feedback goes to
    the serving arm's own endpoint (see ``attribution``).
    """
    return f"{_per_arm_rate(REWARD, window, deployment)} / {_per_arm_rate(FEEDBACK, window, deployment)}"


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


def queries(window: str, deployment: str = DEFAULT_DEPLOYMENT) -> dict[str, str]:
    """Series key -> expression, for every series of every panel."""
    return {key: expr for panel in panels(window, deployment) for key, _, expr in panel.queries}


def local_expression(expr: str, window: str, deployment: str = DEFAULT_DEPLOYMENT) -> str:
    """A dashboard expression with Grafana's variables replaced, to run it against a Prometheus."""
    return (
        expr.replace(GRAFANA_WINDOW, window)
        .replace(GRAFANA_DEPLOYMENT, deployment)
        .replace("${deployment}", deployment)
    )


# =========================================================================== Prometheus -> pandas
def range_frame(
    url: str,
    expr: str,
    start: float,
    end: float,
    step: float = SCRAPE_INTERVAL_SECONDS,
    label: str = "predictor_name",
) -> pd.DataFrame:
    """A range query as a wide DataFrame: one row per step (UTC time), one column per ``label``."""
    if not end > start:
        raise ValueError(f"the query window must end after it starts, got start={start} end={end}")
    result = prometheus.query_range(url, expr, start, end, step)
    columns = {}
    for series in result:
        name = series["metric"].get(label, "")
        values = pd.Series(
            [float(v) for _, v in series["values"]],
            index=pd.to_datetime([float(t) for t, _ in series["values"]], unit="s", utc=True),
        )
        columns[name] = values
    frame = pd.DataFrame(columns).sort_index(axis=1)
    frame.index.name = "time"
    return frame


def instant_frame(url: str, expr: str, at: float | None = None, label: str = "predictor_name") -> pd.Series:
    """An instant query as a Series indexed by ``label``."""
    result = prometheus.query(url, expr, at)
    return pd.Series(
        {r["metric"].get(label, ""): float(r["value"][1]) for r in result}, dtype="float64"
    ).sort_index()


def dashboard_frames(
    url: str,
    start: float,
    end: float,
    window: str | None = None,
    step: float = 1.0,
    deployment: str = DEFAULT_DEPLOYMENT,
) -> dict[str, pd.DataFrame]:
    """Every dashboard series around [start, end] (e.g. a replay's time window), keyed like ``queries``.

    The range runs on by one rate window past ``end``: a rate at time t looks back one window,
    so that is when the last requests of the replay leave the curves. The window defaults to 4x
    the local scrape interval.
    """
    window = window or rate_window()
    until = end + float(window.rstrip("s"))
    return {
        key: range_frame(url, expr, start, until, step) for key, expr in queries(window, deployment).items()
    }


# =========================================================================== figures
def _figure(title: str, ylabel: str):
    from matplotlib.figure import Figure  # not pyplot: no global state, nothing shown twice

    fig = Figure(figsize=(8, 3.6), layout="constrained")
    ax = fig.subplots()
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.set_xlabel("time (UTC)")
    ax.grid(alpha=0.3)
    return fig, ax


def _seconds(frame: pd.DataFrame) -> pd.Index:
    return (frame.index - frame.index[0]).total_seconds() if len(frame) else frame.index


def _check_frames(frames: dict[str, pd.DataFrame], *keys: str) -> None:
    missing = [k for k in keys if k not in frames]
    if missing:
        raise ValueError(f"no {missing} in the frames; build them with dashboard_frames()")
    if all(frames[k].empty for k in keys):
        raise ValueError(f"Prometheus returned no data for {list(keys)}: was there traffic in the window?")


def plot_requests(frames: dict[str, pd.DataFrame]):
    """Requests per second per arm; returns a matplotlib Figure."""
    _check_frames(frames, "requests")
    fig, ax = _figure("Requests per second per arm", "requests/s")
    for arm, values in frames["requests"].items():
        ax.plot(frames["requests"].index, values, label=arm)
    ax.legend()
    return fig


def plot_latency(frames: dict[str, pd.DataFrame]):
    """Model latency p50/p90/p99 per arm in milliseconds (one colour per arm, one style per quantile)."""
    keys = [f"latency_p{q * 100:g}" for q in QUANTILES]
    _check_frames(frames, *keys)
    fig, ax = _figure("Model latency per arm", "ms")
    arms = sorted(set().union(*(frames[k].columns for k in keys)))
    colours = {arm: f"C{i}" for i, arm in enumerate(arms)}
    for key, style in zip(keys, ("-", "--", ":")):
        for arm, values in frames[key].items():
            ax.plot(
                frames[key].index,
                values * 1000,
                style,
                color=colours[arm],
                label=f"{arm} {key.split('_')[1]}",
            )
    ax.legend(ncol=len(QUANTILES), fontsize="small")
    return fig


def plot_reward(frames: dict[str, pd.DataFrame], summary: Verdict | None = None):
    """Mean reward per arm over the rate window; with a ``Verdict``, each arm's overall mean and 95% CI."""
    _check_frames(frames, "reward")
    fig, ax = _figure("Mean reward per arm (window mean)", "mean reward")
    colours = {}
    for i, (arm, values) in enumerate(frames["reward"].items()):
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


# =========================================================================== the per-request log
def read_log(log: pd.DataFrame | str | Path) -> pd.DataFrame:
    """The log as a DataFrame (from a path or as given), with its columns checked."""
    if isinstance(log, (str, Path)):
        try:
            log = pd.read_csv(log)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise LogError(f"cannot read the feedback log {log}: {e}") from e
    if not isinstance(log, pd.DataFrame):
        raise LogError(f"expected a feedback log (DataFrame or CSV path), got {type(log).__name__}")
    return log


def _require(log: pd.DataFrame, *columns: str) -> None:
    missing = [c for c in columns if c not in log.columns]
    if missing:
        raise LogError(
            f"the feedback log has no {missing} column(s); is it a feedback.py log? (columns: {list(log.columns)})"
        )


def served(log: pd.DataFrame | str | Path) -> pd.DataFrame:
    """The rows an arm answered: a prediction came back, so truth, prediction and reward are known.

    A row whose *feedback* failed still measures its arm's model, so it stays in; a failed
    prediction measures nothing and is left out (feedback.py reports those).
    """
    log = read_log(log)
    _require(log, "arm", "truth", "prediction", "reward")
    rows = log
    if "predict_status" in log.columns:
        rows = rows[pd.to_numeric(rows["predict_status"], errors="coerce") == 200]
    rows = rows[rows["arm"].notna() & (rows["arm"].astype(str) != "")]
    values = rows[["truth", "prediction", "reward"]].apply(pd.to_numeric, errors="coerce")
    bad = ~np.isfinite(values.to_numpy(dtype="float64")).all(axis=1)
    if bad.any():
        ids = (
            rows.loc[bad, "request_id"].tolist()[:5]
            if "request_id" in rows.columns
            else rows.index[bad].tolist()[:5]
        )
        raise LogError(
            f"{int(bad.sum())} served rows lack a finite truth/prediction/reward (request ids {ids})"
        )
    rows = rows.copy()
    rows[["truth", "prediction", "reward"]] = values
    rows["arm"] = rows["arm"].astype(str)
    return rows


@dataclass(frozen=True)
class ArmStats:
    arm: str
    n: int
    mean_reward: float
    reward_ci: tuple[float, float]  # t-interval
    reward_sd: float
    rmse: float
    rmse_ci: tuple[float, float]  # BCa bootstrap


def _rmse(errors, axis=-1):
    return np.sqrt(np.mean(np.square(errors), axis=axis))


def _bootstrap_ci(
    samples: tuple, statistic, confidence: float, resamples: int, seed: int
) -> tuple[float, float]:
    """BCa bootstrap interval (scipy); a point interval when the data cannot vary."""
    if all(np.ptp(s) == 0 for s in samples):
        value = float(statistic(*samples))
        return value, value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap(
            samples,
            statistic,
            confidence_level=confidence,
            n_resamples=resamples,
            method="BCa",
            rng=np.random.default_rng(seed),
        )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def arm_stats(log, confidence: float = 0.95, resamples: int = 4000, seed: int = 0) -> dict[str, ArmStats]:
    """Per arm: n, mean reward with a t-interval, RMSE with a BCa bootstrap interval.

    Mean reward: the reward is bounded in (0, 1], so with hundreds of requests its mean is close
    to normal (CLT) and the Student t-interval is the standard, exact-enough choice.
    RMSE: sqrt(mean squared error) is a non-linear statistic of skewed data (errors of a
    discrete 3-9 quality score), so the chi-square interval, which assumes normal errors with
    mean zero, would be wrong; the bias-corrected and accelerated (BCa) bootstrap makes no such
    assumption and corrects for the skew. ``seed`` makes the bootstrap reproducible.
    """
    rows = served(log)
    if rows.empty:
        raise LogError("the feedback log has no served rows")
    out = {}
    for arm, group in rows.groupby("arm", sort=True):
        rewards = group["reward"].to_numpy()
        errors = (group["truth"] - group["prediction"]).to_numpy()
        n = len(rewards)
        mean = float(rewards.mean())
        sd = float(rewards.std(ddof=1)) if n > 1 else float("nan")
        if n > 1 and sd > 0:
            low, high = stats.t.interval(confidence, df=n - 1, loc=mean, scale=sd / math.sqrt(n))
        else:
            low, high = (mean, mean) if n > 1 else (float("nan"), float("nan"))
        rmse_ci = (
            _bootstrap_ci((errors,), _rmse, confidence, resamples, seed) if n > 1 else (float("nan"),) * 2
        )
        out[arm] = ArmStats(arm, n, mean, (float(low), float(high)), sd, float(_rmse(errors)), rmse_ci)
    return out


def stats_table(arms: dict[str, ArmStats]) -> pd.DataFrame:
    """The per-arm numbers as a table for the notebook."""
    return pd.DataFrame(
        [
            {
                "arm": s.arm,
                "n": s.n,
                "mean reward": s.mean_reward,
                "reward 95% CI": f"{s.reward_ci[0]:.3f} to {s.reward_ci[1]:.3f}",
                "RMSE": s.rmse,
                "RMSE 95% CI": f"{s.rmse_ci[0]:.3f} to {s.rmse_ci[1]:.3f}",
            }
            for s in arms.values()
        ]
    ).set_index("arm")


def power(n: int, difference: float, sd_a: float, sd_b: float, alpha: float = 0.05) -> float:
    """Power of a two-sided Welch t-test with ``n`` requests per arm, when the true difference is ``difference``.

    Exact under normality: the test statistic follows a noncentral t (``scipy.stats.nct``) with
    noncentrality ``difference / sqrt((sd_a² + sd_b²) / n)`` and Welch's degrees of freedom for
    equal group sizes.
    """
    if n < 2:
        return float("nan")
    var = sd_a**2 + sd_b**2
    if var == 0:
        return 1.0 if difference else alpha
    df = (n - 1) * var**2 / (sd_a**4 + sd_b**4)
    nc = difference / math.sqrt(var / n)
    critical = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(critical, df, nc) + stats.nct.cdf(-critical, df, nc))


def required_n(
    difference: float, sd_a: float, sd_b: float, alpha: float = 0.05, target: float = 0.8
) -> float:
    """Smallest number of requests *per arm* for which ``power`` reaches ``target``; ``inf`` for no difference.

    The normal approximation n = (z₁₋α/₂ + z_power)² (sd_a² + sd_b²) / difference² gives the
    starting point; the exact noncentral-t power then decides (it needs a few more requests,
    the t distribution having heavier tails).
    """
    if not 0 < alpha < 1 or not 0 < target < 1:
        raise ValueError(f"alpha and power must be between 0 and 1, got {alpha}, {target}")
    if not all(map(math.isfinite, (difference, sd_a, sd_b))) or difference == 0:
        return math.inf
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(target)
    low = 2
    high = max(3, math.ceil(z**2 * (sd_a**2 + sd_b**2) / difference**2))
    while power(high, difference, sd_a, sd_b, alpha) < target:  # the approximation is a lower bound, almost
        low, high = high, high * 2
    while low < high:  # power grows with n: bisect for the smallest n that reaches the target
        middle = (low + high) // 2
        if power(middle, difference, sd_a, sd_b, alpha) >= target:
            high = middle
        else:
            low = middle + 1
    return float(high)


@dataclass(frozen=True)
class Verdict:
    first: str  # the winner when significant, else the first arm by name
    second: str
    stats: dict[str, ArmStats]
    difference: float  # mean reward, first - second
    difference_ci: tuple[float, float]  # Welch
    p_value: float
    alpha: float
    significant: bool
    rmse_difference: float  # RMSE first - second
    rmse_difference_ci: tuple[float, float]  # BCa bootstrap, two independent samples
    required_n: float  # per arm, at `power_target`
    power_target: float = 0.8
    confidence: float = field(default=0.95)

    @property
    def winner(self) -> str | None:
        return self.first if self.significant else None

    @property
    def n(self) -> tuple[int, int]:
        return self.stats[self.first].n, self.stats[self.second].n

    @property
    def more_requests_needed(self) -> float:
        """Requests per arm still missing for the target power (0 when there are enough)."""
        return max(0.0, self.required_n - min(self.n))

    @property
    def sentence(self) -> str:
        """The verdict in one sentence, with the numbers it rests on."""
        a, b = self.stats[self.first], self.stats[self.second]
        p = f"{self.p_value:.3f}" if self.p_value >= 0.001 else f"{self.p_value:.1e}"
        level = f"{self.confidence * 100:g}%"
        numbers = (
            f"mean reward {a.mean_reward:.3f} vs {b.mean_reward:.3f} (difference {self.difference:.3f}, "
            f"{level} CI {self.difference_ci[0]:.3f} to {self.difference_ci[1]:.3f}, Welch p = {p}, n = {a.n}/{b.n})"
        )
        if self.significant:
            return f"{self.first} wins: {numbers}."
        if math.isinf(self.required_n):
            need = "the arms did equally well, so no number of requests would separate them"
        else:
            need = (
                f"a difference this size needs about {self.required_n:,.0f} requests per arm "
                f"({self.power_target:.0%} power at α = {self.alpha:g}), {self.more_requests_needed:,.0f} more than the smaller arm had"
            )
        return f"no decision between {self.first} and {self.second}: {numbers}; {need}."

    def __str__(self) -> str:
        return self.sentence


def verdict(
    log,
    arms: tuple[str, str] | None = None,
    alpha: float = 0.05,
    power_target: float = 0.8,
    confidence: float = 0.95,
    resamples: int = 4000,
    seed: int = 0,
) -> Verdict:
    """Decide between two arms on their rewards, from the per-request log.

    The test is Welch's two-sample t-test on the per-request rewards (``scipy.stats.ttest_ind``,
    ``equal_var=False``): each request is an independent draw assigned at random to one arm,
    the arms may differ in variance and in size, and with hundreds of bounded rewards per arm the
    mean's sampling distribution is close to normal. Significant means p < ``alpha``; the winner
    is the arm with the higher mean reward. The RMSE difference gets a two-sample BCa bootstrap
    interval as supporting evidence; it does not drive the decision (one test, one alpha).

    ``required_n`` answers "how many requests per arm would a test with ``power_target`` power
    need if the true difference were the one observed" (see ``required_n``). It is computed
    from the observed effect, so it is a planning number for the next run, not the probability
    that this verdict is right.
    """
    rows = served(log)
    present = sorted(rows["arm"].unique())
    if arms is None:
        if len(present) != 2:
            raise LogError(f"the verdict compares two arms; the log has {present}: pass arms=(…, …)")
        arms = tuple(present)
    if len(arms) != 2 or arms[0] == arms[1]:
        raise ValueError(f"arms must name two different arms, got {arms!r}")
    missing = [a for a in arms if a not in present]
    if missing:
        raise LogError(f"no served rows for {missing} in the log (arms present: {present})")
    per_arm = arm_stats(rows[rows["arm"].isin(arms)], confidence, resamples, seed)
    too_few = [a for a in arms if per_arm[a].n < 2]
    if too_few:
        raise LogError(f"{too_few} served fewer than 2 requests: no variance, no test")
    rewards = {a: rows.loc[rows["arm"] == a, "reward"].to_numpy() for a in arms}
    errors = {
        a: (rows.loc[rows["arm"] == a, "truth"] - rows.loc[rows["arm"] == a, "prediction"]).to_numpy()
        for a in arms
    }
    a, b = arms
    if per_arm[a].reward_sd == 0 and per_arm[b].reward_sd == 0:
        # Welch is undefined without variance; identical constants cannot be told apart
        p_value = 1.0 if per_arm[a].mean_reward == per_arm[b].mean_reward else 0.0
        difference_ci = (per_arm[a].mean_reward - per_arm[b].mean_reward,) * 2
    else:
        test = stats.ttest_ind(rewards[a], rewards[b], equal_var=False)
        p_value = float(test.pvalue)
        ci = test.confidence_interval(confidence)
        difference_ci = (float(ci.low), float(ci.high))
    difference = per_arm[a].mean_reward - per_arm[b].mean_reward
    significant = p_value < alpha
    if significant and difference < 0:  # report the winner first
        a, b = b, a
        difference, difference_ci = -difference, (-difference_ci[1], -difference_ci[0])
    rmse_ci = _bootstrap_ci(
        (errors[a], errors[b]),
        lambda x, y, axis=-1: _rmse(x, axis) - _rmse(y, axis),
        confidence,
        resamples,
        seed,
    )
    return Verdict(
        first=a,
        second=b,
        stats=per_arm,
        difference=difference,
        difference_ci=difference_ci,
        p_value=p_value,
        alpha=alpha,
        significant=significant,
        rmse_difference=per_arm[a].rmse - per_arm[b].rmse,
        rmse_difference_ci=rmse_ci,
        required_n=required_n(difference, per_arm[a].reward_sd, per_arm[b].reward_sd, alpha, power_target),
        power_target=power_target,
        confidence=confidence,
    )


# =========================================================================== attribution
def accepted(log) -> pd.DataFrame:
    """Rows whose feedback a model server accepted (HTTP 200), with the arm that counted it."""
    log = read_log(log)
    _require(log, "arm", "reward", "feedback_status", "feedback_arm")
    rows = log[pd.to_numeric(log["feedback_status"], errors="coerce") == 200].copy()
    unnamed = rows["feedback_arm"].isna() | (rows["feedback_arm"].astype(str) == "")
    if unnamed.any():
        raise LogError(
            f"{int(unnamed.sum())} accepted feedback rows do not say which arm counted them (feedback_arm)"
        )
    rows["arm"] = rows["arm"].astype(str)
    rows["feedback_arm"] = rows["feedback_arm"].astype(str)
    return rows


@dataclass(frozen=True)
class Attribution:
    fraction: float  # of accepted rewards, the share counted by the arm that served the prediction
    n: int
    table: pd.DataFrame  # per arm: the truth (by serving arm) vs what a dashboard computes (by counting arm)

    def summary(self) -> str:
        lines = [f"{self.fraction:.1%} of {self.n} rewards landed on the arm that served the prediction"]
        for arm, row in self.table.iterrows():
            lines.append(
                f"  {arm}: true mean reward {row['true_mean_reward']:.3f} (n={row['served']:.0f}), "
                f"dashboard mean reward {row['dashboard_mean_reward']:.3f} (n={row['counted']:.0f})"
            )
        return "\n".join(lines)


def attribution(log) -> Attribution:
    """Where the rewards landed, and what that does to the dashboard's per-arm mean reward.

    The truth groups rewards by ``arm`` (the predictor that served the prediction); a dashboard
    can only group by the model server that *counted* the feedback (``feedback_arm``). With
    feedback sent to each arm's own endpoint the two are the same request by request. Posted to
    the ingress, feedback is split at random like predictions, so with a 50/50 split about half
    the rewards land on the other arm and both arms' dashboard means drift towards each other.
    """
    rows = accepted(log)
    if rows.empty:
        raise LogError("the feedback log has no accepted feedback")
    true = rows.groupby("arm")["reward"].agg(served="size", true_mean_reward="mean")
    shown = rows.groupby("feedback_arm")["reward"].agg(counted="size", dashboard_mean_reward="mean")
    table = true.join(shown, how="outer").fillna({"served": 0, "counted": 0})
    table["dashboard_bias"] = table["dashboard_mean_reward"] - table["true_mean_reward"]
    table.index.name = "arm"
    return Attribution(float((rows["arm"] == rows["feedback_arm"]).mean()), len(rows), table)


# =========================================================================== cross-check
def scrape_times(url: str, matcher: str = "") -> list[float]:
    """The time of each target's latest scrape (the timestamp of its ``up{matcher}`` sample)."""
    result = prometheus.query(url, f"timestamp(up{{{matcher}}})")
    if not result:
        raise PrometheusError(f"Prometheus at {url} has no targets matching up{{{matcher}}}")
    return sorted(float(r["value"][1]) for r in result)


def wait_for_scrape(
    url: str, after: float, timeout: float = 30, matcher: str = "", poll: float = 0.25
) -> float:
    """Wait until every target has been scraped after ``after`` (epoch s); return the newest scrape time.

    Counters change inside the servers; Prometheus knows them only at scrape times, so a count
    "after the replay" is exact only from a scrape that started after the replay ended. At the
    moment this returns, every series' latest sample is at or before the returned time.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            times = scrape_times(url, matcher)
        except PrometheusError:
            if time.monotonic() > deadline:
                raise
            time.sleep(poll)  # a fresh Prometheus has not scraped anything yet
            continue
        if times[0] > after:
            return times[-1]
        if time.monotonic() > deadline:
            raise PrometheusError(
                f"Prometheus at {url} has not scraped every target since {after:.3f} (oldest latest scrape "
                f"{times[0]:.3f}) within {timeout:g} s: is a target down, or the scrape interval longer?"
            )
        time.sleep(poll)


def mark(url: str, timeout: float = 30, matcher: str = "") -> float:
    """A baseline for ``cross_check``: wait until every target is scraped after now; return a time.

    Call it before a replay on a stack that has already served feedback. When it returns, each
    series' latest sample was scraped after the call (so it holds every earlier count) and before
    the replay starts (so it holds none of the replay's): "the last sample at or before the mark"
    is an exact starting point for every series.
    """
    return wait_for_scrape(url, time.time(), timeout, matcher)


def _increase(samples: list[tuple[float, float]], since: float | None) -> float:
    """What a counter series added after ``since``, exactly, from its raw samples.

    The baseline is the last sample at or before ``since`` (0 if the series has none: it was born
    later, and counters start at 0). A drop between two samples is a reset - the process started
    again - and the new value is all it has counted since.
    """
    previous = 0.0
    total = 0.0
    for t, v in samples:
        if since is not None and t <= since:
            previous = v
            continue
        total += v - previous if v >= previous else v
        previous = v
    return total


def counted(
    url: str,
    metric: str = FEEDBACK,
    since: float | None = None,
    at: float | None = None,
    deployment: str = DEFAULT_DEPLOYMENT,
    lookback: float = 3600,
) -> pd.Series:
    """Exactly what ``metric`` counted per predictor after ``since`` (a ``mark()``), as of ``at`` (default now).

    Reads the raw samples of every series (an instant query of a range selector, no functions),
    so nothing is extrapolated. ``since=None`` counts from the birth of each series (30 days back).
    """
    at = time.time() if at is None else at
    first = (since if since is not None else at - 30 * 86400) - lookback
    duration = max(1, math.ceil(at - first))
    result = prometheus.query(url, f"{metric}{_selector(deployment)}[{duration}s]", at=at)
    totals: dict[str, float] = {}
    for series in result:
        samples = [(float(t), float(v)) for t, v in series["values"]]
        arm = series["metric"].get("predictor_name", "")
        totals[arm] = totals.get(arm, 0.0) + _increase(samples, since)
    return pd.Series(totals, dtype="float64").sort_index()


def cross_check(
    log,
    url: str,
    since: float | None = None,
    until: float | None = None,
    deployment: str = DEFAULT_DEPLOYMENT,
    timeout: float = 30,
    matcher: str = "",
) -> pd.DataFrame:
    """Insist that the log's accepted feedback per arm equals Prometheus's count, exactly.

    The log counts, per ``feedback_arm`` (the arm whose server counted it - in ingress mode not
    always the one that served), the feedback answered 200. Prometheus counts
    ``seldon_api_model_feedback_total``: one counter per model-server *process* (label
    ``worker_id``, the gunicorn worker's pid), which every feedback with a non-zero reward
    increments before the 200 is sent.

    How it is made exact:

    - wait until every target has been scraped after ``until`` (default: now, i.e. after the
      replay ended), so the last sample holds every count;
    - read each series' raw samples and add up what it counted after ``since`` (a ``mark()``;
      ``None`` on a fresh stack). No ``increase()``/``rate()``: those extrapolate to the window's
      edges and return fractions. No single ``last_over_time()`` per series either: it misses a
      process that restarted with the same labels.
    - a model server that restarts is a new process: a new ``worker_id``, so a new series that
      starts from 0 and is summed with the old one; should a restarted process reuse a series
      (same pid), the drop in value marks the reset and counting restarts from the new value.
      What the old process counted after its last scrape died with it: that shows up here as a
      mismatch, which is the truth - Prometheus lost those rewards. So does a feedback that timed
      out (no 200 in the log) although the server counted it.

    A mismatch raises ``CrossCheckError`` naming both numbers per arm; returns the table otherwise.
    """
    rows = accepted(log)
    scraped = wait_for_scrape(url, time.time() if until is None else until, timeout, matcher)
    in_log = rows.groupby("feedback_arm").size().astype("int64")
    in_prometheus = counted(url, FEEDBACK, since, None, deployment)  # every sample up to now
    arms = sorted(set(in_log.index) | set(in_prometheus.index))
    table = pd.DataFrame(
        {"log": in_log.reindex(arms, fill_value=0), "prometheus": in_prometheus.reindex(arms, fill_value=0.0)}
    )
    table.index.name = "arm"
    wrong = table[table["log"] != table["prometheus"]]
    if len(wrong):
        details = "; ".join(
            f"{arm}: log {int(r['log'])} accepted, Prometheus counted {r['prometheus']:g}"
            for arm, r in wrong.iterrows()
        )
        raise CrossCheckError(f"feedback counts disagree ({details}); since={since}, scrape at {scraped:.3f}")
    table["prometheus"] = table["prometheus"].astype("int64")
    return table


# =========================================================================== Grafana dashboard
DASHBOARD_UID = "mlflow-seldon-ab-test"


def dashboard(title: str = "Seldon A/B test (mlflow-seldon)") -> dict:
    """The Grafana dashboard for clusters, built from ``panels`` with Grafana's variables.

    ``$datasource`` picks the Prometheus (kube-prometheus-stack's or any other), ``$deployment``
    the SeldonDeployment, and every window is ``$__rate_interval`` (at least 4x the scrape
    interval Grafana knows for the data source).
    """
    datasource = {"type": "prometheus", "uid": "${datasource}"}
    out_panels = []
    for i, panel in enumerate(panels(GRAFANA_WINDOW, GRAFANA_DEPLOYMENT)):
        out_panels.append(
            {
                "id": i + 1,
                "type": "timeseries",
                "title": panel.title,
                "description": panel.description,
                "datasource": datasource,
                "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
                "fieldConfig": {
                    "defaults": {"unit": panel.unit, "custom": {"lineWidth": 1, "fillOpacity": 0}},
                    "overrides": [],
                },
                "options": {
                    "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "none"},
                },
                "targets": [
                    {
                        "refId": chr(ord("A") + j),
                        "datasource": datasource,
                        "expr": expr,
                        "legendFormat": "{{predictor_name}}" + suffix,
                        "range": True,
                    }
                    for j, (_, suffix, expr) in enumerate(panel.queries)
                ],
            }
        )
    deployments = f"label_values({SERVER_REQUESTS}_count, deployment_name)"
    return {
        "uid": DASHBOARD_UID,
        "title": title,
        "description": "Per-arm traffic, errors, latency and mean reward of a Seldon Core v1 A/B test. "
        "Generated by `python -m analysis dashboard`; do not edit by hand.",
        "tags": ["seldon", "mlflow", "ab-test"],
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "utc",
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                    "regex": "",
                },
                {
                    "name": "deployment",
                    "label": "SeldonDeployment",
                    "type": "query",
                    "datasource": datasource,
                    "query": {"query": deployments, "refId": "deployment"},
                    "definition": deployments,
                    "current": {},
                    "hide": 0,
                    "refresh": 2,
                    "includeAll": False,
                    "multi": False,
                    "sort": 1,
                },
            ]
        },
        "panels": out_panels,
    }


def dashboard_json() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def dashboard_expressions(document: dict) -> list[tuple[str, str, str]]:
    """(panel title, refId, expression) for every target of every panel of a dashboard JSON."""
    found = []
    for panel in document.get("panels", []):
        for target in panel.get("targets", []):
            if "expr" in target:
                found.append((panel.get("title", ""), target.get("refId", ""), target["expr"]))
    return found


# =========================================================================== CLI
def report(log, alpha: float = 0.05) -> str:
    """Per-arm table, verdict and (for ingress logs) the attribution, as text."""
    result = verdict(log, alpha=alpha)
    need = (
        "no finite number (no difference)" if math.isinf(result.required_n) else f"{result.required_n:,.0f}"
    )
    parts = [
        stats_table(result.stats).to_string(float_format=lambda v: f"{v:.3f}"),
        "",
        result.sentence,
        f"RMSE {result.first} - {result.second}: {result.rmse_difference:.3f} (95% CI {result.rmse_difference_ci[0]:.3f} "
        f"to {result.rmse_difference_ci[1]:.3f}, BCa bootstrap); requests per arm for {result.power_target:.0%} power "
        f"at the observed difference: {need}",
    ]
    rows = read_log(log)
    if "feedback_arm" in rows.columns and "feedback_status" in rows.columns:
        parts += ["", attribution(rows).summary()]
    return "\n".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("dashboard", help="print the Grafana dashboard JSON (serving/grafana/ab-test.json)")
    rep = commands.add_parser("report", help="per-arm statistics and the verdict from a feedback log")
    rep.add_argument(
        "logs", nargs="+", metavar="log", help="CSV log(s) written by feedback.py, each reported on its own"
    )
    rep.add_argument("--alpha", type=float, default=0.05)
    args = parser.parse_args(argv)
    if args.command == "dashboard":
        sys.stdout.write(dashboard_json())
        return 0
    failed = 0
    for i, log in enumerate(args.logs):
        if len(args.logs) > 1:
            print(("\n" if i else "") + f"== {log}")
        try:
            print(report(log, args.alpha))
        except (LogError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            failed = 1
    return failed


if __name__ == "__main__":
    sys.exit(main())
