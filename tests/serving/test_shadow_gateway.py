"""The gateway with a shadow predictor and request loggers, without a stack (fast).

A real gateway on free loopback ports serves serving/model-shadow.yaml (its logger URLs moved to a
real request-logger sink on a free port). Its "model servers" are small HTTP servers on loopback
that answer as a Seldon model does and record the requests they get; the shadow's can be slow or
absent. What is checked is what the issue asks of the gateway: callers are answered by the main
predictor only, whatever the shadow does; the shadow gets every prediction with the caller's
``Seldon-Puid`` (or a puid of its own) and has its own executor metrics; mirrors that cannot be
sent are counted; every node's request and response reach the sink and pair up by request id.
"""

from __future__ import annotations

import asyncio
import copy
import time
import uuid
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from serving import aio
from serving.gateway import Gateway, GatewayConfig
from serving.local import free_port
from serving.request_logger import Sink, read_events
from tests.traffic import PREDICTION

SHADOW = Path(__file__).resolve().parents[2] / "serving" / "model-shadow.yaml"
PATH = "/seldon/default/wines-classifier/api/v1.0/predictions"


class Model:
    """A loopback HTTP server answering /predict as a Seldon model (named ``node``) does."""

    def __init__(self, node: str, delay: float = 0.0):
        self.node, self.delay, self.puids, self.feedback, self.runner = node, delay, [], [], None

    async def predict(self, request: web.Request) -> web.Response:
        await request.read()
        self.puids.append(request.headers.get("Seldon-Puid"))
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.json_response(
            {"data": {"names": ["quality"], "ndarray": [[6.0]]}, "meta": {"requestPath": {self.node: "img"}}}
        )

    async def send_feedback(self, request: web.Request) -> web.Response:
        self.feedback.append((request.headers.get("Seldon-Puid"), await request.json()))
        return web.json_response({"data": {"ndarray": []}, "meta": {}})

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/predict", self.predict)
        app.router.add_post("/send-feedback", self.send_feedback)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        return f"http://127.0.0.1:{port}"


def manifest_file(tmp_path: Path, sink_port: int, shadow_traffic: int = 0) -> Path:
    manifest = copy.deepcopy(yaml.safe_load(SHADOW.read_text()))
    for item in manifest["spec"]["predictors"]:
        item["graph"]["logger"]["url"] = f"http://127.0.0.1:{sink_port}/"
        if item.get("shadow"):
            item["traffic"] = shadow_traffic
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "model-shadow.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path


def run_gateway(
    tmp_path, n: int, *, shadow="ok", sink=True, puid=True, shadow_traffic=0, max_in_flight=64, feedback=False
):
    """Serve ``n`` sequential predictions through the ingress (``feedback``: each followed by its
    feedback, through the ingress too); what the callers, models, sink and gateway saw. ``shadow``:
    "ok", "slow" (answers after 2 s) or "dead" (nothing listens)."""
    sink_port = free_port()
    config_path = manifest_file(tmp_path, sink_port, shadow_traffic)

    async def run():
        main = Model("model-b")
        shadow_model = Model("model-a", delay=2.0 if shadow == "slow" else 0.0)
        upstreams = {"model-b": await main.start()}
        upstreams["model-a"] = (
            await shadow_model.start() if shadow != "dead" else f"http://127.0.0.1:{free_port()}"
        )
        receiver = Sink(tmp_path / "events", sink_port) if sink else None
        if receiver:
            await receiver.start()
        config = GatewayConfig(
            manifest=str(config_path),
            upstreams=upstreams,
            predictor_ports={"model-b": free_port(), "model-a": free_port()},
            ingress_port=free_port(),
            shadow_max_in_flight=max_in_flight,
        )
        gateway = Gateway(config)
        runners = await gateway.start()
        answers, fed = [], []
        try:
            async with aiohttp.ClientSession() as session:
                for _ in range(n):
                    sent = str(uuid.uuid4()) if puid else None
                    headers = {"Seldon-Puid": sent} if sent else {}
                    start = time.perf_counter()
                    url = f"http://127.0.0.1:{config.ingress_port}{PATH}"
                    async with session.post(url, json=PREDICTION, headers=headers) as response:
                        body = await response.json()
                        answers.append((sent, response.status, body, time.perf_counter() - start))
                    if feedback:
                        message = {"request": PREDICTION, "response": body, "reward": 1.0}
                        url = url.replace("/predictions", "/feedback")
                        async with session.post(url, json=message, headers=headers) as response:
                            fed.append((sent, response.status, await response.json()))
                status_url = f"http://127.0.0.1:{config.ingress_port}/admin/status"
                async with session.get(status_url) as response:
                    status = await response.json()
                # let the mirrors finish (the slow shadow's take 2 s) and the loggers send
                deadline = time.monotonic() + 10
                while gateway.mirrors and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                await gateway.close()  # the logger process sends what it holds, then reports
                async with session.get(f"http://127.0.0.1:{config.ingress_port}/metrics") as response:
                    metrics = await response.text()
                logged = {name: (log.sent, dict(log.dropped)) for name, log in gateway.hub.loggers.items()}
        finally:
            for runner in runners:
                await runner.cleanup()
            await gateway.session.close()
            if receiver:
                await receiver.close()
            for model in (main, shadow_model):
                if model.runner:
                    await model.runner.cleanup()
        return dict(
            answers=answers,
            fed=fed,
            main=main.puids,
            shadow=shadow_model.puids,
            main_feedback=main.feedback,
            shadow_feedback=shadow_model.feedback,
            status=status,
            metrics=metrics,
            logged=logged,
        )

    return aio.run(run())


def server_count(metrics: str, predictor: str, code: str, service: str = "predictions") -> float:
    for family in text_string_to_metric_families(metrics):
        if family.name == "seldon_api_executor_server_requests_seconds":
            return sum(
                s.value
                for s in family.samples
                if s.name.endswith("_count")
                and s.labels["predictor_name"] == predictor
                and s.labels["code"] == code
                and s.labels["service"] == service
            )
    return 0.0


def test_callers_get_the_main_answer_and_the_shadow_every_request_with_the_callers_puid(tmp_path):
    before = run_gateway(tmp_path / "warm", 1)["metrics"]  # the histograms are this process's, shared
    seen = run_gateway(tmp_path, 30)
    assert {(status, next(iter(body["meta"]["requestPath"]))) for _, status, body, _ in seen["answers"]} == {
        (200, "model-b")
    }
    sent = [puid for puid, *_ in seen["answers"]]
    assert seen["main"] == sent
    assert sorted(seen["shadow"]) == sorted(sent)  # every prediction, the caller's request id
    assert seen["status"]["shadow"]["predictor"] == "model-a"
    assert seen["status"]["shadow"]["mirrored"] == 30 and seen["status"]["shadow"]["skipped"] == 0
    # the shadow's own executor metrics: predictor_name is the only difference
    grew = server_count(seen["metrics"], "model-a", "200") - server_count(before, "model-a", "200")
    assert grew == 30
    # every node's request and response reached the sink, and they pair up by request id
    events = read_events(tmp_path / "events")
    by = {}
    for e in events:
        by.setdefault((e["endpoint"], e["kind"]), set()).add(e["requestid"])
    for endpoint in ("model-b", "model-a"):
        for kind in ("request", "response"):
            assert by[(endpoint, kind)] == set(sent), (endpoint, kind)
    assert seen["logged"] == {"model-b": (60, {}), "model-a": (60, {})}


def test_without_a_seldon_puid_the_shadow_has_a_request_id_of_its_own(tmp_path):
    seen = run_gateway(tmp_path, 10, puid=False)
    assert len(seen["shadow"]) == 10 and len(seen["main"]) == 10
    assert not set(seen["shadow"]) & set(seen["main"])  # as two executors on a cluster: no pairing


def test_a_shadow_mirror_percentage_mirrors_about_that_share(tmp_path):
    seen = run_gateway(tmp_path, 200, shadow_traffic=30)
    # binomial(200, 0.3): mean 60, sd 6.5; the bounds are 4.6 sd away
    assert 30 <= len(seen["shadow"]) <= 90
    assert seen["status"]["shadow"]["mirrored"] == len(seen["shadow"])


def test_a_slow_shadow_costs_the_caller_nothing_and_mirrors_beyond_the_bound_are_counted(tmp_path):
    seen = run_gateway(tmp_path, 20, shadow="slow", max_in_flight=5)
    assert {status for _, status, _, _ in seen["answers"]} == {200}
    assert max(seconds for *_, seconds in seen["answers"]) < 1.0  # the shadow takes 2 s each
    assert seen["status"]["shadow"] == {"predictor": "model-a", "mirrored": 5, "skipped": 15, "in_flight": 5}
    assert len(seen["shadow"]) == 5


def test_a_dead_shadow_changes_nothing_for_the_caller(tmp_path):
    seen = run_gateway(tmp_path, 20, shadow="dead")
    assert [status for _, status, _, _ in seen["answers"]] == [200] * 20
    assert server_count(seen["metrics"], "model-a", "503") >= 20  # the shadow's executor reports it
    assert seen["logged"]["model-a"] == (20, {})  # the request was logged, no response (as on a cluster)


def test_a_dead_logger_sink_leaves_callers_untouched_and_the_loss_is_counted(tmp_path):
    seen = run_gateway(tmp_path, 20, sink=False)
    assert [status for _, status, _, _ in seen["answers"]] == [200] * 20
    for name in ("model-b", "model-a"):
        sent, dropped = seen["logged"][name]
        assert sent == 0 and sum(dropped.values()) == 40, (name, dropped)


def test_feedback_through_the_ingress_is_mirrored_to_the_shadow_as_istio_does(tmp_path):
    """The operator's mirror covers the whole REST route, feedback included: the shadow's executor
    logs it and its model gets the main predictor's reward (whose answer it was)."""
    before = run_gateway(tmp_path / "warm", 1, feedback=True)["metrics"]
    seen = run_gateway(tmp_path, 10, feedback=True)
    sent = [puid for puid, *_ in seen["answers"]]
    # the caller's feedback is answered by the main predictor alone
    assert [(puid, status) for puid, status, _ in seen["fed"]] == [(p, 200) for p in sent]
    assert [puid for puid, _ in seen["main_feedback"]] == sent
    # the shadow got the same feedback: the caller's request id, the main's response and reward
    assert sorted(puid for puid, _ in seen["shadow_feedback"]) == sorted(sent)
    for _, message in seen["shadow_feedback"]:
        assert (
            message["reward"] == 1.0 and next(iter(message["response"]["meta"]["requestPath"])) == "model-b"
        )
    assert seen["status"]["shadow"]["mirrored"] == 20  # 10 predictions, 10 feedbacks
    grew = server_count(seen["metrics"], "model-a", "200", "feedback") - server_count(
        before, "model-a", "200", "feedback"
    )
    assert grew == 10
    # the shadow's logger logged each feedback (mode all) under the caller's request id
    events = read_events(tmp_path / "events")
    assert {e["requestid"] for e in events if e["endpoint"] == "model-a" and e["kind"] == "feedback"} == set(
        sent
    )


def test_a_dead_shadow_changes_nothing_for_the_callers_feedback(tmp_path):
    seen = run_gateway(tmp_path, 10, shadow="dead", feedback=True)
    assert [status for _, status, _ in seen["fed"]] == [200] * 10
    assert len(seen["main_feedback"]) == 10
    assert server_count(seen["metrics"], "model-a", "503", "feedback") >= 10


def test_mirrors_waiting_on_a_slow_shadow_never_hold_the_callers_connections(tmp_path):
    """As many mirrors in flight as the bound allows (each holding a connection to the shadow for
    2 s) must leave the callers' upstream connections free: no caller waits for the shadow."""
    bound = GatewayConfig(manifest="", upstreams={}, predictor_ports={}).shadow_max_in_flight
    seen = run_gateway(tmp_path, bound + 40, shadow="slow", max_in_flight=bound)
    assert {status for _, status, _, _ in seen["answers"]} == {200}
    assert seen["status"]["shadow"]["mirrored"] == bound and seen["status"]["shadow"]["skipped"] == 40
    assert max(seconds for *_, seconds in seen["answers"]) < 1.0  # the shadow takes 2 s each
