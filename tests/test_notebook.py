"""The notebook: its committed form, its paired script, and a real top-to-bottom run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import jupytext
import nbformat
import pytest

from scripts import run_notebook
from tests.conftest import REPO

NOTEBOOK = REPO / "mlflow_seldon.ipynb"
SCRIPT = REPO / "mlflow_seldon.py"
RUN_ID = re.compile(r"\b[0-9a-f]{32}\b")


@pytest.fixture(scope="module")
def committed() -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK, as_version=4)


def cells(notebook):
    return [(c.cell_type, c.source.strip()) for c in notebook.cells]


def test_paired_script_and_notebook_agree(committed):
    assert cells(jupytext.read(SCRIPT)) == cells(committed), "run `jupytext --sync mlflow_seldon.ipynb`"


def test_committed_notebook_ran_cleanly_in_order(committed):
    code = [c for c in committed.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert errors == []
    assert any("Verdict" in json.dumps(c.outputs) for c in code)  # it ran to the analysis


def test_no_run_ids_typed_into_code(committed):
    typed = [c.source for c in committed.cells if c.cell_type == "code" and RUN_ID.search(c.source)]
    assert typed == []


def test_no_paths_of_the_machine_it_ran_on(committed):
    text = json.dumps([c.get("outputs", []) for c in committed.cells]) + json.dumps(
        [c.source for c in committed.cells]
    )
    for path in {str(REPO), str(REPO.parent), os.path.expanduser("~"), "/tmp/"}:
        assert path not in text, f"the committed notebook mentions {path}"


def test_parameters_cell_is_tagged_and_defaults_to_local(committed):
    tagged = [c for c in committed.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and 'TARGET = "local"' in tagged[0].source


def test_committed_figures_exist():
    for name in ("mlflow-ui.png", "requests.png", "latency.png", "reward.png"):
        assert (REPO / "images" / name).stat().st_size > 10_000, name


@pytest.mark.notebook
def test_notebook_runs_top_to_bottom_on_the_local_target(tmp_path):
    """A fresh kernel, the local target, a tracking store of its own (as on a fresh clone), its own
    stack folder and free ports."""
    tracking_store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    output = tmp_path / "executed.ipynb"
    parameters = {
        "PORT": 0,
        "STATE_DIR": str(tmp_path / "stack"),
        "WORK_DIR": str(tmp_path / "runs"),
        "IMAGES": str(tmp_path / "images"),
    }
    from serving.local import LocalStack, stack_pids

    try:
        result = subprocess.run(
            [
                sys.executable,
                str(REPO / "scripts" / "run_notebook.py"),
                "--output",
                str(output),
                *[arg for name, value in parameters.items() for arg in ("-p", name, repr(value))],
            ],
            capture_output=True,
            text=True,
            timeout=900,
            cwd=REPO,
            env={**os.environ, "MLFLOW_TRACKING_URI": tracking_store},
        )
    finally:
        leftovers = LocalStack(tmp_path / "stack").down()  # whatever a failed run left behind
    assert result.returncode == 0, result.stderr[-3000:]
    assert leftovers == [], "the notebook's clean-up cell did not stop the stack"
    executed = nbformat.read(output, as_version=4)
    run_notebook.check(executed)  # no errors, counts in order
    outputs = json.dumps([c.get("outputs", []) for c in executed.cells])
    assert "Verdict" in outputs and "stopped" in outputs
    assert sorted(p.name for p in (tmp_path / "images").glob("*.png")) == [
        "latency.png",
        "requests.png",
        "reward.png",
    ]
    assert stack_pids(tmp_path / "stack") == [] and not LocalStack(tmp_path / "stack").running()


@pytest.mark.skipif(
    not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")),
    reason="no Chromium installed (apt-get install chromium) - the screenshot script skips too",
)
def test_mlflow_ui_screenshot_shows_both_runs(trained_arms, tmp_path):
    from mlflow.tracking import MlflowClient

    from scripts.mlflow_ui_screenshot import screenshot

    output = tmp_path / "ui.png"
    text = screenshot(output)
    names = {MlflowClient().get_run(v.run_id).info.run_name for v in trained_arms.values()}
    assert len(names) == 2
    for name in names:
        assert name in text  # in the rendered page's DOM, not only in a file name
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and output.stat().st_size > 20_000
