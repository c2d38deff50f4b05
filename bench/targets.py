"""The benchmark's goals, each result's verdict against its goal, and the summary printed at the end
(bench/report.py renders the same results into README.md)."""

from __future__ import annotations

TARGETS = {
    "gateway_overhead_p50_ms": ("<=", 0.5),
    "gateway_throughput_ratio_c8": (">=", 0.8),
    "ours_vs_mlflow_serve_p50_ratio": ("<=", 0.5),
    "ours_vs_mlserver_p50_ratio": ("<=", 1.0),
    "replay_speedup": (">=", 5.0),
    "notebook_seconds": ("<", 90.0),
}


def verdicts(results: dict) -> list[dict]:
    values = {
        "gateway_overhead_p50_ms": results["a"]["overhead_p50_ms"],
        "gateway_throughput_ratio_c8": results["a"]["throughput_ratio_c8"],
        "ours_vs_mlflow_serve_p50_ratio": results["b"].get("ours_vs_mlflow_serve_p50_ratio"),
        "ours_vs_mlserver_p50_ratio": results["b"].get("ours_vs_mlserver_p50_ratio"),
        "replay_speedup": results["c"]["speedup"] if results["c"].get("totals_identical") else None,
        "notebook_seconds": results["d"].get("seconds"),
    }
    out = []
    for name, (op, target) in TARGETS.items():
        value = values[name]
        met = (
            None if value is None else {"<=": value <= target, ">=": value >= target, "<": value < target}[op]
        )
        out.append({"target": name, "value": value, "goal": f"{op} {target:g}", "met": met})
    return out


def print_summary(results: dict) -> None:
    a, b, c = results["a"], results["b"], results["c"]
    print("\n=== results (median of rounds) ===")
    for name, runs in a["runs"].items():
        print(
            f"(a) {name:<8} seq p50 {runs['seq']['p50_ms']:.3f} ms p99 {runs['seq']['p99_ms']:.3f} ms "
            f"{runs['seq']['rps']:.0f}/s | c8 {runs['c8']['rps']:.0f}/s"
        )
    print(
        f"    gateway overhead p50 +{a['overhead_p50_ms']:.3f} ms, "
        f"throughput c1 {a['throughput_ratio_c1']:.2f}x c8 {a['throughput_ratio_c8']:.2f}x of direct"
    )
    for name, runs in b["runs"].items():
        print(
            f"(b) {name:<26} seq p50 {runs['seq']['p50_ms']:.3f} ms p99 {runs['seq']['p99_ms']:.3f} ms "
            f"| c8 {runs['c8']['rps']:.0f}/s"
        )
    for label in ("original", "feedback.py", "feedback.py, concurrency 1"):
        r = c[label]
        print(
            f"(c) {label:<28} {r['rows']} rows in {r['seconds']:.1f} s ({r['rows_per_s']}/s), "
            f"accepted {r['accepted']}, Prometheus counted {r['prometheus_feedback']:g}"
        )
    print(f"    speedup {c['speedup']}x, totals identical: {c['totals_identical']}")
    print(f"(d) notebook: {results['d'].get('seconds', results['d']['status'])}")
    print("\n=== targets ===")
    for v in results["targets"]:
        mark = {True: "met", False: "NOT met", None: "n/a"}[v["met"]]
        print(f"  {v['target']:<32} {v['value']!s:>8}  goal {v['goal']:<8} {mark}")
