"""What the manifest says, applied and re-applied: the traffic split (``Routes``), the check that
every predictor has a model server, the reload (on a change or ``POST /admin/reload``) and the
request loggers the graph declares."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field

from serving import deployment as sdep
from serving.request_logger import LoggerProcess, RequestLogger

logger = logging.getLogger("serving.gateway")


@dataclass
class Routes:
    deployment: sdep.Deployment
    names: list[str] = field(default_factory=list)
    weights: list[int] = field(default_factory=list)
    shadow: sdep.Predictor | None = None  # gets a mirror of the ingress's predictions, never a route

    @classmethod
    def of(cls, deployment: sdep.Deployment) -> Routes:
        live = [p for p in deployment.predictors if p.traffic > 0 and not p.shadow]
        shadow = next((p for p in deployment.predictors if p.shadow), None)
        return cls(deployment, [p.name for p in live], [p.traffic for p in live], shadow)


class ManifestReloader:
    """The Gateway's manifest: expects ``config``, ``routes``, ``mtime``, ``reload_error``, ``reloads``
    and ``hub`` (set by ``Gateway.__init__``)."""

    def _check_upstreams(self, deployment: sdep.Deployment) -> None:
        missing = [p.name for p in deployment.servers if p.name not in self.config.upstreams]
        if missing:
            raise sdep.DeploymentError(
                f"{deployment.source}: predictors {missing} have no running model server; "
                "adding predictors needs `python -m serving.local down` then `up`"
            )

    def _check_roles(self, deployment: sdep.Deployment) -> None:
        # The supervisor starts a shadow's model server at a lower CPU priority (it must not slow the
        # callers' path on shared cores), which an unprivileged process cannot raise again: a shadow
        # made a live arm in place would answer callers niced, slower than its rival under load - an
        # A/B test and its latency guardrail measuring the machine, not the model. A cluster rolls
        # the predictor's pods on such a change; here the stack restarts.
        before = {p.name: p.shadow for p in self.routes.deployment.predictors}
        changed = [p.name for p in deployment.predictors if before.get(p.name, p.shadow) != p.shadow]
        if changed:
            raise sdep.DeploymentError(
                f"{deployment.source}: {', '.join(changed)} would change role (shadow: true/false); "
                "locally a shadow's model server runs at a lower CPU priority, so the stack must restart "
                "with the new manifest: `python -m serving.local up <manifest> --replace`"
            )

    async def reload(self) -> dict:
        """Re-read the manifest; on any error keep serving the current split and report why."""
        path = self.config.manifest
        try:
            mtime = os.stat(path).st_mtime_ns
            # validation reads the CRD schema: keep it off the event loop
            deployment = await asyncio.get_running_loop().run_in_executor(None, sdep.load, path)
            self._check_upstreams(deployment)
            current = self.routes.deployment
            if deployment.name != current.name or deployment.namespace != current.namespace:
                raise sdep.DeploymentError(f"{path}: renaming the deployment needs `down` then `up`")
            self._check_roles(deployment)
        except (OSError, sdep.DeploymentError) as e:
            self.reload_error = str(e)
            logger.error("manifest not applied, still serving %s: %s", self.routes.deployment.traffic, e)
            return {"applied": False, "error": self.reload_error, "traffic": self.routes.deployment.traffic}
        self.mtime = mtime
        await self._start_loggers(deployment)
        self.routes = Routes.of(deployment)  # one assignment: requests in flight keep their arm
        self.reload_error = None
        self.reloads += 1
        logger.info("applied %s: traffic %s", path, deployment.traffic)
        return {"applied": True, "traffic": deployment.traffic}

    async def watch_manifest(self) -> None:
        while True:
            await asyncio.sleep(self.config.reload_interval)
            try:
                mtime = os.stat(self.config.manifest).st_mtime_ns
            except OSError:
                continue
            if mtime != self.mtime:
                await self.reload()

    async def _start_loggers(self, deployment: sdep.Deployment) -> None:
        """Run the manifest's request loggers (a new logger process when their specs changed)."""
        loggers = RequestLogger.for_manifest(deployment.manifest)
        old = self.hub
        if (old.configs if old else []) == (LoggerProcess(loggers).configs if loggers else []):
            return
        self.hub = await LoggerProcess(loggers).start() if loggers else None
        if old is not None:
            asyncio.create_task(old.close())  # it sends what it holds; new events go to the new one
