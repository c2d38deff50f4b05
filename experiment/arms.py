"""The arms a served manifest runs: their model versions, the traffic split (and handing it all back
to the control), and what the gateway counted per arm - what the monitored experiment reads and edits.
"""

from __future__ import annotations

from experiment.promql import GATEWAY_REQUESTS, LATENCY_SOURCES


def arm_versions(manifest) -> dict:
    """Predictor name -> the registry's ModelVersion its ``modelUri`` serves now (models:/ URIs only)."""
    from serving import deployment as sdep
    from training.tracking import registered_version

    return {p.name: registered_version(p.model_uri) for p in sdep.load(manifest).predictors}


def weights(manifest) -> dict[str, float]:
    """The manifest's traffic split, arms with traffic only (what the sample-ratio check expects)."""
    from serving import deployment as sdep

    return {name: float(w) for name, w in sdep.load(manifest).traffic.items() if w > 0}


def gateway_counts(url: str) -> dict[tuple[str, str], float]:
    """(predictor, HTTP code) -> predictions the gateway answered, read from its own /metrics now."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"{url}/metrics", timeout=5).text
    service, _ = LATENCY_SOURCES[GATEWAY_REQUESTS]
    counts: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{GATEWAY_REQUESTS}_count" and sample.labels.get("service") == service:
                key = (sample.labels.get("predictor_name", ""), sample.labels.get("code", ""))
                counts[key] = counts.get(key, 0.0) + sample.value
    return counts


def error_counts(after: dict, before: dict, arms) -> tuple[dict[str, int], dict[str, int]]:
    """(errors, totals) per arm between two ``gateway_counts`` readings (or counts by (arm, code))."""
    errors, totals = dict.fromkeys(arms, 0), dict.fromkeys(arms, 0)
    for (arm, code), value in after.items():
        if arm in totals:
            added = int(round(value - before.get((arm, code), 0.0)))
            totals[arm] += added
            if code != "200":
                errors[arm] += added
    return errors, totals


def rollback_to(control: str, state_dir=None) -> str:
    """All the traffic to ``control`` in the local stack's served working copy, applied at once."""
    from serving.local import LocalStack
    from serving.manifest import set_traffic

    stack = LocalStack(state_dir) if state_dir is not None else LocalStack()
    manifest = stack.manifest_path
    old = set_traffic(manifest, {name: 100 if name == control else 0 for name in weights(manifest)})
    stack.reload()
    return f"traffic rolled back to {control}: {old} -> {control} 100 in {manifest} (the gateway applied it)"
