"""serving/model-shadow.yaml rendered for a cluster keeps what makes it a logged shadow deployment:
``shadow: true`` and ``traffic`` as they are, and each graph node's ``logger`` block unchanged (the
executor reads it there); only modelUri, the namespace and envSecretRefName differ."""

from __future__ import annotations

from serving import deployment as sdep
from serving.cluster import render
from tests.serving.test_shadow_manifest import SHADOW

URIS = {
    "models:/wines-classifier@a": "s3://mlflow-seldon-models/tutorial/wines-classifier/1",
    "models:/wines-classifier@b": "s3://mlflow-seldon-models/tutorial/wines-classifier/2",
}
SECRET = "seldon-rclone-secret"


def test_rendering_the_shadow_manifest_keeps_the_shadow_and_the_logger_specs(crd):
    source = render.load_plain(SHADOW)
    rendered = render.plain(
        render.render_deployment(URIS, "seldon", env_secret=SECRET, source=SHADOW, crd=crd)
    )

    assert sdep.validate_schema(rendered, crd) == []
    parsed = sdep.parse(rendered, crd=crd, local=False)
    assert {p.name: p.shadow for p in parsed.predictors} == {"model-b": False, "model-a": True}
    assert parsed.traffic == {"model-b": 100, "model-a": 0}
    for before, after in zip(source["spec"]["predictors"], rendered["spec"]["predictors"], strict=True):
        assert (
            after["graph"]["logger"]
            == before["graph"]["logger"]
            == {
                "mode": "all",
                "url": before["graph"]["logger"]["url"],
            }
        )
        assert after.get("shadow") == before.get("shadow") and after["traffic"] == before["traffic"]
    paths = {f"spec.predictors[{i}].graph.{f}" for i in (0, 1) for f in ("modelUri", "envSecretRefName")}
    assert set(render.differences(source, rendered)) == {"metadata.namespace"} | paths
