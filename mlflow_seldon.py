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
# # A/B testing MLflow models with Seldon Core — on any laptop, with a verdict you can trust
#
# We train two models with [MLflow](https://mlflow.org) and release the new one the way careful
# teams do, with [Seldon Core](https://github.com/SeldonIO/seldon-core) v1: first as a **shadow**
# of the champion (it answers a mirror of the live traffic, nobody sees its answers), then as an
# **A/B test** with reward feedback, deciding **with numbers** which model wins — then **promotion**.
#
# This follows Seldon's own MLflow A/B example, with three differences:
#
# * **It runs anywhere.** The default target is an embedded *local Seldon stack*: the real
#   seldon-core model servers, a gateway that does what Istio and the Seldon executor do, and a
#   real Prometheus — all on 127.0.0.1, no Kubernetes, no Docker. The same SeldonDeployment YAML
#   deploys to a cluster (`TARGET = "cluster"`).
# * **Rewards reach the right model.** Feedback sent to the ingress is split at random, like
#   predictions, so each arm's reward mixes both models. We send each reward to the arm that
#   served the prediction, and measure what the other way gets wrong.
# * **A verdict with confidence.** Instead of eyeballing a dashboard: a paired test of the
#   shadow's answers against the champion's, then a planned, monitored A/B test that stops when
#   the evidence is in, with a sample-ratio check and guardrails.
#
# Every number in the prose below is computed by this run.

# %% tags=["parameters"]
TARGET = "local"  # "local": the embedded stack on 127.0.0.1; "cluster": Kubernetes + Seldon Core v1
REPLAY_LIMIT = None  # None replays every hold-out row
REPLAY_RATE = 200  # rows per second, a steady production-like pace (None: as fast as possible)
CONCURRENCY = 8  # replay requests in flight
PORT = 8003  # the local ingress port (0: any free port)
MANIFEST = "serving/model-a-b.yaml"  # the A/B test's SeldonDeployment: the contract for both targets
SHADOW_MANIFEST = "serving/model-shadow.yaml"  # the same deployment, the challenger as a shadow
SHADOW_ROWS = 300  # rows for the shadow period: the last of the replay order (the A/B test gets the rest)
SHADOW_RATE = 150  # rows per second in the shadow period: a pace the shadow keeps up with (see step 5)
STATE_DIR = ".stack"  # the local stack's pids, logs and Prometheus data
WORK_DIR = "runs"  # the working copy of the manifest and the feedback logs
IMAGES = "images"  # where the figures are saved
SCRAPE_INTERVAL = None  # seconds between scrapes; None: the target's (local 1 s, the PodMonitor's 15 s)

# cluster only (docs/cluster.md): where the models go, and how the notebook reaches the cluster
BUCKET = "s3://my-bucket/mlflow-seldon"  # an existing bucket (docs/cluster.md, step 2 makes one)
NAMESPACE = "seldon"  # created if missing, with the storage Secret in it
STORAGE = "s3"  # rclone Secret from your credentials: s3, s3-iam, minio, gcs (None: a public gs://)
INGRESS = "127.0.0.1:8080"  # kubectl port-forward -n istio-system svc/istio-ingressgateway 8080:80
PROMETHEUS = "http://127.0.0.1:9090"  # kubectl port-forward -n monitoring svc/prometheus-operated 9090
LOGGER_URL = (
    None  # where the executors post their CloudEvents: a request-logger sink they reach (docs/cluster.md)
)
REQUEST_LOGS = None  # the folder on this machine where that sink writes (a shared volume); None: no pairing

# %% [markdown]
# ## Prerequisites
#
# `make run` did the set-up: a virtualenv from `requirements.lock` (exact versions of what
# `requirements.txt` asks for: MLflow 2.22, seldon-core 1.17.1 — the last Apache-2.0 release —
# and friends) and Prometheus from the system's package manager. The tracking store is a SQLite
# file in the repo folder; the data set is the UCI Wine Quality data (white wines; Cortez et al.
# 2009, CC BY 4.0), downloaded once and cached.

# %%
# %matplotlib inline
import warnings

warnings.filterwarnings("ignore", category=UserWarning)  # MLflow's notices about pip/conda
warnings.filterwarnings("ignore", category=FutureWarning)

import logging
from pathlib import Path

import mlflow
import pandas as pd
from IPython.display import Image, Markdown, display

import experiment
import feedback
from training import tracking
from training.arms import ARMS
from training.data import FEATURES, load_wine_quality, split_holdout

assert TARGET in ("local", "cluster"), f"TARGET must be 'local' or 'cluster', got {TARGET!r}"
tracking.use_local_store()
logging.disable(logging.INFO)  # a new tracking store logs its ~35 database migrations, line by line
tracking.ensure_experiment()
logging.disable(logging.NOTSET)
wine = load_wine_quality()
train_rows, holdout_rows = split_holdout(wine)
print(
    f"MLflow {mlflow.__version__}; {len(wine)} wines, {len(FEATURES)} features; "
    f"{len(train_rows)} rows to train on, {len(holdout_rows)} held out as production traffic"
)
wine.head(3)

# %% [markdown]
# ## 1. Train two models with MLflow
#
# The training code is an [MLflow project](training/MLproject): typed parameters, an entry
# point, and an environment file. `train.py` fits an ElasticNet on the training rows only, logs
# parameters and hold-out RMSE/MAE/R², logs the model with its signature and an input example,
# and registers it as a new version of `wines-classifier` with a registry alias per arm.

# %%
print(open("training/MLproject").read())

# %% [markdown]
# Two arms, defined once in `training/arms.py`, so this text and the code cannot disagree:

# %%
pd.DataFrame(ARMS).T.rename_axis("alias")

# %% [markdown]
# Each arm is one `mlflow run` — the command a reader would type (`mlflow run training -P alpha=…
# -P l1_ratio=… -P alias=… --env-manager local --experiment-name wine-quality`, as in the README):

# %%
versions = {alias: tracking.run_arm(alias=alias, **params) for alias, params in ARMS.items()}

# %% [markdown]
# The tracking store now holds both runs. Nothing below uses a run id typed by hand: runs and
# models are looked up by name and alias.

# %%
runs = mlflow.search_runs(
    experiment_names=[tracking.EXPERIMENT], filter_string="attributes.status = 'FINISHED'"
)
latest = runs[runs["run_id"].isin([v.run_id for v in versions.values()])]
latest[
    ["tags.mlflow.runName", "params.alpha", "params.l1_ratio", "metrics.rmse", "metrics.mae", "metrics.r2"]
]

# %% [markdown]
# ![the MLflow UI with both runs](images/mlflow-ui.png)
#
# *`mlflow ui --backend-store-uri sqlite:///mlflow.db` shows the same runs
# (screenshot taken by `scripts/mlflow_ui_screenshot.py` in a headless Chromium).*
#
# The registered model's `MLmodel` file tells a server how to load it (its flavors) and what it
# expects (its signature — what our model server checks every request against). It also names
# the run that logged it, which is how the registry links `@a` back to its parameters.

# %%
import yaml

mlmodel = yaml.safe_load(open(mlflow.artifacts.download_artifacts(tracking.model_uri("a")) + "/MLmodel"))
print(
    yaml.safe_dump({key: mlmodel[key] for key in ("flavors", "signature", "mlflow_version")}, sort_keys=False)
)

# %%
display(
    Markdown(
        "Registry aliases: "
        + ", ".join(f"`@{alias}` → version {v}" for alias, v in tracking.aliases().items())
    )
)

# %% [markdown]
# ## 2. Get the models to where the server reads them
#
# Locally, the model server loads `models:/wines-classifier@a` straight from the registry. A
# cluster cannot see this laptop's registry (Seldon's `modelUri` does not take `models:/`
# URIs either), so for a cluster each arm's model folder is copied to a bucket and the manifest
# points at it — the only difference between the two manifests.

# %%
if TARGET == "cluster":
    from serving.cluster.target import ClusterTarget

    cluster = ClusterTarget(
        namespace=NAMESPACE,
        bucket=BUCKET,
        storage=STORAGE,
        ingress=INGRESS,
        prometheus=PROMETHEUS,
        work_dir=WORK_DIR,
        scrape_interval=SCRAPE_INTERVAL,
    )
    published = cluster.publish(MANIFEST)  # each arm's folder, copied and checksummed
    display(pd.Series({uri: p.uri for uri, p in published.items()}, name="modelUri on the cluster"))
else:
    print("local target: the model servers read models:/ URIs from the registry, nothing to copy")

# %% [markdown]
# ## 3. Serve the champion, with the challenger as its shadow
#
# A release starts with a shadow. One SeldonDeployment, `wines-classifier`, has the two arms as
# predictors: the champion — the model in production — at `traffic: 100`, and the challenger
# with `shadow: true`. Istio's mirror (here the gateway) sends the shadow a copy of every request;
# its answers are thrown away, so callers only ever see the champion's. Both graph nodes carry
# Seldon's request `logger`: each executor posts every request and response to the logger's URL
# as a CloudEvent, where a request-logger sink stores them — which is how the shadow's answers
# can be judged at all. The nodes have different names: the Python wrapper puts
# `meta.requestPath = {<node name>: <image>}` in every response, which names the arm that answered.

# %%
print(open(SHADOW_MANIFEST).read())

# %% [markdown]
# Locally, `serving.local` reads that YAML, checks it (the project's own schema for the
# SeldonDeployments it accepts, plus what a schema cannot say: the operator's rules for traffic
# and shadows, unique names, a known server, resolvable model URIs), and starts per predictor a
# real `seldon-core` microservice serving the MLflow model, the gateway at the ingress path
# `/seldon/<namespace>/<name>/api/v1.0/…`, one endpoint per predictor like the
# `<sdep>-<predictor>` Services the operator creates, the request-logger sink the logger URL
# names, and Prometheus. On a cluster the executors must post to a sink they can reach
# (`LOGGER_URL`, docs/cluster.md), and the notebook reads its files from `REQUEST_LOGS`.
#
# We serve working copies of the manifests, so that promotion (step 9) edits a copy and the
# committed files stay as they are.

# %%
from experiment.shadow_run import (
    ab_limit,
    next_period,
    run_shadow,
    shadow_roles,
    shadow_rows,
    with_logger_url,
)

shadow_manifest = with_logger_url(SHADOW_MANIFEST, Path(WORK_DIR) / "model-shadow.yaml", LOGGER_URL)
CONTROL, CHALLENGER = shadow_roles(shadow_manifest)  # the champion serves; the challenger is its shadow

if TARGET == "local":
    from serving.local import LocalStack

    # replaces a leftover stack; Prometheus scrapes every second: a replay of a few seconds spans several
    stack = LocalStack.up(
        shadow_manifest, port=PORT, state_dir=STATE_DIR, replace=True, scrape_interval=SCRAPE_INTERVAL or 1
    )
    endpoints = feedback.Endpoints.local(STATE_DIR)
    request_logs = Path(STATE_DIR) / "request-logs"  # where the stack's sink writes
    prometheus_url = stack.prometheus_url
    scrape_interval = stack.scrape_interval  # the stack's Prometheus
else:  # the same file, rendered with bucket URIs, applied with the Kubernetes client (= kubectl apply -f)
    print(cluster.prepare())  # the namespace, and the storage Secret in it (from this shell's credentials)
    cluster.deploy(shadow_manifest)  # render the working copy for the cluster, create or replace, wait
    endpoints = cluster.connect()  # port-forward each arm's Service; returns once every one answers
    request_logs = Path(REQUEST_LOGS) if REQUEST_LOGS else None
    prometheus_url, scrape_interval = cluster.prometheus, cluster.scrape_interval
print(
    f"ingress: http://{endpoints.gateway}/seldon/{endpoints.namespace}/{endpoints.deployment}/api/v1.0/predictions"
)
for name, address in endpoints.predictors.items():
    role = "the shadow" if name == CHALLENGER else "the champion"
    print(f"{name} ({role}): http://{address}/api/v1.0/predictions")

# %% [markdown]
# ## 4. Test a prediction
#
# With curl — the original example's command, pointed at our ingress:

# %%
import os

# the shell reads the URL from its environment: IPython leaves a `!` line with JSON braces as it is
os.environ["PREDICTIONS"] = endpoints.predictions_url
# !curl -sS -X POST -H 'Content-Type: application/json' \
#     -d '{"data": {"ndarray": [[7.0, 0.27, 0.36, 20.7, 0.045, 45.0, 170.0, 1.001, 3.0, 0.45, 8.8]]}}' \
#     $PREDICTIONS

# %% [markdown]
# And with Seldon's Python client, sending named features. `meta.requestPath` names the arm that
# answered — the champion, whatever the shadow does:

# %%
from seldon_core.seldon_client import SeldonClient

client = SeldonClient(
    gateway="istio",
    gateway_endpoint=endpoints.gateway,
    namespace=endpoints.namespace,
    deployment_name=endpoints.deployment,
    client_return_type="proto",
)
answer = client.predict(data=holdout_rows[FEATURES].to_numpy()[:1], names=FEATURES, payload_type="ndarray")
print(answer.response)

# %% [markdown]
# A request the model cannot answer gets a 400 that says why — never a 500:

# %%
# !curl -sS -w '\nHTTP status %{http_code}\n' -X POST -H 'Content-Type: application/json' \
#     -d '{"data": {"ndarray": [[7.0, 0.27]]}}' $PREDICTIONS

# %% [markdown]
# ## 5. Shadow the challenger: both models on the same requests
#
# The held-out rows stand in for production traffic: the models never trained on them. For each
# row, `feedback.py` predicts through the ingress, reads the serving arm from `meta.requestPath`,
# computes a reward, and sends the feedback **to that arm's own endpoint**. The reward is
# `exp(−(y − ŷ)² / 2)`, in (0, 1]: 1 for an exact prediction, 0.61 one quality point off. The
# original example's `1 / (y − ŷ)²` is unbounded, so one lucky guess dominates an average
# (`feedback.reward` explains the choice).
#
# The plan comes first, from the training rows only, before any traffic: each arm's registered
# parameters, cross-validated there, give the effect to expect and how many requests a one-look
# test would need. We plan for 95% power rather than the customary 80%: the hold-out has traffic
# enough, and a lower power target makes the A/B test's futility boundary give up on a real
# difference more often, whenever the first few hundred rows happen to show a small effect.

# %%
ab_manifest = Path(WORK_DIR) / "model-a-b.yaml"  # the A/B step's working copy (step 6 applies it)
ab_manifest.write_text(Path(MANIFEST).read_text())
plan = experiment.plan_experiment(ab_manifest, control=CONTROL, power=0.95)
print(plan)

# %% [markdown]
# The shadow period and the A/B test after it are two live periods, so they see different
# requests: the shadow gets the last `SHADOW_ROWS` rows of the replay order, the A/B test the rows
# before them. Reusing rows would bias the A/B test: a row's reward depends only on the row and the
# model, so an A/B test on the rows where the shadow just saw the challenger win would re-measure
# a sample chosen in the challenger's favour.
#
# The replay sends a fresh `Seldon-Puid` header with every request. Each executor makes its own
# request id unless the caller sends one, so without it the champion's and the shadow's logged
# events would share nothing; with it, every request pairs up by id.
#
# The mirror is fire and forget, as Istio's: the caller's answer never waits for the shadow, and
# nothing slows the traffic down to the shadow's pace. A shadow slower than the traffic queues the
# copies, and beyond a bound the gateway skips them (and counts them), so the shadow period runs at
# `SHADOW_RATE`, a pace the shadow keeps up with on this machine next to the rest of the stack.

# %%
import time

import requests

if request_logs is not None:
    shadowed = run_shadow(
        endpoints,
        shadow_rows(SHADOW_ROWS),
        request_logs,
        CHALLENGER,
        rate=SHADOW_RATE,
        concurrency=CONCURRENCY,
        log_path=Path(WORK_DIR) / "feedback-shadow.csv",
        effect=plan.mde,
        power=plan.power,
        design=plan.design,
    )
    print(shadowed.summary())
    if TARGET == "local":  # the gateway counts its mirrors: those a busy shadow could not take are skipped
        print(
            "mirrors:", requests.get(f"http://{endpoints.gateway}/admin/status", timeout=5).json()["shadow"]
        )
else:  # a cluster without REQUEST_LOGS: the shadow answers, but its answers stay in the cluster's sink
    shadowed = None
    print(
        "the shadow's answers are in the request-logger sink on the cluster; set REQUEST_LOGS to the folder "
        "its files reach on this machine (docs/cluster.md) to pair them; going on to the A/B test"
    )
shadow_done = time.time()  # every answer of the shadow period is in: the A/B test counts from here

# %%
if shadowed is not None:
    t, sizes, s = shadowed.test, shadowed.sizes, shadowed.sequential
    level = round(100 * (1 - t.alpha))
    stopped = (
        f"reached its boundary after {s.stopped_at:,} of them ({s.decision})"
        if s.stopped_at
        else "had not reached its boundary"
    )
    text = (
        f"On **{t.n:,}** requests both models answered, the challenger ({CHALLENGER}) earned more reward "
        f"than the champion ({CONTROL}) on **{t.wins:,}** ({t.wins / t.n:.0%}) and less on {t.losses:,}: "
        f"{CHALLENGER} − {CONTROL} = **{t.mean:+.3f}** in mean reward ({level}% interval {t.ci_low:+.3f} to "
        f"{t.ci_high:+.3f}; paired t-test p = {t.p:.2g}). The always-valid sequential test on the same "
        f"differences {stopped}. Both models answered the same wines, so the variation from wine to wine "
        f"cancels: their rewards correlate at {sizes.correlation:.2f}, and the paired difference varies "
        f"with a standard deviation of {sizes.sd_difference:.3f}, against {sizes.sd_main:.3f} and "
        f"{sizes.sd_shadow:.3f} for each model's reward. To detect the planned effect ({sizes.effect:.3f}) "
        f"with {sizes.power:.0%} power, the paired comparison needs **{sizes.paired:,.0f}** callers' "
        f"requests (their mirrored copies cost the callers nothing), a 50/50 A/B test "
        f"**{sizes.ab_total:,.0f}**: {sizes.ratio:.1f}× as many."
    )
else:
    text = "The shadow's answers were not paired here (no `REQUEST_LOGS`)."
display(Markdown(text))

# %% [markdown]
# Why not promote on that? The shadow measures how well the challenger predicts on live requests,
# at no risk — but nobody acted on its answers. What callers do with a model's answers (the
# online effect, the reward they send back) only shows once the challenger answers real callers:
# the A/B test. The shadow has made that step safe to take, and says what effect to expect.
#
# The shadow period ends by applying the A/B manifest to the same SeldonDeployment: same name,
# same predictors; each arm gets `traffic: 50`, the shadow flag and the loggers go:


# %%
def roles(path):
    """Each predictor's traffic, shadow flag and logger, as the manifest says."""
    predictors = yaml.safe_load(Path(path).read_text())["spec"]["predictors"]
    return {
        p["name"]: {
            "traffic": p.get("traffic", 0),
            "shadow": p.get("shadow", False),
            "logged": "logger" in p["graph"],
        }
        for p in predictors
    }


pd.concat(
    {
        "shadow (step 5)": pd.DataFrame(roles(shadow_manifest)).T,
        "A/B test": pd.DataFrame(roles(ab_manifest)).T,
    },
    axis=1,
)

# %% [markdown]
# On a cluster that is `kubectl apply -f` of the A/B manifest: the operator turns Istio's mirror
# into a weighted route and, since the executors' configuration changed (the loggers, the
# shadow), rolls new pods. Locally the stack is started again with it, as new pods (a traffic
# change alone is applied without a restart, as promotion does in step 9; the gateway refuses to
# turn a shadow into a live arm in place, since locally the shadow's process runs at a lower CPU
# priority); its Prometheus starts
# empty, so the A/B test counts from zero and its curves hold its own requests only — on a
# cluster, whose Prometheus keeps the shadow period's series, the A/B test waits one dashboard
# rate window (four scrapes) for them to leave the curves. Meanwhile: each hold-out request's
# covariate for the A/B test's variance reduction (CUPED: the arms' predictions and a quality
# model fitted on the training rows, nothing that depends on the traffic).

# %%
from experiment.arms import weights
from experiment.monitored import covariate_table

covariates = covariate_table(ab_manifest)  # per request: what CUPED adjusts with
if TARGET == "local":
    baseline = time.time()  # before the new stack's first scrape: its counters all start from 0 after it
    stack = LocalStack.up(
        ab_manifest, port=PORT, state_dir=STATE_DIR, replace=True, scrape_interval=scrape_interval
    )
    endpoints = feedback.Endpoints.local(STATE_DIR)
    manifest = stack.manifest_path  # the stack's own copy: promotion edits it, the gateway applies it
    prometheus_url = stack.prometheus_url
else:
    cluster.deploy(ab_manifest)  # create or replace, wait until Available
    endpoints = cluster.connect()  # the arms' pods are new: forward to them afresh
    manifest = ab_manifest
    # the first scrape a rate window after the shadow period: all of its counts, none of the A/B test's
    baseline = next_period(prometheus_url, shadow_done, scrape_interval)
print(f"covariates for {len(covariates):,} requests; serving {weights(manifest)}")

# %% [markdown]
# ## 6. The A/B test: replay until the test decides
#
# Then the run, monitored: an always-valid sequential test (mSPRT, on rewards adjusted with
# each arm's expected reward given the wine's features — CUPED) looks after every request and
# stops the replay as soon as it decides — a winner, harm, or futility — or at the planned
# maximum. Every 50 requests the guardrails (latency p95 and error rate, non-inferiority against
# the champion) are checked; a breach would hand all the traffic back to the champion at once.
# Rows go out at a steady production-like pace (`REPLAY_RATE`), so the dashboard has curves.

# %%
result = experiment.run_monitored(
    endpoints,
    plan,
    manifest=manifest,
    state_dir=STATE_DIR,
    prometheus_url=prometheus_url,
    covariates=covariates,
    limit=ab_limit(SHADOW_ROWS, REPLAY_LIMIT),  # the rows before the shadow's
    rate=REPLAY_RATE,
    concurrency=CONCURRENCY,
    log_path=Path(WORK_DIR) / "feedback-arm.csv",
    rollback=TARGET == "local",  # a breach edits the local stack's working copy
    since=baseline,
)
replay = result.replay
print(replay.summary())

# %% [markdown]
# Nothing was lost on the way: every reward the log says was accepted is counted in Prometheus's
# `seldon_api_model_feedback_total` for the same arm — exactly, or this cell raises.

# %%
experiment.cross_check(replay.log, prometheus_url, since=baseline, until=replay.finished)

# %% [markdown]
# ## 7. Analyse: where the test stopped, and why
#
# The always-valid interval of the difference and the test's evidence, request by request: the
# run stops where the evidence crosses a boundary (the dotted line).

# %%
display(result.figure())

# %% [markdown]
# A comparison is only as good as its split and its guardrails: the served counts against the
# configured weights (a χ² test, from the log and from Prometheus), and the candidate's latency
# and error rate against the champion's.

# %%
for check in result.srm:
    print(check)
result.guardrail_table()

# %% [markdown]
# What a dashboard shows over the same requests: the PromQL of `serving/grafana/ab-test.json`
# (Seldon's *Prediction Analytics* dashboard with its bugs fixed), run against Prometheus. (The
# latency figure reads the gateway's own histogram, `gateway_request_seconds`, whose buckets
# start at 0.1 ms; a window with too few requests to place a quantile is left out.)

# %%
frames = experiment.figure_frames(
    prometheus_url, replay.started, replay.finished, scrape_interval=scrape_interval
)
verdict = experiment.verdict(replay.log)
for name, figure in experiment.figures(frames, verdict).items():
    display(Image(experiment.save(figure, name, IMAGES)))  # the saved PNG: drawn once, not twice

# %%
test, stages = result.test, result.seconds
low, high = test.interval
crossed = (
    f"the evidence crossed a boundary at request {test.look:,}" if test.look else "no boundary was crossed"
)
stopped = f"the run stopped at request {result.look:,}" if result.look else "the run used every row"
ab_rows = ab_limit(SHADOW_ROWS, REPLAY_LIMIT)
display(
    Markdown(
        f"**Verdict: {result.decision}.** The plan allowed at most {plan.design.n_max:,} requests per arm "
        f"(a one-look test needs {plan.n_fixed:,}); {crossed} ({test.n[test.control]:,} on {test.control}, "
        f"{test.n[test.treatment]:,} on {test.treatment}) and {stopped} of the {ab_rows:,} rows before "
        "the shadow's: "
        f"{test.treatment} − {test.control} = {test.difference:+.3f} (always-valid "
        f"95% interval {low:+.3f} to {high:+.3f}, e-value {test.e_value:.3g}). "
        f"Split: {'; '.join(s.sentence for s in result.srm)}. "
        f"Guardrails: {', '.join(f'{r.name} {r.status}' for r in result.guardrails[test.treatment])}. "
        f"{result.gate.sentence}. The run and the decision took {sum(stages.values()):.1f} s."
        + (
            f" The shadow had measured {shadowed.test.mean:+.3f} on {shadowed.test.n:,} paired requests."
            if shadowed is not None
            else ""
        )
    )
)

# %% [markdown]
# ## 8. The flaw in feedback through the ingress, measured
#
# The original example posts feedback to the ingress. On a cluster, Istio's VirtualService has
# one HTTP route with weighted destinations and no header override, so the feedback is split at
# random, exactly like the predictions — the local gateway does the same. Replaying a sample
# that way and reading, from each feedback response, which arm counted it:

# %%
flawed = feedback.replay(
    endpoints,
    limit=400,
    concurrency=CONCURRENCY,
    feedback_via="ingress",
    log_path=Path(WORK_DIR) / "feedback-ingress.csv",
    progress=False,
)
attributed = experiment.attribution(flawed.log)
print(attributed.summary())

# %%
if flawed.log["arm"].nunique() > 1:
    text = (
        f"Only **{attributed.fraction:.0%}** of the rewards reached the model that earned them; with "
        f"feedback to each arm's own endpoint (step 6) it was "
        f"**{experiment.attribution(replay.log).fraction:.0%}**. A dashboard built on the mixed counters "
        "pulls both arms' mean rewards towards each other and hides the difference."
    )
else:  # a guardrail breach handed all the traffic back to the champion: one arm, nothing to mix up
    text = (
        f"Every request went to {flawed.log['arm'].iat[0]} (the rollback after the guardrail breach), so "
        "here no reward could land on the wrong arm; with two arms in the split, about half would."
    )
display(Markdown(text))

# %% [markdown]
# ## 9. Promote the winner
#
# Promotion acts only when the experiment allows it: a sound split (no sample ratio mismatch),
# every guardrail passed, and the sequential test's winner. Then it moves the registry alias
# `@champion` to the winning version and sets the winner's traffic to 100 in the manifest, which
# the gateway applies without dropping a request; the decision record keeps the test, n per
# arm, estimate, interval, e-value, the split check and the guardrails. Otherwise it changes
# nothing and says why. `python -m experiment rollback` undoes it.

# %%
outcome = experiment.promote(
    replay.path,
    manifest=manifest,
    record=Path(WORK_DIR) / "promotions.json",
    state_dir=STATE_DIR,
    decision=result,
)
print(outcome)

# %% tags=["no-output"]
if TARGET == "cluster" and outcome.promoted:  # the promoted working copy, rendered and applied again
    cluster.deploy(manifest)  # before measuring it: until then the cluster still splits 50/50

# %%
if outcome.promoted:
    check = feedback.replay(
        endpoints,
        limit=100,
        concurrency=CONCURRENCY,
        progress=False,
        log_path=Path(WORK_DIR) / "feedback-after-promotion.csv",
    )
    print("100 requests after promotion, served by:", check.log["arm"].value_counts().to_dict())
else:
    print("no promotion: the traffic split and the registry aliases are as they were")

# %% [markdown]
# On a cluster the same change is a `kubectl apply -f` of the promoted manifest, which the cell
# before the check does with the Kubernetes client; Seldon's operator updates Istio's weights.
#
# ## 10. Clean up
#
# Stop every process the stack started (by process group); the tracking store and the logs in
# `runs/` stay for `mlflow ui` and further analysis.

# %%
if TARGET == "local":
    stopped = stack.down()
    print(f"stopped {len(stopped)} processes")
else:
    cluster.close()  # stops the port-forwards, deletes the SeldonDeployment
    print(f"deleted SeldonDeployment {NAMESPACE}/{endpoints.deployment}; the models stay in {BUCKET}")
