"""A batch job over a CSV file: rows in, results out, with a progress bar and a clean Ctrl-C.

    python examples/batch_csv.py [INPUT.csv [OUTPUT.csv]] [--delay SECONDS]

Each container loads its "model" once (the enter hook; here a table of
isotope data), then scores rows. What containers print and log shows up in
this terminal, each line prefixed with ``[Scorer:<index>]``; the bar
(``progress="rows"``, needs ``pip install lifepool[progress]``) counts rows
as they finish. Results are written as they come, in input order, so a
Ctrl-C leaves a valid CSV of the rows done: the pool interrupts the running
calls, runs every container's exit hook, and the script exits with status 130.
"""

from __future__ import annotations

import csv
import logging
import os
import pathlib
import sys
import tempfile
import time

import lifepool

HERE = pathlib.Path(__file__).resolve().parent
log = logging.getLogger("batch")


class Scorer:
    def __enter__(self) -> Scorer:
        # The expensive part, once per container: a stand-in for loading a model.
        self.neutron_mass = 1.008665
        self.proton_mass = 1.007276
        self.delay = float(os.environ.get("BATCH_DELAY", "0"))
        print(f"model loaded in pid {os.getpid()}")
        return self

    def score(self, row: dict[str, str]) -> dict[str, object]:
        time.sleep(self.delay)
        number, mass = int(row["number"]), float(row["atomic_mass"])
        neutrons = round(mass) - number
        binding = number * self.proton_mass + neutrons * self.neutron_mass - mass  # a rough mass defect
        if neutrons > number + 4:
            log.warning("%s is neutron-rich (%d neutrons)", row["symbol"], neutrons)
        return {**row, "neutrons": neutrons, "mass_defect": f"{binding:.4f}"}

    def __exit__(self, *exc_info: object) -> None:
        print("model unloaded" + (" (interrupted)" if exc_info[0] is KeyboardInterrupt else ""))


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("--")]
    if "--delay" in argv:
        os.environ["BATCH_DELAY"] = argv[argv.index("--delay") + 1]  # (containers inherit the environment)
        args = [a for a in args if a != os.environ["BATCH_DELAY"]]
    source = pathlib.Path(args[0]) if args else HERE / "data" / "elements.csv"
    target = pathlib.Path(args[1]) if len(args) > 1 else pathlib.Path(tempfile.gettempdir()) / "elements-scored.csv"
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with open(source, newline="") as f:
        rows = list(csv.DictReader(f))
    done = 0
    try:
        with open(target, "w", newline="") as out, lifepool.LifecyclePool(Scorer, containers=2) as pool:
            writer = None
            for result in pool.score.map(rows, progress="rows"):
                if writer is None:
                    writer = csv.DictWriter(out, fieldnames=list(result))
                    writer.writeheader()
                writer.writerow(result)
                out.flush()
                done += 1
    except KeyboardInterrupt:
        print(f"interrupted: {done} of {len(rows)} rows written to {target}")
        return 130
    print(f"{done} rows written to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
