"""An always-valid sequential test of the difference in mean reward: look after every request, stop early.

The mixture sequential probability ratio test (mSPRT, Johari, Pekelis and Walsh 2017; its design,
evidence, intervals and stopping rule in experiment/msprt.py) applied to the running difference of
the arms' mean rewards, raw or CUPED-adjusted (experiment/running.py). This module runs it over a
per-request log as if looking after each request (``monitor`` -> ``SequentialResult``), or feeds
it one request at a time for a replay that stops when it decides (``Monitor``).

The names callers use from here (``Design``, the decisions, ``running_difference``, the evidence
and interval functions) are re-exported, so ``experiment.sequential`` stays the one import.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from experiment.msprt import (
    CODE_DECISIONS,
    CONTINUE,
    DECISION_CODES,
    FUTILITY,
    HARM,
    MIN_N,
    PLANNED_N,
    WINNER,
    Design,
    always_valid_p,
    confidence_sequence,
    confidence_sequence_two_point,
    cs_tau2,
    first_stop,
    interval,
    log_evidence,
    log_evidence_normal,
    log_evidence_two_point,
)
from experiment.running import Running, RunningSums, running_difference

__all__ = [
    "CODE_DECISIONS",
    "CONTINUE",
    "DECISION_CODES",
    "FUTILITY",
    "HARM",
    "MIN_N",
    "PLANNED_N",
    "WINNER",
    "Design",
    "Monitor",
    "Running",
    "SequentialResult",
    "always_valid_p",
    "confidence_sequence",
    "confidence_sequence_two_point",
    "cs_tau2",
    "first_stop",
    "interval",
    "log_evidence",
    "log_evidence_normal",
    "log_evidence_two_point",
    "monitor",
    "running_difference",
]


@dataclass(frozen=True)
class SequentialResult:
    """The monitored experiment's outcome: what it decided, at which look, and why."""

    control: str
    treatment: str
    decision: str  # winner / harm / futility / planned n / continue
    reason: str
    look: int | None  # 1-based request number (among both arms' served requests) where it stopped
    request_id: object  # the log's request_id at that look
    n: dict  # requests per arm at the stop (or at the end of the log)
    difference: float  # treatment - control (adjusted when covariates were used)
    interval: tuple[float, float]  # the always-valid interval of the test at that look
    e_value: float  # Λ at that look
    p_value: float  # always-valid
    adjusted: bool  # regression-adjusted on pre-assignment covariates
    design: Design
    looks: pd.DataFrame  # one row per request: n, difference, low, high, log_e, p_value

    @property
    def stopped(self) -> bool:
        return self.decision != CONTINUE

    @property
    def winner(self) -> str | None:
        return {WINNER: self.treatment, HARM: self.control}.get(self.decision)

    @property
    def sentence(self) -> str:
        low, high = self.interval
        where = f"at request {self.look:,}" if self.look else "after every request of the log"
        numbers = (
            f"{self.treatment} - {self.control} = {self.difference:+.4f} "
            f"(always-valid {1 - self.design.alpha:.0%} interval {low:+.4f} to {high:+.4f}, "
            f"e-value {self.e_value:.3g}, always-valid p = {self.p_value:.3g}, "
            f"n = {self.n[self.control]}/{self.n[self.treatment]})"
        )
        return f"{self.decision} {where}: {self.reason}; {numbers}."

    def record(self) -> dict:
        """What promotion's decision record keeps: the test, n per arm, estimate, interval, p and e."""
        rewards = "CUPED-adjusted" if self.adjusted else "raw"
        return {
            "test": f"mSPRT ({self.design.mixture} mixture), {rewards} rewards",
            "control": self.control,
            "treatment": self.treatment,
            "decision": self.decision,
            "reason": self.reason,
            "look": self.look,
            "request_id": None if self.request_id is None else str(self.request_id),
            "n": {k: int(v) for k, v in self.n.items()},
            "difference": self.difference,
            "interval": list(self.interval),
            "e_value": self.e_value,
            "p_value": self.p_value,
            "design": self.design.as_dict(),
        }

    def __str__(self) -> str:
        return self.sentence


def _reason(decision: str, design: Design) -> str:
    return {
        WINNER: f"the evidence reached 1/α = {1 / design.alpha:g} with the treatment ahead",
        HARM: f"the evidence reached 1/α = {1 / design.alpha:g} with the treatment behind",
        FUTILITY: (
            f"the evidence fell to β/(1-α) = {design.beta / (1 - design.alpha):.3g}: "
            f"no effect is likelier than one of ±{design.mde:g}"
        ),
        PLANNED_N: f"both arms reached the planned {design.n_max:,} requests without a decision",
        CONTINUE: "no boundary reached and fewer than the planned requests so far",
    }[decision]


def monitor(
    rows: pd.DataFrame,
    control: str,
    treatment: str,
    design: Design,
    covariates: tuple[str, str] | None = None,
) -> SequentialResult:
    """Run the sequential test over a per-request log in request order, as if looking after each request.

    ``rows``: served rows (``experiment.log.served_rows``) of the two arms, in the order the
    requests were made, with ``arm`` and ``reward`` (and ``request_id``); other arms' rows are
    ignored. ``covariates``: names of two columns holding, for every row, the control's and the
    treatment's pre-assignment covariate (experiment/cuped.py) for a regression-adjusted test.
    """
    rows = rows[rows["arm"].isin([control, treatment])]
    missing = [a for a in (control, treatment) if not (rows["arm"] == a).any()]
    if missing:
        raise ValueError(f"no served rows for {missing}")
    treated = (rows["arm"] == treatment).to_numpy()
    y = rows["reward"].to_numpy(dtype="float64")
    x = (None, None)
    if covariates is not None:
        absent = [c for c in covariates if c not in rows.columns]
        if absent:
            raise ValueError(f"the log has no covariate column(s) {absent}")
        x = tuple(rows[c].to_numpy(dtype="float64") for c in covariates)
    run = running_difference(y, treated, *x)
    log_e = log_evidence(run.difference, run.variance, design)
    low, high = interval(run.difference, run.variance, design)
    looks = pd.DataFrame(
        {
            "request": np.arange(1, len(y) + 1),
            "request_id": rows["request_id"].to_numpy()
            if "request_id" in rows.columns
            else np.arange(len(y)),
            f"n_{control}": run.n_control.astype(int),
            f"n_{treatment}": run.n_treatment.astype(int),
            "difference": run.difference,
            "low": low,
            "high": high,
            "log_e": log_e,
            "p_value": always_valid_p(np.where(np.isfinite(log_e), log_e, 0.0)),
        }
    )
    index, code = first_stop(run, log_e, design)
    i = int(index[0])
    decision = CODE_DECISIONS[int(code[0])]
    at = i if i >= 0 else len(y) - 1
    row = looks.iloc[at]
    return SequentialResult(
        control=control,
        treatment=treatment,
        decision=decision,
        reason=_reason(decision, design),
        look=i + 1 if i >= 0 else None,
        request_id=row["request_id"] if i >= 0 else None,
        n={control: int(row[f"n_{control}"]), treatment: int(row[f"n_{treatment}"])},
        difference=float(row["difference"]),
        interval=(float(row["low"]), float(row["high"])),
        e_value=float(np.exp(row["log_e"])) if np.isfinite(row["log_e"]) else float("nan"),
        p_value=float(row["p_value"]),
        adjusted=covariates is not None,
        design=design,
        looks=looks,
    )


class Monitor:
    """The same test fed one request at a time, for a replay that stops when the test decides.

    ``add`` costs O(1) (it updates running sums) and returns the decision at that look:
    ``continue`` until a boundary or the planned n is reached, then winner / harm / futility /
    planned n (and it stays there). ``stopped_at`` is the look (1-based request number) where it
    stopped, which the log should record.

        monitor = Monitor(plan.design, "b", "a")
        for row in replay:                       # in the order the requests complete
            if monitor.add(row.arm, row.reward) != CONTINUE:
                break
    """

    def __init__(self, design: Design, control: str, treatment: str, adjusted: bool = False):
        self.design, self.control, self.treatment, self.adjusted = design, control, treatment, adjusted
        self.sums = RunningSums(adjusted)
        self.looks = 0
        self.decision = CONTINUE
        self.stopped_at: int | None = None
        self.last: dict = {}

    def add(
        self, arm: str, reward: float, x_control: float | None = None, x_treatment: float | None = None
    ) -> str:
        """Count one served request of ``arm`` (other arms are ignored) and return the decision."""
        if self.decision != CONTINUE or arm not in (self.control, self.treatment):
            return self.decision
        run = self.sums.add(arm == self.treatment, reward, x_control, x_treatment)
        self.looks += 1
        log_e = log_evidence(run.difference, run.variance, self.design)
        _, code = first_stop(run, log_e, self.design)
        low, high = interval(run.difference, run.variance, self.design)
        self.last = {
            "look": self.looks,
            "n": {self.control: int(run.n_control), self.treatment: int(run.n_treatment)},
            "difference": float(run.difference),
            "interval": (float(low), float(high)),
            "log_e": float(log_e),
        }
        self.decision = CODE_DECISIONS[int(code[0])]
        if self.decision != CONTINUE:
            self.stopped_at = self.looks
        return self.decision

    @property
    def reason(self) -> str:
        return _reason(self.decision, self.design)
