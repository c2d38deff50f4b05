"""Take images/mlflow-ui.png: the MLflow UI listing the training runs, in a real headless Chromium.

    python scripts/mlflow_ui_screenshot.py [--output images/mlflow-ui.png]

Starts `mlflow ui` on 127.0.0.1 against the tracking store, opens the experiment page in
Debian's Chromium (headless), saves a screenshot and checks the rendered page's text for the
run names. Where no Chromium is installed it says so and keeps the image it has.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path

import requests
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: make the project's packages importable

from serving.local import free_port  # noqa: E402
from training.tracking import EXPERIMENT, MODEL_NAME, tracking_uri  # noqa: E402

# the flags this machine needs: no sandbox as root, and no background traffic to Google
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1400,720",
    "--virtual-time-budget=10000",
]


class NoBrowser(RuntimeError):
    pass


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    raise NoBrowser("no Chromium installed (Debian: apt-get install chromium)")


class _Text(HTMLParser):
    def __init__(self):
        super().__init__()
        self.parts, self._skip = [], 0

    def handle_starttag(self, tag, attrs):
        self._skip += tag in ("script", "style")

    def handle_endtag(self, tag):
        self._skip -= tag in ("script", "style") and self._skip > 0

    def handle_data(self, data):
        if not self._skip and data.strip():
            self.parts.append(data.strip())


def visible_text(html: str) -> str:
    parser = _Text()
    parser.feed(html)
    return "\n".join(parser.parts)


def start_mlflow_ui(store: str, port: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "ui",
            "--backend-store-uri",
            store,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        process_group=0,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok:
                return process
        except requests.RequestException:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"`mlflow ui` exited with {process.returncode}")
        time.sleep(0.3)
    os.killpg(process.pid, signal.SIGKILL)
    raise RuntimeError("`mlflow ui` did not answer within 60 s")


def screenshot(output: Path, store: str | None = None) -> str:
    """Save the screenshot; return the page's visible text (after the app has rendered)."""
    browser = chromium()
    store = store or tracking_uri()
    experiment = MlflowClient(store).get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        raise RuntimeError(f"no experiment {EXPERIMENT!r} in the tracking store: train the arms first")
    port = free_port()
    ui = start_mlflow_ui(store, port)
    try:
        url = f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}"
        with tempfile.TemporaryDirectory() as profile:
            flags = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
            output.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [*flags, f"--screenshot={output.resolve()}", url],
                check=True,
                capture_output=True,
                timeout=120,
            )
            dom = subprocess.run(
                [*flags, "--dump-dom", url], check=True, capture_output=True, text=True, timeout=120
            )
        return visible_text(dom.stdout)
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        try:
            ui.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)


def aliased_run_names(store: str | None = None) -> list[str]:
    """The run names of the model versions the registry aliases point at (the arms)."""
    client = MlflowClient(store or tracking_uri())
    model = client.get_registered_model(MODEL_NAME)
    runs = {client.get_model_version(MODEL_NAME, v).run_id for v in model.aliases.values()}
    return sorted({client.get_run(r).info.run_name for r in runs})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=REPO / "images" / "mlflow-ui.png")
    parser.add_argument(
        "--expect",
        action="append",
        default=[],
        help="text the page must show (default: the run names behind the registry aliases)",
    )
    args = parser.parse_args(argv)
    expected = args.expect or aliased_run_names()
    try:
        text = screenshot(args.output)
    except NoBrowser as e:
        print(f"{args.output.name} not retaken: {e}")
        return 0
    missing = [t for t in expected if t not in text]
    if missing:
        print(f"error: the MLflow UI page does not show {missing}", file=sys.stderr)
        return 1
    print(f"saved {args.output}, showing {', '.join(expected)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
