"""``kill -9`` under steady predict + feedback load: the stack restarts what died, and no accepted
feedback goes missing from the books; ``kill -9`` of the gateway mid-replay loses no row.

How the feedback is accounted for across a SIGKILL (also in README.md, "Reliability"):

- The per-request log (feedback.py's) says which feedback each arm accepted (HTTP 200).
- The executor's counter ``seldon_api_executor_server_requests_seconds_count{service="feedback",
  code="200"}`` lives in the gateway (on a cluster: the executor container of the pod, which a
  model container's OOM kill leaves running). It survives a model-server restart, so it must
  equal the log per arm *exactly*, whatever was killed.
- The model server's ``seldon_api_model_feedback_total`` lives in that server's memory.
  Prometheus reads it every 2 s; a SIGKILL loses whatever it counted after its last scrape, and the
  restarted process is a new series (new ``worker_id``) counting from 0. Summed per series from
  the raw samples (``experiment.counter_increase``: no extrapolation, resets handled), Prometheus therefore
  holds the log's count minus exactly the feedback the killed process accepted after its last
  scrape. The test computes that window from the log's timestamps and the series' last sample
  and asserts the loss is inside it - never more than one scrape interval's worth.
- The gateway (the ingress and each predictor's port) restarts in about 2 s. feedback.py retries
  a refused connection - nothing was sent - until it answers again, and a prediction that got no
  answer; a feedback that was sent to an arm but got no answer may have been counted, and is sent
  again with the same request id (Seldon-Puid), which the model server counts once. The model
  servers live on, so their counters must equal the log exactly.
- Prometheus itself keeps its TSDB (head + WAL) on disk and the counters are cumulative at their
  source, so after Prometheus is killed and restarted the totals are exact again.
"""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

import experiment
import feedback
from serving import prometheus
from serving.endpoints import Endpoints
from serving.prometheus import SCRAPE_INTERVAL_SECONDS
from tests.reliability.load import PacedReplay

pytestmark = [pytest.mark.stack, pytest.mark.slow]

RATE = 50  # rows/s: 100 requests/s (predict + feedback)
EXECUTOR_FEEDBACK_OK = 'seldon_api_executor_server_requests_seconds_count{service="feedback",code="200"}'


def executor_feedback(url: str) -> dict[str, float]:
    result = prometheus.query(url, f"sum by (predictor_name) ({EXECUTOR_FEEDBACK_OK})")
    return {r["metric"]["predictor_name"]: float(r["value"][1]) for r in result}


def wait_restarted(stack, name: str, restarts: int, timeout: float = 90) -> float:
    """Wait until the supervisor has restarted ``name`` and it is ready again; return when."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = stack.status()["processes"][name]
        if proc["restarts"] > restarts and proc["ready"]:
            return time.time()
        time.sleep(0.2)
    raise AssertionError(
        f"the stack did not restart {name} within {timeout} s: {stack.status()['processes'][name]}"
    )


def accepted_per_arm(log) -> dict[str, int]:
    return experiment.accepted_feedback(log).groupby("feedback_arm").size().astype(int).to_dict()


def check_books(stack, log, before_executor: dict, since: float) -> tuple[dict, dict]:
    """Everything every source says per arm; asserts the exact ones. Returns (in_log, counted)."""
    url = stack.prometheus_url
    experiment.wait_for_scrape(url, time.time())
    # nothing lost: every row was served and its feedback accepted (feedback.py retried a 503)
    assert (log["predict_status"] == 200).all() and (log["feedback_status"] == 200).all(), (
        log[(log["predict_status"] != 200) | (log["feedback_status"] != 200)].head(10).to_string()
    )
    in_log = accepted_per_arm(log)
    # the verdict's per-arm n (served rows) is what the log accepted, arm by arm
    verdict = experiment.verdict(log)
    assert dict(zip((verdict.first, verdict.second), verdict.n, strict=True)) == in_log
    # the executor (gateway) counted exactly what the log says was accepted
    after_executor = executor_feedback(url)
    assert {arm: int(after_executor.get(arm, 0) - before_executor.get(arm, 0)) for arm in in_log} == in_log
    counted = experiment.counter_increase(url, since=since).to_dict()
    return in_log, counted


def test_kill_9_of_a_model_server_under_load_loses_at_most_one_scrape_of_its_counts(private_stack):
    stack, url = private_stack, private_stack.prometheus_url
    endpoints = Endpoints.local(stack.state_dir)
    since = experiment.wait_for_scrape(url)
    before_executor = executor_feedback(url)
    victim = stack.status()["processes"]["model-b"]
    with PacedReplay(endpoints, rate=RATE, max_seconds=90) as load:
        time.sleep(4)
        killed_at = time.time()
        os.killpg(victim["pid"], signal.SIGKILL)  # the whole container: workers, metrics Manager, all
        recovered_at = wait_restarted(stack, "model-b", victim["restarts"])
        time.sleep(4)  # traffic on the restarted server
    log = load.log()
    assert stack.status()["processes"]["model-b"]["pid"] != victim["pid"]
    served_after = log[(log["arm"] == "model-b") & (log["finished"] > recovered_at)]
    assert len(served_after) > 20, "the restarted model server took no traffic"

    in_log, counted = check_books(stack, log, before_executor, since)
    # the arm left running: its counter is exact
    assert counted["model-a"] == in_log["model-a"]

    # the killed arm: what its old process accepted after its last scrape is gone, nothing else
    samples = prometheus.query(
        url, f'{experiment.FEEDBACK}{{predictor_name="model-b"}}[{int(time.time() - since) + 60}s]'
    )
    old = [s for s in samples if float(s["values"][-1][0]) < killed_at + 0.5]
    assert len(old) == 1 and len(samples) == 2, [s["metric"].get("worker_id") for s in samples]
    last_scrape = float(old[0]["values"][-1][0])
    assert killed_at - last_scrape <= SCRAPE_INTERVAL_SECONDS + 1.0
    b = log[
        (log["feedback_arm"] == "model-b") & (log["finished"] < killed_at + 1.0)
    ]  # answered by the old process
    surely_lost = int(
        (b["feedback_started"] > last_scrape + 0.5).sum()
    )  # sent after that scrape had read the counter
    maybe_lost = int((b["finished"] > last_scrape).sum())  # not answered before that scrape began
    lost = in_log["model-b"] - counted["model-b"]
    print(
        f"\nmodel-b killed at {killed_at:.2f}, "
        f"last scrape of the old process {killed_at - last_scrape:.2f} s before; "
        f"log {in_log}, Prometheus {counted}; lost {lost:g} (window {surely_lost}..{maybe_lost}); "
        f"restarted and ready {recovered_at - killed_at:.1f} s after the kill"
    )
    assert surely_lost <= lost <= maybe_lost
    assert lost <= RATE * (
        SCRAPE_INTERVAL_SECONDS + 1
    )  # at most about one scrape interval of this arm's feedback


def test_kill_9_of_prometheus_under_load_keeps_every_count(private_stack):
    stack, url = private_stack, private_stack.prometheus_url
    endpoints = Endpoints.local(stack.state_dir)
    since = experiment.wait_for_scrape(url)
    before_executor = executor_feedback(url)
    victim = stack.status()["processes"]["prometheus"]
    with PacedReplay(endpoints, rate=RATE, max_seconds=90) as load:
        time.sleep(4)
        before_kill = time.time()
        os.killpg(victim["pid"], signal.SIGKILL)
        recovered_at = wait_restarted(stack, "prometheus", victim["restarts"])
        time.sleep(3)
    log = load.log()
    in_log, counted = check_books(stack, log, before_executor, since)
    # counters are cumulative at their source: after the restart the totals are exact
    assert counted == in_log
    # and the TSDB kept what it had before the kill (the WAL is replayed on start)
    kept = prometheus.query(url, f"count_over_time(up[{SCRAPE_INTERVAL_SECONDS * 2}s])", at=before_kill - 0.5)
    assert kept and all(float(r["value"][1]) >= 1 for r in kept), kept
    print(
        f"\nPrometheus killed and back in {recovered_at - before_kill:.1f} s; "
        f"log {in_log}, Prometheus {counted}"
    )


# the kill comes after this many feedback, with 8 rows in flight (the replay's default, unpaced): about
# half of them in their feedback, so the kill cuts some off after they were sent. All 1,960 hold-out
# rows, so that most are sent after the gateway is back
GATEWAY_KILL_AFTER = 300


def gateway_feedback(stack) -> int:
    """Feedback the gateway has answered so far, from its own /metrics page (no scrape to wait for)."""
    text = requests.get(f"http://{stack.gateway_endpoint}/metrics", timeout=5).text
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith("seldon_api_executor_server_requests_seconds_count{")
        and 'service="feedback"' in line
    )


def test_kill_9_of_the_gateway_mid_replay_loses_no_row_and_counts_each_feedback_once(private_stack, tmp_path):
    stack, url = private_stack, private_stack.prometheus_url
    endpoints = Endpoints.local(stack.state_dir)
    since = experiment.wait_for_scrape(url)
    victim = stack.status()["processes"]["gateway"]
    answered_before = gateway_feedback(stack)
    with ThreadPoolExecutor(max_workers=1) as pool:
        replay = pool.submit(
            feedback.replay, endpoints, log_path=tmp_path / "gateway-kill.csv", progress=False
        )
        deadline = time.monotonic() + 60
        while gateway_feedback(stack) - answered_before < GATEWAY_KILL_AFTER:
            assert time.monotonic() < deadline and not replay.done(), "the replay did not get going"
            time.sleep(0.01)
        killed_at = time.time()
        os.kill(victim["pid"], signal.SIGKILL)
        recovered_at = wait_restarted(stack, "gateway", victim["restarts"])
        result = replay.result(timeout=feedback.DEFAULT_DEADLINE + 120)
    log = result.log
    assert stack.status()["processes"]["gateway"]["pid"] != victim["pid"]

    # the kill hit the replay: rows were refused and retried until the new gateway answered
    retried = log[log["attempts"] > 2]
    assert len(retried) > 0, "no row was retried: the kill missed the replay"
    # nothing lost: every row predicted and its feedback accepted - a feedback the kill caught after
    # it was sent was resent with its request id when the gateway was back
    assert len(log) == len(feedback.holdout_rows()) and (log["predict_status"] == 200).all(), (
        log[log["predict_status"] != 200].head(10).to_string()
    )
    assert (log["feedback_status"] == 200).all(), log[log["feedback_status"] != 200].head(10).to_string()

    # every accepted feedback counted exactly once: the model servers (not killed) counted the log's
    # rows per arm, no more - a resent feedback the first copy had counted was answered, not counted
    experiment.wait_for_scrape(url, time.time())
    counted = experiment.counter_increase(url, since=since).to_dict()
    in_log = accepted_per_arm(log)
    assert {arm: int(n) for arm, n in counted.items()} == in_log, (in_log, counted)
    resent = log[log["feedback_resent"] > 0]
    print(
        f"\ngateway killed at +{killed_at - result.started:.1f} s, "
        f"back {recovered_at - killed_at:.1f} s later; "
        f"{len(retried)} rows retried (at most {int(log['attempts'].max())} requests for one row); "
        f"log {in_log}, model servers {counted}; feedback caught in flight by the kill and resent: "
        f"{len(resent)}"
    )
    # the kill caught feedback in flight (else this test proves nothing about resending), and at
    # most what was in flight at that instant (8 rows at a time)
    assert 0 < len(resent) <= 8
