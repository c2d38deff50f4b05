"""The verdict: is one arm's mean reward higher, by more than chance explains, and how sure are we."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from scipy import stats

from experiment.log import LogError, served_rows
from experiment.stats import ArmStats, arm_stats, bootstrap_ci, required_n, rmse_of


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
            f"{level} CI {self.difference_ci[0]:.3f} to {self.difference_ci[1]:.3f}, "
            f"Welch p = {p}, n = {a.n}/{b.n})"
        )
        if self.significant:
            return f"{self.first} wins: {numbers}."
        if math.isinf(self.required_n):
            need = "the arms did equally well, so no number of requests would separate them"
        else:
            need = (
                f"a difference this size needs about {self.required_n:,.0f} requests per arm "
                f"({self.power_target:.0%} power at α = {self.alpha:g}), "
                f"{self.more_requests_needed:,.0f} more than the smaller arm had"
            )
        return f"no decision between {self.first} and {self.second}: {numbers}; {need}."

    @property
    def sample_size(self) -> str:
        """How many requests per arm a test of ``power_target`` power needs for the difference observed.

        A planning number for the next run (it assumes the observed difference is the true one),
        not the probability that this verdict is right.
        """
        if math.isinf(self.required_n):
            return "With no difference between the arms, no number of requests would separate them."
        enough = "enough" if self.more_requests_needed == 0 else f"{self.more_requests_needed:,.0f} too few"
        return (
            f"A test with {self.power_target:.0%} power at α = {self.alpha:g} needs about "
            f"{self.required_n:,.0f} requests per arm to detect a difference of {abs(self.difference):.3f}; "
            f"the smaller arm had {min(self.n):,}, {enough}."
        )

    @property
    def summary(self) -> str:
        """The sentence, and on a decision the sample size a test of this power needs (no decision has it)."""
        return f"{self.sentence} {self.sample_size}" if self.significant else self.sentence

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
    rows = served_rows(log)
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
    rmse_ci = bootstrap_ci(
        (errors[a], errors[b]),
        lambda x, y, axis=-1: rmse_of(x, axis) - rmse_of(y, axis),
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
