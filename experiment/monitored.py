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

Modules: experiment/arms.py (the served arms, their traffic and counts), experiment/run_monitor.py
(``RunMonitor``: what the replay calls with each request), experiment/monitored_result.py
(``MonitoredExperiment`` and ``decide``); this one plans and runs.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pandas as pd

from experiment import cuped, guardrails, planning
from experiment.arms import arm_versions, rollback_to, weights
from experiment.monitored_result import MonitoredExperiment, decide
from experiment.run_monitor import CHECK_EVERY, RUN_RESAMPLES, RunMonitor


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

    from serving.replay import holdout_rows
    from training.data import FEATURES, SEED, TARGET, load_wine_quality, split_holdout

    seed = SEED if seed is None else seed
    train, _ = split_holdout(load_wine_quality(), seed=seed)
    rows = holdout_rows(seed)
    predictions = {
        arm: np.asarray(
            mlflow.pyfunc.load_model(f"models:/{v.name}/{v.version}").predict(rows[FEATURES]), dtype="float64"
        ).ravel()
        for arm, v in arm_versions(manifest).items()
    }
    return cuped.table(train, rows, predictions, FEATURES, TARGET, seed=0)


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
    from serving.replay import replay
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
        final_config=config,
    )
    start = time.perf_counter()
    try:
        replayed = replay(
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
