"""analysis.py: the reward, the statistics, attribution and the exact feedback cross-check.

Statistics are checked twice: on samples drawn from real error populations (an ElasticNet's
errors on the hold-out rows), where the truth is known and coverage, power and the false-decision
rate can be measured; and end to end on the real local stack - served by seldon-core, counted
by Prometheus - where the verdict must pick the better arm and declare no decision between two
copies of the same model.
"""

from __future__ import annotations

import copy
import math
import os
import signal
import time

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

import analysis
import feedback
from serving import deployment as sdep
from tests.conftest import WORSE_ARM

REPO = analysis.REPO


# ============================================================================ reward
finite = st.floats(min_value=-1e150, max_value=1e150, allow_nan=False, allow_infinity=False)


@given(truth=finite, prediction=finite)
def test_reward_is_bounded_and_never_zero(truth, prediction):
    r = feedback.reward(truth, prediction)
    assert 0 < r <= 1
    assert np.float32(r) > 0  # seldon-core carries the reward as float32 and skips exactly 0


@given(e1=finite, e2=finite)
def test_reward_is_monotone_in_the_absolute_error(e1, e2):
    small, large = sorted((abs(e1), abs(e2)))
    assert feedback.reward(0.0, small) >= feedback.reward(0.0, large)
    assert feedback.reward(0.0, small) == feedback.reward(0.0, -small)  # over- and under-estimates alike


def test_reward_is_one_for_an_exact_prediction_and_falls_with_the_error():
    rewards = [feedback.reward(6.0, 6.0 + e) for e in (0.0, 0.5, 1.0, 2.0, 10.0)]
    assert rewards[0] == 1.0
    assert all(a > b for a, b in zip(rewards, rewards[1:]))


@pytest.mark.parametrize("truth, prediction", [(1e308, -1e308), (-1.7e308, 1.7e308)])
def test_reward_of_extreme_but_finite_numbers_is_the_floor_not_an_error(truth, prediction):
    # the difference overflows to infinity although both numbers are finite
    assert feedback.reward(truth, prediction) == feedback.REWARD_FLOOR


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_reward_refuses_non_finite_numbers(bad):
    with pytest.raises(ValueError, match="finite"):
        feedback.reward(bad, 6.0)


# ============================================================================ populations
@pytest.fixture(scope="module")
def populations() -> dict[str, np.ndarray]:
    """Hold-out errors (truth - prediction) of arm a's model and of the mean-predicting model.

    Fitted here with scikit-learn like train.py does: a finite population whose true mean reward
    and RMSE are known, to draw samples from.
    """
    from sklearn.linear_model import ElasticNet

    from training.arms import ARMS
    from training.data import FEATURES, SEED, TARGET, load_wine_quality, split_holdout

    train, holdout = split_holdout(load_wine_quality(), seed=SEED)
    errors = {}
    for name, params in (("model-a", ARMS["a"]), ("model-worse", WORSE_ARM)):
        model = ElasticNet(alpha=params["alpha"], l1_ratio=params["l1_ratio"], random_state=SEED).fit(
            train[FEATURES], train[TARGET]
        )
        errors[name] = (holdout[TARGET] - model.predict(holdout[FEATURES])).to_numpy()
    return errors


def rewards_of(errors: np.ndarray) -> np.ndarray:
    return np.array([feedback.reward(e, 0.0) for e in errors])


def synthetic_log(samples: dict[str, np.ndarray], truth: float = 6.0) -> pd.DataFrame:
    """A feedback.py log in which arm ``name`` made the errors ``samples[name]``."""
    rows = []
    for arm, errors in samples.items():
        for e in errors:
            rows.append(
                {
                    "arm": arm,
                    "node": arm,
                    "truth": truth,
                    "prediction": truth - e,
                    "reward": feedback.reward(truth, truth - e),
                    "feedback_via": "arm",
                    "feedback_arm": arm,
                    "predict_status": 200,
                    "feedback_status": 200,
                    "attempts": 1,
                    "error": "",
                }
            )
    log = pd.DataFrame(rows, columns=feedback.LOG_COLUMNS)
    log["request_id"] = range(len(log))
    return log


def test_intervals_cover_the_true_mean_reward_and_rmse(populations):
    """t-interval for the mean reward, BCa bootstrap for the RMSE: ~95% coverage on real errors."""
    population = populations["model-a"]
    true_reward, true_rmse = rewards_of(population).mean(), np.sqrt(np.mean(population**2))
    rng = np.random.default_rng(7)
    runs, n = 300, 300
    covered = {"reward": 0, "rmse": 0}
    for i in range(runs):
        s = analysis.arm_stats(synthetic_log({"x": rng.choice(population, n)}), resamples=1000, seed=i)["x"]
        covered["reward"] += s.reward_ci[0] <= true_reward <= s.reward_ci[1]
        covered["rmse"] += s.rmse_ci[0] <= true_rmse <= s.rmse_ci[1]
    # binomial sd of the coverage over 300 runs is 1.3 points
    assert 0.91 <= covered["reward"] / runs <= 0.985, covered
    assert 0.90 <= covered["rmse"] / runs <= 0.985, covered


def test_required_n_matches_the_textbook_and_gives_the_promised_power(populations):
    # Cohen's table / G*Power: two-sided alpha 0.05, power 0.8, d = 0.2, 0.5, 0.8 -> 394, 64, 26 per group
    assert [analysis.required_n(d, 1.0, 1.0) for d in (0.2, 0.5, 0.8)] == [394, 64, 26]
    assert analysis.required_n(0.0, 1.0, 1.0) == math.inf

    a, worse = rewards_of(populations["model-a"]), rewards_of(populations["model-worse"])
    n = int(analysis.required_n(a.mean() - worse.mean(), a.std(), worse.std()))
    rng = np.random.default_rng(11)
    trials = 1000
    x, y = rng.choice(a, (trials, n)), rng.choice(worse, (trials, n))
    rejected = stats.ttest_ind(x, y, axis=1, equal_var=False).pvalue < 0.05
    assert 0.76 <= rejected.mean() <= 0.84, (n, rejected.mean())  # 0.80 +- 3 binomial sd


def test_two_arms_drawn_from_one_model_give_a_decision_at_rate_alpha_only(populations):
    population = populations["model-a"]
    rng = np.random.default_rng(3)
    trials, n = 400, 300
    decisions = 0
    for i in range(trials):
        v = analysis.verdict(
            synthetic_log({"model-a": rng.choice(population, n), "model-b": rng.choice(population, n)}),
            resamples=200,
            seed=i,
        )
        decisions += v.significant
    assert 0.02 <= decisions / trials <= 0.085, decisions  # 5% +- 3 binomial sd


def test_verdict_names_the_better_arm_whatever_the_label_order(populations):
    rng = np.random.default_rng(5)
    good, bad = rng.choice(populations["model-a"], 3000), rng.choice(populations["model-worse"], 3000)
    for names in (
        ("model-a", "model-b"),
        ("model-b", "model-a"),
    ):  # the better arm first, then second by name
        v = analysis.verdict(synthetic_log({names[0]: good, names[1]: bad}))
        s = v.stats
        assert v.significant and v.winner == names[0]
        assert v.difference == pytest.approx(s[names[0]].mean_reward - s[names[1]].mean_reward)
        assert 0 < v.difference_ci[0] < v.difference < v.difference_ci[1]
        assert v.rmse_difference < 0 and v.rmse_difference_ci[1] < 0  # the better arm errs less
        assert v.sentence.startswith(
            f"{names[0]} wins: mean reward {s[names[0]].mean_reward:.3f} vs {s[names[1]].mean_reward:.3f}"
        )
        assert f"n = {s[names[0]].n}/{s[names[1]].n}" in v.sentence


def test_no_decision_says_how_many_requests_are_needed(populations):
    rng = np.random.default_rng(9)
    log = synthetic_log(
        {
            "model-a": rng.choice(populations["model-a"], 40),
            "model-b": rng.choice(populations["model-worse"], 40),
        }
    )
    v = analysis.verdict(log)
    assert not v.significant and v.winner is None
    assert v.required_n > 40 and v.more_requests_needed == v.required_n - 40
    assert v.sentence.startswith("no decision between model-a and model-b")
    assert f"{v.required_n:,.0f} requests per arm" in v.sentence


def test_attribution_counts_where_each_reward_landed():
    log = synthetic_log({"model-a": np.array([0.0, 0.0, 1.0, 1.0]), "model-b": np.array([3.0, 3.0])})
    log.loc[[0, 4], "feedback_arm"] = ["model-b", "model-a"]  # two rewards landed on the other arm
    r0, r1, r3 = (feedback.reward(e, 0.0) for e in (0.0, 1.0, 3.0))
    result = analysis.attribution(log)
    assert result.fraction == pytest.approx(4 / 6) and result.n == 6
    table = result.table
    assert table.loc["model-a", "true_mean_reward"] == pytest.approx(np.mean([r0, r0, r1, r1]))
    assert table.loc["model-a", "dashboard_mean_reward"] == pytest.approx(np.mean([r0, r1, r1, r3]))
    assert table.loc["model-b", "dashboard_mean_reward"] == pytest.approx(np.mean([r0, r3]))


def test_bad_logs_get_a_clear_error(tmp_path):
    good = synthetic_log({"model-a": np.array([0.1, 0.2, 0.3]), "model-b": np.array([0.4, 0.5, 0.6])})
    with pytest.raises(analysis.LogError, match="reward"):
        analysis.verdict(good.drop(columns="reward"))
    with pytest.raises(analysis.LogError, match="two arms"):
        analysis.verdict(good[good["arm"] == "model-a"])
    three = pd.concat([good, good.assign(arm="model-c")])
    with pytest.raises(analysis.LogError, match="two arms"):
        analysis.verdict(three)
    assert analysis.verdict(three, arms=("model-a", "model-c")).first in ("model-a", "model-c")
    with pytest.raises(analysis.LogError, match="finite"):
        analysis.verdict(good.assign(reward=[0.5, np.nan, 0.5, 0.5, 0.5, 0.5]))
    with pytest.raises(analysis.LogError, match="fewer than 2"):
        analysis.verdict(good.drop(index=[1, 2]))
    with pytest.raises(analysis.LogError, match="cannot read"):
        analysis.verdict(tmp_path / "missing.csv")
    with pytest.raises(analysis.LogError, match="feedback_arm"):
        analysis.attribution(good.drop(columns="feedback_arm"))
    with pytest.raises(ValueError, match="factor of at least 4"):
        analysis.rate_window(2, factor=2)


def test_counter_increase_is_exact_across_resets():
    samples = [(1.0, 5.0), (3.0, 8.0), (5.0, 2.0), (7.0, 4.0)]  # a restart between 3 and 5
    assert analysis._increase(samples, since=2.0) == 3 + 2 + 2
    assert analysis._increase(samples, since=None) == 5 + 3 + 2 + 2
    assert analysis._increase(samples, since=9.0) == 0


def test_queries_use_the_executor_labels_and_windows_of_four_scrapes():
    assert analysis.rate_window(2) == "8s" and analysis.rate_window(15) == "60s"
    for key, expr in analysis.queries(analysis.rate_window(2)).items():
        assert "status" not in expr and "/Predict" not in expr, key
        assert "[8s]" in expr and "[5s]" not in expr and "[20s]" not in expr, key
        assert expr.count("sum by (predictor_name") == expr.count("rate("), key  # every rate summed per arm
    assert 'code=~"4.."' in analysis.queries("8s")["errors_4xx"]
    assert 'service="/predict"' in analysis.queries("8s")["latency_p50"]


# ============================================================================ the shared stack
def replay_window(stack, **options):
    """A replay bracketed by a Prometheus mark before it and its end time after it."""
    since = analysis.mark(stack.prometheus_url)
    result = feedback.replay(feedback.Endpoints.local(stack.state_dir), progress=False, **options)
    return result, since, time.time()


@pytest.mark.stack
def test_feedback_to_the_serving_arm_lands_there_and_nothing_is_lost(stack, tmp_path):
    result, since, end = replay_window(stack, limit=300, log_path=tmp_path / "arm.csv")
    log = result.log
    assert (log["feedback_status"] == 200).sum() == len(log) == 300  # every row replayed got a 200
    assert analysis.attribution(log).fraction == 1.0
    table = analysis.cross_check(log, stack.prometheus_url, since=since, until=end)
    assert table["prometheus"].sum() == table["log"].sum() == 300
    assert set(table.index) == set(sdep.load(stack.state["manifest"]).traffic)


@pytest.mark.stack
def test_feedback_through_the_ingress_lands_on_the_wrong_arm_measurably(stack, tmp_path):
    traffic = sdep.load(stack.state["manifest"]).traffic
    result, since, end = replay_window(
        stack, limit=300, feedback_via="ingress", log_path=tmp_path / "ingress.csv"
    )
    attributed = analysis.attribution(result.log)
    # a feedback lands on the serving arm only when the ingress happens to pick it again
    expected = sum((w / 100) ** 2 for w in traffic.values())
    assert attributed.fraction < 0.75, attributed.summary()
    assert stats.binomtest(round(attributed.fraction * attributed.n), attributed.n, expected).pvalue > 1e-4

    # Prometheus counts the feedback where it landed - exactly what the log says ...
    analysis.cross_check(result.log, stack.prometheus_url, since=since, until=end)
    rewards = analysis.counted(stack.prometheus_url, analysis.REWARD, since)
    counts = analysis.counted(stack.prometheus_url, analysis.FEEDBACK, since)
    dashboard = (rewards / counts).sort_index()
    # ... so the dashboard's mean reward is the log grouped by the counting arm (float32 sums),
    table = attributed.table.sort_index()
    assert dashboard.to_numpy() == pytest.approx(table["dashboard_mean_reward"].to_numpy(), rel=1e-5)
    # which is not each model's own mean reward
    assert (table["dashboard_mean_reward"] - table["true_mean_reward"]).abs().max() > 1e-4, (
        attributed.summary()
    )


# ============================================================================ a stack of our own
def write_manifest(path, arms: list[tuple[str, str, int]]):
    """The repository's manifest with predictors (name, registry alias, traffic), style kept."""
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.indent(mapping=2, sequence=4, offset=2)
    document = yaml.load((REPO / "serving" / "model-a-b.yaml").read_text())
    template = document["spec"]["predictors"][0]
    predictors = []
    for name, alias, traffic in arms:
        p = copy.deepcopy(template)
        p["name"], p["traffic"] = name, traffic
        p["graph"]["name"], p["graph"]["modelUri"] = name, f"models:/wines-classifier@{alias}"
        p["componentSpecs"][0]["spec"]["containers"][0]["name"] = name
        predictors.append(p)
    document["spec"]["predictors"] = predictors
    with open(path, "w") as f:
        yaml.dump(document, f)
    return path


@pytest.fixture(scope="module")
def trio(worse_arm, tmp_path_factory):
    """model-a (@a) and model-worse (@worse) at 50/50, and model-twin: a second copy of @a, idle."""
    from serving.local import LocalStack

    folder = tmp_path_factory.mktemp("trio")
    manifest = write_manifest(
        folder / "trio.yaml", [("model-a", "a", 50), ("model-worse", "worse", 50), ("model-twin", "a", 0)]
    )
    running = LocalStack.up(manifest, port=0, state_dir=folder / "stack", timeout=300)
    yield running, manifest
    running.down()


def set_split(stack, manifest, split):
    sdep.set_traffic(manifest, split)
    assert stack.reload()["traffic"] == split


@pytest.mark.stack
@pytest.mark.slow
def test_verdict_picks_the_clearly_better_arm_on_the_real_stack(trio, populations, tmp_path):
    """@a against the mean-predicting model, every hold-out row replayed twice (~1,960 per arm).

    At that size the Welch test's power for the difference these two models make on the
    hold-out rows is checked first to be above 99%, so a miss is a bug, not bad luck.
    """
    a, worse = rewards_of(populations["model-a"]), rewards_of(populations["model-worse"])
    assert analysis.power(1100, a.mean() - worse.mean(), a.std(), worse.std()) > 0.99  # the design holds
    stack, manifest = trio
    set_split(stack, manifest, {"model-a": 50, "model-worse": 50, "model-twin": 0})
    first, since, _ = replay_window(stack, log_path=tmp_path / "1.csv")
    second = feedback.replay(
        feedback.Endpoints.local(stack.state_dir), log_path=tmp_path / "2.csv", progress=False
    )
    log = pd.concat([first.log, second.log], ignore_index=True)
    analysis.cross_check(log, stack.prometheus_url, since=since)

    v = analysis.verdict(log)
    assert v.significant and v.winner == "model-a", v.sentence
    assert v.rmse_difference_ci[1] < 0, v  # and its RMSE is lower, with 95% confidence
    assert v.stats["model-a"].rmse_ci[1] < v.stats["model-worse"].rmse_ci[0]


@pytest.mark.stack
def test_no_decision_between_two_copies_of_one_model_on_the_real_stack(trio, tmp_path):
    """model-a and model-twin serve the same registered version; each gets the same 400 rows.

    With a random split, two identical models still produce a "decision" 5% of the time by
    design (that rate is checked above on 400 simulated splits); giving each copy the very same
    requests instead makes the expected answer certain, and checks that both copies really
    serve the same model, prediction for prediction.
    """
    stack, manifest = trio
    try:
        set_split(stack, manifest, {"model-a": 100, "model-worse": 0, "model-twin": 0})
        a, since, _ = replay_window(stack, limit=400, log_path=tmp_path / "a.csv")
        set_split(stack, manifest, {"model-a": 0, "model-worse": 0, "model-twin": 100})
        twin = feedback.replay(
            feedback.Endpoints.local(stack.state_dir),
            limit=400,
            log_path=tmp_path / "twin.csv",
            progress=False,
        )
    finally:
        set_split(stack, manifest, {"model-a": 50, "model-worse": 50, "model-twin": 0})
    assert set(a.log["arm"]) == {"model-a"} and set(twin.log["arm"]) == {"model-twin"}
    predictions = [run.log.set_index("request_id")["prediction"].sort_index() for run in (a, twin)]
    assert predictions[0].index.equals(predictions[1].index) and np.array_equal(
        predictions[0], predictions[1]
    )

    log = pd.concat([a.log, twin.log], ignore_index=True)
    analysis.cross_check(log, stack.prometheus_url, since=since)
    v = analysis.verdict(log)
    assert not v.significant and v.winner is None, v.sentence
    assert v.p_value > 0.99 and v.stats["model-a"].rmse == pytest.approx(
        v.stats["model-twin"].rmse, rel=1e-12
    )
    assert v.sentence.startswith("no decision")


@pytest.mark.stack
@pytest.mark.slow
def test_cross_check_is_exact_across_a_model_server_restart_and_names_a_mismatch(trio, tmp_path):
    """Kill model-worse mid-test: its restarted process is a new series (new worker_id), summed."""
    stack, manifest = trio
    url = stack.prometheus_url
    before, since, _ = replay_window(stack, limit=150, log_path=tmp_path / "before.csv")
    old_pid = stack.state["processes"]["model-worse"]["pid"]
    analysis.wait_for_scrape(url, time.time())  # the old process's counts are in Prometheus
    os.killpg(old_pid, signal.SIGKILL)  # a process group the stack (this test) started
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        state = stack.state["processes"]["model-worse"]
        if state["ready"] and state["pid"] != old_pid:
            break
        time.sleep(0.2)
    else:
        pytest.fail("model-worse did not come back within 180 s")
    after = feedback.replay(
        feedback.Endpoints.local(stack.state_dir), limit=150, log_path=tmp_path / "after.csv", progress=False
    )
    log = pd.concat([before.log, after.log], ignore_index=True)
    end = time.time()

    table = analysis.cross_check(log, url, since=since, until=end)
    assert table.loc["model-worse", "prometheus"] == (log["feedback_arm"] == "model-worse").sum()
    workers = {
        r["metric"]["worker_id"]
        for r in analysis.prometheus.query(
            url, f'{analysis.FEEDBACK}{{predictor_name="model-worse"}}[{math.ceil(time.time() - since) + 5}s]'
        )
    }
    assert len(workers) >= 2, workers  # the old process's series and the new one's

    # and a log that lost rows no longer adds up: the error names both numbers
    short = log.drop(index=log.index[log["feedback_arm"] == "model-a"][:3])
    n_a = int((log["feedback_arm"] == "model-a").sum())
    with pytest.raises(
        analysis.CrossCheckError, match=f"model-a: log {n_a - 3} accepted, Prometheus counted {n_a}"
    ):
        analysis.cross_check(short, url, since=since, until=end)


def test_report_cli_prints_the_table_and_the_verdict(populations, tmp_path):
    import subprocess
    import sys

    rng = np.random.default_rng(1)
    log = tmp_path / "log.csv"
    synthetic_log(
        {
            "model-a": rng.choice(populations["model-a"], 2000),
            "model-b": rng.choice(populations["model-worse"], 2000),
        }
    ).to_csv(log, index=False)
    run = subprocess.run(
        [sys.executable, "-m", "analysis", "report", str(log), str(tmp_path / "missing.csv")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1 and "cannot read the feedback log" in run.stderr  # the missing one
    assert "model-a wins: mean reward" in run.stdout and "RMSE model-a - model-b" in run.stdout
    assert "100.0% of 4000 rewards landed on the arm that served" in run.stdout
