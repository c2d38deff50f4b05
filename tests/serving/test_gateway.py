"""The gateway on its own, without a stack: request bodies with a Content-Encoding, and the fine
latency histogram it exports. A real gateway on free loopback ports; its model servers are ports
nothing listens on (a real, if unhappy, state), so a request that passes the gateway's own checks
is answered 503 - which shows the gateway let it through. An upstream that refused a connection gets
nothing until its readiness probe answers (a stand-in model server). The last test (marked ``stack``)
sends a gzip body through a real stack to a real model server.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib

import aiohttp
import pytest
import requests
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from serving import aio
from serving.encoding import BodyError, decode_body
from serving.gateway import FINE_BUCKETS, Gateway, GatewayConfig
from serving.local import free_port
from tests.conftest import MANIFEST
from tests.traffic import PREDICTION

INGRESS_PATH = "/seldon/default/wines-classifier/api/v1.0/predictions"
JSON = b'{"data": {"ndarray": [[1.0]]}}'


def gateway_answers(requests_: list[tuple[str, str, bytes, dict]]) -> tuple[list[tuple[int, dict]], str]:
    """Start a gateway, send ``(port name, path, body, headers)`` requests; (status, JSON) each, /metrics."""
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config = GatewayConfig(
        manifest=str(MANIFEST),
        upstreams={"model-a": nowhere, "model-b": nowhere},
        predictor_ports={"model-a": free_port(), "model-b": free_port()},
        ingress_port=free_port(),
        max_body_bytes=4096,
    )
    ports = {"ingress": config.ingress_port, **config.predictor_ports}

    async def run():
        gateway = Gateway(config)
        runners = await gateway.start()
        answers = []
        try:
            async with aiohttp.ClientSession(auto_decompress=False) as session:
                for where, path, body, headers in requests_:
                    url = f"http://127.0.0.1:{ports[where]}{path}"
                    async with session.post(url, data=body, headers=headers) as response:
                        answers.append((response.status, await response.json(content_type=None)))
                async with session.get(f"http://127.0.0.1:{config.ingress_port}/metrics") as response:
                    metrics = await response.text()
        finally:
            for runner in runners:
                await runner.cleanup()
            await gateway.session.close()
        return answers, metrics

    return aio.run(run())


BAD_BODIES = {
    "not gzip": ("gzip", b'{"data": {"ndarray": [[1.0]]}}'),
    "truncated gzip": ("gzip", gzip.compress(JSON)[:-6]),
    "gzip with bytes after it": ("gzip", gzip.compress(JSON) + b"xx"),
    "not deflate": ("deflate", b"\x78\x9c not deflate"),
    "an unknown coding": ("compress", JSON),
    "brotli": ("br", JSON),
}


@pytest.mark.parametrize("where", ["ingress", "model-a"])
def test_a_body_that_is_not_its_content_encoding_is_a_400_naming_it(where):
    path = INGRESS_PATH if where == "ingress" else "/api/v1.0/feedback"
    sent = [(where, path, body, {"Content-Encoding": coding}) for coding, body in BAD_BODIES.values()]
    answers, _ = gateway_answers(sent)
    for case, (coding, _), (status, body) in zip(BAD_BODIES, BAD_BODIES.values(), answers, strict=True):
        assert status == 400, (case, status, body)
        info = body["status"]["info"]
        assert coding in info, (case, info)
        unsupported = case in ("an unknown coding", "brotli")
        assert body["status"]["reason"] == ("UNSUPPORTED" if unsupported else "BAD") + "_CONTENT_ENCODING"


@pytest.mark.parametrize("where", ["ingress", "model-a"])
def test_gzip_and_deflate_bodies_pass_the_gateway(where):
    path = INGRESS_PATH if where == "ingress" else "/api/v1.0/predictions"
    raw_deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    sent = [
        (where, path, gzip.compress(JSON), {"Content-Encoding": "gzip"}),
        (where, path, zlib.compress(JSON), {"Content-Encoding": "deflate"}),
        (where, path, raw_deflate.compress(JSON) + raw_deflate.flush(), {"Content-Encoding": "deflate"}),
        (where, path, JSON, {"Content-Encoding": "identity"}),
    ]
    answers, _ = gateway_answers(sent)
    # 503: decoded and sent on to the model server, which is not there
    assert [status for status, _ in answers] == [503] * len(sent), answers


def test_decode_body_limits_the_decoded_size_and_undoes_codings_in_reverse_order():
    assert decode_body(gzip.compress(zlib.compress(JSON)), "deflate, gzip", 4096) == JSON
    assert decode_body(JSON, "identity", 4096) == JSON
    with pytest.raises(BodyError) as bomb:
        decode_body(gzip.compress(b" " * 100_000), "gzip", 4096)
    assert bomb.value.status == 413 and "4096" in str(bomb.value)


def test_fine_histogram_has_sub_millisecond_buckets_and_the_executor_labels():
    # feedback to model-b: no other test here sends that (the histograms are the process's, shared)
    answers, metrics = gateway_answers([("model-b", "/api/v1.0/feedback", JSON, {})] * 5)
    assert [status for status, _ in answers] == [503] * 5
    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    fine = families["gateway_request_seconds"]
    seldon = families["seldon_api_executor_server_requests_seconds"]
    assert fine.type == seldon.type == "histogram"

    def buckets(family):
        return [
            s
            for s in family.samples
            if s.name.endswith("_bucket")
            and s.labels["predictor_name"] == "model-b"
            and s.labels["service"] == "feedback"
        ]

    fine_buckets, seldon_buckets = buckets(fine), buckets(seldon)
    assert {k for s in fine_buckets for k in s.labels} == {k for s in seldon_buckets for k in s.labels}
    assert [float(s.labels["le"]) for s in fine_buckets] == [*map(float, FINE_BUCKETS), float("inf")]
    labels = {k: v for k, v in fine_buckets[0].labels.items() if k != "le"}
    assert labels == {
        "deployment_name": "wines-classifier",
        "predictor_name": "model-b",
        "predictor_version": labels["predictor_version"],
        "service": "feedback",
        "method": "POST",
        "code": "503",
    }
    # the same requests in both: 5 each
    assert fine_buckets[-1].value == seldon_buckets[-1].value == 5


@pytest.mark.stack
@pytest.mark.parametrize("where", ["ingress", "predictor"])
def test_a_gzip_prediction_is_answered_by_a_model_server(stack, where):
    url = stack.ingress_url if where == "ingress" else stack.predictor_urls["model-a"] + "/api/v1.0"
    body = gzip.compress(json.dumps(PREDICTION).encode())
    answer = requests.post(
        f"{url}/predictions",
        data=body,
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["data"]["ndarray"]) == 1


def test_an_upstream_that_refused_gets_no_request_until_its_readiness_probe_answers():
    """As a Service drops a dead pod's endpoint and adds the new pod's only once it is ready: a
    restarted model server whose port is open but whose probe fails gets nothing (503 at once)."""
    port = free_port()
    config = GatewayConfig(
        manifest=str(MANIFEST),
        upstreams={"model-a": f"http://127.0.0.1:{port}", "model-b": f"http://127.0.0.1:{free_port()}"},
        predictor_ports={"model-a": free_port(), "model-b": free_port()},
        ingress_port=free_port(),
    )
    url = f"http://127.0.0.1:{config.predictor_ports['model-a']}/api/v1.0/predictions"
    seen: list[tuple[str, bool]] = []  # (path, ready then) of every request the stand-in model server got
    ready = False

    async def ping(request):
        seen.append((request.path, ready))
        return web.Response(text="pong", status=200 if ready else 503)

    async def predict(request):
        seen.append((request.path, ready))
        return web.json_response({"data": {"ndarray": [5.0]}, "meta": {"requestPath": {"model-a": "x"}}})

    async def run():
        nonlocal ready
        gateway = Gateway(config)
        runners = await gateway.start()
        server = web.AppRunner(web.Application())
        server.app.router.add_get("/health/ping", ping)
        server.app.router.add_post("/predict", predict)
        answers = []
        try:
            async with aiohttp.ClientSession() as session:

                async def send():
                    async with session.post(url, data=JSON) as response:
                        body = await response.json(content_type=None)
                        answers.append((response.status, body.get("status", {}).get("reason")))

                await send()  # nothing listens: refused
                await send()  # not called again until the probe answers
                await server.setup()  # the port opens, the model "loads": the probe fails
                await web.TCPSite(server, "127.0.0.1", port).start()
                for _ in range(10):
                    await send()
                    await asyncio.sleep(0.1)
                ready = True  # loaded: the probe answers within a period (1 s in the manifest)
                for _ in range(50):
                    await send()
                    if answers[-1][0] == 200:
                        break
                    await asyncio.sleep(0.1)
        finally:
            for runner in [*runners, server]:
                await runner.cleanup()
            await gateway.session.close()
        return answers

    answers = aio.run(run())
    assert answers[:2] == [(503, "UPSTREAM_UNAVAILABLE"), (503, "UPSTREAM_NOT_READY")], answers
    assert set(answers[2:-1]) == {(503, "UPSTREAM_NOT_READY")} and answers[-1] == (200, None), answers
    # the stand-in got probes until it was ready, and the first prediction only after that
    first = next(i for i, (path, _) in enumerate(seen) if path == "/predict")
    assert all(path == "/health/ping" for path, _ in seen[:first]) and seen[first - 1] == (
        "/health/ping",
        True,
    )
