"""Shadow mirroring, as Istio's ``mirror`` does: a copy of each ingress request, prediction or
feedback (or that percentage), sent to the shadow predictor after the caller's answer is ready, its
answer discarded."""

from __future__ import annotations

import asyncio
import logging
import time

from serving import deployment as sdep
from serving.gateway.metrics import SHADOW_SKIPPED

logger = logging.getLogger("serving.gateway")


class ShadowMirror:
    """The Gateway's mirrors: expects ``config``, ``random_ids``, ``mirrors``, ``mirrored``,
    ``mirror_skipped`` (set by ``Gateway.__init__``), ``_call_model`` and ``_observe`` (Executor)."""

    def mirror(self, deployment, shadow: sdep.Predictor, service: str, headers, body: bytes) -> None:
        """Send a copy of an ingress request to the shadow predictor, as Istio's ``mirror`` does: fire
        and forget (the answer is discarded), every request when the shadow's traffic is 0, else that
        percentage. The shadow's executor is stood in for as any other's: its own metrics
        (predictor_name = the shadow) and logger, the caller's ``Seldon-Puid`` or a puid of its own.

        Feedback is mirrored too: the operator (v1.17.1 ``createIstioResources``) puts the mirror
        on the whole REST route, ``/seldon/<namespace>/<deployment>/``, so a feedback posted to the
        ingress reaches the shadow's executor, which logs it and passes it to the shadow's model:
        its feedback counters then hold rewards of another predictor's answers. feedback.py sends
        each arm's feedback to that arm's own port (its own Service on a cluster): never mirrored.
        """
        if shadow.traffic and self.random_ids.random() * 100 >= shadow.traffic:
            return
        if len(self.mirrors) >= self.config.shadow_max_in_flight:
            # a slow or dead shadow must not pile up tasks (memory, CPU) in the caller's gateway
            self.mirror_skipped += 1
            SHADOW_SKIPPED.labels(deployment.name, shadow.name).inc()
            return
        self.mirrored += 1
        task = asyncio.create_task(self._mirror(deployment, shadow, service, headers, body))
        self.mirrors.add(task)
        task.add_done_callback(self.mirrors.discard)

    async def _mirror(self, deployment, shadow: sdep.Predictor, service: str, headers, body: bytes) -> None:
        start = time.perf_counter()
        try:
            response = await self._call_model(headers, body, deployment, shadow, service)
        except Exception:  # nothing of the shadow's may reach the caller or the event loop's log spam
            logger.exception("mirror to shadow %s failed", shadow.name)
            return
        self._observe(deployment, shadow, service, "POST", response.status, start)
