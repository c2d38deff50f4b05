"""Execute mlflow_seldon.ipynb top to bottom in a fresh kernel, headless, and save its outputs.

    python scripts/run_notebook.py                    # `make run`: runs in place, saves outputs
    python scripts/run_notebook.py --output /tmp/x.ipynb -p TARGET local

The notebook is built from its paired script (mlflow_seldon.py, jupytext percent format) when
the script is newer, so a reviewer's edit to the script is what runs. After the run: execution
counts are checked to be in order, any error output fails the run, the repo's absolute path is
replaced by "." in outputs (the committed notebook carries no paths of the machine it ran on),
and the wall time of each stage (each "## " section) is written to runs/notebook-stages.json.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from datetime import datetime
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script
from scripts import readme  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "mlflow_seldon.ipynb"
SCRIPT = REPO / "mlflow_seldon.py"
STAGES = REPO / "runs" / "notebook-stages.json"


class NotebookFailed(RuntimeError):
    pass


def load_notebook() -> nbformat.NotebookNode:
    """The notebook, refreshed from its paired script when the script is the newer of the two."""
    if SCRIPT.exists() and (not NOTEBOOK.exists() or SCRIPT.stat().st_mtime > NOTEBOOK.stat().st_mtime):
        notebook = jupytext.read(SCRIPT)
        if NOTEBOOK.exists():  # keep the committed outputs' metadata (kernelspec, jupytext pairing)
            notebook.metadata = nbformat.read(NOTEBOOK, as_version=4).metadata | notebook.metadata
        return notebook
    return nbformat.read(NOTEBOOK, as_version=4)


def inject_parameters(notebook: nbformat.NotebookNode, parameters: dict) -> None:
    """papermill-style: append assignments to the cell tagged `parameters`."""
    if not parameters:
        return
    for cell in notebook.cells:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            cell.source += "\n# injected by scripts/run_notebook.py\n" + "\n".join(
                f"{name} = {value!r}" for name, value in parameters.items()
            )
            return
    raise NotebookFailed("the notebook has no cell tagged 'parameters'")


def stage_times(notebook: nbformat.NotebookNode) -> dict[str, float]:
    """Wall time per '## ' section, from nbclient's per-cell timing metadata."""
    stages: dict[str, float] = {}
    current = "Setup"
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("## "):
                    current = line[3:].strip()
        elif cell.cell_type == "code":
            timing = cell.get("metadata", {}).get("execution", {})
            start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
            if start and end:
                seconds = (
                    datetime.fromisoformat(end.rstrip("Z")) - datetime.fromisoformat(start.rstrip("Z"))
                ).total_seconds()
                stages[current] = stages.get(current, 0.0) + seconds
    return {name: round(seconds, 1) for name, seconds in stages.items()}


def scrub(notebook: nbformat.NotebookNode) -> None:
    """Replace this checkout's absolute path in outputs with '.', and drop timing metadata."""
    home = str(Path.home())
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        cell.metadata.pop("execution", None)
        for output in cell.get("outputs", []):
            for key in ("text",):
                if key in output:
                    output[key] = output[key].replace(str(REPO), ".").replace(home, "~")
            for mime, value in output.get("data", {}).items():
                if mime.startswith("text/") and isinstance(value, str):
                    output["data"][mime] = value.replace(str(REPO), ".").replace(home, "~")


def check(notebook: nbformat.NotebookNode) -> None:
    errors = [
        f"cell {i}: {o.get('ename')}: {o.get('evalue')}"
        for i, cell in enumerate(notebook.cells)
        for o in cell.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    if errors:
        raise NotebookFailed("the notebook has error outputs:\n" + "\n".join(errors))
    counts = [c.execution_count for c in notebook.cells if c.cell_type == "code"]
    if counts != list(range(1, len(counts) + 1)):
        raise NotebookFailed(f"execution counts are not in order: {counts}")


def run(output: Path = NOTEBOOK, parameters: dict | None = None, timeout: int = 600) -> dict[str, float]:
    notebook = load_notebook()
    inject_parameters(notebook, parameters or {})
    client = NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(REPO)}},
        record_timing=True,
    )
    start = time.perf_counter()
    try:
        client.execute()
    finally:
        stages = stage_times(notebook)
        scrub(notebook)
        nbformat.write(notebook, output)
    stages["total"] = round(time.perf_counter() - start, 1)
    check(notebook)
    return stages


def stages_table(stages: dict[str, float]) -> str:
    rows = [
        f"| {name} | {seconds:.1f} s |" for name, seconds in stages.items() if name not in ("Setup", "total")
    ]
    return "\n".join(
        [
            f"The notebook's stages in the committed run (`make run` after set-up; {readme.describe()}):",
            "",
            "| stage | wall time |",
            "|---|---|",
            *rows,
            f"| **total** | **{stages['total']:.0f} s** |",
            "",
            "Set-up on a fresh machine (virtualenv and Prometheus) adds a few minutes, once.",
        ]
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=NOTEBOOK, help="where to save the executed notebook")
    parser.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="override a parameter (Python literal or string), e.g. -p REPLAY_LIMIT 300",
    )
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args(argv)
    parameters = {}
    for name, value in args.parameter:
        try:
            parameters[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parameters[name] = value
    print(f"running {NOTEBOOK.name} top to bottom (a fresh kernel)...", flush=True)
    try:
        stages = run(args.output, parameters, args.timeout)
    except NotebookFailed as e:
        print(f"error: {e}\nsaved with outputs to {args.output}", file=sys.stderr)
        return 1
    width = max(map(len, stages))
    for name, seconds in stages.items():
        print(f"  {name:<{width}}  {seconds:6.1f} s")
    if args.output == NOTEBOOK and not parameters:  # the committed run: its times go in the README
        STAGES.parent.mkdir(exist_ok=True)
        STAGES.write_text(json.dumps(stages, indent=2))  # and to `make bench`
        readme.replace_block("stages", stages_table(stages))
    print(f"saved {args.output.relative_to(REPO) if args.output.is_relative_to(REPO) else args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
