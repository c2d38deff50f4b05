"""bandits.ipynb, the bandit against the A/B test: its committed run, its twin, and a real run in CI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import jupytext
import nbformat
import pytest

from scripts import run_notebook
from tests.conftest import REPO

NOTEBOOK = REPO / "bandits.ipynb"
SCRIPT = REPO / "bandits.py"
NUMBER = re.compile(r"\d+\.\d+")


@pytest.fixture(scope="module")
def committed() -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK, as_version=4)


def cells(notebook):
    return [(c.cell_type, c.source.strip()) for c in notebook.cells]


def outputs(notebook) -> str:
    return json.dumps([c.get("outputs", []) for c in notebook.cells])


def test_paired_script_and_notebook_agree(committed):
    assert cells(jupytext.read(SCRIPT)) == cells(committed), "run `jupytext --sync bandits.ipynb`"


def test_committed_notebook_ran_cleanly_in_order_and_shows_every_cell(committed):
    run_notebook.check(committed)  # no errors, every cell shows output, counts in order
    assert "image/png" in outputs(committed)  # the figure


def test_parameters_cell_keeps_off_the_main_notebooks_stack(committed):
    tagged = [c for c in committed.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    source = tagged[0].source
    assert "PORT = 8003" not in source and 'STATE_DIR = ".stack"' not in source


def test_no_numbers_typed_into_the_prose(committed):
    """Every number the reader sees in prose comes from the run (Markdown built by a cell)."""
    typed = [c.source for c in committed.cells if c.cell_type == "markdown" and NUMBER.search(c.source)]
    assert typed == []


def test_no_paths_of_the_machine_it_ran_on(committed):
    text = outputs(committed) + json.dumps([c.source for c in committed.cells])
    for path in {str(REPO), str(REPO.parent), os.path.expanduser("~"), "/tmp/"}:
        assert path not in text, f"the committed notebook mentions {path}"


@pytest.mark.slow  # starts a kernel (~4 s)
def test_runner_runs_the_notebook_it_is_given_from_its_script(tmp_path):
    """--notebook: another notebook (named by either twin), built from its newer script."""
    script = tmp_path / "other.py"
    script.write_text(
        '# %% tags=["parameters"]\nX = 1\n\n# %% [markdown]\n# ## A stage\n\n# %%\nprint("other", X)\n'
    )
    out, stages = tmp_path / "out.ipynb", tmp_path / "stages.json"
    argv = ["--notebook", str(script), "--output", str(out), "--stages", str(stages), "-p", "X", "2"]
    assert run_notebook.main(argv) == 0
    executed = nbformat.read(out, as_version=4)
    assert executed.cells[-1].outputs[0].text == "other 2\n"
    assert set(json.loads(stages.read_text())["stages"]) == {"Setup", "A stage", "total"}


def check_run(executed: nbformat.NotebookNode, rows: int) -> None:
    """What any run must show: the router counted every reward once, the sentence from the run."""
    text = outputs(executed)
    counted = re.search(
        r"(\d+) requests and feedbacks, 0 refused; .* counts (\[.*?\]) \(the replay's: (\[.*?\])", text
    )
    assert counted, "the replay cell's summary is missing or a feedback was refused"
    assert int(counted.group(1)) == rows and counted.group(2) == counted.group(3)
    assert sum(json.loads(counted.group(2))) == rows
    assert f"On the same {rows:,} rows in the same order" in text and "stopped" in text


def test_committed_run_counted_every_reward_once(committed):
    match = re.search(r"(\d+) hold-out rows, in the replay", outputs(committed))
    assert match, "the set-up cell's row count is missing"
    check_run(committed, int(match.group(1)))


@pytest.mark.notebook
@pytest.mark.stack
@pytest.mark.slow
def test_notebook_runs_top_to_bottom_on_the_local_stack(trained_arms, tracking_store, tmp_path):
    """A fresh kernel, the arms the session trained (its own tracking store), its own stack folder
    and a free port; CI's size: 400 rows, 20 shuffles (about 30 s on 2 cores)."""
    from serving.local import LocalStack, stack_pids

    output, state = tmp_path / "executed.ipynb", tmp_path / "stack"
    parameters = {"PORT": 0, "STATE_DIR": str(state), "ROWS": 400, "REPEATS": 20}
    try:
        result = subprocess.run(
            [
                sys.executable,
                str(REPO / "scripts" / "run_notebook.py"),
                "--notebook",
                str(NOTEBOOK),
                "--output",
                str(output),
                *[arg for name, value in parameters.items() for arg in ("-p", name, repr(value))],
            ],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO,
            env={**os.environ, "MLFLOW_TRACKING_URI": tracking_store},
        )
    finally:
        leftovers = LocalStack(state).down()  # whatever a failed run left behind
    assert result.returncode == 0, result.stderr[-3000:]
    assert leftovers == [], "the notebook's clean-up cell did not stop the stack"
    executed = nbformat.read(output, as_version=4)
    run_notebook.check(executed)
    check_run(executed, 400)
    assert stack_pids(state) == [] and not LocalStack(state).running()
