"""The bandit routers on their own (no stack, no HTTP): learning, seeding, state, bad feedback."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serving.routers import BadFeedback, EpsilonGreedy, ThompsonSampling, thompson

ROUTERS = {
    "thompson-student-t": (ThompsonSampling, {}),  # the default posterior
    "thompson-gaussian": (ThompsonSampling, {"posterior": "gaussian"}),
    "thompson-beta": (ThompsonSampling, {"posterior": "beta"}),
    "epsilon-greedy": (EpsilonGreedy, {"epsilon": 0.1}),
}


def make(name: str, **kwargs):
    cls, defaults = ROUTERS[name]
    return cls(**{"n_branches": 2, "branch_names": "model-a:model-b", "seed": 7, **defaults, **kwargs})


def replay(router, means=(0.55, 0.62), rows=2000, seed=3) -> list[int]:
    """Route ``rows`` requests; each branch's reward is a clipped normal around its mean."""
    env = np.random.default_rng(seed)
    picks = []
    for _ in range(rows):
        branch = router.route(None, None)
        reward = float(np.clip(env.normal(means[branch], 0.2), 0.0, 1.0))
        router.send_feedback(None, None, reward, None, routing=branch)
        picks.append(branch)
    return picks


@pytest.mark.parametrize("name", ["thompson-student-t", "thompson-gaussian", "epsilon-greedy"])
def test_learns_to_send_most_traffic_to_the_better_arm(name):
    picks = np.array(replay(make(name)))
    second_half = picks[len(picks) // 2 :]
    assert (second_half == 1).mean() >= 0.85, (second_half == 1).mean()


def test_the_beta_bernoulli_trick_learns_too_but_slower_than_the_student_t_posterior():
    student = np.array(replay(make("thompson-student-t"), rows=3000))
    beta = np.array(replay(make("thompson-beta"), rows=3000))
    assert (beta[1500:] == 1).mean() > 0.5  # better than chance...
    assert (student[1500:] == 1).mean() > (beta[1500:] == 1).mean()  # ...one reason for the default


UNLUCKY = [0.40, 0.42, 0.38, 0.41, 0.39]  # the better branch's first rewards, from its low tail
TYPICAL = [0.72, 0.68, 0.75, 0.70, 0.71]  # the worse branch's


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_an_unlucky_start_sticks_the_plug_in_gaussian_and_the_student_t_recovers(seed):
    """The better branch (0) starts with five low rewards, the other with five typical ones. The
    plug-in gaussian's posterior for branch 0 is then narrow around 0.4 and it is (almost) never
    drawn again; the student-t's heavy tails (2 degrees of freedom after 5 rewards, and a floor on
    the spread) keep drawing it, so it learns its true mean and moves the traffic back."""
    shares = {}
    for name in ("thompson-gaussian", "thompson-student-t"):
        router = make(name, seed=seed)
        for good, bad in zip(UNLUCKY, TYPICAL, strict=True):
            router.send_feedback(None, None, good, None, routing=0)
            router.send_feedback(None, None, bad, None, routing=1)
        picks = np.array(replay(router, means=(0.8, 0.72), rows=1000, seed=seed))
        shares[name] = (picks[500:] == 0).mean()  # requests 501-1,000 to the better branch
    assert shares["thompson-gaussian"] < 0.2, shares  # stuck: the failure the default was changed for
    assert shares["thompson-student-t"] > 0.8, shares  # recovered within 500 requests


def test_the_student_t_routes_each_new_branch_in_turn_but_never_waits_forever_for_feedback():
    router = make("thompson-student-t")
    # before any reward: in turn, so 8 requests in flight reach both branches, not one
    assert sorted(router.route(None, None) for _ in range(8)) == [0, 0, 0, 0, 1, 1, 1, 1]
    # branch 1's feedback never comes (a failing child): it is waited for, then left out
    picks = []
    for _ in range(1000):
        branch = router.route(None, None)
        if branch == 0:
            router.send_feedback(None, None, 0.5, None, routing=0)
        picks.append(branch)
    assert picks.count(1) <= thompson.MIN_REWARDS + thompson.UNANSWERED
    assert picks[-500:].count(0) == 500
    # no feedback at all: an even split, not all traffic to one branch
    silent = make("thompson-student-t", n_branches=3, branch_names="a:b:c")
    counts = np.bincount([silent.route(None, None) for _ in range(3000)], minlength=3)
    assert counts.min() > 800, counts


@pytest.mark.parametrize("name", ROUTERS)
def test_the_same_seed_routes_the_same_way_and_another_seed_does_not(name):
    assert replay(make(name), rows=300) == replay(make(name), rows=300)
    assert replay(make(name), rows=300) != replay(make(name, seed=8), rows=300)


class Uncached(ThompsonSampling):
    """Recomputes its posterior for every draw, as the router did before it cached it."""

    def sample(self):
        self._parameters = None
        return super().sample()


@pytest.mark.parametrize("posterior", thompson.POSTERIORS)
def test_the_cached_posterior_draws_what_a_fresh_one_would(tmp_path, posterior):
    """The posterior is computed once per reward, not per route: same draws, after a restart too."""
    kwargs = {"n_branches": 2, "seed": 7, "posterior": posterior}
    cached = ThompsonSampling(state_file=str(tmp_path / "a.json"), **kwargs)
    fresh = Uncached(state_file=str(tmp_path / "b.json"), **kwargs)
    assert replay(cached, rows=300) == replay(fresh, rows=300)
    # several routes between rewards: each route must draw from the same, current posterior
    assert [cached.route(None, None) for _ in range(50)] == [fresh.route(None, None) for _ in range(50)]
    restarted = ThompsonSampling(state_file=str(tmp_path / "a.json"), **kwargs)
    again = Uncached(state_file=str(tmp_path / "b.json"), **kwargs)
    assert replay(restarted, rows=100) == replay(again, rows=100)


def test_one_reward_per_feedback_whatever_the_rows():
    router = make("thompson-student-t")
    router.send_feedback(np.zeros((5, 11)), [], 0.9, None, routing=0)
    router.send_feedback(None, None, 0.9, None, routing=0)  # no request at all (seldon-core #336)
    assert router.n.tolist() == [2, 0]
    assert router.total.tolist() == pytest.approx([1.8, 0.0])


@pytest.mark.parametrize(
    "reward, routing, says",
    [
        (0.5, None, "no meta.routing"),
        (0.5, -1, "names no branch"),
        (0.5, -2, "names no branch"),
        (0.5, 2, "names no branch"),
        (0.5, 0.5, "names no branch"),
        (0.5, "a", "not a branch number"),
        (1.5, 0, "outside [0, 1]"),
        (-0.1, 0, "outside [0, 1]"),
        (float("nan"), 0, "outside [0, 1]"),
        ("x", 0, "not a number"),
    ],
)
def test_feedback_it_cannot_learn_from_is_a_400_and_changes_nothing(reward, routing, says):
    router = make("epsilon-greedy")
    with pytest.raises(BadFeedback) as error:
        router.send_feedback(None, None, reward, None, routing=routing)
    assert error.value.status_code == 400 and says in error.value.message
    assert router.n.sum() == 0


@pytest.mark.parametrize("name", ROUTERS)
def test_state_round_trips_through_its_file(tmp_path, name):
    path = tmp_path / "router.json"
    first = make(name, state_file=str(path))
    replay(first, rows=200)
    assert not list(tmp_path.glob(".router.json.*"))  # no temporary file left behind
    again = make(name, state_file=str(path))
    for key in ("n", "total", "total_sq"):
        assert getattr(again, key).tolist() == pytest.approx(getattr(first, key).tolist())
    # routed is saved with each feedback: the last request routed after the last feedback is not lost
    assert again.routed.tolist() == first.routed.tolist()
    assert again.starts == first.starts + 1
    if name == "thompson-beta":
        assert again.successes.tolist() == first.successes.tolist()
    # a restart does not replay the draws the first start made
    assert replay(again, rows=50) != replay(make(name), rows=50)


def test_a_state_file_of_another_router_is_refused(tmp_path):
    path = tmp_path / "router.json"
    replay(make("thompson-student-t", state_file=str(path)), rows=10)
    with pytest.raises(ValueError, match="move it away"):
        make("thompson-beta", state_file=str(path))
    with pytest.raises(ValueError, match="move it away"):
        make("epsilon-greedy", state_file=str(path))
    with pytest.raises(ValueError, match="move it away"):
        make("thompson-student-t", state_file=str(path), n_branches=3, branch_names="a:b:c")


@pytest.mark.parametrize(
    "old, new", [("thompson-gaussian", "thompson-student-t"), ("thompson-student-t", "thompson-gaussian")]
)
def test_the_gaussian_and_student_t_posteriors_continue_from_each_others_state(tmp_path, old, new):
    """Both need the same sums: a router restarted with the new default keeps what it learned."""
    path = tmp_path / "router.json"
    first = make(old, state_file=str(path))
    replay(first, rows=200)
    again = make(new, state_file=str(path))
    assert again.n.tolist() == first.n.tolist() and again.routed.tolist() == first.routed.tolist()
    assert again.total.tolist() == pytest.approx(first.total.tolist())
    replay(again, rows=1)
    assert json.loads(path.read_text())["algorithm"] == new


def test_state_dir_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ROUTER_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("PREDICTIVE_UNIT_ID", "bandit")
    replay(make("epsilon-greedy"), rows=5)
    assert json.loads((tmp_path / "bandit.json").read_text())["n"] != [0, 0]


def test_gauges_per_branch():
    router = make("epsilon-greedy")
    router.send_feedback(None, None, 0.25, None, routing=1)
    router.send_feedback(None, None, 0.75, None, routing=1)
    gauges = {(g["key"], g["tags"]["branch"]): g["value"] for g in router.metrics()}
    assert all(g["type"] == "GAUGE" for g in router.metrics())
    assert gauges[("router_branch_feedback", "model-b")] == 2
    assert gauges[("router_branch_reward_sum", "model-b")] == pytest.approx(1.0)
    assert gauges[("router_branch_reward_mean", "model-b")] == pytest.approx(0.5)
    assert gauges[("router_branch_feedback", "model-a")] == 0


def test_epsilon_greedy_explores_exactly_epsilon_of_the_time():
    router = make("epsilon-greedy", epsilon=0.2)
    router.send_feedback(None, None, 0.9, None, routing=0)
    router.send_feedback(None, None, 0.1, None, routing=1)
    picks = np.array([router.route(None, None) for _ in range(5000)])
    assert (picks == 1).mean() == pytest.approx(0.2, abs=0.02)
