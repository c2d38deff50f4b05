"""Part (c) of the benchmark: replaying the hold-out rows with prediction + feedback, the original
example's sequential SeldonClient loop against feedback.py, the feedback totals checked in Prometheus."""

from __future__ import annotations

import time
from pathlib import Path

from bench.measure import log


def feedback_total(prometheus_url: str) -> float:
    """Every model server's seldon_api_model_feedback_total, after a scrape that started now."""
    from experiment.prometheus_data import wait_for_scrape
    from serving import prometheus

    wait_for_scrape(prometheus_url, time.time())
    result = prometheus.query(prometheus_url, "sum(seldon_api_model_feedback_total)")
    return float(result[0]["value"][1]) if result else 0.0


def original_loop(stack, rows) -> dict:
    """The original example's replay, call for call: per row ``sc.predict`` then ``sc.feedback``,
    one after the other, with SeldonClient through the ingress (its feedback goes to the ingress
    too). Two changes that do not touch the call pattern: ``client_return_type="proto"`` (with the
    default "dict", ``feedback`` of a prediction raises TypeError), and the bounded reward of
    feedback.py (the original's 1/err² is unbounded and 500 on an exact guess)."""
    from seldon_core.seldon_client import SeldonClient

    import feedback
    from training.data import FEATURES, TARGET

    sc = SeldonClient(
        gateway="ambassador",
        namespace=stack.namespace,
        gateway_endpoint=stack.gateway_endpoint,
        deployment_name=stack.deployment,
        client_return_type="proto",
    )
    accepted, failed = 0, 0
    start = time.perf_counter()
    for _, row in rows.iterrows():
        X = row[FEATURES].to_numpy(dtype=float).reshape(1, -1)
        r = sc.predict(deployment_name=stack.deployment, data=X, names=FEATURES)
        y_pred = r.response.data.tensor.values[0]
        sent = sc.feedback(
            deployment_name=stack.deployment,
            prediction_request=r.request,
            prediction_response=r.response,
            reward=feedback.reward(row[TARGET], y_pred),
        )
        accepted += bool(r.success and sent.success)
        failed += not (r.success and sent.success)
    seconds = time.perf_counter() - start
    return {
        "rows": len(rows),
        "seconds": round(seconds, 3),
        "rows_per_s": round(len(rows) / seconds, 1),
        "accepted": accepted,
        "failed": failed,
    }


def replay(stack, workdir: Path, limit: int | None) -> dict:
    import feedback
    from serving.endpoints import Endpoints

    rows = feedback.holdout_rows(limit=limit)
    prom = stack.prometheus_url
    endpoints = Endpoints.local(stack.state_dir)
    log(f"(c) replaying {len(rows)} hold-out rows: the original sequential SeldonClient loop")
    before = feedback_total(prom)
    original = original_loop(stack, rows)
    after_original = feedback_total(prom)
    original["prometheus_feedback"] = after_original - before
    log(f"    {original['rows_per_s']} rows/s; feedback.py, concurrency 8")
    result = {"original": original}
    previous = after_original
    for label, concurrency in (("feedback.py", 8), ("feedback.py, concurrency 1", 1)):
        run = feedback.replay(
            endpoints,
            limit=limit,
            concurrency=concurrency,
            log_path=workdir / f"replay-{concurrency}.csv",
            progress=False,
        )
        total = feedback_total(prom)
        accepted = int((run.log["feedback_status"] == 200).sum())
        result[label] = {
            "rows": run.sent,
            "seconds": round(run.seconds, 3),
            "rows_per_s": round(run.sent / run.seconds, 1),
            "accepted": accepted,
            "failed": len(run.failures),
            "prometheus_feedback": total - previous,
        }
        previous = total
        log(f"    {label}: {result[label]['rows_per_s']} rows/s")
    fast = result["feedback.py"]
    result["speedup"] = round(original["seconds"] / fast["seconds"], 2)
    result["speedup_concurrency_1"] = round(
        original["seconds"] / result["feedback.py, concurrency 1"]["seconds"], 2
    )
    result["totals_identical"] = original["accepted"] == fast["accepted"] == len(rows) and original[
        "prometheus_feedback"
    ] == fast["prometheus_feedback"] == len(rows)
    return result
