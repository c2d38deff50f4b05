"""The monitored experiment in one call: plan before traffic, run while watching, stop when it decides.

    plan = experiment.plan_experiment(manifest, control="model-b")   # from the training rows only
    result = experiment.run_monitored(endpoints, plan, manifest=manifest, prometheus_url=url)
    print(result.sentence) ; result.figure() ; experiment.promote(result.replay.path, decision=result)

1. **Plan** (``plan_experiment``): the arms' registered models' own parameters (the runs that logged
   them) are cross-validated on the training rows (experiment/planning.py): the planned minimum
   effect, the fixed-horizon n and the sequential test's design, before any request is sent.
   With several challengers the plan is the hardest comparison's (the smallest effect).
2. **Run** (``run_monitored``): ``feedback.replay`` with a ``RunMonitor`` that feeds each completed
   request to the always-valid test (experiment/sequential.py; CUPED-adjusted with each arm's
   expected reward given the features, experiment/cuped.py) and, every ``check_every`` served
   requests, checks the guardrails (experiment/guardrails.py). It stops the replay when the test
   decides (winner, harm, futility) or at the planned n, or at once when a guardrail is breached -
   and then hands all the traffic back to the control (the champion): the served working copy of
   the manifest is edited (``serving.manifest.set_traffic``) and the local stack reloads it.
3. **Stop and decide**: the test recomputed from the log up to the stopping look (the same numbers
   the monitor saw), the sample-ratio check from the log and from Prometheus's counts, the
   guardrails (latency from the log, error rate from Prometheus's per-predictor counts by status
   code, since a failed request never says in the log which arm it reached), and the promotion
   gate (``guardrails.gate``). A/B/n: every challenger against the control at α/k (Bonferroni).

The guardrail checks during the run are repeated one-sided tests, so a false breach is likelier
than α; the cost of one is a rollback, the safe side. The final guardrails decide promotion.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from experiment import cuped, guardrails, planning, sequential, srm
from experiment.log import served_rows
from experiment.promql import GATEWAY_REQUESTS, LATENCY_SOURCES

GUARDRAIL_BREACH = "guardrail breach"
CHECK_EVERY = 50  # served requests between guardrail checks during a run
# bootstrap resamples of a latency check during the run: each check holds the replay's event loop
# (2,000 take ~60 ms); the final guardrails, which gate promotion, use the configured number
RUN_RESAMPLES = 400
MIN_LATENCIES = 20  # per arm, before the latency guardrail is checked during a run


# ------------------------------------------------------------------------------ the arms
def arm_versions(manifest) -> dict:
    """Predictor name -> the registry's ModelVersion its ``modelUri`` serves now (models:/ URIs only)."""
    from serving import deployment as sdep
    from training.tracking import registered_version

    return {p.name: registered_version(p.model_uri) for p in sdep.load(manifest).predictors}


def weights(manifest) -> dict[str, float]:
    """The manifest's traffic split, arms with traffic only (what the sample-ratio check expects)."""
    from serving import deployment as sdep

    return {name: float(w) for name, w in sdep.load(manifest).traffic.items() if w > 0}


def _arm_params(versions: dict) -> dict[str, dict]:
    """Each arm's training parameters, read from the run that logged its registered model."""
    from mlflow.tracking import MlflowClient

    from training.tracking import tracking_uri

    client = MlflowClient(tracking_uri())
    out = {}
    for arm, version in versions.items():
        params = client.get_run(version.run_id).data.params
        missing = [k for k in ("alpha", "l1_ratio") if k not in params]
        if missing:
            raise ValueError(
                f"{arm}'s model version {version.version} was logged without {missing}: cannot plan"
            )
        out[arm] = {"alpha": float(params["alpha"]), "l1_ratio": float(params["l1_ratio"])}
    return out


def plan_experiment(manifest, control: str, seed: int | None = None, **options) -> planning.Plan:
    """The plan, before traffic, from the training rows only (``planning.plan`` options pass through).

    With several challengers: the plan of the one that does best on the validation split, the
    comparison the experiment is for (the run stops at the first winner, experiment/monitored.py).
    """
    from training.data import FEATURES, SEED, TARGET, load_wine_quality, split_holdout

    versions = arm_versions(manifest)
    if control not in versions:
        raise ValueError(f"the control {control!r} is not a predictor of {manifest} ({sorted(versions)})")
    train, _ = split_holdout(load_wine_quality(), seed=SEED if seed is None else seed)
    rewards = planning.validation_rewards(train, _arm_params(versions), FEATURES, TARGET)
    plans = [planning.plan(rewards, control, arm, **options) for arm in versions if arm != control]
    if not plans:
        raise ValueError(f"{manifest} has no challenger besides {control!r}")
    return max(plans, key=lambda p: p.mean[p.treatment])


def covariate_table(manifest, seed: int | None = None) -> pd.DataFrame:
    """Every hold-out request's covariate per arm (``cuped.table``), indexed by request_id.

    Each arm's prediction comes from its registered model itself (loaded from the registry), the
    quality model from the training rows only: nothing here depends on which arm served a request.
    """
    import mlflow.pyfunc

    import feedback
    from training.data import FEATURES, SEED, TARGET, load_wine_quality, split_holdout

    seed = SEED if seed is None else seed
    train, _ = split_holdout(load_wine_quality(), seed=seed)
    rows = feedback.holdout_rows(seed)
    predictions = {
        arm: np.asarray(
            mlflow.pyfunc.load_model(f"models:/{v.name}/{v.version}").predict(rows[FEATURES]), dtype="float64"
        ).ravel()
        for arm, v in arm_versions(manifest).items()
    }
    return cuped.table(train, rows, predictions, FEATURES, TARGET, seed=0)


# ------------------------------------------------------------------------------ during the run
def gateway_counts(url: str) -> dict[tuple[str, str], float]:
    """(predictor, HTTP code) -> predictions the gateway answered, read from its own /metrics now."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"{url}/metrics", timeout=5).text
    service, _ = LATENCY_SOURCES[GATEWAY_REQUESTS]
    counts: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{GATEWAY_REQUESTS}_count" and sample.labels.get("service") == service:
                key = (sample.labels.get("predictor_name", ""), sample.labels.get("code", ""))
                counts[key] = counts.get(key, 0.0) + sample.value
    return counts


def error_counts(after: dict, before: dict, arms) -> tuple[dict[str, int], dict[str, int]]:
    """(errors, totals) per arm between two ``gateway_counts`` readings (or counts by (arm, code))."""
    errors, totals = dict.fromkeys(arms, 0), dict.fromkeys(arms, 0)
    for (arm, code), value in after.items():
        if arm in totals:
            added = int(round(value - before.get((arm, code), 0.0)))
            totals[arm] += added
            if code != "200":
                errors[arm] += added
    return errors, totals


def rollback_to(control: str, state_dir=None) -> str:
    """All the traffic to ``control`` in the local stack's served working copy, applied at once."""
    from serving.local import LocalStack
    from serving.manifest import set_traffic

    stack = LocalStack(state_dir) if state_dir is not None else LocalStack()
    manifest = stack.manifest_path
    old = set_traffic(manifest, {name: 100 if name == control else 0 for name in weights(manifest)})
    stack.reload()
    return f"traffic rolled back to {control}: {old} -> {control} 100 in {manifest} (the gateway applied it)"


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
        return len(ours) == 2 * len(winners) and all(r.ok for r in ours)

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


# ------------------------------------------------------------------------------ the result
@dataclass
class MonitoredExperiment:
    """The monitored experiment's outcome: plan, where and why it stopped, SRM, guardrails, the gate."""

    plan: planning.Plan
    control: str
    replay: object  # feedback.ReplayResult
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


def _prometheus_srm(url: str, since: float, arms: dict) -> srm.SRM:
    from experiment.prometheus_data import counter_increase, wait_for_scrape

    wait_for_scrape(url, time.time())
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


def run_monitored(
    endpoints,
    plan: planning.Plan,
    manifest=None,
    control: str | None = None,
    state_dir=None,
    prometheus_url: str | None = None,
    covariates: pd.DataFrame | bool | None = True,
    limit: int | None = None,
    rate: float | None = None,
    concurrency: int = 8,
    log_path=None,
    seed: int | None = None,
    config: guardrails.GuardrailConfig = guardrails.GUARDRAILS,
    check_every: int = CHECK_EVERY,
    rollback: bool = True,
    progress: bool = False,
    since: float | None = None,
) -> MonitoredExperiment:
    """Run the planned experiment on the hold-out traffic, stop when it decides, and decide.

    ``manifest``: the served one (default: the local stack's working copy in ``state_dir``), for the
    split the sample-ratio check expects and the rollback; ``control``: default ``plan.control``;
    ``covariates``: True computes them (``covariate_table``), a table uses it, False/None runs
    the unadjusted test; ``prometheus_url``: also check SRM and error rates on Prometheus's counts;
    ``rollback``: a guardrail breach hands all the traffic to the control (local stack);
    ``since``: a ``wait_for_scrape()`` taken just before (else it waits for one itself).
    """
    import feedback
    from training.data import SEED

    seed = SEED if seed is None else seed
    timings = {}
    if manifest is None:
        from serving.local import LocalStack

        manifest = (LocalStack(state_dir) if state_dir is not None else LocalStack()).manifest_path
    control = control or plan.control
    split = weights(manifest)
    challengers = [a for a in split if a != control]
    if control not in split or not challengers:
        raise ValueError(
            f"{manifest} serves {split}: need traffic for the control {control!r} and another arm"
        )
    if prometheus_url and since is None:
        from experiment.prometheus_data import wait_for_scrape

        since = wait_for_scrape(prometheus_url)
    pool = None
    if covariates is True:  # computed while the first requests go out (the first look needs min_n per arm)
        pool = ThreadPoolExecutor(1)
        covariates = pool.submit(covariate_table, manifest, seed)
    elif covariates is False:
        covariates = None
    monitor = RunMonitor(
        plan.design,
        control,
        challengers,
        covariates,
        replace(config, resamples=min(config.resamples, RUN_RESAMPLES)),
        check_every,
        metrics_url=endpoints.ingress_url,
        on_breach=(lambda arm, results: rollback_to(control, state_dir)) if rollback else None,
    )
    start = time.perf_counter()
    try:
        replayed = feedback.replay(
            endpoints,
            limit,
            concurrency,
            seed,
            "arm",
            log_path,
            progress=progress,
            rate=rate,
            monitor=monitor,
        )
        if pool is not None:
            covariates = covariates.result()  # raises here if it failed
    finally:
        if pool is not None:
            pool.shutdown()
    monitor.finish()
    replayed.decision, replayed.reason, replayed.look = monitor.decision, monitor.reason, monitor.look
    timings["run"] = time.perf_counter() - start
    start = time.perf_counter()
    result = decide(replayed, plan, control, split, covariates, monitor, prometheus_url, since, config)
    timings["analysis"] = time.perf_counter() - start
    result.seconds = timings
    return result


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
        checks.append(_prometheus_srm(prometheus_url, since, split))
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
