"""The A/B test, from the per-request log and Prometheus to a decision.

What the notebook calls::

    baseline = experiment.wait_for_scrape(prometheus_url)     # before a replay: count from here
    experiment.cross_check(log, prometheus_url, since=baseline) # log == Prometheus, exactly
    frames = experiment.figure_frames(prometheus_url, start, end, scrape_interval)
    experiment.figures(frames, verdict) ; experiment.save(figure, name)
    verdict = experiment.verdict(log) ; experiment.stats_table(verdict.stats)
    experiment.attribution(log)                                 # where the rewards landed
    experiment.promote(log) ; experiment.rollback()
    plan = experiment.plan_experiment(manifest, control)        # the monitored experiment:
    result = experiment.run_monitored(endpoints, plan, ...)     # plan -> run -> stop
    experiment.promote(result.replay.path, decision=result)     # its gate: SRM, guardrails, test

Modules, one idea each: ``log`` (reading feedback.py's logs), ``promql`` (the expressions),
``dashboard`` (Grafana JSON), ``prometheus_data`` (Prometheus -> pandas, exact counts),
``plots``, ``stats`` (per-arm statistics, power), ``verdict``, ``attribution``,
``promotion``; ``python -m experiment`` is the command line.
"""

from experiment.attribution import Attribution, attribution
from experiment.log import LogError, accepted_feedback, newest_log, read_log, served_rows
from experiment.plots import figures, save
from experiment.prometheus_data import (
    CrossCheckError,
    counter_increase,
    cross_check,
    figure_frames,
    wait_for_scrape,
)
from experiment.promql import FEEDBACK, REWARD, rate_window
from experiment.stats import ArmStats, arm_stats, power, required_n, stats_table
from experiment.verdict import Verdict, verdict

_PROMOTION = ("Outcome", "PromotionError", "promote", "rollback")
# the monitored experiment (plan -> run -> stop): name -> its module
_MONITORED = {
    "MonitoredExperiment": "monitored_result",
    "RunMonitor": "run_monitor",
    "plan_experiment": "monitored",
    "run_monitored": "monitored",
}


def __getattr__(name: str):
    # promotion imports MLflow (seconds): only when asked for, so `python -m experiment report` stays quick
    if name in _PROMOTION:
        from experiment import promotion

        return getattr(promotion, name)
    if name in _MONITORED:  # scikit-learn and MLflow, also only when asked for
        import importlib

        return getattr(importlib.import_module(f"experiment.{_MONITORED[name]}"), name)
    raise AttributeError(f"module 'experiment' has no attribute {name!r}")


__all__ = [
    "ArmStats",
    "Attribution",
    "CrossCheckError",
    "FEEDBACK",
    "LogError",
    "REWARD",
    "Verdict",
    "accepted_feedback",
    "arm_stats",
    "attribution",
    "counter_increase",
    "cross_check",
    "figure_frames",
    "figures",
    "newest_log",
    "power",
    "rate_window",
    "read_log",
    "required_n",
    "save",
    "served_rows",
    "stats_table",
    "verdict",
    "wait_for_scrape",
    *_PROMOTION,
    *_MONITORED,
]
