"""The release's first step, run: a slice of the hold-out through a shadow deployment, then the pairing.

    main, shadow = shadow_roles("serving/model-shadow.yaml")          # champion, challenger
    evaluation = run_shadow(endpoints, shadow_rows(300), events_folder, shadow, design=plan.design)
    print(evaluation.summary())

The callers' requests go through the ingress to the champion (``feedback.py``'s replay: one
``Seldon-Puid`` per row, the feedback to the champion's own endpoint); the gateway (Istio's
mirror on a cluster) sends each one to the shadow too, whose executor logs its answer as a
CloudEvent with the same request id. ``run_shadow`` waits until the request-logger sink holds the
shadow's answer to every replayed request (the loggers send asynchronously), then pairs them
with the replay's log and tests the paired differences (experiment/paired.py).

Which rows: the shadow period and the A/B test are two live periods, so they see different
requests. The shadow gets the *last* ``n`` rows of the replay order (``shadow_rows``), the A/B
test the rows before them (``ab_limit``). Reusing rows would bias the A/B test: the rewards are a
function of the row and the model, so an A/B test run on the very rows where the shadow found
the challenger better re-measures a sample selected for it.
"""

from __future__ import annotations

import time
from pathlib import Path

from experiment import paired


def shadow_roles(manifest) -> tuple[str, str]:
    """(main, shadow): the predictor callers get, and the one with ``shadow: true``."""
    from serving import deployment as sdep

    predictors = sdep.load(manifest).predictors
    mains = [p.name for p in predictors if not p.shadow]
    shadows = [p.name for p in predictors if p.shadow]
    if len(mains) != 1 or len(shadows) != 1:
        raise paired.PairingError(
            f"{manifest}: a paired comparison needs one main predictor and one shadow, "
            f"got main {mains} and shadow {shadows}"
        )
    return mains[0], shadows[0]


def with_logger_url(source, destination, url: str | None) -> Path:
    """Copy a manifest, every graph node's ``logger.url`` set to ``url`` (None: copied as it is).

    A cluster's executors must post to a sink they can reach (docs/cluster.md), not the local
    stack's loopback one; comments and layout are kept (serving/manifest.py).
    """
    from serving import manifest as yaml_manifest

    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    document = yaml_manifest.load(source)
    if url:

        def walk(node) -> None:
            if node.get("logger") is not None:
                node["logger"]["url"] = url
            for child in node.get("children") or []:
                walk(child)

        for predictor in document["spec"]["predictors"]:
            walk(predictor["graph"])
    yaml_manifest.write(document, destination)
    return destination


def shadow_rows(n: int, seed: int | None = None):
    """The last ``n`` hold-out rows of the replay order: the shadow period's traffic."""
    from serving.replay import holdout_rows
    from training.data import SEED

    rows = holdout_rows(SEED if seed is None else seed)
    if not 0 < n < len(rows):
        raise ValueError(f"the shadow needs between 1 and {len(rows) - 1} rows, got {n}")
    return rows.tail(n)


def ab_limit(shadow: int, limit: int | None = None, seed: int | None = None) -> int:
    """How many rows the A/B test may replay: the ones before the shadow's (and at most ``limit``)."""
    from serving.replay import holdout_rows
    from training.data import SEED

    available = len(holdout_rows(SEED if seed is None else seed)) - shadow
    return available if limit is None else min(limit, available)


def wait_for_answers(events, predictor: str, request_ids, timeout: float = 30, poll: float = 0.2) -> list:
    """The sink's records once ``predictor``'s answer to every request id has arrived (or ``timeout``
    passed: then what arrived, and the pairing counts the rest as unpaired)."""
    from serving.request_logger import read_events

    wanted, folder = {str(r) for r in request_ids}, Path(events)
    deadline = time.monotonic() + timeout
    while True:
        records = read_events(folder) if folder.is_dir() else []
        answered = {
            r.get("requestid")
            for r in records
            if r.get("type") == paired.RESPONSE and r.get("endpoint") == predictor
        }
        if wanted <= answered or time.monotonic() > deadline:
            return records
        time.sleep(poll)


def run_shadow(
    endpoints,
    rows,
    events,
    shadow: str,
    rate: float | None = None,
    concurrency: int = 8,
    log_path=None,
    timeout: float = 30,
    alpha: float = 0.05,
    power: float = 0.8,
    effect: float | None = None,
    design=None,
) -> paired.PairedEvaluation:
    """Replay ``rows`` through the shadow deployment, wait for the shadow's logged answers, pair, test.

    ``events``: the folder the request-logger sink writes (the local stack's
    ``<state dir>/request-logs``); ``effect``/``power``: what ``required_requests`` sizes both
    designs for (default: the observed difference, 80%); ``design``: the A/B plan's sequential
    test (``plan.design``), applied to the paired differences with its effect and α - its per-arm
    sd is dropped, since a paired difference varies far less than one arm's reward.
    """
    from dataclasses import replace

    from serving.replay import Replayer

    log = Replayer(endpoints).replay(rows, concurrency, progress=False, rate=rate)
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        log.to_csv(log_path, index=False)
    answered = log.loc[log["predict_status"] == 200, "puid"].dropna()
    records = wait_for_answers(events, shadow, answered, timeout)
    ids = set(answered.astype(str))  # this period's requests (the sink also holds earlier ones)
    pairs = paired.from_replay(log, [r for r in records if r.get("requestid") in ids], shadow)
    design = None if design is None else replace(design, sd=None)
    return paired.evaluation(pairs, alpha, power, effect, design)


def next_period(prometheus_url: str, after: float, scrape_interval: float) -> float:
    """Wait until a dashboard's rate window has passed since ``after`` (the shadow period's end) and
    Prometheus scraped after that; return the newest scrape: the next period's counting baseline.

    A windowed panel (rate, quantile) at time t sums the window before t, so the A/B test's first
    points would otherwise hold the shadow's mirrored requests too (on a cluster as well: executor
    metrics carry no shadow label). The baseline holds every count of the shadow period and, taken
    before the A/B test's first request, none of its own (``wait_for_scrape``).
    """
    from experiment.prometheus_data import wait_for_scrape
    from experiment.promql import rate_window

    window = float(rate_window(scrape_interval).rstrip("s"))
    return wait_for_scrape(prometheus_url, after + window, timeout=window + 4 * scrape_interval)
