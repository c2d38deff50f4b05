"""Keep the README's measured numbers in step with real runs (a maintainer's command).

    python -m scripts.readme          # `make readme`, after `make run` (and `make bench`)

Blocks of README.md between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` are written from
what the runs measured, never typed by hand: ``stages`` from runs/notebook-stages.json (written
by scripts/run_notebook.py), ``bench`` and ``reliability`` from bench/results.json (bench/run.py),
``bandit`` from bench/results-bandit.json (bench/bandit.py), when that file exists.
A reader's `make run` never edits the README; this command does, when a maintainer asks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
NOTEBOOK_STAGES = REPO / "runs" / "notebook-stages.json"
BENCH_RESULTS = REPO / "bench" / "results.json"
BANDIT_RESULTS = REPO / "bench" / "results-bandit.json"


def machine() -> dict:
    """What this machine is: CPU, cores, memory, OS, Python (and the serving packages' versions)."""
    from importlib import metadata

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    try:
        ram_gib = round(int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0]) / 2**20, 1)
    except (OSError, IndexError, ValueError):
        ram_gib = None
    versions = {}
    for package in (
        "seldon-core",
        "mlflow",
        "scikit-learn",
        "aiohttp",
        "uvloop",
        "gunicorn",
        "Flask",
        "uvicorn",
        "fastapi",
    ):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": ram_gib,
        "python": platform.python_version(),
        "os": platform.platform(),
        "packages": versions,
    }


def describe(m: dict | None = None) -> str:
    """``machine()`` in one line."""
    m = m or machine()
    memory = f", {m['ram_gib']:.0f} GiB RAM" if m.get("ram_gib") else ""
    return f"{m['cpu']}, {m['cores']} cores{memory}, {m['os']}, Python {m['python']}"


def replace_block(name: str, content: str, readme: Path = README) -> None:
    """Put ``content`` between the block's markers (which must exist)."""
    text = readme.read_text()
    pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"{readme.name} has no <!-- {name}:start --> ... <!-- {name}:end --> block")
    readme.write_text(pattern.sub(lambda m: m.group(1) + content.rstrip() + "\n" + m.group(2), text))


def stages_table(record: dict) -> str:
    """The notebook's stage times (runs/notebook-stages.json) as the README's table."""
    stages = dict(record["stages"])
    total = stages.pop("total")
    rows = [f"| {name} | {seconds:.1f} s |" for name, seconds in stages.items() if name != "Setup"]
    return "\n".join(
        [
            f"The notebook's stages in the committed run (`make run` after set-up, "
            f"{record['written'][:10]}; {describe(record['machine'])}):",
            "",
            "| stage | wall time |",
            "|---|---|",
            *rows,
            f"| **total** | **{total:.0f} s** |",
            "",
            "Set-up on a fresh machine (the virtualenv and Prometheus) comes on top, once.",
        ]
    )


def experiments_table(results: dict) -> str:
    """bench/results.json["experiments"] (bench/experiments.py) as the README's table."""
    e = results["experiments"]
    plan = e["plan"]
    p85, p90 = e["sequential_cuped_planned_power_85"], e["sequential_cuped_planned_power_90"]
    return "\n".join(
        [
            f"From `make bench` (bench/experiments.py, {e['parameters']['experiments']:,} simulated "
            f"experiments per row, rewards and covariates of the {e['parameters']['holdout_rows']:,} "
            f"hold-out rows; "
            f"planned from the training rows: effect {plan['mde']:.4f}, at most {plan['design']['n_max']:,} "
            f"requests per arm):",
            "",
            "| | false positives (A/A, a look after every request) | power "
            "| mean requests per arm to a decision |",
            "|---|---|---|---|",
            f"| Welch t-test, one look | {e['aa_false_positive_rate_fixed_horizon']:.1%} | "
            f"{e['power_fixed_horizon']:.1%} | {e['fixed_horizon_requests_per_arm']:,} |",
            f"| Welch t-test re-run at every look | {e['aa_false_positive_rate_naive_peeking']:.1%} | | |",
            f"| sequential test (mSPRT) | {e['aa_false_positive_rate_sequential']:.1%} | "
            f"{e['power_sequential']:.1%} | {e['mean_requests_to_decision_sequential']:,.0f} |",
            f"| sequential test, CUPED | {e['aa_false_positive_rate_sequential_cuped']:.1%} | "
            f"{e['power_sequential_cuped']:.1%} | {e['mean_requests_to_decision_sequential_cuped']:,.0f} |",
            "",
            f"The sequential test alone needs {e['sequential_vs_fixed']:.3f} of the one-look test's "
            f"requests, with CUPED {e['sequential_cuped_vs_fixed']:.3f}; CUPED's variance ratio on the "
            f"replay data is "
            f"{e['cuped_variance_ratio']:.3f} (A/A standard error at 5%: "
            f"{e['aa_standard_error_at_5_percent']:.1%}). Planned for more power, the CUPED test needs "
            f"more requests: planned at 85% it measured {p85['power']:.1%} power with "
            f"{p85['vs_fixed']:.3f} of the one-look n, at 90% {p90['power']:.1%} with {p90['vs_fixed']:.3f}.",
        ]
    )


def shadow_block(results: dict) -> str:
    """bench/results.json["shadow"] (bench/shadow.py): what a shadow costs the caller, what it saves."""
    s = results["shadow"]
    lat, conc, need, power = (
        s["latency"],
        s["concurrent"],
        s["required_requests"],
        s["measured_power_at_those_sizes"],
    )
    fifths = lat["shadow_added_p50_ms_by_fifth"]
    rows = [
        ("champion, challenger as a logged shadow", lat["with_shadow"]),
        ("champion alone, logged", lat["without_shadow"]),
        ("champion alone, not logged", lat["without_shadow_or_logging"]),
    ]
    mirrors = s["mirrors"]["concurrent"]
    met = {True: "met", False: "**not met**"}
    return "\n".join(
        [
            f"From `python -m bench.shadow` ({s['started'][:16].replace('T', ' ')} UTC; "
            f"{describe(s['machine'])}; 1-minute load average {s['load_average_before'][0]:.1f} before and "
            f"{s['load_average_after'][0]:.1f} after; source: `bench/results.json`). Three local stacks, "
            "started as `python -m serving.local up` starts one, serve the same models; sequential 1-row "
            f"predictions, {lat['with_shadow']['requests']:,} each, go through them interleaved in a "
            "shuffled order:",
            "",
            "| | p50 ms | p99 ms |",
            "|---|---|---|",
            *[f"| {name} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |" for name, r in rows],
            "",
            f"The shadow adds **{s['shadow_added_p50_ms']:+.2f} ms at p50** (goal <= +0.2 ms: "
            f"{met[s['goals']['shadow_added_p50_ms']['met']]}; by fifth of the run {min(fifths):+.2f} to "
            f"{max(fifths):+.2f}) and {s['shadow_added_p99_ms']:+.2f} ms at p99; request logging adds "
            f"{s['logging_added_p50_ms']:+.2f} ms. With {conc['callers']} callers at once the shadow's model "
            f"competes for the same cores: p50 {conc['with_shadow']['p50_ms']:.2f} against "
            f"{conc['without_shadow']['p50_ms']:.2f} ms, {conc['throughput_ratio']:.2f}x the requests/s, and "
            f"{mirrors['skipped']:,} of {mirrors['mirrored'] + mirrors['skipped']:,} mirrors skipped and "
            "counted (`gateway_shadow_requests_skipped`), as Istio drops a mirror it cannot send.",
            "",
            f"What the shadow saves: {s['replay']['paired_rows']:,} of {s['replay']['rows']:,} replayed rows "
            f"were answered by both models and paired by `Seldon-Puid`. To detect the challenger's "
            f"{need['effect']:+.3f} in mean reward with 80% power, the paired comparison needs "
            f"**{need['paired']:,.0f}** callers' requests against **{need['ab_total']:,.0f}** for a 50/50 "
            f"A/B test: **{s['ab_over_paired_requests']:.1f}x fewer** (goal >= 5x: "
            f"{met[s['goals']['ab_over_paired_requests']['met']]}); measured power at those sizes "
            f"{power['paired']:.2f} and {power['ab']:.2f} ({power['simulations']:,} resamples).",
        ]
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.readme", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--stages", type=Path, default=NOTEBOOK_STAGES, help="the notebook runner's stage times"
    )
    parser.add_argument("--bench", type=Path, default=BENCH_RESULTS, help="the benchmark's results")
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))  # bench/ is a folder of the repo, not an installed package
    from bench import report  # here: bench.report imports this module

    missing = [str(p) for p in (args.stages, args.bench) if not p.is_file()]
    if missing:
        print(
            f"error: {', '.join(missing)} not found: `make run` writes the stages, `make bench` the results",
            file=sys.stderr,
        )
        return 1
    record = json.loads(args.stages.read_text())
    if "machine" not in record:
        print(f"error: {args.stages} is from an older runner: run `make run` again", file=sys.stderr)
        return 1
    replace_block("stages", stages_table(record), args.readme)
    replace_block("bench", report.render(json.loads(args.bench.read_text())), args.readme)
    replace_block("reliability", report.RELIABILITY, args.readme)
    if BANDIT_RESULTS.is_file():
        from bench import bandit

        replace_block("bandit", bandit.readme_block(json.loads(BANDIT_RESULTS.read_text())), args.readme)
    replace_block("experiments", experiments_table(json.loads(args.bench.read_text())), args.readme)
    replace_block("shadow", shadow_block(json.loads(args.bench.read_text())), args.readme)
    print(f"refreshed {args.readme.name} from {args.stages.name} and {args.bench.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
