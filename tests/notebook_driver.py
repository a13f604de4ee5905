"""Run examples/notebook.ipynb in a real kernel with nbclient, interrupting the cell that calls ``pool.slow``.

    python tests/notebook_driver.py NOTEBOOK OUT.ipynb MARKER

A separate process (tests/test_notebook.py runs it): nbclient and jupyter_client
leave zmq sockets and event loops for the garbage collector, which the test
suite's ``filterwarnings=error`` would report against whichever test runs next.
"""

from __future__ import annotations

import os
import pathlib
import sys
import threading
import time

import nbclient
import nbformat
from jupyter_client import KernelManager

BOUND = 60.0


def main(notebook: str, out: str, marker: str) -> int:
    os.environ["LIFEPOOL_NOTEBOOK_MARKER"] = marker  # (the kernel inherits this environment)
    marker_path = pathlib.Path(marker)
    nb = nbformat.read(notebook, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        km=KernelManager(kernel_name="python3"),  # (blocking: interrupt_kernel() works from a thread)
        timeout=BOUND,
        resources={"metadata": {"path": str(marker_path.parent)}},
    )
    interrupted = threading.Event()

    def interrupt_once_slow_runs() -> None:
        deadline = time.monotonic() + BOUND
        while not marker_path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if marker_path.exists():
            client.km.interrupt_kernel()
            interrupted.set()

    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            watcher = None
            if "pool.slow.call" in cell.source:
                watcher = threading.Thread(target=interrupt_once_slow_runs)
                watcher.start()
            client.execute_cell(cell, index)
            if watcher is not None:
                watcher.join(BOUND)
    nbformat.write(nb, out)
    return 0 if interrupted.is_set() else 3


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
