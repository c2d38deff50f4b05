"""Prometheus -> pandas: dashboard series, the notebook's figure data, scrape waits and exact counts.

Counters change inside the servers; Prometheus knows them only at scrape times. Two ways to
read them here:

- ``rate()``/``histogram_quantile()`` over a window, as a dashboard does (``range_frame``):
  smooth, but a rate at time t averages the window before t, so a replay shorter than a few
  windows shows as a ramp up and down, and ``rate()`` extrapolates to the window's edges;
- the **raw samples** (``counter_increase``, ``scrape_rates``): what each counter added between
  two scrapes, exactly; a drop between two samples is a process restart. ``cross_check`` insists
  that the log's accepted feedback per arm equals ``seldon_api_model_feedback_total`` exactly.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict

import pandas as pd

from experiment.log import accepted_feedback
from experiment.promql import (
    CLIENT_REQUESTS,
    DEFAULT_DEPLOYMENT,
    FEEDBACK,
    GATEWAY_REQUESTS,
    LATENCY_SOURCES,
    QUANTILES,
    SERVER_REQUESTS,
    latency_quantile,
    mean_reward,
    rate_window,
    requests_in_window,
    selector,
)
from serving import prometheus
from serving.prometheus import SCRAPE_INTERVAL_SECONDS, PrometheusError


class CrossCheckError(RuntimeError):
    """The log and Prometheus disagree on how much feedback each arm received."""


# ------------------------------------------------------------------------------ range queries
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
        columns[name] = pd.Series(
            [float(v) for _, v in series["values"]],
            index=pd.to_datetime([float(t) for t, _ in series["values"]], unit="s", utc=True),
        )
    frame = pd.DataFrame(columns).sort_index(axis=1)
    frame.index.name = "time"
    return frame


def _window_seconds(window: str) -> float:
    return float(window.rstrip("s"))


# ------------------------------------------------------------------------------ scrapes
def scrape_times(url: str, matcher: str = "") -> list[float]:
    """The time of each target's latest scrape (the timestamp of its ``up{matcher}`` sample)."""
    result = prometheus.query(url, f"timestamp(up{{{matcher}}})")
    if not result:
        raise PrometheusError(f"Prometheus at {url} has no targets matching up{{{matcher}}}")
    return sorted(float(r["value"][1]) for r in result)


def wait_for_scrape(
    url: str, after: float | None = None, timeout: float = 30, matcher: str = "", poll: float = 0.25
) -> float:
    """Wait until every target was scraped after ``after`` (epoch s, default now); return the newest scrape.

    A count "after the replay" is exact only from a scrape that started after the replay ended.
    At the moment this returns, every series' latest sample is at or before the returned time.
    Called with no ``after`` before a replay on a stack that has already served traffic, it
    returns a baseline for ``counter_increase``/``cross_check``: each series' latest sample was
    scraped after the call (so it holds every earlier count) and before the replay starts (so it
    holds none of the replay's): "the last sample at or before it" is an exact starting point.
    """
    after = time.time() if after is None else after
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


# ------------------------------------------------------------------------------ raw samples
def _raw_samples(url: str, metric: str, since: float, at: float) -> list[dict]:
    """Every sample of every ``metric`` series in (since, at]: an instant query of a range selector."""
    duration = max(1, math.ceil(at - since))
    result = prometheus.query(url, f"{metric}[{duration}s]", at=at)
    for series in result:
        series["values"] = [(float(t), float(v)) for t, v in series["values"]]
    return result


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


def counter_increase(
    url: str,
    metric: str = FEEDBACK,
    since: float | None = None,
    at: float | None = None,
    deployment: str = DEFAULT_DEPLOYMENT,
    lookback: float = 3600,
    by: tuple[str, ...] = ("predictor_name",),
    **matchers: str,
) -> pd.Series:
    """Exactly what counter ``metric`` added per arm after ``since`` (a ``wait_for_scrape()``), up to ``at``.

    Reads the raw samples of every series (no functions), so nothing is extrapolated.
    ``since=None`` counts from the birth of each series (30 days back). ``by`` groups by more
    labels (e.g. ``("predictor_name", "le")`` for a histogram's buckets; a MultiIndex then).
    """
    at = time.time() if at is None else at
    first = (since if since is not None else at - 30 * 86400) - lookback
    totals: dict[tuple, float] = defaultdict(float)
    for series in _raw_samples(url, f"{metric}{selector(deployment, **matchers)}", first, at):
        key = tuple(series["metric"].get(label, "") for label in by)
        totals[key] += _increase(series["values"], since)
    if len(by) == 1:
        return pd.Series({k[0]: v for k, v in totals.items()}, dtype="float64").sort_index()
    index = pd.MultiIndex.from_tuples(list(totals), names=list(by)) if totals else None
    return pd.Series(list(totals.values()), index=index, dtype="float64").sort_index()


def scrape_rates(
    url: str,
    start: float,
    end: float,
    metric: str = f"{SERVER_REQUESTS}_count",
    deployment: str = DEFAULT_DEPLOYMENT,
    scrape_interval: float = SCRAPE_INTERVAL_SECONDS,
    **matchers: str,
) -> pd.DataFrame:
    """Per arm, what ``metric`` counted per second between consecutive scrapes that overlap [start, end].

    The finest true rate Prometheus holds: exact increments of the raw samples (resets handled
    like ``counter_increase``) over the exact time between the two scrapes, with no window to
    smear a short replay into a ramp. Indexed by the middle of each scrape interval (UTC);
    ``attrs["partial"]`` flags the intervals only partly inside [start, end] (the first and last:
    they hold the replay's start and end, so they show part of its pace).
    """
    since, at = start - 3 * scrape_interval, end + 3 * scrape_interval
    series_list = _raw_samples(url, f"{metric}{selector(deployment, **matchers)}", since, at)
    # each target's scrapes (its `up` samples) are the intervals' edges
    scrapes: dict[str, list[float]] = defaultdict(list)
    for up in _raw_samples(url, "up", since, at):
        scrapes[up["metric"].get("instance", "")] += [t for t, _ in up["values"]]
    previous_scrape = {}  # (target, scrape time) -> the target's scrape before it
    for target, times in scrapes.items():
        times.sort()
        previous_scrape.update({(target, t): before for before, t in zip(times, times[1:], strict=False)})
    counts: dict[str, dict[tuple[str, float], float]] = defaultdict(dict)  # arm -> interval -> added
    for series in series_list:
        target, arm = series["metric"].get("instance", ""), series["metric"].get("predictor_name", "")
        for t in scrapes[target][1:]:  # an arm whose counters did not move counted 0, not "missing"
            counts[arm].setdefault((target, t), 0.0)
        values = series["values"]
        # a series whose first sample comes after its target's first scrape in range was born in
        # between (a label set's first request), at 0
        previous = 0.0 if values[0][0] > scrapes[target][0] else None
        for t, v in values:
            if previous is not None and (target, t) in previous_scrape:
                counts[arm][(target, t)] += v - previous if v >= previous else v
            previous = v
    columns, partial = {}, {}
    for arm, added in sorted(counts.items()):
        rates = {}
        for (target, t), count in added.items():
            before = previous_scrape[(target, t)]
            if t > start and before < end:  # the interval overlaps the replay
                middle = (before + t) / 2
                rates[middle] = rates.get(middle, 0.0) + count / (t - before)
                partial[middle] = before < start or t > end
        columns[arm] = pd.Series(rates, dtype="float64")
    frame = pd.DataFrame(columns).sort_index()
    # the first and last intervals hold the replay's start and end: only part of them had traffic
    frame.attrs["partial"] = [partial[m] for m in frame.index]
    frame.index = pd.to_datetime(frame.index, unit="s", utc=True)
    frame.index.name = "time"
    return frame


def latency_distribution(
    url: str,
    start: float,
    end: float,
    deployment: str = DEFAULT_DEPLOYMENT,
    metric: str = GATEWAY_REQUESTS,
    scrape_interval: float = SCRAPE_INTERVAL_SECONDS,
) -> pd.DataFrame:
    """A latency histogram over [start, end]: bucket bound (s) x arm -> share of requests answered within it.

    Counts from the raw samples (``counter_increase`` of the ``_bucket`` series from the last
    scrape at or before ``start``), so the shares are what was measured at the bucket bounds,
    with no interpolation between them. ``attrs["n"]`` holds each arm's request count.
    """
    service, _ = LATENCY_SOURCES[metric]
    buckets = counter_increase(
        url,
        f"{metric}_bucket",
        since=start,
        at=end,
        deployment=deployment,
        lookback=3 * scrape_interval,
        by=("predictor_name", "le"),
        service=service,
    )
    if buckets.empty:
        return pd.DataFrame()
    table = buckets.unstack("predictor_name")
    table.index = table.index.astype(float)
    table = table.sort_index()
    n = table.loc[math.inf]
    shares = table.drop(index=math.inf) / n.where(n > 0)
    shares.index.name = "le"
    shares.attrs["n"] = n.astype("int64").to_dict()
    return shares


def figure_frames(
    url: str,
    start: float,
    end: float,
    scrape_interval: float = SCRAPE_INTERVAL_SECONDS,
    deployment: str = DEFAULT_DEPLOYMENT,
    latency: str | None = None,
    step: float = 1.0,
    timeout: float = 60,
) -> dict[str, pd.DataFrame]:
    """What the notebook's figures show about a replay in [start, end] (``plots.figures`` draws them).

    - ``requests``: requests/s per arm between consecutive scrapes (``scrape_rates``: the real
      pace and split, no window smearing);
    - ``latency_p50``/``p90``/``p99``: latency quantiles over the rate window (4 scrapes) from
      the ``latency`` histogram - by default the local gateway's fine buckets when Prometheus has
      them, else (a cluster) Seldon's ``CLIENT_REQUESTS`` - and ``latency_n``: how many requests
      each window held (a p99 of a few dozen requests is one request; the plot leaves those out);
    - ``latency_distribution``: the latency distribution over the whole replay, at bucket bounds;
    - ``reward``: the dashboard's mean reward per arm over the rate window.

    Waits for a scrape after ``end`` first, so the last counts are in, and for up to two more while
    a windowed series is still empty (born in the replay's last scrape interval, it has one sample
    and ``rate()`` needs two: a replay shorter than a 15 s scrape meets this). The windowed series run
    on by one window past ``end``, when the replay's last requests leave them, even if that is
    later than Prometheus's last scrape: a window holds the samples it has, so with a cluster's
    15-30 s scrapes a replay of a few seconds still gets the points whose window spans a scrape
    before it and one after it.
    """
    window = rate_window(scrape_interval)
    scraped = wait_for_scrape(url, end, timeout)
    until = end + _window_seconds(window)
    if latency is None:
        fine = prometheus.query(url, f"count({GATEWAY_REQUESTS}_count{selector(deployment)})", at=scraped)
        latency = GATEWAY_REQUESTS if fine else CLIENT_REQUESTS
    service, title = LATENCY_SOURCES[latency]
    frames = {
        "requests": scrape_rates(
            url, start, end, deployment=deployment, scrape_interval=scrape_interval, service="predictions"
        )
    }
    windowed = {
        **{
            f"latency_p{q * 100:g}": latency_quantile(q, window, deployment, metric=latency, service=service)
            for q in QUANTILES
        },
        "latency_n": requests_in_window(window, deployment, latency, service),
        "reward": mean_reward(window, deployment),
    }
    for extra_scrapes in range(3):
        frames |= {name: range_frame(url, expr, start, until, step) for name, expr in windowed.items()}
        if extra_scrapes == 2 or all(not frames[name].empty for name in windowed):
            break
        # a series born in the replay's last scrape interval has one sample so far, and rate() needs
        # two: a replay shorter than a scrape interval (a cluster's 15 s, an early stop) meets this
        scraped = wait_for_scrape(url, scraped, timeout)
    for q in QUANTILES:
        frames[f"latency_p{q * 100:g}"].attrs["title"] = title
    frames["latency_distribution"] = latency_distribution(
        url, start, scraped, deployment, latency, scrape_interval
    )
    return frames


# ------------------------------------------------------------------------------ cross-check
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
    - read each series' raw samples and add up what it counted after ``since`` (a
      ``wait_for_scrape()`` before the replay; ``None`` on a fresh stack). No ``increase()``/
      ``rate()``: those extrapolate to the window's edges and return fractions. No single
      ``last_over_time()`` per series either: it misses a process that restarted with the same labels.
    - a model server that restarts is a new process: a new ``worker_id``, so a new series that
      starts from 0 and is summed with the old one; should a restarted process reuse a series
      (same pid), the drop in value marks the reset and counting restarts from the new value.
      What the old process counted after its last scrape died with it: that shows up here as a
      mismatch, which is the truth - Prometheus lost those rewards. So does a feedback that timed
      out (no 200 in the log) although the server counted it.

    A mismatch raises ``CrossCheckError`` naming both numbers per arm; returns the table otherwise.
    """
    rows = accepted_feedback(log)
    scraped = wait_for_scrape(url, time.time() if until is None else until, timeout, matcher)
    in_log = rows.groupby("feedback_arm").size().astype("int64")
    in_prometheus = counter_increase(url, FEEDBACK, since, None, deployment)  # every sample up to now
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
