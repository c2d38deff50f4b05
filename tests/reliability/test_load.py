"""Load that a real A/B test puts on the stack: many feedback clients at once, and a soak.

- 8 clients send feedback to the arms' own endpoints at the same time: Prometheus must count
  exactly what was sent, per arm, requests and rewards. (seldon-core updates its counters with
  a read-modify-write keyed by process; with several gunicorn threads, serving/microservice.py
  makes each update whole - without that, concurrent feedback loses increments.)
- A soak of at least 60 s at a fixed rate: no error, and the memory of every process of the stack
  stays flat (start and end RSS of each are printed).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter

import psutil
import pytest
import requests

import experiment
from serving import prometheus
from serving.endpoints import Endpoints
from serving.local import stack_pids
from tests.reliability.load import PacedReplay
from tests.traffic import PREDICTION, metric_sum_by_predictor

pytestmark = [pytest.mark.stack, pytest.mark.slow]

CLIENTS = 8
PER_CLIENT = 150
REWARDS = (0.25, 0.5, 0.75, 1.0)  # exact in float32, which is how seldon-core stores a reward
SOAK_SECONDS = 60
SOAK_RATE = 50  # rows/s, each a prediction and a feedback


def test_feedback_from_8_concurrent_clients_is_counted_exactly_per_arm(private_stack):
    stack, url = private_stack, private_stack.prometheus_url
    arms = sorted(stack.predictor_urls)
    answers = {
        arm: requests.post(
            f"{stack.predictor_urls[arm]}/api/v1.0/predictions", json=PREDICTION, timeout=10
        ).json()
        for arm in arms
    }
    experiment.wait_for_scrape(url, time.time())
    count_before = metric_sum_by_predictor(url, "seldon_api_model_feedback_total")
    reward_before = metric_sum_by_predictor(url, "seldon_api_model_feedback_reward_total")
    sent: Counter = Counter()
    rewarded: Counter = Counter()
    failures: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(CLIENTS)

    def client(seed: int) -> None:
        rng = random.Random(seed)
        session = requests.Session()  # a client of its own: its own connections
        start.wait()
        for _ in range(PER_CLIENT):
            arm, reward = rng.choice(arms), rng.choice(REWARDS)
            body = {"request": PREDICTION, "response": answers[arm], "reward": reward}
            response = session.post(f"{stack.predictor_urls[arm]}/api/v1.0/feedback", json=body, timeout=30)
            with lock:
                if response.status_code == 200:
                    sent[arm] += 1
                    rewarded[arm] += reward
                else:
                    failures.append(f"{arm}: {response.status_code} {response.text[:200]}")

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, failures[:5]
    assert sum(sent.values()) == CLIENTS * PER_CLIENT

    experiment.wait_for_scrape(url, time.time())
    count_after = metric_sum_by_predictor(url, "seldon_api_model_feedback_total")
    reward_after = metric_sum_by_predictor(url, "seldon_api_model_feedback_reward_total")
    assert {arm: count_after[arm] - count_before.get(arm, 0) for arm in arms} == {
        arm: sent[arm] for arm in arms
    }
    assert {arm: reward_after[arm] - reward_before.get(arm, 0) for arm in arms} == {
        arm: rewarded[arm] for arm in arms
    }


def stack_processes(stack) -> dict[str, psutil.Process]:
    """Every process of the stack, named by its part and its role in it."""
    state = stack.status()
    groups = {proc["pid"]: name for name, proc in state["processes"].items()}  # each part is a process group
    named = {}
    for pid in stack_pids(stack.state_dir):
        try:
            process = psutil.Process(pid)
            part = groups.get(os.getpgid(pid), "supervisor" if pid == state["supervisor"] else "?")
            ports = {c.laddr.port for c in process.net_connections("inet") if c.status == psutil.CONN_LISTEN}
        except (psutil.Error, ProcessLookupError):
            continue
        role = ""
        if part.startswith("model-"):  # seldon-core: two gunicorn servers and a metrics store
            leader_ports = {
                c.laddr.port
                for c in psutil.Process(os.getpgid(pid)).net_connections("inet")
                if c.status == psutil.CONN_LISTEN
            }
            if pid == os.getpgid(pid):
                role = "REST gunicorn master"
            elif ports and ports == leader_ports:
                role = "REST worker (the model)"
            elif ports:
                role = "metrics gunicorn " + ("master" if process.ppid() == os.getpgid(pid) else "worker")
            else:
                role = "metrics store (multiprocessing Manager)"
        named[f"{part} {role} (pid {pid})".replace("  ", " ")] = process
    return dict(sorted(named.items()))


def rss_mib(processes: dict[str, psutil.Process]) -> dict[str, float]:
    return {name: round(p.memory_info().rss / 2**20, 1) for name, p in processes.items() if p.is_running()}


def test_a_60_s_soak_at_a_fixed_rate_has_no_error_and_flat_memory(private_stack):
    stack, url = private_stack, private_stack.prometheus_url
    since = experiment.wait_for_scrape(url)
    processes = stack_processes(stack)
    with PacedReplay(Endpoints.local(stack.state_dir), rate=SOAK_RATE, max_seconds=SOAK_SECONDS + 5) as load:
        time.sleep(
            5
        )  # warm: first allocations, connection pools, Prometheus's first samples of the new series
        start = rss_mib(processes)
        time.sleep(SOAK_SECONDS)
        end = rss_mib(processes)
    log = load.log()
    seconds = log["finished"].max() - log["started"].min()
    print(f"\nsoak: {len(log)} rows ({2 * len(log)} requests) in {seconds:.0f} s, {load.late} started late")
    print(f"{'process':<44} {'start MiB':>10} {'end MiB':>10} {'growth':>8}")
    for name in start:
        print(
            f"{name:<44} {start[name]:>10.1f} {end.get(name, float('nan')):>10.1f} "
            f"{end.get(name, 0) - start[name]:>+8.1f}"
        )

    assert seconds >= SOAK_SECONDS
    assert len(log) >= SOAK_RATE * SOAK_SECONDS
    assert load.late <= len(log) * 0.01, "the load generator could not keep the rate"
    # attempts: requests sent for the row; 2 (one prediction, one feedback) when nothing was retried
    bad = log[(log["predict_status"] != 200) | (log["feedback_status"] != 200) | (log["attempts"] != 2)]
    assert bad.empty, bad.head().to_string()
    assert set(end) == set(start), "a process of the stack died or was replaced during the soak"
    grew = {
        name: (start[name], end[name])
        for name in start
        if end[name] - start[name] > max(16.0, 0.10 * start[name])
    }
    assert not grew, f"memory grew by more than max(16 MiB, 10%): {grew}"
    # and the books balance after 6,000 requests: the log per arm == Prometheus per arm, exactly
    experiment.cross_check(log, url, since=since)
    errors = prometheus.query(url, 'sum(seldon_api_executor_server_requests_seconds_count{code!="200"})')
    assert not errors or float(errors[0]["value"][1]) == 0, errors
