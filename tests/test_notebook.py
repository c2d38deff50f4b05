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


def test_committed_notebook_shows_every_cell(committed):
    """The runner's rules hold for the committed run: every cell shows its result (the curl cells
    too: a prediction and the 400's message)."""
    assert run_notebook.problems(committed) == []
    shell = [c for c in committed.cells if c.cell_type == "code" and run_notebook.has_shell_command(c)]
    texts = ["".join(o.get("text", "") for o in c.outputs) for c in shell]
    assert len(texts) == 2
    assert json.loads(texts[0])["meta"]["requestPath"]  # the prediction, naming the arm that answered
    assert "HTTP status 400" in texts[1] and "11 features" in texts[1]  # a 400 that says why


def test_committed_notebook_is_quiet(committed):
    """No log chatter in what a reader sees (database migrations, kernel warnings)."""
    text = json.dumps([c.get("outputs", []) for c in committed.cells])
    for noise in ("alembic", "INFO ", "WARNING |"):
        assert noise not in text


def tiny_notebook(*sources, tags=None):
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    cells = [new_markdown_cell("## A stage")]
    cells += [new_code_cell(s, metadata={"tags": (tags or {}).get(i, [])}) for i, s in enumerate(sources)]
    notebook = new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return notebook


def executed(source, *outputs, tags=None):
    from nbformat.v4 import new_code_cell

    return new_code_cell(source, execution_count=1, outputs=list(outputs), metadata={"tags": tags or []})


def test_what_a_cell_must_show():
    from nbformat.v4 import new_output

    text = new_output("stream", name="stdout", text="ok\n")
    blank = new_output("stream", name="stdout", text="\n")
    table = new_output("execute_result", data={"text/plain": "1"}, execution_count=1)
    notebook = tiny_notebook()
    notebook.cells += [
        executed("!curl -sS $URL", text),  # fine
        executed("!curl -s $URL", blank),  # a shell command that printed nothing
        executed("!true", tags=["no-output"]),  # the tag does not excuse a shell cell
        executed("x = 1"),  # shows nothing
        executed("x = 1", tags=["no-output"]),  # fine: allowed to show nothing
        executed("TARGET = 'local'", tags=["parameters"]),  # fine
        executed("x", table),  # fine
        executed("1 / 0", new_output("error", ename="ZeroDivisionError", evalue="division by zero")),
    ]
    found = run_notebook.problems(notebook)
    assert [f.split(":")[0] for f in found] == [
        "cell 2 (A stage",
        "cell 3 (A stage",
        "cell 4 (A stage",
        "cell 8 (A stage",
    ]
    assert "printed nothing" in found[0] and "printed nothing" in found[1]
    assert "shows no output" in found[2] and "ZeroDivisionError" in found[3]


@pytest.mark.slow  # starts a kernel (~4 s): out of make test-fast
def test_runner_fails_on_a_failing_shell_command(tmp_path):
    with pytest.raises(run_notebook.NotebookFailed, match="A stage.*CalledProcessError"):
        run_notebook.run(tmp_path / "out.ipynb", notebook=tiny_notebook("print('before')", "!false"))
    saved = nbformat.read(tmp_path / "out.ipynb", as_version=4)  # saved with its outputs, to look at
    assert saved.cells[1].outputs[0].text == "before\n"


def test_runner_writes_stage_times_never_the_readme(tmp_path, monkeypatch):
    from scripts import readme

    before = readme.README.read_bytes()
    notebook = tiny_notebook(
        "x = 1", "x", "!echo '{\"a\": 1}'", "pass", tags={0: ["parameters"], 3: ["no-output"]}
    )
    monkeypatch.setattr(run_notebook, "load_notebook", lambda: notebook)
    stages = tmp_path / "stages.json"
    assert (
        run_notebook.main(["--output", str(tmp_path / "out.ipynb"), "--stages", str(stages), "-p", "x", "2"])
        == 0
    )
    record = json.loads(stages.read_text())
    assert set(record["stages"]) == {"A stage", "total"} and record["machine"]["cores"] > 0
    assert readme.README.read_bytes() == before


def test_failed_run_says_how_to_stop_the_stack(tmp_path, monkeypatch, capsys):
    notebook = tiny_notebook("STATE_DIR = '.stack'", "1 / 0", tags={0: ["parameters"]})
    monkeypatch.setattr(run_notebook, "load_notebook", lambda: notebook)
    code = run_notebook.main(["--output", str(tmp_path / "out.ipynb"), "-p", "STATE_DIR", "/some/state"])
    assert code == 1
    assert "python -m serving.local --state-dir /some/state down" in capsys.readouterr().err


def test_readme_command_refreshes_only_its_blocks(tmp_path):
    from scripts import readme

    copy = tmp_path / "README.md"
    copy.write_text(readme.README.read_text())
    stages = tmp_path / "stages.json"
    stages.write_text(
        json.dumps(
            {
                "written": "2030-01-02T03:04:05+00:00",
                "machine": readme.machine(),
                "stages": {"Setup": 0.1, "1. Train": 12.5, "total": 20.0},
            }
        )
    )
    assert readme.main(["--stages", str(stages), "--readme", str(copy)]) == 0
    text = copy.read_text()
    assert "| 1. Train | 12.5 s |" in text and "**20 s**" in text and "2030-01-02" in text
    outside = re.compile(r"<!-- (\w+):start -->.*?<!-- \1:end -->", re.S)
    assert outside.sub("", text) == outside.sub("", readme.README.read_text())


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
