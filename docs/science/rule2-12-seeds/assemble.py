"""Rule 2's table: the committed controls (scratch, oracle, disruptive-only; ../controls-12-seeds)
and the random and FedDEL cells of the rule-2 run, every row with the commit that computed it.

    python docs/science/rule2-12-seeds/assemble.py table RUN     # write the table here
    python docs/science/rule2-12-seeds/assemble.py restore RUN   # seed RUN with these rows

`restore` writes each committed row as a finished cell (RUN/cells/<cell>/row.json), so that the
command in README.md resumes the run on a fresh machine and computes only the missing cells.
Cells are deterministic: the two scratch cells recomputed at 218c337 on another machine gave
the committed mIoU to the last digit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from feddel.common.io import read_csv, write_json
from feddel.simulations.results import RESULT_COLUMNS, write_results
from feddel.simulations.science.paired import paired, paired_markdown

HERE = Path(__file__).parent
CONTROLS = HERE.parent / "controls-12-seeds" / "results.csv"
RULE_2 = ("random", "feddel")
NUMERIC = set(RESULT_COLUMNS) - {"method"}


def committed(path: Path) -> list[dict]:
    """Rows of a results.csv, numbers as numbers and empty cells left out (as in row.json)."""
    rows = []
    for row in read_csv(path):
        rows.append({k: (float(v) if k in NUMERIC else v) for k, v in row.items() if v != ""})
        rows[-1]["seed"] = int(rows[-1]["seed"])
    return rows


def cell_name(row: dict) -> str:
    return f"{row['method']}-{row['budget']:g}-s{row['seed']}"


def table(run: Path) -> None:
    rows = committed(CONTROLS)
    for path in sorted(run.glob("cells/*/row.json")):
        row = json.loads(path.read_text())
        if row["method"] in RULE_2:
            rows.append(row)
    rows.sort(key=lambda r: (r["seed"], r["method"]))
    write_results(rows, HERE, "FedDEL 5% against random 5% and the controls, seeds 200-211")
    against_oracle = paired(rows, ("feddel", 0.05), ("oracle", 0.05))
    if against_oracle is not None:
        with open(HERE / "results.md", "a") as text:
            text.write("\n## FedDEL against the positive control\n\n")
            text.write(paired_markdown([against_oracle]))


def restore(run: Path) -> None:
    for row in committed(HERE / "results.csv"):
        path = run / "cells" / cell_name(row) / "row.json"
        if not path.is_file():
            write_json(path, row)


if __name__ == "__main__":
    {"table": table, "restore": restore}[sys.argv[1]](Path(sys.argv[2]))
