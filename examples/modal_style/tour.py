"""The rest of the surface in one program: ``lifepool run examples/modal_style/tour.py --n 6``.

Parameters, concurrency, batching, generators, spawn/gather, map/starmap/
for_each, with_options and Retries.
"""

import os

from lifepool import modal

app = modal.App("tour")


@app.cls(max_containers=1)
@modal.concurrent(max_inputs=4)
class Greeter:
    greeting: str = modal.parameter(default="hello")

    @modal.enter()
    def start(self):
        self.calls = 0

    @modal.method()
    def greet(self, name):
        return f"{self.greeting} {name}"

    @modal.method()
    def count_to(self, n):
        yield from range(1, n + 1)

    @modal.batched(max_batch_size=8, wait_ms=5)
    def shout(self, words):
        return [word.upper() for word in words]


@app.function(max_containers=2)
def add(a, b=0):
    return a + b


@app.function(max_containers=1, retries=modal.Retries(max_retries=3, initial_delay=0.0, backoff_coefficient=1.0))
def flaky(marker_dir):
    # Fails twice, then succeeds: each attempt leaves a marker file.
    attempts = len(os.listdir(marker_dir))
    open(os.path.join(marker_dir, f"attempt-{attempts}"), "w").close()
    if attempts < 2:
        raise RuntimeError(f"attempt {attempts} fails")
    return attempts


@app.local_entrypoint()
def main(n: int = 5, workdir: str = "."):
    print("greet:", Greeter().greet.remote("world"), "/", Greeter(greeting="hi").greet.remote("there"))
    print("gen:", list(Greeter().count_to.remote_gen(n)))
    print("batched:", list(Greeter().shout.map(["a", "b", "c"])))
    print("map:", list(add.map(range(n), kwargs={"b": 10})))
    print("starmap:", list(add.starmap([(1, 2), (3, 4)])))
    add.for_each(range(n))
    calls = [add.spawn(i, i) for i in range(n)]
    print("gather:", modal.FunctionCall.gather(*calls))
    slow = Greeter.with_options(timeout=60)
    print("with_options:", slow().greet.remote("options"))
    markers = os.path.join(workdir, "flaky-markers")
    os.makedirs(markers, exist_ok=True)
    print("retries: succeeded on attempt", flaky.remote(markers))
    print("local:", add.local(2, 3))
