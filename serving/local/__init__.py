"""Serve a SeldonDeployment on this machine, the way a cluster would, on 127.0.0.1 only.

    python -m serving.local up serving/model-a-b.yaml     # check, start, wait until ready
    python -m serving.local status
    python -m serving.local reload                        # apply an edited traffic split now
    python -m serving.local down                          # stop exactly what `up` started

``up`` checks the manifest first (the schema, then traffic, names, implementation and that every
``modelUri`` resolves) and starts nothing if it fails. It serves a working copy of the manifest
(``<state dir>/manifest.yaml``), so promotion never edits the file you gave it.

- ``stack.py``: ``LocalStack``, the handle a client uses (up, status, reload, down);
- ``reuse.py``: what a stack loads, and whether a running one is what ``up`` would start now;
- ``supervisor.py``: the process that starts and restarts the stack's processes;
- ``processes.py``: finding and stopping those processes (psutil), and free ports;
- ``__main__.py``: the command line above.

From Python (the notebook does this)::

    stack = LocalStack.up("serving/model-a-b.yaml", replace=True)
    stack.ingress_url, stack.predictor_urls, stack.prometheus_url, stack.manifest_path
    stack.down()
"""

from serving.local.processes import HOST, MARKER, free_port, free_ports, stack_pids
from serving.local.stack import DEFAULT_PORT, DEFAULT_STATE_DIR, LocalStack, StackError, StackNotRunning

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_STATE_DIR",
    "HOST",
    "MARKER",
    "LocalStack",
    "StackError",
    "StackNotRunning",
    "free_port",
    "free_ports",
    "stack_pids",
]
