"""What every router here shares: state, feedback rules, persistence and metrics.

A router is a seldon-core Python component (``route`` / ``send_feedback``), run by
``serving.microservice`` like the model servers. Its state is a few numbers per branch:

- ``routed``: requests routed to the branch (since the state file was created);
- ``n``: rewards received for it; ``total`` and ``total_sq``: their sum and sum of squares.

**One reward per feedback.** Seldon's routers count ``int(reward * rows)`` successes, so a
one-row request with a reward of 0.9 is a failure (seldon-core #336, #337). Here a feedback is
one observation of its branch's reward, whatever the number of rows in its request (the gateway
and ``feedback.py`` send one row per request) and even with no request at all.

**Bad feedback is a 400, never a crash or a silent miscount:** a reward that is not a finite
number in [0, 1], a feedback without ``meta.routing`` for this router (Seldon's routers crash
with a TypeError), or a routing outside ``0..n_branches-1`` (-1: "every child ran", -2: "the
request was returned" - neither names a branch that served).

**State survives a restart.** After every feedback the state is written to a JSON file: to a
temporary file in the same folder, then ``os.replace`` (atomic on POSIX), so a reader or a
restart sees the old state or the new one, never half a file. No fsync: a ``kill -9`` of the
process leaves what it wrote in the page cache, which the next process reads; only a machine
crash could lose the last writes. Seldon removed its Redis persistence in 1.8, so its routers
start from nothing after every restart. The file is ``state_file`` (a parameter) or
``$ROUTER_STATE_DIR/<PREDICTIVE_UNIT_ID>.json``; on a cluster mount a volume there (an
``emptyDir`` survives container restarts, not pod deletion). Without either, state is in memory
only, and the router says so in its log.

**The state is one process's memory**, so run the router with ``GUNICORN_WORKERS=1`` (threads
are fine: a lock guards every update and every draw). Two workers would each learn half the
rewards and overwrite each other's file.

**Metrics.** Per branch, as Prometheus gauges on the wrapper's metrics port (seldon-core's custom
metrics, label ``branch``): ``router_branch_routed``, ``router_branch_feedback``,
``router_branch_reward_sum`` and ``router_branch_reward_mean``. Gauges rather than counters
because they carry the persisted totals: after a restart they continue instead of restarting at 0.
They are refreshed after each feedback (seldon-core labels them ``method="feedback"``), so they
appear with the first feedback after a start; ``routed`` is not refreshed on every route call,
which would cost a round trip to seldon-core's metrics process per request (the gateway's client
histogram counts the requests each child served).

**Route cost.** ``route_raw`` answers ``{"data": {"ndarray": [[branch]]}}`` without decoding
the request (a bandit ignores the features) and without touching seldon-core's metrics process;
``route(features, feature_names)`` is the same choice for other callers.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import threading
from pathlib import Path

import numpy as np
from seldon_core.flask_utils import SeldonMicroserviceException
from seldon_core.user_model import SeldonNotImplementedError

logger = logging.getLogger(__name__)

STATE_VERSION = 1


class BadFeedback(SeldonMicroserviceException):
    """A feedback this router cannot learn from: HTTP 400 with the reason."""

    def __init__(self, message: str):
        super().__init__(message, status_code=400, reason="ROUTER_BAD_FEEDBACK")


class Router:
    """A bandit over ``n_branches`` children; subclasses choose (``choose``)."""

    algorithm = "router"

    def __init__(
        self,
        n_branches: int = 2,
        seed: int | None = None,
        branch_names: str = "",
        state_file: str = "",
        **unused,
    ):
        if int(n_branches) < 1:
            raise ValueError(f"n_branches must be at least 1, got {n_branches}")
        if unused:
            logger.warning("%s: ignoring unknown parameters %s", type(self).__name__, sorted(unused))
        self.n_branches = int(n_branches)
        names = [n for n in str(branch_names).split(":") if n] if branch_names else []
        if names and len(names) != self.n_branches:
            raise ValueError(f"branch_names {branch_names!r} names {len(names)} branches, not {n_branches}")
        self.branch_names = names or [str(i) for i in range(self.n_branches)]
        self.seed = seed
        self.lock = threading.Lock()
        self.routed = np.zeros(self.n_branches, dtype=np.int64)
        self.n = np.zeros(self.n_branches, dtype=np.int64)
        self.total = np.zeros(self.n_branches)
        self.total_sq = np.zeros(self.n_branches)
        self.starts = 0  # how many times this state was loaded: reseeds the draws after a restart
        self.state_file = self._state_path(state_file)
        if self.state_file is not None and self.state_file.exists():
            self.load_state(self.state_file)
        elif self.state_file is None:
            logger.warning("%s: no state_file and no ROUTER_STATE_DIR: state is in memory only", self)
        self.starts += 1
        # a restarted router must not replay the draws it made before: seed + start number
        self.rng = np.random.default_rng(None if seed is None else [int(seed), self.starts])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({':'.join(self.branch_names)})"

    @staticmethod
    def _state_path(state_file: str) -> Path | None:
        if state_file:
            return Path(state_file)
        folder = os.environ.get("ROUTER_STATE_DIR")
        if folder:
            return Path(folder) / f"{os.environ.get('PREDICTIVE_UNIT_ID', 'router')}.json"
        return None

    # ------------------------------------------------------------------ the choice
    def choose(self) -> int:
        raise NotImplementedError

    def route(self, features, feature_names) -> int:
        with self.lock:
            branch = self.choose()
            self.routed[branch] += 1
        return int(branch)

    def route_raw(self, request):
        if not isinstance(request, dict):
            raise SeldonNotImplementedError("protobuf: let seldon-core decode it")  # gRPC is not served here
        return {"data": {"names": [], "ndarray": [[self.route(None, None)]]}}

    # ------------------------------------------------------------------ learning
    def send_feedback(self, features, feature_names, reward, truth, routing=None):
        branch = self.check_feedback(reward, routing)
        reward = float(reward)
        with self.lock:
            self.n[branch] += 1
            self.total[branch] += reward
            self.total_sq[branch] += reward * reward
            self.learned(branch, reward)
            if self.state_file is not None:
                self.save_state(self.state_file)
        return []

    def learned(self, branch: int, reward: float) -> None:
        """Hook for subclasses that keep more state than the sums."""

    def check_feedback(self, reward, routing) -> int:
        if routing is None:
            raise BadFeedback(
                f"{self}: the feedback has no meta.routing for this router, so no branch to credit; "
                "send back the response the prediction returned (with routing injection on)"
            )
        try:
            branch = int(routing)
        except (TypeError, ValueError):
            raise BadFeedback(f"{self}: routing {routing!r} is not a branch number") from None
        if branch != routing or not 0 <= branch < self.n_branches:
            raise BadFeedback(
                f"{self}: routing {routing!r} names no branch (0..{self.n_branches - 1}); "
                "-1 and -2 mean no single child served"
            )
        try:
            value = float(reward)
        except (TypeError, ValueError):
            raise BadFeedback(f"{self}: reward {reward!r} is not a number") from None
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise BadFeedback(f"{self}: reward {reward!r} is outside [0, 1]")
        return branch

    # ------------------------------------------------------------------ what it knows
    def means(self) -> np.ndarray:
        """Each branch's mean reward so far (NaN before its first reward)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.n > 0, self.total / np.maximum(self.n, 1), np.nan)

    def state(self) -> dict:
        return {
            "version": STATE_VERSION,
            "algorithm": self.algorithm,
            "branch_names": self.branch_names,
            "routed": self.routed.tolist(),
            "n": self.n.tolist(),
            "total": self.total.tolist(),
            "total_sq": self.total_sq.tolist(),
            "starts": self.starts,
        }

    def save_state(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.state(), f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @property
    def loads(self) -> set[str]:
        """The algorithms whose state files this router can continue from (its own)."""
        return {self.algorithm}

    def load_state(self, path: Path) -> dict:
        state = json.loads(path.read_text())
        if state.get("algorithm") not in self.loads or state.get("branch_names") != self.branch_names:
            raise ValueError(
                f"{path} holds the state of a {state.get('algorithm')} router over "
                f"{state.get('branch_names')}, not of {self}; move it away to start afresh"
            )
        for key in ("routed", "n", "total", "total_sq"):
            getattr(self, key)[:] = state[key]
        self.starts = int(state.get("starts", 0))
        logger.info("%s: state loaded from %s: %s rewards", self, path, self.n.tolist())
        return state

    def metrics(self) -> list[dict]:
        """Per-branch gauges (seldon-core's custom metrics), refreshed after each feedback."""
        gauges = []
        means = self.means()
        for i, name in enumerate(self.branch_names):
            tags = {"branch": name}
            mean = 0.0 if math.isnan(means[i]) else float(means[i])
            for key, value in (
                ("router_branch_routed", int(self.routed[i])),
                ("router_branch_feedback", int(self.n[i])),
                ("router_branch_reward_sum", float(self.total[i])),
                ("router_branch_reward_mean", mean),
            ):
                gauges.append({"type": "GAUGE", "key": key, "value": value, "tags": dict(tags)})
        return gauges
