"""The GPU check (`feddel-sim bench --gpu`, `make gpu-check`): CUDA and AMP figures in minutes.

Two measurements, both on the GPU with the autocast precision FedDEL picks there (bf16 where
the card supports it): benchmark 1 (the embedding pipeline against the bare forward, FedDEL's
encoder at 64 px and ViT-B/16 at 224 px) and one cell of the demo's comparison (FedDEL 5%,
seed 0: the curation round, fast FedSGD pre-training from the random init, downstream
segmentation), timed whole and scored. Figures go to OUT/gpu-check.json and gpu-check.md.
Without a CUDA device it writes why to the same files and returns, so the command can run as
is on any machine; nothing in the test suite needs a GPU.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch

from feddel.common.curation.methods import FEDDEL
from feddel.common.io import atomic_write_text, read_csv, write_json
from feddel.simulations.benchmarks import embedding
from feddel.simulations.benchmarks.records import Record, Say, machine, machine_line, record
from feddel.simulations.benchmarks.records import markdown as render_markdown

JSON_FILE, MARKDOWN_FILE = "gpu-check.json", "gpu-check.md"


def cuda_missing() -> str | None:
    """Why there is no GPU to check, or None."""
    if not torch.cuda.is_available():
        return f"no CUDA device visible to torch {torch.__version__}"
    return None


def run_gpu_check(out: Path, say: Say, *, quick: bool = False) -> list[Record] | None:
    """Measure on the GPU and write OUT/gpu-check.{json,md}; None (and the reason written)
    when there is no CUDA device."""
    out = Path(out)
    info = machine()
    reason = cuda_missing()
    if reason:
        write_json(out / JSON_FILE, {"skipped": reason, "machine": info})
        atomic_write_text(out / MARKDOWN_FILE, f"GPU check skipped: {reason}.\n")
        say(f"GPU check skipped: {reason}")
        return None
    info["gpu"] = torch.cuda.get_device_name(0)
    say(f"machine: {machine_line(info)}")
    started = time.perf_counter()
    params = embedding.QUICK if quick else embedding.EmbedParams()
    params = replace(params, cases=params.cases[:1])  # FedDEL's encoder; run() adds ViT-B/16
    records = embedding.run(params, out / "work", say)
    records += demo_cell(out / "cell", say, quick=quick)
    records.append(record(0, "gpu_check_s", time.perf_counter() - started, "s"))
    write_json(out / JSON_FILE, {"machine": info, "records": [r.to_json() for r in records]})
    atomic_write_text(
        out / MARKDOWN_FILE, render_markdown(records, info, time.perf_counter() - started)
    )
    return records


def demo_cell(out: Path, say: Say, *, quick: bool) -> list[Record]:
    """FedDEL 5%, seed 0, on the demo federation (made here if missing) with the demo's
    settings (20 rounds when quick): wall time and mIoU."""
    from feddel.simulations.cli import main  # the CLI imports the benchmarks
    from feddel.simulations.commands.compare import pipeline_flags
    from feddel.simulations.commands.demo import DEMO_SETTINGS

    rounds = 20 if quick else DEMO_SETTINGS.rounds

    data = out / "data"
    if not (data / "federation.json").is_file():
        say("generating the demo federation for the cell")
        if main(["data", "--out", str(data)]) != 0:
            raise RuntimeError(f"could not generate the demo federation in {data}")
    say(f"one demo cell on the GPU: FedDEL 5%, seed 0, {rounds} fast FedSGD rounds")
    argv = ["compare", "--data", str(data), "--out", str(out), "--seeds", "1", "--fresh"]
    argv += ["--methods", FEDDEL.name, "--budgets", "0.05"]
    argv += pipeline_flags(replace(DEMO_SETTINGS, rounds=rounds))  # the demo's cell, timed anew
    started = time.perf_counter()
    if main(argv) != 0:
        raise RuntimeError(f"the demo cell failed; see {out}")
    seconds = time.perf_counter() - started
    cell = next(row for row in read_csv(out / "results.csv") if row["method"] == FEDDEL.name)
    params = {"rounds": rounds, "device": torch.cuda.get_device_name(0)}
    return [
        record(6, "demo_cell_s", seconds, "s", note="scratch and FedDEL 5%, seed 0", params=params),
        record(6, "demo_cell_feddel_wall_s", float(cell["wall_s"]), "s", params=params),
        record(6, "demo_cell_feddel_miou", float(cell["mIoU"]), "mIoU", params=params),
    ]
