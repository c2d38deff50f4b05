"""The shadow's paired evaluation: both models answered the same requests, so compare them row by row.

In a shadow deployment (serving/model-shadow.yaml) the champion answers every caller and the
challenger answers a mirror of the same requests. Joined by request id (the executor's puid,
``Ce-Requestid`` in the request logger's events; the caller must send ``Seldon-Puid`` for the
two predictors to share it), every request gives one reward difference d = reward(challenger) -
reward(champion) on the same row. The paired test works on those differences, so the row-to-row
variation in how hard a request is - which dominates the A/B test's variance - cancels:

    A/B, per arm:  n = (z₁₋α/₂ + z_power)² (sd_A² + sd_B²) / δ²     (and it needs two arms of n)
    paired:        n = (z₁₋α/₂ + z_power)² sd_d² / δ²,   sd_d² = sd_A² + sd_B² - 2 cov(A, B)

With two models that err alike on the same rows, cov(A, B) is large and sd_d is small. The
mirrored requests cost the callers nothing: the paired design needs n callers' requests, the
50/50 A/B test 2n per-arm (``required_requests`` computes both, exactly, from the data).

Tests: ``paired_test`` is scipy's paired t-test (``scipy.stats.ttest_rel``) with its interval;
``sequential_test`` is the always-valid mSPRT of experiment/sequential.py on the running mean of
the differences, for looking after every request.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats

from experiment.stats import required_n

# the request logger's event types (serving/request_logger/emitter.py)
RESPONSE = "io.seldon.serving.inference.response"
REQUEST = "io.seldon.serving.inference.request"


class PairingError(ValueError):
    """The events or logs cannot be paired; the message says what is missing."""


# ------------------------------------------------------------------------------------- pairing
def _records(events) -> pd.DataFrame:
    """The sink's records (a folder, JSON-lines file(s), a list of records or a DataFrame) as a frame."""
    if isinstance(events, pd.DataFrame):
        return events
    if not isinstance(events, list) or (events and not isinstance(events[0], dict)):
        from serving.request_logger import read_events  # the one reader of the sink's files

        events = read_events(events)
    return pd.DataFrame(events, columns=None if events else ["type", "endpoint", "requestid", "body"])


def predictions(events, predictor: str) -> pd.Series:
    """One predictor's predictions by request id, from its response events (the first of duplicates)."""
    from serving.client import first_value  # the one reading of a Seldon prediction's number

    frame = _records(events)
    rows = frame[(frame["type"] == RESPONSE) & (frame["endpoint"] == predictor)]
    values = {}
    for request_id, body in zip(rows["requestid"], rows["body"], strict=True):
        if request_id in values:
            continue
        try:
            values[request_id] = first_value(body)
        except (KeyError, IndexError, TypeError, ValueError):
            continue  # an error answer holds no prediction; the row stays unpaired
    return pd.Series(values, name=predictor, dtype="float64").rename_axis("request_id")


@dataclass(frozen=True)
class Pairs:
    """The requests both predictors answered, joined by request id."""

    frame: pd.DataFrame  # index request_id; columns main, shadow (predictions), maybe truth + rewards
    main: str
    shadow: str
    main_only: int  # answered by the main predictor, no shadow answer logged (lost or failed)
    shadow_only: int

    def __len__(self) -> int:
        return len(self.frame)


def pair_events(events, main: str, shadow: str) -> Pairs:
    """Join the main predictor's and the shadow's response events by request id (``Ce-Requestid``)."""
    a, b = predictions(events, main), predictions(events, shadow)
    if a.empty or b.empty:
        missing = [p for p, s in ((main, a), (shadow, b)) if s.empty]
        raise PairingError(f"no response events of predictor(s) {missing} (Ce-Endpoint) to pair")
    frame = pd.concat({"main": a, "shadow": b}, axis=1, join="inner")
    if frame.empty:
        raise PairingError(
            f"{main} and {shadow} share no request id: does the caller send a Seldon-Puid header? "
            "(each executor makes its own puid otherwise)"
        )
    return Pairs(frame, main, shadow, main_only=len(a) - len(frame), shadow_only=len(b) - len(frame))


def with_truth(pairs: Pairs, truth, reward=None) -> Pairs:
    """Add the truth and each model's reward (feedback.reward, the one definition) and their difference.

    ``truth``: a Series or mapping {request id: true value}, or a DataFrame with columns
    ``request_id`` (or ``puid``) and ``truth``. Requests without a truth are left out.
    """
    if reward is None:
        from feedback import reward
    if isinstance(truth, pd.DataFrame):
        key = "puid" if "puid" in truth.columns else "request_id"
        truth = truth.set_index(key)["truth"]
    truth = pd.Series(truth, dtype="float64")
    truth.index = truth.index.astype(str)
    frame = pairs.frame.join(truth.rename("truth"), how="inner")
    if frame.empty:
        raise PairingError("no paired request has a truth: are the request ids the same (Seldon-Puid)?")
    frame = frame.assign(
        reward_main=[reward(t, p) for t, p in zip(frame["truth"], frame["main"], strict=True)],
        reward_shadow=[reward(t, p) for t, p in zip(frame["truth"], frame["shadow"], strict=True)],
    )
    frame["difference"] = frame["reward_shadow"] - frame["reward_main"]
    return Pairs(frame, pairs.main, pairs.shadow, pairs.main_only, pairs.shadow_only)


def from_replay(log, events, shadow: str, id_column: str = "puid") -> Pairs:
    """Pair feedback.py's replay log (the main arm's prediction, truth and reward per request) with
    the shadow's logged responses, by the request id the replay sent as ``Seldon-Puid``."""
    from experiment.log import read_log, served_rows

    rows = served_rows(read_log(log))
    if id_column not in rows.columns:
        raise PairingError(
            f"the replay log has no {id_column!r} column: the replay must send Seldon-Puid with every "
            "request and log it, or the shadow's answers cannot be matched"
        )
    rows = rows.assign(request_id=rows[id_column].astype(str)).set_index("request_id")
    b = predictions(events, shadow)
    frame = pd.concat({"main": rows["prediction"], "shadow": b}, axis=1, join="inner")
    if frame.empty:
        raise PairingError(f"no request of the replay log has a logged answer of {shadow}")
    main_name = rows["arm"].mode().iat[0] if "arm" in rows.columns else "main"
    pairs = Pairs(frame, main_name, shadow, main_only=len(rows) - len(frame), shadow_only=len(b) - len(frame))
    return with_truth(pairs, rows["truth"])


# ------------------------------------------------------------------------------------ the tests
@dataclass(frozen=True)
class PairedResult:
    """The paired t-test of the mean reward difference (challenger minus champion)."""

    n: int
    mean: float  # mean difference
    sd: float  # of the differences
    ci_low: float
    ci_high: float
    t: float
    p: float
    alpha: float
    wins: int  # rows where the challenger earned more
    losses: int
    ties: int

    @property
    def significant(self) -> bool:
        return self.p < self.alpha

    def summary(self) -> str:
        level = round(100 * (1 - self.alpha))
        verdict = "significant" if self.significant else "not significant"
        return (
            f"challenger - champion: {self.mean:+.4f} mean reward over {self.n} paired requests "
            f"({level}% CI {self.ci_low:+.4f} .. {self.ci_high:+.4f}; paired t = {self.t:.2f}, "
            f"p = {self.p:.2g}, {verdict}); the challenger did better on {self.wins}, worse on "
            f"{self.losses}, the same on {self.ties}"
        )

    def as_dict(self) -> dict:
        return asdict(self)


def _differences(data) -> np.ndarray:
    if isinstance(data, Pairs):
        if "difference" not in data.frame:
            raise PairingError("the pairs have no rewards yet: with_truth(pairs, truth) first")
        data = data.frame["difference"]
    d = np.asarray(data, dtype="float64")
    if d.ndim != 1 or len(d) < 2 or not np.isfinite(d).all():
        raise PairingError(f"need at least 2 finite paired differences, got {d.shape} values")
    return d


def paired_test(data, alpha: float = 0.05) -> PairedResult:
    """Two-sided paired t-test and its 1-α interval on the differences (Pairs or an array)."""
    d = _differences(data)
    result = stats.ttest_1samp(d, 0.0)  # on differences: identical to ttest_rel(shadow, main)
    low, high = result.confidence_interval(1 - alpha)
    return PairedResult(
        n=len(d),
        mean=float(d.mean()),
        sd=float(d.std(ddof=1)),
        ci_low=float(low),
        ci_high=float(high),
        t=float(result.statistic),
        p=float(result.pvalue),
        alpha=alpha,
        wins=int((d > 0).sum()),
        losses=int((d < 0).sum()),
        ties=int((d == 0).sum()),
    )


@dataclass(frozen=True)
class SequentialPaired:
    """The always-valid test after every paired request (experiment/sequential.py's mSPRT)."""

    n: int
    decision: str  # winner | harm | continue (no boundary crossed in these requests)
    stopped_at: int | None  # the request count at which the evidence first crossed 1/α
    p: float  # always-valid p-value after the last request
    cs_low: float  # the confidence sequence after the last request
    cs_high: float
    log_evidence: np.ndarray  # per request (nan before min_n)


def sequential_test(data, design) -> SequentialPaired:
    """The mSPRT on the running mean of the paired differences: V = s_d²/n, looked at every request.

    ``design``: an ``experiment.sequential.Design`` whose ``mde`` is the planned difference in mean
    reward; its ``sd``, when given, is read as the planned sd of the *paired difference*. Futility
    stops are not applied (a shadow costs nothing to keep running).
    """
    from experiment import sequential  # experiment/sequential.py (issue 12's always-valid test)

    d = _differences(data)
    n = np.arange(1, len(d) + 1, dtype="float64")
    mean = np.cumsum(d) / n
    with np.errstate(invalid="ignore", divide="ignore"):
        var = (np.cumsum(d * d) - n * mean**2) / (n - 1)  # running sample variance
        variance = np.where(n >= max(design.min_n, 2), np.maximum(var, 1e-300) / n, np.nan)
        log_e = sequential.log_evidence(mean, variance, design)
    log_e = np.where(np.isnan(variance), np.nan, log_e)
    crossed = np.flatnonzero(np.nan_to_num(log_e, nan=-np.inf) >= design.upper)
    stopped = int(crossed[0]) if len(crossed) else None
    tau2 = sequential.cs_tau2(design.sd**2 / design.n_max, design.alpha) if design.sd else design.mde**2
    low, high = sequential.confidence_sequence(mean[-1], variance[-1], design.alpha, tau2)
    p = sequential.always_valid_p(np.nan_to_num(log_e, nan=-np.inf))[-1]
    decision = "continue" if stopped is None else ("winner" if mean[stopped] > 0 else "harm")
    return SequentialPaired(
        n=len(d),
        decision=decision,
        stopped_at=None if stopped is None else stopped + 1,
        p=float(p),
        cs_low=float(low),
        cs_high=float(high),
        log_evidence=log_e,
    )


# ------------------------------------------------------------------------- how many requests
@dataclass(frozen=True)
class SampleSizes:
    """Live requests for the same power: the paired shadow comparison against the 50/50 A/B test."""

    effect: float  # the difference in mean reward to detect
    sd_main: float
    sd_shadow: float
    sd_difference: float
    correlation: float
    alpha: float
    power: float
    paired: float  # callers' requests (each one mirrored to the shadow, which costs the caller nothing)
    ab_per_arm: float
    ab_total: float  # callers' requests of the A/B test: both arms

    @property
    def ratio(self) -> float:
        """How many times more callers' requests the A/B test needs."""
        return self.ab_total / self.paired

    def summary(self) -> str:
        return (
            f"to detect {self.effect:+.4f} in mean reward with {self.power:.0%} power at α = {self.alpha}: "
            f"{self.paired:.0f} requests paired in the shadow against {self.ab_total:.0f} in a 50/50 A/B "
            f"test ({self.ab_per_arm:.0f} per arm), {self.ratio:.1f}x fewer (reward correlation between "
            f"the models on the same rows: {self.correlation:.2f})"
        )


def required_requests(
    pairs: Pairs, effect: float | None = None, alpha: float = 0.05, power: float = 0.8
) -> SampleSizes:
    """Requests each design needs for ``power`` against ``effect`` (default: the observed mean
    difference), with the standard deviations measured on the paired rows.

    Both are exact noncentral-t computations (``experiment.stats.required_n``): the A/B test is
    Welch's test with sd_main and sd_shadow per arm; the paired t-test is the same computation with
    one sample of sd_difference (``required_n(effect, sd_d, 0)`` has Welch's df n - 1 and
    noncentrality effect / (sd_d / √n): exactly the paired test's).
    """
    frame = pairs.frame
    if "difference" not in frame:
        raise PairingError("the pairs have no rewards yet: with_truth(pairs, truth) first")
    a, b, d = frame["reward_main"], frame["reward_shadow"], frame["difference"]
    effect = float(d.mean()) if effect is None else float(effect)
    sd_a, sd_b, sd_d = float(a.std()), float(b.std()), float(d.std())
    paired = required_n(effect, sd_d, 0.0, alpha, power)
    per_arm = required_n(effect, sd_a, sd_b, alpha, power)
    return SampleSizes(
        effect=effect,
        sd_main=sd_a,
        sd_shadow=sd_b,
        sd_difference=sd_d,
        correlation=float(np.corrcoef(a, b)[0, 1]) if len(a) > 2 else math.nan,
        alpha=alpha,
        power=power,
        paired=paired,
        ab_per_arm=per_arm,
        ab_total=2 * per_arm,
    )


# ------------------------------------------------------------------------------- all at once
@dataclass(frozen=True)
class PairedEvaluation:
    pairs: Pairs
    test: PairedResult
    sizes: SampleSizes
    sequential: SequentialPaired | None

    def summary(self) -> str:
        lines = [self.test.summary(), self.sizes.summary()]
        if self.pairs.main_only or self.pairs.shadow_only:
            lines.append(
                f"unpaired: {self.pairs.main_only} answered by {self.pairs.main} only, "
                f"{self.pairs.shadow_only} by {self.pairs.shadow} only"
            )
        if self.sequential is not None:
            s = self.sequential
            when = f"after {s.stopped_at} requests" if s.stopped_at else "not yet"
            lines.append(f"always-valid test: {s.decision} ({when}; p = {s.p:.2g})")
        return "\n".join(lines)


def evaluate(
    events,
    truth: Mapping | pd.Series | pd.DataFrame,
    main: str,
    shadow: str,
    alpha: float = 0.05,
    power: float = 0.8,
    effect: float | None = None,
    design=None,
) -> PairedEvaluation:
    """Pair the logged responses, add rewards, test, and size both designs."""
    return evaluation(with_truth(pair_events(events, main, shadow), truth), alpha, power, effect, design)


def evaluation(
    pairs: Pairs, alpha: float = 0.05, power: float = 0.8, effect: float | None = None, design=None
) -> PairedEvaluation:
    """Test paired requests that have rewards (``with_truth``/``from_replay``) and size both designs."""
    return PairedEvaluation(
        pairs=pairs,
        test=paired_test(pairs, alpha),
        sizes=required_requests(pairs, effect, alpha, power),
        sequential=None if design is None else sequential_test(pairs, design),
    )
