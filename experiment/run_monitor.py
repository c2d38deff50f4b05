"""The monitor a monitored replay calls with each completed request (``feedback.replay(..., monitor=...)``).

It feeds every served request to the always-valid test (experiment/sequential.py; CUPED-adjusted
when covariates are given, experiment/cuped.py), checks the guardrails (experiment/guardrails.py)
every ``check_every`` served requests, and stops the replay when the test decides, at the planned
n, or at once on a guardrail breach (then ``on_breach``: the rollback, experiment/arms.py).
"""

from __future__ import annotations

from dataclasses import replace

import pandas as pd

from experiment import cuped, guardrails, sequential
from experiment.arms import error_counts, gateway_counts

GUARDRAIL_BREACH = "guardrail breach"
CHECK_EVERY = 50  # served requests between guardrail checks during a run
# bootstrap resamples of a latency check during the run: each check holds the replay's event loop
# (2,000 take ~60 ms); the final guardrails, which gate promotion, use the configured number
RUN_RESAMPLES = 400
# per arm, before the latency guardrail is checked during a run: a p95 needs about 5 answers beyond
# it, or one cold start or GC pause decides it (20 gave false breaches on a busy 2-core machine)
MIN_LATENCIES = 100


class RunMonitor:
    """What ``feedback.replay(..., monitor=...)`` calls with each completed request: test, guardrails, stop.

    ``design``: the sequential test (``plan.design``); ``control``: the champion; ``challengers``:
    the other arms, each tested against the control at α/k; the run stops when every comparison
    has decided or at the first winner. ``covariates``: ``covariate_table``
    (None: the unadjusted test). ``metrics_url``: the gateway whose /metrics counts errors per arm
    (None: errors are counted from the log, which names an arm only when it answered).
    ``on_breach(arm, results)``: what a breach does (``rollback_to``); its return value is kept
    as ``rollback``.

    When the test finds a winner, the run goes on (checking every ``check_every // 5`` served
    requests) until the winner's guardrails pass - promotion needs them shown non-inferior, which
    for the error rate takes a few hundred requests per arm - or breach, or the rows run out
    (``finish``). Waiting costs the test nothing: it already stopped, at ``test_look``.
    """

    def __init__(
        self,
        design: sequential.Design,
        control: str,
        challengers,
        covariates: pd.DataFrame | None = None,
        config: guardrails.GuardrailConfig = guardrails.GUARDRAILS,
        check_every: int = CHECK_EVERY,
        metrics_url: str | None = None,
        on_breach=None,
        final_config: guardrails.GuardrailConfig | None = None,
    ):
        self.control, self.challengers = control, list(challengers)
        if not self.challengers or control in self.challengers:
            raise ValueError(
                f"need a control and other arms to compare, got {control!r} and {self.challengers}"
            )
        each = replace(design, alpha=design.alpha / len(self.challengers))
        self.design = each
        self.monitors = {
            arm: sequential.Monitor(each, control, arm, adjusted=covariates is not None)
            for arm in self.challengers
        }
        # a Future (run_monitored computes the table while the first requests go out): rows wait in
        # ``waiting`` until it is ready - the first look needs min_n requests per arm anyway
        self._covariates, self.covariates, self.waiting = covariates, None, []
        self.covariates_at = None  # the look at which a Future's covariates were ready
        if isinstance(covariates, pd.DataFrame):
            self.covariates = covariates.to_dict("index")
        self.config, self.check_every, self.on_breach = config, check_every, on_breach
        # what decide() gates promotion with (the configured resamples); None: ``config``
        self.final_config = final_config or config
        self._confirmed = (None, False)  # (the check it confirmed, passed)
        self.metrics_url, self.baseline = metrics_url, {}
        if metrics_url:
            try:
                self.baseline = gateway_counts(metrics_url)
            except Exception:  # noqa: BLE001  (a cluster's ingress has no gateway /metrics: log only)
                self.metrics_url = None
        self.latencies: dict[str, list[float]] = {arm: [] for arm in [control, *self.challengers]}
        self.errors = dict.fromkeys(self.latencies, 0)  # from the log, when the gateway's counts are not read
        self.look = None  # the stopping look
        self.test_look = None  # the look where the test decided (a winner may then wait for its guardrails)
        self.seen = 0
        self.served = 0
        self.decision = sequential.CONTINUE
        self.reason = "no boundary reached and fewer than the planned requests so far"
        self.results: list[guardrails.GuardrailResult] = []  # the latest guardrail check
        self.breach: list[guardrails.GuardrailResult] = []
        self.rollback: str | None = None
        self.checks = 0

    @property
    def stopped(self) -> bool:
        return self.decision != sequential.CONTINUE

    def add(self, row: dict) -> str:
        """One completed request (a feedback.py log row); returns the decision at this look."""
        self.seen += 1
        if self.stopped:
            return self.decision
        if self._covariates is not None and self.covariates is None:
            # enough rows for the first look: wait for the covariates (this holds the replay)
            first_look = len(self.latencies) * self.design.min_n
            if not self._covariates.done() and len(self.waiting) < first_look:
                self.waiting.append(row)
                return self.decision
            self.covariates = self._covariates.result().to_dict("index")
            self.covariates_at = self.seen
            waiting, self.waiting = self.waiting, []
            for earlier in waiting:  # looked at now, in the order they completed
                if self._add(earlier) != sequential.CONTINUE:
                    return self.decision
        return self._add(row)

    def _add(self, row: dict) -> str:
        if self.stopped:
            return self.decision
        arm = row.get("arm")
        if arm in self.errors and row.get("predict_status") != 200:
            self.errors[arm] += 1
        if row.get("predict_status") == 200 and arm in self.latencies and pd.notna(row.get("reward")):
            self.served += 1
            self.latencies[arm].append(float(row["predict_ms"]))
            x = self.covariates[row["request_id"]] if self.covariates is not None else None
            for challenger, monitor in self.monitors.items():
                if x is None:
                    monitor.add(arm, row["reward"])
                else:
                    monitor.add(
                        arm, row["reward"], x[cuped.column(self.control)], x[cuped.column(challenger)]
                    )
            pending = self.test_look is not None  # a winner waiting for its guardrails: check more often
            if self.served % (self.check_every // 5 if pending else self.check_every) == 0:
                self._check()
                if self.breach:
                    return self._stop(GUARDRAIL_BREACH, "; ".join(r.sentence for r in self.breach))
        decisions = {arm: m.decision for arm, m in self.monitors.items()}
        # every comparison decided, or one challenger beat the control at α/k: that is valid at any
        # stopping time, and the experiment's question (which model to promote) has an answer
        if (
            all(d != sequential.CONTINUE for d in decisions.values())
            or sequential.WINNER in decisions.values()
        ):
            decision, reason = self._overall(decisions)
            self.test_look = self.test_look or self.seen
            if decision == sequential.WINNER and not self._winner_guarded():
                # the test has its winner; promotion also needs every guardrail shown non-inferior
                return self.decision
            if self.test_look != self.seen:
                reason += (
                    f"; the test decided at look {self.test_look:,}, the guardrails had passed by this one"
                )
            self._stop(decision, reason)
        return self.decision

    def _winner_guarded(self) -> bool:
        """True when every guardrail of the winners passed (the planned n bounds the test, not this wait)."""
        winners = [a for a, m in self.monitors.items() if m.decision == sequential.WINNER]
        if self.test_look == self.seen:
            self._check()  # the first look with a winner: check now, not at the next multiple
        ours = [r for r in self.results if r.treatment in winners]
        if not (len(ours) == 2 * len(winners) and all(r.ok for r in ours)):
            return False
        if self.final_config == self.config:
            return True
        # confirm the latency pass as the final check computes it (its resamples, the same seed and
        # requests): a bootstrap p near α can pass with a few hundred resamples and not with 2,000,
        # and the run would then stop where promotion is refused
        # once per guardrail check (this is called at every look while a winner waits), not per look
        if self._confirmed[0] != self.checks:
            c = self.latencies[self.control]
            passed = all(
                guardrails.latency(c, self.latencies[a], self.control, a, self.final_config).ok
                for a in winners
            )
            self._confirmed = (self.checks, passed)
        return self._confirmed[1]

    def finish(self) -> None:
        """After the last row: rows still waiting for the covariates are looked at; a winner still
        waiting for its guardrails stops here, and says so."""
        if self.waiting and not self.stopped:
            self.covariates = self._covariates.result().to_dict("index")
            waiting, self.waiting = self.waiting, []
            for row in waiting:
                self._add(row)
        if not self.stopped and self.test_look is not None:
            decision, reason = self._overall({a: m.decision for a, m in self.monitors.items()})
            self._stop(decision, f"{reason}; its guardrails had not passed when the rows ran out")

    def _stop(self, decision: str, reason: str) -> str:
        self.decision, self.reason, self.look = decision, reason, self.seen
        if decision == GUARDRAIL_BREACH and self.on_breach is not None:
            self.rollback = self.on_breach(self.breach[0].treatment, self.breach)
        return decision

    def _overall(self, decisions: dict) -> tuple[str, str]:
        if len(self.monitors) == 1:
            (monitor,) = self.monitors.values()
            return monitor.decision, monitor.reason
        winners = [a for a, d in decisions.items() if d == sequential.WINNER]
        each = "; ".join(f"{a}: {d}" for a, d in decisions.items())
        if winners:
            return (
                sequential.WINNER,
                f"{', '.join(winners)} beat {self.control} at α/{len(decisions)} ({each})",
            )
        if all(d == sequential.HARM for d in decisions.values()):
            return sequential.HARM, f"every challenger is worse than {self.control} ({each})"
        if any(d == sequential.PLANNED_N for d in decisions.values()):
            return sequential.PLANNED_N, f"the planned n was reached without a winner ({each})"
        return sequential.FUTILITY, f"no challenger beat {self.control} ({each})"

    def _check(self) -> None:
        """Both guardrails of every challenger on what the run has seen so far; a breach stops the run."""
        self.checks += 1
        if self.metrics_url:  # the gateway counts failed requests per arm; the log cannot name their arm
            errors, totals = error_counts(gateway_counts(self.metrics_url), self.baseline, self.latencies)
        else:
            errors = self.errors
            totals = {a: len(v) + self.errors[a] for a, v in self.latencies.items()}
        found = []
        # a bootstrap costs ~60 ms of the replay's event loop: while a winner waits for its error
        # rate, a latency guardrail that passed at the last check is not recomputed (decide() does)
        passed = {r.treatment: r for r in self.results if r.name.startswith("latency") and r.ok}
        for arm in self.challengers:
            c, t = self.latencies[self.control], self.latencies[arm]
            if self.test_look is not None and arm in passed:
                found.append(passed[arm])
            elif len(c) >= MIN_LATENCIES and len(t) >= MIN_LATENCIES:
                found.append(guardrails.latency(c, t, self.control, arm, self.config))
            if totals[arm] and totals[self.control]:
                found.append(guardrails.error_rate(errors, totals, self.control, arm, self.config))
        self.results = found
        self.breach = guardrails.breached(found)
