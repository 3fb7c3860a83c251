"""Stitch the 5-seed demo table from the runs that made it (each row keeps its commit).

    python docs/science/demo-5-seeds/assemble.py SEEDS_2_4 FEDDEL_NEW

- seeds 0-1, every method: docs/science/demo/results.csv (`make demo` at 193f510);
- seeds 2-4, every method: SEEDS_2_4, `feddel-sim demo --first-seed 2 --seeds 3` at a8dec79;
- FedDEL with small clusters planned (ranked fractions), seeds 0-4: FEDDEL_NEW,
  `feddel-sim compare --methods feddel --budgets 0.05 --seeds 5` with the demo's settings at
  27beaa4 (docs/science/demo-5-seeds/README.md). Its rows are named `feddel`; the earlier
  FedDEL rows are kept as `feddel-a8dec79`.
The pipeline's own settings and the demo federation (seed 0) are the same in all three.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from feddel.common.io import read_csv
from feddel.simulations.results import write_results

HERE = Path(__file__).parent
NUMERIC = ("budget", "R", "seed", "mIoU", "DEL", "NormDEL", "wall_s", "cpu_s")
EARLIER_FEDDEL = "feddel-a8dec79"


def cells(run: Path, skip: set[str]) -> list[dict]:
    rows = [json.loads(path.read_text()) for path in sorted(run.glob("cells/*/row.json"))]
    return [row for row in rows if row["method"] not in skip]


def main(seeds_2_4: Path, feddel_new: Path) -> None:
    rows = []
    for row in read_csv(HERE.parent / "demo" / "results.csv"):
        rows.append({k: (float(v) if k in NUMERIC and v != "" else v) for k, v in row.items()})
    rows += cells(seeds_2_4, skip=set())
    for row in rows:
        if row["method"] == "feddel":
            row["method"] = EARLIER_FEDDEL
    rows += cells(feddel_new, skip={"scratch"})  # scratch comes from the runs above
    for row in rows:
        row["seed"] = int(row["seed"])
    rows.sort(key=lambda r: (r["seed"], r["method"]))
    write_results(rows, HERE, "FedDEL demo comparison, 5 seeds")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
