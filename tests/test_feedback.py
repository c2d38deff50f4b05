"""feedback.py's retries without a stack: refused connections (nothing sent) are retried until the
deadline, then reported - and once the endpoints have been unreachable that long, the rows that
follow fail at once instead of waiting a deadline each. Real sockets on loopback ports nothing
listens on. The gateway killed mid-replay, with a real stack: tests/reliability/test_faults.py.
"""

from __future__ import annotations

import time

import pandas as pd
import pytest

import feedback
from serving.endpoints import Endpoints
from serving.local import free_port


def nowhere() -> Endpoints:
    return Endpoints(
        gateway=f"127.0.0.1:{free_port()}",
        namespace="default",
        deployment="wines-classifier",
        predictors={"model-a": f"127.0.0.1:{free_port()}"},
        nodes={"model-a": "model-a"},
    )


def test_refused_connections_are_retried_until_the_deadline_then_every_row_is_reported():
    deadline = 1.0
    rows = feedback.holdout_rows(limit=6)
    replayer = feedback.Replayer(nowhere(), deadline=deadline)
    start = time.perf_counter()
    log = replayer.replay(rows, concurrency=2, progress=False)
    seconds = time.perf_counter() - start
    assert len(log) == len(rows) and log["predict_status"].isna().all()
    assert log["error"].str.startswith("predict: cannot connect to 127.0.0.1:").all(), log["error"].tolist()
    # the first rows kept trying for the deadline (backoff from 50 ms: several attempts) ...
    assert log["attempts"].max() >= 4
    assert deadline <= seconds
    # ... and the later rows did not wait a deadline each: the outage was already that old
    assert seconds < deadline + 2.5, seconds


def test_a_negative_or_unreadable_deadline_is_refused():
    with pytest.raises(ValueError, match="deadline"):
        feedback.Replayer(nowhere(), deadline=-1)
    with pytest.raises(SystemExit):
        feedback.main(["--deadline", "soon"])


def test_cli_cluster_mode_takes_a_url_and_reports_each_row_it_could_not_send(tmp_path, capsys):
    ingress, arm = free_port(), free_port()
    log = tmp_path / "log.csv"
    code = feedback.main(
        ["--ingress", f"http://127.0.0.1:{ingress}", "--predictor", f"model-a=127.0.0.1:{arm}"]
        + ["--limit", "3", "--deadline", "0.3", "--log", str(log)]
    )
    out = capsys.readouterr().out
    assert code == 2
    assert "feedback accepted 0" in out and "failed 3" in out
    assert out.count(f"cannot connect to 127.0.0.1:{ingress}") == 3, out
    assert len(pd.read_csv(log)) == 3
