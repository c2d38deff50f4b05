"""Faults of a shadow deployment under a paced replay: none of them may reach the caller.

A private stack serves serving/model-shadow.yaml (model-b answers callers, model-a is the shadow,
both logged to the stack's request-logger sink). Each test replays the same hold-out rows at the
same pace as a fault-free baseline and compares:

- ``kill -9`` of the shadow's model server mid-replay: every row answered by model-b, 0 errors,
  p99 within noise of the baseline; the mirrors that hit the dead shadow show in its own executor
  metrics, and the supervisor restarts it;
- the request-logger sink killed (``kill -9``) or hung (``SIGSTOP`` for a few seconds) mid-replay:
  callers untouched; every event is either delivered or counted as dropped (none vanishes), and
  a hung sink that comes back loses nothing.
"""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

import feedback
from serving.endpoints import Endpoints
from serving.local import LocalStack, stack_pids
from tests.reliability.test_faults import wait_restarted
from tests.serving.test_shadow_manifest import SHADOW

pytestmark = [pytest.mark.stack, pytest.mark.slow]

ROWS, RATE = 400, 50  # 8 s of replay at 50 rows/s (100 caller requests/s); the fault 2 s in
FAULT_AFTER = 2.0
# events per row: model-b's request, response and feedback (feedback.py sends it to model-b's own
# port, which logs it), model-a's request and response (the mirror); feedback to an arm's own port
# is not mirrored (only the ingress's is)
EVENTS_PER_ROW = 5


@pytest.fixture(scope="module")
def shadow_stack(trained_arms, tmp_path_factory):
    state = tmp_path_factory.mktemp("shadow-faults") / "state"
    # on free ports the working copy's logger URLs move to a free port too
    stack = LocalStack.up(SHADOW, port=0, state_dir=state, timeout=240)
    try:
        yield stack
    finally:
        stack.down()
        assert stack_pids(state) == [], "processes of the private stack survived `down`"


def gateway_status(stack) -> dict:
    return requests.get(f"http://{stack.gateway_endpoint}/admin/status", timeout=5).json()


def logger_totals(stack) -> tuple[int, int]:
    """(sent, dropped) over both predictors' request loggers, as the gateway counts them."""
    loggers = gateway_status(stack)["request_logger"].values()
    return sum(log["sent"] for log in loggers), sum(sum(log["dropped"].values()) for log in loggers)


def settled_totals(stack, expected: int, timeout: float = 90) -> tuple[int, int]:
    """The logger totals once ``expected`` events are accounted for (sent or dropped), or at timeout."""
    deadline = time.monotonic() + timeout
    while True:
        sent, dropped = logger_totals(stack)
        if sent + dropped >= expected or time.monotonic() > deadline:
            return sent, dropped
        time.sleep(0.25)


def quiet_totals(stack, still: float = 1.0, timeout: float = 60) -> tuple[int, int]:
    """The logger totals once they stop changing (the events of earlier requests all accounted for)."""
    deadline = time.monotonic() + timeout
    last = logger_totals(stack)
    while time.monotonic() < deadline:
        time.sleep(still)
        now = logger_totals(stack)
        if now == last:
            return now
        last = now
    raise AssertionError(f"the request loggers' counts kept changing for {timeout} s: {last}")


def replay(stack, tmp_path, name: str, fault=None):
    """A paced replay; ``fault()`` runs ``FAULT_AFTER`` s in. The log and the fault's return value."""
    endpoints = Endpoints.local(stack.state_dir)
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(
            feedback.replay,
            endpoints,
            limit=ROWS,
            rate=RATE,
            log_path=tmp_path / f"{name}.csv",
            progress=False,
        )
        happened = None
        if fault is not None:
            time.sleep(FAULT_AFTER)
            happened = fault()
        result = future.result(timeout=feedback.DEFAULT_DEADLINE + 120)
    return result.log, happened


def p99(log) -> float:
    return float(log["predict_ms"].quantile(0.99))


def check_caller_untouched(log, baseline, what: str) -> None:
    errors = log[log["error"].fillna("") != ""]
    assert errors.empty, errors.head(10).to_string()
    assert len(log) == ROWS and (log["predict_status"] == 200).all() and set(log["arm"]) == {"model-b"}
    assert (log["attempts"] == 2).all(), "a caller request was retried"
    base, now = p99(baseline), p99(log)
    print(
        f"\n{what}: caller p50 {log['predict_ms'].median():.2f} ms, p99 {now:.2f} ms; "
        f"baseline p50 {baseline['predict_ms'].median():.2f} ms, p99 {base:.2f} ms"
    )
    # A caller waiting for the shadow would wait its 5 s timeout; what remains is CPU noise of a shared
    # 2-core machine shared with other work (baselines' p99 ranged 11-148 ms between runs at load 4-8,
    # and the shadow's restart loads a model on the same cores): 3x, or 50 ms more
    assert now <= max(3 * base, base + 50), (now, base)


@pytest.fixture(scope="module")
def baseline(shadow_stack, tmp_path_factory):
    log, _ = replay(shadow_stack, tmp_path_factory.mktemp("baseline"), "baseline")
    check_caller_untouched(log, log, "baseline (no fault)")
    return log


def test_kill_9_of_the_shadows_model_server_changes_nothing_for_the_caller(shadow_stack, baseline, tmp_path):
    stack = shadow_stack
    victim = stack.status()["processes"]["model-a"]
    before = gateway_status(stack)["shadow"]

    def kill():
        os.killpg(victim["pid"], signal.SIGKILL)  # the whole container
        return time.time()

    log, killed_at = replay(stack, tmp_path, "shadow-kill", kill)
    check_caller_untouched(log, baseline, "model-a killed mid-replay")
    recovered_at = wait_restarted(stack, "model-a", victim["restarts"])
    after = gateway_status(stack)["shadow"]
    assert after["mirrored"] - before["mirrored"] + after["skipped"] - before["skipped"] == ROWS
    # the kill hit the replay: mirrors failed while model-a was down, in its own executor metrics
    metrics = requests.get(f"http://{stack.gateway_endpoint}/metrics", timeout=5).text
    failed = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("seldon_api_executor_server_requests_seconds_count{")
        and 'predictor_name="model-a"' in line
        and 'code="200"' not in line
    )
    assert failed > 0, "no mirror failed: the kill missed the replay"
    print(
        f"model-a back {recovered_at - killed_at:.1f} s after the kill; {failed:.0f} mirrors failed meanwhile"
    )


def test_the_sink_killed_mid_replay_leaves_callers_untouched_and_every_event_is_counted(
    shadow_stack, baseline, tmp_path
):
    stack = shadow_stack
    victim = stack.status()["processes"]["request-logger"]
    sent0, dropped0 = quiet_totals(stack)

    def kill():
        os.kill(victim["pid"], signal.SIGKILL)

    log, _ = replay(stack, tmp_path, "sink-kill", kill)
    check_caller_untouched(log, baseline, "sink killed mid-replay")
    wait_restarted(stack, "request-logger", victim["restarts"])
    expected = sent0 + dropped0 + EVENTS_PER_ROW * ROWS
    sent, dropped = settled_totals(stack, expected)
    print(f"events: {sent - sent0} delivered, {dropped - dropped0} dropped and counted")
    assert sent + dropped == expected  # nothing vanished: delivered, or counted as lost
    assert dropped > dropped0, "no event was lost: the kill missed the replay"


def test_a_hung_sink_leaves_callers_untouched_and_loses_nothing_once_it_answers(
    shadow_stack, baseline, tmp_path
):
    stack = shadow_stack
    victim = stack.status()["processes"]["request-logger"]
    sent0, dropped0 = quiet_totals(stack)

    def hang():
        os.kill(victim["pid"], signal.SIGSTOP)  # accepts connections (the kernel does), answers nothing
        time.sleep(3)  # shorter than the supervisor's liveness window (3 probes, 2 s apart)
        os.kill(victim["pid"], signal.SIGCONT)

    log, _ = replay(stack, tmp_path, "sink-hang", hang)
    check_caller_untouched(log, baseline, "sink hung for 3 s mid-replay")
    expected = sent0 + dropped0 + EVENTS_PER_ROW * ROWS
    sent, dropped = settled_totals(stack, expected)
    assert (sent - sent0, dropped - dropped0) == (EVENTS_PER_ROW * ROWS, 0)
    assert stack.status()["processes"]["request-logger"]["pid"] == victim["pid"]  # not restarted
