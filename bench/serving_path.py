"""Parts (a) and (b) of the benchmark: one prediction through the serving path against the alternatives.

a. one model server direct vs through the gateway (the predictor's port: the same single model
   server behind it), p50/p99 of sequential requests, requests/s at concurrency 1 and 8;
b. our model server vs ``mlflow models serve`` (same model, same venv, ``--env-manager local``)
   vs MLServer with its MLflow runtime (its own venv under .envs/mlserver, created on first use).
"""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

from bench import servers
from bench.measure import assert_loopback, group_pids, interleaved, log, measure

ROW = [7.0, 0.27, 0.36, 20.7, 0.045, 45.0, 170.0, 1.001, 3.0, 0.45, 8.8]


def seldon_body() -> dict:
    from training.data import FEATURES

    return {"data": {"names": FEATURES, "ndarray": [ROW]}}


def gateway_overhead(stack, rounds: int, n_seq: int, n_conc: int) -> dict:
    state = stack.state
    model_pids = group_pids(state["processes"]["model-a"]["pid"])
    gateway_pids = group_pids(state["processes"]["gateway"]["pid"])
    body = seldon_body()
    contenders = {
        "direct": (state["urls"]["models"]["model-a"] + "/api/v1.0/predictions", body, model_pids),
        "gateway": (
            state["urls"]["predictors"]["model-a"] + "/api/v1.0/predictions",
            body,
            model_pids + gateway_pids,
        ),
    }
    log("(a) one model server, direct vs through the gateway (the predictor's port)")
    runs = interleaved(contenders, rounds, [("seq", n_seq, 1), ("c8", n_conc, 8)])
    # the ingress splits between both arms (two model servers): shown, not compared
    ingress = measure(stack.ingress_url + "/predictions", body, n_conc, 8)
    direct, gateway = runs["direct"], runs["gateway"]
    return {
        "runs": runs,
        "ingress_c8_two_arms": ingress,
        "overhead_p50_ms": round(gateway["seq"]["p50_ms"] - direct["seq"]["p50_ms"], 4),
        "overhead_p99_ms": round(gateway["seq"]["p99_ms"] - direct["seq"]["p99_ms"], 4),
        "throughput_ratio_c1": round(gateway["seq"]["rps"] / direct["seq"]["rps"], 3),
        "throughput_ratio_c8": round(gateway["c8"]["rps"] / direct["c8"]["rps"], 3),
        "gateway_cpu_us_per_request_c8": round(
            gateway["c8"]["server_cpu_us"] - direct["c8"]["server_cpu_us"], 1
        ),
    }


def model_servers(
    stack,
    model_path: str,
    workdir: Path,
    rounds: int,
    n_seq: int,
    n_conc: int,
    skip_mlserver: bool,
    started: list,
) -> dict:
    from training.data import FEATURES

    state = stack.state
    contenders = {
        "ours (seldon-core)": (
            state["urls"]["models"]["model-a"] + "/api/v1.0/predictions",
            seldon_body(),
            group_pids(state["processes"]["model-a"]["pid"]),
        ),
    }
    notes = {}
    log("(b) starting `mlflow models serve` (same model, same venv)")
    serve = servers.mlflow_serve(model_path, workdir)
    started.append(serve)
    serve.start()
    assert_loopback(serve.listening(), serve.name)
    contenders["mlflow models serve"] = (
        serve.ready_url.rsplit("/", 1)[0] + "/invocations",
        {"dataframe_split": {"columns": FEATURES, "data": [ROW]}},
        serve.pids(),
    )
    if skip_mlserver:
        notes["mlserver"] = "skipped (--skip-mlserver)"
    else:
        log("(b) preparing MLServer's own virtualenv (.envs/mlserver; first time only)")
        python, why = servers.ensure_mlserver_env(
            {
                "mlflow": metadata.version("mlflow"),
                "scikit-learn": metadata.version("scikit-learn"),
                "numpy": metadata.version("numpy"),
            },
            workdir / "mlserver-install.log",
        )
        if python is None:
            notes["mlserver"] = f"skipped: MLServer could not be installed: {why}"
            log(notes["mlserver"])
        else:
            mls = servers.mlserver(python, model_path, workdir)
            started.append(mls)
            mls.start()
            assert_loopback(mls.listening(), mls.name)
            v2 = {
                "parameters": {"content_type": "pd"},
                "inputs": [
                    {"name": f, "datatype": "FP64", "shape": [1], "data": [v]}
                    for f, v in zip(FEATURES, ROW, strict=True)
                ],
            }
            contenders["MLServer (mlflow runtime)"] = (
                mls.ready_url.rsplit("/", 1)[0] + "/infer",
                v2,
                mls.pids(),
            )
            out = subprocess_version(python, "mlserver")
            notes["mlserver_version"] = out
    runs = interleaved(contenders, rounds, [("seq", n_seq, 1), ("c8", n_conc, 8)])
    for server in started:
        server.stop()
    ours = runs["ours (seldon-core)"]["seq"]["p50_ms"]
    result = {
        "runs": runs,
        "notes": notes,
        "ours_vs_mlflow_serve_p50_ratio": round(ours / runs["mlflow models serve"]["seq"]["p50_ms"], 3),
    }
    if "MLServer (mlflow runtime)" in runs:
        result["ours_vs_mlserver_p50_ratio"] = round(
            ours / runs["MLServer (mlflow runtime)"]["seq"]["p50_ms"], 3
        )
    return result


def subprocess_version(python: Path, package: str) -> str:
    out = subprocess.run(
        [str(python), "-c", f"from importlib.metadata import version; print(version('{package}'))"],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()
