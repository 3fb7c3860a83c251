"""Benchmark 3, local scoring + selection at one center holding 1M embeddings (d = 384).

The issue's target: under 60 s and under 4 GB on 2 cores, with the embeddings memory-mapped and
never all in RAM twice. The work runs in a fresh child process (`python -m` this module) so its
peak memory is its own: the kernel's high-water mark (VmHWM, which counts the pages of the
memory-mapped file that were read) and, sampled every 20 ms, the anonymous memory (what the
process allocated itself; a second copy of the embeddings would show there).

Timed at the center: one Lloyd round (`assign` + `cluster_stats`), the score phase
(`score_center`: assignment, cluster PVI, outliers, center-wide near-duplicate removal in
cluster cells, plus `candidate_histograms`), the coordinator's plan, and the select phase
(`select_feddel`). Untimed setup: global centroids from k-means on a 20k-row sample. The
reference, measured in the same process, is one bare float32 pass X @ C^T over all rows.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from feddel.simulations.benchmarks.records import Record, Say, Stopwatch, Target, ratio, record
from feddel.simulations.benchmarks.synthetic import Datasets

TIME_TARGET = Target("<=", 60.0)
MEMORY_TARGET = Target("<=", 4.0)  # GB (10^9 bytes)
_CHUNK = 65536


@dataclass(frozen=True)
class CenterParams:
    n: int = 1_000_000
    d: int = 384
    k: int = 256  # global clusters; dedup cells average n / k samples
    budget: float = 0.05
    fit_rows: int = 20_000
    seed: int = 0
    source_centers: int = 31  # the rows are the synthetic federation's, held by one center


QUICK = CenterParams(n=1_000, d=8, k=8, fit_rows=500, source_centers=2)


def run(params: CenterParams, datasets: Datasets, say: Say) -> list[Record]:
    data = datasets.get(params.n, params.d, params.source_centers)
    say(f"center scoring + selection: {params.n:,} x {params.d} memory-mapped, k={params.k}")
    out = _run_child(data.path, params)
    return to_records(out, params)


def to_records(out: dict[str, Any], params: CenterParams) -> list[Record]:
    gb = 1e9
    info = {
        **asdict(params), "candidates": out["candidates"], "duplicates": out["duplicates"],
        "selected": out["selected"], "file_gb": round(out["file_bytes"] / gb, 3),
    }  # fmt: skip
    work = out["score_s"] + out["plan_s"] + out["select_s"]
    memory_note = (
        f"peak resident set of the scoring process, counting the pages of the memory-mapped "
        f"embeddings file ({out['file_bytes'] / gb:.2f} GB) it read; its own (anonymous) memory "
        f"peaked at {out['anon_peak_bytes'] / gb:.2f} GB, so the embeddings are never held twice"
    )
    return [
        record(3, "center_score_select_s", work, "s", TIME_TARGET, params=info,
               note=f"score phase {out['score_s']:.1f} s + plan {out['plan_s']:.2f} s + select "
               f"phase {out['select_s']:.1f} s; {out['duplicates']:,} near-duplicates removed"),
        record(3, "center_peak_rss_gb", out["peak_rss_bytes"] / gb, "GB", MEMORY_TARGET,
               note=memory_note, params=info),
        record(3, "center_peak_anon_gb", out["anon_peak_bytes"] / gb, "GB", params=info),
        record(3, "center_lloyd_round_s", out["lloyd_s"], "s", params=info),
        ratio(3, "center_score_select_over_matmul_pass", work, out["reference_s"], params=info,
              note="in units of one bare float32 pass X @ C^T over all rows, same process"),
    ]  # fmt: skip


def _run_child(path: Path, params: CenterParams) -> dict[str, Any]:
    command = [sys.executable, "-m", __name__, str(path), json.dumps(asdict(params))]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"scoring child exited {done.returncode}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


class _MemorySampler(threading.Thread):
    """Largest RssAnon seen, read from /proc/self/status every `interval` seconds."""

    def __init__(self, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.interval, self.peak, self._halt = interval, 0, threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak = max(self.peak, _status_bytes("RssAnon"))
            time.sleep(self.interval)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        return max(self.peak, _status_bytes("RssAnon"))


def _status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) * 1024
    return 0


def score_and_select(path: Path, params: CenterParams) -> dict[str, Any]:
    """The child's work (see the module docstring); returns seconds, counts and memory."""
    from sklearn.cluster import KMeans

    from feddel.common.curation.kmeans import assign, cluster_stats
    from feddel.common.curation.local import (
        auto_tau,
        candidate_histograms,
        plan_feddel,
        pvi_edges,
        score_center,
        select_feddel,
        smoothed_prior,
    )

    sampler = _MemorySampler()
    sampler.start()
    X = np.load(path, mmap_mode="r")
    n = X.shape[0]
    rng = np.random.default_rng(params.seed)
    sample = np.asarray(X[np.sort(rng.choice(n, min(params.fit_rows, n), replace=False))])
    model = KMeans(params.k, n_init=1, max_iter=20, random_state=params.seed).fit(sample)
    centers = model.cluster_centers_.astype(np.float64)
    ids = [f"{i:016x}" for i in range(n)]
    C32 = centers.astype(np.float32)
    for lo in range(0, n, _CHUNK):  # untimed: read the file once, as the Lloyd rounds would
        np.asarray(X[lo : lo + _CHUNK]).sum()
    with Stopwatch() as reference:
        for lo in range(0, n, _CHUNK):
            np.asarray(X[lo : lo + _CHUNK]) @ C32.T
    with Stopwatch() as lloyd:
        stats = cluster_stats(X, assign(X, centers), params.k)
    prior, tau = smoothed_prior(stats.count), auto_tau(stats.inertia, int(stats.count.sum()))
    with Stopwatch() as score:
        scores = score_center(
            X, np.ones(n, dtype=bool), centers, prior, tau=tau, eps=0.9, eta=0.98, keep="hard"
        )
        histograms = candidate_histograms(scores, params.k)
    with Stopwatch() as plan:
        _, plans = plan_feddel(histograms, math.ceil(params.budget * n))
    with Stopwatch() as select:
        selected = select_feddel(scores, ids, plans, pvi_edges(params.k), params.seed)
    anon_peak = sampler.stop()
    return {
        "reference_s": reference.seconds,
        "lloyd_s": lloyd.seconds,
        "score_s": score.seconds,
        "plan_s": plan.seconds,
        "select_s": select.seconds,
        "candidates": int(scores.candidate.sum()),
        "duplicates": int(scores.duplicate.sum()),
        "selected": int(selected.sum()),
        "peak_rss_bytes": _status_bytes("VmHWM"),
        "anon_peak_bytes": anon_peak,
        "file_bytes": path.stat().st_size,
    }


if __name__ == "__main__":
    result = score_and_select(Path(sys.argv[1]), CenterParams(**json.loads(sys.argv[2])))
    print(json.dumps(result))
