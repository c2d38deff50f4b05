# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Bandit or A/B test? The same hold-out traffic through both
#
# The main notebook ([mlflow_seldon.ipynb](mlflow_seldon.ipynb)) splits traffic 50/50 and decides
# with statistics. Seldon Core v1 has a second way to serve two models: a `ROUTER` node whose
# router picks an arm for each request and learns from the rewards sent back — a multi-armed
# bandit. Here the project's Thompson-sampling router (`serving/routers`) serves both arms on the
# local stack, learns live from each feedback, and we give the A/B test the same rows in the same
# order. The comparison logic is `experiment/bandits.py`, which `bench/bandit.py` runs too.
#
# Every number in the prose below is computed by this run.

# %% tags=["parameters"]
ROWS = None  # hold-out rows to replay (None: all)
REPEATS = 200  # shuffles of the rows for the bias of each arm's estimate (in process, no HTTP)
SEED = 1  # the A/B test's coin and the shuffles
PORT = 8005  # the local ingress port (0: any free port); the main notebook's stack uses 8003
MANIFEST = "serving/model-bandit.yaml"
STATE_DIR = ".stack/bandit"  # its pids, logs and router state (beside the main stack's, in .stack)

# %% [markdown]
# ## Setup
#
# The arms are the main notebook's, `models:/wines-classifier@a` and `@b` in the tracking store
# (`make run` trains them there first); a fresh store gets them trained here.

# %%
# %matplotlib inline
# ruff: noqa: E402 (a notebook imports after its parameters cell)
import logging
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from experiment import bandits
from feedback import holdout_rows
from serving.local import LocalStack
from training import tracking
from training.arms import train_arms

tracking.use_local_store()
logging.disable(logging.INFO)  # a new tracking store logs its database migrations, line by line
tracking.ensure_experiment()
logging.disable(logging.NOTSET)
try:
    trained = {"a", "b"} <= set(tracking.aliases())
except mlflow.exceptions.MlflowException:  # no registered model yet
    trained = False
if not trained:
    train_arms()
rows = holdout_rows(limit=ROWS)
print(f"arms: {tracking.aliases()}; {len(rows)} hold-out rows, in the replay's seeded order")

# %% [markdown]
# ## 1. Serve the bandit
#
# One predictor whose graph is a `ROUTER` over both arms. `SELDON_ENABLE_ROUTING_INJECTION` makes
# each response carry `meta.routing` (which arm the router chose); a feedback that sends the
# response back reaches the router with that routing, so it learns, and the arm that served.

# %%
print(open(MANIFEST).read())

# %%
# a router that starts from nothing: a previous run's state file would be loaded (it survives restarts)
shutil.rmtree(Path(STATE_DIR) / "routers", ignore_errors=True)
stack = LocalStack.up(MANIFEST, port=PORT, state_dir=STATE_DIR, replace=True)  # replaces a leftover stack
print("ingress:", stack.ingress_url + "/predictions")

# %% [markdown]
# A prediction names the arm that answered twice: in `meta.requestPath` (the model server's node)
# and in `meta.routing` (the router's choice, and -1 for the arm that ran).

# %%
import requests

from serving.client import prediction_request
from training.data import FEATURES

answer = requests.post(
    f"{stack.ingress_url}/predictions", json=prediction_request(rows[FEATURES].to_numpy()[:1], FEATURES)
)
answer.json()["meta"]

# %% [markdown]
# ## 2. Replay the hold-out through it: the router learns
#
# Regret needs each row's reward under *both* arms, so first each arm answers every row once
# (one batch request to each model server). Then the rows go through the bandit's ingress one at
# a time: a prediction, then its feedback with the reward of the arm that served.

# %%
predictions, rewards = bandits.counterfactual_rewards(stack.urls["models"], rows)
live = bandits.live_replay(stack.ingress_url, rows)
better = int(np.argmax(rewards.mean(axis=0)))
state = bandits.router_state(STATE_DIR)
print(
    f"{len(rows)} requests and feedbacks, {live['refused']} refused; the router's own reward counts "
    f"{state['n']} (the replay's: {np.bincount(live['arms'], minlength=2).tolist()})"
)
bandits.learning(live, better).round(3)

# %% [markdown]
# ## 3. The A/B test on the same order
#
# The same rows in the same order, each to an arm by a seeded fair coin — what the 50/50 split of
# `serving/model-a-b.yaml` does — with each row's reward from the arm the coin chose. One replay
# shows what each policy earns; the bias of each arm's estimate needs many: both policies run
# again over shuffles of the rows, with the same router classes in process.

# %%
ab_arms = bandits.ab_assignment(len(rows), SEED)
result = {"repeats": REPEATS, **bandits.compare(rewards, live, ab_arms)}
result["bias"] = bandits.bias(rewards, REPEATS, SEED)
result["seeds"] = bandits.seeds(rewards, REPEATS, SEED)
pd.DataFrame(
    {
        "cumulative reward": [result["cumulative_reward"][k] for k in ("bandit", "ab", "always_better")],
        "regret": [result["regret"]["bandit"], result["regret"]["ab"], 0.0],
        f"second half to {result['better_arm']}": [
            result["share_to_better"]["bandit_second_half"],
            result["share_to_better"]["ab_second_half"],
            1.0,
        ],
    },
    index=["bandit (Thompson, live)", "A/B test 50/50", f"always {result['better_arm']}"],
).round(3)

# %% [markdown]
# One run is one draw. A bandit can also get stuck: a few unlucky early rewards make the better
# arm look worse, and a posterior that is sure of itself too early stops trying it. So each
# Thompson posterior the router offers also runs over the shuffles and, on this very order, over
# many router seeds: the router's default (a Student-t posterior, `serving/routers/thompson.py`
# says why), the plug-in gaussian it replaced, and the Beta-Bernoulli trick. The distribution
# matters, not just the mean: how many runs got stuck, and what the worst tenth of runs lost.

# %%
bandits.robustness(result).round(3)

# %% [markdown]
# ## 4. One figure

# %%
display(bandits.figure(result, live, rewards, ab_arms))
Markdown(bandits.summary(result))

# %% [markdown]
# Use the **bandit** when the reward earned during the test matters more than knowing by how
# much one arm beats the other. Use the **A/B test** when you need the answer itself, with its
# uncertainty: a fixed split estimates each arm's mean without bias, and the main notebook's
# statistics apply; an adaptive allocation stops sampling an arm after a few unlucky rewards, so
# that arm's mean comes out biased low, and the classical tests no longer hold.
#
# ## 5. Clean up

# %%
stopped = stack.down()
print(f"stopped {len(stopped)} processes; the router's state stays in its state folder")
