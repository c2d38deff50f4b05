"""The shadow's paired evaluation: pairing by request id, the paired test against scipy, sample sizes
against the noncentral t, and simulations of its error rates on A/A and A/B data."""

from __future__ import annotations

import asyncio
import json
import math
import time

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import feedback
from experiment import paired
from experiment.stats import required_n
from serving.request_logger import CE_REQUEST, CE_RESPONSE, RequestLogger, Sink
from serving.request_logger.sink import parse_event

ALPHA = 0.05


def response(value: float, node: str) -> bytes:
    return json.dumps(
        {"data": {"names": [], "ndarray": [value]}, "meta": {"requestPath": {node: "img"}}}
    ).encode()


def record(kind: str, predictor: str, puid: str, body: bytes) -> dict:
    """One sink record, made by the sink's own parser from the executor's headers."""
    headers = {
        "Ce-Specversion": "1.0",
        "Ce-Id": f"{predictor}-{kind}-{puid}",
        "Ce-Type": kind,
        "Ce-Source": "http://:8000/",
        "Ce-Namespace": "default",
        "Ce-Inferenceservicename": "wines-classifier",
        "Ce-Endpoint": predictor,
        "Ce-Modelid": predictor,
        "Ce-Requestid": puid,
        "Content-Type": "application/json",
    }
    return parse_event(headers, body)


def correlated_rewards(rng, n: int, effect: float = 0.0, rho: float = 0.8, sd: float = 0.2):
    """Rewards of two models on the same n rows: correlated through the row, shifted by ``effect``."""
    shared = rng.normal(size=n)
    a = 0.6 + sd * (math.sqrt(rho) * shared + math.sqrt(1 - rho) * rng.normal(size=n))
    b = 0.6 + effect + sd * (math.sqrt(rho) * shared + math.sqrt(1 - rho) * rng.normal(size=n))
    return a, b


def pairs_of(a, b) -> paired.Pairs:
    frame = pd.DataFrame({"reward_main": a, "reward_shadow": b})
    frame["difference"] = frame["reward_shadow"] - frame["reward_main"]
    return paired.Pairs(frame, "model-a", "model-b", 0, 0)


# ------------------------------------------------------------------------------------- pairing
def test_responses_pair_up_by_request_id():
    events = [
        record(CE_REQUEST, "model-a", "p1", b'{"data": {"ndarray": [[1]]}}'),
        record(CE_RESPONSE, "model-a", "p1", response(5.0, "model-a")),
        record(CE_RESPONSE, "model-b", "p1", response(6.0, "model-b")),
        record(CE_RESPONSE, "model-a", "p2", response(5.5, "model-a")),
        record(CE_RESPONSE, "model-b", "p2", response(5.0, "model-b")),
        record(CE_RESPONSE, "model-b", "p2", response(9.0, "model-b")),  # a duplicate: the first counts
        record(CE_RESPONSE, "model-a", "p3", response(7.0, "model-a")),  # the shadow's event was lost
        record(CE_RESPONSE, "model-b", "p4", b'{"status": {"code": 500}}'),  # an error holds no prediction
        record(CE_RESPONSE, "model-a", "p4", response(4.0, "model-a")),
    ]
    pairs = paired.pair_events(events, main="model-a", shadow="model-b")
    assert pairs.frame.to_dict("index") == {
        "p1": {"main": 5.0, "shadow": 6.0},
        "p2": {"main": 5.5, "shadow": 5.0},
    }
    assert (pairs.main_only, pairs.shadow_only) == (2, 0)

    scored = paired.with_truth(pairs, {"p1": 6.0, "p2": 5.5})
    assert scored.frame.loc["p1", "reward_shadow"] == feedback.reward(6.0, 6.0)
    assert scored.frame.loc["p1", "difference"] == feedback.reward(6.0, 6.0) - feedback.reward(6.0, 5.0)
    assert scored.frame.loc["p2", "difference"] < 0  # the champion was right on p2


def test_pairing_without_shared_request_ids_says_why():
    events = [
        record(CE_RESPONSE, "model-a", "executor-a-puid", response(5.0, "model-a")),
        record(CE_RESPONSE, "model-b", "executor-b-puid", response(6.0, "model-b")),
    ]
    with pytest.raises(paired.PairingError, match="Seldon-Puid"):
        paired.pair_events(events, "model-a", "model-b")
    with pytest.raises(paired.PairingError, match="model-c"):
        paired.pair_events(events, "model-a", "model-c")


def test_replay_log_pairs_with_the_shadows_events():
    log = pd.DataFrame(
        {
            "request_id": [0, 1, 2],
            "puid": ["u0", "u1", "u2"],
            "arm": ["model-a"] * 3,
            "truth": [5.0, 6.0, 7.0],
            "prediction": [5.2, 5.5, 6.0],
            "reward": [feedback.reward(5.0, 5.2), feedback.reward(6.0, 5.5), feedback.reward(7.0, 6.0)],
            "predict_status": [200, 200, 200],
        }
    )
    events = [
        record(CE_RESPONSE, "model-b", u, response(v, "model-b")) for u, v in (("u0", 5.0), ("u2", 6.8))
    ]
    pairs = paired.from_replay(log, events, shadow="model-b")
    assert list(pairs.frame.index) == ["u0", "u2"] and (pairs.main, pairs.main_only) == ("model-a", 1)
    assert pairs.frame.loc["u2", "reward_main"] == log.loc[2, "reward"]
    with pytest.raises(paired.PairingError, match="Seldon-Puid"):
        paired.from_replay(log.drop(columns="puid"), events, shadow="model-b")


def test_logged_events_pair_up_end_to_end(tmp_path):
    """RequestLogger -> the sink over HTTP on loopback -> pairs: what the shadow stack produces."""
    rng = np.random.default_rng(7)
    truth = {f"puid-{i}": float(rng.integers(4, 8)) for i in range(60)}

    async def scenario():
        sink = Sink(tmp_path)
        await sink.start()
        names = {"namespace": "default", "deployment": "wines-classifier"}
        async with (
            RequestLogger(sink.url, predictor="model-a", node="model-a", **names) as a,
            RequestLogger(sink.url, predictor="model-b", node="model-b", **names) as b,
        ):
            for puid, t in truth.items():
                for log, noise in ((a, 0.7), (b, 0.5)):
                    log.log_request(puid, b"{}")
                    log.log_response(puid, response(t + rng.normal(0, noise), log.node))
            deadline = time.monotonic() + 10
            while sink.received < 4 * len(truth) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        await sink.close()

    asyncio.run(scenario())
    result = paired.evaluate(tmp_path, truth, main="model-a", shadow="model-b")
    assert len(result.pairs) == len(truth) and result.pairs.main_only == result.pairs.shadow_only == 0
    assert result.test.n == len(truth)
    assert "paired requests" in result.summary()


# ------------------------------------------------------------------------------------ the test
def test_paired_test_is_scipys_ttest_rel():
    rng = np.random.default_rng(1)
    a, b = correlated_rewards(rng, 150, effect=0.02)
    result = paired.paired_test(pairs_of(a, b), alpha=ALPHA)
    reference = stats.ttest_rel(b, a)
    assert result.t == pytest.approx(reference.statistic, rel=1e-12)
    assert result.p == pytest.approx(reference.pvalue, rel=1e-12)
    low, high = reference.confidence_interval(1 - ALPHA)
    assert (result.ci_low, result.ci_high) == (pytest.approx(low), pytest.approx(high))
    assert result.mean == pytest.approx(np.mean(b - a))
    assert result.wins + result.losses + result.ties == 150 and result.wins == int((b > a).sum())
    with pytest.raises(paired.PairingError):
        paired.paired_test([0.1])
    with pytest.raises(paired.PairingError, match="with_truth"):
        paired.paired_test(paired.Pairs(pd.DataFrame({"main": [1.0], "shadow": [2.0]}), "a", "b", 0, 0))


def test_false_positive_rate_on_aa_data_is_alpha():
    """A/A: both models equally good (same reward distribution on every row); 2000 experiments."""
    rng = np.random.default_rng(2024)
    runs, n = 2000, 100
    rejected = sum(
        paired.paired_test(pairs_of(*correlated_rewards(rng, n)), ALPHA).significant for _ in range(runs)
    )
    rate = rejected / runs
    spread = 3 * math.sqrt(ALPHA * (1 - ALPHA) / runs)  # binomial, 3 sd
    assert abs(rate - ALPHA) < spread, f"false-positive rate {rate:.3f}, expected {ALPHA} ± {spread:.3f}"


# ------------------------------------------------------------------------- how many requests
def paired_power_reference(n: int, effect: float, sd: float, alpha: float) -> float:
    """Power of the two-sided one-sample t-test on n differences, from the noncentral t."""
    df, nc = n - 1, effect / (sd / math.sqrt(n))
    critical = stats.t.ppf(1 - alpha / 2, df)
    return stats.nct.sf(critical, df, nc) + stats.nct.cdf(-critical, df, nc)


def test_required_requests_match_the_noncentral_t():
    rng = np.random.default_rng(3)
    a, b = correlated_rewards(rng, 2000, effect=0.01, rho=0.9)
    sizes = paired.required_requests(pairs_of(a, b), effect=0.01, alpha=ALPHA, power=0.8)
    sd_d = float(np.std(b - a, ddof=1))
    n = int(sizes.paired)
    assert (
        paired_power_reference(n, 0.01, sd_d, ALPHA) >= 0.8 > paired_power_reference(n - 1, 0.01, sd_d, ALPHA)
    )
    z = stats.norm.ppf(1 - ALPHA / 2) + stats.norm.ppf(0.8)
    assert n == pytest.approx(z**2 * sd_d**2 / 0.01**2, rel=0.05)  # the textbook approximation, a bit below
    assert sizes.ab_per_arm == required_n(0.01, np.std(a, ddof=1), np.std(b, ddof=1), ALPHA, 0.8)
    assert sizes.ab_total == 2 * sizes.ab_per_arm
    # with correlation 0.9, sd_d² = 2σ²(1-ρ): the paired design needs about 2/(2·0.1)... times fewer
    assert sizes.correlation == pytest.approx(0.9, abs=0.03)
    assert sizes.ratio == pytest.approx(2 / (1 - sizes.correlation), rel=0.1)
    assert "fewer" in sizes.summary()


def test_power_at_the_required_n_is_reached_in_simulation():
    rng = np.random.default_rng(4)
    effect = 0.02
    a, b = correlated_rewards(rng, 5000, effect=effect)
    n = int(paired.required_requests(pairs_of(a, b), effect=effect).paired)
    runs = 2000
    hits = sum(
        paired.paired_test(pairs_of(*correlated_rewards(rng, n, effect=effect))).significant
        for _ in range(runs)
    )
    assert abs(hits / runs - 0.8) < 3 * math.sqrt(0.8 * 0.2 / runs) + 0.01


def test_on_the_wine_hold_out_the_paired_design_needs_fewer_requests():
    """The real arms a and b (training/arms.py) on the hold-out rows: the measured ratio, not a claim."""
    from sklearn.linear_model import ElasticNet

    from training.arms import ARMS
    from training.data import FEATURES, SEED, TARGET, load_wine_quality, split_holdout

    train, holdout = split_holdout(load_wine_quality(), seed=SEED)
    predictions = {}
    for alias in ("a", "b"):
        params = ARMS[alias]
        model = ElasticNet(alpha=params["alpha"], l1_ratio=params["l1_ratio"], random_state=SEED)
        predictions[alias] = model.fit(train[FEATURES], train[TARGET]).predict(holdout[FEATURES])
    ids = [str(i) for i in range(len(holdout))]
    frame = pd.DataFrame({"main": predictions["b"], "shadow": predictions["a"]}, index=ids)
    pairs = paired.with_truth(
        paired.Pairs(frame, "model-b", "model-a", 0, 0), dict(zip(ids, holdout[TARGET], strict=True))
    )
    sizes = paired.required_requests(pairs)
    assert sizes.correlation > 0  # the models find the same rows hard
    assert sizes.paired < sizes.ab_total
    print(sizes.summary())


# ------------------------------------------------------------------------- the sequential test
def test_sequential_paired_test_is_always_valid_on_aa_data():
    sequential = pytest.importorskip("experiment.sequential", reason="experiment/sequential.py (issue 12)")
    design = sequential.Design(mde=0.02, n_max=400, sd=0.12)
    rng = np.random.default_rng(5)
    runs = 400
    stops = [paired.sequential_test(pairs_of(*correlated_rewards(rng, 400)), design) for _ in range(runs)]
    rate = sum(s.decision != "continue" for s in stops) / runs
    # looked at after every request, yet at most α (plus sampling noise)
    assert rate <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / runs), rate
    assert all(s.p >= 0 and s.p <= 1 for s in stops)


def test_sequential_paired_test_finds_a_real_effect_and_covers_it():
    sequential = pytest.importorskip("experiment.sequential", reason="experiment/sequential.py (issue 12)")
    design = sequential.Design(mde=0.02, n_max=2000, sd=0.12)
    rng = np.random.default_rng(6)
    result = paired.sequential_test(pairs_of(*correlated_rewards(rng, 2000, effect=0.03)), design)
    assert result.decision == "winner" and result.stopped_at < 2000
    assert result.cs_low <= 0.03 <= result.cs_high and result.p < ALPHA
    assert np.isnan(result.log_evidence[: design.min_n - 1]).all()


# ------------------------------------------------------------------------- the notebook's shadow step
def test_the_shadow_manifest_names_its_roles_and_takes_a_cluster_logger_url(tmp_path):
    import yaml

    from experiment.shadow_run import shadow_roles, with_logger_url
    from tests.serving.test_shadow_manifest import SHADOW

    assert shadow_roles(SHADOW) == ("model-b", "model-a")  # the notebook's champion and challenger
    with pytest.raises(paired.PairingError, match="one main predictor and one shadow"):
        shadow_roles(SHADOW.parent / "model-a-b.yaml")
    url = "http://request-logger.seldon.svc.cluster.local:8004/"
    copied = with_logger_url(SHADOW, tmp_path / "copy.yaml", url)
    loggers = [p["graph"]["logger"] for p in yaml.safe_load(copied.read_text())["spec"]["predictors"]]
    assert loggers == [{"mode": "all", "url": url}] * 2
    assert "# The first step of a release" in copied.read_text()  # comments kept
    assert with_logger_url(SHADOW, tmp_path / "same.yaml", None).read_text() == SHADOW.read_text()


def test_the_shadow_and_the_ab_test_get_different_rows():
    from experiment.shadow_run import ab_limit, shadow_rows
    from serving.replay import holdout_rows

    every = holdout_rows()
    shadow = shadow_rows(300)
    ab = holdout_rows(limit=ab_limit(300))
    assert len(shadow) == 300 and len(ab) == len(every) - 300
    assert not set(shadow.index) & set(ab.index)  # two live periods, two sets of requests
    assert ab_limit(300, limit=100) == 100
    with pytest.raises(ValueError, match="between 1 and"):
        shadow_rows(len(every))


def test_waiting_for_the_shadows_answers_returns_once_all_arrived(tmp_path):
    from experiment.shadow_run import wait_for_answers

    folder = tmp_path / "request-logs"
    folder.mkdir()
    events = [record(CE_RESPONSE, "model-a", u, response(5.0, "model-a")) for u in ("u0", "u1")]
    (folder / "inference-log-seldon-default-wines-classifier-model-a.jsonl").write_text(
        "".join(json.dumps(e) + "\n" for e in events)
    )
    assert len(wait_for_answers(folder, "model-a", ["u0", "u1"], timeout=5)) == 2
    assert len(wait_for_answers(folder, "model-a", ["u0", "u2"], timeout=0.3)) == 2  # u2 never came
