"""The experiment from the command line.

    python -m experiment report [LOG ...]                    # per-arm table, verdict, attribution
    python -m experiment promote [--log LOG ...] [--manifest M]
    python -m experiment rollback [--manifest M]
    python -m experiment dashboard > serving/grafana/ab-test.json

A LOG is a CSV written by feedback.py, or a glob such as 'runs/feedback-arm*.csv'. Without one,
the newest runs/feedback-arm*.csv is used (and named). report reports each log on its own;
promote pools its logs as one experiment. Exit status: 0 done, 3 no decision (promote
changed nothing), 1 error.
"""

from __future__ import annotations

import argparse
import math
import sys

from experiment.attribution import attribution
from experiment.dashboard import dashboard_json
from experiment.log import LogError, log_paths, newest_log, read_log
from experiment.stats import stats_table
from experiment.verdict import verdict


def report(log, alpha: float = 0.05) -> str:
    """Per-arm table, verdict and (for logs with feedback routing) the attribution, as text."""
    result = verdict(log, alpha=alpha)
    need = (
        "no finite number (no difference)" if math.isinf(result.required_n) else f"{result.required_n:,.0f}"
    )
    parts = [
        stats_table(result.stats).to_string(float_format=lambda v: f"{v:.3f}"),
        "",
        result.sentence,
        f"RMSE {result.first} - {result.second}: {result.rmse_difference:.3f} "
        f"(95% CI {result.rmse_difference_ci[0]:.3f} to {result.rmse_difference_ci[1]:.3f}, BCa bootstrap); "
        f"requests per arm for {result.power_target:.0%} power at the observed difference: {need}",
    ]
    rows = read_log(log)
    if "feedback_arm" in rows.columns and "feedback_status" in rows.columns:
        parts += ["", attribution(rows).summary()]
    return "\n".join(parts)


def _logs_or_newest(logs: list[str]) -> list:
    if logs:
        return logs
    newest = newest_log()
    print(f"using the newest log: {newest}", file=sys.stderr)
    return [str(newest)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiment",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("dashboard", help="print the Grafana dashboard JSON (serving/grafana/ab-test.json)")
    rep = commands.add_parser("report", help="per-arm statistics and the verdict, for each log")
    rep.add_argument("logs", nargs="*", metavar="LOG", help="CSV log(s) or glob(s); default: the newest")
    rep.add_argument("--alpha", type=float, default=0.05)
    helps = {
        "promote": "on a significant verdict: @champion to the winner, all traffic to it",
        "rollback": "undo the latest promotion: the previous @champion and split",
    }
    for command in ("promote", "rollback"):
        sub = commands.add_parser(command, help=helps[command])
        sub.add_argument(
            "--manifest",
            help="the SeldonDeployment working copy "
            "(default: the running local stack's, else runs/model-a-b.yaml)",
        )
        sub.add_argument("--record", help="where promotions are recorded (default runs/promotions.json)")
        sub.add_argument("--state-dir", help="the local stack's state folder (default .stack)")
        if command == "promote":
            sub.add_argument(
                "--log", nargs="+", default=[], help="CSV log(s) or glob(s), pooled; default: the newest"
            )
            sub.add_argument(
                "--alpha", type=float, default=0.05, help="significance level (default %(default)s)"
            )
        else:
            sub.add_argument(
                "--force", action="store_true", help="restore even if alias or split changed since"
            )
    args = parser.parse_args(argv)
    if args.command == "dashboard":
        sys.stdout.write(dashboard_json())
        return 0
    if args.command == "report":
        return _report(args)
    return _promotion(args)


def _report(args) -> int:
    failed = 0
    paths = []
    try:
        for log in _logs_or_newest(args.logs):
            paths += log_paths(log)  # a glob names several logs: each is reported on its own
    except LogError as e:
        print(f"error: {e}", file=sys.stderr)
        failed = 1
    for i, path in enumerate(paths):
        if len(paths) > 1:
            print(("\n" if i else "") + f"== {path}")
        try:
            print(report(path, args.alpha))
        except (LogError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            failed = 1
    return failed


def _promotion(args) -> int:
    from experiment import promotion
    from serving import deployment as sdep
    from training.tracking import use_local_store

    use_local_store()
    try:
        if args.command == "promote":
            logs = _logs_or_newest(args.log)
            outcome = promotion.promote(logs, args.manifest, args.record, args.state_dir, args.alpha)
        else:
            outcome = promotion.rollback(args.manifest, args.record, args.state_dir, args.force)
    except (promotion.PromotionError, LogError, sdep.DeploymentError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(outcome.message)
    return 0 if outcome.changed or args.command == "rollback" else 3


if __name__ == "__main__":
    sys.exit(main())
