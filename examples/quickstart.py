"""lifepool quickstart: enter once per container, many calls, exit once per container.

Run it with ``python examples/quickstart.py``. No ``if __name__ == "__main__":``
guard is needed: containers never re-import this script; the class below
travels to them by value.
"""

import collections
import os
import sys
import time

import lifepool


def show(line):
    """Print *line* in one write: the containers share this terminal, and a
    print() may write the text and its newline separately (for example with
    PYTHONUNBUFFERED=1), so lines from two containers could interleave."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Model:
    """Stands in for something expensive to set up, such as model weights or a database connection."""

    def __enter__(self):
        # Runs once in each container, before it serves any call.
        here = lifepool.current_container()
        show(f"enter: container {here.index} (pid {os.getpid()})")
        self.weights = {"scale": 10}  # pretend this took a while to load

    def predict(self, x):
        time.sleep(0.02)  # a little work, so that every container gets some calls
        return x * self.weights["scale"], lifepool.current_container().index

    def __exit__(self, exc_type, exc_value, traceback):
        # Runs once in each container, after its last call.
        here = lifepool.current_container()
        show(f"exit: container {here.index} (pid {os.getpid()})")


with lifepool.LifecyclePool(Model, containers=2) as pool:
    value, index = pool.predict.call(4)  # one blocking call
    show(f"predict(4) = {value}, computed in container {index}")

    results = list(pool.predict.map(range(20)))  # in parallel; results come in input order
    show(f"predictions: {[value for value, _ in results]}")

    per_container = collections.Counter(index for _, index in results)
    for index in sorted(per_container):
        show(f"calls: container {index} served {per_container[index]} of {len(results)}")

print("pool closed: every container has run its exit hook", flush=True)
