"""Execute mlflow_seldon.ipynb top to bottom in a fresh kernel, headless, and save its outputs.

    python scripts/run_notebook.py                    # `make run`: runs in place, saves outputs
    python scripts/run_notebook.py --output /tmp/x.ipynb -p PORT 0 -p STATE_DIR /tmp/stack
    python scripts/run_notebook.py --notebook bandits.ipynb   # another notebook of the repo (`make run`)

The notebook is built from its paired script (mlflow_seldon.py, jupytext percent format; the
same name with .py for --notebook) when the script is newer, so a reviewer's edit to the script
is what runs.

What a run must show, or it fails (a tutorial cell that shows nothing is a bug):
- every code cell shows output (text, a table, a figure), except the cell tagged `parameters`
  and cells tagged `no-output`;
- a cell with a shell command (a `!` line) shows text, tag or not, and a shell command that
  exits non-zero fails its cell (the kernel runs with IPython's `system_raise_on_error`);
- no cell raises, and the cells ran in order.
On a failure the runner says which cell, and how to stop a local stack the run left running.

After the run the repo's absolute path is replaced by "." in outputs (the committed notebook
carries no paths of the machine it ran on). The wall time of each stage (each "## " section) is
printed, and written to runs/notebook-stages.json for the committed run (the default output, no
parameters; runs/<name>-stages.json for another --notebook's) or to --stages. The runner never
edits README.md: `python -m scripts.readme`
(`make readme`) copies the committed run's times there.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: make the project's packages importable
from scripts import readme  # noqa: E402

NOTEBOOK = REPO / "mlflow_seldon.ipynb"
SCRIPT = REPO / "mlflow_seldon.py"
STAGES = REPO / "runs" / "notebook-stages.json"
NO_OUTPUT = "no-output"  # the tag of a cell allowed to show nothing
KERNEL_ARGUMENTS = [
    # a failing `!` command raises CalledProcessError in its cell instead of passing silently
    "--InteractiveShell.system_raise_on_error=True",
    # the kernel's own log is not the reader's business (ipykernel warns that it uses TCP on 127.0.0.1)
    "--IPKernelApp.log_level=ERROR",
]


class NotebookFailed(RuntimeError):
    pass


def load_notebook(path: Path = NOTEBOOK) -> nbformat.NotebookNode:
    """The notebook, refreshed from its paired script when the script is the newer of the two."""
    script = SCRIPT if path == NOTEBOOK else path.with_suffix(".py")
    if script.exists() and (not path.exists() or script.stat().st_mtime > path.stat().st_mtime):
        notebook = jupytext.read(script)
        if path.exists():  # keep the committed outputs' metadata (kernelspec, jupytext pairing)
            notebook.metadata = nbformat.read(path, as_version=4).metadata | notebook.metadata
        return notebook
    return nbformat.read(path, as_version=4)


def inject_parameters(notebook: nbformat.NotebookNode, parameters: dict) -> None:
    """papermill-style: append assignments to the cell tagged `parameters`."""
    if not parameters:
        return
    for cell in notebook.cells:
        if "parameters" in tags(cell):
            cell.source += "\n# injected by scripts/run_notebook.py\n" + "\n".join(
                f"{name} = {value!r}" for name, value in parameters.items()
            )
            return
    raise NotebookFailed("the notebook has no cell tagged 'parameters'")


def tags(cell) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def sections(notebook: nbformat.NotebookNode) -> list[str]:
    """For each cell, the '## ' section it belongs to ("Setup" before the first)."""
    current, names = "Setup", []
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            current = next(
                (line[3:].strip() for line in reversed(cell.source.splitlines()) if line.startswith("## ")),
                current,
            )
        names.append(current)
    return names


def stage_times(notebook: nbformat.NotebookNode) -> dict[str, float]:
    """Wall time per '## ' section, from nbclient's per-cell timing metadata."""
    stages: dict[str, float] = {}
    for cell, section in zip(notebook.cells, sections(notebook), strict=True):
        timing = cell.get("metadata", {}).get("execution", {})
        start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
        if cell.cell_type == "code" and start and end:
            seconds = (
                datetime.fromisoformat(end.rstrip("Z")) - datetime.fromisoformat(start.rstrip("Z"))
            ).total_seconds()
            stages[section] = stages.get(section, 0.0) + seconds
    return {name: round(seconds, 1) for name, seconds in stages.items()}


def scrub(notebook: nbformat.NotebookNode) -> None:
    """Replace this checkout's absolute path in outputs with '.', and drop timing metadata."""
    home = str(Path.home())
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        cell.metadata.pop("execution", None)
        for output in cell.get("outputs", []):
            if "text" in output:
                output["text"] = output["text"].replace(str(REPO), ".").replace(home, "~")
            for mime, value in output.get("data", {}).items():
                if mime.startswith("text/") and isinstance(value, str):
                    output["data"][mime] = value.replace(str(REPO), ".").replace(home, "~")


def shows_text(cell) -> bool:
    return any(o.output_type == "stream" and o.text.strip() for o in cell.get("outputs", []))


def shows_anything(cell) -> bool:
    return shows_text(cell) or any(o.get("data") for o in cell.get("outputs", []))


def has_shell_command(cell) -> bool:
    return any(line.lstrip().startswith("!") for line in cell.source.splitlines())


def problems(notebook: nbformat.NotebookNode) -> list[str]:
    """What the run got wrong, one line per cell (the rules in this module's docstring)."""
    found = []
    for i, (cell, section) in enumerate(zip(notebook.cells, sections(notebook), strict=True)):
        if cell.cell_type != "code":
            continue
        where = (
            f"cell {i} ({section}: {cell.source.strip().splitlines()[0][:60] if cell.source.strip() else ''})"
        )
        errors = [o for o in cell.get("outputs", []) if o.output_type == "error"]
        if errors:
            found += [f"{where}: {o.get('ename')}: {o.get('evalue')}" for o in errors]
        elif cell.execution_count is None:
            continue  # not reached: the cell that stopped the run is reported
        elif has_shell_command(cell) and not shows_text(cell):
            found.append(f"{where}: its shell command printed nothing")
        elif not shows_anything(cell) and not {"parameters", NO_OUTPUT} & set(tags(cell)):
            found.append(f"{where}: shows no output (tag it '{NO_OUTPUT}' if that is right)")
    return found


def check(notebook: nbformat.NotebookNode) -> None:
    found = problems(notebook)
    if found:
        raise NotebookFailed("\n".join(found))
    counts = [c.execution_count for c in notebook.cells if c.cell_type == "code"]
    if counts != list(range(1, len(counts) + 1)):
        raise NotebookFailed(f"execution counts are not in order: {counts}")


def run(
    output: Path = NOTEBOOK,
    parameters: dict | None = None,
    timeout: int = 600,
    notebook: nbformat.NotebookNode | None = None,
) -> dict[str, float]:
    """Execute ``notebook`` (default: mlflow_seldon's), save it to ``output``; return stage times."""
    notebook = notebook or load_notebook()
    inject_parameters(notebook, parameters or {})
    client = NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(REPO)}},
        record_timing=True,
        extra_arguments=KERNEL_ARGUMENTS,
        # a cell's last output can reach nbclient seconds after its reply on a busy machine: wait for
        # it (nbclient's default, 4 s, silently dropped a curl's answer here), and fail if it never comes
        iopub_timeout=60,
        raise_on_iopub_timeout=True,
    )
    start = time.perf_counter()
    try:
        client.execute()
    except (CellTimeoutError, DeadKernelError) as e:
        raise NotebookFailed(str(e).strip().splitlines()[0]) from None
    except CellExecutionError:
        pass  # the error is in the cell's outputs: check() reports it with the cell's place
    finally:
        stages = stage_times(notebook)
        scrub(notebook)
        nbformat.write(notebook, output)
    stages["total"] = round(time.perf_counter() - start, 1)
    check(notebook)
    return stages


def stop_hint(parameters: dict) -> str:
    """How to stop a local stack the failed run may have left running."""
    if "STATE_DIR" in parameters:
        return f"python -m serving.local --state-dir {parameters['STATE_DIR']} down"
    return "make down"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--notebook", type=Path, default=NOTEBOOK, help=f"the notebook to run (default: {NOTEBOOK.name})"
    )
    parser.add_argument(
        "--output", type=Path, default=None, help="where to save the executed notebook (default: in place)"
    )
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
    parser.add_argument(
        "--stages",
        type=Path,
        help="where to write the stage times (default: runs/notebook-stages.json for the committed run only)",
    )
    args = parser.parse_args(argv)
    # the .ipynb, whichever twin was named
    source = (Path.cwd() / args.notebook).resolve().with_suffix(".ipynb")
    args.output = args.output or source
    parameters = {}
    for name, value in args.parameter:
        try:
            parameters[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parameters[name] = value
    print(f"running {source.name} top to bottom (a fresh kernel)...", flush=True)
    try:
        # the main notebook through load_notebook() as before; another one from its own path
        stages = run(
            args.output, parameters, args.timeout, None if source == NOTEBOOK else load_notebook(source)
        )
    except NotebookFailed as e:
        print(
            f"error: the notebook failed:\n{e}\nsaved with its outputs to {args.output}\n"
            f"a local stack it started may still be running: stop it with `{stop_hint(parameters)}`",
            file=sys.stderr,
        )
        return 1
    width = max(map(len, stages))
    for name, seconds in stages.items():
        print(f"  {name:<{width}}  {seconds:6.1f} s")
    committed_run = args.output.resolve() == source and not parameters
    own_stages = STAGES if source == NOTEBOOK else STAGES.with_name(f"{source.stem}-stages.json")
    stages_path = args.stages or (own_stages if committed_run else None)
    if stages_path:  # read by `make readme` (scripts/readme.py) and `make bench`
        stages_path.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "written": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": readme.machine(),
            "stages": stages,
        }
        stages_path.write_text(json.dumps(record, indent=2) + "\n")
        print(f"stage times: {stages_path}")
    print(f"saved {args.output.relative_to(REPO) if args.output.is_relative_to(REPO) else args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
