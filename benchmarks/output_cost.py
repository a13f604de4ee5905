"""What container output forwarding costs: ``forward_output=True`` (the default) against ``False``.

    python benchmarks/output_cost.py [--rounds 7] [--seconds 1.0]

Scenarios, each run with forwarding on and off in alternating rounds (so a
drifting machine hits both alike); each ratio is the median of the per-round
ratios on/off:

* latency: sequential blocking ``call`` round trips of a method that prints
  nothing (the fast path: the parent's extra work is one ``poll(0)`` of the
  container's pipes per result, the container's a flush of empty streams);
* pipelined: ``spawn`` of many such calls, then every result (the dispatcher path);
* printing: pipelined calls of a method that prints one line each, the
  parent's ``sys.stdout`` a file on /dev/null (off: the line goes straight
  from the container to fd 1, which is also /dev/null, unprefixed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import lifepool


class Quiet:
    def echo(self, x: object) -> object:
        return x

    def shout(self, x: object) -> object:
        print("line", x)
        return x


def latency(pool: lifepool.LifecyclePool, seconds: float) -> float:
    """µs per sequential call."""
    calls = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(100):
            pool.echo.call(1)
        calls += 100
    return (time.perf_counter() - start) / calls * 1e6


def pipelined(pool: lifepool.LifecyclePool, method: str, count: int) -> float:
    """Calls per second."""
    handle = pool.method(method)
    start = time.perf_counter()
    for future in [handle.spawn(i) for i in range(count)]:
        future.result()
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()
    real_stdout = sys.stdout
    devnull = open(os.devnull, "w")
    fd1 = os.dup(1)
    os.dup2(devnull.fileno(), 1)  # (forward_output=False: the containers' fd 1)
    results: dict[str, dict[bool, list[float]]] = {k: {True: [], False: []} for k in ("latency", "pipelined", "print")}
    try:
        for _ in range(args.rounds):
            for forward in (True, False):
                with lifepool.LifecyclePool(Quiet, containers=2, forward_output=forward) as pool:
                    pool.echo.call(0)
                    pool.echo.spawn(0).result()
                    results["latency"][forward].append(latency(pool, args.seconds))
                    results["pipelined"][forward].append(pipelined(pool, "echo", args.calls))
                    sys.stdout = devnull
                    try:
                        results["print"][forward].append(pipelined(pool, "shout", args.calls))
                    finally:
                        sys.stdout = real_stdout
    finally:
        os.dup2(fd1, 1)
        os.close(fd1)
    rows = [
        ("latency [µs/call, lower is better]", "latency"),
        ("pipelined [calls/s]", "pipelined"),
        ("one print per call [calls/s]", "print"),
    ]
    print(f"{'scenario':38} {'forward_output=True':>20} {'False':>12} {'ratio on/off (min-max)':>26}")
    for title, key in rows:
        on, off = results[key][True], results[key][False]
        ratios = [a / b for a, b in zip(on, off)]
        print(
            f"{title:38} {statistics.median(on):>20.1f} {statistics.median(off):>12.1f} "
            f"{statistics.median(ratios):>10.3f} ({min(ratios):.3f}-{max(ratios):.3f})"
        )


if __name__ == "__main__":
    main()
