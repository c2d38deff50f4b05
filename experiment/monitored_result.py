"""The monitored experiment's outcome (``MonitoredExperiment``) and the decision from its log (``decide``).

After the run: the test recomputed from the log up to the stopping look (the same numbers the
monitor saw), the sample-ratio check from the log and from Prometheus's counts, the guardrails
(latency from the log, error rate from Prometheus's per-predictor counts by status code), and the
promotion gate (``guardrails.gate``); the result's sentence, record and figure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pandas as pd

from experiment import cuped, guardrails, planning, sequential, srm
from experiment.arms import error_counts
from experiment.log import served_rows
from experiment.promql import GATEWAY_REQUESTS, LATENCY_SOURCES
from experiment.run_monitor import GUARDRAIL_BREACH, RunMonitor


@dataclass
class MonitoredExperiment:
    """The monitored experiment's outcome: plan, where and why it stopped, SRM, guardrails, the gate."""

    plan: planning.Plan
    control: str
    replay: object  # serving.replay.ReplayResult
    decision: str
    reason: str
    look: int | None  # where the run stopped
    test_look: int | None  # where the test decided (a winner then waits for its guardrails to pass)
    tests: dict[str, sequential.SequentialResult]  # challenger -> the test against the control
    srm: list[srm.SRM]  # from the log, and from Prometheus when it was given
    guardrails: dict[str, list[guardrails.GuardrailResult]]  # challenger -> its guardrails
    gate: guardrails.Gate
    rollback: str | None = None
    seconds: dict = field(default_factory=dict)  # plan / covariates / run / analysis

    @property
    def chosen(self) -> str:
        """The challenger the gate looked at: the winner with the largest difference, else the first."""
        winners = [a for a, t in self.tests.items() if t.decision == sequential.WINNER]
        if winners:
            return max(winners, key=lambda a: self.tests[a].difference)
        return next(iter(self.tests), next(iter(self.guardrails)))

    @property
    def test(self) -> sequential.SequentialResult | None:
        return self.tests.get(self.chosen)

    @property
    def stopped_early(self) -> bool:
        return self.look is not None and self.decision != sequential.PLANNED_N

    def guardrail_table(self) -> pd.DataFrame:
        rows = [
            {
                "challenger": r.treatment,
                "guardrail": r.name,
                r.control if len(self.guardrails) == 1 else "control": r.control_value,
                r.treatment if len(self.guardrails) == 1 else "challenger": r.treatment_value,
                "margin": r.margin,
                "bound": f"{r.bound[0]:.4g} to {r.bound[1]:.4g}",
                "p": r.p_value,
                "status": r.status,
            }
            for results in self.guardrails.values()
            for r in results
        ]
        return pd.DataFrame(rows)

    @property
    def sentence(self) -> str:
        where = f"stopped at request {self.look:,}" if self.look else "ran out of rows"
        served = self.replay.log["arm"].value_counts()
        n = {a: int(served.get(a, 0)) for a in (self.control, self.chosen)}
        if self.test is not None:
            n = self.test.n
        return (
            f"{self.decision}: {where} ({n[self.control]:,}/{n[self.chosen]:,} per arm, planned "
            f"at most {self.plan.design.n_max:,}; a one-look test needed {self.plan.n_fixed:,}): "
            f"{self.reason}. "
            + "; ".join(s.sentence for s in self.srm)
            + ". "
            + self.gate.sentence
            + (f". {self.rollback}" if self.rollback else "")
            + "."
        )

    def record(self) -> dict:
        """For promotion's decision record: the plan, where it stopped, every test, SRM and guardrail."""
        return {
            "plan": self.plan.record() | {"control": self.plan.control, "treatment": self.plan.treatment},
            "decision": self.decision,
            "reason": self.reason,
            "look": self.look,
            "test_look": self.test_look,
            "tests": {a: t.record() for a, t in self.tests.items()},
            "srm": [s.record() for s in self.srm],
            "guardrails": {a: [r.record() for r in rs] for a, rs in self.guardrails.items()},
            "gate": {"promote": self.gate.promote, "reasons": self.gate.reasons},
            "rollback": self.rollback,
        }

    def __str__(self) -> str:
        return self.sentence

    def figure(self):
        """The always-valid interval and the evidence over requests, with the boundaries and the stop."""
        import matplotlib.pyplot as plt

        test = self.test
        if test is None:
            raise ValueError(f"{self.chosen} answered no request: there is no test to draw")
        looks = test.looks
        design = test.design
        first = looks[[f"n_{test.control}", f"n_{test.treatment}"]].min(axis=1) >= design.min_n
        shown = looks[first]
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
        top.fill_between(
            shown["request"], shown["low"], shown["high"], alpha=0.25, label="always-valid interval"
        )
        top.plot(shown["request"], shown["difference"], label=f"{test.treatment} − {test.control}")
        top.axhline(0, color="black", linewidth=0.8)
        top.set_ylabel("difference in mean reward")
        bottom.plot(shown["request"], shown["log_e"], label="log evidence (mSPRT)")
        bottom.axhline(
            design.upper, color="tab:green", linestyle="--", label=f"reject: log(1/α) = {design.upper:.2f}"
        )
        if design.futility:
            bottom.axhline(
                design.lower, color="tab:red", linestyle="--", label=f"futility: {design.lower:.2f}"
            )
        bottom.set_ylabel("log Λ")
        bottom.set_xlabel("request (in the order they completed)")
        if test.look:
            for ax in (top, bottom):
                ax.axvline(test.look, color="gray", linestyle=":", label=f"stop: {test.decision}")
        top.legend(loc="upper right", fontsize=8)
        bottom.legend(loc="upper left", fontsize=8)
        top.set_title(f"Monitored experiment: {self.decision} at request {self.look or len(looks):,}")
        fig.tight_layout()
        plt.close(fig)
        return fig


def _prometheus_srm(url: str, since: float, arms: dict, until: float | None = None) -> srm.SRM:
    from experiment.prometheus_data import counter_increase, wait_for_scrape

    # a scrape after the replay's last answer holds all its counts (a later one adds nothing)
    wait_for_scrape(url, time.time() if until is None else until)
    service, _ = LATENCY_SOURCES[GATEWAY_REQUESTS]
    counts = counter_increase(url, f"{GATEWAY_REQUESTS}_count", since=since, service=service)
    return srm.check_srm({a: int(counts.get(a, 0)) for a in arms}, arms, source="Prometheus")


def _prometheus_errors(url: str, since: float, arms) -> tuple[dict, dict]:
    from experiment.prometheus_data import counter_increase

    service, _ = LATENCY_SOURCES[GATEWAY_REQUESTS]
    counts = counter_increase(
        url, f"{GATEWAY_REQUESTS}_count", since=since, by=("predictor_name", "code"), service=service
    )
    return error_counts(counts.to_dict(), {}, arms)


def decide(
    replayed,
    plan: planning.Plan,
    control: str,
    split: dict,
    covariates: pd.DataFrame | None,
    monitor: RunMonitor,
    prometheus_url: str | None = None,
    since: float | None = None,
    config: guardrails.GuardrailConfig = guardrails.GUARDRAILS,
) -> MonitoredExperiment:
    """The decision from a monitored replay's log: tests up to the stopping look, SRM, guardrails, gate."""
    log = replayed.log
    rows = served_rows(log.sort_values("look"))
    if monitor.look is not None:
        rows = rows[rows["look"] <= monitor.look]
    challengers = list(monitor.monitors)
    columns = None
    if covariates is not None:
        rows = cuped.with_covariates(rows, covariates)
        columns = {a: cuped.column(a) for a in [control, *challengers]}
    answering = set(rows["arm"])
    tests = {  # an arm that answered no request (it failed every one) has nothing to test
        arm: sequential.monitor(
            rows, control, arm, monitor.design, None if columns is None else (columns[control], columns[arm])
        )
        for arm in challengers
        if {arm, control} <= answering
    }
    checks = [srm.srm(rows, split)]
    if prometheus_url:
        checks.append(_prometheus_srm(prometheus_url, since, split, replayed.finished or None))
    answered = log[log["look"] <= monitor.look] if monitor.look is not None else log
    if prometheus_url:  # the gateway's counts by status code: a failed request names no arm in the log
        errors = _prometheus_errors(prometheus_url, since, split)
    else:
        arms = answered["arm"].astype(str)
        failed = pd.to_numeric(answered["predict_status"], errors="coerce") != 200
        errors = (
            {a: int((failed & (arms == a)).sum()) for a in split},
            {a: int((arms == a).sum()) for a in split},
        )
    results = {}
    for arm in challengers:
        ms = {a: rows.loc[rows["arm"] == a, "predict_ms"] for a in (control, arm)}
        found = []
        if min(len(v) for v in ms.values()) >= 2:  # an arm that answered nothing has no latency to compare
            found.append(guardrails.latency(ms[control], ms[arm], control, arm, config))
        if errors[1].get(arm) and errors[1].get(control):
            found.append(guardrails.error_rate(*errors, control, arm, config))
        results[arm] = found
    result = MonitoredExperiment(
        plan=plan,
        control=control,
        replay=replayed,
        decision=monitor.decision,
        reason=monitor.reason,
        look=monitor.look,
        test_look=monitor.test_look,
        tests=tests,
        srm=checks,
        guardrails=results,
        gate=guardrails.Gate(None, [], {}),
        rollback=monitor.rollback,
    )
    chosen = result.chosen
    worst = min(checks, key=lambda s: s.p_value)
    if chosen in tests:
        gate = guardrails.gate(worst, results[chosen], tests[chosen])
    else:
        reasons = [worst.sentence] if worst.mismatch else []
        reasons += [r.sentence for r in results[chosen] if not r.ok]
        record = {"srm": worst.record(), "guardrails": [r.record() for r in results[chosen]], "test": None}
        gate = guardrails.Gate(None, [*reasons, f"{chosen} answered no request: nothing to test"], record)
    reasons = list(gate.reasons)
    measured = {r.name.split(" ")[0] for r in results[chosen]}
    reasons += [
        f"the {g} guardrail of {chosen} could not be measured"
        for g in ("latency", "error")
        if g not in measured
    ]
    if monitor.decision == GUARDRAIL_BREACH:
        reasons.insert(0, f"a guardrail was breached during the run: {monitor.reason}")
    record = gate.record | {"srm_all": [s.record() for s in checks], "monitored": True}
    result.gate = guardrails.Gate(None if reasons else gate.promote, reasons, record)
    return result
